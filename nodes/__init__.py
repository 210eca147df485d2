"""Node schemas only (ComfyUI V3 API). Each module here lists its node classes in `NODES`; they are
collected automatically, so adding a module is all it takes to add nodes. Every node derives from
base.LightX2VNode, which checks its combo values before its `run`."""

import importlib
import pkgutil

from comfy_api.latest import ComfyExtension, io


def all_nodes() -> list[type[io.ComfyNode]]:
    nodes = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        nodes.extend(getattr(module, "NODES", []))
    return nodes


class LightX2VExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return all_nodes()
