"""Ulysses sequence parallelism (DeepSpeed-Ulysses, arXiv:2309.14509) around a DiT's self-attention.

Each of the U ranks of a group holds a slice of the tokens. Self-attention needs every token, but each head is
independent: an all-to-all turns q, k, v [B, L/U, H, D] into [B, L, H/U, D] (all tokens, this rank's heads), the
attention runs locally, and the reverse all-to-all gives every rank its tokens with all heads back. Norms, RoPE,
cross-attention and the FFN work per token and stay local. Token and head counts that do not divide are split
as evenly as possible (all_to_all_single with per-rank sizes).
"""

from __future__ import annotations

import math
import time

import torch
import torch.distributed as dist

from .plan import even_split, offsets


def as_bytes(t: torch.Tensor) -> torch.Tensor:
    """A flat uint8 view (a copy where t is not contiguous): every dtype travels through every backend this way,
    fp8 included, which gloo has no type for."""
    return t.contiguous().reshape(-1).view(torch.uint8)


def from_bytes(buffer: torch.Tensor, dtype: torch.dtype, shape) -> torch.Tensor:
    return buffer.view(dtype).reshape(shape)


class CommTimer:
    """Seconds spent in all-to-alls (synchronizing the device around each one while enabled, for the bench)."""

    def __init__(self):
        self.enabled, self.seconds = False, 0.0

    def measure(self, fn):
        if not self.enabled:
            return fn()
        sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
        sync()
        start = time.perf_counter()
        out = fn()
        sync()
        self.seconds += time.perf_counter() - start
        return out


TIMER = CommTimer()


def exchange(pieces: list[torch.Tensor], shapes: list[tuple], dtype: torch.dtype, group) -> list[torch.Tensor]:
    """all-to-all: pieces[j] goes to the group's j-th rank; returns what each rank sent here, shaped shapes[j]."""
    size = torch.empty((), dtype=dtype).element_size()
    send = torch.cat([as_bytes(p) for p in pieces])
    recv_sizes = [math.prod(s) * size for s in shapes]
    recv = torch.empty(sum(recv_sizes), dtype=torch.uint8, device=send.device)
    TIMER.measure(lambda: dist.all_to_all_single(recv, send, recv_sizes, [p.numel() * size for p in pieces], group=group))
    return [from_bytes(chunk, dtype, s) for chunk, s in zip(recv.split(recv_sizes), shapes)]


class UlyssesAttention:
    """Stands in for a self-attention's `attend(q, k, v)` on one rank of a Ulysses group.

    tokens: the group's tokens per rank; index: this rank's position in the group; group: its process group.
    No `from_projections`: the fused 8-bit input path needs whole heads of all tokens, so the attention module
    normalizes and rotates its own token slice and hands q, k, v over here.
    """

    def __init__(self, inner, tokens: list[int], index: int, group):
        self.inner, self.tokens, self.index, self.group = inner, list(tokens), index, group

    @torch.compiler.disable  # collectives with Python-side bookkeeping: one graph break in a compiled phase
    def __call__(self, q, k, v):
        b, local, h, d = q.shape
        me = self.index
        heads = even_split(h, len(self.tokens))
        head_starts, token_starts = offsets(heads), offsets(self.tokens)

        def gather_tokens(t):  # [rows, my tokens, H, D] -> [rows, all tokens, my heads, D]
            pieces = [t[:, :, s:s + n] for s, n in zip(head_starts, heads)]
            parts = exchange(pieces, [(t.shape[0], n, heads[me], d) for n in self.tokens], t.dtype, self.group)
            return torch.cat(parts, dim=1)

        if q.dtype == k.dtype == v.dtype:  # one all-to-all for the three
            q, k, v = gather_tokens(torch.cat([q, k, v], dim=0)).chunk(3, dim=0)
        else:
            q, k, v = (gather_tokens(t) for t in (q, k, v))
        out = self.inner(q.contiguous(), k.contiguous(), v.contiguous()).unflatten(-1, (heads[me], d))
        pieces = [out[:, s:s + n] for s, n in zip(token_starts, self.tokens)]
        parts = exchange(pieces, [(b, local, n, d) for n in heads], out.dtype, self.group)
        return torch.cat(parts, dim=2).reshape(b, local, h * d)
