"""8-bit attention forward (the SageAttention idea, our own Triton kernel): int8 Q.K^T, fp8 P.V, fp32 softmax.

Inputs q [B, Lq, H, D], k and v [B, Lk, H, D] (bf16/fp16/fp32; D = 64 or 128; Lq may differ from Lk; not
causal) -> out [B, Lq, H, D] in q's dtype.

Quantization, chosen for cosine >= 0.999 vs exact attention on DiT-like inputs (relative error 3.6-3.8e-2,
sageattention 1.0.6: 5-6e-2; bench/attention.py) and a random 14B DiT at cosine 0.9999 vs SDPA (bench/dit_forward.py):
- K is smoothed first: its mean over tokens (per batch, head, channel) is subtracted. That adds the same
  q.mean(K) to every score of a query row, which softmax ignores, and it removes the large shared bias
  trained DiTs have in K, so int8 keeps its resolution for what differs between tokens.
- Q and K are rotated first (kernels/hadamard.py): a Walsh-Hadamard transform of each head's channels in blocks of
  ROTATION_BLOCK, which leaves every score unchanged and spreads outlier channels over their block (a lower error on
  bench/attention.py's 10x-outlier inputs).
- Q and K: int8, absmax / 127 scales: one per token for Q (free in the kernel, which scales score rows),
  one per block of QUANT_BLOCK tokens of a head for K (a scalar per key tile). Q's scales also carry
  softmax's 1/sqrt(D), log2(e) and the rotation's 1/ROTATION_BLOCK, so the kernel's scores are already in the
  exp2 domain. Measured alternatives (bench/attention.py): fp8 Q/K is 2-5x less accurate (rotated or not);
  per-token K scales (measured before the rotation) cut the error on inputs
  with 10x outlier channels by ~10% but cost 21% of the kernel's time (a scale per score column).
- V: float8_e4m3fn with one scale per channel (over all tokens of a head): a per-channel scale factors out
  of sum_n p[m, n] v[n, d], so it is applied once, after the loop. V is stored transposed ([D, tokens]):
  the tensor cores take fp8 operands only with the reduction dimension contiguous.
- P: exp2(s - rowmax + log2(448)) lies in [0, 448], the float8_e4m3fn range, cast to fp8 for P.V; the row
  sum uses the same scaled values, so the factor 448 cancels in acc / l. Each key tile's P.V product is added
  to the float32 accumulator in registers (SPLIT_ACCUMULATION): accumulating inside the fp8 MMA drifts a
  random 14B DiT to cosine 0.976.

Two kernels run the same tile function: one loads K and V^T tiles through pointers (any GPU with fp8 tensor cores,
and Triton's interpreter), the other through Hopper's tensor memory accelerator (host tensor descriptors). Without
per-thread tile addresses the latter needs ~168 registers instead of 255, so with two pipeline stages three programs
share an SM, which makes it the faster of the two on Hopper (bench/attention.py).

`attention8_reference` runs the identical algorithm (same quantization, same online softmax over key
blocks) in PyTorch; tests compare the kernel with it and with exact float32 attention.
"""

from __future__ import annotations

import importlib.util
import math

import torch

from .common import FP8_MAX, INT8_MAX, MIN_ABSMAX, absmax_scale, contiguous_rows, require_triton, round_up
from .common import INTERPRET as _INTERPRET
from .hadamard import hadamard_reference

QUANT_BLOCK = 128  # tokens per Q/K scale; the kernel's key tiles divide it
# Channels per Hadamard block of Q and K (kernels/hadamard.py); 1 = no rotation. Larger blocks are more accurate; up to
# 16 the butterfly stays inside a thread's registers at no measurable cost, from 32 on it doubles the quantization
# time (bench/attention.py).
ROTATION_BLOCK = 16
# P.V operand type: float8_e4m3fn (2x the tensor-core rate) or float16 (~8 more mantissa bits for P and V).
PV_DTYPE = torch.float8_e4m3fn
# Add each key tile's P.V product to the float32 accumulator in registers rather than passing the accumulator
# into the fp8 tensor-core op, which keeps only ~14 mantissa bits when it adds (Hopper).
SPLIT_ACCUMULATION = True
P_SCALE_LOG2 = math.log2(FP8_MAX)
_LOG2E = 1.4426950408889634


