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
# Test files run in parallel processes sharing the GPU (LIGHTX2V_TEST_WORKERS, default 4; 0 runs them in this process):
# in one process an H100 got through 218 of the 563 tests in 9 minutes (where the time goes was not measured).
workers=${LIGHTX2V_TEST_WORKERS:-4}
parallel=()
if [ "$workers" != 0 ] && "$python" -c "import xdist" 2>/dev/null; then
  parallel=(-n "$workers" --dist loadfile)
fi
exec "$python" -m pytest ${LIGHTX2V_TESTS:-tests} --ignore=tests/test_browser.py -p no:cacheprovider "${parallel[@]}" "$@"
