"""Which rank computes which batch rows and tokens of one block call.

Modes (world size P):
- ulysses: one group of all P ranks; every batch row's tokens are split across them (sequence parallel).
- cfg: the batch rows are split across the P ranks, one group per rank. ComfyUI batches the conditional and
  unconditional passes of a cfg > 1 step into one call, so with two rows each pass runs on its own rank; ranks
  left without rows (a batch smaller than P, e.g. cfg 1) sit the call out.
- both: P even, two groups of P/2 ranks; the rows are split between the groups and each group splits its rows'
  tokens Ulysses-style (2 ranks: the same as cfg; 4: cfg x 2-way Ulysses). A one-row call (cfg 1) takes one group
  of all P ranks instead, so no rank sits it out.
Splits that do not divide are as even as possible (sizes differ by at most one).
"""

from __future__ import annotations

import dataclasses

from ..errors import LightX2VError

MODES = ("ulysses", "cfg", "both")


def even_split(total: int, parts: int) -> list[int]:
    """`parts` sizes summing to `total`, the first ones one larger where it does not divide."""
    base, extra = divmod(total, parts)
    return [base + (i < extra) for i in range(parts)]


def offsets(sizes: list[int]) -> list[int]:
    out, start = [], 0
    for size in sizes:
        out.append(start)
        start += size
    return out


@dataclasses.dataclass(frozen=True)
class Share:
    ranks: tuple[int, ...]  # the group's ranks (Ulysses over them when more than one)
    rows: tuple[int, int]  # [start, stop) of the batch rows the group computes
    tokens: tuple[int, ...]  # tokens per rank of the group, in rank order

    def token_range(self, rank: int) -> tuple[int, int]:
        i = self.ranks.index(rank)
        start = sum(self.tokens[:i])
        return start, start + self.tokens[i]


def check_mode(mode: str, world_size: int) -> None:
    if mode not in MODES:
        raise LightX2VError(f"Unknown multi-GPU mode '{mode}': choose one of {', '.join(MODES)}.")
    if world_size < 1:
        raise LightX2VError(f"The world size must be at least 1 (got {world_size}).")
    if mode == "both" and world_size % 2:
        raise LightX2VError(f"Mode 'both' runs two cfg groups of equal size, so it needs an even number of processes "
                            f"(got {world_size}). Use {world_size - 1} or {world_size + 1}, or mode ulysses or cfg.")


def rank_groups(mode: str, world_size: int, rows: int) -> list[tuple[int, ...]]:
    ranks = tuple(range(world_size))
    if mode == "ulysses" or (mode == "both" and rows < 2):
        return [ranks]
    if mode == "cfg":
        return [(r,) for r in ranks[:rows]]
    half = world_size // 2
    return [ranks[:half], ranks[half:]]


def subgroups(mode: str, world_size: int) -> list[tuple[int, ...]]:
    """The process groups (besides the whole world) a mode's all-to-alls run in."""
    if mode == "both" and world_size > 2:
        half = world_size // 2
        return [tuple(range(half)), tuple(range(half, world_size))]
    return []


def plan_call(mode: str, world_size: int, rows: int, tokens: int, heads: int) -> list[Share]:
    check_mode(mode, world_size)
    groups = rank_groups(mode, world_size, rows)
    row_sizes = even_split(rows, len(groups))
    shares = []
    for ranks, start, count in zip(groups, offsets(row_sizes), row_sizes):
        if count == 0:
            continue
        if len(ranks) > 1 and (tokens < len(ranks) or heads < len(ranks)):
            raise LightX2VError(
                f"Ulysses over {len(ranks)} processes needs at least as many tokens and attention heads as processes, "
                f"but this call has {tokens} tokens and the model {heads} heads. Use fewer processes, mode cfg, or a "
                "larger video.")
        shares.append(Share(ranks, (start, start + count), tuple(even_split(tokens, len(ranks)))))
    return shares