# (BLOCK_M, BLOCK_N, num_warps, num_stages): the fastest tiles of every H100 sweep at 32,760 tokens (bench/attention.py
# --sweep). Fixed rather than autotuned: an autotuner timing a few calls of each candidate inside a DiT forward picked
# slower tiles. Key tiles must divide QUANT_BLOCK (one K scale each).
ATTENTION_TILES = (64, 128, 4, 3)
# The same tiles for the tensor-descriptor kernel on Hopper, with two stages: at most 168 registers and 74 KB of shared
# memory per program let three programs share an SM (the pointer kernel: 255 registers, two). The register cap matters
# where the sequence length is a multiple of 16: Triton then specialises the kernel and takes 235 registers without it
# (bench/attention.py).
HOPPER_TILES = (64, 128, 4, 2)
HOPPER_MAX_REGISTERS = 168


def _padded(length: int) -> int:
    return round_up(length, QUANT_BLOCK)


def smoothing_mean(k: torch.Tensor) -> torch.Tensor:
    """Mean of K over tokens, [B, H, D] float32."""
    return k.mean(dim=1, dtype=torch.float32)


def v_channel_scales(v: torch.Tensor) -> torch.Tensor:
    """Per-channel fp8 scale of V over tokens, [B, H, D] float32 (one read of V, no |v| temporary)."""
    low, high = torch.aminmax(v, dim=1)
    return torch.maximum(high.float(), -low.float()).clamp_min(MIN_ABSMAX) / FP8_MAX


def rotation_channels(head_dim: int, rotation_block: int = ROTATION_BLOCK) -> int:
    """The Hadamard block actually applied: rotation_block, or the whole head where that is smaller."""
    return min(rotation_block, head_dim)


def q_scale_factor(head_dim: int, rotation_block: int = ROTATION_BLOCK) -> float:
    """What Q's int8 scales carry besides absmax / 127: softmax's 1/sqrt(D), log2(e), the rotation's 1/block."""
    return head_dim ** -0.5 * _LOG2E / rotation_channels(head_dim, rotation_block)


def quantize_blocks_reference(x: torch.Tensor, mean: torch.Tensor | None, scale_factor: float, block: int,
                              rotation_block: int = ROTATION_BLOCK):
    """x [B, L, H, D] -> (int8 [B, H, Lpad, D], scales [B, H, Lpad / block] float32 incl. scale_factor)."""
    b, length, h, d = x.shape
    xf = x.float().permute(0, 2, 1, 3)
    if mean is not None:
        xf = xf - mean[:, :, None, :]
    if rotation_block > 1:
        xf = hadamard_reference(xf, rotation_channels(d, rotation_block))
    pad = _padded(length) - length
    xf = torch.nn.functional.pad(xf, (0, 0, 0, pad))
    blocks = xf.unflatten(2, (-1, block))
    scale = absmax_scale(blocks.abs().amax(dim=(-1, -2)), torch.int8)
    q = torch.round(blocks / scale[..., None, None]).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
    return q.flatten(2, 3).contiguous(), (scale * scale_factor).contiguous()


def _quantize_v_reference(v: torch.Tensor, v_scale: torch.Tensor, pv_dtype) -> torch.Tensor:
    """v [B, L, H, D] -> pv_dtype [B, H, D, Lpad] (transposed, zero padded)."""
    length = v.shape[1]
    vt = (v.float().permute(0, 2, 3, 1) / v_scale[..., None]).clamp(-FP8_MAX, FP8_MAX)
    return torch.nn.functional.pad(vt, (0, _padded(length) - length)).to(pv_dtype).contiguous()


def quantize_qkv_reference(q, k, v, pv_dtype=None, rotation_block: int = ROTATION_BLOCK):
    """The kernel's inputs, computed in PyTorch: (q8, q_scale, k8, k_scale, v8t, v_scale). rotation_block: channels
    per Hadamard block of Q and K (1: none; other values only to measure what the default gains)."""
    q8, qs = quantize_blocks_reference(q, None, q_scale_factor(q.shape[-1], rotation_block), 1, rotation_block)
    k8, ks = quantize_blocks_reference(k, smoothing_mean(k), 1.0, QUANT_BLOCK, rotation_block)
    vs = v_channel_scales(v)
    return q8, qs, k8, ks, _quantize_v_reference(v, vs, pv_dtype or PV_DTYPE), vs


