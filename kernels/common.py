"""What the kernels and their PyTorch references share: the 8-bit quantization formula with its constants, and the
helpers more than one kernel uses. Every layer may import it (kernels/ is the lowest), so the engine's weight
quantization (lightx2v_nodes/quant/formats.py) is this formula too.

Symmetric 8-bit quantization with one scale per row (a token, an output channel) or per block:
scale = max(absmax, MIN_ABSMAX) / QMAX; int8: q = clamp(round_half_even(x / scale), -128, 127);
float8_e4m3fn: q = fp8(clamp(x / scale, -448, 448)), the cast rounding to nearest even.
Both sides divide IEEE-rounded (PyTorch by a tensor, the kernels with div_rn and `divide`), so a kernel's 8-bit values
and scales equal its reference's bit for bit.
"""

from __future__ import annotations

import os

import torch

INT8_MIN = -128.0
INT8_MAX = 127.0
FP8_MAX = 448.0  # the largest finite float8_e4m3fn
QMAX = {torch.int8: INT8_MAX, torch.float8_e4m3fn: FP8_MAX}
# A row of zeros gets this absmax, so its scale is not 0 (x / 0 would be NaN); its q is 0 anyway.
MIN_ABSMAX = 1e-12
# Set before the kernels are imported: they run in Triton's CPU interpreter and take the paths that make up for the
# interpreter's roundings (its casts to fp8 and bf16 truncate, its fma rounds twice).
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def absmax_scale(absmax: torch.Tensor, qdtype: torch.dtype) -> torch.Tensor:
    """float32 absmax -> scale. The divisor is a tensor: PyTorch's CUDA division by a Python scalar multiplies by the
    reciprocal (1 ulp off), while the kernels divide with div_rn."""
    return absmax.clamp_min(MIN_ABSMAX) / torch.full_like(absmax, QMAX[qdtype])


def quantize_with_scale(x: torch.Tensor, scale: torch.Tensor, qdtype: torch.dtype) -> torch.Tensor:
    """x / scale (in float32) as qdtype values."""
    scaled = x.float() / scale.float()
    if qdtype == torch.int8:
        return torch.round(scaled).clamp(INT8_MIN, INT8_MAX).to(torch.int8)
    return scaled.clamp(-FP8_MAX, FP8_MAX).to(qdtype)


def quantize_rows(x: torch.Tensor, qdtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., K] -> (q [..., K] qdtype, scale [..., 1] float32), one scale per row."""
    xf = x.float()
    scale = absmax_scale(xf.abs().amax(dim=-1, keepdim=True), qdtype)
    return quantize_with_scale(xf, scale, qdtype), scale


def round_up(length: int, multiple: int) -> int:
    return -(-length // multiple) * multiple


def floor_power_of_2(n: int) -> int:
    return 1 << (n.bit_length() - 1)


def contiguous_rows(x: torch.Tensor) -> torch.Tensor:
    """x itself where its last dimension is contiguous (what the kernels' row pointers need), else a copy."""
    return x if x.stride(-1) == 1 else x.contiguous()


try:
    import triton
    import triton.language as tl

    TRITON_AVAILABLE = True
    _MIN_ABSMAX = tl.constexpr(MIN_ABSMAX)
    _INT8_MIN = tl.constexpr(INT8_MIN)
    _INT8_MAX = tl.constexpr(INT8_MAX)
    _FP8_MAX = tl.constexpr(FP8_MAX)
    _ROUNDING_SHIFT = tl.constexpr(12582912.0)  # 1.5 * 2^23

    @triton.jit
    def round_half_even(v):
        """float32 v (|v| < 2^22) rounded to an integer, half to even as torch.round: adding 1.5 * 2^23 leaves no
        fraction bits, and the addition rounds to nearest even."""
        return (v + _ROUNDING_SHIFT) - _ROUNDING_SHIFT

    @triton.jit
    def round_to_e4m3_grid(v):
        """Round fp32 v (|v| <= 448) to the nearest float8_e4m3fn value, ties to even, in fp32 arithmetic.

        The cast that follows is then exact. The hardware cast rounds the same way, but Triton's CPU
        interpreter mis-rounds values whose mantissa carries into the exponent; this keeps both identical.
        """
        exponent = ((v.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127
        ulp_exponent = tl.maximum(exponent, -6) - 3  # 3 mantissa bits; subnormals below 2^-6
        ulp = ((ulp_exponent + 127) << 23).to(tl.float32, bitcast=True)
        return round_half_even(v / ulp) * ulp

    @triton.jit
    def round_to_bf16(x):
        """float32 -> the nearest bfloat16 value (ties to even), still float32: the interpreter's cast truncates."""
        bits = x.to(tl.int32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & -65536
        return bits.to(tl.float32, bitcast=True)

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
    def scale_from_absmax(absmax, QMAX_C: tl.constexpr):
        """absmax_scale of float32 absmax, QMAX_C = QMAX[qdtype]."""
        return tl.math.div_rn(tl.maximum(absmax, _MIN_ABSMAX), QMAX_C)

    @triton.jit
    def quantize_values(v, scale, reciprocal, QMAX_C: tl.constexpr, IS_INT8: tl.constexpr, INTERPRETED: tl.constexpr):
        """float32 v, its row's scale (absmax / QMAX) and div_rn(1, scale) -> the 8-bit value of v / scale, as float32."""
        v = divide(v, scale, reciprocal, INTERPRETED)
        if IS_INT8:
            v = tl.minimum(tl.maximum(round_half_even(v), _INT8_MIN), _INT8_MAX)
        else:
            v = tl.minimum(tl.maximum(v, -QMAX_C), QMAX_C)
            if INTERPRETED:
                v = round_to_e4m3_grid(v)
        return v

    @triton.jit
    def clamp_to_fp8_range(v):
        return tl.minimum(tl.maximum(v, -_FP8_MAX), _FP8_MAX)

    # 8-bit attention's Q and K: int8 in [-127, 127], symmetric (absmax / 127 never rounds to -128 anyway).
    @triton.jit
    def round_to_int8(v):
        """float32 v -> int8, rounding half to even as torch.round, clamped to +-127."""
        return tl.minimum(tl.maximum(round_half_even(v), -_INT8_MAX), _INT8_MAX).to(tl.int8)

    @triton.jit
    def int8_per_row(x, INTERPRETED: tl.constexpr):
        """Each row of float32 x [rows, D] as int8 with its absmax / 127 scale: (int8 [rows, D], scales [rows])."""
        scale = scale_from_absmax(tl.max(tl.abs(x), axis=1), _INT8_MAX)
        reciprocal = tl.math.div_rn(1.0, scale)
        return round_to_int8(divide(x, scale[:, None], reciprocal[:, None], INTERPRETED)), scale

    @triton.jit
    def int8_per_block(x, INTERPRETED: tl.constexpr):
        """All of float32 x [rows, D] as int8 with one absmax / 127 scale: (int8 [rows, D], scale)."""
        scale = scale_from_absmax(tl.max(tl.max(tl.abs(x), axis=1), axis=0), _INT8_MAX)
        return round_to_int8(divide(x, scale, tl.math.div_rn(1.0, scale), INTERPRETED)), scale

except ImportError:  # the references still work
    TRITON_AVAILABLE = False


def require_triton() -> None:
    if not TRITON_AVAILABLE:
        raise RuntimeError("Triton is not installed")
