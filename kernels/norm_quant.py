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

import torch
import torch.nn.functional as F

from .act_quant import quantize_per_token_reference
from .common import INTERPRET, QMAX, contiguous_rows, floor_power_of_2, require_triton

# Whole rows are held in registers (Wan's widths: 1,536, 3,072, 5,120): up to ROW_ELEMENTS_PER_PROGRAM elements of
# rows per program, ELEMENTS_PER_WARP per warp, up to MAX_WARPS, the fastest rows and warps at Wan's widths
# (bench/norm_quant.py's fused-rowsR-wN rows).
MAX_WIDTH = 16384
ROW_ELEMENTS_PER_PROGRAM = 4096
ELEMENTS_PER_WARP = 512
MAX_WARPS = 4


def layer_norm_quantize_reference(x: torch.Tensor, qdtype: torch.dtype, eps: float, weight=None, bias=None, shift=None,
                                  scale=None) -> tuple[torch.Tensor, torch.Tensor]:
    """x [B, L, D] -> quantize_per_token_reference of LayerNorm(x) (affine with weight/bias if given), modulated as
    addcmul(shift, ., 1 + scale) with shift/scale [B, 1, D] if given, computed by the module ops in x's dtype.
    Returns (q [B*L, D] qdtype, scale [B*L, 1] float32)."""
    y = F.layer_norm(x, (x.shape[-1],), weight, bias, eps)
    if scale is not None:
        y = torch.addcmul(shift, y, 1 + scale)
    return quantize_per_token_reference(y.reshape(-1, x.shape[-1]), qdtype)


try:
    import triton
    import triton.language as tl

    from .common import quantize_values, round_to_bf16, scale_from_absmax

    @triton.jit
    def _rounded(v, OUT: tl.constexpr, INTERPRETED: tl.constexpr):
        """float32 v rounded to OUT (nearest, ties to even), as float32. The interpreter's cast to bfloat16 truncates,
        so there the rounding is done on the bits."""
        if INTERPRETED and OUT == tl.bfloat16:
            return round_to_bf16(v)
        return v.to(OUT).to(tl.float32)

    @triton.jit
    def _normalized(centered, rstd, batch, cols, col_mask, w_ptr, b_ptr, shift_ptr, scale_ptr, stride_shift,
                    stride_scale, AFFINE: tl.constexpr, MODULATE: tl.constexpr, OUT: tl.constexpr,
                    INTERPRETED: tl.constexpr):
        """(x - mean) * rstd, then the affine weight/bias or the modulation, each step rounded to OUT as the module
        ops round it; float32 out, 0 in the columns col_mask leaves out (centered is 0 there)."""
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
    def _norm_quant_kernel(x_ptr, w_ptr, b_ptr, shift_ptr, scale_ptr, q_ptr, s_ptr, M, L, D, stride_xb, stride_xl,
                           stride_shift, stride_scale, eps, AFFINE: tl.constexpr, MODULATE: tl.constexpr,
                           QMAX_C: tl.constexpr, IS_INT8: tl.constexpr, INTERPRETED: tl.constexpr, ROWS: tl.constexpr,
                           HEAD: tl.constexpr, TAIL: tl.constexpr):
        # ROWS whole rows in registers, each as a power-of-2 head (HEAD <= D) and a power-of-2 tail: no lanes idle
        # where D is a sum of two powers of 2 (5,120 = 4,096 + 1,024; 1,536 = 1,024 + 512), one read of x, and an
        # exact two-step variance.
        rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
        rows64 = rows.to(tl.int64)
        token = tl.minimum(rows64, M - 1)  # rows past the end read the last row (their stores are masked)
        batch = token // L
        x_rows = (x_ptr + batch * stride_xb + (token % L) * stride_xl)[:, None]
        head = tl.arange(0, HEAD)[None, :]
        tail = HEAD + tl.arange(0, TAIL)[None, :]
        row_ok = (rows < M)[:, None]
        head_mask = row_ok & (head < D)
        tail_mask = row_ok & (tail < D)
        x_head = tl.load(x_rows + head, mask=head_mask, other=0.0).to(tl.float32)
        x_tail = tl.load(x_rows + tail, mask=tail_mask, other=0.0).to(tl.float32)
        mean = ((tl.sum(x_head, axis=1) + tl.sum(x_tail, axis=1)) / D)[:, None]
        c_head = tl.where(head_mask, x_head - mean, 0.0)
        c_tail = tl.where(tail_mask, x_tail - mean, 0.0)
        rstd = tl.math.rsqrt((tl.sum(c_head * c_head, axis=1) + tl.sum(c_tail * c_tail, axis=1)) / D + eps)[:, None]
        # The columns' masks only: every row's addresses are valid (clamped above), and the masks then match the shapes
        # of the weight's [1, N] and the modulation's [ROWS, N] loads alike.
        y_head = _normalized(c_head, rstd, batch[:, None], head, head < D, w_ptr, b_ptr, shift_ptr, scale_ptr,
                             stride_shift, stride_scale, AFFINE, MODULATE, x_ptr.dtype.element_ty, INTERPRETED)
        y_tail = _normalized(c_tail, rstd, batch[:, None], tail, tail < D, w_ptr, b_ptr, shift_ptr, scale_ptr,
                             stride_shift, stride_scale, AFFINE, MODULATE, x_ptr.dtype.element_ty, INTERPRETED)
        scale = scale_from_absmax(tl.maximum(tl.max(tl.abs(y_head), axis=1), tl.max(tl.abs(y_tail), axis=1)), QMAX_C)
        tl.store(s_ptr + rows, scale, mask=rows < M)
        reciprocal = tl.math.div_rn(1.0, scale)[:, None]
        q_rows = q_ptr + rows64[:, None] * D
        q = quantize_values(y_head, scale[:, None], reciprocal, QMAX_C, IS_INT8, INTERPRETED)
        tl.store(q_rows + head, q.to(q_ptr.dtype.element_ty), mask=head_mask)
        q = quantize_values(y_tail, scale[:, None], reciprocal, QMAX_C, IS_INT8, INTERPRETED)
        tl.store(q_rows + tail, q.to(q_ptr.dtype.element_ty), mask=tail_mask)

