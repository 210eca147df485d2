"""Quantized test checkpoints in every layout the loader reads, made from a float original-layout state dict.

- lightx2v:         8-bit block linears + `weight_scale` [out, 1] (what our converter writes)
- comfy_scaled_fp8: every linear weight fp8 with a per-tensor `scale_weight`, plus the `scaled_fp8` marker
                    (what ComfyUI's own scaled-fp8 Wan files hold). ComfyUI casts every Linear of such a model,
                    bias included, to fp8; the biases here are fp8-representable floats so both loaders see
                    the same numbers.
- plain_fp8:        block linear weights cast straight to float8_e4m3fn, no scales
"""

from __future__ import annotations

import torch

from ..kernel_loader import load_kernels
from .formats import COMFY_MARKER, COMFY_SCALE_SUFFIX, is_block_linear, quantize_state_dict

LAYOUTS = ("lightx2v", "comfy_scaled_fp8", "plain_fp8")
_kernels = load_kernels()


def _linear_weights(state_dict):
    """Keys of 2-D `.weight` tensors (linear layers; the patch embedding is a 5-D conv)."""
    return [k for k, v in state_dict.items() if k.endswith(".weight") and v.dim() == 2]


def as_comfy_scaled_fp8(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = dict(state_dict)
    for key in _linear_weights(state_dict):
        w = state_dict[key].float()
        scale = _kernels.absmax_scale(w.abs().amax(), torch.float8_e4m3fn)
        out[key] = _kernels.quantize_with_scale(w, scale, torch.float8_e4m3fn)
        module = key[: -len(".weight")]
        out[module + COMFY_SCALE_SUFFIX] = scale.reshape(())
        if module + ".bias" in state_dict:
            out[module + ".bias"] = state_dict[module + ".bias"].to(torch.float8_e4m3fn).float()
    out[COMFY_MARKER] = torch.zeros(2, dtype=torch.float8_e4m3fn)
    return out


def as_plain_fp8(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = dict(state_dict)
    for key in _linear_weights(state_dict):
        if is_block_linear(key[: -len(".weight")]):
            out[key] = state_dict[key].float().clamp(-_kernels.FP8_MAX, _kernels.FP8_MAX).to(torch.float8_e4m3fn)
    return out


def quantized_checkpoint(state_dict: dict[str, torch.Tensor], layout: str, fmt: str = "fp8") -> dict[str, torch.Tensor]:
    """`state_dict` is left untouched."""
    if layout == "lightx2v":
        return quantize_state_dict(dict(state_dict), fmt)
    if layout == "comfy_scaled_fp8":
        return as_comfy_scaled_fp8(state_dict)
    if layout == "plain_fp8":
        return as_plain_fp8(state_dict)
    raise ValueError(f"layout must be one of {LAYOUTS}")
