"""The loader's `quantization` choice applied to an original-layout state dict.

auto: whatever the file holds (8-bit block linears -> W8A8 in that format; a float file stays float);
none: dequantize a quantized file; fp8 / int8 (+ -weight-only): quantize a float file on load (only the
block linears), keep a file already in that format, re-quantize a file in the other format.
"""

from __future__ import annotations

import dataclasses
import logging

import torch

from ..errors import LightX2VError
from .formats import dequantize_state_dict, normalize_quantized, quantize_state_dict

log = logging.getLogger("lightx2v_nodes")
QUANTIZATION_CHOICES = ("auto", "none", "fp8", "int8", "fp8-weight-only", "int8-weight-only")


@dataclasses.dataclass(frozen=True)
class QuantPlan:
    fmt: str  # "fp8" or "int8"
    mode: str  # "w8a8" or "weight_only"
    source: str  # what happened on load, for the log line

    def describe(self) -> str:
        return f"{self.fmt} {'W8A8' if self.mode == 'w8a8' else 'weight-only'} ({self.source})"


def parse_choice(choice: str) -> tuple[str | None, str]:
    if choice not in QUANTIZATION_CHOICES:
        raise LightX2VError(f"Unknown quantization '{choice}': use one of {', '.join(QUANTIZATION_CHOICES)}.")
    if choice in ("auto", "none"):
        return None, "w8a8"
    fmt, _, rest = choice.partition("-")
    return fmt, "weight_only" if rest else "w8a8"


def apply_quantization(state_dict: dict[str, torch.Tensor], choice: str, compute_dtype: torch.dtype = torch.bfloat16,
                       progress=None) -> tuple[dict[str, torch.Tensor], QuantPlan | None]:
    """Return (state dict in the internal form, plan) for the loader; the input dict is consumed."""
    target, mode = parse_choice(choice)
    state_dict, file_fmt = normalize_quantized(state_dict, compute_dtype)
    if choice == "auto":
        if not file_fmt:
            return state_dict, None
        # A file that left some block linears in float (mixed precision): those are quantized like the rest.
        return quantize_state_dict(state_dict, file_fmt, progress), QuantPlan(file_fmt, mode, "from the file")
    if choice == "none":
        if file_fmt:
            log.info("LightX2V: dequantizing the %s file to %s (quantization = none)", file_fmt, compute_dtype)
            state_dict = dequantize_state_dict(state_dict, compute_dtype)
        return state_dict, None
    if file_fmt == target:
        return quantize_state_dict(state_dict, target, progress), QuantPlan(target, mode, "from the file")
    if file_fmt:
        log.warning("LightX2V: re-quantizing a %s file to %s; converting the original bf16 model gives better accuracy.", file_fmt, target)
        state_dict = dequantize_state_dict(state_dict, torch.float32)
        source = f"re-quantized from {file_fmt}"
    else:
        source = "quantized on load"
    return quantize_state_dict(state_dict, target, progress), QuantPlan(target, mode, source)
