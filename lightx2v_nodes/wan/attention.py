"""Attention backends for the DiT. All take q, k, v as [B, L, heads, head_dim] and return [B, Lq, heads*head_dim].

`auto` picks PyTorch SDPA: on the H100, SDPA's cuDNN kernel (37.7 ms at the 14B 480p shape) beats
sageattention 1.0.6 (49.4 ms) and flash-attn (59.4 ms), see REFERENCE.md section 9.
"""

from __future__ import annotations

import importlib.util
import logging

import torch
import torch.nn.functional as F

from ..errors import LightX2VError

log = logging.getLogger("lightx2v_nodes")

BACKENDS = ("auto", "sdpa", "sage", "flash")
_PACKAGES = {"sage": ("sageattention", "pip install sageattention (or the pack's [sage] extra)"),
             "flash": ("flash_attn", "pip install flash-attn --no-build-isolation")}


def _sdpa(q, k, v):
    b, lq, h, d = q.shape
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2).reshape(b, lq, h * d)


def _sage(q, k, v):
    from sageattention import sageattn

    b, lq, h, d = q.shape
    if q.device.type != "cuda" or q.dtype not in (torch.float16, torch.bfloat16):
        return _sdpa(q, k, v)  # sageattention's Triton kernels need CUDA and 16-bit inputs
    return sageattn(q, k, v, tensor_layout="NHD", is_causal=False).reshape(b, lq, h * d)


def _flash(q, k, v):
    from flash_attn import flash_attn_func

    b, lq, h, d = q.shape
    if q.device.type != "cuda" or q.dtype not in (torch.float16, torch.bfloat16):
        return _sdpa(q, k, v)
    return flash_attn_func(q, k, v).reshape(b, lq, h * d)


_FUNCTIONS = {"sdpa": _sdpa, "sage": _sage, "flash": _flash}


def resolve_backend(name: str) -> str:
    """Validate a backend name and check its package is installed; `auto` resolves to a concrete one."""
    if name not in BACKENDS:
        raise LightX2VError(f"Unknown attention backend '{name}': choose one of {', '.join(BACKENDS)}.")
    if name == "auto":
        return "sdpa"
    if name in _PACKAGES:
        package, how = _PACKAGES[name]
        if importlib.util.find_spec(package) is None:
            raise LightX2VError(
                f"Attention backend '{name}' needs the Python package '{package}', which is not installed "
                f"in ComfyUI's environment. Install it ({how}) or choose 'auto'/'sdpa'."
            )
    return name


def attention_function(name: str):
    return _FUNCTIONS[resolve_backend(name)]
