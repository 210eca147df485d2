"""Block-sparse 8-bit attention: the kernel of attention_8bit.py visiting, per query tile, only listed key tiles.

A table says which key tiles each query tile attends to: `indices` int32 [heads or 1, n_query_tiles, max_listed]
(key tile numbers, ascending, in units of BLOCK_N keys) and `counts` int32 [heads or 1, n_query_tiles] (how many of
a row's entries are used). Skipped tiles cost nothing: no loads, no dot products. A table listing every key tile is
the dense kernel, bit for bit (the same tile function in the same order). The quantization is the dense one (Q per
token, K per block of QUANT_BLOCK keys over the whole sequence, V per channel over all tokens), so the sparse result
equals dense 8-bit attention over the kept keys only, with those scales.

Tables are built for one tile size: `BlockTable.tiles` (BLOCK_M, BLOCK_N) must match the launch's tiles
(`table_tiles(device)` gives the defaults on a device). Ascending order puts a partial last key tile last in a row,
where the kernel masks the keys past the sequence end, as the dense kernel does with its tail tile.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from .attention_8bit import (P_SCALE_LOG2, QUANT_BLOCK, SPLIT_ACCUMULATION, _check, default_tiles, launch_operands,
                             launch_tiles, quantize_qkv_reference, triton, use_tma)
from .common import INTERPRET


@dataclasses.dataclass(frozen=True)
class BlockTable:
    """Which key tiles each query tile visits: indices [Ht, n_query_tiles, max_listed] int32 (ascending per row),
    counts [Ht, n_query_tiles] int32 (>= 1), for tiles (BLOCK_M, BLOCK_N); Ht is 1 (all heads) or the head count."""

    indices: torch.Tensor
    counts: torch.Tensor
    tiles: tuple[int, int]
    key_tiles: int  # key tiles of the sequence the table was built for

    @property
    def kept_fraction(self) -> float:
        """Visited (query tile, key tile) pairs over all pairs: the share of the dense kernel's work left."""
        return float(self.counts.double().sum()) / (self.counts.numel() * self.key_tiles)

    def to(self, device) -> "BlockTable":
        return dataclasses.replace(self, indices=self.indices.to(device), counts=self.counts.to(device))


def block_table(tile_mask: torch.Tensor, tiles: tuple[int, int]) -> BlockTable:
    """The table of a boolean tile mask [Ht, n_query_tiles, n_key_tiles] (True: visit). Every query tile must keep at
    least one key tile (a row of nothing has no softmax)."""
    if tile_mask.dim() != 3 or tile_mask.dtype != torch.bool:
        raise ValueError(f"block_table: expected a bool mask [heads or 1, query tiles, key tiles], got "
                         f"{tile_mask.dtype} {tuple(tile_mask.shape)}")
    counts = tile_mask.sum(dim=-1, dtype=torch.int32)
    if int(counts.min()) < 1:
        raise ValueError("block_table: a query tile keeps no key tile; every query tile needs at least one")
    n_keys = tile_mask.shape[-1]
    # Kept tiles first, in ascending order: a stable sort of (not kept, tile number).
    order = torch.argsort((~tile_mask).to(torch.int64) * n_keys + torch.arange(n_keys, device=tile_mask.device), dim=-1)
    width = int(counts.max())
    return BlockTable(order[..., :width].to(torch.int32).contiguous(), counts.contiguous(), tuple(tiles), n_keys)


def table_tiles(device: torch.device, tma: bool | None = None) -> tuple[int, int]:
    """(BLOCK_M, BLOCK_N) that attention8_sparse launches with by default on `device`."""
    return default_tiles(use_tma(device) if tma is None else tma)[:2]


