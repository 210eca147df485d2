"""Per-token (per-row) dynamic symmetric activation quantization to int8 or float8_e4m3fn.

s = absmax(row) / QMAX; int8: q = clamp(round(x / s), -128, 127); fp8: q = fp8(clamp(x / s, -448, 448)).
The Triton kernels fuse the absmax, the scale and the cast into one launch (PyTorch needs four passes) and divide
without a division instruction per element: up to 3.6 TB/s on an H200, 2.4x the previous kernel.

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
# Rows up to this wide are held in registers and quantized in one pass, several rows per program; wider rows take
# two passes over chunks of the row (the second from L2), 2,048 wide from 8,192 elements on. H200, 32,760 rows,
# bf16 in (bench/NOTES.md): one pass wins at 1,536 (0.052 vs 0.058 ms); at 5,120 and above two passes win
# (5,120: 0.141 vs 0.186 ms, 3.6 TB/s), one pass over a power-of-2-padded row leaving lanes idle and fewer rows in flight.
ONE_PASS_MAX_WIDTH = 2048
ROW_ELEMENTS_PER_PROGRAM = 4096


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
    def divide(v, scale, reciprocal, INTERPRETED: tl.constexpr):
        """v / scale, IEEE-rounded like the references' division, given reciprocal = div_rn(1, scale) (computed once per
        row or column), without a division per element (which made the quantization kernels compute-bound): a product
        with the rounded reciprocal, then one residual correction (Markstein)."""
        if INTERPRETED:  # the interpreter's fma rounds twice, which the correction relies on not doing
            return tl.math.div_rn(v, scale)
        quotient = v * reciprocal
        return tl.fma(tl.fma(-quotient, scale, v), reciprocal, quotient)

    @triton.jit
    def _quantize_values(v, scale, reciprocal, QMAX_C: tl.constexpr, IS_INT8: tl.constexpr, INTERPRETED: tl.constexpr):
        """float32 v, its row's scale (absmax / QMAX) and div_rn(1, scale) -> the 8-bit value of v / scale, as float32."""
        v = divide(v, scale, reciprocal, INTERPRETED)
        if IS_INT8:
            v = tl.minimum(tl.maximum((v + 12582912.0) - 12582912.0, -128.0), 127.0)
        else:
            v = tl.minimum(tl.maximum(v, -QMAX_C), QMAX_C)
            if INTERPRETED:
                v = _round_to_e4m3_grid(v)
        return v

    @triton.jit
    def _act_quant_rows_kernel(x_ptr, q_ptr, s_ptr, M, K, stride_x, stride_q, QMAX_C: tl.constexpr,
                               IS_INT8: tl.constexpr, GELU: tl.constexpr, INTERPRETED: tl.constexpr,
                               ROWS: tl.constexpr, BLOCK: tl.constexpr):
        # One pass: ROWS whole rows (BLOCK >= K) are loaded once into registers, reduced, quantized and stored,
        # so every load of the program is in flight at once and nothing is read twice.
        rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
        cols = tl.arange(0, BLOCK)
        rows64 = rows.to(tl.int64)
        mask = (rows[:, None] < M) & (cols[None, :] < K)
        v = _load_activation(x_ptr + rows64[:, None] * stride_x + cols[None, :], mask, GELU)
        absmax = tl.maximum(tl.max(tl.abs(v), axis=1), 1e-12)
        scale = tl.math.div_rn(absmax, QMAX_C)
        tl.store(s_ptr + rows, scale, mask=rows < M)
        v = _quantize_values(v, scale[:, None], tl.math.div_rn(1.0, scale)[:, None], QMAX_C, IS_INT8, INTERPRETED)
        tl.store(q_ptr + rows64[:, None] * stride_q + cols[None, :], v.to(q_ptr.dtype.element_ty), mask=mask)

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
        reciprocal = tl.math.div_rn(1.0, scale)
        for start in range(0, K, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            v = _quantize_values(_load_activation(x_row + cols, cols < K, GELU), scale, reciprocal, QMAX_C, IS_INT8,
                                 INTERPRETED)
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
    flags = dict(QMAX_C=QMAX[qdtype], IS_INT8=qdtype == torch.int8, GELU=gelu, INTERPRETED=_INTERPRET)
    width = triton.next_power_of_2(k)
    if width <= ONE_PASS_MAX_WIDTH:
        rows = max(1, min(16, ROW_ELEMENTS_PER_PROGRAM // width))
        _act_quant_rows_kernel[(triton.cdiv(m, rows),)](x, q, scale, m, k, x.stride(0), q.stride(0), **flags, ROWS=rows,
                                                        BLOCK=width, num_warps=max(1, min(8, rows * width // 512)))
    else:
        block = 2048 if k >= 8192 else 1024
        _act_quant_kernel[(m,)](x, q, scale, k, x.stride(0), q.stride(0), **flags, BLOCK=block, num_warps=block // 256)
    return q, scale


def quantize_per_token(x: torch.Tensor, qdtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton version of quantize_per_token_reference (x [M, K] with a contiguous last dim)."""
    return _launch(x, qdtype, gelu=False)


def gelu_quantize_per_token(x: torch.Tensor, qdtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton version of gelu_quantize_per_token_reference (x [M, K] with a contiguous last dim)."""
    return _launch(x, qdtype, gelu=True)