def attention8_reference(q, k, v, block_n: int = 64, quantized=None):
    """The kernel's algorithm in PyTorch (float32 math, fp8 casts where the kernel casts)."""
    b, lq, h, d = q.shape
    lk = k.shape[1]
    q8, qs, k8, ks, v8t, vs = quantized or quantize_qkv_reference(q, k, v)
    q_rows = q8[:, :, :lq].float()  # [B, H, Lq, D]
    q_row_scale = qs[:, :, :lq]
    m = torch.full((b, h, lq), -math.inf, device=q.device)
    l = torch.zeros((b, h, lq), device=q.device)
    acc = torch.zeros((b, h, lq, d), device=q.device)
    for start in range(0, lk, block_n):
        stop = min(start + block_n, lk)
        k_tile = k8[:, :, start:stop].float()
        s = (q_rows @ k_tile.transpose(-1, -2)) * (q_row_scale * ks[:, :, start // QUANT_BLOCK, None])[..., None]
        m_new = torch.maximum(m, s.amax(dim=-1))
        p = torch.exp2(s - (m_new - P_SCALE_LOG2)[..., None])
        alpha = torch.exp2(m - m_new)
        l = l * alpha + p.sum(dim=-1)
        v_tile = v8t[:, :, :, start:stop].float().transpose(-1, -2)  # [B, H, n, D]
        acc = acc * alpha[..., None] + p.to(v8t.dtype).float() @ v_tile
        m = m_new
    out = acc / l[..., None] * vs[:, :, None, :]
    return out.transpose(1, 2).to(q.dtype)


try:
    import triton
    import triton.language as tl

    from .common import clamp_to_fp8_range, divide, int8_per_block, int8_per_row, round_to_e4m3_grid
    from .hadamard import hadamard_rows

    @triton.jit
    def _load_head_tile(x_ptr, pid_blk, pid_bh, length, heads, stride_xb, stride_xl, stride_xh,
                        HEAD_DIM: tl.constexpr, BLOCK: tl.constexpr):
        """Tokens [pid_blk * BLOCK, +BLOCK) of one (batch, head) of x [B, L, H, D] as float32 (zeros past length)."""
        b = pid_bh // heads
        h = pid_bh % heads
        rows = pid_blk * BLOCK + tl.arange(0, BLOCK)
        cols = tl.arange(0, HEAD_DIM)
        valid = rows[:, None] < length
        x_ptrs = x_ptr + b.to(tl.int64) * stride_xb + rows[:, None].to(tl.int64) * stride_xl + h * stride_xh + cols[None, :]
        return rows, cols, valid, tl.load(x_ptrs, mask=valid, other=0.0).to(tl.float32)

    @triton.jit
    def _quantize_qk_kernel(x_ptr, mean_ptr, q_ptr, s_ptr, length, heads, n_blocks, stride_xb, stride_xl, stride_xh,
                            scale_factor, HAS_MEAN: tl.constexpr, PER_ROW: tl.constexpr, ROTATION: tl.constexpr,
                            HEAD_DIM: tl.constexpr, BLOCK: tl.constexpr, INTERPRETED: tl.constexpr):
        pid_blk = tl.program_id(0)
        pid_bh = tl.program_id(1)
        rows, cols, valid, x = _load_head_tile(x_ptr, pid_blk, pid_bh, length, heads, stride_xb, stride_xl, stride_xh,
                                               HEAD_DIM, BLOCK)
        if HAS_MEAN:
            x = tl.where(valid, x - tl.load(mean_ptr + pid_bh * HEAD_DIM + cols)[None, :], 0.0)
        if ROTATION > 1:
            x = hadamard_rows(x, BLOCK, HEAD_DIM, ROTATION)
        if PER_ROW:
            q, scale = int8_per_row(x, INTERPRETED)
        else:
            q, scale = int8_per_block(x, INTERPRETED)
        q_ptrs = q_ptr + pid_bh.to(tl.int64) * n_blocks * BLOCK * HEAD_DIM + rows[:, None] * HEAD_DIM + cols[None, :]
        tl.store(q_ptrs, q)
        if PER_ROW:
            tl.store(s_ptr + pid_bh * n_blocks * BLOCK + rows, scale * scale_factor)
        else:
            tl.store(s_ptr + pid_bh * n_blocks + pid_blk, scale * scale_factor)

    @triton.jit
    def _quantize_v_kernel(x_ptr, scale_ptr, vt_ptr, length, heads, padded_len, stride_xb, stride_xl, stride_xh,
                           PV_FP8: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK: tl.constexpr, INTERPRETED: tl.constexpr):
        pid_blk = tl.program_id(0)
        pid_bh = tl.program_id(1)
        rows, cols, _, x = _load_head_tile(x_ptr, pid_blk, pid_bh, length, heads, stride_xb, stride_xl, stride_xh,
                                           HEAD_DIM, BLOCK)
        scale = tl.load(scale_ptr + pid_bh * HEAD_DIM + cols)
        x = divide(x, scale[None, :], tl.math.div_rn(1.0, scale)[None, :], INTERPRETED)
        x = clamp_to_fp8_range(x)
        if PV_FP8:
            x = round_to_e4m3_grid(x)
        vt_ptrs = vt_ptr + pid_bh.to(tl.int64) * HEAD_DIM * padded_len + cols[None, :] * padded_len + rows[:, None]
        tl.store(vt_ptrs, x.to(vt_ptr.dtype.element_ty))

    @triton.jit
    def _attention8_tile(acc, l_i, m_i, q, row_scale, k, vt, k_scale, cols, length_k, MASK_TAIL: tl.constexpr,
                         ROUND_P: tl.constexpr, SPLIT_ACC: tl.constexpr):
        """One key tile: k [BLOCK_N, D] int8, vt [D, BLOCK_N] fp8 or fp16, k_scale its K scale, cols its key indices."""
        dot = tl.dot(q, tl.trans(k), out_dtype=tl.int32)
        # |dot| <= 127^2 * 128 < 2^22, so adding the bit pattern of 1.5 * 2^23 gives the float32 whose value is
        # exactly 1.5 * 2^23 + dot: an integer add instead of a slower int-to-float conversion (7% of the kernel).
        shifted = (dot + 0x4B400000).to(tl.float32, bitcast=True)
        if MASK_TAIL:
            shifted = tl.where(cols[None, :] < length_k, shifted, float("-inf"))
        scale = row_scale * k_scale
        m_new = tl.maximum(m_i, (tl.max(shifted, axis=1) - 12582912.0) * scale)
        # exp2(score - max + log2(448)) with score = (shifted - 1.5 * 2^23) * scale, as one fused multiply-add:
        # the offset's fp32 rounding is ~1.5 * scale, 300x below the int8 rounding of the score itself.
        offset = 12582912.0 * scale + m_new - 8.807354922057604
        p = tl.math.exp2(tl.fma(shifted, scale[:, None], -offset[:, None]))
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        if ROUND_P and vt.dtype == tl.float8e4nv:  # the interpreter's fp8 cast truncates; the GPU's rounds like this
            p = round_to_e4m3_grid(p)
        if SPLIT_ACC:
            acc = acc * alpha[:, None] + tl.dot(p.to(vt.dtype), tl.trans(vt))
        else:
            acc = tl.dot(p.to(vt.dtype), tl.trans(vt), acc * alpha[:, None])
        return acc, l_i, m_new

    @triton.jit
    def _load_kv_tile(k_src, v_src, pid_bh, start_n, padded_k, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr,
                      TMA: tl.constexpr):
        """Keys [start_n, +BLOCK_N) of one head: k [BLOCK_N, D] int8 and vt [D, BLOCK_N]. k_src / v_src: TMA descriptors
        over [B*H*Lpad, D] and [B*H*D, Lpad] (TMA), or pointers to this head's K and V^T."""
        if TMA:
            k = k_src.load([pid_bh * padded_k + start_n, 0])
            vt = v_src.load([pid_bh * HEAD_DIM, start_n])
        else:
            cols = start_n + tl.arange(0, BLOCK_N)
            offs_d = tl.arange(0, HEAD_DIM)
            k = tl.load(k_src + cols[:, None] * HEAD_DIM + offs_d[None, :])
            vt = tl.load(v_src + offs_d[:, None] * padded_k + cols[None, :])
        return k, vt

    @triton.jit
    def _attend_keys(q, row_scale, k_src, v_src, ks_ptr, pid_bh, length_k, padded_k, BLOCK_M: tl.constexpr,
                     BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr, ROUND_P: tl.constexpr, SPLIT_ACC: tl.constexpr,
                     TMA: tl.constexpr):
        """The online softmax over all key tiles of one head: (acc, l_i), unnormalised."""
        offs_n = tl.arange(0, BLOCK_N)
        ks_base = ks_ptr + pid_bh * (padded_k // 128)
        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
        full_end = (length_k // BLOCK_N) * BLOCK_N
        for start_n in range(0, full_end, BLOCK_N):
            k, vt = _load_kv_tile(k_src, v_src, pid_bh, start_n, padded_k, BLOCK_N, HEAD_DIM, TMA)
            acc, l_i, m_i = _attention8_tile(acc, l_i, m_i, q, row_scale, k, vt, tl.load(ks_base + start_n // 128),
                                             start_n + offs_n, length_k, False, ROUND_P, SPLIT_ACC)
        if full_end < length_k:  # the masked tail tile (K and V^T are zero-padded to QUANT_BLOCK)
            k, vt = _load_kv_tile(k_src, v_src, pid_bh, full_end, padded_k, BLOCK_N, HEAD_DIM, TMA)
            acc, l_i, m_i = _attention8_tile(acc, l_i, m_i, q, row_scale, k, vt, tl.load(ks_base + full_end // 128),
                                             full_end + offs_n, length_k, True, ROUND_P, SPLIT_ACC)
        return acc, l_i

    @triton.jit
    def _store_output(acc, l_i, vs_ptr, out_ptr, pid_bh, offs_m, length_q, heads, stride_ob, stride_ol, stride_oh,
                      HEAD_DIM: tl.constexpr):
        offs_d = tl.arange(0, HEAD_DIM)
        out = acc / l_i[:, None] * tl.load(vs_ptr + pid_bh * HEAD_DIM + offs_d)[None, :]
        b = pid_bh // heads
        h = pid_bh % heads
        o_ptrs = out_ptr + b.to(tl.int64) * stride_ob + offs_m[:, None].to(tl.int64) * stride_ol + h * stride_oh + offs_d[None, :]
        tl.store(o_ptrs, out.to(out_ptr.dtype.element_ty), mask=offs_m[:, None] < length_q)

    @triton.jit
    def _load_q_tile(q_ptr, qs_ptr, bh, offs_m, padded_q, HEAD_DIM: tl.constexpr):
        """Pointer loads of one query tile of head row `bh` (int64) and its per-token scales."""
        offs_d = tl.arange(0, HEAD_DIM)
        q = tl.load(q_ptr + bh * padded_q * HEAD_DIM + offs_m[:, None] * HEAD_DIM + offs_d[None, :])
        return q, tl.load(qs_ptr + bh * padded_q + offs_m)

    @triton.jit
    def _attention8_kernel(q_ptr, qs_ptr, k_ptr, ks_ptr, vt_ptr, vs_ptr, out_ptr, length_q, length_k, heads,
                           padded_q, padded_k, stride_ob, stride_ol, stride_oh,
                           HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                           ROUND_P: tl.constexpr, SPLIT_ACC: tl.constexpr):
        """Pointer loads: any GPU with fp8 tensor cores, and Triton's CPU interpreter."""
        pid_m = tl.program_id(0)
        pid_bh = tl.program_id(1)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        bh = pid_bh.to(tl.int64)
        q, row_scale = _load_q_tile(q_ptr, qs_ptr, bh, offs_m, padded_q, HEAD_DIM)
        acc, l_i = _attend_keys(q, row_scale, k_ptr + bh * padded_k * HEAD_DIM, vt_ptr + bh * HEAD_DIM * padded_k, ks_ptr,
                                pid_bh, length_k, padded_k, BLOCK_M, BLOCK_N, HEAD_DIM, ROUND_P, SPLIT_ACC, False)
        _store_output(acc, l_i, vs_ptr, out_ptr, pid_bh, offs_m, length_q, heads, stride_ob, stride_ol, stride_oh, HEAD_DIM)

    @triton.jit
    def _attention8_kernel_tma(desc_q, qs_ptr, desc_k, ks_ptr, desc_v, vs_ptr, out_ptr, length_q, length_k, heads,
                               padded_q, padded_k, stride_ob, stride_ol, stride_oh,
                               HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                               ROUND_P: tl.constexpr, SPLIT_ACC: tl.constexpr):
        """The same algorithm with Hopper's tensor-memory-accelerator loads (host descriptors over the 2-D views
        [B*H*Lpad, D] of Q and K and [B*H*D, Lpad] of V^T). Without per-thread tile addresses it needs 168 registers
        instead of 255, so with two stages three programs fit on an SM (HOPPER_TILES)."""
        pid_m = tl.program_id(0)
        pid_bh = tl.program_id(1)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        q = desc_q.load([pid_bh * padded_q + pid_m * BLOCK_M, 0])
        row_scale = tl.load(qs_ptr + pid_bh.to(tl.int64) * padded_q + offs_m)
        acc, l_i = _attend_keys(q, row_scale, desc_k, desc_v, ks_ptr, pid_bh, length_k, padded_k, BLOCK_M, BLOCK_N,
                                HEAD_DIM, ROUND_P, SPLIT_ACC, True)
        _store_output(acc, l_i, vs_ptr, out_ptr, pid_bh, offs_m, length_q, heads, stride_ob, stride_ol, stride_oh, HEAD_DIM)
except ImportError:
    triton = None


def _check(q, k, v):
    require_triton()
    if q.dim() != 4 or k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
        raise ValueError(f"attention8: expected q [B, Lq, H, D], k/v [B, Lk, H, D]; got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if q.shape[-1] not in (64, 128):
        raise ValueError(f"attention8 supports head dims 64 and 128, not {q.shape[-1]}")


def quantize_qkv(q, k, v, pv_dtype=None, rotation_block: int = ROTATION_BLOCK):
    """Triton version of quantize_qkv_reference."""
    _check(q, k, v)
    q = contiguous_rows(q)
    b, lq, h, d = q.shape
    pq = _padded(lq)
    q8 = torch.empty((b, h, pq, d), dtype=torch.int8, device=q.device)
    qs = torch.empty((b, h, pq), dtype=torch.float32, device=q.device)
    _quantize_qk_kernel[(pq // QUANT_BLOCK, b * h)](q, qs, q8, qs, lq, h, pq // QUANT_BLOCK, q.stride(0), q.stride(1),
                                                   q.stride(2), q_scale_factor(d, rotation_block), HAS_MEAN=False,
                                                   PER_ROW=True, ROTATION=rotation_channels(d, rotation_block), HEAD_DIM=d,
                                                   BLOCK=QUANT_BLOCK, INTERPRETED=_INTERPRET, num_warps=4 if d == 64 else 8)
    return (q8, qs) + quantize_kv(k, v, pv_dtype, rotation_block=rotation_block)


def quantize_kv(k, v, pv_dtype=None, k_mean=None, rotation_block: int = ROTATION_BLOCK):
    """quantize_qkv's K and V outputs (k8, k_scale, v8t, v_scale). k_mean: smoothing_mean(k) [B, H, D] float32 where
    the caller has it already (kernels/norm_rope.py's column sums), which saves a pass over K."""
    _check(k, k, v)
    k, v = contiguous_rows(k), contiguous_rows(v)
    b, lk, h, d = k.shape
    pk = _padded(lk)
    dev = k.device
    k8 = torch.empty((b, h, pk, d), dtype=torch.int8, device=dev)
    ks = torch.empty((b, h, pk // QUANT_BLOCK), dtype=torch.float32, device=dev)
    v8t = torch.empty((b, h, d, pk), dtype=pv_dtype or PV_DTYPE, device=dev)
    mean = (smoothing_mean(k) if k_mean is None else k_mean.float()).contiguous()
    vs = v_channel_scales(v).contiguous()
    warps = 4 if d == 64 else 8
    _quantize_qk_kernel[(pk // QUANT_BLOCK, b * h)](k, mean, k8, ks, lk, h, pk // QUANT_BLOCK, k.stride(0), k.stride(1),
                                                   k.stride(2), 1.0, HAS_MEAN=True, PER_ROW=False,
                                                   ROTATION=rotation_channels(d, rotation_block), HEAD_DIM=d,
                                                   BLOCK=QUANT_BLOCK, INTERPRETED=_INTERPRET, num_warps=warps)
    _quantize_v_kernel[(pk // QUANT_BLOCK, b * h)](v, vs, v8t, lk, h, pk, v.stride(0), v.stride(1), v.stride(2),
                                                  PV_FP8=v8t.dtype == torch.float8_e4m3fn, HEAD_DIM=d, BLOCK=QUANT_BLOCK,
                                                  INTERPRETED=_INTERPRET, num_warps=warps)
    return k8, ks, v8t, vs


def use_tma(device: torch.device) -> bool:
    """Hopper (compute capability 9.x, where it was measured) with Triton's host tensor descriptors."""
    if _INTERPRET or device.type != "cuda" or torch.cuda.get_device_capability(device)[0] != 9:
        return False
    return importlib.util.find_spec("triton.tools.tensor_descriptor") is not None


def _descriptors(q8, k8, v8t, block_m: int, block_n: int):
    from triton.tools.tensor_descriptor import TensorDescriptor

    b, h, pq, d = q8.shape
    pk = k8.shape[2]
    return (TensorDescriptor(q8, [b * h * pq, d], [d, 1], [block_m, d]),
            TensorDescriptor(k8, [b * h * pk, d], [d, 1], [block_n, d]),
            TensorDescriptor(v8t, [b * h * d, pk], [pk, 1], [d, block_n]))


def default_tiles(tma: bool):
    """The tiles attention8 uses when none are given."""
    return (32, 32, 4, 1) if _INTERPRET else HOPPER_TILES if tma else ATTENTION_TILES


def launch_tiles(device: torch.device, tiles, tma, caller: str) -> tuple[bool, tuple[int, int, int, int]]:
    """(tensor-descriptor loads?, (BLOCK_M, BLOCK_N, num_warps, num_stages)) for a launch of the dense or
    block-sparse kernel: the given choices or the defaults, tiles checked against the quantization block."""
    tma = use_tma(device) if tma is None else tma
    bm, bn, warps, stages = tiles or default_tiles(tma)
    if QUANT_BLOCK % bn or QUANT_BLOCK % bm:
        raise ValueError(f"{caller}: tiles must divide {QUANT_BLOCK}, got BLOCK_M={bm}, BLOCK_N={bn}")
    return tma, (bm, bn, warps, stages)


def launch_operands(q, k, v, quantized, tma: bool, tiles) -> tuple[tuple, tuple[int, int], dict]:
    """(the kernel's six leading operands, padded (Lq, Lk), launch options): Q, K, V^T quantized (or `quantized`)
    with their scales, as tensor descriptors for the TMA kernels."""
    q8, qs, k8, ks, v8t, vs = quantized or quantize_qkv(q, k, v)
    bm, bn, warps, stages = tiles
    options = {"num_warps": warps, "num_stages": stages}
    if tma:
        desc_q, desc_k, desc_v = _descriptors(q8, k8, v8t, bm, bn)
        operands = (desc_q, qs, desc_k, ks, desc_v, vs)
        options["maxnreg"] = HOPPER_MAX_REGISTERS
    else:
        operands = (q8, qs, k8, ks, v8t, vs)
    return operands, (q8.shape[2], k8.shape[2]), options


def attention8(q, k, v, quantized=None, tiles=None, split_accumulation=None, tma=None):
    """8-bit attention; returns [B, Lq, H, D] in q's dtype.

    quantized: quantize_qkv's output (its V dtype picks fp8 or fp16 P.V). tiles: (BLOCK_M, BLOCK_N, num_warps,
    num_stages) instead of default_tiles(tma). split_accumulation: None = SPLIT_ACCUMULATION. tma: tensor-descriptor
    loads (None: use_tma(q.device)) or pointer loads.
    """
    _check(q, k, v)
    b, lq, h, d = q.shape
    lk = k.shape[1]
    tma, (bm, bn, warps, stages) = launch_tiles(q.device, tiles, tma, "attention8")
    operands, (padded_q, padded_k), options = launch_operands(q, k, v, quantized, tma, (bm, bn, warps, stages))
    kernel = _attention8_kernel_tma if tma else _attention8_kernel
    out = torch.empty((b, lq, h, d), dtype=q.dtype, device=q.device)
    split = SPLIT_ACCUMULATION if split_accumulation is None else bool(split_accumulation)
    kernel[(triton.cdiv(lq, bm), b * h)](*operands, out, lq, lk, h, padded_q, padded_k, out.stride(0),
                                         out.stride(1), out.stride(2), HEAD_DIM=d, BLOCK_M=bm, BLOCK_N=bn,
                                         ROUND_P=_INTERPRET, SPLIT_ACC=split, **options)
    return out
