"""Reading DiT weights from disk: safetensors, weights-only pickles, and LightX2V per-block directories.

Nothing here executes code from a file: pickles go through `torch.load(weights_only=True)` only.
"""

from __future__ import annotations

import json
import os

import torch
from safetensors.torch import load_file

from ..errors import LightX2VError
from ..pickle_weights import load_weights_pickle
from ..placeholders import header_placeholders
from .config import detect_config
from .keys import check_is_wan, to_original_layout

INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"
NON_BLOCK_NAME = "non_block.safetensors"
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")


def is_block_directory(path: str) -> bool:
    """A LightX2V `--save_by_block` output: non_block.safetensors (+ block_i files, + index JSON)."""
    return os.path.isdir(path) and (
        os.path.isfile(os.path.join(path, NON_BLOCK_NAME)) or os.path.isfile(os.path.join(path, INDEX_NAME))
    )


def read_safetensors(path: str) -> dict[str, torch.Tensor]:
    try:
        return load_file(path)
    except Exception as exc:  # safetensors raises its own error types for damaged headers/data
        size = os.path.getsize(path)
        raise LightX2VError(
            f"Could not read '{os.path.basename(path)}' ({size} bytes): the safetensors file is damaged or "
            f"incomplete, e.g. an interrupted download. Download it again. Details: {exc}"
        ) from None


def read_pickle(path: str) -> dict[str, torch.Tensor]:
    try:
        obj = load_weights_pickle(path)
    except LightX2VError:
        raise
    except Exception as exc:
        raise LightX2VError(f"Could not read '{os.path.basename(path)}': {exc}. Download it again.") from None
    # Training checkpoints nest the weights one level down.
    for key in ("state_dict", "model", "module"):
        if isinstance(obj, dict) and set(obj) == {key}:
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise LightX2VError(f"'{os.path.basename(path)}' holds no state dict of tensors.")
    return obj


def file_in_folder(folder: str, name: str) -> str:
    """`folder/name`, refused when it resolves outside the folder (an absolute path, `..`, a symlink out)."""
    root = os.path.realpath(folder)
    resolved = os.path.realpath(os.path.join(root, name))
    if os.path.commonpath([root, resolved]) != root or resolved == root:
        raise LightX2VError(f"The per-block checkpoint folder '{folder}' names '{name}', which is outside the folder; "
                            "only files inside it are read. Write the folder again (LightX2V Convert Wan DiT, "
                            "save_by_block) or remove that entry from its index.")
    return resolved


def block_directory_files(path: str) -> list[str]:
    """The weight files of a per-block directory, from its index JSON when present."""
    index = os.path.join(path, INDEX_NAME)
    if os.path.isfile(index):
        with open(index, encoding="utf-8") as f:
            weight_map = json.load(f).get("weight_map", {})
        names = sorted(set(weight_map.values()))
        missing = [n for n in names if not os.path.isfile(file_in_folder(path, n))]
        if missing:
            raise LightX2VError(
                f"The per-block checkpoint '{os.path.basename(path)}' is incomplete: its index lists "
                f"{', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''} which are not in the folder."
            )
    else:
        names = sorted(n for n in os.listdir(path) if n.endswith(".safetensors"))
    return [file_in_folder(path, n) for n in names]


def read_state_dict(path: str, progress=None, blocks_on_disk: bool = False) -> dict[str, torch.Tensor]:
    """Read a DiT checkpoint (file or per-block directory). `progress(done, total)` is called per file.

    blocks_on_disk (per-block directories only): read the non-block file; block files contribute one-element
    placeholders from their headers, for an offload scheduler that reads them while the model runs.
    """
    if not os.path.exists(path):
        raise LightX2VError(f"Model file not found: {path}")
    if blocks_on_disk and not os.path.isdir(path):
        raise LightX2VError(f"Keeping blocks on disk needs a LightX2V per-block folder (listed with a trailing '/'), "
                            f"not the single file '{os.path.basename(path)}'. Write one with `python -m "
                            "lightx2v_nodes.convert ... --save-by-block`, or turn keep_blocks_on_disk off.")
    if os.path.isdir(path):
        if not is_block_directory(path):
            raise LightX2VError(
                f"'{path}' is a folder but not a LightX2V per-block checkpoint (no {NON_BLOCK_NAME} or {INDEX_NAME})."
            )
        files = block_directory_files(path)
        state_dict = {}
        for i, file in enumerate(files):
            keep_on_disk = blocks_on_disk and os.path.basename(file) != NON_BLOCK_NAME
            state_dict.update(header_placeholders(file) if keep_on_disk else read_safetensors(file))
            if progress:
                progress(i + 1, len(files))
        return state_dict
    if path.endswith(".safetensors") or path.endswith(".sft"):
        state_dict = read_safetensors(path)
    elif path.endswith(PICKLE_SUFFIXES):
        state_dict = read_pickle(path)
    else:
        raise LightX2VError(f"Unsupported file type '{os.path.basename(path)}': use .safetensors (or .pt/.pth).")
    if progress:
        progress(1, 1)
    return state_dict


def load_wan_checkpoint(path: str, progress=None, blocks_on_disk: bool = False):
    """Read any accepted file or directory and return (original-layout state dict, WanConfig, layout name)."""
    state_dict, layout = to_original_layout(read_state_dict(path, progress, blocks_on_disk))
    check_is_wan(state_dict)
    cfg = detect_config({k: tuple(v.shape) for k, v in state_dict.items()})
    return state_dict, cfg, layout
