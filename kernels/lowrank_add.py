"""In-place low-rank update out += alpha * h @ up^T (a LoRA side branch added to a layer's output).

out [M, N] with contiguous rows, h [M, R] (any row stride: a column slice of a shared projection), up [N, R];
R is a LoRA rank (small). The work is one read and one write of `out`; the product is negligible. cuBLAS's
addmm_ with K = R runs well above that memory time, so this kernel streams `out` tile by tile and adds the small
product computed on the fly in float32 (bench/lora.py times the side branch it serves).
"""

from __future__ import annotations

import torch

from .common import INTERPRET, require_triton


def lowrank_add_reference(out: torch.Tensor, h: torch.Tensor, up: torch.Tensor, alpha: float) -> torch.Tensor:
    """float32 math, rounded once to out's dtype, written into out."""
    out.copy_((out.float() + alpha * (h.float() @ up.float().t())).to(out.dtype))
    return out


try:
    import triton
    import triton.language as tl

    @triton.jit
    def _lowrank_add_kernel(out_ptr, h_ptr, up_ptr, M, N, R, stride_om, stride_hm, stride_un, alpha,
                            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr):
        pid_m = tl.program_id(0)
        pid_n = tl.program_id(1)
        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        rr = tl.arange(0, BLOCK_R)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for start in range(0, R, BLOCK_R):
            cols = start + rr
            h = tl.load(h_ptr + rm[:, None].to(tl.int64) * stride_hm + cols[None, :],
                        mask=(rm[:, None] < M) & (cols[None, :] < R), other=0.0)
            u = tl.load(up_ptr + rn[:, None].to(tl.int64) * stride_un + cols[None, :],
                        mask=(rn[:, None] < N) & (cols[None, :] < R), other=0.0)
            acc = tl.dot(h, tl.trans(u), acc)
        mask = (rm[:, None] < M) & (rn[None, :] < N)
        o_ptrs = out_ptr + rm[:, None].to(tl.int64) * stride_om + rn[None, :]
        y = tl.load(o_ptrs, mask=mask, other=0.0).to(tl.float32) + alpha * acc
        tl.store(o_ptrs, y.to(out_ptr.dtype.element_ty), mask=mask)

    _GPU_CONFIGS = [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w)
        for bm, bn, w in [(64, 128, 4), (128, 64, 4), (64, 256, 8), (128, 128, 8), (32, 256, 4), (256, 64, 8)]
    ]
    # The autotuner times each config by running it: restore_value puts `out` back after each of those runs.
    _autotuned_kernel = triton.autotune(_GPU_CONFIGS, key=["M", "N", "R"], restore_value=["out_ptr"])(_lowrank_add_kernel)
except ImportError:
    triton = None


def lowrank_add_(out: torch.Tensor, h: torch.Tensor, up: torch.Tensor, alpha: float) -> torch.Tensor:
    """Triton version of lowrank_add_reference (out, h and up of one dtype; out's and up's rows contiguous)."""
    require_triton()
    m, n = out.shape
    r = h.shape[1]
    if h.shape[0] != m or up.shape != (n, r) or out.stride(1) != 1 or h.stride(1) != 1 or up.stride(1) != 1:
        raise ValueError(f"lowrank_add_: out {tuple(out.shape)}, h {tuple(h.shape)}, up {tuple(up.shape)} do not fit "
                         "(or a last dimension is not contiguous)")
    block_r = max(16, min(64, triton.next_power_of_2(r)))
    args = (out, h, up, m, n, r, out.stride(0), h.stride(0), up.stride(0), float(alpha))
    if INTERPRET:
        _lowrank_add_kernel[(triton.cdiv(m, 32), triton.cdiv(n, 32))](*args, BLOCK_M=32, BLOCK_N=32, BLOCK_R=block_r)
    else:
        _autotuned_kernel[lambda meta: (triton.cdiv(m, meta["BLOCK_M"]), triton.cdiv(n, meta["BLOCK_N"]))](
            *args, BLOCK_R=block_r)
    return out
