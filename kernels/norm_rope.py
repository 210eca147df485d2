"""Fused RMSNorm + RoPE of the DiT's self-attention queries and keys: one read of the projection, one write.

x [B, L, dim] (the q or k linear's output) -> [B, L, heads, head_dim] in x's dtype, computing what the model's
unfused ops compute (nn.RMSNorm / ComfyUI's RMSNorm over the whole dim, then the head split, then RoPE on
adjacent pairs, model.apply_rope):
- RMSNorm as torch.nn.functional.rms_norm does for 16-bit input (CPU and CUDA): sum of squares, normalization
  and the weight product in float32, rounded once to x's dtype (the weight is in x's dtype).
- RoPE on that rounded value in float32: (even, odd) -> (even cos - odd sin, even sin + odd cos), rounded to
  x's dtype. `rotations` is model.rope_tables' [L, head_dim / 2, 2] float32 (cos, sin).
The unfused eager path makes several passes over float32 temporaries; inductor's fusion of it is slower than this
kernel (bench/norm_rope.py).

Two more modes feed the 8-bit attention kernel (kernels/attention_8bit.py) directly:
- `rms_norm_rope_int8` (queries): attention8's Hadamard-rotated int8 Q [B, H, Lpad, D] with per-token scales
  (x attention_8bit.q_scale_factor), from the value rounded to x's dtype, so it equals rms_norm_rope followed by
  quantize_qkv's Q part bit for bit.
- `rms_norm_rope_column_sums` (keys): rms_norm_rope's output plus the float32 column sums of every
  `block`-token block [B, H, Lpad / block, D] (written per program: deterministic, no atomics), so K's smoothing
  mean is a small torch.sum instead of another pass over K.
One program handles `rows` consecutive tokens of one batch row; a token row is viewed as two power-of-2 groups of
heads (40 = 32 + 8) x head_dim, so no work goes to padding heads.
"""

from __future__ import annotations

import torch

from .attention_8bit import QUANT_BLOCK, ROTATION_BLOCK, q_scale_factor, quantize_blocks_reference, rotation_channels
from .common import INTERPRET, contiguous_rows, floor_power_of_2, require_triton, round_up


# Default warps per program, by mode (0: bf16 out, 1: int8 Q, 2: K + column sums): one per this many elements of the
# token row (heads padded to a power of 2), clamped to [MIN_WARPS, MAX_WARPS[mode]]: the fastest warps per mode at
# Wan's widths (bench/norm_rope.py's -wN rows).
ELEMENTS_PER_WARP = {0: 1024, 1: 4096, 2: 512}
MIN_WARPS = 2
MAX_WARPS = {0: 16, 1: 16, 2: 8}


def rms_norm_rope_reference(x: torch.Tensor, weight: torch.Tensor, rotations: torch.Tensor, heads: int,
                            eps: float) -> torch.Tensor:
    """The model's RMSNorm -> heads -> apply_rope in PyTorch, with the roundings written out."""
    xf = x.float()
    rstd = torch.rsqrt(xf.square().mean(dim=-1, keepdim=True) + eps)
    normed = (xf * rstd * weight.to(x.dtype).float()).to(x.dtype).float()
    pairs = normed.unflatten(-1, (heads, -1, 2))
    even, odd = pairs[..., 0], pairs[..., 1]
    cos, sin = rotations[None, :, None, :, 0], rotations[None, :, None, :, 1]
    return torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1).flatten(-2).to(x.dtype)


def rms_norm_rope_int8_reference(x, weight, rotations, heads, eps, rotation_block: int = ROTATION_BLOCK):
    """(int8 Q [B, H, Lpad, D], scales [B, H, Lpad] x q_scale_factor): quantize_qkv_reference's Q part."""
    q = rms_norm_rope_reference(x, weight, rotations, heads, eps)
    return quantize_blocks_reference(q, None, q_scale_factor(q.shape[-1], rotation_block), 1, rotation_block)


