"""What the scheduler streams: a WanDiT cut into units (whole blocks or block phases) of named tensors.

A unit owns every parameter and buffer of its modules, whatever their dtype (bf16, fp8/int8 weights with
float32 scales, LoRA tensors hanging off a linear), so quantized layers and side modules stream with no
special cases. Tensors are addressed as (module, attribute name, is_parameter) and swapped through
`param.data` (parameters keep their identity, so attributes stored on them travel along).
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn as nn

from ..errors import LightX2VError
from ..parameters import frozen_parameter
from ..placeholders import placeholder

GRANULARITIES = ("block", "phase")
# Phase p of a Wan block, split as LightX2V's phase offload does: the block's own parameters (modulation) and
# these children.
PHASE_CHILDREN = (("norm1", "self_attn"), ("norm3", "cross_attn"), ("norm2", "ffn"))
ALIGNMENT = 256  # bytes; every tensor of a packed unit starts at a multiple of this


@dataclasses.dataclass
class TensorRef:
    module: nn.Module
    name: str
    is_parameter: bool
    key: str  # state-dict key relative to the DiT, e.g. "blocks.3.ffn.0.weight"

    def get(self) -> torch.Tensor:
        return self.module._parameters[self.name] if self.is_parameter else self.module._buffers[self.name]

    def point_to(self, tensor: torch.Tensor) -> None:
        """Make the module use `tensor` (metadata only: parameters keep their object, buffers are replaced)."""
        if self.is_parameter:
            self.module._parameters[self.name].data = tensor
        else:
            self.module._buffers[self.name] = tensor


def release_meta(refs: list[TensorRef]) -> None:
    """Meta tensors cannot be re-pointed to real storage: give them host placeholders first."""
    for ref in refs:
        tensor = ref.get()
        if tensor.is_meta:
            value = placeholder(tensor.shape, tensor.dtype)
            if ref.is_parameter:
                ref.module._parameters[ref.name] = frozen_parameter(value)
            else:
                ref.module._buffers[ref.name] = value


@dataclasses.dataclass
class Unit:
    """One streamable group: block `block`, phase `phase` (None = the whole block)."""

    index: int
    block: int
    phase: int | None
    refs: list[TensorRef]
    offsets: list[int] = dataclasses.field(default_factory=list)
    nbytes: int = 0  # packed size with alignment
    base: int = 0  # where this unit starts inside its block's packed bytes (phases follow each other)

    @property
    def label(self) -> str:
        return f"block {self.block}" if self.phase is None else f"block {self.block}.{self.phase}"

    def layout(self, shapes_dtypes: list[tuple[torch.Size, torch.dtype]]) -> None:
        """Packed byte offsets of this unit's tensors inside one flat buffer."""
        self.offsets, cursor = [], 0
        for shape, dtype in shapes_dtypes:
            self.offsets.append(cursor)
            size = _nbytes(shape, dtype)
            cursor += (size + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT
        self.nbytes = cursor

    def views(self, flat: torch.Tensor, shapes_dtypes) -> list[torch.Tensor]:
        """Typed views of this unit's tensors inside a flat uint8 buffer laid out by `layout`."""
        out = []
        for offset, (shape, dtype) in zip(self.offsets, shapes_dtypes):
            size = _nbytes(shape, dtype)
            out.append(flat[offset:offset + size].view(dtype).view(shape))
        return out


def _nbytes(shape, dtype) -> int:
    return math.prod(shape) * dtype.itemsize


def _refs_of(modules: list[tuple[str, nn.Module]], own_only: set[int]) -> list[TensorRef]:
    """Parameters and buffers of the given (prefix, module) subtrees; modules in own_only contribute only their own."""
    refs, seen = [], set()
    for prefix, root in modules:
        subtree = [(prefix, root)] if id(root) in own_only else [
            (f"{prefix}.{n}" if n else prefix, m) for n, m in root.named_modules()]
        for name, module in subtree:
            for attr, tensor in module._parameters.items():
                if tensor is not None and id(tensor) not in seen:
                    seen.add(id(tensor))
                    refs.append(TensorRef(module, attr, True, f"{name}.{attr}" if name else attr))
            for attr, tensor in module._buffers.items():
                if tensor is not None and id(tensor) not in seen:
                    seen.add(id(tensor))
                    refs.append(TensorRef(module, attr, False, f"{name}.{attr}" if name else attr))
    return refs


def split_units(dit: nn.Module, granularity: str) -> list[Unit]:
    """The DiT's blocks as units in execution order (block i, or block i phases 0, 1, 2).

    A whole block lists its tensors phase by phase, so its packed layout is its three phase layouts back to
    back: one host buffer per block serves both granularities, each unit being one contiguous byte range.
    """
    if granularity not in GRANULARITIES:
        raise LightX2VError(f"Unknown offload granularity '{granularity}': use one of {', '.join(GRANULARITIES)}.")
    units = []
    for b, block in enumerate(dit.blocks):
        phases = _phase_refs(f"blocks.{b}", block)
        if granularity == "block":
            units.append(Unit(len(units), b, None, [ref for refs in phases for ref in refs]))
        else:
            first = len(units)
            units.extend(Unit(first + p, b, p, refs) for p, refs in enumerate(phases))
    return units


def _phase_refs(prefix: str, block: nn.Module) -> list[list[TensorRef]]:
    children = dict(block.named_children())
    assigned = {name for phase in PHASE_CHILDREN for name in phase}
    extra = sorted(set(children) - assigned)
    phases = []
    for p, names in enumerate(PHASE_CHILDREN):
        parts = [(f"{prefix}.{n}", children[n]) for n in names]
        if p == 0:
            # The block's own tensors (modulation), plus any child this split does not know, run first.
            parts = [(prefix, block)] + parts + [(f"{prefix}.{n}", children[n]) for n in extra]
        phases.append(_refs_of(parts, {id(block)} if p == 0 else set()))
    return phases


def non_block_refs(dit: nn.Module) -> list[TensorRef]:
    """Everything outside the blocks (embeddings, time projection, head, image projection): kept resident."""
    return _refs_of([(name, m) for name, m in dit.named_children() if name != "blocks"], set()) + \
        _refs_of([("", dit)], {id(dit)})


def unit_bytes(units: list[Unit]) -> list[int]:
    """Packed (aligned) size of each unit: what one device slot for it takes."""
    for u in units:
        u.layout([(r.get().shape, r.get().dtype) for r in u.refs])
    return [u.nbytes for u in units]


def tensor_bytes(refs: list[TensorRef]) -> int:
    return sum(r.get().numel() * r.get().element_size() for r in refs)
