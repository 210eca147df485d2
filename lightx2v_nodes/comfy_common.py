"""What every ComfyUI adapter of the pack shares: finding our DiT inside a MODEL, a node progress bar, text shown
on the running node, and where the feature cache leaves its skip counts for the sampler's summary.

The bottom of the adapter layer: the other `comfy_*.py` modules import this one and never each other.
"""

from __future__ import annotations

import comfy.utils
from comfy_execution.utils import get_executing_context

from .errors import LightX2VError
from .wan.model import WanDiT


def lightx2v_dit(model, node: str, native_alternative: str) -> WanDiT:
    """The DiT inside a MODEL from LightX2V Load Wan DiT; for any other MODEL an error naming `node` and what
    to use instead for native models."""
    dit = getattr(model.model, "diffusion_model", None)
    if not isinstance(dit, WanDiT):
        raise LightX2VError(
            f"{node} works on models loaded with 'LightX2V Load Wan DiT', but this MODEL runs {type(dit).__name__}. "
            f"Load the model with LightX2V Load Wan DiT, or use {native_alternative} for models from native loaders.")
    return dit


# The feature cache's sampler wrapper sets this attribute of the guider it ran under to (skipped, total) block
# passes of its run; the pack's samplers read it back for their summary line.
CACHE_SKIPS_ATTRIBUTE = "lightx2v_cache_skips"


def show_in_ui(text: str) -> None:
    """Text shown on the node that is executing; a no-op without a server (tests, scripts)."""
    try:
        from server import PromptServer

        server = PromptServer.instance
    except (ImportError, AttributeError):
        return
    context = get_executing_context()
    if context is not None:
        server.send_progress_text(text, context.node_id)


class ProgressReporter:
    """A ComfyUI progress bar (shown on the node) driven by (done, total) callbacks."""

    def __init__(self, total: int = 100):
        self.bar = comfy.utils.ProgressBar(total)
        self.total = total

    def __call__(self, done: int, total: int) -> None:
        self.bar.update_absolute(int(self.total * done / max(total, 1)), self.total)
