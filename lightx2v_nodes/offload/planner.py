"""VRAM-budget planner: budget -> offload mode (none / block / phase) and how many blocks stay resident.

Device memory of a run = non-block weights + resident blocks + (prefetch + 1) streaming slots (a block or
a phase each) + activations + allocator slack. Activations are estimated for Wan at the run's token count
from what the 14B model measured on the H100 (2026-11-24, peak allocated fully resident minus its weights):
bf16 3.26 GiB at 480x832x81 (32,760 tokens); fp8 W8A8 3.50 GiB there and 7.62 GiB at 720x1280x81 (75,600
tokens): 20.9, 22.4 and 21.1 x dim bytes per token. The estimate takes 22 x dim per token (or the FFN's
6 x dim + 5 x ffn_dim, if larger) + 5%. Slack: under a capped caching allocator, freed activation blocks of
mixed sizes split the cached segments; in those runs up to ~1.3 GiB at 480p was reserved but unusable when a
float32 [tokens, dim] tensor (0.63 GiB) was asked for, so room for three of those is kept on top.
"""

from __future__ import annotations

import dataclasses

import torch

from ..errors import LightX2VError
from .units import non_block_refs, split_units, tensor_bytes, unit_bytes

GiB = 1024 ** 3
MODES = ("auto", "block", "phase", "none")
ACTIVATION_MARGIN = 1.05  # allocator rounding and small temporaries (modulation, scales, attention statistics)
SLACK_TENSORS = 3  # float32 [tokens, dim] tensors of fragmentation room under a capped allocator


@dataclasses.dataclass(frozen=True)
class ModelSizes:
    num_blocks: int
    block_bytes: int  # largest block
    phase_bytes: int  # largest phase
    non_block_bytes: int
    dim: int
    ffn_dim: int

    @classmethod
    def of(cls, dit: torch.nn.Module) -> "ModelSizes":
        blocks = unit_bytes(split_units(dit, "block"))
        phases = unit_bytes(split_units(dit, "phase"))
        ffn = dit.blocks[0].ffn[0]
        return cls(len(blocks), max(blocks), max(phases), tensor_bytes(non_block_refs(dit)), dit.dim, ffn.out_features)


def latent_tokens(latent_shape) -> int:
    """Tokens of a [B, C, T, H, W] latent after Wan's (1, 2, 2) patching."""
    t, h, w = latent_shape[-3:]
    return t * ((h + 1) // 2) * ((w + 1) // 2)


def video_tokens(width: int, height: int, frames: int) -> int:
    """480x832x81 -> 21 x 30 x 52 = 32,760 tokens."""
    return ((frames - 1) // 4 + 1) * ((height // 8 + 1) // 2) * ((width // 8 + 1) // 2)


def activation_bytes(sizes: ModelSizes, tokens: int, batch: int = 1, dtype_bytes: int = 2) -> int:
    """Peak activation memory of one forward (+ allocator slack), for a model computing in `dtype_bytes` floats."""
    per_token = max(22 * sizes.dim, 6 * sizes.dim + 5 * sizes.ffn_dim) * dtype_bytes // 2
    slack = SLACK_TENSORS * 4 * sizes.dim * tokens * batch
    return int(per_token * tokens * batch * ACTIVATION_MARGIN) + slack


@dataclasses.dataclass(frozen=True)
class Plan:
    mode: str  # "none", "block" or "phase"
    resident_blocks: int
    prefetch: int
    weights_bytes: int  # on the device: non-block + resident + slots
    activation_bytes: int
    budget_bytes: int
    num_blocks: int

    @property
    def granularity(self) -> str:
        return self.mode

    def describe(self) -> str:
        if self.mode == "none":
            head = f"all {self.num_blocks} blocks resident (no offload)"
        else:
            head = (f"{self.mode} offload: {self.resident_blocks}/{self.num_blocks} blocks resident, "
                    f"{self.num_blocks - self.resident_blocks} streamed, prefetch {self.prefetch}")
        return (f"{head}; weights {self.weights_bytes / GiB:.2f} GiB + activations ~{self.activation_bytes / GiB:.2f} GiB "
                f"of a {self.budget_bytes / GiB:.2f} GiB budget")


def _weights(sizes: ModelSizes, mode: str, resident: int, prefetch: int) -> int:
    streamed = sizes.num_blocks - resident
    if mode == "none" or streamed == 0:
        return sizes.non_block_bytes + sizes.num_blocks * sizes.block_bytes
    unit, units = (sizes.block_bytes, streamed) if mode == "block" else (sizes.phase_bytes, 3 * streamed)
    return sizes.non_block_bytes + resident * sizes.block_bytes + min(prefetch + 1, units) * unit


def plan_offload(sizes: ModelSizes, budget_bytes: int, tokens: int, batch: int = 1, mode: str = "auto",
                 prefetch: int = 1, resident_override: int = -1, dtype_bytes: int = 2) -> Plan:
    """The plan for a budget. resident_override >= 0 fixes the resident block count (mode must stream)."""
    if mode not in MODES:
        raise LightX2VError(f"Unknown offload mode '{mode}': use one of {', '.join(MODES)}.")
    if prefetch < 1:
        raise LightX2VError(f"prefetch depth must be at least 1, got {prefetch}.")
    if resident_override > sizes.num_blocks:
        raise LightX2VError(f"resident_blocks = {resident_override} but the model has only {sizes.num_blocks} blocks: "
                            f"use -1 (planner) or a number up to {sizes.num_blocks}.")
    act = activation_bytes(sizes, tokens, batch, dtype_bytes)
    n = sizes.num_blocks

    def make(m: str, resident: int) -> Plan:
        return Plan(m, resident, prefetch, _weights(sizes, m, resident, prefetch), act, budget_bytes, n)

    if mode == "none":
        return make("none", n)
    candidates = ["block", "phase"] if mode == "auto" else [mode]
    if mode == "auto" and resident_override < 0 and _weights(sizes, "none", n, prefetch) + act <= budget_bytes:
        return make("none", n)
    for m in candidates:
        if resident_override >= 0:
            return make(m, resident_override)
        if _weights(sizes, m, 0, prefetch) + act > budget_bytes:
            continue
        resident = 0
        while resident < n and _weights(sizes, m, resident + 1, prefetch) + act <= budget_bytes:
            resident += 1
        return make(m, resident)
    smallest = _weights(sizes, "phase" if mode != "block" else "block", 0, 1) + act
    raise LightX2VError(
        f"A {budget_bytes / GiB:.2f} GiB VRAM budget is too small for this model at {tokens} tokens (batch {batch}): "
        f"streaming needs at least {smallest / GiB:.2f} GiB ({act / GiB:.2f} GiB of it activations). Lower the "
        "resolution or frame count, use phase mode or an fp8 model, or raise vram_budget_gb.")


def auto_budget(device: torch.device, margin_bytes: int = GiB) -> int:
    """Free device memory minus a margin (the 'auto' budget outside ComfyUI)."""
    if device.type != "cuda":
        raise LightX2VError("vram budget 'auto' needs a CUDA device; give the budget in GB.")
    free, _ = torch.cuda.mem_get_info(device)
    return max(0, free - margin_bytes)
