"""What every ComfyUI adapter of the pack shares: finding our DiT inside a MODEL, and a node progress bar.

The bottom of the adapter layer: the other `comfy_*.py` modules import this one and never each other.
"""

from __future__ import annotations

import comfy.utils

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


class ProgressReporter:
    """A ComfyUI progress bar (shown on the node) driven by (done, total) callbacks."""

    def __init__(self, total: int = 100):
        self.bar = comfy.utils.ProgressBar(total)
        self.total = total

    def __call__(self, done: int, total: int) -> None:
        self.bar.update_absolute(int(self.total * done / max(total, 1)), self.total)
