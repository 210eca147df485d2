"""Where a block's LayerNorm (+ modulation) and the 8-bit linears it feeds share one fused quantization.

`modulated(norm, x, shift, scale, linears)` stands for `torch.addcmul(shift, norm(x), 1 + scale)` and `normed(norm, x,
linears)` for `norm(x)`. Where the fused kernel (kernels/norm_quant.py) applies they return a QuantizedActivation
instead, which the QuantLinears take as their input: one read of x, one 8-bit write, one quantization for q, k and v
together. The kernel keeps the module ops' roundings, so the 8-bit values are the unfused path's but where the
norm's sums (in another order) move a value by one ulp.
It applies only where it can stand in for the module calls: a CUDA fp16/bf16 x with Triton installed; a plain
LayerNorm (an affine one with its weight and bias already in x's dtype on x's device and no ComfyUI weight patches,
as wan/norm_rope.py requires); and linears that are all W8A8 QuantLinears of one format, multiplying quantized
inputs, with no hooks on them or on `containers` (a LoRA side branch's hooks read the float input). The CPU keeps
the module ops, so its path stays bit-identical to ComfyUI's WanModel.
Under torch.compile the kernel is one opaque custom op (`lightx2v_nodes::layer_norm_quantize`).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..quant.backends import takes_quantized_input
from ..kernel_loader import load_kernels
from ..quant.linear import QuantizedActivation, QuantLinear

_kernels = load_kernels()


def _runs_here(x: torch.Tensor) -> bool:
    """The kernel's device and dtypes (tests force this on to run the kernel in Triton's CPU interpreter)."""
    return x.is_cuda and x.dtype in (torch.float16, torch.bfloat16) and _kernels.TRITON_AVAILABLE


def has_hooks(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks)


def _plain_norm(norm: nn.Module, x: torch.Tensor) -> bool:
    if not isinstance(norm, nn.LayerNorm) or tuple(norm.normalized_shape) != (x.shape[-1],) or norm.eps is None:
        return False
    if getattr(norm, "weight_function", None) or getattr(norm, "bias_function", None):
        return False  # ComfyUI's weight patches run in its forward
    if norm.weight is None:
        return norm.bias is None
    return (norm.bias is not None and all(p.dtype == x.dtype and p.device == x.device for p in (norm.weight, norm.bias)))


def applies(norm: nn.Module, x: torch.Tensor, linears, containers=()) -> bool:
    """True where the fused kernel can replace norm(x) (and the modulation) as the input of every layer in `linears`."""
    if not (_runs_here(x) and x.dim() == 3 and _plain_norm(norm, x)):
        return False
    if not all(isinstance(layer, QuantLinear) for layer in linears) or len({layer.weight.dtype for layer in linears}) != 1:
        return False
    if any(has_hooks(module) for module in (*linears, *containers)):
        return False
    tokens = x.shape[0] * x.shape[1]
    return all(takes_quantized_input(layer.fmt, layer.mode, x.device, tokens, layer.in_features, layer.out_features)
               for layer in linears)


def _layer_norm_quantize(x: torch.Tensor, qdtype: torch.dtype, eps: float, weight: torch.Tensor | None,
                         bias: torch.Tensor | None, shift: torch.Tensor | None,
                         scale: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    return _kernels.layer_norm_quantize(x, qdtype, eps, weight, bias, shift, scale)


if hasattr(torch.library, "custom_op"):
    # Opaque to dynamo and inductor: the Triton launch is not traced, only its output shapes.
    _layer_norm_quantize = torch.library.custom_op("lightx2v_nodes::layer_norm_quantize",
                                                   mutates_args=())(_layer_norm_quantize)

    @_layer_norm_quantize.register_fake
    def _(x, qdtype, eps, weight, bias, shift, scale):
        rows = x.shape[0] * x.shape[1]
        return x.new_empty((rows, x.shape[2]), dtype=qdtype), x.new_empty((rows, 1), dtype=torch.float32)


def _quantized(norm, x, linears, shift=None, scale=None) -> QuantizedActivation:
    values, scales = _layer_norm_quantize(x, linears[0].weight.dtype, float(norm.eps), norm.weight, norm.bias, shift,
                                          scale)
    return QuantizedActivation(values, scales, x.shape, x.dtype)


def modulated(norm: nn.Module, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, linears, containers=(),
              fuse: bool = True):
    """addcmul(shift, norm(x), 1 + scale) as the input of `linears` (x [B, L, D], shift/scale [B, 1, D]).
    fuse=False: always the module ops, then each linear's own quantization (bench/dit_forward.py --norm-quant-ab)."""
    if fuse and shift.dtype == scale.dtype == x.dtype and applies(norm, x, linears, containers):
        return _quantized(norm, x, linears, shift, scale)
    return torch.addcmul(shift, norm(x), 1 + scale)


def normed(norm: nn.Module, x: torch.Tensor, linears, containers=(), fuse: bool = True):
    """norm(x) as the input of `linears` (x [B, L, D]); fuse as in `modulated`."""
    if fuse and applies(norm, x, linears, containers):
        return _quantized(norm, x, linears)
    return norm(x)
