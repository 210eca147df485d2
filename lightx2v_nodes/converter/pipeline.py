"""Checkpoint converter: a float Wan2.1 DiT (any accepted layout) -> LightX2V int8/fp8 format.

Optionally merges a LoRA first (in float32, per tensor, right before that tensor is quantized, so the merge
costs no extra rounding), writes one file or LightX2V's per-block layout, and verifies the output by
reading it back. The source is read one tensor at a time (see source.py). The output uses the original Wan key names, as LightX2V's own converter writes them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..errors import LightX2VError
from ..lora.files import read_lora_file
from ..lora.mapping import plan_lora
from ..lora.merge import merge_patch
from ..wan.checkpoint import INDEX_NAME, NON_BLOCK_NAME, is_block_directory
from ..wan.config import detect_config
from ..quant.formats import COMFY_MARKER, COMFY_SCALE_SUFFIX, FORMATS, SCALE_SUFFIX, is_block_linear, quantize_weight
from .source import CheckpointSource

log = logging.getLogger("lightx2v_nodes")
NON_LINEAR_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclasses.dataclass
class ConversionReport:
    output: str
    fmt: str
    variant: str
    quantized_layers: int
    source_bytes: int
    output_bytes: int
    lora_patches: int = 0
    lora_unmatched: int = 0

    def summary(self) -> str:
        lora = f", merged {self.lora_patches} LoRA patches" if self.lora_patches else ""
        skipped = f" ({self.lora_unmatched} LoRA keys matched nothing)" if self.lora_unmatched else ""
        return (f"{self.variant} -> {self.fmt}: {self.quantized_layers} block linears quantized{lora}{skipped}, "
                f"{self.source_bytes / 2**30:.2f} GiB -> {self.output_bytes / 2**30:.2f} GiB, verified: {self.output}")


def _check_output_path(path: str, save_by_block: bool, force: bool) -> None:
    if not save_by_block and not path.endswith(".safetensors"):
        raise LightX2VError(f"The output '{path}' must end in .safetensors (or use --save-by-block for a folder).")
    if os.path.exists(path) and not force:
        raise LightX2VError(f"'{path}' already exists; choose another output name or allow overwriting (--force).")
    if save_by_block and os.path.isfile(path):
        raise LightX2VError(f"'{path}' is a file; --save-by-block writes a folder.")
    if save_by_block and os.path.isdir(path) and os.listdir(path) and not is_block_directory(path):
        raise LightX2VError(f"'{path}' is a folder with other files in it; it is never replaced. Choose a new folder name.")


def _lora_patches(lora_path, shapes, strength):
    """{target key: [patches]} of a LoRA file, and the number of keys that matched nothing."""
    if not lora_path:
        return {}, 0
    plan = plan_lora(read_lora_file(lora_path), shapes)
    by_target: dict[str, list] = {}
    for patch in [*plan.low_rank, *plan.diffs]:
        by_target.setdefault(patch.target, []).append(patch)
    if plan.unmatched:
        log.warning("LightX2V convert: %d LoRA keys match no parameter of this model and were skipped (e.g. %s)",
                    len(plan.unmatched), plan.unmatched[0])
    log.info("LightX2V convert: merging %d LoRA patches at strength %g", sum(map(len, by_target.values())), strength)
    return by_target, len(plan.unmatched)


def convert_checkpoint(source: str, output: str, fmt: str, lora: str | None = None, lora_strength: float = 1.0,
                       save_by_block: bool = False, force: bool = False, non_linear_dtype: str = "bf16",
                       progress=None) -> ConversionReport:
    """Convert; `progress(done, total)` is called per tensor. Raises LightX2VError on bad input.

    Tensors are read, merged and quantized one at a time, block by block: a per-block output is written
    and verified block by block too, so its peak RAM is about one block; a single-file output holds the
    8-bit model (half the bf16 size) until it is written.
    """
    if fmt not in FORMATS:
        raise LightX2VError(f"Unknown format '{fmt}': use one of {', '.join(FORMATS)}.")
    _check_output_path(output, save_by_block, force)
    src = CheckpointSource(source)
    already = [n for n in src.names() if n.endswith((SCALE_SUFFIX, COMFY_SCALE_SUFFIX)) or n == COMFY_MARKER] or src.eight_bit
    if already:
        raise LightX2VError(
            f"'{os.path.basename(source.rstrip('/'))}' is already quantized (e.g. '{already[0]}'); converting it again "
            "would add a second rounding. Convert the original bf16/fp16 model instead."
        )
    patches, unmatched = _lora_patches(lora, src.shapes, lora_strength)
    other_dtype = NON_LINEAR_DTYPES[non_linear_dtype]
    sink = _BlockFolderSink(output) if save_by_block else _SingleFileSink(output)
    total, done, quantized, source_bytes = len(src.shapes), 0, 0, 0
    try:
        for group, names in _groups(src.names()):
            tensors = {}
            for key in names:
                value = src.read(key)
                source_bytes += value.numel() * value.element_size()
                merged = value.float() if key in patches else value
                for patch in patches.get(key, ()):
                    merged = merge_patch(merged, patch, lora_strength)
                module = key[: -len(".weight")]
                if key.endswith(".weight") and value.dim() == 2 and is_block_linear(module):
                    tensors[key], tensors[module + SCALE_SUFFIX] = quantize_weight(merged, fmt)
                    quantized += 1
                else:
                    tensors[key] = merged.to(other_dtype).contiguous()
                done += 1
                if progress:
                    progress(done, total)
            sink.add(group, tensors, {"lightx2v_quant": fmt, "source_layout": src.layout})
        shapes = sink.finish()
    finally:
        sink.discard()
    if detect_config(shapes) != src.config:
        raise LightX2VError(f"Verification failed: {output} does not read back as a {src.config.variant}.")
    return ConversionReport(output, fmt, src.config.variant, quantized, source_bytes, sink.bytes_written,
                            sum(map(len, patches.values())), unmatched)


def _groups(names: list[str]):
    """(output file name, keys) per block in block order, then everything else."""
    blocks: dict[int, list[str]] = {}
    rest = []
    for name in names:
        if name.startswith("blocks."):
            blocks.setdefault(int(name.split(".")[1]), []).append(name)
        else:
            rest.append(name)
    for i in sorted(blocks):
        yield f"block_{i}.safetensors", blocks[i]
    yield NON_BLOCK_NAME, rest


def _bits(t: torch.Tensor) -> torch.Tensor:
    """8-bit floats compared by their bytes (torch.equal has no float8 kernel on every build)."""
    return t.view(torch.uint8) if t.element_size() == 1 else t


def _write_verified(tensors: dict[str, torch.Tensor], path: str, metadata: dict) -> dict[str, tuple]:
    """save_file, then read every tensor back and compare bit for bit; returns the shapes written."""
    save_file(tensors, path, metadata=metadata)
    shapes = {}
    with safe_open(path, framework="pt") as f:
        if set(f.keys()) != set(tensors):
            raise LightX2VError(f"Verification failed: {path} does not hold the tensors written. Disk full or faulty?")
        for key in f.keys():
            value = f.get_tensor(key)
            if value.dtype != tensors[key].dtype or not torch.equal(_bits(value), _bits(tensors[key])):
                raise LightX2VError(f"Verification failed: '{key}' in {path} differs from what was written. Disk full or faulty?")
            shapes[key] = tuple(value.shape)
    return shapes


class _SingleFileSink:
    """Collects everything, writes one file next to the target, verifies it, then moves it into place."""

    def __init__(self, output: str):
        self.output = output
        self.tensors: dict[str, torch.Tensor] = {}
        self.metadata = {}
        self.bytes_written = 0
        parent = os.path.dirname(os.path.abspath(output))
        os.makedirs(parent, exist_ok=True)
        fd, self.tmp = tempfile.mkstemp(suffix=".safetensors.part", dir=parent)
        os.close(fd)

    def add(self, group, tensors, metadata):
        self.tensors.update(tensors)
        self.metadata = metadata

    def finish(self) -> dict[str, tuple]:
        shapes = _write_verified(self.tensors, self.tmp, self.metadata)
        self.bytes_written = sum(v.numel() * v.element_size() for v in self.tensors.values())
        os.replace(self.tmp, self.output)
        return shapes

    def discard(self):
        if os.path.exists(self.tmp):
            os.remove(self.tmp)


class _BlockFolderSink:
    """Writes and verifies each block file as soon as the block is converted, in a temporary sibling folder."""

    def __init__(self, output: str):
        self.output = output
        parent = os.path.dirname(os.path.abspath(output))
        os.makedirs(parent, exist_ok=True)
        self.tmp = tempfile.mkdtemp(suffix=".part", dir=parent)
        self.weight_map: dict[str, str] = {}
        self.shapes: dict[str, tuple] = {}
        self.bytes_written = 0

    def add(self, group, tensors, metadata):
        self.shapes.update(_write_verified(tensors, os.path.join(self.tmp, group), metadata))
        self.weight_map.update({key: group for key in tensors})
        self.bytes_written += sum(v.numel() * v.element_size() for v in tensors.values())

    def finish(self) -> dict[str, tuple]:
        index = {"metadata": {"total_size": self.bytes_written}, "weight_map": self.weight_map}
        with open(os.path.join(self.tmp, INDEX_NAME), "w", encoding="utf-8") as f:
            json.dump(index, f, indent=1)
        if os.path.isdir(self.output):
            shutil.rmtree(self.output)
        os.replace(self.tmp, self.output)
        return self.shapes

    def discard(self):
        if os.path.isdir(self.tmp):
            shutil.rmtree(self.tmp)
