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
