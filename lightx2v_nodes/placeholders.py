"""Host tensors that stand in for weights left on disk: one element each, with the real shape and dtype.

The checkpoint reader builds them from a safetensors header (wan/checkpoint.py, keep_blocks_on_disk); the
offload scheduler's lazy reader (offload/lazy.py) later reads the bytes they stand for.
"""

from __future__ import annotations

import json
import struct

import torch

from .errors import LightX2VError

FILE_DTYPES = {
    "BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "I8": torch.int8, "U8": torch.uint8,
    "I16": torch.int16, "I32": torch.int32, "I64": torch.int64, "BOOL": torch.bool,
}
KEY_PREFIXES = ("model.diffusion_model.", "diffusion_model.")


def placeholder(shape, dtype) -> torch.Tensor:
    """A host tensor of the right shape and dtype that holds one element: what a lazily loaded weight is at rest."""
    return torch.zeros((), dtype=dtype).expand(shape)


def is_placeholder(tensor: torch.Tensor) -> bool:
    return tensor.numel() > 1 and tensor.untyped_storage().nbytes() <= tensor.element_size()


def read_header(path: str) -> tuple[dict, int]:
    """(tensor entries {key: {dtype, shape, data_offsets}}, byte offset of the data section)."""
    try:
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length))
    except (OSError, ValueError, struct.error) as exc:
        raise LightX2VError(f"Could not read the header of '{path}': {exc}. The per-block folder is damaged; "
                            "write it again (LightX2V converter --save_by_block).") from None
    header.pop("__metadata__", None)
    return {_strip(k): v for k, v in header.items()}, 8 + length


def header_placeholders(path: str) -> dict[str, torch.Tensor]:
    """A block file's tensors as one-element host placeholders of their shapes and dtypes: the loader builds the
    model around them and leaves the bytes on disk for the offload scheduler's lazy reader."""
    entries, _ = read_header(path)
    try:
        return {key: placeholder(tuple(e["shape"]), FILE_DTYPES[e["dtype"]]) for key, e in entries.items()}
    except KeyError as exc:
        raise LightX2VError(f"'{path}' holds a tensor of unsupported dtype {exc}.") from None


def _strip(key: str) -> str:
    for prefix in KEY_PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix):]
    return key
