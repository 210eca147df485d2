"""The offload scheduler: N blocks resident on the compute device, the rest streamed unit by unit.

Each streamed unit (a block, or one of its three phases) is copied into one of `prefetch + 1` device slots
on a dedicated copy stream. Before unit u runs, the compute stream waits on u's copy event (the host does
not block); then the next `prefetch` streamed units are enqueued, each into the slot that the unit before
u left, after an event that marks the end of that unit's compute. The order wraps around, so the first
blocks of the next step are already on their way while the last blocks, the head and the next step's
embeddings run. Non-block weights stay resident. On the host, each streamed block lives in one
page-locked buffer packed like the slots (pinning.py), so a unit is one full-bandwidth copy; in lazy mode
the disk reader's block buffers play that part. The DiT calls `gate(block, phase)` through
`WanBlock.phase_gate` (see lightx2v_nodes/wan/model.py).
"""

from __future__ import annotations

import dataclasses
import functools
import logging

import torch

from ..errors import LightX2VError
from .lazy import LazyBlockReader, check_directory
from .pinning import pack
from .streams import streams_for
from .units import Unit, non_block_refs, release_meta, split_units

log = logging.getLogger("lightx2v_nodes")


@dataclasses.dataclass(frozen=True)
class OffloadSettings:
    granularity: str = "block"  # "block" or "phase"
    resident_blocks: int = 0  # whole blocks kept on the device (the last ones)
    prefetch: int = 1  # streamed units in flight ahead of the running one
    lazy_dir: str | None = None  # per-block folder to read block weights from (None: from host memory)
    disk_workers: int = 4
    pin_host: bool = True  # pack each streamed block into one page-locked host buffer (locked on CUDA only)
    timing: bool = False  # per-unit copy/stall log (synchronizes at the end of each run)
    token_chunk: int | None = None  # WanBlock.token_chunk while installed (the planner's, when only chunked fits)

    def check(self, num_blocks: int) -> None:
        if self.granularity not in ("block", "phase"):
            raise LightX2VError(f"Offload granularity must be 'block' or 'phase', not '{self.granularity}'.")
        if not 0 <= self.resident_blocks <= num_blocks:
            raise LightX2VError(f"resident_blocks must be between 0 and {num_blocks} (the model's block count), "
                                f"got {self.resident_blocks}.")
        if self.token_chunk is not None and self.token_chunk < 1:
            raise LightX2VError(f"token_chunk must be a positive token count or None, got {self.token_chunk}.")
        if self.prefetch < 1:
            raise LightX2VError(f"prefetch depth must be at least 1 (got {self.prefetch}): 1 = copy the next unit "
                                "while the current one runs.")


class _Slot:
    def __init__(self, index: int, flat: torch.Tensor):
        self.index, self.flat, self.free_after = index, flat, None


