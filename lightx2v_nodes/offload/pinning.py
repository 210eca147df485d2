"""Page-locking host weights in place (cudaHostRegister): full-bandwidth async copies with no second copy in RAM.

Small tensors share pages with their neighbours, and CUDA refuses to register a page twice, so the pages
registered so far are tracked and only the missing page ranges of each tensor are registered.
"""

from __future__ import annotations

import bisect
import logging
import mmap

import torch

log = logging.getLogger("lightx2v_nodes")
PAGE = mmap.PAGESIZE


class PageLocker:
    def __init__(self):
        self.ranges: list[tuple[int, int]] = []  # sorted, disjoint [start, end) page ranges registered here
        self.failed = 0

    def _gaps(self, start: int, end: int) -> list[tuple[int, int]]:
        gaps, cursor = [], start
        i = max(0, bisect.bisect_right(self.ranges, (start, start)) - 1)
        while i < len(self.ranges) and self.ranges[i][0] < end:
            a, b = self.ranges[i]
            if b > cursor:
                if a > cursor:
                    gaps.append((cursor, a))
                cursor = max(cursor, b)
            i += 1
        if cursor < end:
            gaps.append((cursor, end))
        return gaps

    def lock(self, tensor: torch.Tensor) -> bool:
        """Page-lock the pages under `tensor` (contiguous, on the host); False if CUDA refused."""
        nbytes = tensor.numel() * tensor.element_size()
        if nbytes == 0 or not tensor.is_contiguous():
            return False
        start = tensor.data_ptr() // PAGE * PAGE
        end = -(-(tensor.data_ptr() + nbytes) // PAGE) * PAGE
        for a, b in self._gaps(start, end):
            if int(torch.cuda.cudart().cudaHostRegister(a, b - a, 0)) != 0:
                self.failed += 1
                return False
            bisect.insort(self.ranges, (a, b))
        return True

    def unlock_all(self) -> None:
        for a, _ in self.ranges:
            torch.cuda.cudart().cudaHostUnregister(a)
        self.ranges = []
        if self.failed:
            log.warning("LightX2V offload: %d host tensors could not be page-locked; they were copied at pageable "
                        "speed.", self.failed)
            self.failed = 0
