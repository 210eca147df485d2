"""Matmul backends of the quantized linear layer, and the automatic choice between them.

Every backend computes y = (q(x) @ q(W)^T) * s_x * s_W^T + bias with per-token dynamic activation
quantization (W8A8), except `weight_only`, which dequantizes W and multiplies in the compute dtype:
- scaled_mm:  fp8 via torch._scaled_mm with row-wise scales (cuBLASLt; compute capability >= 8.9)
- int_mm:     int8 via torch._int_mm (int32 out), scales and bias applied in a PyTorch epilogue
- triton:     our kernels: fused per-token quantization + 8-bit GEMM with the epilogue fused (int8, fp8)
- reference:  plain PyTorch in float32; runs anywhere (CPU included) and defines the expected numbers
The choice is made once per (format, mode, device) and logged in one line. LIGHTX2V_QUANT_BACKEND
forces one (an error if it cannot run there). A GPU backend that fails on its first call (e.g. an old
driver) is replaced by the next candidate with a warning instead of failing the whole generation.
"""

from __future__ import annotations

import logging
import os

import torch
import torch.nn.functional as F

from ..errors import LightX2VError
from .formats import FORMATS
from .kernel_import import load_kernels

log = logging.getLogger("lightx2v_nodes")
BACKEND_NAMES = ("scaled_mm", "int_mm", "triton", "reference", "weight_only")
ENV_OVERRIDE = "LIGHTX2V_QUANT_BACKEND"
FP8_MIN_CAPABILITY = (8, 9)

_kernels = load_kernels()


def _quantize_activations(x, qdtype):
    if x.is_cuda and _kernels.TRITON_AVAILABLE:
        return _kernels.quantize_per_token(x, qdtype)
    return _kernels.quantize_per_token_reference(x, qdtype)


def reference(x, weight, scale, bias):
    xq, sx = _kernels.quantize_per_token_reference(x, weight.dtype)
    return _kernels.scaled_gemm_reference(xq, sx, weight, scale, bias, out_dtype=x.dtype)


def weight_only(x, weight, scale, bias):
    w = (weight.float() * scale).to(x.dtype)  # one rounding, from the exact float32 product
    return F.linear(x, w, None if bias is None else bias.to(x.dtype))


def scaled_mm(x, weight, scale, bias):
    xq, sx = _quantize_activations(x, torch.float8_e4m3fn)
    out = torch._scaled_mm(xq, weight.t(), scale_a=sx, scale_b=scale.reshape(1, -1).float(),
                           bias=None if bias is None else bias.to(torch.bfloat16), out_dtype=torch.bfloat16)
    return out.to(x.dtype)


def int_mm(x, weight, scale, bias):
    xq, sx = _quantize_activations(x, torch.int8)
    out = torch._int_mm(xq, weight.t()).float().mul_(sx).mul_(scale.reshape(1, -1))
    if bias is not None:
        out.add_(bias.float())
    return out.to(x.dtype)


def triton(x, weight, scale, bias):
    xq, sx = _kernels.quantize_per_token(x, weight.dtype)
    return _kernels.scaled_gemm(xq, sx, weight, scale, bias, out_dtype=x.dtype)


def _shape_ok(name, x, weight) -> bool:
    """cuBLAS constraints: _scaled_mm needs K, N multiples of 16; _int_mm needs M > 16 and K, N multiples of 8."""
    m, k = x.shape
    n = weight.shape[0]
    if name == "scaled_mm":
        return k % 16 == 0 and n % 16 == 0
    if name == "int_mm":
        return m > 16 and k % 8 == 0 and n % 8 == 0
    return True


BACKENDS = {"scaled_mm": scaled_mm, "int_mm": int_mm, "triton": triton, "reference": reference, "weight_only": weight_only}
DESCRIPTIONS = {
    "scaled_mm": "torch._scaled_mm (fp8, row-wise scales)",
    "int_mm": "torch._int_mm (int8) + scale epilogue",
    "triton": "LightX2V Triton kernels (fused activation quantization, GEMM with fused epilogue)",
    "reference": "PyTorch reference (float32 emulation; slow, exact)",
    "weight_only": "weight-only (8-bit storage, dequantized to the compute dtype for the matmul)",
}


