"""8-bit GEMM with the dequantization epilogue fused: out = (xq @ wq^T) * sx * sw^T + bias.

xq [M, K] and wq [N, K] are both int8 (int32 accumulation) or both float8_e4m3fn (fp32 accumulation);
sx [M, 1] per-token and sw [N, 1] per-output-channel float32 scales; bias [N] or None. The weight is read
in its stored [N, K] layout (K contiguous), which is the K-major operand the tensor cores want, so no
transposed copy is ever made. Fusing the epilogue saves the int32/fp32 [M, N] round trip through memory
that `torch._int_mm` + a separate scale pass costs.

Two kernels: for fp8 on Hopper and newer a persistent one with TMA descriptor loads (one program per SM; faster at
the 14B shapes, bench/quant_linear.py), elsewhere (int8, rows that are not 16-byte multiples, older GPUs) one with
pointer loads.
"""

from __future__ import annotations

import torch

from .common import INTERPRET, require_triton


# fp8: let the tensor cores accumulate all of K (no float32 promotion per K-tile). Promotion costs over a quarter of the
# fp8 GEMM's time, while the fast mode's error, <= 1e-3 of sum|x_k w_k|, equals cuBLAS's own use_fast_accum=True and is
# >10x below the error fp8 activation quantization already makes (bench/quant_linear.py).
FP8_PROMOTE_DEFAULT = False


def scaled_gemm_reference(xq, sx, wq, sw, bias=None, out_dtype=torch.bfloat16):
    """Plain PyTorch: exact integer-valued products summed in float32, then the same epilogue."""
    acc = xq.float() @ wq.float().t()
    out = acc * sx.float() * sw.float().t()
    if bias is not None:
        out = out + bias.float()
    return out.to(out_dtype)


