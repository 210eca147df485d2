"""The DiT's blocks on 1, 2, ... N processes (lightx2v_nodes.parallel): seconds per step, speed-up, relative error
vs one process, peak memory per rank, and the all-to-all share of a step.

One forward of the DiT is one sampling step: with cfg > 1 ComfyUI batches the conditional and unconditional pass
into one call (batch 2), which is what --cfg 5 measures (and what the cfg and both modes split).
Full size: random 14B T2V weights written once to --checkpoint (bf16, ~28 GB; reused when present), each worker
loads it like LightX2V Load Wan DiT does; latents 480x832x81 and 720x1280x81, text context 512 tokens.
  python bench/multi_gpu.py [--worlds 1,2,4] [--modes ulysses] [--cfg 1] [--shapes 480x832x81,720x1280x81]
                            [--checkpoint PATH] [--attention sdpa] [--runs 3] [--tiny]
--tiny: a 2-block dim-512 model on the CPU with gloo (checks the code paths, the numbers mean nothing).
Prints a table last; writes JSON to $OUT or bench/results/multi_gpu.json (multi_gpu_tiny.json).
"""

import argparse
import datetime
import json
import os
import sys
import time

import torch

from bench_common import device_name, median_seconds, results_dir  # noqa: E402  (puts the repo on sys.path)

from lightx2v_nodes.parallel import ulysses  # noqa: E402
from lightx2v_nodes.parallel.group import GroupSettings, ParallelBlocks, active, stop_active  # noqa: E402
from lightx2v_nodes.parallel.loading import LoadSpec, build_dit  # noqa: E402
from lightx2v_nodes.wan import synthetic  # noqa: E402
from lightx2v_nodes.wan.config import WanConfig  # noqa: E402
from lightx2v_nodes.wan.model import BLOCK_RUNNER_KEY  # noqa: E402

FULL_14B = WanConfig(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40, in_dim=16)


def write_checkpoint(cfg: WanConfig, path: str, dtype: str, device) -> None:
    if os.path.exists(path):
        return
    print(f"writing random weights to {path} ...", flush=True)
    state = synthetic.random_state_dict(cfg, seed=0, device=device)
    synthetic.write_checkpoint({k: v.cpu() for k, v in state.items()}, path, "original", dtype)


