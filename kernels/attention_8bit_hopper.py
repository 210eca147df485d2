"""The 8-bit attention kernel for Hopper (sm_90), in Gluon, with the softmax overlapping the tensor cores.

It runs the same algorithm as kernels/attention_8bit.py on the same quantized inputs (quantize_qkv), so
attention8_reference is its reference too. The one difference is the schedule.

Triton's pipeliner waits on each wgmma as soon as it is issued (bench/NOTES.md, offline sm_90 compile). The
tensor cores and the softmax of a warpgroup therefore take turns. Here the loop is software-pipelined the
way FlashAttention-3 does it within a warpgroup. Iteration j:
1. issues Q.K_j^T and P_{j-1}.V_{j-1} as asynchronous wgmmas;
2. waits only for Q.K_j^T, and runs tile j's softmax while P_{j-1}.V_{j-1} is still on the tensor cores;
3. then adds that product into the float32 accumulator.
K and V^T tiles arrive by TMA into a STAGES-deep ring, each stage with its own mbarriers. A stage is refilled
only after both of its wgmmas have been waited on.

Head dim 128 only (Wan's); other head dims use the Triton kernel. Gluon is experimental, so
`lightx2v_nodes.wan.attention` uses this kernel only where it compiled and matched the reference on first use.
"""

from __future__ import annotations

import torch

from .attention_8bit import QUANT_BLOCK, _check, quantize_qkv

BLOCK_M = 64  # one warpgroup of 4 warps, 16 rows per warp per wgmma
BLOCK_N = 128  # key tile, = QUANT_BLOCK: one K scale per tile
HEAD_DIM = 128
STAGES = 2

