"""Where copies run: a dedicated CUDA copy stream ordered with events, or a synchronous stand-in on the CPU.

The scheduler only speaks this small interface (copy, mark_compute, wait, elapsed), so the exact same
schedule runs on a CPU-only machine, where every copy completes at once and events are placeholders.
"""

from __future__ import annotations

import torch


class CudaStreams:
    """Copies on their own stream (never the compute stream), so transfers overlap the running kernels."""

    synchronous = False

    def __init__(self, device: torch.device, timing: bool = False):
        self.device = device
        self.timing = timing
        self.copy_stream = torch.cuda.Stream(device=device)

    def _event(self):
        return torch.cuda.Event(enable_timing=self.timing)

    def copy(self, dsts, srcs, after=None):
        """Enqueue dst.copy_(src) on the copy stream once `after` (a compute event) has fired; returns (start, done)."""
        start, done = self._event(), self._event()
        with torch.cuda.stream(self.copy_stream):
            if after is not None:
                self.copy_stream.wait_event(after)
            start.record(self.copy_stream)
            for dst, src in zip(dsts, srcs):
                dst.copy_(src, non_blocking=True)
            done.record(self.copy_stream)
        return start, done

    def mark_compute(self):
        """An event after everything enqueued so far on the compute stream."""
        event = self._event()
        event.record(torch.cuda.current_stream(self.device))
        return event

    def wait(self, event) -> None:
        """Make the compute stream wait for `event` (the host does not block)."""
        torch.cuda.current_stream(self.device).wait_event(event)

    def synchronize(self) -> None:
        self.copy_stream.synchronize()
        torch.cuda.current_stream(self.device).synchronize()

    @staticmethod
    def elapsed_ms(start, end) -> float:
        return start.elapsed_time(end)


class SyncStreams:
    """The CPU stand-in: copies complete when issued; events are None."""

    synchronous = True

    def __init__(self, device: torch.device, timing: bool = False):
        self.device = device
        self.timing = timing

    def copy(self, dsts, srcs, after=None):
        for dst, src in zip(dsts, srcs):
            dst.copy_(src)
        return None, None

    def mark_compute(self):
        return None

    def wait(self, event) -> None:
        pass

    def synchronize(self) -> None:
        pass

    @staticmethod
    def elapsed_ms(start, end) -> float:
        return 0.0


def streams_for(device: torch.device, timing: bool = False):
    return CudaStreams(device, timing) if device.type == "cuda" else SyncStreams(device, timing)