except ImportError:
    triton = None


def _batch_stride(t: torch.Tensor | None, batches: int) -> int:
    if t is None:
        return 0
    if t.shape[0] != batches and t.shape[0] != 1:
        raise ValueError(f"modulation batch {t.shape[0]} does not match x's {batches}")
    return t.stride(0) if t.shape[0] == batches else 0


def layer_norm_quantize(x: torch.Tensor, qdtype: torch.dtype, eps: float, weight=None, bias=None, shift=None, scale=None,
                        rows: int | None = None, warps: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton version of layer_norm_quantize_reference. x [B, L, D] (D <= MAX_WIDTH) with a contiguous last dim (any
    batch and token strides, so a token slice of a batch needs no copy); weight/bias [D] or shift/scale [B or 1, 1, D],
    or neither. rows, warps: rows and warps per program (benchmarks; default by width)."""
    require_triton()
    if (weight is None) != (bias is None) or (shift is None) != (scale is None):
        raise ValueError("give weight with bias and shift with scale")
    batches, length, dim = x.shape
    if dim > MAX_WIDTH:
        raise ValueError(f"rows of {dim} are wider than the kernel holds in registers ({MAX_WIDTH})")
    x = contiguous_rows(x)
    shift, scale = (None, None) if scale is None else (contiguous_rows(shift), contiguous_rows(scale))
    count = batches * length
    q = torch.empty((count, dim), dtype=qdtype, device=x.device)
    scales = torch.empty((count, 1), dtype=torch.float32, device=x.device)
    head = floor_power_of_2(dim)
    tail = max(16, triton.next_power_of_2(dim - head))
    rows = rows or floor_power_of_2(max(1, min(16, ROW_ELEMENTS_PER_PROGRAM // (head + tail))))
    warps = warps or floor_power_of_2(max(1, min(MAX_WARPS, rows * (head + tail) // ELEMENTS_PER_WARP)))
    _norm_quant_kernel[(triton.cdiv(count, rows),)](
        x, x if weight is None else weight, x if bias is None else bias, x if shift is None else shift,
        x if scale is None else scale, q, scales, count, length, dim, x.stride(0), x.stride(1),
        _batch_stride(shift, batches), _batch_stride(scale, batches), float(eps), AFFINE=weight is not None,
        MODULATE=scale is not None, QMAX_C=QMAX[qdtype], IS_INT8=qdtype == torch.int8, INTERPRETED=INTERPRET,
        ROWS=rows, HEAD=head, TAIL=tail, num_warps=warps)
    return q, scales