try:
    from triton.experimental import gluon
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.language.nvidia.hopper import mbarrier, tma, warpgroup_mma, warpgroup_mma_wait
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    @gluon.jit
    def _softmax_tile(s, m_i, l_i, row_scale, key_scale, start_n, length_k, s_layout: gl.constexpr,
                      BLOCK_N: gl.constexpr):
        """attention8's softmax of one int32 score tile: (p float32 in [0, 448], new row max, new row sum, alpha)."""
        # |s| < 2^22: adding the bits of 1.5 * 2^23 gives the float32 1.5 * 2^23 + s without a conversion.
        shifted = (s + 0x4B400000).to(gl.float32, bitcast=True)
        if start_n + BLOCK_N > length_k:
            cols = start_n + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, s_layout))
            shifted = gl.where(gl.expand_dims(cols < length_k, 0), shifted, float("-inf"))
        scale = row_scale * key_scale
        m_new = gl.maximum(m_i, (gl.max(shifted, axis=1) - 12582912.0) * scale)
        offset = 12582912.0 * scale + m_new - 8.807354922057604  # the shift and log2(448) in one constant per row
        p = gl.exp2(gl.fma(shifted, gl.expand_dims(scale, 1), -gl.expand_dims(offset, 1)))
        alpha = gl.exp2(m_i - m_new)
        return p, m_new, l_i * alpha + gl.sum(p, axis=1), alpha

    @gluon.jit
    def _pv_operand(p, p_layout: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr):
        """P as fp8 in the P.V wgmma's register layout, without moving data between threads."""
        # Score column n = 32 kb + 16 ih + 8 il + 2 c + e goes to k slot 32 kb + 16 ih + 4 c + 2 il + e: the wgmma
        # accumulator gives a thread columns 2c, 2c + 1 of every 8, its fp8 A operand wants k = 4c .. 4c + 3 of every
        # 16. V^T holds its tokens in the same order (attention_8bit.wgmma_token_slot), so P.V is unchanged.
        x = gl.reshape(p.to(gl.float8e4nv), [BLOCK_M, BLOCK_N // 32, 2, 2, 4, 2])
        x = gl.reshape(gl.permute(x, (0, 1, 2, 4, 3, 5)), [BLOCK_M, BLOCK_N])
        return gl.convert_layout(x, p_layout, assert_trivial=True)

    @gluon.jit
    def _load_kv(k_desc, v_desc, k_smem, v_smem, k_bars, v_bars, tile, stage, k_row0, v_row0, pred,
                 BLOCK_N: gl.constexpr):
        mbarrier.expect(k_bars.index(stage), k_desc.block_type.nbytes, pred=pred)
        tma.async_copy_global_to_shared(k_desc, [k_row0 + tile * BLOCK_N, 0], k_bars.index(stage), k_smem.index(stage),
                                        pred=pred)
        mbarrier.expect(v_bars.index(stage), v_desc.block_type.nbytes, pred=pred)
        tma.async_copy_global_to_shared(v_desc, [v_row0, tile * BLOCK_N], v_bars.index(stage), v_smem.index(stage),
                                        pred=pred)

    @gluon.jit
    def _attention8_hopper_kernel(q_desc, k_desc, v_desc, qs_ptr, ks_ptr, vs_ptr, out_ptr, length_q, length_k,
                                  heads, padded_q, padded_k, stride_ob, stride_ol, stride_oh,
                                  HEAD_DIM: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr,
                                  STAGES: gl.constexpr, num_warps: gl.constexpr):
        pid_m = gl.program_id(0)
        pid_bh = gl.program_id(1)
        # int8 and fp8 wgmmas both take k = 32 per instruction; S [BLOCK_M, BLOCK_N], O [BLOCK_M, HEAD_DIM].
        s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                           instr_shape=[16, BLOCK_N, 32])
        o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                           instr_shape=[16, HEAD_DIM, 32])
        p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=4)
        rows_layout: gl.constexpr = gl.SliceLayout(1, s_layout)

        q_smem = gl.allocate_shared_memory(gl.int8, [BLOCK_M, HEAD_DIM], q_desc.layout)
        k_smem = gl.allocate_shared_memory(gl.int8, [STAGES, BLOCK_N, HEAD_DIM], k_desc.layout)
        v_smem = gl.allocate_shared_memory(gl.float8e4nv, [STAGES, HEAD_DIM, BLOCK_N], v_desc.layout)
        q_bar = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
        k_bars = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        v_bars = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        mbarrier.init(q_bar, count=1)
        for ring in gl.static_range(STAGES):
            mbarrier.init(k_bars.index(ring), count=1)
            mbarrier.init(v_bars.index(ring), count=1)

        q_row0 = pid_bh * padded_q + pid_m * BLOCK_M
        k_row0 = pid_bh * padded_k
        v_row0 = pid_bh * HEAD_DIM
        n_tiles = gl.cdiv(length_k, BLOCK_N)
        mbarrier.expect(q_bar, q_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(q_desc, [q_row0, 0], q_bar, q_smem)
        for ring in gl.static_range(STAGES):
            _load_kv(k_desc, v_desc, k_smem, v_smem, k_bars, v_bars, ring, ring, k_row0, v_row0, ring < n_tiles,
                     BLOCK_N)

        row_scale = gl.load(qs_ptr + q_row0 + gl.arange(0, BLOCK_M, layout=rows_layout))
        ks_base = ks_ptr + pid_bh * (padded_k // BLOCK_N)
        s_zero = gl.zeros([BLOCK_M, BLOCK_N], gl.int32, s_layout)
        o_zero = gl.zeros([BLOCK_M, HEAD_DIM], gl.float32, o_layout)

        # Tile 0: nothing to overlap with yet.
        mbarrier.wait(q_bar, 0)
        mbarrier.wait(k_bars.index(0), 0)
        s = warpgroup_mma(q_smem, k_smem.index(0).permute((1, 0)), s_zero, use_acc=False)
        p, m_i, l_i, alpha = _softmax_tile(s, gl.full([BLOCK_M], float("-inf"), gl.float32, rows_layout),
                                           gl.zeros([BLOCK_M], gl.float32, rows_layout), row_scale, gl.load(ks_base),
                                           0, length_k, s_layout, BLOCK_N)
        p_prev = _pv_operand(p, p_layout, BLOCK_M, BLOCK_N)
        acc = o_zero
        alpha_prev = gl.convert_layout(alpha, gl.SliceLayout(1, o_layout))
        for j in range(1, n_tiles):
            stage = j % STAGES
            prev = (j - 1) % STAGES
            mbarrier.wait(k_bars.index(stage), (j // STAGES) & 1)
            s_tok = warpgroup_mma(q_smem, k_smem.index(stage).permute((1, 0)), s_zero, use_acc=False, is_async=True)
            mbarrier.wait(v_bars.index(prev), ((j - 1) // STAGES) & 1)
            o_tok = warpgroup_mma(p_prev, v_smem.index(prev).permute((1, 0)), o_zero, use_acc=False, is_async=True)
            s = warpgroup_mma_wait(num_outstanding=1, deps=(s_tok, ))
            p, m_i, l_i, alpha = _softmax_tile(s, m_i, l_i, row_scale, gl.load(ks_base + j), j * BLOCK_N, length_k,
                                               s_layout, BLOCK_N)
            o = warpgroup_mma_wait(num_outstanding=0, deps=(o_tok, ))
            # Add each tile's product in float32 registers: the fp8 wgmma's own accumulation keeps ~14 bits.
            acc = acc * gl.expand_dims(alpha_prev, 1) + o
            # Both wgmmas that read stage `prev` are done: refill it with the tile STAGES ahead.
            _load_kv(k_desc, v_desc, k_smem, v_smem, k_bars, v_bars, j - 1 + STAGES, prev, k_row0, v_row0,
                     j - 1 + STAGES < n_tiles, BLOCK_N)
            p_prev = _pv_operand(p, p_layout, BLOCK_M, BLOCK_N)
            alpha_prev = gl.convert_layout(alpha, gl.SliceLayout(1, o_layout))
        last = n_tiles - 1
        mbarrier.wait(v_bars.index(last % STAGES), (last // STAGES) & 1)
        o = warpgroup_mma(p_prev, v_smem.index(last % STAGES).permute((1, 0)), o_zero, use_acc=False)
        acc = acc * gl.expand_dims(alpha_prev, 1) + o

        mbarrier.invalidate(q_bar)
        for ring in gl.static_range(STAGES):
            mbarrier.invalidate(k_bars.index(ring))
            mbarrier.invalidate(v_bars.index(ring))

        cols = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, o_layout))
        v_scale = gl.load(vs_ptr + pid_bh * HEAD_DIM + cols)
        l_o = gl.convert_layout(l_i, gl.SliceLayout(1, o_layout))
        out = acc / gl.expand_dims(l_o, 1) * gl.expand_dims(v_scale, 0)
        store_layout: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [num_warps, 1], [1, 0])
        out = gl.convert_layout(out.to(out_ptr.dtype.element_ty), store_layout)
        rows = pid_m * BLOCK_M + gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, store_layout))
        cols = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, store_layout))
        b = pid_bh // heads
        h = pid_bh % heads
        ptrs = (out_ptr + b.to(gl.int64) * stride_ob + gl.expand_dims(rows.to(gl.int64) * stride_ol, 1) + h * stride_oh
                + gl.expand_dims(cols, 0))
        gl.store(ptrs, out, mask=gl.expand_dims(rows < length_q, 1))

    GLUON_AVAILABLE = True
except ImportError:  # Triton without Gluon (before 3.5)
    GLUON_AVAILABLE = False


def supports(q: torch.Tensor) -> bool:
    """Whether this kernel handles q's device and head dim (Hopper, D = 128, Triton with Gluon)."""
    return (GLUON_AVAILABLE and q.is_cuda and q.shape[-1] == HEAD_DIM
            and torch.cuda.get_device_capability(q.device) == (9, 0))


def _descriptor(x: torch.Tensor, block_shape: list[int], dtype) -> "TensorDescriptor":
    layout = gl.NVMMASharedLayout.get_default_for(block_shape, dtype)
    return TensorDescriptor(x, list(x.shape), list(x.stride()), block_shape, layout)


def attention8_hopper(q, k, v, quantized=None, stages: int = STAGES):
    """attention8 with the pipelined Hopper kernel, [B, Lq, H, D] in q's dtype. quantized: quantize_qkv(...,
    wgmma_order=True)'s output (V^T's tokens in the order this kernel's P tile has them)."""
    _check(q, k, v)
    if not supports(q):
        raise RuntimeError("attention8_hopper needs a Hopper GPU (sm_90), head dim 128 and Triton with Gluon")
    b, lq, h, d = q.shape
    lk = k.shape[1]
    q8, qs, k8, ks, v8t, vs = quantized or quantize_qkv(q, k, v, wgmma_order=True)
    if v8t.dtype != torch.float8_e4m3fn or BLOCK_N != QUANT_BLOCK:
        raise ValueError("attention8_hopper takes fp8 V (quantize_qkv's default) and one K scale per key tile")
    pq, pk = q8.shape[2], k8.shape[2]
    q_desc = _descriptor(q8.view(b * h * pq, d), [BLOCK_M, d], gl.int8)
    k_desc = _descriptor(k8.view(b * h * pk, d), [BLOCK_N, d], gl.int8)
    v_desc = _descriptor(v8t.view(b * h * d, pk), [d, BLOCK_N], gl.float8e4nv)
    out = torch.empty((b, lq, h, d), dtype=q.dtype, device=q.device)
    grid = (triton_cdiv(lq, BLOCK_M), b * h)
    _attention8_hopper_kernel[grid](q_desc, k_desc, v_desc, qs, ks, vs, out, lq, lk, h, pq, pk, out.stride(0),
                                    out.stride(1), out.stride(2), HEAD_DIM=d, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N,
                                    STAGES=stages, num_warps=4)
    return out


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)
