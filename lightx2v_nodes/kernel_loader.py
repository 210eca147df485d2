"""Finds the pack's top-level `kernels/` package from inside `lightx2v_nodes`.

Inside ComfyUI the pack is one package (`<pack>.kernels` is a sibling of `<pack>.lightx2v_nodes`); in tests
and the CLI `lightx2v_nodes` is top-level. The folder is then loaded by path under a private name, so an
unrelated installed package called `kernels` can never be picked up instead.
"""

from __future__ import annotations

import importlib.util
import os
import sys

_PRIVATE_NAME = "lightx2v_nodes_kernels"


def load_kernels():
    try:
        from .. import kernels  # the pack imported as a package (ComfyUI custom node)

        return kernels
    except ImportError:
        pass
    if _PRIVATE_NAME in sys.modules:
        return sys.modules[_PRIVATE_NAME]
    folder = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "kernels")
    spec = importlib.util.spec_from_file_location(_PRIVATE_NAME, os.path.join(folder, "__init__.py"),
                                                  submodule_search_locations=[folder])
    module = importlib.util.module_from_spec(spec)
    sys.modules[_PRIVATE_NAME] = module
    spec.loader.exec_module(module)
    return module
