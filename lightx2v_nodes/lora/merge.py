"""Merging a LoRA plan into weights without ComfyUI: W += strength * scale * up @ down in fp32, cast back.

The node merges through ComfyUI's ModelPatcher (same math, with its backup/restore); this is the engine-side
version for offline conversion and the merge benchmark.
"""

from __future__ import annotations

import torch

from .mapping import DiffPatch, LowRankPatch, LoraPlan


def low_rank_delta(patch: LowRankPatch, shape, device=None) -> torch.Tensor:
    """scale * up @ down in fp32, shaped like the target parameter."""
    up = patch.up.to(device=device, dtype=torch.float32).flatten(1)
    down = patch.down.to(device=device, dtype=torch.float32).flatten(1)
    return (up @ down).mul_(patch.scale).reshape(shape)


@torch.no_grad()
def merge_patch(weight: torch.Tensor, patch: LowRankPatch | DiffPatch, strength: float) -> torch.Tensor:
    """The merged parameter (a new tensor in weight's dtype and device)."""
    merged = weight.to(torch.float32, copy=True)
    if isinstance(patch, LowRankPatch):
        merged += strength * low_rank_delta(patch, weight.shape, weight.device)
    else:
        merged += strength * patch.diff.to(device=weight.device, dtype=torch.float32)
    return merged.to(weight.dtype)


@torch.no_grad()
def merge_plan(params: dict[str, torch.Tensor], plan: LoraPlan, strength: float = 1.0) -> None:
    """Merge every patch of the plan into `params` (original Wan names -> tensors), in place."""
    for patch in [*plan.low_rank, *plan.diffs]:
        weight = params[patch.target]
        weight.copy_(merge_patch(weight, patch, strength))
