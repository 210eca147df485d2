#!/usr/bin/env bash
# Packs what a GPU machine without a package registry needs to run the suite or the benches, into .gpu/ (ignored):
#   .gpu/wheels/   the Python packages ComfyUI's node API and the tests need beyond torch + triton (Python 3.12, x86-64)
#   .gpu/comfyui/  ComfyUI 0.3.75 from .comfyui/ without its tokenizer vocabularies and its own tests (~6 MB instead
#                  of ~25 MB; no test loads a text encoder)
# Copy or carry .gpu/ to the GPU machine together with the checkout, then run scripts/test_gpu.sh there.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
[ -f .comfyui/main.py ] || bash scripts/setup.sh
mkdir -p .gpu/wheels
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .gpu/wheels \
  av==19.0.2 torchsde==0.2.6 trampoline==0.1.2 comfyui-frontend-package==1.32.9 sageattention==1.0.6 \
  pytest==9.2.0 pluggy==1.7.0 iniconfig==2.3.1 pytest-timeout==2.4.0 pytest-xdist==3.8.0 execnet==2.1.2
rm -rf .gpu/comfyui
mkdir -p .gpu/comfyui
tar -C .comfyui --exclude='./tests' --exclude='./tests-unit' --exclude='*_tokenizer/*.json' --exclude='*_tokenizer/*.txt' --exclude='*_tokenizer/*.model' --exclude='__pycache__' -cf - . \
  | tar -C .gpu/comfyui -xf -
du -sh .gpu/wheels .gpu/comfyui
