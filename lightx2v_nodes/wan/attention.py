"""Attention backends for the DiT, and the one place that decides which of them runs.

`choose_attention(requested, device, compute_dtype)` turns the loader's `attention` choice into an
AttentionBackend once, from the user's choice, the device's capability, the compute dtype and the installed
packages; the model receives it explicitly (WanDiT.set_attention) and the loader logs its description, which says
what runs. A backend's call takes q, k, v as [B, L, heads, head_dim] and returns [B, Lq, heads*head_dim].

- `sdpa`: PyTorch's scaled_dot_product_attention (exact; cuDNN / FlashAttention on CUDA, the math kernel on CPU).
- `lightx2v-int8`: our 8-bit Triton kernel (kernels/attention_8bit.py: int8 Q.K^T with K smoothing and
  Hadamard-rotated Q/K, fp8 P.V). Its fp8 P.V product needs fp8 tensor cores: compute capability 8.9 or newer
  (Ada, Hopper, Blackwell), the same rule as the fp8 GEMMs (quant.backends.FP8_MIN_CAPABILITY). It needs 16-bit
  inputs. It pays only for long key sequences, so its call routes per call on the shapes alone: fewer than
  MIN_KEYS_8BIT keys (cross-attention to 512 text / 257 image tokens, small videos) and head dims other than
  64/128 go to SDPA. For self-attention it also takes the un-normed q/k projections (`from_projections`): the
  fused RMSNorm + RoPE kernel (kernels/norm_rope.py) writes the int8 Q directly and K's smoothing mean falls out
  of its column sums. bench/attention.py and bench/dit_forward.py measure it against SDPA (H200, 14B 480p
  self-attention: 26.6 ms vs cuDNN's 36.7 ms; a random 14B DiT stays at cosine 0.9999 vs SDPA).
- `sage`, `flash`: the sageattention / flash-attn packages (CUDA, 16-bit).
- `auto`: SDPA for fp32 compute (a request for precision gets exact attention), else lightx2v-int8 where it can
  run (CUDA with fp8 tensor cores, Triton installed), else SDPA.
A choice that cannot run on this device or dtype runs SDPA, and the description says so.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from typing import Callable

import torch
import torch.nn.functional as F

from ..errors import LightX2VError
from ..kernel_loader import load_kernels
from ..quant.backends import FP8_MIN_CAPABILITY
from . import norm_rope

BACKENDS = ("auto", "lightx2v-int8", "sdpa", "sage", "flash")
# Fewest keys for which the 8-bit kernel is used (H100: slower than cuDNN at 8,192 tokens, faster at 32,760).
MIN_KEYS_8BIT = 16384
HEAD_DIMS_8BIT = (64, 128)
SIXTEEN_BIT = (torch.float16, torch.bfloat16)
_PACKAGES = {"sage": ("sageattention", "pip install sageattention (or the pack's [sage] extra)"),
             "flash": ("flash_attn", "pip install flash-attn --no-build-isolation")}


@dataclasses.dataclass(frozen=True)
class AttentionBackend:
    """What runs: `name` (one of BACKENDS but auto), `call(q, k, v)`, and for self-attention optionally
    `from_projections(q_proj, k_proj, v, norm_q, norm_k, rope)`, which takes the un-normed [B, L, dim] q/k
    projections and applies the norms and RoPE itself. `description`: one line for the log."""

    name: str
    call: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
    description: str
    from_projections: Callable | None = None


def _sdpa(q, k, v):
    b, lq, h, d = q.shape
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2).reshape(b, lq, h * d)


def _sage(q, k, v):
    from sageattention import sageattn

    b, lq, h, d = q.shape
    return sageattn(q, k, v, tensor_layout="NHD", is_causal=False).reshape(b, lq, h * d)


def _flash(q, k, v):
    from flash_attn import flash_attn_func

    b, lq, h, d = q.shape
    return flash_attn_func(q, k, v).reshape(b, lq, h * d)


def sdpa_backend(description: str = "sdpa") -> AttentionBackend:
    return AttentionBackend("sdpa", _sdpa, description)


SDPA = sdpa_backend()


def eight_bit_backend(min_keys: int = MIN_KEYS_8BIT, description: str = "lightx2v-int8", attend=None) -> AttentionBackend:
    """The 8-bit kernel's backend. It does not check the device: choose_attention does, once. Tests lower
    `min_keys` to run the kernel on tiny shapes in Triton's CPU interpreter. attend(q, k, v, quantized=...): the
    kernel call (default attention8; wan/sparse_attention.py passes the block-sparse one)."""

    def uses_kernel(k: torch.Tensor) -> bool:
        return k.shape[-1] in HEAD_DIMS_8BIT and k.shape[1] >= min_keys

    @torch.compiler.disable  # Triton launches with Python-side setup: compiled blocks call it as is (one graph break)
    def call(q, k, v):
        if not uses_kernel(k):
            return _sdpa(q, k, v)
        b, lq, h, d = q.shape
        return (attend or load_kernels().attention8)(q, k, v).reshape(b, lq, h * d)

    @torch.compiler.disable
    def from_projections(q, k, v, norm_q, norm_k, rope):
        """Self-attention from the un-normed q/k projections [B, L, dim] and v [B, L, H, D]: the fused norm + RoPE
        kernel writes the int8 Q the attention kernel reads, and the normed K with per-block column sums, whose
        total is K's smoothing mean (no extra pass over K for it)."""
        heads = v.shape[2]
        if not uses_kernel(v):
            return _sdpa(norm_rope.fused(q, norm_q, rope, heads), norm_rope.fused(k, norm_k, rope, heads), v)
        kernels = load_kernels()
        q8, q_scale = kernels.rms_norm_rope_int8(q, norm_q.weight, rope, heads, norm_q.eps)
        k, k_sums = kernels.rms_norm_rope_column_sums(k, norm_k.weight, rope, heads, norm_k.eps)
        k_mean = k_sums.sum(dim=2) / k.shape[1]
        quantized = (q8, q_scale) + kernels.quantize_kv(k, v, k_mean=k_mean)
        b, length, h, d = k.shape
        # With `quantized` given attention8 reads only q's shape, dtype and device, which self-attention's k shares.
        return (attend or kernels.attention8)(k, k, v, quantized=quantized).reshape(b, length, h * d)

    return AttentionBackend("lightx2v-int8", call, description, from_projections)


