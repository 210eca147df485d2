"""What every benchmark script shares: the repo on sys.path, where results go, the device's name, timing, and
importing the extracted ComfyUI (from --comfyui) for native comparisons."""

import logging
import os
import statistics
import sys
import time

# --tiny runs a script on the CPU, where the Triton kernels run in Triton's interpreter: chosen before Triton (and
# the pack's kernels, which read it) are imported. Every script imports this module before the kernels.
if "--tiny" in sys.argv:
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402

# The pack's one-line choices (matmul backend, attention fallbacks, compile failures) belong in every bench log.
logging.getLogger("lightx2v_nodes").setLevel(logging.INFO)
logging.getLogger("lightx2v_nodes").addHandler(logging.StreamHandler())

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def results_dir() -> str:
    """$OUT on the GPU machine (what comes back from a device run), else bench/results/."""
    path = os.environ.get("OUT") or os.path.join(ROOT, "bench", "results")
    os.makedirs(path, exist_ok=True)
    return path


def median_seconds(fn, warmup: int, runs: int, device: torch.device) -> float:
    """Median seconds of fn() over `runs` calls after `warmup` calls: CUDA events on the GPU, wall clock on the CPU.

    On the GPU the calls are queued back to back, each between its own pair of events, and the host waits once at
    the end: a host sync after every call would leave the GPU idle while the next call is launched, adding launch
    latency to every sub-millisecond kernel (measured: a 0.14 ms quantization timed at 0.26 ms that way)."""
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return statistics.median(call_ms(fn, runs)) / 1e3
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def call_ms(fn, calls: int, before=None) -> list:
    """CUDA ms of each of `calls` calls of fn, queued back to back between their own events (before(), if given, runs
    between the calls, outside the events); the host waits once, at the end."""
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(calls)]
    for start, end in events:
        if before:
            before()
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return [start.elapsed_time(end) for start, end in events]


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def use_comfyui(comfy_dir: str, cpu: bool) -> None:
    """Put ComfyUI on sys.path and pick its device before comfy.model_management is imported (it decides then)."""
    if comfy_dir not in sys.path:
        sys.path.insert(0, comfy_dir)
    import comfy.cli_args

    comfy.cli_args.args.cpu = cpu
