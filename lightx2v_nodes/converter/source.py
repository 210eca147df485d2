"""A checkpoint read one tensor at a time, so converting a 14B model does not need it all in RAM.

safetensors files (single or a per-block folder) are opened lazily: names, shapes and dtypes come from
the headers and each tensor is read when asked for. Pickles (.pt/.pth) cannot be read partially and are
loaded whole (weights only). Keys are exposed under their original Wan names, whatever the layout.
"""

from __future__ import annotations

import os

import torch
from safetensors import safe_open

from ..errors import LightX2VError
from ..wan.checkpoint import block_directory_files, is_block_directory, load_wan_checkpoint
from ..wan.config import WanConfig, detect_config
from ..wan.keys import check_is_wan, to_original_layout

_EIGHT_BIT = ("I8", "F8_E4M3", "F8_E5M2")


class CheckpointSource:
    def __init__(self, path: str):
        if not os.path.exists(path):
            raise LightX2VError(f"Model file not found: {path}")
        files = block_directory_files(path) if os.path.isdir(path) and is_block_directory(path) else [path]
        self._handles = {}
        if all(f.endswith((".safetensors", ".sft")) for f in files):
            self._open_lazily(files)
        else:
            state_dict, _, self.layout = load_wan_checkpoint(path)
            self._tensors = state_dict
            self._source_key = {k: k for k in state_dict}
            self.shapes = {k: tuple(v.shape) for k, v in state_dict.items()}
            self.eight_bit = [k for k, v in state_dict.items() if v.dtype in (torch.int8, torch.float8_e4m3fn, torch.float8_e5m2)]
        check_is_wan(self.shapes)
        self.config: WanConfig = detect_config(self.shapes)

    def _open_lazily(self, files):
        self._tensors = None
        where, shapes, dtypes = {}, {}, {}
        for file in files:
            try:
                handle = safe_open(file, framework="pt")
            except Exception as exc:  # safetensors raises its own error types for damaged headers
                raise LightX2VError(f"Could not read '{os.path.basename(file)}': the safetensors file is damaged or "
                                    f"incomplete. Download it again. Details: {exc}") from None
            self._handles[file] = handle
            for key in handle.keys():
                info = handle.get_slice(key)
                where[key], shapes[key], dtypes[key] = file, tuple(info.get_shape()), info.get_dtype()
        names, self.layout = to_original_layout({k: k for k in where})
        self._source_key = names
        self._where = where
        self.shapes = {name: shapes[key] for name, key in names.items()}
        self.eight_bit = [name for name, key in names.items() if dtypes[key] in _EIGHT_BIT]

    def names(self) -> list[str]:
        return list(self._source_key)

    def read(self, name: str) -> torch.Tensor:
        """The tensor (original name); a whole-loaded source hands each tensor out once, then forgets it."""
        if self._tensors is not None:
            return self._tensors.pop(name)
        key = self._source_key[name]
        return self._handles[self._where[key]].get_tensor(key)