def candidates(fmt: str, mode: str, device_type: str, capability: tuple[int, int] | None) -> list[str]:
    """Backends to try, best first, for a format ('int8'/'fp8'), mode ('w8a8'/'weight_only') and device."""
    if fmt not in FORMATS:
        raise LightX2VError(f"Unknown quantization format '{fmt}': use one of {', '.join(FORMATS)}.")
    if mode == "weight_only":
        return ["weight_only"]
    if device_type != "cuda":
        return ["reference"]
    triton_ok = _kernels.TRITON_AVAILABLE
    if fmt == "fp8":
        if capability is None or tuple(capability) < FP8_MIN_CAPABILITY:
            return []
        return (["scaled_mm"] if hasattr(torch, "_scaled_mm") else []) + (["triton"] if triton_ok else []) + ["weight_only"]
    # int8: the fused Triton GEMM avoids _int_mm's int32 round trip through memory.
    return (["triton"] if triton_ok else []) + (["int_mm"] if hasattr(torch, "_int_mm") else []) + ["reference"]


def choose(fmt: str, mode: str, device_type: str, capability=None, forced: str | None = None) -> list[str]:
    """The ordered backend list for this layer kind; warns (once per caller) on the fp8 fallback."""
    forced = forced or os.environ.get(ENV_OVERRIDE) or None
    if forced:
        if forced not in BACKENDS:
            raise LightX2VError(f"{ENV_OVERRIDE}={forced} is not a backend; use one of {', '.join(BACKENDS)}.")
        allowed = candidates(fmt, mode, device_type, capability) + ["reference", "weight_only"]
        if forced not in allowed:
            raise LightX2VError(
                f"The quantized-matmul backend '{forced}' cannot run {fmt} {mode} on this {device_type} device "
                f"(compute capability {capability}); unset {ENV_OVERRIDE} or choose one of {', '.join(dict.fromkeys(allowed))}."
            )
        return [forced]
    order = candidates(fmt, mode, device_type, capability)
    if not order:  # fp8 W8A8 on a GPU without fp8 tensor cores
        cap = ".".join(map(str, capability)) if capability else "unknown"
        log.warning(
            "LightX2V: fp8 W8A8 needs a GPU of compute capability >= 8.9 (Ada, Hopper or newer); this one is %s. "
            "Falling back to fp8 weight-only (same memory savings, bf16 matmuls). Choose int8 for 8-bit matmuls on this GPU.",
            cap,
        )
        order = ["weight_only"]
    return order


class BackendDispatcher:
    """Resolves and caches the backend per (format, mode, device); logs the choice once."""

    def __init__(self):
        self._chosen: dict[tuple, list[str]] = {}

    def __call__(self, fmt, mode, x, weight, scale, bias):
        key = (fmt, mode, x.device.type, x.device.index)
        order = self._chosen.get(key)
        if order is None:
            capability = torch.cuda.get_device_capability(x.device) if x.device.type == "cuda" else None
            order = self._chosen[key] = choose(fmt, mode, x.device.type, capability)
            log.info("LightX2V: %s %s linears on %s use %s", fmt, "W8A8" if mode == "w8a8" else "weight-only",
                     x.device, DESCRIPTIONS[order[0]])
        for name in order[:-1]:  # odd shapes skip a cuBLAS backend for this call only
            if _shape_ok(name, x, weight):
                break
        else:
            name = order[-1]
        if name != order[0]:
            return BACKENDS[name](x, weight, scale, bias)
        while True:
            try:
                return BACKENDS[order[0]](x, weight, scale, bias)
            except torch.cuda.OutOfMemoryError:
                raise  # not the backend's fault: ComfyUI handles it (e.g. retries in low-VRAM mode)
            except (RuntimeError, NotImplementedError) as exc:
                if len(order) == 1 or x.device.type != "cuda":
                    raise
                log.warning("LightX2V: the %s backend failed (%s); using %s from now on.", order[0],
                            str(exc).splitlines()[0][:200], DESCRIPTIONS[order[1]])
                order.pop(0)

    def reset(self):
        self._chosen.clear()


dispatch = BackendDispatcher()
