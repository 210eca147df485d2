"""LoRA as a side branch: y = layer(x) + strength * scale * (x @ down^T) @ up^T, weights left untouched.

Hooks on the target modules live only inside `installed(...)`, so nothing is left on the shared modules
between runs. Two ways to apply a module's pairs, chosen per call:
- Folding (16-bit weights, long inputs): a pre-hook puts W + sum(factor * up @ down) in place of the weight for
  that one forward and the forward hook puts the module's own weight back (see FOLDABLE_DTYPES).
- The activation path (every weight format: bf16, fp8, int8, offloaded): the forward hook adds the low-rank
  path to whatever the layer returns.

The activation path is memory-bound at video shapes: its cost is reading the layer input for x @ down^T and
reading + writing the output once more for the in-place add. Sibling layers that are fed the same input tensor (q/k/v
of self-attention, k/v and k_img/v_img of cross-attention) therefore share one projection: the first of them to run computes x @ [down_q; down_k;
down_v]^T, reading x once instead of three times, and each adds its own column slice of the result. On CUDA
the add runs in our Triton kernel (kernels/lowrank_add.py) at the speed of one read + write of the output,
where cuBLAS's addmm_ with a rank-sized K takes ~65% longer.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..kernel_loader import load_kernels
from .mapping import LowRankPatch

SIXTEEN_BIT = (torch.float16, torch.bfloat16)  # outputs the Triton add serves

# Wan layers (original names) that the model calls with the very same input tensor, by parent module:
# self-attention projects q, k, v from x; cross-attention projects k, v from the text context and k_img, v_img
# from the image context (its q reads x, so it is not grouped with them). A wrong entry here would only cost
# speed, never correctness: a shared projection is reused only for the identical input tensor, unmodified.
SHARED_INPUT = {"self_attn": (("q", "k", "v"),), "cross_attn": (("k", "v"), ("k_img", "v_img"))}


def _add_in_place(out: torch.Tensor, h: torch.Tensor, up: torch.Tensor, factor: float) -> None:
    if out.dtype in SIXTEEN_BIT and out.is_cuda and not torch.compiler.is_compiling() and _triton_add_works(out.device):
        load_kernels().lowrank_add_(out, h, up, factor)
    else:  # CPU, older GPUs, a compiled graph (the compiler plans that add itself), or float32 compute, where
        # cuBLAS keeps full precision while Triton's dot would round the float32 inputs to TF32
        out.addmm_(h, up.t(), alpha=factor)


@functools.lru_cache(maxsize=None)
def _triton_add_works(device: torch.device) -> bool:
    """Triton installed and a GPU whose tensor cores take bf16 (compute capability 8.0+: Ampere and later)."""
    return load_kernels().TRITON_AVAILABLE and torch.cuda.get_device_capability(device) >= (8, 0)


def input_groups(modules: list[str]) -> list[tuple[str, ...]]:
    """Partition module names into groups fed the same input (singletons for everything else)."""
    present, groups = set(modules), set()
    for name in modules:
        parent, _, leaf = name.rpartition(".")
        siblings = next((s for s in SHARED_INPUT.get(parent.rpartition(".")[2], ()) if leaf in s), None)
        groups.add(tuple(m for m in (f"{parent}.{s}" for s in siblings) if m in present) if siblings else (name,))
    return sorted(groups)


@dataclass
class _SharedProjection:
    """x @ down_group^T for one input tensor, kept until every member of the group has taken its slice."""

    x: torch.Tensor  # the input itself: held so its memory cannot be reused by another tensor meanwhile
    signature: tuple
    h: torch.Tensor  # [tokens, sum of the members' ranks], in the dtype it was computed for
    waiting: set[str]


def _signature(x: torch.Tensor) -> tuple:
    # Inference tensors (ComfyUI samples in inference mode) keep no version counter; for them, in-place writes
    # to x between two siblings' calls cannot be seen (Wan never does that). Storage, shape and strides can.
    version = None if x.is_inference() else x._version
    return version, x.data_ptr(), x.shape, x.stride()


# 16-bit (and float32) weights can take the branch folded into a transient copy, W + sum(factor * up @ down), for
# the one forward: that reads + writes the weight once (2 * in * out elements) instead of reading the layer's
# input and reading + writing its output once more (tokens * (in + 2 * out)). For a 14B block at 32,760 tokens
# that is ~1.4 GB instead of ~10 GB of memory traffic. The folded weight rounds like merge mode; the stored
# weight is never touched. 8-bit weights, short inputs (text context) and compiled graphs keep the activation path.
FOLDABLE_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def _folding_pays(tokens: int, fan_in: int, fan_out: int) -> bool:
    return tokens * (fan_in + 2 * fan_out) > 4 * fan_in * fan_out  # weight traffic x2: a margin for small layers


# Key of the DIFFUSION_MODEL wrapper that applies a MODEL's side branches (the multi-GPU adapter finds them by it).
WRAPPER_KEY = "lightx2v_lora_side_branch"

class SideBranches:
    def __init__(self, patches: list[LowRankPatch], strength: float, share_inputs: bool = True,
                 fold_weights: bool | None = None):
        """share_inputs=False: every module projects its own input. fold_weights: None = fold 16-bit weights where
        that moves less memory, False = never (the activation path: the reference for tests and benchmarks),
        True = whenever the weight allows it."""
        self.fold_weights = fold_weights
        self._folded: dict[str, torch.nn.Parameter] = {}  # module -> its own weight while a folded copy stands in
        self.branches: dict[str, list[tuple[torch.Tensor, torch.Tensor, float]]] = {}
        for p in patches:
            self.branches.setdefault(p.module, []).append((p.down.flatten(1), p.up.flatten(1), strength * p.scale))
        self.groups: dict[str, tuple[str, ...]] = {}  # module -> the modules sharing its projection (itself alone or more)
        self.columns: dict[str, tuple[int, int]] = {}  # module -> its rows in the group's stacked down matrix
        for group in input_groups(list(self.branches)) if share_inputs else [(m,) for m in self.branches]:
            fan_ins = {down.shape[1] for m in group for down, _, _ in self.branches[m]}
            for g in ([group] if len(fan_ins) == 1 else [(m,) for m in group]):  # differing fan-ins: none shared
                start = 0
                for m in g:
                    stop = start + sum(down.shape[0] for down, _, _ in self.branches[m])
                    self.groups[m], self.columns[m], start = g, (start, stop), stop
        self._cache: dict[tuple, torch.Tensor] = {}
        self._shared: dict[tuple[str, ...], _SharedProjection] = {}

    @property
    def modules(self) -> list[str]:
        return list(self.branches)

    def to(self, target):
        """ComfyUI moves sampling wrappers to the compute device and back: drop copies on other devices."""
        if not isinstance(target, torch.dtype):
            kind = torch.device(target).type
            self._cache = {k: v for k, v in self._cache.items() if k[-2].type == kind}
        return self

    def _cached(self, key: tuple, make) -> torch.Tensor:
        if key not in self._cache:
            with torch.inference_mode(False):  # normal tensors: usable by later runs with autograd too
                self._cache[key] = make()
        return self._cache[key]

    def _down(self, group: tuple[str, ...], device, dtype) -> torch.Tensor:
        """The group's down matrices stacked [sum of ranks, in]; a member's rows are a contiguous slice."""
        return self._cached(("down", group, device, dtype), lambda: torch.cat(
            [down.to(device=device, dtype=dtype) for m in group for down, _, _ in self.branches[m]]))

    def _up(self, module: str, index: int, device, dtype) -> torch.Tensor:
        return self._cached(("up", module, index, device, dtype),
                            lambda: self.branches[module][index][1].to(device=device, dtype=dtype))

    def _projection(self, name: str, x: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        """x @ down^T of this module's pairs [tokens, its ranks], shared with its group where possible."""
        group, (start, stop) = self.groups[name], self.columns[name]
        down = self._down(group, output.device, output.dtype)
        if len(group) == 1 or torch.compiler.is_compiling():
            # Under torch.compile the compiler owns the graph (and the cache's host bookkeeping would break it).
            return F.linear(x.reshape(-1, x.shape[-1]).to(output.dtype), down[start:stop])
        shared = self._shared.get(group)
        if shared is not None and shared.x is x and name in shared.waiting and shared.signature == _signature(x):
            if shared.h.dtype != output.dtype or shared.h.device != output.device:
                return F.linear(x.reshape(-1, x.shape[-1]).to(output.dtype), down[start:stop])
            shared.waiting.discard(name)
            if not shared.waiting:
                del self._shared[group]  # every member has its slice: release h (and x)
            return shared.h[:, start:stop]
        # First member to run on this input (or the input changed): one GEMM for the whole group.
        h = F.linear(x.reshape(-1, x.shape[-1]).to(output.dtype), down)
        self._shared[group] = _SharedProjection(x, _signature(x), h, set(group) - {name})
        return h[:, start:stop]

    def _fold_hook(self, name: str):
        def fold(module, args, kwargs):
            x = args[0] if args else kwargs["input"]
            weight = module._parameters.get("weight")
            if (self.fold_weights is False or torch.compiler.is_compiling() or weight is None or weight.dim() != 2
                    or weight.dtype not in FOLDABLE_DTYPES or weight.device != x.device
                    or getattr(weight, "lightx2v_folded", False)):  # folded by an earlier LoRA node: add to outputs
                return None
            if self.fold_weights is None and not _folding_pays(x.numel() // x.shape[-1], weight.shape[1], weight.shape[0]):
                return None
            downs = self._down((name,), weight.device, weight.dtype)
            folded, start = weight.detach(), 0
            for index, (down, _, factor) in enumerate(self.branches[name]):
                up = self._up(name, index, weight.device, weight.dtype)
                # The first pair makes the copy; the others add into it. (float32 accumulation, one rounding each)
                folded = torch.addmm(folded, up, downs[start:start + down.shape[0]], alpha=factor) if start == 0 \
                    else folded.addmm_(up, downs[start:start + down.shape[0]], alpha=factor)
                start += down.shape[0]
            self._folded[name] = weight
            module._parameters["weight"] = torch.nn.Parameter(folded, requires_grad=False)
            # Chained LoRA nodes: forward hooks run in the pre-hooks' order, so only the first may fold (and restore).
            module._parameters["weight"].lightx2v_folded = True
            return None
        return fold

    def _restore(self, module: torch.nn.Module, name: str) -> None:
        module._parameters["weight"] = self._folded.pop(name)

    def _hook(self, name: str):
        def add_branches(module, args, kwargs, output):
            if name in self._folded:  # the branch was in the weight for this forward: put the weight back
                self._restore(module, name)
                return output
            x = args[0] if args else kwargs["input"]
            h_all = self._projection(name, x, output)
            start = 0
            for index, (down, _, factor) in enumerate(self.branches[name]):
                h = h_all[:, start:start + down.shape[0]]
                start += down.shape[0]
                up = self._up(name, index, output.device, output.dtype)
                if output.is_contiguous() and not output.requires_grad:
                    # In place into the layer's fresh output: no extra [tokens, out] tensor, one read + write.
                    _add_in_place(output.view(-1, output.shape[-1]), h, up, factor)
                else:
                    # Same fused multiply-add, out of place (autograd, or outputs that are views).
                    output = torch.addmm(output.reshape(-1, output.shape[-1]), h, up.t(), alpha=factor).view(output.shape)
            return output
        return add_branches

    @contextlib.contextmanager
    def installed(self, root: torch.nn.Module):
        """Hooks on root's target submodules for the duration of the block."""
        handles = []
        for name in self.branches:
            module = root.get_submodule(name)
            handles.append(module.register_forward_pre_hook(self._fold_hook(name), with_kwargs=True))
            handles.append(module.register_forward_hook(self._hook(name), with_kwargs=True))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
            for name in list(self._folded):  # a forward that raised between the two hooks
                self._restore(root.get_submodule(name), name)
            self._shared.clear()  # projections of members that never ran
