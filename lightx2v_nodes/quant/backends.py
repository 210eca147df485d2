"""Matmul backends of the quantized linear layer, and the automatic choice between them.

Every backend computes y = (q(x) @ q(W)^T) * s_x * s_W^T + bias with per-token dynamic activation
quantization (W8A8), except `weight_only`, which dequantizes W and multiplies in the compute dtype:
- scaled_mm:  fp8 via torch._scaled_mm with row-wise scales (cuBLASLt; compute capability >= 8.9)
- int_mm:     int8 via torch._int_mm (int32 out), scales and bias applied in a PyTorch epilogue
- triton:     our kernels: fused per-token quantization + 8-bit GEMM with the epilogue fused (int8, fp8)
- reference:  plain PyTorch in float32; runs anywhere (CPU included) and defines the expected numbers
The choice is made once per (format, mode, device, token-count class) and logged in one line: the order
follows bench/quant_linear.py on an H100 (2026-11-24), activation quantization included, per 14B shape:
  fp8,  32,760 tokens: triton 1.47-1.58x bf16, scaled_mm 1.13-1.33x -> triton first
        (H200, 2026-12-03, after the division-free quantization kernel: triton 1.63-1.76x, scaled_mm 1.48-1.64x)
  fp8,  <= 512 tokens (cross-attention k/v of text and CLIP context): scaled_mm 0.174 ms, triton 0.192 ms
  int8, 32,760 tokens: triton 1.33-1.39x, int_mm 0.5-0.8x (its int32 output round trip) -> triton first
  int8, <= 512 tokens: triton 0.195 ms, int_mm 0.214 ms
At <= 512 tokens every 8-bit backend is ~2x slower than a bf16 F.linear would be (launches and the
activation pass dominate; 2 such layers per block, ~0.1 ms each); there is no bf16 weight to fall back on
without doubling those layers' memory, so the fastest 8-bit backend is used.
LIGHTX2V_QUANT_BACKEND forces one (an error if it cannot run there). A GPU backend that fails on its first
call (e.g. an old driver) is replaced by the next candidate with a warning instead of failing the generation.
Under torch.compile, `compiled_linear` computes the same thing with our quantization kernel and the GEMM as
opaque custom ops on CUDA (the reference's torch ops elsewhere).
"""

from __future__ import annotations

import logging
import os

import torch
import torch.nn.functional as F

from ..errors import LightX2VError
from .formats import FORMATS
from ..kernel_loader import load_kernels

log = logging.getLogger("lightx2v_nodes")
BACKEND_NAMES = ("scaled_mm", "int_mm", "triton", "reference", "weight_only")
ENV_OVERRIDE = "LIGHTX2V_QUANT_BACKEND"
FP8_MIN_CAPABILITY = (8, 9)
FEW_TOKENS = 1024  # below: the cross-attention context projections (512 text / 257 CLIP tokens)

_kernels = load_kernels()


def _triton_runs(x) -> bool:
    return x.is_cuda and _kernels.TRITON_AVAILABLE


def _reference_quantizer(gelu):
    return _kernels.gelu_quantize_per_token_reference if gelu else _kernels.quantize_per_token_reference


def _quantize_activations(x, qdtype, gelu=False):
    """Per-token quantization of x, or of GELU_tanh(x) with gelu=True: Triton kernels on CUDA, else PyTorch."""
    if _triton_runs(x):
        return (_kernels.gelu_quantize_per_token if gelu else _kernels.quantize_per_token)(x, qdtype)
    return _reference_quantizer(gelu)(x, qdtype)


def reference(x, weight, scale, bias, gelu=False):
    xq, sx = _reference_quantizer(gelu)(x, weight.dtype)
    return _kernels.scaled_gemm_reference(xq, sx, weight, scale, bias, out_dtype=x.dtype)


def weight_only(x, weight, scale, bias, gelu=False):
    if gelu:
        x = F.gelu(x, approximate="tanh")
    w = (weight.float() * scale).to(x.dtype)  # one rounding, from the exact float32 product
    return F.linear(x, w, None if bias is None else bias.to(x.dtype))


def scaled_mm_gemm(xq, sx, weight, scale, bias, out_dtype):
    out = torch._scaled_mm(xq, weight.t(), scale_a=sx, scale_b=scale.reshape(1, -1).float(),
                           bias=None if bias is None else bias.to(torch.bfloat16), out_dtype=torch.bfloat16)
    return out.to(out_dtype)


