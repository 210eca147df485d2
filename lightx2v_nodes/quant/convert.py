"""Checkpoint converter: a float Wan2.1 DiT (any accepted layout) -> LightX2V int8/fp8 format.

Optionally merges a LoRA first (in float32, per tensor, right before that tensor is quantized, so the merge
costs no extra rounding), writes one file or LightX2V's per-block layout, and verifies the output by
reading it back. The output uses the original Wan key names, as LightX2V's own converter writes them.
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
from ..wan.checkpoint import INDEX_NAME, NON_BLOCK_NAME, block_directory_files, is_block_directory, load_wan_checkpoint
from ..wan.config import detect_config
from .formats import FORMATS, SCALE_SUFFIX, detect_file_format, is_block_linear, normalize_quantized, quantize_weight

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
    """Convert; `progress(done, total)` is called per tensor. Raises LightX2VError on bad input."""
    if fmt not in FORMATS:
        raise LightX2VError(f"Unknown format '{fmt}': use one of {', '.join(FORMATS)}.")
    _check_output_path(output, save_by_block, force)
    state_dict, cfg, layout = load_wan_checkpoint(source)
    already = detect_file_format(state_dict)
    if already:
        raise LightX2VError(
            f"'{os.path.basename(source)}' is already quantized ({already.replace('_', ' ')}); converting it again "
            "would add a second rounding. Convert the original bf16/fp16 model instead."
        )
    source_bytes = sum(v.numel() * v.element_size() for v in state_dict.values())
    patches, unmatched = _lora_patches(lora, {k: tuple(v.shape) for k, v in state_dict.items()}, lora_strength)
    other_dtype = NON_LINEAR_DTYPES[non_linear_dtype]

    out: dict[str, torch.Tensor] = {}
    keys = list(state_dict)
    quantized = 0
    for i, key in enumerate(keys):
        value = state_dict.pop(key)  # free each source tensor once converted
        merged = value.float() if key in patches else value
        for patch in patches.get(key, ()):
            merged = merge_patch(merged, patch, lora_strength)
        module = key[: -len(".weight")]
        if key.endswith(".weight") and value.dim() == 2 and is_block_linear(module):
            out[key], out[module + SCALE_SUFFIX] = quantize_weight(merged, fmt)
            quantized += 1
        else:
            out[key] = merged.to(other_dtype).contiguous()
        if progress:
            progress(i + 1, len(keys))
    _write(out, output, save_by_block, metadata={"lightx2v_quant": fmt, "source_layout": layout})
    _verify(out, output, cfg)
    return ConversionReport(output, fmt, cfg.variant, quantized, source_bytes,
                            sum(v.numel() * v.element_size() for v in out.values()),
                            sum(map(len, patches.values())), unmatched)


def _write(tensors: dict[str, torch.Tensor], output: str, save_by_block: bool, metadata: dict) -> None:
    """Write to a temporary sibling first and move it into place, so a failed run never leaves half a model."""
    parent = os.path.dirname(os.path.abspath(output))
    os.makedirs(parent, exist_ok=True)
    if not save_by_block:
        fd, tmp = tempfile.mkstemp(suffix=".safetensors.part", dir=parent)
        os.close(fd)
        try:
            save_file(tensors, tmp, metadata=metadata)
            os.replace(tmp, output)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return
    tmp = tempfile.mkdtemp(suffix=".part", dir=parent)
    try:
        groups: dict[str, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            name = f"block_{key.split('.')[1]}.safetensors" if key.startswith("blocks.") else NON_BLOCK_NAME
            groups.setdefault(name, {})[key] = value
        for name, group in groups.items():
            save_file(group, os.path.join(tmp, name), metadata=metadata)
        index = {"metadata": {"total_size": sum(v.numel() * v.element_size() for v in tensors.values())},
                 "weight_map": {key: name for name, group in groups.items() for key in group}}
        with open(os.path.join(tmp, INDEX_NAME), "w", encoding="utf-8") as f:
            json.dump(index, f, indent=1)
        if os.path.isdir(output):
            shutil.rmtree(output)
        os.replace(tmp, output)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp)


def _verify(expected: dict[str, torch.Tensor], output: str, cfg) -> None:
    """Read the output back tensor by tensor: same keys, bit-identical values, detected as this model and format."""
    files = [output] if os.path.isfile(output) else block_directory_files(output)
    shapes = {}
    for file in files:
        with safe_open(file, framework="pt") as f:
            for key in f.keys():
                value, want = f.get_tensor(key), expected.get(key)
                if want is None or value.dtype != want.dtype or not torch.equal(_bits(value), _bits(want)):
                    raise LightX2VError(f"Verification failed: '{key}' in {file} differs from what was written. Disk full or faulty?")
                shapes[key] = tuple(value.shape)
    if shapes.keys() != expected.keys():
        raise LightX2VError(f"Verification failed: {len(set(expected) - set(shapes))} tensors missing from {output}.")
    if detect_config(shapes) != cfg or normalize_quantized(dict(expected))[1] is None:
        raise LightX2VError(f"Verification failed: {output} does not read back as a quantized {cfg.variant}.")


def _bits(t: torch.Tensor) -> torch.Tensor:
    """8-bit floats compared by their bytes (torch.equal has no float8 kernel on every build)."""
    return t.view(torch.uint8) if t.element_size() == 1 else t
