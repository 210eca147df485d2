"""LightX2V Nodes: ComfyUI custom node pack (V3 API). ComfyUI calls comfy_entrypoint() to get the nodes."""


async def comfy_entrypoint():
    # Imported here so that importing this package (pytest does, as the repo root) never touches ComfyUI.
    from .nodes import LightX2VExtension

    return LightX2VExtension()