def int_mm_gemm(xq, sx, weight, scale, bias, out_dtype):
    out = torch._int_mm(xq, weight.t()).float().mul_(sx).mul_(scale.reshape(1, -1))
    if bias is not None:
        out.add_(bias.float())
    return out.to(out_dtype)


def scaled_mm(x, weight, scale, bias, gelu=False):
    xq, sx = _quantize_activations(x, torch.float8_e4m3fn, gelu)
    return scaled_mm_gemm(xq, sx, weight, scale, bias, x.dtype)


def int_mm(x, weight, scale, bias, gelu=False):
    xq, sx = _quantize_activations(x, torch.int8, gelu)
    return int_mm_gemm(xq, sx, weight, scale, bias, x.dtype)


def triton(x, weight, scale, bias, gelu=False):
    xq, sx = _quantize_activations(x, weight.dtype, gelu)
    return _kernels.scaled_gemm(xq, sx, weight, scale, bias, out_dtype=x.dtype)


def _shape_ok(name, m, k, n) -> bool:
    """cuBLAS constraints: _scaled_mm needs K, N multiples of 16; _int_mm needs M > 16 and K, N multiples of 8."""
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


def candidates(fmt: str, mode: str, device_type: str, capability: tuple[int, int] | None,
               few_tokens: bool = False) -> list[str]:
    """Backends to try, best first, for a format ('int8'/'fp8'), mode ('w8a8'/'weight_only'), device and
    token-count class (few_tokens: fewer than FEW_TOKENS rows, e.g. the cross-attention context)."""
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
        cublas = ["scaled_mm"] if hasattr(torch, "_scaled_mm") else []
        ours = ["triton"] if triton_ok else []
        return (cublas + ours if few_tokens else ours + cublas) + ["weight_only"]
    # int8: the fused Triton GEMM avoids _int_mm's int32 round trip through memory (at every measured size).
    return (["triton"] if triton_ok else []) + (["int_mm"] if hasattr(torch, "_int_mm") else []) + ["reference"]


def choose(fmt: str, mode: str, device_type: str, capability=None, forced: str | None = None,
           few_tokens: bool = False) -> list[str]:
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
    order = candidates(fmt, mode, device_type, capability, few_tokens)
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
    """Resolves and caches the backend per (format, mode, device, token-count class); logs each choice once."""

    def __init__(self):
        self._chosen: dict[tuple, list[str]] = {}

    def order(self, fmt, mode, device: torch.device, tokens: int) -> list[str]:
        """The cached candidate list (best first) for this call's kind; chosen and logged on first use."""
        few = tokens < FEW_TOKENS
        key = (fmt, mode, device.type, device.index, few)
        order = self._chosen.get(key)
        if order is None:
            capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
            order = self._chosen[key] = choose(fmt, mode, device.type, capability, few_tokens=few)
            log.info("LightX2V: %s %s linears on %s with %s %d tokens use %s", fmt,
                     "W8A8" if mode == "w8a8" else "weight-only", device, "<" if few else ">=", FEW_TOKENS,
                     DESCRIPTIONS[order[0]])
        return order

    def select(self, fmt, mode, device: torch.device, m: int, k: int, n: int) -> str:
        """The backend an [m, k] x [n, k]^T call runs on: the first candidate whose shape constraints it meets."""
        order = self.order(fmt, mode, device, m)
        for name in order[:-1]:  # odd shapes skip a cuBLAS backend for this call only
            if _shape_ok(name, m, k, n):
                return name
        return order[-1]

    def __call__(self, fmt, mode, x, weight, scale, bias, gelu=False):
        """The layer's output for x, or for GELU_tanh(x) with gelu=True (fused into the activation quantization)."""
        order = self.order(fmt, mode, x.device, x.shape[0])
        name = self.select(fmt, mode, x.device, x.shape[0], x.shape[1], weight.shape[0])
        if name != order[0]:
            return BACKENDS[name](x, weight, scale, bias, gelu=gelu)
        while True:
            try:
                return BACKENDS[order[0]](x, weight, scale, bias, gelu=gelu)
            except torch.cuda.OutOfMemoryError:
                raise  # not the backend's fault: ComfyUI handles it (e.g. retries in low-VRAM mode)
            except (RuntimeError, NotImplementedError) as exc:
                if len(order) == 1 or x.device.type != "cuda":
                    raise
                log.warning("LightX2V: the %s backend failed (%s); using %s from now on.", order[0],
                            str(exc).splitlines()[0][:200], DESCRIPTIONS[order[1]])
                order.pop(0)

    def gemm(self, fmt, mode, xq, sx, weight, scale, bias, out_dtype):
        """The layer's output for an input quantized already (xq, sx): the chosen backend's GEMM alone."""
        name = self.select(fmt, mode, xq.device, xq.shape[0], xq.shape[1], weight.shape[0])
        return _GEMMS[name](xq, sx, weight, scale, bias, out_dtype)

    def reset(self):
        self._chosen.clear()


