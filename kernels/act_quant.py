"""Per-token (per-row) dynamic symmetric activation quantization to int8 or float8_e4m3fn.

s = absmax(row) / QMAX; int8: q = clamp(round(x / s), -128, 127); fp8: q = fp8(clamp(x / s, -448, 448)).
The Triton kernel fuses the absmax, the scale and the cast into one launch (one program per row), where
PyTorch needs four passes over the activations.

`gelu_quantize_per_token` quantizes GELU(x) (tanh approximation, kept in float32 where an unfused GELU
would round it to x's dtype first) for the FFN's second linear: one read of the [tokens, ffn_dim] hidden state
from memory and one 8-bit write. Unfused, GELU writes and re-reads that tensor (0.9 GB per 14B block at 480p),
and inductor's fused version of GELU + quantization measured ~3x over memory bandwidth.
"""

from __future__ import annotations

import os

import torch

QMAX = {torch.int8: 127.0, torch.float8_e4m3fn: 448.0}
# Rows that are all zero get this absmax, so their scale is not 0 (x / 0 would be NaN); q is 0 anyway.
MIN_ABSMAX = 1e-12
# Adding and subtracting 1.5 * 2^23 rounds an fp32 value to the nearest integer, ties to even, like torch.round.
_ROUND_MAGIC = 12582912.0


def quantize_per_token_reference(x: torch.Tensor, qdtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] -> (q [M, K] qdtype, scale [M, 1] float32)."""
    qmax = QMAX[qdtype]
    xf = x.float()
    absmax = xf.abs().amax(dim=-1, keepdim=True).clamp_min(MIN_ABSMAX)
    # Tensor divisors, IEEE-rounded everywhere (PyTorch's CUDA division by a Python scalar multiplies by the
    # reciprocal, 1 ulp off); the kernel divides with div_rn, so both give the same bits.
    scale = absmax / torch.full_like(absmax, qmax)
    scaled = xf / scale
    if qdtype == torch.int8:
        return torch.round(scaled).clamp(-128, 127).to(torch.int8), scale
    return scaled.clamp(-qmax, qmax).to(qdtype), scale


def gelu_quantize_per_token_reference(x: torch.Tensor, qdtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """quantize_per_token_reference(GELU_tanh(x)), GELU computed and kept in float32."""
    return quantize_per_token_reference(torch.nn.functional.gelu(x.float(), approximate="tanh"), qdtype)


_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

try:
    import triton
    import triton.language as tl

    _GELU_EXPONENT = tl.constexpr(-2.0 * 0.7978845608028654 * 1.4426950408889634)  # -2 sqrt(2 / pi) log2(e)

    @triton.jit
    def _round_to_e4m3_grid(v):
        """Round fp32 v (|v| <= 448) to the nearest float8_e4m3fn value, ties to even, in fp32 arithmetic.

        The cast that follows is then exact. The hardware cast rounds the same way, but Triton's CPU
        interpreter mis-rounds values whose mantissa carries into the exponent; this keeps both identical.
        """
        exponent = ((v.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127
        ulp_exponent = tl.maximum(exponent, -6) - 3  # 3 mantissa bits; subnormals below 2^-6
        ulp = ((ulp_exponent + 127) << 23).to(tl.float32, bitcast=True)
        return ((v / ulp + 12582912.0) - 12582912.0) * ulp

    @triton.jit
    def _load_activation(ptrs, mask, GELU: tl.constexpr):
        v = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
        if GELU:  # GELU_tanh(v) = 0.5 v (1 + tanh(u)) = v / (1 + exp(-2u)), u = sqrt(2/pi) (v + 0.044715 v^3)
            v = v / (1.0 + tl.math.exp2((v + 0.044715 * v * v * v) * _GELU_EXPONENT))
        return v

    @triton.jit
    def _act_quant_kernel(x_ptr, q_ptr, s_ptr, K, stride_x, stride_q, QMAX_C: tl.constexpr, IS_INT8: tl.constexpr,
                          GELU: tl.constexpr, INTERPRETED: tl.constexpr, BLOCK: tl.constexpr):
        # Two passes over the row (absmax, then quantize); the second reads it from L2.
        row = tl.program_id(0).to(tl.int64)
        x_row = x_ptr + row * stride_x
        q_row = q_ptr + row * stride_q
        absmax = tl.zeros([BLOCK], dtype=tl.float32)
        for start in range(0, K, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            absmax = tl.maximum(absmax, tl.abs(_load_activation(x_row + cols, cols < K, GELU)))
        row_absmax = tl.maximum(tl.max(absmax, axis=0), 1e-12)
        scale = tl.math.div_rn(row_absmax, QMAX_C)
        tl.store(s_ptr + row, scale)
        inverse = tl.math.div_rn(QMAX_C, row_absmax)
        for start in range(0, K, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            v = _load_activation(x_row + cols, cols < K, GELU)
            # Plain: an IEEE division, bit-identical to the reference. GELU (already not bit-identical, its exp2
            # and division are the fast approximations): a multiply, since dividing was most of the kernel's time.
            v = v * inverse if GELU else tl.math.div_rn(v, scale)
            if IS_INT8:
                v = tl.minimum(tl.maximum((v + 12582912.0) - 12582912.0, -128.0), 127.0)
            else:
                v = tl.minimum(tl.maximum(v, -QMAX_C), QMAX_C)
                if INTERPRETED:
                    v = _round_to_e4m3_grid(v)
            tl.store(q_row + cols, v.to(q_ptr.dtype.element_ty), mask=cols < K)

except ImportError:
    triton = None


def _launch(x: torch.Tensor, qdtype: torch.dtype, gelu: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if triton is None:
        raise RuntimeError("Triton is not installed")
    if x.stride(-1) != 1:
        x = x.contiguous()
    m, k = x.shape
    q = torch.empty((m, k), dtype=qdtype, device=x.device)
    scale = torch.empty((m, 1), dtype=torch.float32, device=x.device)
    block = min(triton.next_power_of_2(k), 4096)
    _act_quant_kernel[(m,)](x, q, scale, k, x.stride(0), q.stride(0), QMAX_C=QMAX[qdtype], IS_INT8=qdtype == torch.int8,
                            GELU=gelu, INTERPRETED=_INTERPRET, BLOCK=block, num_warps=8 if block >= 2048 else 4)
    return q, scale


def quantize_per_token(x: torch.Tensor, qdtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton version of quantize_per_token_reference (x [M, K] with a contiguous last dim)."""
    return _launch(x, qdtype, gelu=False)


def gelu_quantize_per_token(x: torch.Tensor, qdtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton version of gelu_quantize_per_token_reference (x [M, K] with a contiguous last dim)."""
    return _launch(x, qdtype, gelu=True)
