"""Peak tensor memory of a piece of work: what the planner's activation model is calibrated against.

On CUDA: the caching allocator's own peak (max_memory_allocated) above what was allocated before.
On the CPU there is no such counter, so the work runs under torch.profiler with profile_memory=True, which
records every allocation and free made through PyTorch's allocator (the temporaries inside composite ops
and kernels' own scratch tensors included); the peak is the running sum's maximum. Memory allocated
before `fn` starts is not counted, so for a block forward the result is its activation peak.
"""

from __future__ import annotations

import torch


def peak_bytes(fn, device) -> tuple[object, int]:
    """(fn(), the most bytes allocated at any moment while it ran, above what was allocated at the start)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        result = fn()
        torch.cuda.synchronize(device)
        return result, torch.cuda.max_memory_allocated(device) - start
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    events = [e for e in prof.profiler.kineto_results.events()
              if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU]
    live = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        live += event.nbytes()
        peak = max(peak, live)
    return result, peak