try:
    import triton
    import triton.language as tl

    @triton.jit
    def _tile_position(tile, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
        """Grouped ordering of the output tiles: GROUP_M row-tiles share B tiles while they sit in L2."""
        num_n = tl.cdiv(N, BLOCK_N)
        group_size = GROUP_M * num_n
        first_m = (tile // group_size) * GROUP_M
        rows_in_group = tl.minimum(tl.cdiv(M, BLOCK_M) - first_m, GROUP_M)
        return first_m + (tile % group_size) % rows_in_group, (tile % group_size) // rows_in_group

    @triton.jit
    def _epilogue(acc, out_ptr, sa_ptr, sb_ptr, bias_ptr, pid_m, pid_n, M, N, stride_om, stride_on,
                  HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        sa = tl.load(sa_ptr + rm, mask=rm < M, other=0.0)
        sb = tl.load(sb_ptr + rn, mask=rn < N, other=0.0)
        out = acc.to(tl.float32) * sa[:, None] * sb[None, :]
        if HAS_BIAS:
            out += tl.load(bias_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
        o_ptrs = out_ptr + rm[:, None].to(tl.int64) * stride_om + rn[None, :] * stride_on
        tl.store(o_ptrs, out.to(out_ptr.dtype.element_ty), mask=(rm[:, None] < M) & (rn[None, :] < N))

    @triton.jit
    def _accumulate(acc, a, b, IS_INT8: tl.constexpr, FP8_PROMOTE: tl.constexpr, BLOCK_K: tl.constexpr):
        # One return statement: Triton 3.6 rejects returns of different types (int32 / float32 accumulators)
        # even in branches that a constexpr rules out.
        if IS_INT8:
            acc = tl.dot(a, b, acc, out_dtype=tl.int32)
        elif FP8_PROMOTE:
            # Hopper's fp8 tensor cores add into an accumulator of ~14 mantissa bits; this adds each K-tile's
            # partial sum into the float32 accumulator instead (DeepSeek-V3's 128-element interval).
            acc = tl.dot(a, b, acc, max_num_imprecise_acc=BLOCK_K)
        else:
            acc = tl.dot(a, b, acc)
        return acc

    @triton.jit
    def _scaled_gemm_kernel(a_ptr, b_ptr, out_ptr, sa_ptr, sb_ptr, bias_ptr, M, N, K,
                            stride_am, stride_ak, stride_bn, stride_bk, stride_om, stride_on,
                            HAS_BIAS: tl.constexpr, IS_INT8: tl.constexpr, FP8_PROMOTE: tl.constexpr,
                            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
        pid_m, pid_n = _tile_position(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)

        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        rk = tl.arange(0, BLOCK_K)
        a_ptrs = a_ptr + rm[:, None].to(tl.int64) * stride_am + rk[None, :] * stride_ak
        b_ptrs = b_ptr + rn[None, :].to(tl.int64) * stride_bn + rk[:, None] * stride_bk
        if IS_INT8:
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
        else:
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k in range(0, tl.cdiv(K, BLOCK_K)):
            k_left = K - k * BLOCK_K
            a = tl.load(a_ptrs, mask=(rm[:, None] < M) & (rk[None, :] < k_left), other=0.0)
            b = tl.load(b_ptrs, mask=(rn[None, :] < N) & (rk[:, None] < k_left), other=0.0)
            acc = _accumulate(acc, a, b, IS_INT8, FP8_PROMOTE, BLOCK_K)
            a_ptrs += BLOCK_K * stride_ak
            b_ptrs += BLOCK_K * stride_bk
        _epilogue(acc, out_ptr, sa_ptr, sb_ptr, bias_ptr, pid_m, pid_n, M, N, stride_om, stride_on, HAS_BIAS,
                  BLOCK_M, BLOCK_N)

    @triton.jit
    def _scaled_gemm_tma_kernel(a_desc, b_desc, out_ptr, sa_ptr, sb_ptr, bias_ptr, M, N, K, stride_om, stride_on,
                                HAS_BIAS: tl.constexpr, IS_INT8: tl.constexpr, FP8_PROMOTE: tl.constexpr,
                                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                                GROUP_M: tl.constexpr, NUM_SMS: tl.constexpr):
        """Persistent version with TMA loads (Hopper+): one program per SM walks the output tiles, so one tile's
        epilogue overlaps the next one's loads; the descriptors zero-fill past M, N and K (no masks)."""
        k_tiles = tl.cdiv(K, BLOCK_K)
        for tile in tl.range(tl.program_id(0), tl.cdiv(M, BLOCK_M) * tl.cdiv(N, BLOCK_N), NUM_SMS, flatten=True):
            pid_m, pid_n = _tile_position(tile, M, N, BLOCK_M, BLOCK_N, GROUP_M)
            if IS_INT8:
                acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
            else:
                acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for ki in range(k_tiles):
                a = a_desc.load([pid_m * BLOCK_M, ki * BLOCK_K])
                b = b_desc.load([pid_n * BLOCK_N, ki * BLOCK_K])
                acc = _accumulate(acc, a, b.T, IS_INT8, FP8_PROMOTE, BLOCK_K)
            _epilogue(acc, out_ptr, sa_ptr, sb_ptr, bias_ptr, pid_m, pid_n, M, N, stride_om, stride_on, HAS_BIAS,
                      BLOCK_M, BLOCK_N)

    # Large tiles for the GPU (chosen per shape by the autotuner); small fixed tiles for the CPU interpreter.
    _GPU_CONFIGS = [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8}, num_warps=w, num_stages=s)
        for bm, bn, bk, w, s in [(128, 128, 128, 8, 4), (128, 256, 128, 8, 3), (256, 128, 128, 8, 3),
                                 (128, 128, 128, 4, 4), (64, 128, 128, 4, 4),
                                 # deeper pipelines (shared memory permitting; the autotuner skips what does not fit)
                                 (128, 256, 128, 8, 4), (128, 256, 64, 8, 5), (256, 128, 64, 8, 5)]
    ]
    _autotuned_kernel = triton.autotune(_GPU_CONFIGS, key=["M", "N", "K", "IS_INT8", "FP8_PROMOTE"])(_scaled_gemm_kernel)

    try:
        from triton.tools.tensor_descriptor import TensorDescriptor
    except ImportError:  # an older Triton: the pointer kernel only
        TensorDescriptor = None
except ImportError:
    triton = None
    TensorDescriptor = None


# The TMA kernel's tiles (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages): the best or within 4% of the best of an H100
# sweep at every 14B shape (32,760 tokens; bench/quant_linear.py --tma-tiles).
TMA_TILES = (128, 256, 128, 8, 4)


def _tma_applies(xq: torch.Tensor, wq: torch.Tensor, out_dtype: torch.dtype) -> bool:
    """fp8 in, 16-bit out (TMA_TILES with a float32 output tile exceed shared memory), Hopper or newer, rows of
    16-byte multiples, unit column strides. (int8 keeps the pointer kernel: its TMA variant was not measured.)"""
    return (TensorDescriptor is not None and not INTERPRET and xq.is_cuda and xq.dtype == torch.float8_e4m3fn
            and out_dtype in (torch.bfloat16, torch.float16)
            and torch.cuda.get_device_capability(xq.device) >= (9, 0) and xq.shape[1] % 16 == 0
            and xq.stride(1) == 1 and wq.stride(1) == 1 and xq.stride(0) % 16 == 0 and wq.stride(0) % 16 == 0)


def _launch_tma(xq, wq, out, sx, sw, bias, flags, tiles):
    m, k = xq.shape
    n = wq.shape[0]
    bm, bn, bk, warps, stages = tiles or TMA_TILES
    # One program per SM (the interpreter: a few, so the persistent loop still visits several tiles each).
    sms = torch.cuda.get_device_properties(xq.device).multi_processor_count if xq.is_cuda else 3
    a_desc, b_desc = TensorDescriptor.from_tensor(xq, [bm, bk]), TensorDescriptor.from_tensor(wq, [bn, bk])
    grid = (min(sms, triton.cdiv(m, bm) * triton.cdiv(n, bn)),)
    _scaled_gemm_tma_kernel[grid](a_desc, b_desc, out, sx, sw, bias if bias is not None else sx, m, n, k, out.stride(0),
                                  out.stride(1), **flags, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8, NUM_SMS=sms,
                                  num_warps=warps, num_stages=stages)


def scaled_gemm(xq, sx, wq, sw, bias=None, out_dtype=torch.bfloat16, fp8_promote=None, tiles=None, tma=None):
    """Triton version of scaled_gemm_reference.

    tma: True/False: the persistent TMA kernel / the pointer kernel; None: TMA wherever it applies.

    fp8_promote: add each K-tile's fp8 partial product into float32 (exact to float32 rounding) rather than
    letting the tensor cores accumulate the whole K in their reduced-precision fp8 accumulator.
    None: FP8_PROMOTE_DEFAULT.
    tiles: a fixed (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) instead of the autotuner's choice (tests
    check the kernel's logic at a few tile shapes without compiling every candidate for every shape).
    """
    require_triton()
    m, k = xq.shape
    n = wq.shape[0]
    if wq.shape[1] != k or wq.dtype != xq.dtype:
        raise ValueError(f"scaled_gemm: x {tuple(xq.shape)} {xq.dtype} does not match w {tuple(wq.shape)} {wq.dtype}")
    out = torch.empty((m, n), dtype=out_dtype, device=xq.device)
    sx = sx.reshape(-1).float().contiguous()
    sw = sw.reshape(-1).float().contiguous()
    args = (xq, wq, out, sx, sw, bias if bias is not None else sx, m, n, k,
            xq.stride(0), xq.stride(1), wq.stride(0), wq.stride(1), out.stride(0), out.stride(1))
    flags = {"HAS_BIAS": bias is not None, "IS_INT8": xq.dtype == torch.int8, "FP8_PROMOTE": FP8_PROMOTE_DEFAULT if fp8_promote is None else bool(fp8_promote)}
    if INTERPRET and tiles is None:
        tiles = (16, 32, 32, 4, 1)
    if _tma_applies(xq, wq, out_dtype) if tma is None else tma:
        _launch_tma(xq, wq, out, sx, sw, bias, flags, tiles)
        return out
    if tiles is not None:
        bm, bn, bk, warps, stages = tiles
        grid = (triton.cdiv(m, bm) * triton.cdiv(n, bn),)
        _scaled_gemm_kernel[grid](*args, **flags, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=2,
                                  num_warps=warps, num_stages=stages)
    else:
        def grid(meta):
            return (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)
        _autotuned_kernel[grid](*args, **flags)
    return out
