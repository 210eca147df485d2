"""Reading LoRA files: safetensors, or weights-only pickles (nothing from a file is ever executed)."""

from __future__ import annotations

import os

import torch

from ..errors import LightX2VError
from ..wan.checkpoint import PICKLE_SUFFIXES, read_pickle, read_safetensors


def read_lora_file(path: str) -> dict[str, torch.Tensor]:
    if not os.path.isfile(path):
        raise LightX2VError(f"LoRA file not found: {path}. Put LoRAs in models/loras.")
    if path.endswith((".safetensors", ".sft")):
        return read_safetensors(path)
    if path.endswith(PICKLE_SUFFIXES):
        return read_pickle(path)
    raise LightX2VError(f"Unsupported LoRA file type '{os.path.basename(path)}': use .safetensors (or .pt/.pth).")
