#!/usr/bin/env bash
# Sets everything up (idempotent) and starts ComfyUI with the pack on http://127.0.0.1:8188.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
# Chromium is only for the browser tests (scripts/test.sh installs it).
LIGHTX2V_SKIP_BROWSER=1 bash "$root/scripts/setup.sh"
comfy_dir=${COMFYUI_DIR:-"$root/.comfyui"}
cpu_flag=$("$root/.venv/bin/python" -c "import torch; print('' if torch.cuda.is_available() else '--cpu')")
cd "$comfy_dir"
# ComfyUI keeps its database next to main.py unless told otherwise; keep it in the base directory with the rest.
exec "$root/.venv/bin/python" main.py $cpu_flag --base-directory "$root/.run" \
  --database-url "sqlite:///$root/.run/user/comfyui.db" --listen 127.0.0.1 --port "${PORT:-8188}" "$@"
