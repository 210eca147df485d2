"""Test session setup. The modules in comfy_env.COMFYUI_FREE_TESTS run without ComfyUI; every other module gets the
real ComfyUI booted in-process (comfy_env.bootstrap) before pytest imports it, and its nodes loaded once."""

import pathlib
import sys

import pytest

from comfy_env import COMFY_DIR, COMFYUI_FREE_TESTS, ROOT, bootstrap  # noqa: F401  (re-exported for tests)

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # the pack's packages; bootstrap() puts ComfyUI's folder before it


def pytest_collectstart(collector):
    """Boot ComfyUI before a module that needs it is imported (it may import ComfyUI at its top)."""
    if isinstance(collector, pytest.Module) and collector.path.name not in COMFYUI_FREE_TESTS:
        bootstrap()


@pytest.fixture(scope="session")
def comfy_nodes():
    """ComfyUI's node registry with the built-in nodes and this pack loaded (once per session)."""
    from harness import load_all_nodes

    _, pack_link = bootstrap()
    return load_all_nodes(pack_link)


@pytest.fixture(scope="session")
def models_dir():
    bootstrap()
    import folder_paths

    return pathlib.Path(folder_paths.models_dir)


@pytest.fixture(scope="session")
def tiny_t2v(models_dir):
    """A tiny random Wan2.1 T2V checkpoint (fp32, ComfyUI key layout) in models/diffusion_models: its file name."""
    from lightx2v_nodes.wan import synthetic

    name = "test_tiny_t2v_fp32.safetensors"
    cfg = synthetic.tiny_config("t2v")
    synthetic.write_checkpoint(synthetic.random_state_dict(cfg, seed=1), str(models_dir / "diffusion_models" / name),
                               "comfy", "fp32")
    return name


@pytest.fixture(scope="session", autouse=True)
def full_float32_convolutions():
    """fp32 checks mean full float32. On a GPU, cuDNN runs float32 convolutions in TF32 by default (PyTorch's
    default; 10 mantissa bits, relative error about 1e-3), so two exact implementations of one model, or one decoder
    fed latents that differ by 1e-6, come out about 1e-4 apart (the patch embedding and the tiny VAE are
    convolutions). On a CPU the flag changes nothing."""
    import torch

    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        yield


@pytest.fixture(scope="module")
def one_thread():
    """Tiny matmuls: one thread is faster, and far faster on a loaded 2-core machine (no spin-waiting).
    Use with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def native_unet_fp32(comfy_nodes):
    """ComfyUI's UNETLoader keeps an fp32 file in fp32, as with its --fp32-unet flag. On a GPU it would otherwise load
    the file as bf16 (its default there), and the native side of an fp32 equivalence test would run at bf16
    precision; on the CPU it loads fp32 anyway. Our loader's explicit dtype is unaffected."""
    from comfy.cli_args import args

    before = args.fp32_unet
    args.fp32_unet = True
    yield
    args.fp32_unet = before