def peak_memory(device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def bench_shape(dit, spec, device, shape, cfg_scale, worlds, modes, runs, timeout):
    width, height, frames = shape
    batch = 2 if cfg_scale > 1 else 1
    gen = torch.Generator(device).manual_seed(0)
    x = torch.randn(batch, dit.in_dim, (frames - 1) // 4 + 1, height // 8, width // 8, generator=gen, device=device,
                    dtype=dit.dtype)
    context = torch.randn(batch, 512, 4096, generator=gen, device=device, dtype=dit.dtype)
    timestep = torch.full((batch,), 750.0, device=device)
    rows = []
    with torch.inference_mode():
        reference = dit(x, timestep, context)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        single = median_seconds(lambda: dit(x, timestep, context), 1, runs, device)
        rows.append({"world": 1, "mode": "-", "seconds_per_step": single, "speedup": 1.0, "rel_error": 0.0,
                     "memory_gib": [peak_memory(device) / 2**30], "all_to_all_share": 0.0})
        for world in worlds:
            if world == 1:
                continue
            devices = tuple(f"cuda:{i}" for i in range(1, world)) if device.type == "cuda" else ("cpu",) * (world - 1)
            for mode in modes:
                if mode == "both" and world % 2:
                    continue
                runner = ParallelBlocks(GroupSettings(spec, world, devices, timeout), mode)
                options = {BLOCK_RUNNER_KEY: runner}
                out = dit(x, timestep, context, transformer_options=options)  # starts the workers, warms up
                err = ((out.float() - reference.float()).norm() / reference.float().norm()).item()
                active().stats(reset=True)
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                seconds = median_seconds(lambda: dit(x, timestep, context, transformer_options=options), 1, runs, device)
                memory = [peak_memory(device)] + active().stats(timing=True)
                start = time.perf_counter()
                dit(x, timestep, context, transformer_options=options)
                timed = time.perf_counter() - start
                share = ulysses.TIMER.seconds / timed
                active().stats(timing=False)
                rows.append({"world": world, "mode": mode, "seconds_per_step": seconds, "speedup": single / seconds,
                             "rel_error": err, "memory_gib": [m / 2**30 for m in memory], "all_to_all_share": share})
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny model on the CPU with gloo")
    parser.add_argument("--worlds", default="1,2,4")
    parser.add_argument("--modes", default="ulysses", help="comma list of ulysses, cfg, both")
    parser.add_argument("--cfg", type=float, default=1.0, help="> 1: batch 2 (conditional + unconditional)")
    parser.add_argument("--shapes", default="480x832x81,720x1280x81", help="WxHxF of the video")
    parser.add_argument("--checkpoint", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "bench_wan14b_random.safetensors"))
    parser.add_argument("--attention", default="sdpa")
    parser.add_argument("--quantization", default="auto")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args()

    if args.tiny:
        device, dtype, cfg = torch.device("cpu"), "fp32", synthetic.tiny_config("t2v", dim=512)
        path = os.path.join(os.environ.get("TMPDIR", "/tmp"), "bench_multi_gpu_tiny.safetensors")
        shapes = [(32, 32, 5), (64, 64, 9)]
        worlds = [int(w) for w in (args.worlds if args.worlds != "1,2,4" else "1,2,3").split(",")]
    else:
        if not torch.cuda.is_available():
            sys.exit("bench/multi_gpu.py needs CUDA GPUs (use --tiny on the CPU)")
        device, dtype, cfg, path = torch.device("cuda:0"), "bf16", FULL_14B, args.checkpoint
        shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
        worlds = [int(w) for w in args.worlds.split(",")]
        if max(worlds) > torch.cuda.device_count():
            sys.exit(f"--worlds {args.worlds} needs {max(worlds)} GPUs; this machine has {torch.cuda.device_count()}")
    write_checkpoint(cfg, path, dtype, device)
    spec = LoadSpec(path, {"fp32": "float32", "bf16": "bfloat16"}[dtype], args.attention, args.quantization)
    dit = build_dit(spec, device)
    modes = args.modes.split(",")
    results = []
    try:
        for shape in shapes:
            for row in bench_shape(dit, spec, device, shape, args.cfg, worlds, modes, args.runs, args.timeout):
                results.append({"shape": "x".join(map(str, shape)), **row})
    finally:
        stop_active()

    record = {"command": " ".join([os.path.basename(sys.executable), *sys.argv]), "device": device_name(device),
              "devices": torch.cuda.device_count() if device.type == "cuda" else os.cpu_count(),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "torch": torch.__version__,
              "model": f"dim {cfg.dim}, {cfg.num_layers} blocks, {cfg.num_heads} heads", "dtype": dtype,
              "attention": args.attention, "cfg": args.cfg, "results": results}
    out = os.path.join(results_dir(), "multi_gpu_tiny.json" if args.tiny else "multi_gpu.json")
    with open(out, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1)
    print(f"\nDiT blocks on N processes: {record['model']}, {dtype}, attention {args.attention}, cfg {args.cfg:g} "
          f"({record['device']}); JSON: {out}")
    print(f"{'video':>14} {'mode':>8} {'ranks':>5} {'s/step':>9} {'speed-up':>9} {'rel err':>9} {'a2a %':>6}  memory GiB per rank")
    for r in results:
        memory = " ".join(f"{m:.2f}" for m in r["memory_gib"])
        print(f"{r['shape']:>14} {r['mode']:>8} {r['world']:>5} {r['seconds_per_step']:>9.4f} {r['speedup']:>8.2f}x "
              f"{r['rel_error']:>9.2e} {100 * r['all_to_all_share']:>5.1f}%  {memory}")


if __name__ == "__main__":
    main()
