"""Bootstraps the real ComfyUI (from .comfyui/ or $COMFYUI_DIR) for the whole test session.

ComfyUI is not a package: its folder goes on sys.path (before the repo root, whose nodes/ package would
otherwise shadow ComfyUI's nodes.py), its CLI args are set directly (argparse would read pytest's argv),
and its folders point at a throw-away --base-directory with this pack linked into custom_nodes/.
"""

import os
import pathlib
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
COMFY_DIR = pathlib.Path(os.environ.get("COMFYUI_DIR", ROOT / ".comfyui"))
if not (COMFY_DIR / "main.py").is_file():
    raise RuntimeError(f"No ComfyUI at {COMFY_DIR}: run scripts/setup.sh (or set COMFYUI_DIR).")
sys.path[:0] = [str(COMFY_DIR), str(ROOT)]

import torch  # noqa: E402

import comfy.cli_args  # noqa: E402

BASE_DIR = pathlib.Path(tempfile.mkdtemp(prefix="lightx2v-comfy-"))
comfy.cli_args.args.cpu = not torch.cuda.is_available()
comfy.cli_args.args.base_directory = str(BASE_DIR)
comfy.cli_args.args.disable_auto_launch = True

import utils.extra_config  # noqa: E402,F401  (before `nodes`, which puts comfy/ on sys.path)

for sub in ("custom_nodes", "models/diffusion_models", "models/loras", "models/vae_approx", "models/vae"):
    (BASE_DIR / sub).mkdir(parents=True, exist_ok=True)
PACK_LINK = BASE_DIR / "custom_nodes" / "lightx2v-nodes"
PACK_LINK.symlink_to(ROOT, target_is_directory=True)

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def comfy_nodes():
    """ComfyUI's node registry with the built-in nodes and this pack loaded (once per session)."""
    from harness import load_all_nodes

    return load_all_nodes(PACK_LINK)


@pytest.fixture(scope="session")
def models_dir():
    import folder_paths

    return pathlib.Path(folder_paths.models_dir)
