"""One summary line per applied LoRA (what matched which kind of parameter, what matched nothing).

The per-key details go to the debug log: users asked for an end to hundreds of "lora key not loaded" lines.
"""

from __future__ import annotations

import collections
import re

from .mapping import LoraPlan

_NUMBER = re.compile(r"\d+")


def parameter_kind(target: str) -> str:
    if target.endswith("modulation"):
        return "modulation"
    if target.endswith(".bias"):
        return "bias"
    module = target.rsplit(".", 1)[0]
    if "norm" in module.rsplit(".", 1)[-1] or module.endswith("img_emb.proj.0") or module.endswith("img_emb.proj.4"):
        return "norm weight"
    if module.endswith("patch_embedding"):
        return "conv weight"
    return "linear weight"


def group_keys(keys: list[str]) -> list[tuple[str, int]]:
    """Keys with block numbers folded into `*`, most frequent first: blocks.*.foo.lora_up.weight x40."""
    counts = collections.Counter(_NUMBER.sub("*", k) for k in keys)
    return counts.most_common()


_PLURAL = {"bias": "biases", "modulation": "modulation tensors"}


def _count_phrase(counter: collections.Counter) -> str:
    return ", ".join(f"{n} {kind if n == 1 else _PLURAL.get(kind, kind + 's')}" for kind, n in counter.most_common())


def summary(plan: LoraPlan, name: str, strength: float, mode: str) -> str:
    low = collections.Counter(parameter_kind(p.target) for p in plan.low_rank)
    diff = collections.Counter(parameter_kind(p.target) for p in plan.diffs)
    ranks = sorted({p.rank for p in plan.low_rank})
    parts = []
    if low:
        rank_text = f"rank {ranks[0]}" if len(ranks) == 1 else f"ranks {ranks[0]}-{ranks[-1]}"
        parts.append(f"low-rank ({rank_text}): {_count_phrase(low)}")
    if diff:
        parts.append(f"full diff: {_count_phrase(diff)}")
    text = (f"LightX2V LoRA '{name}' ({mode}, strength {strength:g}): {plan.total_keys} keys -> "
            f"{len(plan.targets)} parameters [{'; '.join(parts)}]")
    if plan.unmatched:
        groups = group_keys(plan.unmatched)
        shown = ", ".join(f"{g} x{n}" if n > 1 else g for g, n in groups[:4])
        more = f" and {len(groups) - 4} more groups" if len(groups) > 4 else ""
        text += f"; {len(plan.unmatched)} keys matched nothing and were skipped: {shown}{more}"
    return text


def details(plan: LoraPlan) -> list[str]:
    """Debug-level lines: every key and the parameter it went to."""
    lines = [f"  {p.source} (+down, scale {p.scale:g}) -> {p.target}" for p in plan.low_rank]
    lines += [f"  {p.source} -> {p.target}" for p in plan.diffs]
    lines += [f"  {k} -> (nothing)" for k in plan.unmatched]
    return lines
