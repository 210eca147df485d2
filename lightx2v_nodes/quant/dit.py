"""Putting QuantLinear into a WanDiT: only the block linears (the 2-D weights LightX2V's
tools/convert/converter.py quantizes), by module path.

The DiT builds every Linear from one `operations.Linear`, so an ops namespace cannot tell a block linear
from the head; swapping the modules by name after construction is explicit and works the same for the
plain-PyTorch model and for the model ComfyUI builds with its own ops.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .formats import is_block_linear
from .linear import MODES, QuantLinear


def _block_linears(model: nn.Module):
    """(parent module, attribute name, module) of every block linear, collected before any swap."""
    found = []
    for name, module in model.named_modules():
        if is_block_linear(name) and isinstance(module, nn.Linear):
            parent_name, _, attr = name.rpartition(".")
            found.append((model.get_submodule(parent_name), attr, module))
    return found


def install_quant_linears(model: nn.Module, fmt: str, mode: str = "w8a8", bias_dtype=torch.bfloat16) -> int:
    """Replace the block linears by empty QuantLinears on the meta device (weights come from load_state_dict(assign=True))."""
    count = 0
    for parent, attr, linear in _block_linears(model):
        setattr(parent, attr, QuantLinear(linear.in_features, linear.out_features, linear.bias is not None, fmt, mode,
                                          device="meta", bias_dtype=bias_dtype))
        count += 1
    return count


def quantize_dit_(model: nn.Module, fmt: str, mode: str = "w8a8") -> nn.Module:
    """Quantize a built WanDiT in place (e.g. random 14B weights on the GPU for benchmarks); returns it.

    Layers are swapped one at a time, so peak memory is the float model plus one quantized layer.
    """
    layers = _block_linears(model)
    while layers:  # pop, so each float layer is freed as soon as it is replaced
        parent, attr, linear = layers.pop()
        setattr(parent, attr, QuantLinear.from_float(linear, fmt, mode))
        del linear
    return model


def set_quant_mode(model: nn.Module, mode: str) -> None:
    """Switch every QuantLinear between W8A8 and weight-only compute."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}")
    for module in model.modules():
        if isinstance(module, QuantLinear):
            module.mode = mode
