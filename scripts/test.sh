#!/usr/bin/env bash
# Runs the whole test suite the way CI does: sets up what is missing, then pytest against the real ComfyUI.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bash scripts/setup.sh
mkdir -p test-artifacts
exec .venv/bin/python -m pytest tests "$@"
