"""Per-token (per-row) dynamic symmetric activation quantization to int8 or float8_e4m3fn.

The formula is kernels/common.py's, one scale per row. The Triton kernels fuse the absmax, the scale and the cast
into one launch (PyTorch needs four passes) and divide without a division instruction per element, which keeps them
memory-bound (bench/act_quant.py).

`gelu_quantize_per_token` quantizes GELU(x) (tanh approximation, kept in float32 where an unfused GELU
would round it to x's dtype first) for the FFN's second linear: one read of the [tokens, ffn_dim] hidden state
from memory and one 8-bit write. Unfused, GELU writes and re-reads that tensor (0.9 GB per 14B block at 480p),
and inductor's fusion of GELU + quantization is slower than this kernel (bench/gelu_quant.py).
"""

from __future__ import annotations

import torch

from .common import INTERPRET, QMAX, contiguous_rows, quantize_rows, require_triton

# Rows up to this wide are held in registers and quantized in one pass, several rows per program; wider rows take
# two passes over chunks of the row (the second from L2), 2,048 wide from 8,192 elements on: faster from 5,120 on,
# where one pass over a power-of-2-padded row leaves lanes idle and fewer rows in flight (bench/act_quant.py).
ONE_PASS_MAX_WIDTH = 2048
ROW_ELEMENTS_PER_PROGRAM = 4096


def quantize_per_token_reference(x: torch.Tensor, qdtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] -> (q [M, K] qdtype, scale [M, 1] float32): common.quantize_rows."""
    return quantize_rows(x, qdtype)


def gelu_quantize_per_token_reference(x: torch.Tensor, qdtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """quantize_per_token_reference(GELU_tanh(x)), GELU computed and kept in float32."""
    return quantize_per_token_reference(torch.nn.functional.gelu(x.float(), approximate="tanh"), qdtype)


try:
    import triton
    import triton.language as tl

    from .common import quantize_values, scale_from_absmax

    _GELU_EXPONENT = tl.constexpr(-2.0 * 0.7978845608028654 * 1.4426950408889634)  # -2 sqrt(2 / pi) log2(e)

    @triton.jit
    def _load_activation(ptrs, mask, GELU: tl.constexpr):
        v = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
        if GELU:  # GELU_tanh(v) = 0.5 v (1 + tanh(u)) = v / (1 + exp(-2u)), u = sqrt(2/pi) (v + 0.044715 v^3)
            v = v / (1.0 + tl.math.exp2((v + 0.044715 * v * v * v) * _GELU_EXPONENT))
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
        scale = scale_from_absmax(tl.max(tl.abs(v), axis=1), QMAX_C)
        tl.store(s_ptr + rows, scale, mask=rows < M)
        v = quantize_values(v, scale[:, None], tl.math.div_rn(1.0, scale)[:, None], QMAX_C, IS_INT8, INTERPRETED)
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
        scale = scale_from_absmax(tl.max(absmax, axis=0), QMAX_C)
        tl.store(s_ptr + row, scale)
        reciprocal = tl.math.div_rn(1.0, scale)
        for start in range(0, K, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            v = quantize_values(_load_activation(x_row + cols, cols < K, GELU), scale, reciprocal, QMAX_C, IS_INT8,
                                INTERPRETED)
            tl.store(q_row + cols, v.to(q_ptr.dtype.element_ty), mask=cols < K)

except ImportError:
    triton = None


def _launch(x: torch.Tensor, qdtype: torch.dtype, gelu: bool) -> tuple[torch.Tensor, torch.Tensor]:
    require_triton()
    x = contiguous_rows(x)
    m, k = x.shape
    q = torch.empty((m, k), dtype=qdtype, device=x.device)
    scale = torch.empty((m, 1), dtype=torch.float32, device=x.device)
    flags = dict(QMAX_C=QMAX[qdtype], IS_INT8=qdtype == torch.int8, GELU=gelu, INTERPRETED=INTERPRET)
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
