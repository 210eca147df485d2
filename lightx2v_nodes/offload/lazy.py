"""Lazy loading: block weights read from a LightX2V per-block folder while the model runs.

Only `block_{i}.safetensors` files are read, by a small thread pool, straight into a bounded pool of
(pinned, when CUDA is there) host buffers, one block ahead of the copy stream; so host RAM holds a few
blocks, never the model. The safetensors header is parsed here and tensor bytes are read with `readinto`
into their final place: no intermediate copies. Every byte read is counted per folder (`disk_bytes_read`), so a
run's disk traffic is the difference of two readings.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from ..errors import LightX2VError
from ..placeholders import FILE_DTYPES, read_header
from ..wan.checkpoint import file_in_folder
from .pinning import host_buffer

_EIGHT_BIT = (torch.int8, torch.float8_e4m3fn, torch.float8_e5m2)
_bytes_by_folder: dict[str, int] = {}  # absolute folder -> bytes every reader of this process read from it
_bytes_lock = threading.Lock()


def disk_bytes_read() -> dict[str, int]:
    """Bytes read so far from each per-block folder (absolute path) by all lazy readers of this process."""
    with _bytes_lock:
        return dict(_bytes_by_folder)


def _count_read(directory: str, nbytes: int) -> None:
    with _bytes_lock:
        _bytes_by_folder[directory] = _bytes_by_folder.get(directory, 0) + nbytes


def block_file(directory: str, block: int) -> str:
    return file_in_folder(directory, f"block_{block}.safetensors")


def check_directory(directory: str, num_blocks: int, expected: dict[int, dict[str, tuple[tuple, torch.dtype]]]) -> None:
    """Every block file exists and holds exactly the tensors the model expects (shape; dtype castable)."""
    for b in range(num_blocks):
        path = block_file(directory, b)
        if not os.path.isfile(path):
            raise LightX2VError(f"Lazy loading needs '{os.path.basename(path)}' in '{directory}', which is not there. "
                                "Point lazy loading at the per-block folder this model was loaded from.")
        entries, _ = read_header(path)
        want = expected[b]
        missing = sorted(set(want) - set(entries))
        extra = sorted(set(entries) - set(want))
        if missing or extra:
            raise LightX2VError(
                f"'{path}' does not match the loaded model (missing {missing[:3]}, unexpected {extra[:3]}). Lazy "
                "loading must read the same per-block folder the model was loaded from, with the same quantization "
                "(LightX2V Load Wan DiT: quantization = auto).")
        for key, (shape, dtype) in want.items():
            file_dtype = FILE_DTYPES.get(entries[key]["dtype"])
            if tuple(entries[key]["shape"]) != tuple(shape):
                raise LightX2VError(f"'{key}' in '{path}' has shape {entries[key]['shape']}, the model {list(shape)}.")
            if file_dtype is None or (file_dtype != dtype and (file_dtype in _EIGHT_BIT or dtype in _EIGHT_BIT)):
                raise LightX2VError(
                    f"'{key}' in '{path}' is stored as {entries[key]['dtype']} but the model holds {dtype}: lazy loading "
                    "cannot quantize or dequantize on the fly. Load the model with quantization = auto, or convert "
                    "the folder to the format you want.")


def _as_bytes(tensor: torch.Tensor) -> memoryview:
    return memoryview(tensor.view(torch.uint8).reshape(-1).numpy())


def _read_fully(f, target: memoryview, path: str) -> None:
    done = 0
    while done < len(target):  # a raw read may return fewer bytes than asked
        n = f.readinto(target[done:])
        if not n:
            raise LightX2VError(f"'{path}' is truncated: write the per-block folder again.")
        done += n


class LazyBlockReader:
    """Reads whole blocks into `host_slots` reusable host buffers; `get(b)` returns the slot holding block b.

    A slot's bytes are packed in the order of `layouts[b]` (each tensor 256-byte aligned), the layout of the
    block's device unit, so a unit is copied out of `buffers[slot]` in one piece.
    """

    def __init__(self, directory: str, layouts: dict[int, dict[str, tuple[tuple, torch.dtype]]], block_bytes: int,
                 workers: int = 4, host_slots: int = 3, pin: bool = False):
        self.directory = os.path.abspath(directory)
        self.layouts = layouts
        self.pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="lightx2v-disk")
        self.buffers = [host_buffer(block_bytes, pin) for _ in range(max(2, host_slots))]
        self.slot_block: list[int | None] = [None] * len(self.buffers)
        self.slot_ready: list = [None] * len(self.buffers)  # future list of the read into that slot
        self.slot_busy: list = [None] * len(self.buffers)  # event: last copy out of that slot
        self.clock = 0
        self.slot_used = [0] * len(self.buffers)
        self.lock = threading.Lock()
        self.bytes_read = 0

    def _views(self, slot: int, block: int) -> dict[str, torch.Tensor]:
        views, cursor = {}, 0
        flat = self.buffers[slot]
        for key, (shape, dtype) in self.layouts[block].items():
            size = int(np.prod(shape)) * dtype.itemsize
            views[key] = flat[cursor:cursor + size].view(dtype).view(shape)
            cursor += (size + 255) // 256 * 256
        return views

    def _read_tensor(self, path: str, offset: int, entry: dict, dst: torch.Tensor, busy) -> None:
        if busy is not None:
            busy.synchronize()  # the copy stream is still reading the previous block out of this buffer
        start, end = entry["data_offsets"]
        file_dtype = FILE_DTYPES[entry["dtype"]]
        with open(path, "rb", buffering=0) as f:
            f.seek(offset + start)
            if file_dtype == dst.dtype:
                _read_fully(f, _as_bytes(dst), path)
            else:  # a float file read into another float dtype (e.g. bf16 file, fp16 model)
                raw = torch.empty(end - start, dtype=torch.uint8)
                _read_fully(f, _as_bytes(raw), path)
                # The buffer may be an inference tensor (made while ComfyUI samples); this thread does not
                # inherit inference mode, and only inside it may such a tensor be written in place.
                with torch.inference_mode():
                    dst.copy_(raw.view(file_dtype).view(dst.shape))
        with self.lock:
            self.bytes_read += end - start
        _count_read(self.directory, end - start)

    def _pick_slot(self, keep: set[int]) -> int:
        candidates = [s for s, b in enumerate(self.slot_block) if b not in keep]
        return min(candidates, key=lambda s: self.slot_used[s])

    def request(self, block: int, keep: set[int] = frozenset()) -> int:
        """Start reading `block` (if not already held) into the least recently used slot not holding `keep`."""
        if block in self.slot_block:
            slot = self.slot_block.index(block)
        else:
            slot = self._pick_slot(set(keep) | {block})
            path = block_file(self.directory, block)
            entries, data_offset = read_header(path)
            views = self._views(slot, block)
            busy = self.slot_busy[slot]
            self.slot_block[slot] = block
            self.slot_ready[slot] = [self.pool.submit(self._read_tensor, path, data_offset, entries[k], v, busy)
                                     for k, v in views.items()]
            self.slot_busy[slot] = None
        self.clock += 1
        self.slot_used[slot] = self.clock
        return slot

    def get(self, block: int, keep: set[int] = frozenset()) -> int:
        """The slot holding block `block`, once its read is done (the index is also for `copied_out`)."""
        slot = self.request(block, keep)
        for future in self.slot_ready[slot]:
            future.result()
        return slot

    def copied_out(self, slot: int, event) -> None:
        """The copy stream reads slot `slot` until `event` fires: a later read into it waits for that."""
        self.slot_busy[slot] = event

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        self.buffers.clear()
