"""pytest plugin (`-p comfyui_blocker`, with tests/ on PYTHONPATH) that makes every ComfyUI module unimportable, as
on a machine without ComfyUI: test_engine_without_comfyui.py runs the engine tests under it. Importing this module
installs the blocker, so only that subprocess may import it."""

import importlib.abc
import sys

from comfy_env import COMFY_MODULES, ROOT

# pytest imports the checkout's root package under its folder name, which may be one of ComfyUI's (a clone in main/).
BLOCKED = COMFY_MODULES - {ROOT.name}


class ComfyUIBlocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (ComfyUI is absent in this run)", name=name)
        return None


sys.meta_path.insert(0, ComfyUIBlocker())
