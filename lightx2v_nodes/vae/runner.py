"""Drives a stack of streaming ops (stream_ops.py) over a video within a memory budget.

Frames enter op 0 in runs; before each op the run is cut into pieces whose estimated peak memory fits
the budget, and each piece goes through the rest of the stack (depth first) before the next piece
starts, so ops keep their order in time and their carried state stays exact. Cheap early layers thus
see many frames at once (few, large kernel launches) while the wide full-resolution layers see a few.
A budget of 0 gives frame-by-frame processing, an infinite one layer-by-layer processing of the whole
video.

Each level hands its tensor to the next one and drops its own reference (the one-element lists), so
only the runs still waiting to be processed stay alive.
"""

from __future__ import annotations

import math


class StreamRunner:
    def __init__(self, ops, budget_bytes: float, sink):
        self.ops = ops
        self.budget = budget_bytes
        self.sink = sink
        self.states = [None] * len(ops)

    def push(self, frames) -> None:
        """Feed the next consecutive frames (t, C, H, W, channels-last) to the first op."""
        self._run(0, [frames])

    def _run(self, index: int, box: list) -> None:
        x = box.pop()
        if index == len(self.ops):
            self.sink(x)
            return
        op = self.ops[index]
        t, _, h, w = x.shape
        per_frame = op.elements_per_frame(h, w) * x.element_size()
        pieces = min(t, math.ceil(t * per_frame / self.budget)) if self.budget > 0 else t
        if pieces > 1:
            runs = list(x.tensor_split(pieces))
            del x
            for k in range(len(runs)):
                piece, runs[k] = [runs[k]], None
                self._run(index, piece)
            return
        y, self.states[index] = op(x, self.states[index])
        del x
        if y.shape[0]:
            box = [y]
            del y
            self._run(index + 1, box)
