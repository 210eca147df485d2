"""QuantLinear: an 8-bit linear layer (int8 or float8_e4m3fn weights, per-output-channel float32 scales).

It also speaks ComfyUI's weight-patching protocol (the attributes and `convert_weight` / `set_weight`
hooks that comfy.model_patcher looks for), so native LoRA nodes work on it by
dequantize -> merge -> requantize. A merged weight is requantized with fresh per-channel scales that
travel on the new weight tensor itself: when ComfyUI unpatches it restores the original weight tensor,
and with it the original `weight_scale`, so patching and unpatching are exact.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn

from ..kernel_loader import load_kernels
from ..parameters import frozen_parameter
from .backends import compiled_gemm, compiled_linear, dispatch
from .formats import FORMATS, format_of_dtype, quantize_weight

MODES = ("w8a8", "weight_only")
_PATCHED_SCALE = "_lightx2v_scale"


class QuantizedActivation(NamedTuple):
    """An input already quantized per token for the 8-bit linears it feeds (wan/norm_quant.py makes it: one
    quantization shared by q, k and v). `shape` is the input's [..., in_features], `dtype` the outputs' dtype."""

    values: torch.Tensor  # [tokens, in_features] int8 or float8_e4m3fn
    scales: torch.Tensor  # [tokens, 1] float32
    shape: torch.Size
    dtype: torch.dtype


class QuantLinear(nn.Module):
    # Read by ComfyUI's model patcher: low-VRAM casting flag and per-forward weight/bias patch functions.
    comfy_cast_weights = False
    weight_function: list = []
    bias_function: list = []
    # Under torch.compile: inductor's own per-token quantization instead of our kernel (CompileSettings sets it).
    inductor_quantization = False

    def __init__(self, in_features: int, out_features: int, bias: bool = True, fmt: str = "fp8", mode: str = "w8a8",
                 device=None, bias_dtype=torch.bfloat16):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self.in_features, self.out_features, self.mode = in_features, out_features, mode
        self.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=FORMATS[fmt], device=device), requires_grad=False)
        self.weight_scale = nn.Parameter(torch.ones(out_features, 1, dtype=torch.float32, device=device), requires_grad=False)
        self.bias = nn.Parameter(torch.empty(out_features, dtype=bias_dtype, device=device), requires_grad=False) if bias else None

    @classmethod
    def from_float(cls, linear: nn.Linear, fmt: str, mode: str = "w8a8") -> "QuantLinear":
        """Quantize an existing float linear (its weight is read once; the result lives on the same device)."""
        q, scale = quantize_weight(linear.weight.detach(), fmt)
        bias = linear.bias
        layer = cls(linear.in_features, linear.out_features, bias is not None, fmt, mode, device="meta",
                    bias_dtype=bias.dtype if bias is not None else torch.bfloat16)
        layer.weight = frozen_parameter(q)
        layer.weight_scale = frozen_parameter(scale)
        if bias is not None:
            layer.bias = frozen_parameter(bias.detach())
        return layer

    @property
    def fmt(self) -> str:
        return format_of_dtype(self.weight.dtype)

    def current_scale(self) -> torch.Tensor:
        """The scale of the weight tensor now in place (a LoRA-merged weight carries its own)."""
        return getattr(self.weight, _PATCHED_SCALE, self.weight_scale)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, {self.fmt} {self.mode}, bias={self.bias is not None}"

    def forward(self, x: torch.Tensor | QuantizedActivation) -> torch.Tensor:
        if isinstance(x, QuantizedActivation):
            return self._prequantized_linear(x)
        return self._linear(x, gelu=False)

    def forward_gelu(self, x: torch.Tensor) -> torch.Tensor:
        """self(GELU_tanh(x)) with the GELU fused into the activation quantization (the FFN's second linear).

        The GELU output is quantized from float32 instead of first being rounded to x's dtype. Called directly
        (model.feed_forward), so forward hooks do not run: callers use it only on layers without hooks.
        """
        return self._linear(x, gelu=True)

    def _weights(self, device: torch.device):
        """Weight, scale and bias on `device`, with ComfyUI's per-forward weight/bias patches applied."""
        weight, scale = self.weight, self.current_scale()
        if weight.device != device:  # ComfyUI low-VRAM mode keeps weights on the host
            weight = weight.to(device, non_blocking=True)
        scale = scale.to(device, non_blocking=True)
        for patch in self.weight_function:  # ComfyUI's LowVramPatch: returns the requantized merged weight
            weight = patch(weight)
        bias = self.bias
        if bias is not None:
            bias = bias.to(device, non_blocking=True)
            for patch in self.bias_function:
                bias = patch(bias)
        return weight, scale, bias

    def _linear(self, x: torch.Tensor, gelu: bool) -> torch.Tensor:
        weight, scale, bias = self._weights(x.device)
        x2d = x.reshape(-1, self.in_features)
        if not x2d.is_contiguous():
            x2d = x2d.contiguous()
        if _is_compiling():  # the same backend, our kernels as opaque custom ops
            y = compiled_linear(self.fmt, self.mode, x2d, weight, scale, bias, gelu, self.inductor_quantization)
        else:
            y = dispatch(self.fmt, self.mode, x2d, weight, scale, bias, gelu)
        return y.reshape(*x.shape[:-1], self.out_features)

    def _prequantized_linear(self, x: QuantizedActivation) -> torch.Tensor:
        if x.values.dtype != self.weight.dtype or self.mode != "w8a8":
            raise ValueError(f"a {x.values.dtype} quantized input cannot feed this {self.fmt} {self.mode} layer")
        weight, scale, bias = self._weights(x.values.device)
        run = compiled_gemm if _is_compiling() else dispatch.gemm
        y = run(self.fmt, self.mode, x.values, x.scales, weight, scale, bias, x.dtype)
        return y.reshape(*x.shape[:-1], self.out_features)

    # ---- ComfyUI weight patching (comfy.model_patcher.get_key_weight finds these by name) ----

    def convert_weight(self, weight: torch.Tensor, inplace: bool = False, **kwargs) -> torch.Tensor:
        """Stored 8-bit values (or a float32 copy of them) -> the float32 weight they stand for."""
        scale = self.current_scale().to(device=weight.device, dtype=torch.float32)
        if inplace and weight.dtype == torch.float32:
            return weight.mul_(scale)
        return weight.float() * scale

    def set_weight(self, weight: torch.Tensor, inplace_update: bool = False, seed=None, return_weight: bool = False, **kwargs):
        """A merged float weight -> stored 8-bit form.

        In place (or when ComfyUI only wants the tensor back, in low-VRAM mode) the existing scales are
        kept and out-of-range values clamp; otherwise the weight is requantized with fresh scales.
        """
        if return_weight or inplace_update:
            q = load_kernels().quantize_with_scale(weight, self.current_scale().to(weight.device), self.weight.dtype)
            if return_weight:
                return q
            self.weight.data.copy_(q)
            return None
        q, scale = quantize_weight(weight, self.fmt)
        param = frozen_parameter(q.to(self.weight.device))
        setattr(param, _PATCHED_SCALE, scale.to(self.weight.device))
        self.weight = param
        return None

    def _apply(self, fn, recurse=True):
        # Module.to() moves parameters in place; the merged weight's own scale must follow it.
        super()._apply(fn, recurse)
        scale = getattr(self.weight, _PATCHED_SCALE, None)
        if scale is not None and scale.device != self.weight.device:
            setattr(self.weight, _PATCHED_SCALE, scale.to(self.weight.device))
        return self

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination[prefix + "weight_scale"] = self.current_scale() if keep_vars else self.current_scale().detach()


def _is_compiling() -> bool:
    compiler = getattr(torch, "compiler", None)
    return bool(compiler and hasattr(compiler, "is_compiling") and compiler.is_compiling())
