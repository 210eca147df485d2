"""Host memory for streamed weights: one exclusive, page-locked buffer per block, packed like its device slot.

Weights are not page-locked where they lie: cudaHostRegister works on whole pages, small tensors share pages
with their neighbours, and a copy whose source spans two separate registrations (or a registered and an
unregistered page) fails with 'invalid argument' (measured on the H100, 2026-11-24); freed
tensors would also leave their pages locked. Instead each block's tensors move into one anonymous mapping of
its own (page-aligned, shared with nothing), registered once as a whole, laid out exactly like the unit's
device slot, so a unit is one full-bandwidth copy. The module's tensors become views into it and the
originals are released, so host RAM does not double. When the last view dies the mapping is unregistered
and unmapped, so RAM stays flat when a model is moved or replaced.

torch's pin_memory allocator is not used: it rounds sizes up to a power of two (a 0.70 GB bf16 block would
take 1 GiB) and keeps freed buffers cached.
"""

from __future__ import annotations

import mmap
import weakref

import torch

PAGE = mmap.PAGESIZE

_live: dict[int, tuple[int, bool]] = {}  # base address -> (mapped bytes, page-locked) of buffers alive now


def host_buffer(nbytes: int, pin: bool) -> torch.Tensor:
    """A flat uint8 host tensor of `nbytes` in its own mapping, page-locked if `pin` (and CUDA agrees)."""
    size = max(PAGE, -(-nbytes // PAGE) * PAGE)
    mapping = mmap.mmap(-1, size)
    exporter = memoryview(mapping)  # the tensor's storage keeps this object alive, and nothing else does
    flat = torch.frombuffer(exporter, dtype=torch.uint8)
    base = flat.data_ptr()
    locked = pin and int(torch.cuda.cudart().cudaHostRegister(base, size, 0)) == 0
    _live[base] = (size, locked)
    release = weakref.finalize(exporter, _release, base, locked, mapping)
    release.atexit = False  # the process exit frees it anyway, after CUDA may be gone
    return flat[:nbytes]


def _release(base: int, locked: bool, mapping: mmap.mmap) -> None:
    if locked:  # before unmapping: a locked range must not outlive its pages
        torch.cuda.cudart().cudaHostUnregister(base)
    _live.pop(base, None)
    try:
        mapping.close()
    except BufferError:  # still exported somewhere: unmapped when that goes
        pass


def live_buffers() -> set[int]:
    """Base addresses of the host buffers alive now."""
    return set(_live)


def _packed_base(tensors: list[torch.Tensor], offsets: list[int], nbytes: int, pin: bool) -> int | None:
    """The buffer's base address if `tensors` already sit in one of our buffers at `offsets` (locked if `pin`)."""
    if not tensors or any(t.device.type != "cpu" or not t.is_contiguous() for t in tensors):
        return None
    base = tensors[0].data_ptr() - offsets[0]
    entry = _live.get(base)
    if entry is None or entry[0] < nbytes or (pin and not entry[1]):
        return None
    if any(t.data_ptr() != base + off for t, off in zip(tensors, offsets)):
        return None
    return base


def pack(refs, offsets: list[int], nbytes: int, pin: bool) -> tuple[torch.Tensor | None, bool]:
    """Move the tensors behind `refs` (units.TensorRef) into one buffer at `offsets`; reuse it if they are there.

    Returns (flat buffer of `nbytes` or None when the tensors are not plain host tensors, page-locked?).
    """
    tensors = [r.get() for r in refs]
    if any(t.device.type != "cpu" for t in tensors):
        return None, False
    base = _packed_base(tensors, offsets, nbytes, pin)
    if base is not None:  # the same buffer as last time: rebuild the flat view of it
        storage = tensors[0].untyped_storage()
        flat = torch.empty(0, dtype=torch.uint8).set_(storage, base - storage.data_ptr(), (nbytes,))
        return flat, _live[base][1]
    flat = host_buffer(nbytes, pin)
    for ref, tensor, offset in zip(refs, tensors, offsets):
        size = tensor.numel() * tensor.element_size()
        view = flat[offset:offset + size].view(tensor.dtype).view(tensor.shape)
        view.copy_(tensor)
        ref.point_to(view)  # the original is freed here unless someone else still holds it
    del tensors
    return flat, _live[flat.data_ptr()][1]