def rms_norm_rope_column_sums_reference(x, weight, rotations, heads, eps, block: int = QUANT_BLOCK):
    """(rms_norm_rope output k [B, L, H, D], column sums of k over each block of tokens [B, H, Lpad / block, D])."""
    k = rms_norm_rope_reference(x, weight, rotations, heads, eps)
    length = k.shape[1]
    kf = torch.nn.functional.pad(k.float().permute(0, 2, 1, 3), (0, 0, 0, round_up(length, block) - length))
    return k, kf.unflatten(2, (-1, block)).sum(dim=3)


try:
    import triton
    import triton.language as tl

    from .common import int8_per_row, round_to_bf16
    from .hadamard import hadamard_rows

    @triton.jit
    def _to_dtype(x, dtype: tl.constexpr, ROUND_BF16: tl.constexpr):
        if ROUND_BF16:
            x = round_to_bf16(x)
        return x.to(dtype)

    @triton.jit
    def _rope_heads(x, rstd, weight, cos, sin, dtype: tl.constexpr, NH: tl.constexpr, DIM_P2: tl.constexpr,
                    ROUND_BF16: tl.constexpr):
        """One group of NH heads of a token, float32 x [NH, DIM_P2] -> RMSNorm (rstd given) and RoPE, rounded to dtype."""
        normed = _to_dtype(x * rstd * weight, dtype, ROUND_BF16).to(tl.float32)
        even, odd = tl.split(tl.reshape(normed, [NH, DIM_P2 // 2, 2]))
        roped = tl.reshape(tl.join(even * cos - odd * sin, even * sin + odd * cos), [NH, DIM_P2])
        return _to_dtype(roped, dtype, ROUND_BF16)

    @triton.jit
    def _store_heads(y, hs, ds, in_row, valid, b, token, heads, out_ptr, stride_ob, stride_ol, q8_ptr, scale_ptr,
                     scale_factor, padded_len, MODE: tl.constexpr, HEAD_DIM: tl.constexpr, NH: tl.constexpr,
                     DIM_P2: tl.constexpr, ROTATION: tl.constexpr, INTERPRETED: tl.constexpr):
        """Writes one head group's y [NH, DIM_P2] of a token (heads hs [NH, 1]): [B, L, H, D] (MODE 0, 2) or the int8 Q."""
        if MODE == 1:
            # quantize_qkv's Q quantization: rotated, one scale per token and head
            q, scale = int8_per_row(hadamard_rows(y.to(tl.float32), NH, DIM_P2, ROTATION), INTERPRETED)
            head_rows = (b * heads + hs) * padded_len + token  # [NH, 1]
            tl.store(q8_ptr + head_rows * HEAD_DIM + ds, q, mask=in_row)
            tl.store(scale_ptr + tl.reshape(head_rows, [NH]), scale * scale_factor, mask=tl.reshape(hs, [NH]) < heads)
        else:
            tl.store(out_ptr + b * stride_ob + token.to(tl.int64) * stride_ol + hs * HEAD_DIM + ds, y, mask=valid)

    @triton.jit
    def _norm_rope_kernel(x_ptr, w_ptr, rot_ptr, out_ptr, q8_ptr, scale_ptr, sums_ptr, length, heads,
                          dim, stride_xb, stride_xl, stride_ob, stride_ol, eps, scale_factor, padded_len,
                          MODE: tl.constexpr, HEAD_DIM: tl.constexpr, HEADS_HEAD: tl.constexpr,
                          HEADS_TAIL: tl.constexpr, DIM_P2: tl.constexpr, ROWS: tl.constexpr, ROUND_BF16: tl.constexpr,
                          ROTATION: tl.constexpr, INTERPRETED: tl.constexpr):
        """MODE 0: write [B, L, H, D]; 1: int8 Q + scales (programs cover padded_len tokens); 2: as 0 + column sums.
        A token's heads are two power-of-2 groups, HEADS_HEAD from head 0 and HEADS_TAIL after them (40 = 32 + 8,
        12 = 8 + 4; a power-of-2 count leaves the tail group masked off), so no lanes idle on padding heads."""
        pid = tl.program_id(0)
        b = tl.program_id(1).to(tl.int64)
        ds = tl.arange(0, DIM_P2)[None, :]
        hs_a = tl.arange(0, HEADS_HEAD)[:, None]
        hs_b = HEADS_HEAD + tl.arange(0, HEADS_TAIL)[:, None]
        in_a = (hs_a < heads) & (ds < HEAD_DIM)
        in_b = (hs_b < heads) & (ds < HEAD_DIM)
        dtype = out_ptr.dtype.element_ty
        w_a = tl.load(w_ptr + hs_a * HEAD_DIM + ds, mask=in_a, other=0.0).to(tl.float32)
        w_b = tl.load(w_ptr + hs_b * HEAD_DIM + ds, mask=in_b, other=0.0).to(tl.float32)
        half = tl.arange(0, DIM_P2 // 2)
        sums_a = tl.zeros([HEADS_HEAD, DIM_P2], dtype=tl.float32)
        sums_b = tl.zeros([HEADS_TAIL, DIM_P2], dtype=tl.float32)
        for r in range(ROWS):
            token = pid * ROWS + r
            valid_a = in_a & (token < length)
            valid_b = in_b & (token < length)
            x_row = x_ptr + b * stride_xb + token.to(tl.int64) * stride_xl
            x_a = tl.load(x_row + hs_a * HEAD_DIM + ds, mask=valid_a, other=0.0).to(tl.float32)
            x_b = tl.load(x_row + hs_b * HEAD_DIM + ds, mask=valid_b, other=0.0).to(tl.float32)
            squares = tl.sum(tl.sum(x_a * x_a, axis=1), axis=0) + tl.sum(tl.sum(x_b * x_b, axis=1), axis=0)
            rstd = tl.math.rsqrt(squares / dim + eps)
            rot = rot_ptr + tl.minimum(token, length - 1).to(tl.int64) * HEAD_DIM + 2 * half
            cos = tl.load(rot, mask=2 * half < HEAD_DIM, other=0.0)[None, :]
            sin = tl.load(rot + 1, mask=2 * half < HEAD_DIM, other=0.0)[None, :]
            y_a = _rope_heads(x_a, rstd, w_a, cos, sin, dtype, HEADS_HEAD, DIM_P2, ROUND_BF16)
            y_b = _rope_heads(x_b, rstd, w_b, cos, sin, dtype, HEADS_TAIL, DIM_P2, ROUND_BF16)
            _store_heads(y_a, hs_a, ds, in_a, valid_a, b, token, heads, out_ptr, stride_ob, stride_ol, q8_ptr,
                         scale_ptr, scale_factor, padded_len, MODE, HEAD_DIM, HEADS_HEAD, DIM_P2, ROTATION, INTERPRETED)
            _store_heads(y_b, hs_b, ds, in_b, valid_b, b, token, heads, out_ptr, stride_ob, stride_ol, q8_ptr,
                         scale_ptr, scale_factor, padded_len, MODE, HEAD_DIM, HEADS_TAIL, DIM_P2, ROTATION, INTERPRETED)
            if MODE == 2:
                sums_a += y_a.to(tl.float32)  # zero past the last token and in the padding
                sums_b += y_b.to(tl.float32)
        if MODE == 2:
            n_blocks = tl.num_programs(0)
            tl.store(sums_ptr + ((b * heads + hs_a) * n_blocks + pid) * HEAD_DIM + ds, sums_a, mask=in_a)
            tl.store(sums_ptr + ((b * heads + hs_b) * n_blocks + pid) * HEAD_DIM + ds, sums_b, mask=in_b)
except ImportError:
    triton = None


def _launch(mode, x, weight, rotations, heads, eps, rows, tokens, out=None, q8=None, scales=None, sums=None,
            scale_factor=1.0, padded_len=0, rotation_block=1, warps=None):
    require_triton()
    b, length, dim = x.shape
    head_dim = dim // heads
    if dim % heads or head_dim % 2:
        raise ValueError(f"rms_norm_rope: dim {dim} must split into {heads} heads of an even size")
    if rotations.shape != (length, head_dim // 2, 2):
        raise ValueError(f"rms_norm_rope: rotations must be [{length}, {head_dim // 2}, 2], got {tuple(rotations.shape)}")
    if weight.shape != (dim,) or weight.dtype != x.dtype:
        raise ValueError(f"rms_norm_rope: weight must be [{dim}] in {x.dtype}, got {tuple(weight.shape)} {weight.dtype}")
    x = contiguous_rows(x)
    rotations = rotations.float().contiguous()
    out = out if out is not None else x  # a placeholder pointer where the mode writes no [B, L, H, D] tensor
    heads_head, dim_p2 = floor_power_of_2(heads), triton.next_power_of_2(head_dim)
    heads_tail = triton.next_power_of_2(max(1, heads - heads_head))  # masked off where heads is a power of 2
    if warps is None:
        warps = max(MIN_WARPS, min(MAX_WARPS[mode], triton.next_power_of_2(heads) * dim_p2 // ELEMENTS_PER_WARP[mode]))
    _norm_rope_kernel[(triton.cdiv(tokens, rows), b)](
        x, weight, rotations, out, q8 if q8 is not None else x, scales if scales is not None else x,
        sums if sums is not None else x, length, heads, dim, x.stride(0), x.stride(1),
        out.stride(0), out.stride(1), float(eps), float(scale_factor), padded_len, MODE=mode, HEAD_DIM=head_dim,
        HEADS_HEAD=heads_head, HEADS_TAIL=heads_tail, DIM_P2=dim_p2, ROWS=rows,
        ROUND_BF16=INTERPRET and x.dtype == torch.bfloat16, ROTATION=rotation_channels(dim_p2, rotation_block),
        INTERPRETED=INTERPRET, num_warps=warps)


def rms_norm_rope(x: torch.Tensor, weight: torch.Tensor, rotations: torch.Tensor, heads: int, eps: float,
                  rows: int = 1, warps: int | None = None) -> torch.Tensor:
    """Triton version of rms_norm_rope_reference; rows: tokens per program; warps: per program (None: the mode's
    default, ELEMENTS_PER_WARP)."""
    out = x.new_empty((x.shape[0], x.shape[1], heads, x.shape[2] // heads))
    _launch(0, x, weight, rotations, heads, eps, rows, x.shape[1], out=out, warps=warps)
    return out


def rms_norm_rope_int8(x, weight, rotations, heads, eps, rows: int = 1, rotation_block: int = ROTATION_BLOCK,
                       warps: int | None = None):
    """Triton version of rms_norm_rope_int8_reference: (int8 [B, H, Lpad, D], scales [B, H, Lpad] float32)."""
    b, length, dim = x.shape
    padded = round_up(length, QUANT_BLOCK)
    head_dim = dim // heads
    if head_dim not in (64, 128):
        raise ValueError(f"rms_norm_rope_int8: attention8 takes head dims 64 and 128, not {head_dim}")
    if padded % rows:
        raise ValueError(f"rms_norm_rope_int8: rows must divide {QUANT_BLOCK}")
    q8 = torch.empty((b, heads, padded, head_dim), dtype=torch.int8, device=x.device)
    scales = torch.empty((b, heads, padded), dtype=torch.float32, device=x.device)
    _launch(1, x, weight, rotations, heads, eps, rows, padded, q8=q8, scales=scales,
            scale_factor=q_scale_factor(head_dim, rotation_block), padded_len=padded, rotation_block=rotation_block,
            warps=warps)
    return q8, scales


def rms_norm_rope_column_sums(x, weight, rotations, heads, eps, block: int = QUANT_BLOCK, warps: int | None = None):
    """Triton version of rms_norm_rope_column_sums_reference: (k [B, L, H, D], sums [B, H, Lpad / block, D])."""
    b, length, dim = x.shape
    out = x.new_empty((b, length, heads, dim // heads))
    sums = torch.empty((b, heads, -(-length // block), dim // heads), dtype=torch.float32, device=x.device)
    _launch(2, x, weight, rotations, heads, eps, block, length, out=out, sums=sums, warps=warps)
    return out, sums
