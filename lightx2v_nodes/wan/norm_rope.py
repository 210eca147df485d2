"""When the self-attention's RMSNorm + head split + RoPE run as one fused kernel (kernels/norm_rope.py).

The fused kernel computes what `apply_rope(heads(norm(projection)), rope)` computes (the same roundings; the
sum of squares in another order, so 16-bit results differ from the unfused ops by 1 ulp in a few elements).
It is used only where it can stand in for the norm module exactly: a CUDA fp16/bf16 tensor with Triton
installed, and an RMSNorm whose weight is already in that dtype on that device (so ComfyUI's low-VRAM or manual
weight casting would return the weight itself). ComfyUI's RMSNorm with weight patches (`weight_function` /
`bias_function`), a weight elsewhere (offloaded) or in another dtype keeps the module call, and so does the CPU
(whose path stays bit-identical to ComfyUI's WanModel).
Under torch.compile the kernel is one opaque custom op (`lightx2v_nodes::rms_norm_rope`).
"""

from __future__ import annotations

import torch

from ..kernel_loader import load_kernels

_kernels = load_kernels()


def _runs_here(x: torch.Tensor) -> bool:
    """The kernel's device and dtypes (tests force this on to run the kernel in Triton's CPU interpreter)."""
    return x.is_cuda and x.dtype in (torch.float16, torch.bfloat16) and _kernels.TRITON_AVAILABLE


def applies(x: torch.Tensor, norm: torch.nn.Module, heads: int) -> bool:
    """True where `fused(x, norm, rope, heads)` can replace the norm module + apply_rope for projection x."""
    if not (_runs_here(x) and isinstance(norm, torch.nn.RMSNorm)):
        return False
    weight = norm.weight
    if weight is None or norm.eps is None or weight.dtype != x.dtype or weight.device != x.device:
        return False
    # ComfyUI's weight patches run in its forward. Its weight casting (low-VRAM, manual cast) is the identity for a
    # weight already in x's dtype on x's device, as checked above; any other weight keeps the module call.
    if getattr(norm, "weight_function", None) or getattr(norm, "bias_function", None):
        return False
    dim = x.shape[-1]
    return weight.shape == (dim,) and dim % heads == 0 and (dim // heads) % 2 == 0


def _rms_norm_rope(x: torch.Tensor, weight: torch.Tensor, rotations: torch.Tensor, heads: int, eps: float) -> torch.Tensor:
    return _kernels.rms_norm_rope(x, weight, rotations, heads, eps)


if hasattr(torch.library, "custom_op"):
    # Opaque to dynamo and inductor: the Triton launch is not traced, only its output shape.
    _rms_norm_rope = torch.library.custom_op("lightx2v_nodes::rms_norm_rope", mutates_args=())(_rms_norm_rope)

    @_rms_norm_rope.register_fake
    def _(x, weight, rotations, heads, eps):
        return x.new_empty((x.shape[0], x.shape[1], heads, x.shape[2] // heads))


def fused(x: torch.Tensor, norm: torch.nn.Module, rotations: torch.Tensor, heads: int) -> torch.Tensor:
    """x [B, L, dim] -> normed, roped [B, L, heads, dim / heads] in one kernel (check `applies` first)."""
    return _rms_norm_rope(x, norm.weight, rotations, heads, float(norm.eps))