def _check_table(table: BlockTable, heads: int, length_q: int, length_k: int, tiles) -> None:
    bm, bn = tiles
    n_q, n_k = -(-length_q // bm), -(-length_k // bn)
    if table.tiles != (bm, bn):
        raise ValueError(f"attention8_sparse: the table was built for tiles {table.tiles}, the launch uses {(bm, bn)}")
    if table.indices.shape[0] not in (1, heads) or table.indices.shape[1] != n_q or table.key_tiles != n_k:
        raise ValueError(f"attention8_sparse: table [{table.indices.shape[0]}, {table.indices.shape[1]}] query tiles "
                         f"x {table.key_tiles} key tiles does not fit {heads} heads, {n_q} query tiles x {n_k} key tiles")


def attention8_sparse_reference(q, k, v, table: BlockTable, quantized=None):
    """The kernel's algorithm in PyTorch: per query tile, the dense reference's online softmax over the listed key
    tiles only, in the listed order (same quantization, same per-block K scales)."""
    b, lq, h, d = q.shape
    lk = k.shape[1]
    bm, bn = table.tiles
    q8, qs, k8, ks, v8t, vs = quantized or quantize_qkv_reference(q, k, v)
    out = torch.empty((b, h, lq, d), device=q.device)
    for tile in range(table.indices.shape[1]):
        rows = slice(tile * bm, min(tile * bm + bm, lq))
        q_rows, row_scale = q8[:, :, rows].float(), qs[:, :, rows]
        n = q_rows.shape[2]
        m = torch.full((b, h, n), -math.inf, device=q.device)
        l = torch.zeros((b, h, n), device=q.device)
        acc = torch.zeros((b, h, n, d), device=q.device)
        for head in range(h):
            listed = table.indices[min(head, table.indices.shape[0] - 1), tile]
            count = int(table.counts[min(head, table.counts.shape[0] - 1), tile])
            for start in (int(t) * bn for t in listed[:count]):
                stop = min(start + bn, lk)
                s = (q_rows[:, head] @ k8[:, head, start:stop].float().transpose(-1, -2)
                     ) * (row_scale[:, head] * ks[:, head, start // QUANT_BLOCK, None])[..., None]
                m_new = torch.maximum(m[:, head], s.amax(dim=-1))
                p = torch.exp2(s - (m_new - P_SCALE_LOG2)[..., None])
                alpha = torch.exp2(m[:, head] - m_new)
                l[:, head] = l[:, head] * alpha + p.sum(dim=-1)
                v_tile = v8t[:, head, :, start:stop].float().transpose(-1, -2)
                acc[:, head] = acc[:, head] * alpha[..., None] + p.to(v8t.dtype).float() @ v_tile
                m[:, head] = m_new
        out[:, :, rows] = acc / l[..., None] * vs[:, :, None, :]
    return out.transpose(1, 2).to(q.dtype)


if triton is not None:
    import triton.language as tl

    from .attention_8bit import _attention8_tile, _load_kv_tile, _load_q_tile, _store_output

    @triton.jit
    def _attend_listed_keys(q, row_scale, k_src, v_src, ks_ptr, list_ptr, count, pid_bh, length_k, padded_k,
                            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD_DIM: tl.constexpr,
                            ROUND_P: tl.constexpr, SPLIT_ACC: tl.constexpr, TMA: tl.constexpr):
        """The online softmax over the listed key tiles of one head (ascending, count >= 1): (acc, l_i)."""
        offs_n = tl.arange(0, BLOCK_N)
        ks_base = ks_ptr + pid_bh * (padded_k // 128)
        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
        last = tl.load(list_ptr + count - 1)
        has_tail = (last + 1) * BLOCK_N > length_k  # the partial last key tile is listed (and then listed last)
        for i in range(0, count - has_tail.to(tl.int32)):
            start_n = tl.load(list_ptr + i) * BLOCK_N
            k, vt = _load_kv_tile(k_src, v_src, pid_bh, start_n, padded_k, BLOCK_N, HEAD_DIM, TMA)
            acc, l_i, m_i = _attention8_tile(acc, l_i, m_i, q, row_scale, k, vt, tl.load(ks_base + start_n // 128),
                                             start_n + offs_n, length_k, False, ROUND_P, SPLIT_ACC)
        if has_tail:
            start_n = last * BLOCK_N
            k, vt = _load_kv_tile(k_src, v_src, pid_bh, start_n, padded_k, BLOCK_N, HEAD_DIM, TMA)
            acc, l_i, m_i = _attention8_tile(acc, l_i, m_i, q, row_scale, k, vt, tl.load(ks_base + start_n // 128),
                                             start_n + offs_n, length_k, True, ROUND_P, SPLIT_ACC)
        return acc, l_i

    @triton.jit
    def _listed(indices_ptr, counts_ptr, pid_m, pid_bh, heads, n_query_tiles, max_listed, PER_HEAD: tl.constexpr):
        """This program's row of the table: (pointer to its key tile numbers, how many)."""
        row = ((pid_bh % heads) * n_query_tiles + pid_m) if PER_HEAD else pid_m
        return indices_ptr + row.to(tl.int64) * max_listed, tl.load(counts_ptr + row)

    @triton.jit
    def _attention8_sparse_kernel(q_ptr, qs_ptr, k_ptr, ks_ptr, vt_ptr, vs_ptr, out_ptr, indices_ptr, counts_ptr,
                                  length_q, length_k, heads, padded_q, padded_k, stride_ob, stride_ol, stride_oh,
                                  n_query_tiles, max_listed, PER_HEAD: tl.constexpr, HEAD_DIM: tl.constexpr,
                                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, ROUND_P: tl.constexpr,
                                  SPLIT_ACC: tl.constexpr):
        """Pointer loads (any GPU with fp8 tensor cores, Triton's interpreter)."""
        pid_m = tl.program_id(0)
        pid_bh = tl.program_id(1)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        bh = pid_bh.to(tl.int64)
        q, row_scale = _load_q_tile(q_ptr, qs_ptr, bh, offs_m, padded_q, HEAD_DIM)
        listed, count = _listed(indices_ptr, counts_ptr, pid_m, pid_bh, heads, n_query_tiles, max_listed, PER_HEAD)
        acc, l_i = _attend_listed_keys(q, row_scale, k_ptr + bh * padded_k * HEAD_DIM, vt_ptr + bh * HEAD_DIM * padded_k,
                                       ks_ptr, listed, count, pid_bh, length_k, padded_k, BLOCK_M, BLOCK_N, HEAD_DIM,
                                       ROUND_P, SPLIT_ACC, False)
        _store_output(acc, l_i, vs_ptr, out_ptr, pid_bh, offs_m, length_q, heads, stride_ob, stride_ol, stride_oh, HEAD_DIM)

    @triton.jit
    def _attention8_sparse_kernel_tma(desc_q, qs_ptr, desc_k, ks_ptr, desc_v, vs_ptr, out_ptr, indices_ptr, counts_ptr,
                                      length_q, length_k, heads, padded_q, padded_k, stride_ob, stride_ol, stride_oh,
                                      n_query_tiles, max_listed, PER_HEAD: tl.constexpr, HEAD_DIM: tl.constexpr,
                                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, ROUND_P: tl.constexpr,
                                      SPLIT_ACC: tl.constexpr):
        """Hopper's tensor-descriptor loads (as attention_8bit's TMA kernel)."""
        pid_m = tl.program_id(0)
        pid_bh = tl.program_id(1)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        q = desc_q.load([pid_bh * padded_q + pid_m * BLOCK_M, 0])
        row_scale = tl.load(qs_ptr + pid_bh.to(tl.int64) * padded_q + offs_m)
        listed, count = _listed(indices_ptr, counts_ptr, pid_m, pid_bh, heads, n_query_tiles, max_listed, PER_HEAD)
        acc, l_i = _attend_listed_keys(q, row_scale, desc_k, desc_v, ks_ptr, listed, count, pid_bh, length_k, padded_k,
                                       BLOCK_M, BLOCK_N, HEAD_DIM, ROUND_P, SPLIT_ACC, True)
        _store_output(acc, l_i, vs_ptr, out_ptr, pid_bh, offs_m, length_q, heads, stride_ob, stride_ol, stride_oh, HEAD_DIM)


def attention8_sparse(q, k, v, table: BlockTable, quantized=None, tiles=None, split_accumulation=None, tma=None):
    """Block-sparse 8-bit attention; returns [B, Lq, H, D] in q's dtype. Arguments as attention8's, plus `table`
    (block_table's, on q's device, for the launch's tiles: by default table_tiles(q.device, tma))."""
    _check(q, k, v)
    b, lq, h, d = q.shape
    lk = k.shape[1]
    tma, (bm, bn, warps, stages) = launch_tiles(q.device, tiles, tma, "attention8_sparse")
    _check_table(table, h, lq, lk, (bm, bn))
    operands, (padded_q, padded_k), options = launch_operands(q, k, v, quantized, tma, (bm, bn, warps, stages))
    kernel = _attention8_sparse_kernel_tma if tma else _attention8_sparse_kernel
    out = torch.empty((b, lq, h, d), dtype=q.dtype, device=q.device)
    split = SPLIT_ACCUMULATION if split_accumulation is None else bool(split_accumulation)
    n_q = table.indices.shape[1]
    kernel[(n_q, b * h)](*operands, out, table.indices, table.counts, lq, lk, h, padded_q, padded_k,
                         out.stride(0), out.stride(1), out.stride(2), n_q, table.indices.shape[2],
                         PER_HEAD=table.indices.shape[0] > 1, HEAD_DIM=d, BLOCK_M=bm, BLOCK_N=bn, ROUND_P=INTERPRET,
                         SPLIT_ACC=split, **options)
    return out