def has_fp8_tensor_cores(device: torch.device) -> bool:
    return device.type == "cuda" and tuple(torch.cuda.get_device_capability(device)) >= FP8_MIN_CAPABILITY


def _installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def check_attention_choice(requested: str) -> None:
    """A clear error for a name the loader does not offer or a backend whose package is missing."""
    if requested not in BACKENDS:
        raise LightX2VError(f"Unknown attention backend '{requested}': choose one of {', '.join(BACKENDS)}.")
    if requested == "lightx2v-int8" and not _installed("triton"):
        raise LightX2VError("Attention backend 'lightx2v-int8' needs Triton (pip install triton; it ships with "
                            "PyTorch on Linux). Choose 'auto' or 'sdpa'.")
    if requested in _PACKAGES:
        package, how = _PACKAGES[requested]
        if not _installed(package):
            raise LightX2VError(
                f"Attention backend '{requested}' needs the Python package '{package}', which is not installed "
                f"in ComfyUI's environment. Install it ({how}) or choose 'auto'/'sdpa'.")


def _why_eight_bit_cannot_run(device: torch.device, compute_dtype: torch.dtype) -> str | None:
    if device.type != "cuda":
        return f"it needs a CUDA GPU, this device is {device.type}"
    if not has_fp8_tensor_cores(device):
        major, minor = torch.cuda.get_device_capability(device)
        return (f"it needs fp8 tensor cores (compute capability 8.9+: RTX 40xx, H100 or newer), "
                f"{torch.cuda.get_device_name(device)} has {major}.{minor}")
    if compute_dtype not in SIXTEEN_BIT:
        return f"it needs bf16 or fp16 compute, the model computes in {str(compute_dtype).replace('torch.', '')}"
    if not _installed("triton"):
        return "Triton is not installed"
    return None


def choose_attention(requested: str, device: torch.device | str, compute_dtype: torch.dtype) -> AttentionBackend:
    """The backend that runs for the loader's `attention` choice on `device` computing in `compute_dtype`."""
    check_attention_choice(requested)
    device = torch.device(device)
    dtype_name = str(compute_dtype).replace("torch.", "")
    eight_bit_blocker = _why_eight_bit_cannot_run(device, compute_dtype)
    routing = (f"8-bit kernel for attention over >= {MIN_KEYS_8BIT} keys with head dim 64/128, SDPA for the "
               "other calls")
    if requested == "auto":
        if compute_dtype == torch.float32:
            return sdpa_backend("sdpa (auto: exact attention for fp32 compute)")
        if eight_bit_blocker is None:
            return eight_bit_backend(description=f"lightx2v-int8 (auto: fp8 tensor cores, {dtype_name}; {routing})")
        return sdpa_backend(f"sdpa (auto: lightx2v-int8 cannot run here, {eight_bit_blocker})")
    if requested == "lightx2v-int8":
        if eight_bit_blocker is None:
            return eight_bit_backend(description=f"lightx2v-int8 ({routing})")
        return sdpa_backend(f"sdpa instead of the requested lightx2v-int8 ({eight_bit_blocker})")
    if requested in ("sage", "flash"):
        if device.type == "cuda" and compute_dtype in SIXTEEN_BIT:
            return AttentionBackend(requested, _sage if requested == "sage" else _flash, requested)
        needs = "a CUDA GPU" if device.type != "cuda" else f"bf16 or fp16 compute, the model computes in {dtype_name}"
        return sdpa_backend(f"sdpa instead of the requested {requested} (it needs {needs})")
    return SDPA
