"""Attention backends for the DiT. All take q, k, v as [B, L, heads, head_dim] and return [B, Lq, heads*head_dim].

`lightx2v-int8` is our 8-bit Triton kernel (kernels/attention_8bit.py: int8 Q.K^T with K smoothing and Hadamard-rotated
Q/K, fp8 P.V).
On the H200 it takes 26.6 ms (quantization included; Hopper's TMA kernel) at the 14B 480p self-attention shape, where
SDPA's cuDNN kernel takes 36.7 ms, sageattention 1.0.6 49.7 ms and SDPA's FlashAttention-2 59.5 ms (bench/NOTES.md,
stop 15; H100 before the TMA kernel: 28-30 ms vs cuDNN 37.0 ms), and a
random 14B DiT stays at cosine 0.9999 vs SDPA. It pays only for long key
sequences: below MIN_KEYS_8BIT keys (cross-attention to 512 text / 257 image tokens, small videos) quantizing
Q costs more than the kernel saves, so those calls, CPU tensors and unsupported head dims go to SDPA.
For self-attention it also takes the un-normed q/k projections (`from_projections`): the fused RMSNorm + RoPE
kernel (kernels/norm_rope.py) then writes the int8 Q directly and K's smoothing mean falls out of its column sums.
`auto` picks it on Hopper-class GPUs (compute capability 9.x, where it was measured) with Triton installed,
else SDPA (which on the H100 beats sageattention and flash-attn too, REFERENCE.md section 9).
"""

from __future__ import annotations

import functools
import importlib.util
import logging

import torch
import torch.nn.functional as F

from ..errors import LightX2VError
from ..kernel_loader import load_kernels
from . import norm_rope

log = logging.getLogger("lightx2v_nodes")

BACKENDS = ("auto", "lightx2v-int8", "sdpa", "sage", "flash")
# Fewest keys for which the 8-bit kernel is used (H100: slower than cuDNN at 8,192 tokens, faster at 32,760).
MIN_KEYS_8BIT = 16384
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


def _eight_bit_applies(q, k) -> bool:
    return (q.device.type == "cuda" and q.dtype in (torch.float16, torch.bfloat16) and q.shape[-1] in (64, 128)
            and k.shape[1] >= MIN_KEYS_8BIT and _has_fp8_tensor_cores(q.device))


@functools.lru_cache(maxsize=None)
def _has_fp8_tensor_cores(device: torch.device) -> bool:
    """fp8 P.V needs compute capability 8.9+ (Ada, Hopper and later); older GPUs keep SDPA, said once."""
    capable = torch.cuda.get_device_capability(device) >= (8, 9)
    if not capable:
        log.warning("LightX2V: attention lightx2v-int8 needs fp8 tensor cores (RTX 40xx / H100 or newer); "
                    "%s uses SDPA instead.", torch.cuda.get_device_name(device))
    return capable


@torch.compiler.disable  # Triton launches with Python-side setup: compiled blocks call it as is (one graph break)
def _lightx2v_int8(q, k, v):
    if not _eight_bit_applies(q, k):
        return _sdpa(q, k, v)
    b, lq, h, d = q.shape
    return load_kernels().attention8(q, k, v).reshape(b, lq, h * d)


@torch.compiler.disable
def _lightx2v_int8_from_projections(q, k, v, norm_q, norm_k, rope):
    """Self-attention from the un-normed q/k projections [B, L, dim] and v [B, L, H, D] (SelfAttention calls this
    where wan/norm_rope.applies): the fused norm + RoPE kernel writes the int8 Q the attention kernel reads, and
    the normed K with per-block column sums, whose total is K's smoothing mean (no extra pass over K for it)."""
    heads = v.shape[2]
    if not _eight_bit_applies(v, v):
        return _sdpa(norm_rope.fused(q, norm_q, rope, heads), norm_rope.fused(k, norm_k, rope, heads), v)
    kernels = load_kernels()
    q8, q_scale = kernels.rms_norm_rope_int8(q, norm_q.weight, rope, heads, norm_q.eps)
    k, k_sums = kernels.rms_norm_rope_column_sums(k, norm_k.weight, rope, heads, norm_k.eps)
    k_mean = k_sums.sum(dim=2) / k.shape[1]
    quantized = (q8, q_scale) + kernels.quantize_kv(k, v, k_mean=k_mean)
    b, length, h, d = k.shape
    # With `quantized` given attention8 reads only q's shape, dtype and device, which self-attention's k shares.
    return kernels.attention8(k, k, v, quantized=quantized).reshape(b, length, h * d)


_lightx2v_int8.from_projections = _lightx2v_int8_from_projections

_FUNCTIONS = {"sdpa": _sdpa, "sage": _sage, "flash": _flash, "lightx2v-int8": _lightx2v_int8}


def _prefers_8bit() -> bool:
    return (torch.cuda.is_available() and torch.cuda.get_device_capability()[0] == 9
            and importlib.util.find_spec("triton") is not None)


def resolve_backend(name: str) -> str:
    """Validate a backend name and check its package is installed; `auto` resolves to a concrete one."""
    if name not in BACKENDS:
        raise LightX2VError(f"Unknown attention backend '{name}': choose one of {', '.join(BACKENDS)}.")
    if name == "auto":
        return "lightx2v-int8" if _prefers_8bit() else "sdpa"
    if name == "lightx2v-int8" and importlib.util.find_spec("triton") is None:
        raise LightX2VError("Attention backend 'lightx2v-int8' needs Triton (pip install triton; it ships with "
                            "PyTorch on Linux). Choose 'auto' or 'sdpa'.")
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
