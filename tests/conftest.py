"""Test session setup: the real ComfyUI in-process (see comfy_env.py), nodes loaded once."""

import pathlib

import pytest

from comfy_env import COMFY_DIR, ROOT, bootstrap  # noqa: F401  (re-exported for tests)

BASE_DIR, PACK_LINK = bootstrap()


@pytest.fixture(scope="session")
def comfy_nodes():
    """ComfyUI's node registry with the built-in nodes and this pack loaded (once per session)."""
    from harness import load_all_nodes

    return load_all_nodes(PACK_LINK)


@pytest.fixture(scope="session")
def models_dir():
    import folder_paths

    return pathlib.Path(folder_paths.models_dir)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny matmuls: one thread is faster, and far faster on a loaded 2-core machine (no spin-waiting).
    Use with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
