"""One block call across the ranks: the inputs rank 0 sends, each rank's share, the gathered result, and the
patch state (effective weights, LoRA side branches, compiled phases) rank 0 keeps the workers in step with.

Rank 0 and the workers run the same code here, so both sides of every collective match by construction.
"""

from __future__ import annotations

import contextlib
import dataclasses

import torch
import torch.distributed as dist

from ..lora.side_branch import SideBranches
from ..wan.compile import CompiledPhases, CompileSettings, _CompiledPhase
from .plan import Share
from .ulysses import UlyssesAttention, as_bytes, from_bytes

_DTYPES = {str(d).replace("torch.", ""): d for d in (torch.float32, torch.float16, torch.bfloat16, torch.int8,
                                                     torch.uint8, torch.float8_e4m3fn, torch.float8_e5m2, torch.int64)}


def dtype_of(name: str) -> torch.dtype:
    return _DTYPES[name]


def describe(t: torch.Tensor) -> list:
    return [str(t.dtype).replace("torch.", ""), list(t.shape)]


def broadcast(t: torch.Tensor | None, meta: list, device) -> torch.Tensor:
    """Rank 0 passes t; the others pass None and get a tensor as `meta` ([dtype, shape]) describes it."""
    dtype, shape = dtype_of(meta[0]), tuple(meta[1])
    if t is not None:
        buffer = as_bytes(t.to(device))
    else:
        buffer = torch.empty(torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size(),
                             dtype=torch.uint8, device=device)
    dist.broadcast(buffer, src=0)
    return from_bytes(buffer, dtype, shape)


# ---- block calls ---------------------------------------------------------------------------------------------

@contextlib.contextmanager
def ulysses_attention(dit, share: Share, rank: int, group):
    """The blocks' self-attentions take the group's all-to-all for the duration of the call."""
    if len(share.ranks) == 1:
        yield
        return
    originals = [block.self_attn.attend for block in dit.blocks]
    index = share.ranks.index(rank)
    for block, inner in zip(dit.blocks, originals):
        block.self_attn.attend = UlyssesAttention(inner, share.tokens, index, group)
    try:
        yield
    finally:
        for block, inner in zip(dit.blocks, originals):
            block.self_attn.attend = inner


def run_share(dit, share: Share, rank: int, groups: dict, x, e0, rope, context, context_img_len):
    """This rank's rows and tokens through all blocks: [rows, my tokens, dim]."""
    (r0, r1), (t0, t1) = share.rows, share.token_range(rank)
    with ulysses_attention(dit, share, rank, groups.get(share.ranks)):
        return dit.run_blocks(x[r0:r1, t0:t1].contiguous(), e0[r0:r1], rope[t0:t1], context[r0:r1],
                              context_img_len, {})


def gather_result(out_local, shares: list[Share], x: torch.Tensor) -> torch.Tensor:
    """Rank 0: every share's pieces (its own from out_local, the others received) in one [B, L, dim] tensor."""
    result = torch.empty_like(x)
    for share in shares:
        r0, r1 = share.rows
        for r in share.ranks:
            t0, t1 = share.token_range(r)
            if r == 0:
                result[r0:r1, t0:t1] = out_local
                continue
            shape = (r1 - r0, t1 - t0, x.shape[2])
            buffer = torch.empty(torch.Size(shape).numel() * x.element_size(), dtype=torch.uint8, device=x.device)
            dist.recv(buffer, src=r)
            result[r0:r1, t0:t1] = from_bytes(buffer, x.dtype, shape)
    return result


def send_result(out_local: torch.Tensor) -> None:
    dist.send(as_bytes(out_local), dst=0)


def my_share(shares: list[Share], rank: int) -> Share | None:
    return next((s for s in shares if rank in s.ranks), None)


# ---- patches ---------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class PatchState:
    """What rank 0's model runs with beyond the file's weights.

    weights: original-layout key -> the tensor rank 0 computes with, for every tensor of every module a patch
    touches (the whole module: a re-quantized weight comes with its new scale); side_branches: the LoRA side
    branches installed on rank 0 for this call; compile: the settings of the compiled block phases, or None.
    """

    weights: dict[str, torch.Tensor]
    side_branches: list[SideBranches]
    compile: CompileSettings | None


def compile_settings(dit) -> CompileSettings | None:
    """The settings of the compiled phases installed on rank 0's blocks for this call (LightX2V Compile DiT)."""
    phase = dit.blocks[0].__dict__.get("self_attention_phase") if len(dit.blocks) else None
    return phase.owner.settings if isinstance(phase, _CompiledPhase) else None


def sync_header(state: PatchState) -> dict:
    branches = []
    for sb in state.side_branches:
        pairs = [[module, describe(down), describe(up), factor] for module, entries in sb.branches.items()
                 for down, up, factor in entries]
        shared = any(len(group) > 1 for group in sb.groups.values())
        branches.append({"pairs": pairs, "share_inputs": shared, "fold_weights": sb.fold_weights})
    return {"op": "sync", "weights": [[k, describe(v)] for k, v in state.weights.items()], "side_branches": branches,
            "compile": None if state.compile is None else [state.compile.backend, state.compile.mode]}


def send_patches(state: PatchState, device) -> None:
    for value in state.weights.values():
        broadcast(value.detach(), describe(value), device)
    for sb in state.side_branches:
        for entries in sb.branches.values():
            for down, up, _ in entries:
                broadcast(down, describe(down), device)
                broadcast(up, describe(up), device)


@dataclasses.dataclass
class _Pair:
    """The fields SideBranches reads from a LoRA pair; scale is the pair's whole factor (strength 1)."""

    module: str
    down: torch.Tensor
    up: torch.Tensor
    scale: float


class WorkerPatches:
    """A worker's copy of rank 0's patch state: replaced tensors (file values kept to restore), side branches and
    compiled phases."""

    def __init__(self, dit):
        self.dit = dit
        self.originals: dict[str, torch.Tensor] = {}
        self.side_branches: list[SideBranches] = []
        self.compiled: CompiledPhases | None = None

    def _set(self, key: str, value: torch.Tensor) -> None:
        module_name, _, attr = key.rpartition(".")
        module = self.dit.get_submodule(module_name)
        if attr in module._parameters:
            module._parameters[attr] = torch.nn.Parameter(value, requires_grad=False)
        else:
            module._buffers[attr] = value

    def receive(self, header: dict, device) -> None:
        weights = {key: broadcast(None, meta, device) for key, meta in header["weights"]}
        for key in [k for k in self.originals if k not in weights]:
            self._set(key, self.originals.pop(key))
        state = self.dit.state_dict(keep_vars=True)
        for key, value in weights.items():
            original = self.originals.setdefault(key, state[key])
            self._set(key, value.to(original.dtype))
        self.side_branches = []
        for spec in header["side_branches"]:
            pairs = [_Pair(module, broadcast(None, down, device), broadcast(None, up, device), factor)
                     for module, down, up, factor in spec["pairs"]]
            self.side_branches.append(SideBranches(pairs, 1.0, spec["share_inputs"], spec["fold_weights"]))
        settings = None if header["compile"] is None else CompileSettings(*header["compile"])
        if self.compiled is not None and (settings is None or self.compiled.settings != settings):
            CompiledPhases.remove(self.dit)
            self.compiled = None
        if settings is not None and self.compiled is None:
            self.compiled = CompiledPhases(settings)
            self.compiled.install(self.dit)

    @contextlib.contextmanager
    def installed(self):
        with contextlib.ExitStack() as stack:
            for sb in self.side_branches:
                stack.enter_context(sb.installed(self.dit))
            yield
