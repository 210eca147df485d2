"""Bootstraps the real ComfyUI (from .comfyui/ or $COMFYUI_DIR) in this process.

ComfyUI is not a package: its folder goes on sys.path (before the repo root, whose nodes/ package would
otherwise shadow ComfyUI's nodes.py), its CLI args are set directly (argparse would read our argv), and its
folders point at a throw-away --base-directory with this pack linked into custom_nodes/.
Used by tests/conftest.py and scripts/build_example_workflows.py.
"""

import os
import pathlib
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
COMFY_DIR = pathlib.Path(os.environ.get("COMFYUI_DIR", ROOT / ".comfyui"))
MODEL_FOLDERS = ("diffusion_models", "loras", "vae_approx", "vae")


def bootstrap():
    """Set up ComfyUI for in-process use; returns (base directory, path of the pack's link)."""
    if not (COMFY_DIR / "main.py").is_file():
        raise RuntimeError(f"No ComfyUI at {COMFY_DIR}: run scripts/setup.sh (or set COMFYUI_DIR).")
    sys.path[:0] = [str(COMFY_DIR), str(ROOT)]
    import torch

    import comfy.cli_args

    base_dir = pathlib.Path(tempfile.mkdtemp(prefix="lightx2v-comfy-"))
    comfy.cli_args.args.cpu = not torch.cuda.is_available()
    comfy.cli_args.args.base_directory = str(base_dir)
    comfy.cli_args.args.disable_auto_launch = True

    import utils.extra_config  # noqa: F401  (before `nodes`, which puts comfy/ on sys.path)

    for sub in ["custom_nodes"] + [f"models/{m}" for m in MODEL_FOLDERS]:
        (base_dir / sub).mkdir(parents=True, exist_ok=True)
    pack_link = base_dir / "custom_nodes" / "lightx2v-nodes"
    pack_link.symlink_to(ROOT, target_is_directory=True)
    return base_dir, pack_link