class OffloadScheduler:
    def __init__(self, dit: torch.nn.Module, settings: OffloadSettings, device, manage_non_block: bool = True):
        """manage_non_block: move the non-block weights to the device here (ComfyUI's own loader does it otherwise)."""
        settings.check(len(dit.blocks))
        self.dit, self.settings, self.device = dit, settings, torch.device(device)
        self.manage_non_block = manage_non_block
        self.units: list[Unit] = []
        self.trace: list[tuple] | None = None  # set to [] to record ("copy", label, slot) / ("compute", label)
        self.installed = False

    # ---- sizes, for planning and ComfyUI's accounting ----

    @property
    def streamed(self) -> list[Unit]:
        return [u for u in self.units if u.block < self.first_resident]

    @property
    def first_resident(self) -> int:
        return len(self.dit.blocks) - self.settings.resident_blocks

    def device_bytes(self) -> int:
        """Device memory the scheduler holds while installed (resident units + slots), non-block weights excluded."""
        resident = sum(u.nbytes for u in self.units if u.block >= self.first_resident)
        return resident + self.slot_bytes * self.num_slots

    # ---- install / uninstall ----

    def install(self) -> None:
        if self.installed:
            return
        s = self.settings
        self.units = split_units(self.dit, s.granularity)
        if s.lazy_dir:
            for u in self.units:
                release_meta(u.refs)
        self.shapes = [[(r.get().shape, r.get().dtype) for r in u.refs] for u in self.units]
        block_cursor: dict[int, int] = {}
        for u, sd in zip(self.units, self.shapes):
            u.layout(sd)
            u.base = block_cursor.get(u.block, 0)
            block_cursor[u.block] = u.base + u.nbytes
        self.streams = streams_for(self.device, s.timing)
        self.reader = self._open_reader() if s.lazy_dir else None
        self.host_flat: list[torch.Tensor | None] = [None] * len(self.units)  # a unit's packed host bytes
        if self.reader is None and s.pin_host:
            self._pack_streamed(block_cursor)
        # What the module holds at rest: aliases of the storage, not the Parameter objects that get re-pointed.
        self.host = [[r.get().detach() for r in u.refs] for u in self.units]
        streamed = self.streamed
        self.order = [u.index for u in streamed]
        self.position = {u: i for i, u in enumerate(self.order)}
        self.units_per_block = 1 if s.granularity == "block" else 3
        self.slot_bytes = max((u.nbytes for u in streamed), default=0)
        self.num_slots = min(s.prefetch + 1, len(streamed))
        self.slots = [_Slot(i, torch.empty(self.slot_bytes, dtype=torch.uint8, device=self.device))
                      for i in range(self.num_slots)]
        self._reset_flight()
        self.non_block = []
        if self.manage_non_block:
            for ref in non_block_refs(self.dit):
                self.non_block.append((ref, ref.get().detach()))
                ref.point_to(ref.get().to(self.device))
        self.resident_storage = []
        for u in self.units:
            if u.block >= self.first_resident:
                flat = torch.empty(u.nbytes, dtype=torch.uint8, device=self.device)
                self._copy(u, flat, after=None)
                for ref, view in zip(u.refs, u.views(flat, self.shapes[u.index])):
                    ref.point_to(view)
                self.resident_storage.append(flat)
        self.stats = []
        for b, block in enumerate(self.dit.blocks):
            block.phase_gate = functools.partial(self.gate, b)
            if s.token_chunk is not None:
                block.token_chunk = s.token_chunk
        self.streams.synchronize()
        # Tensors made under inference mode cannot be written outside it, and views mixing the two modes fail: the
        # buffers belong to the autograd mode they were made in, and a run in the other mode needs a fresh install.
        self.made_in_inference_mode = torch.is_inference_mode_enabled()
        self.installed = True

    def fits_current_mode(self) -> bool:
        """Whether a run now may use the installed buffers (made in the same inference mode as this run)."""
        return self.made_in_inference_mode == torch.is_inference_mode_enabled()

    def _pack_streamed(self, block_bytes: dict[int, int]) -> None:
        """Each streamed block's host tensors into one buffer laid out like the slots (page-locked on CUDA)."""
        pin = self.device.type == "cuda"
        unlocked = 0
        for block in range(self.first_resident):
            units = [u for u in self.units if u.block == block]
            refs = [r for u in units for r in u.refs]
            flat, locked = pack(refs, [u.base + off for u in units for off in u.offsets], block_bytes[block], pin)
            if flat is None:  # not plain host tensors (already on the device, say): copied tensor by tensor
                continue
            unlocked += pin and not locked
            for u in units:
                self.host_flat[u.index] = flat[u.base:u.base + u.nbytes]
        if unlocked:
            log.warning("LightX2V offload: %d host blocks could not be page-locked (cudaHostRegister refused); they "
                        "are copied at pageable speed and copies will not hide under compute.", unlocked)

    def _open_reader(self) -> LazyBlockReader:
        layouts: dict[int, dict] = {}
        for u, shapes in zip(self.units, self.shapes):
            layout = layouts.setdefault(u.block, {})
            layout.update({r.key: sd for r, sd in zip(u.refs, shapes)})
        check_directory(self.settings.lazy_dir, len(self.dit.blocks), layouts)
        block_bytes = max(sum((int(torch.Size(sh).numel()) * dt.itemsize + 255) // 256 * 256 for sh, dt in lay.values())
                          for lay in layouts.values())
        # Blocks held at once: the running one, those with units in flight, the one being read ahead.
        per_block = 1 if self.settings.granularity == "block" else 3
        return LazyBlockReader(self.settings.lazy_dir, layouts, block_bytes, self.settings.disk_workers,
                               host_slots=self.settings.prefetch // per_block + 3, pin=self.device.type == "cuda")

    def _reset_flight(self) -> None:
        self.in_flight: dict[int, tuple[_Slot, object]] = {}  # unit -> (slot, copy-done event)
        self.free = list(self.slots)
        self.current: tuple[int, _Slot] | None = None
        self.reader_slot_of: dict[int, int] = {}

    def uninstall(self) -> None:
        if not self.installed:
            return
        self.finish()
        self.streams.synchronize()
        for u in self.units:
            for ref, host in zip(u.refs, self.host[u.index]):
                ref.point_to(host)
        for ref, original in self.non_block:
            ref.point_to(original)
        for block in self.dit.blocks:
            block.__dict__.pop("phase_gate", None)
            block.__dict__.pop("token_chunk", None)
        if self.reader is not None:
            self.reader.close()
        self.slots, self.resident_storage, self.non_block, self.in_flight, self.free = [], [], [], {}, []
        self.host, self.host_flat = [], []  # the module alone keeps the host buffers alive now
        self.installed = False

    # ---- the schedule ----

    def gate(self, block: int, phase: int) -> None:
        if self.units_per_block == 1 and phase > 0:
            return
        self.need(block * self.units_per_block + (phase if self.units_per_block == 3 else 0))

    def need(self, u: int) -> None:
        """Unit u is about to run: its weights must be (made) visible to the compute stream."""
        self._release_current()
        unit = self.units[u]
        if u in self.position:
            if u not in self.in_flight:  # first unit of a run, or someone ran blocks out of order
                self._drop_prefetches()
                self._issue(u)
            slot, done = self.in_flight.pop(u)
            self._wait(u, done)
            for ref, view in zip(unit.refs, unit.views(slot.flat, self.shapes[u])):
                ref.point_to(view)
            self.current = (u, slot)
            start = self.position[u] + 1
        else:
            start = self.position.get(self._next_streamed(u), 0)
        for j in range(min(self.settings.prefetch, len(self.order))):
            v = self.order[(start + j) % len(self.order)]
            if v != u and v not in self.in_flight:
                if not self.free:
                    break
                self._issue(v)
        if self.trace is not None:
            self.trace.append(("compute", unit.label))

    def _next_streamed(self, u: int) -> int:
        following = [v for v in self.order if v > u]
        return following[0] if following else (self.order[0] if self.order else u)

    def _release_current(self) -> None:
        if self.current is None:
            return
        u, slot = self.current
        slot.free_after = self.streams.mark_compute()
        self.free.append(slot)
        for ref, host in zip(self.units[u].refs, self.host[u]):
            ref.point_to(host)
        self.current = None

    def _drop_prefetches(self) -> None:
        for slot, _ in self.in_flight.values():
            slot.free_after = None  # the copy stream is in order: a new copy starts after the dropped one
            self.free.append(slot)
        self.in_flight.clear()

    def _issue(self, u: int) -> None:
        slot = self.free.pop(0)
        unit = self.units[u]
        start, done = self._copy(unit, slot.flat[:unit.nbytes], after=slot.free_after)
        self.in_flight[u] = (slot, done)
        if self.settings.timing:
            self.stats.append({"unit": unit.label, "copy": (start, done), "bytes": unit.nbytes})
        if self.trace is not None:
            self.trace.append(("copy", unit.label, slot.index))

    def _copy(self, unit: Unit, flat: torch.Tensor, after):
        """Copy `unit` into the device bytes `flat`: one copy from packed host bytes, else tensor by tensor."""
        source = self._source(unit)
        if source is not None:
            start, done = self.streams.copy([flat], [source], after=after)
        else:
            start, done = self.streams.copy(unit.views(flat, self.shapes[unit.index]), self.host[unit.index], after=after)
        if self.reader is not None:  # the host buffer is read until `done`: a later disk read into it waits
            self.reader.copied_out(self.reader_slot_of[unit.block], done)
        return start, done

    def _source(self, unit: Unit) -> torch.Tensor | None:
        if self.reader is None:
            return self.host_flat[unit.index]
        slot = self.reader.get(unit.block, keep=self._blocks_in_flight())
        self.reader_slot_of[unit.block] = slot
        following = self._next_streamed(unit.index + self.units_per_block - 1 - (unit.phase or 0))
        if following in self.position:
            self.reader.request(self.units[following].block, keep={unit.block})  # one block ahead
        return self.reader.buffers[slot][unit.base:unit.base + unit.nbytes]  # packed like the unit's slot

    def _blocks_in_flight(self) -> set[int]:
        blocks = {self.units[u].block for u in self.in_flight}
        if self.current is not None:
            blocks.add(self.units[self.current[0]].block)
        return blocks

    def _wait(self, u: int, done) -> None:
        if self.settings.timing and done is not None:
            before = self.streams.mark_compute()
            self.streams.wait(done)
            after = self.streams.mark_compute()
            self.stats.append({"unit": self.units[u].label, "stall": (before, after)})
        else:
            self.streams.wait(done)

    def finish(self) -> dict | None:
        """End of a run (or an interrupted one): weights back to their resting place; timing summary if enabled."""
        self._release_current()
        if not self.settings.timing or not self.stats:
            return None
        self.streams.synchronize()
        copy_ms = [self.streams.elapsed_ms(*s["copy"]) for s in self.stats if "copy" in s]
        stall_ms = [self.streams.elapsed_ms(*s["stall"]) for s in self.stats if "stall" in s]
        per_unit = []
        for s in self.stats:
            kind = "copy" if "copy" in s else "stall"
            per_unit.append((s["unit"], kind, self.streams.elapsed_ms(*s[kind])))
            log.debug("LightX2V offload: %-12s %-5s %.2f ms", *per_unit[-1])
        summary = {"copies": len(copy_ms), "copy_ms": sum(copy_ms), "stall_ms": sum(stall_ms),
                   "copied_bytes": sum(s["bytes"] for s in self.stats if "copy" in s), "per_unit": per_unit}
        self.stats = []
        return summary

