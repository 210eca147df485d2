#!/usr/bin/env bash
# Runs the test suite on a CUDA machine that has Python, torch and Triton but no package registry (how the suite is
# proven on a GPU; CI runs scripts/test.sh on a CPU). Prepare .gpu/ with scripts/gpu_kit.sh where pip works, bring
# it along with the checkout, then:  scripts/test_gpu.sh [pytest arguments]
# The browser tests are left out (they need Chromium); every other test runs, the GPU-only ones included
# (LIGHTX2V_TESTS="tests/test_a.py tests/test_b.py" runs only those files).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
python=${PYTHON:-python3}
"$python" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device: use scripts/test.sh'"
if [ -d .gpu/wheels ]; then
  site=$(mktemp -d)
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" .gpu/wheels/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
[ -z "${COMFYUI_DIR:-}" ] && [ -f .gpu/comfyui/main.py ] && export COMFYUI_DIR="$root/.gpu/comfyui"
mkdir -p test-artifacts
# Test files run in parallel processes sharing the GPU (LIGHTX2V_TEST_WORKERS, default 8; 0 runs them in this process),
# two CPU threads each: on a 16-core H100 machine the whole suite took 2.5-3 minutes this way, where one process
# got through 218 of 563 tests in 9 minutes.
workers=${LIGHTX2V_TEST_WORKERS:-8}
parallel=()
if [ "$workers" != 0 ] && "$python" -c "import xdist" 2>/dev/null; then
  parallel=(-n "$workers" --dist loadfile)
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
fi
exec "$python" -m pytest ${LIGHTX2V_TESTS:-tests} --ignore=tests/test_browser.py -p no:cacheprovider "${parallel[@]}" "$@"