dispatch = BackendDispatcher()


# ---- torch.compile path ----

def _triton_gemm(xq: torch.Tensor, sx: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor,
                 bias: torch.Tensor | None, out_dtype: torch.dtype) -> torch.Tensor:
    return _kernels.scaled_gemm(xq, sx, weight, scale, bias, out_dtype=out_dtype)


def _triton_quantize(x: torch.Tensor, qdtype: torch.dtype, gelu: bool) -> tuple[torch.Tensor, torch.Tensor]:
    return _quantize_activations(x, qdtype, gelu)


if hasattr(torch.library, "custom_op"):
    # Opaque to dynamo: the Triton launcher (autotuner, grid callback) is not traced, only its output shape.
    _triton_gemm = torch.library.custom_op("lightx2v_nodes::scaled_gemm", mutates_args=())(_triton_gemm)

    @_triton_gemm.register_fake
    def _(xq, sx, weight, scale, bias, out_dtype):
        return xq.new_empty((xq.shape[0], weight.shape[0]), dtype=out_dtype)

    # Inductor's own per-token quantization took 0.29 ms per call at 32,760 x 5,120 in a compiled 14B step on the H200,
    # our kernel 0.14; with GELU, inductor's was ~3x over memory bandwidth (bench/RESULTS.md).
    _triton_quantize = torch.library.custom_op("lightx2v_nodes::quantize_per_token", mutates_args=())(_triton_quantize)

    @_triton_quantize.register_fake
    def _(x, qdtype, gelu):
        return x.new_empty(x.shape, dtype=qdtype), x.new_empty((x.shape[0], 1), dtype=torch.float32)


_GEMMS = {"scaled_mm": scaled_mm_gemm, "int_mm": int_mm_gemm, "triton": _triton_gemm,
          "reference": _kernels.scaled_gemm_reference}


def _choice_for_trace(fmt: str, mode: str, device: str, m: int, k: int, n: int) -> str:
    """dispatch.select from plain constants; dynamo calls it once at trace time instead of tracing it."""
    return dispatch.select(fmt, mode, torch.device(device), m, k, n)


if hasattr(torch, "compiler") and hasattr(torch.compiler, "assume_constant_result"):
    _choice_for_trace = torch.compiler.assume_constant_result(_choice_for_trace)


def takes_quantized_input(fmt: str, mode: str, device: torch.device, m: int, k: int, n: int) -> bool:
    """Whether an [m, k] x [n, k]^T call's backend multiplies an already quantized input (all but weight-only
    compute). Traceable: the choice is a constant to dynamo."""
    return mode == "w8a8" and _choice_for_trace(fmt, mode, str(device), m, k, n) != "weight_only"


def compiled_linear(fmt, mode, x, weight, scale, bias, gelu=False, inductor_quantization=False):
    """What `dispatch` computes, written to be traced by torch.compile (same backend choice). The activation
    quantization (with GELU where gelu=True) and the GEMM are opaque calls of our kernels on CUDA.
    inductor_quantization=True: the reference's torch ops for the quantization (without GELU), for inductor to fuse
    into the kernel that produced x; about equal to ours in a compiled fp8 step (bench/dit_forward.py --quant-ab)."""
    name = _choice_for_trace(fmt, mode, str(x.device), x.shape[0], x.shape[1], weight.shape[0])
    if name == "weight_only":
        return weight_only(x, weight, scale, bias, gelu)
    if name != "reference" and _triton_runs(x) and (gelu or not inductor_quantization):
        xq, sx = _triton_quantize(x, weight.dtype, gelu)
    else:
        xq, sx = _reference_quantizer(gelu)(x, weight.dtype)
    return _GEMMS[name](xq, sx, weight, scale, bias, x.dtype)


def compiled_gemm(fmt, mode, xq, sx, weight, scale, bias, out_dtype):
    """dispatch.gemm, written to be traced by torch.compile."""
    name = _choice_for_trace(fmt, mode, str(xq.device), xq.shape[0], xq.shape[1], weight.shape[0])
    return _GEMMS[name](xq, sx, weight, scale, bias, out_dtype)
