"""Bootstraps the real ComfyUI (from .comfyui/ or $COMFYUI_DIR) in this process.

ComfyUI is not a package: its folder goes on sys.path (before the repo root, whose nodes/ package would
otherwise shadow ComfyUI's nodes.py), its CLI args are set directly (argparse would read our argv), and its
folders point at a throw-away --base-directory with this pack linked into custom_nodes/.
Used by tests/conftest.py (for the test modules not in COMFYUI_FREE_TESTS), tests/example_workflows_build.py and
bench/end_to_end.py.
"""

import functools
import os
import pathlib
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
COMFY_DIR = pathlib.Path(os.environ.get("COMFYUI_DIR", ROOT / ".comfyui"))
MODEL_FOLDERS = ("diffusion_models", "loras", "vae_approx", "vae")
# ComfyUI's top-level modules and packages (what its folder on sys.path makes importable).
COMFY_MODULES = {"comfy", "comfy_api", "comfy_api_nodes", "comfy_config", "comfy_execution", "comfy_extras",
                 "folder_paths", "nodes", "server", "execution", "latent_preview", "node_helpers", "comfyui_version",
                 "app", "utils", "api_server", "middleware", "protocol", "alembic_db", "main", "cuda_malloc",
                 "new_updater", "hook_breaker_ac10a0"}
# Test modules that import only the engine and kernels (nothing from ComfyUI, nor nodes/ or comfy_*.py):
# conftest.py boots ComfyUI for every other module, and test_engine_without_comfyui.py runs these with ComfyUI
# made unimportable, which proves the list right.
COMFYUI_FREE_TESTS = (
    "test_attention_8bit.py", "test_attention_choice.py", "test_cache.py", "test_convert.py",
    "test_diffusers_keys.py", "test_engine_without_comfyui.py", "test_fused_ffn.py", "test_hardening.py",
    "test_import_rules.py", "test_kernels.py", "test_lora.py", "test_lora_side_branch.py", "test_lowrank_add.py",
    "test_offload.py", "test_quant_accuracy.py", "test_quant_formats.py", "test_sampling.py",
    "test_token_chunking.py", "test_wan_checkpoints.py",
)


@functools.cache
def bootstrap():
    """Set up ComfyUI for in-process use, once; returns (base directory, path of the pack's link)."""
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
