"""Our 8-bit attention kernel under the GPU's power limit: why it is slower inside a 14B forward than alone.

Per-call CUDA-event times of kernels.attention8 at 32,760 tokens x 40 heads x 128 (inputs already quantized), with
nvidia-smi's SM clock, power draw and throttle reasons sampled every 50 ms and summarised per phase:
- back to back on bench/attention.py's inputs, on plain randn inputs, and with all-zero int8 Q and K (data the
  tensor cores toggle least on);
- each call after four fp8 GEMMs of the FFN's shape (what surrounds attention in a forward);
- inside a random 14B fp8 forward at 480x832x81 (every self-attention call of --forwards forwards);
- back to back on that forward's own first-layer inputs.
Prints one row per phase; writes JSON to $OUT or bench/results/attention_power.json.

  python bench/attention_power.py [--forwards 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time

import torch

from bench_common import call_ms, device_name, results_dir  # noqa: E402  (puts the repo on sys.path)

from attention import kernels, wan_like  # noqa: E402
from dit_forward import SIZES, random_weights  # noqa: E402
from lightx2v_nodes.quant import quantize_dit_  # noqa: E402
from lightx2v_nodes.wan.attention import eight_bit_backend  # noqa: E402
from lightx2v_nodes.wan.model import WanDiT  # noqa: E402

TOKENS, HEADS, HEAD_DIM = 32760, 40, 128
SW_POWER_CAP = 0x4  # nvidia-smi clocks_event_reasons bit: clocks lowered to stay under the power limit


class ClockLog:
    """nvidia-smi samples in the background; phase(name) marks where each phase starts."""

    def __init__(self):
        self.file = tempfile.NamedTemporaryFile("w+", suffix=".csv")
        self.proc = subprocess.Popen(["nvidia-smi", "--query-gpu=timestamp,clocks.sm,power.draw,clocks_event_reasons.active",
                                      "--format=csv,noheader,nounits", "-lms", "50"], stdout=self.file)
        self.marks = []

    def phase(self, name):
        torch.cuda.synchronize()
        self.marks.append((time.time(), name))

    def summary(self) -> dict:
        """Per phase: median SM MHz, median W, share of samples clocked down by the power cap."""
        torch.cuda.synchronize()
        self.marks.append((time.time(), None))
        self.proc.terminate()
        self.proc.wait()
        self.file.seek(0)
        samples = []
        for line in self.file:
            stamp, mhz, watts, reasons = (part.strip() for part in line.split(","))
            # nvidia-smi stamps local time; time.mktime reads it the same way
            seconds = time.mktime(time.strptime(stamp.split(".")[0], "%Y/%m/%d %H:%M:%S")) + float("0." + stamp.split(".")[1])
            samples.append((seconds, float(mhz), float(watts), int(reasons, 16)))
        result = {}
        for (start, name), (stop, _) in zip(self.marks, self.marks[1:]):
            inside = [s for s in samples if start <= s[0] < stop]
            if inside:
                result[name] = {"sm_mhz": statistics.median(s[1] for s in inside),
                                "watts": statistics.median(s[2] for s in inside),
                                "power_capped": sum(bool(s[3] & SW_POWER_CAP) for s in inside) / len(inside)}
        return result


def kernel_phases(log, device) -> dict:
    gen = torch.Generator(device=device).manual_seed(0)
    shape = (1, TOKENS, HEADS, HEAD_DIM)
    bench = (wan_like(*shape, device, gen), wan_like(*shape, device, gen, bias=8.0), wan_like(*shape, device, gen))
    plain = tuple(torch.randn(shape, generator=gen, device=device).to(torch.bfloat16) for _ in range(3))
    inputs = {"bench inputs": (bench, kernels.quantize_qkv(*bench)), "randn inputs": (plain, kernels.quantize_qkv(*plain))}
    zero_qk = tuple(torch.zeros_like(t) if t.dtype == torch.int8 else t for t in inputs["randn inputs"][1])
    inputs["zero int8 Q and K"] = (plain, zero_qk)
    times = {}
    for name, (qkv, quantized) in inputs.items():
        call_ms(lambda: kernels.attention8(*qkv, quantized=quantized), 3)
        log.phase(name)
        times[name] = call_ms(lambda: kernels.attention8(*qkv, quantized=quantized), 100)
    a = torch.randn(TOKENS, 5120, generator=gen, device=device).to(torch.float8_e4m3fn)
    w = torch.randn(13824, 5120, generator=gen, device=device).to(torch.float8_e4m3fn)
    one = torch.ones((), device=device)

    def gemms():
        for _ in range(4):
            torch._scaled_mm(a, w.t(), one, one, out_dtype=torch.bfloat16)

    qkv, quantized = inputs["bench inputs"]
    log.phase("bench inputs, 4 fp8 GEMMs before each call")
    times["bench inputs, 4 fp8 GEMMs before each call"] = call_ms(
        lambda: kernels.attention8(*qkv, quantized=quantized), 50, gemms)
    return times


def forward_phases(log, device, forwards) -> dict:
    cfg = SIZES["14B"]
    weights = random_weights(cfg, device, torch.bfloat16)
    with torch.device("meta"):
        model = WanDiT(**cfg.unet_config(), dtype=torch.bfloat16)
    model.load_state_dict(weights, strict=True, assign=True)
    model.set_attention(eight_bit_backend())
    quantize_dit_(model, "fp8")
    del weights
    gen = torch.Generator(device=device).manual_seed(1)
    x = torch.randn((1, 16, 21, 60, 104), generator=gen, device=device, dtype=torch.bfloat16)
    t = torch.tensor([937.5], device=device)
    context = torch.randn(1, 512, 4096, generator=gen, device=device, dtype=torch.bfloat16)
    inner, calls, first = kernels.attention8, [], {}

    def recorded(*args, **kwargs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        out = inner(*args, **kwargs)
        end.record()
        calls.append((start, end))
        if not first:
            first.update(args=tuple(a.clone() for a in args), quantized=tuple(q.clone() for q in kwargs["quantized"]))
        return out

    kernels.attention8 = recorded
    try:
        with torch.inference_mode():
            model(x, t, context)
            calls.clear()
            log.phase("inside a 14B fp8 forward")
            for _ in range(forwards):
                model(x, t, context)
            torch.cuda.synchronize()
    finally:
        kernels.attention8 = inner
    times = {"inside a 14B fp8 forward": [start.elapsed_time(end) for start, end in calls]}
    del model
    log.phase("that forward's first-layer inputs")
    times["that forward's first-layer inputs"] = call_ms(
        lambda: kernels.attention8(*first["args"], quantized=first["quantized"]), 100)
    return times


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--forwards", type=int, default=3)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("attention_power.py needs a CUDA GPU and nvidia-smi")
    device = torch.device("cuda")
    log = ClockLog()
    times = kernel_phases(log, device)
    torch.cuda.empty_cache()
    times.update(forward_phases(log, device, args.forwards))
    clocks = log.summary()
    rows = [{"phase": name, "calls": len(ms), "median_ms": statistics.median(ms), **clocks.get(name, {})}
            for name, ms in times.items()]
    with open(os.path.join(results_dir(), "attention_power.json"), "w") as f:
        json.dump({"device": device_name(device), "torch": torch.__version__, "rows": rows, "call_ms": times}, f, indent=1)
    print(f"\nattention8 at {TOKENS} x {HEADS} x {HEAD_DIM}, {device_name(device)}")
    print(f"{'phase':>44} {'calls':>5} {'ms':>7} {'SM MHz':>7} {'W':>5} {'capped':>6}")
    for r in rows:
        print(f"{r['phase']:>44} {r['calls']:5d} {r['median_ms']:7.2f} {r.get('sm_mhz', 0):7.0f} {r.get('watts', 0):5.0f} "
              f"{r.get('power_capped', 0):6.0%}")


if __name__ == "__main__":
    main()
