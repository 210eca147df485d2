"""LayerNorm (affine, or followed by Wan's modulation) fused with the per-token 8-bit quantization of its output.

Every Wan block feeds three groups of 8-bit linears from a LayerNorm: norm1(x) * (1 + scale) + shift -> q, k, v;
the affine norm3(x) -> the cross-attention q; norm2(x) * (1 + scale) + shift -> the FFN's first linear. Unfused,
the norm writes its 16-bit output, the modulation reads and writes it again, and the quantization (kernels/
act_quant.py) reads it once more. Here one kernel reads x once and writes the 8-bit values and per-token scales.

The roundings of the module ops are kept: the norm's output, 1 + scale and the modulated value are each rounded to
x's dtype, so the 8-bit result is the unfused path's except where the norm's sums (added in another order) move a
value by one ulp.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from .act_quant import QMAX, quantize_per_token_reference

# Rows up to this wide are held in registers, several per program (one read of x, exact two-step variance). Wider
# rows take three passes over chunks of the row, the later two from L2 (as act_quant.py's wide kernel does).
ONE_PASS_MAX_WIDTH = 2048
ROW_ELEMENTS_PER_PROGRAM = 4096


def layer_norm_quantize_reference(x: torch.Tensor, qdtype: torch.dtype, eps: float, weight=None, bias=None, shift=None,
                                  scale=None) -> tuple[torch.Tensor, torch.Tensor]:
    """x [B, L, D] -> quantize_per_token_reference of LayerNorm(x) (affine with weight/bias if given), modulated as
    addcmul(shift, ., 1 + scale) with shift/scale [B, 1, D] if given, computed by the module ops in x's dtype.
    Returns (q [B*L, D] qdtype, scale [B*L, 1] float32)."""
    y = F.layer_norm(x, (x.shape[-1],), weight, bias, eps)
    if scale is not None:
        y = torch.addcmul(shift, y, 1 + scale)
    return quantize_per_token_reference(y.reshape(-1, x.shape[-1]), qdtype)


_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

try:
    import triton
    import triton.language as tl

    from .act_quant import _quantize_values

    @triton.jit
    def _rounded(v, OUT: tl.constexpr, INTERPRETED: tl.constexpr):
        """float32 v rounded to OUT (nearest, ties to even), as float32. The interpreter's cast to bfloat16 truncates,
        so there the rounding is done on the bits."""
        if INTERPRETED and OUT == tl.bfloat16:
            bits = v.to(tl.int32, bitcast=True)
            bits = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
            return bits.to(tl.float32, bitcast=True)
        return v.to(OUT).to(tl.float32)

    @triton.jit
    def _normalized(centered, rstd, batch, cols, col_mask, w_ptr, b_ptr, shift_ptr, scale_ptr, stride_shift,
                    stride_scale, AFFINE: tl.constexpr, MODULATE: tl.constexpr, OUT: tl.constexpr,
                    INTERPRETED: tl.constexpr):
        """(x - mean) * rstd, then the affine weight/bias or the modulation, each step rounded to OUT as the module
        ops round it; float32 out, 0 where col_mask is off (centered is 0 there)."""
        y = centered * rstd
        if AFFINE:
            w = tl.load(w_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
            b = tl.load(b_ptr + cols, mask=col_mask, other=0.0).to(tl.float32)
            y = y * w + b
        y = _rounded(y, OUT, INTERPRETED)
        if MODULATE:
            scale = tl.load(scale_ptr + batch * stride_scale + cols, mask=col_mask, other=0.0).to(tl.float32)
            shift = tl.load(shift_ptr + batch * stride_shift + cols, mask=col_mask, other=0.0).to(tl.float32)
            y = _rounded(shift + y * _rounded(1.0 + scale, OUT, INTERPRETED), OUT, INTERPRETED)
        return y

    @triton.jit
    def _norm_quant_rows_kernel(x_ptr, w_ptr, b_ptr, shift_ptr, scale_ptr, q_ptr, s_ptr, M, L, D, stride_xb, stride_xl,
                                stride_shift, stride_scale, eps, AFFINE: tl.constexpr, MODULATE: tl.constexpr,
                                QMAX_C: tl.constexpr, IS_INT8: tl.constexpr, INTERPRETED: tl.constexpr,
                                ROWS: tl.constexpr, BLOCK: tl.constexpr):
        rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
        cols = tl.arange(0, BLOCK)
        rows64 = rows.to(tl.int64)
        token = tl.minimum(rows64, M - 1)  # rows past the end read the last row's modulation (their stores are masked)
        batch = token // L
        col_mask = cols[None, :] < D
        mask = (rows[:, None] < M) & col_mask
        x = tl.load(x_ptr + (batch * stride_xb + (token % L) * stride_xl)[:, None] + cols[None, :], mask=mask,
                    other=0.0).to(tl.float32)
        mean = tl.sum(x, axis=1) / D
        centered = tl.where(mask, x - mean[:, None], 0.0)
        rstd = tl.math.rsqrt(tl.sum(centered * centered, axis=1) / D + eps)
        y = _normalized(centered, rstd[:, None], batch[:, None], cols[None, :], col_mask, w_ptr, b_ptr, shift_ptr,
                        scale_ptr, stride_shift, stride_scale, AFFINE, MODULATE, x_ptr.dtype.element_ty, INTERPRETED)
        absmax = tl.maximum(tl.max(tl.abs(y), axis=1), 1e-12)
        scale = tl.math.div_rn(absmax, QMAX_C)
        tl.store(s_ptr + rows, scale, mask=rows < M)
        q = _quantize_values(y, scale[:, None], tl.math.div_rn(1.0, scale)[:, None], QMAX_C, IS_INT8, INTERPRETED)
        tl.store(q_ptr + rows64[:, None] * D + cols[None, :], q.to(q_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _norm_quant_kernel(x_ptr, w_ptr, b_ptr, shift_ptr, scale_ptr, q_ptr, s_ptr, L, D, stride_xb, stride_xl,
                           stride_shift, stride_scale, eps, AFFINE: tl.constexpr, MODULATE: tl.constexpr,
                           QMAX_C: tl.constexpr, IS_INT8: tl.constexpr, INTERPRETED: tl.constexpr, BLOCK: tl.constexpr):
        # One row (D >= BLOCK) in three passes: statistics, absmax, quantize.
        row = tl.program_id(0).to(tl.int64)
        batch = row // L
        x_row = x_ptr + batch * stride_xb + (row % L) * stride_xl
        lanes = tl.arange(0, BLOCK)
        # Per-lane sums of x minus the lane's first value (so no cancellation where a row sits far from 0), combined
        # across lanes with Chan's formula: the variance as accurate as a two-pass one.
        first = tl.load(x_row + lanes).to(tl.float32)
        count = tl.zeros([BLOCK], dtype=tl.float32)
        total = tl.zeros([BLOCK], dtype=tl.float32)
        squares = tl.zeros([BLOCK], dtype=tl.float32)
        for start in range(0, D, BLOCK):
            cols = start + lanes
            m = cols < D
            d = tl.where(m, tl.load(x_row + cols, mask=m, other=0.0).to(tl.float32) - first, 0.0)
            count += m.to(tl.float32)
            total += d
            squares += d * d
        lane_mean = first + total / count
        mean = tl.sum(count * lane_mean, axis=0) / D
        spread = lane_mean - mean
        m2 = tl.sum(squares - total * total / count + count * spread * spread, axis=0)
        rstd = tl.math.rsqrt(m2 / D + eps)
        absmax = tl.zeros([BLOCK], dtype=tl.float32)
        for start in range(0, D, BLOCK):
            cols = start + lanes
            m = cols < D
            centered = tl.where(m, tl.load(x_row + cols, mask=m, other=0.0).to(tl.float32) - mean, 0.0)
            y = _normalized(centered, rstd, batch, cols, m, w_ptr, b_ptr, shift_ptr, scale_ptr, stride_shift,
                            stride_scale, AFFINE, MODULATE, x_ptr.dtype.element_ty, INTERPRETED)
            absmax = tl.maximum(absmax, tl.abs(y))
        scale = tl.math.div_rn(tl.maximum(tl.max(absmax, axis=0), 1e-12), QMAX_C)
        tl.store(s_ptr + row, scale)
        reciprocal = tl.math.div_rn(1.0, scale)
        for start in range(0, D, BLOCK):
            cols = start + lanes
            m = cols < D
            centered = tl.where(m, tl.load(x_row + cols, mask=m, other=0.0).to(tl.float32) - mean, 0.0)
            y = _normalized(centered, rstd, batch, cols, m, w_ptr, b_ptr, shift_ptr, scale_ptr, stride_shift,
                            stride_scale, AFFINE, MODULATE, x_ptr.dtype.element_ty, INTERPRETED)
            q = _quantize_values(y, scale, reciprocal, QMAX_C, IS_INT8, INTERPRETED)
            tl.store(q_ptr + row * D + cols, q.to(q_ptr.dtype.element_ty), mask=m)

except ImportError:
    triton = None

def _batch_stride(t: torch.Tensor | None, batches: int) -> int:
    if t is None:
        return 0
    if t.shape[0] != batches and t.shape[0] != 1:
        raise ValueError(f"modulation batch {t.shape[0]} does not match x's {batches}")
    return t.stride(0) if t.shape[0] == batches else 0


def layer_norm_quantize(x: torch.Tensor, qdtype: torch.dtype, eps: float, weight=None, bias=None, shift=None, scale=None,
                        block: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton version of layer_norm_quantize_reference. x [B, L, D] with a contiguous last dim (any batch and token
    strides, so a token slice of a batch needs no copy); weight/bias [D] or shift/scale [B or 1, 1, D], or neither.
    block: the chunk of a wide row's passes (tests and benchmarks; default by width)."""
    if triton is None:
        raise RuntimeError("Triton is not installed")
    if (weight is None) != (bias is None) or (shift is None) != (scale is None):
        raise ValueError("give weight with bias and shift with scale")
    if x.stride(-1) != 1:
        x = x.contiguous()
    shift, scale = (None, None) if scale is None else (shift.contiguous() if shift.stride(-1) != 1 else shift,
                                                       scale.contiguous() if scale.stride(-1) != 1 else scale)
    batches, length, dim = x.shape
    rows = batches * length
    q = torch.empty((rows, dim), dtype=qdtype, device=x.device)
    scales = torch.empty((rows, 1), dtype=torch.float32, device=x.device)
    args = (x, x if weight is None else weight, x if bias is None else bias, x if shift is None else shift,
            x if scale is None else scale, q, scales)
    strides = (x.stride(0), x.stride(1), _batch_stride(shift, batches), _batch_stride(scale, batches), float(eps))
    flags = dict(AFFINE=weight is not None, MODULATE=scale is not None, QMAX_C=QMAX[qdtype], IS_INT8=qdtype == torch.int8,
                 INTERPRETED=_INTERPRET)
    width = triton.next_power_of_2(dim)
    if block is None and width <= ONE_PASS_MAX_WIDTH:
        per_program = max(1, min(16, ROW_ELEMENTS_PER_PROGRAM // width))
        _norm_quant_rows_kernel[(triton.cdiv(rows, per_program),)](
            *args, rows, length, dim, *strides, **flags, ROWS=per_program, BLOCK=width,
            num_warps=max(1, min(8, per_program * width // 512)))
    else:
        block = block or (2048 if dim >= 8192 else 1024)
        if dim < block:
            raise ValueError(f"block {block} is wider than the row ({dim})")
        _norm_quant_kernel[(rows,)](*args, length, dim, *strides, **flags, BLOCK=block, num_warps=max(1, block // 256))
    return q, scales
