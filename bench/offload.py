"""Offload scheduler on the GPU: 14B Wan (random weights) under a capped VRAM budget vs fully resident.

For each weight format (bf16, fp8 W8A8 via QuantLinear) and shape: s/step fully resident, then with the CUDA
caching allocator capped at the budget (torch.cuda.set_per_process_memory_fraction) in block and phase
mode: s/step, ratio to resident, peak allocated, resident blocks chosen by the planner, copy time, compute
stall time (copy not hidden), achieved host->device bandwidth, and host RSS before/after repeated runs.
A "step" is one DiT forward at batch 1 (a CFG step is two). Measured raw pinned/pageable bandwidth first.
When only token-chunked activations fit the budget (fp8 720p in 8 GiB), the planner turns chunking on
(column "chunk"); "equal" then compares with the resident model chunked the same way (same arithmetic;
on the GPU a GEMM over fewer rows may pick other tiles) and "vs whole" gives the largest difference to the
whole-sequence resident output ("=" when bit-equal). "x res" is always against the whole-sequence resident
time. PYTORCH_CUDA_ALLOC_CONF is recorded in the JSON and the table header.
Writes JSON to $OUT or bench/results/offload.json and prints a table last.

  python bench/offload.py [--dtypes bf16,fp8] [--shapes 480x832x81,720x1280x81] [--modes block,phase]
                          [--budgets bf16=12,fp8=8] [--prefetch block=1,phase=2] [--runs 3] [--rss-runs 10]
                          [--chunk-tokens 8192] [--lazy] [--tiny]
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import shutil
import statistics
import tempfile
import time

import psutil
import torch
from safetensors.torch import save_file

from bench_common import ROOT, device_name, results_dir, use_comfyui  # noqa: E402,F401  (puts the repo on sys.path)

from lightx2v_nodes.errors import LightX2VError  # noqa: E402
from lightx2v_nodes.offload import OffloadScheduler, OffloadSettings  # noqa: E402
from lightx2v_nodes.offload.planner import (  # noqa: E402
    CHUNK_TOKENS, GiB, ModelSizes, activation_bytes, chunk_size, plan_offload, video_tokens)
from lightx2v_nodes.quant import install_quant_linears  # noqa: E402
from lightx2v_nodes.quant.formats import is_block_linear, quantize_weight  # noqa: E402
from lightx2v_nodes.wan import synthetic  # noqa: E402
from lightx2v_nodes.wan.checkpoint import NON_BLOCK_NAME  # noqa: E402
from lightx2v_nodes.wan.config import WanConfig  # noqa: E402
from lightx2v_nodes.wan.model import WanDiT  # noqa: E402

WAN14B = WanConfig(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40, in_dim=16)
TINY = synthetic.tiny_config("t2v", dim=256, layers=6, ffn_dim=512)


def rss_gb() -> float:
    return psutil.Process().memory_info().rss / 1e9


def host_model(cfg: WanConfig, fmt: str, gen_device) -> WanDiT:
    """Random weights made on `gen_device` (fast), kept in host memory; fp8 block linears quantized there too."""
    with torch.device("meta"):
        dit = WanDiT(**cfg.unet_config(), dtype=torch.bfloat16)
    if fmt == "fp8":
        install_quant_linears(dit, "fp8", "w8a8", bias_dtype=torch.bfloat16)
    gen = torch.Generator(device=gen_device).manual_seed(0)
    weights = {}
    for key, shape in synthetic.parameter_shapes(cfg).items():
        t = torch.randn(shape, generator=gen, device=gen_device)
        t = t.mul_(shape[1] ** -0.5) if len(shape) == 2 else t.mul_(0.05).add_(1.0 if "norm" in key and key.endswith("weight") else 0.0)
        if fmt == "fp8" and key.endswith(".weight") and is_block_linear(key[: -len(".weight")]):
            q, scale = quantize_weight(t, "fp8")
            weights[key], weights[key[: -len("weight")] + "weight_scale"] = q.cpu(), scale.cpu()
        else:
            weights[key] = t.to(torch.float32 if key.startswith("patch_embedding") else torch.bfloat16).cpu()
        del t
    dit.load_state_dict(weights, strict=True, assign=True)
    return dit.requires_grad_(False)


def inputs(shape, device, tiny):
    width, height, frames = shape
    latent = (1, 16, (frames - 1) // 4 + 1, height // 8, width // 8)
    gen = torch.Generator(device=device).manual_seed(1)
    x = torch.randn(latent, generator=gen, device=device, dtype=torch.bfloat16)
    context = torch.randn(1, 32 if tiny else 512, 4096, generator=gen, device=device, dtype=torch.bfloat16)
    return x, torch.tensor([937.5], device=device), context


def timed(model, args, runs, warmup, device):
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    with torch.inference_mode():
        for i in range(warmup + runs):
            sync()
            start = time.perf_counter()
            out = model(*args)
            sync()
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return statistics.median(times), out


def bandwidth(device) -> dict:
    if device.type != "cuda":
        return {}
    out = {}
    for name, pin in (("pinned", True), ("pageable", False)):
        host = torch.empty(GiB, dtype=torch.uint8, pin_memory=pin)
        dst = torch.empty(GiB, dtype=torch.uint8, device=device)
        dst.copy_(host, non_blocking=True)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(3):
            dst.copy_(host, non_blocking=True)
        torch.cuda.synchronize()
        out[f"h2d_{name}_gbps"] = 3 * GiB / 1e9 / (time.perf_counter() - start)
        del host, dst
    return out


def plans(sizes, budget, tokens, modes, prefetch, chunk) -> dict[str, object]:
    """The planner's plan per mode for this budget and shape, or its reason for refusing (a string)."""
    out = {}
    for mode in modes:
        try:
            out[mode] = plan_offload(sizes, budget, tokens, 1, mode, prefetch[mode], chunk_tokens=chunk)
        except LightX2VError as exc:
            out[mode] = f"planner: {exc}"
    return out


def set_token_chunk(dit, chunk) -> None:
    for block in dit.blocks:
        block.token_chunk = chunk


def run_offloaded(dit, args, sizes, mode, budget, prefetch, runs, warmup, device, lazy_dir=None, rss_runs=0,
                  chunk=CHUNK_TOKENS):
    tokens = video_tokens(*args["shape"])
    try:
        plan = plan_offload(sizes, budget, tokens, 1, mode, prefetch, chunk_tokens=chunk)
    except LightX2VError as exc:
        return {"mode": mode, "error": f"planner: {exc}"}, None
    row = {"estimated_activation_gib": plan.activation_bytes / GiB, "mode": plan.mode, "resident_blocks": plan.resident_blocks, "prefetch": prefetch, "plan": plan.describe(),
           "lazy": bool(lazy_dir), "token_chunk": plan.token_chunk}
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.set_per_process_memory_fraction(budget / torch.cuda.get_device_properties(device).total_memory)
    scheduler = OffloadScheduler(dit, OffloadSettings(plan.mode if plan.mode != "none" else "block", plan.resident_blocks,
                                                      prefetch, lazy_dir, token_chunk=plan.token_chunk), device)
    try:
        scheduler.install()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            row["weights_allocated_gib"] = torch.cuda.memory_allocated() / GiB  # + inputs and the reference output
        rss_before = rss_gb()
        row["s_per_step"], out = timed(dit, args["tensors"], runs, warmup, device)
        scheduler.finish()
        row["peak_allocated_gib"] = torch.cuda.max_memory_allocated() / GiB if device.type == "cuda" else 0.0
        row["activation_gib"] = row["peak_allocated_gib"] - row.get("weights_allocated_gib", 0.0)
        for _ in range(rss_runs):
            timed(dit, args["tensors"], 1, 0, device)
            scheduler.finish()
        row["rss_before_gb"], row["rss_after_gb"], row["rss_runs"] = rss_before, rss_gb(), runs + warmup + rss_runs
        # One more step with CUDA-event timing of every copy and of the compute stream's waits.
        scheduler.settings = OffloadSettings(**{**scheduler.settings.__dict__, "timing": True})
        scheduler.streams.timing = True
        timed(dit, args["tensors"], 1, 0, device)
        summary = scheduler.finish() or {}
        row.update({"copy_ms": summary.get("copy_ms", 0.0), "stall_ms": summary.get("stall_ms", 0.0),
                    "copied_gb": summary.get("copied_bytes", 0) / 1e9, "per_unit_ms": summary.get("per_unit", [])})
        row["copy_gbps"] = row["copied_gb"] / row["copy_ms"] * 1e3 if row["copy_ms"] else 0.0
        row["hidden_fraction"] = 1 - row["stall_ms"] / row["copy_ms"] if row["copy_ms"] else 1.0
        if lazy_dir:
            row["disk_read_gb"] = scheduler.reader.bytes_read / 1e9
    except torch.OutOfMemoryError as exc:
        row["error"] = f"OOM: {str(exc).splitlines()[0]}"
        out = None
    finally:
        scheduler.uninstall()
        if device.type == "cuda":
            torch.cuda.set_per_process_memory_fraction(1.0)
            torch.cuda.empty_cache()
    return row, out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dtypes", default="bf16,fp8")
    parser.add_argument("--shapes", default="480x832x81,720x1280x81", help="HxWxF; the second shape runs fp8 block only")
    parser.add_argument("--modes", default="block,phase")
    parser.add_argument("--budgets", default="bf16=12,fp8=8", help="VRAM cap in GiB per weight format")
    parser.add_argument("--prefetch", default="block=1,phase=2", help="prefetch depth per mode")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--rss-runs", type=int, default=10, help="extra runs for the host-RAM check (first config)")
    parser.add_argument("--lazy", action="store_true", help="also fp8 lazy mode from a per-block folder on disk")
    parser.add_argument("--chunk-tokens", type=int, default=CHUNK_TOKENS,
                        help="token chunk the planner may turn on when only chunked activations fit")
    parser.add_argument("--tiny", action="store_true", help="CPU smoke run at tiny shapes (the second one chunked)")
    args = parser.parse_args()

    device = torch.device("cpu" if args.tiny else "cuda")
    cfg = TINY if args.tiny else WAN14B
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    shapes = [(w, h, f) for h, w, f in shapes]  # given as HxWxF
    chunk = 16 if args.tiny else args.chunk_tokens
    if args.tiny:
        shapes = [(64, 32, 9), (96, 64, 9)]
    budgets = {k: float(v) for k, v in (item.split("=") for item in args.budgets.split(","))}
    prefetch = {k: int(v) for k, v in (item.split("=") for item in args.prefetch.split(","))}
    result = {"device": device_name(device), "torch": torch.__version__, "chunk_tokens": chunk,
              "alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF", ""), **bandwidth(device), "rows": []}
    rss_done, first_resident_s = False, float("nan")
    for fmt in args.dtypes.split(","):
        rss_start = rss_gb()
        dit = host_model(cfg, fmt, device)
        sizes = ModelSizes.of(dit)
        print(f"{fmt}: host model built, RSS {rss_start:.1f} -> {rss_gb():.1f} GB; block {sizes.block_bytes / 1e9:.3f} GB, "
              f"phase {sizes.phase_bytes / 1e9:.3f} GB, non-block {sizes.non_block_bytes / 1e9:.3f} GB", flush=True)
        budget = int(budgets[fmt] * GiB)
        for index, shape in enumerate(shapes):
            if index > 0 and fmt != "fp8":
                continue
            if args.tiny:  # every path runs: two resident blocks; the second shape fits only chunked, with none
                tokens = video_tokens(*shape)
                budget = plan_offload(sizes, 1 << 40, tokens, mode="block", resident_override=2 if index == 0 else 0
                                      ).weights_bytes + activation_bytes(sizes, tokens, token_chunk=chunk if index else None)
            if index == 0:
                first_budget = budget  # the lazy row runs the first shape
            common = {"dtype": fmt, "shape": "x".join(map(str, (shape[1], shape[0], shape[2]))), "budget_gib": budget / GiB}
            modes = args.modes.split(",") if index == 0 else ["block"]
            planned = plans(sizes, budget, video_tokens(*shape), modes, prefetch, chunk)
            refused = {mode: p for mode, p in planned.items() if isinstance(p, str)}
            if len(refused) == len(modes):  # nothing to compare against: skip the resident baseline too
                for mode, reason in refused.items():
                    result["rows"].append({**common, "mode": mode, "error": reason})
                    print(result["rows"][-1], flush=True)
                continue
            tensors = inputs(shape, device, args.tiny)
            dit.to(device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            resident_s, reference = timed(dit, tensors, args.runs, args.warmup, device)
            if index == 0:
                first_resident_s = resident_s
            resident_peak = torch.cuda.max_memory_allocated() / GiB if device.type == "cuda" else 0.0
            # Chunked plans: the resident model chunked the same way is the same-arithmetic reference (on the GPU
            # a GEMM with fewer rows may pick other tiles); the difference to the whole-sequence run is reported.
            chunked_reference = {}
            for c in {p.token_chunk for p in planned.values() if not isinstance(p, str) and p.token_chunk}:
                set_token_chunk(dit, c)
                chunked_reference[c] = timed(dit, tensors, 1, 0, device)[1]
                set_token_chunk(dit, None)
            dit.to("cpu")
            result["rows"].append({**common, "mode": "resident", "s_per_step": resident_s, "peak_allocated_gib": resident_peak})
            print(result["rows"][-1], flush=True)
            for mode in modes:
                rss_runs = 0 if rss_done else args.rss_runs
                rss_done = True
                row, out = run_offloaded(dit, {"shape": shape, "tensors": tensors}, sizes, mode, budget, prefetch[mode],
                                         args.runs, args.warmup, device, rss_runs=rss_runs, chunk=chunk)
                same = chunked_reference.get(row.get("token_chunk"), reference)
                row.update(common, ratio_to_resident=row.get("s_per_step", float("nan")) / resident_s,
                           equal_to_resident=bool(out is not None and torch.equal(out, same)))
                if out is not None and row.get("token_chunk"):
                    row["max_abs_diff_to_whole_sequence"] = (out.float() - reference.float()).abs().max().item()
                    row["equal_to_whole_sequence"] = bool(torch.equal(out, reference))
                result["rows"].append(row)
                print({k: v for k, v in row.items() if k != "per_unit_ms"}, flush=True)
        if args.lazy and fmt == "fp8" or args.tiny:
            result["rows"].append(lazy_row(dit, cfg, fmt, sizes, shapes[0], first_budget, prefetch["block"], args, device,
                                           first_resident_s))
            print({k: v for k, v in result["rows"][-1].items() if k != "per_unit_ms"}, flush=True)
        del dit
        if device.type == "cuda":
            torch.cuda.empty_cache()

    out_dir = results_dir()
    with open(os.path.join(out_dir, "offload.json"), "w") as f:
        json.dump(result, f, indent=1)
    print(f"\nOffload, {result['device']}; H2D pinned {result.get('h2d_pinned_gbps', 0):.1f} GB/s, "
          f"pageable {result.get('h2d_pageable_gbps', 0):.1f} GB/s; step = one forward at batch 1; "
          f"PYTORCH_CUDA_ALLOC_CONF='{result['alloc_conf']}'")
    print(f"{'fmt':>4} {'shape':>11} {'mode':>8} {'lazy':>4} {'res':>3} {'chunk':>5} {'s/step':>7} {'x res':>6} "
          f"{'peak GiB':>8} {'cap':>5} {'act est/got':>11} {'copy ms':>8} {'stall ms':>8} {'GB/s':>5} {'RSS GB':>11} "
          f"{'equal':>5} {'vs whole':>8}")
    for r in result["rows"]:
        rss = f"{r['rss_before_gb']:.1f}->{r['rss_after_gb']:.1f}" if "rss_before_gb" in r else ""
        act = f"{r['estimated_activation_gib']:.2f}/{r['activation_gib']:.2f}" if "activation_gib" in r else ""
        if "error" in r:
            print(f"{r['dtype']:>4} {r['shape']:>11} {r['mode']:>8} {r['error']}")
            continue
        tokens = video_tokens(*(int(v) for v in (r["shape"].split("x")[1], r["shape"].split("x")[0], r["shape"].split("x")[2])))
        chunk = chunk_size(tokens, r["token_chunk"]) if r.get("token_chunk") else ""
        whole = ("=" if r["equal_to_whole_sequence"] else f"{r['max_abs_diff_to_whole_sequence']:.1e}") \
            if "equal_to_whole_sequence" in r else ""
        print(f"{r['dtype']:>4} {r['shape']:>11} {r['mode']:>8} {'yes' if r.get('lazy') else '':>4} "
              f"{r.get('resident_blocks', '') if r['mode'] != 'resident' else '':>3} {chunk:>5} {r['s_per_step']:7.3f} "
              f"{r.get('ratio_to_resident', 1.0 if r['mode'] == 'resident' else float('nan')):6.3f} "
              f"{r['peak_allocated_gib']:8.2f} {r['budget_gib']:5.4g} {act:>11} "
              f"{r.get('copy_ms', 0):8.1f} {r.get('stall_ms', 0):8.1f} {r.get('copy_gbps', 0):5.1f} {rss:>11} "
              f"{str(r.get('equal_to_resident', '')):>5} {whole:>8}")


def write_block_folder(dit, folder):
    """The model as a LightX2V per-block folder (each tensor in its own dtype: 8-bit weights + scales stay so)."""
    groups = {}
    for key, value in dit.state_dict().items():
        name = f"block_{key.split('.')[1]}.safetensors" if key.startswith("blocks.") else NON_BLOCK_NAME
        groups.setdefault(name, {})[key] = value.contiguous()
    for name, tensors in groups.items():
        save_file(tensors, os.path.join(folder, name))


def release_freed_host_memory() -> None:
    """glibc keeps freed heap chunks (tensors under its mmap threshold, which grows to 32 MB) in the process:
    hand them back so RSS shows what is really held."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def lazy_row(dit, cfg, fmt, sizes, shape, budget, prefetch, args, device, resident_s):
    """Block weights read from disk while running: host RSS should stay near the non-block weights + a few blocks."""
    tensors = inputs(shape, device, args.tiny)
    with torch.inference_mode():
        reference = dit.to(device)(*tensors)
    dit.to("cpu")
    folder = tempfile.mkdtemp(dir=os.environ.get("TMPDIR"))
    write_block_folder(dit, folder)
    non_block = {k: v.clone() for k, v in dit.state_dict().items() if not k.startswith("blocks.")}
    dit.to("meta")  # drop the eager host copy before measuring
    release_freed_host_memory()
    rss_start = rss_gb()
    with torch.device("meta"):
        lazy = WanDiT(**cfg.unet_config(), dtype=torch.bfloat16)
    if fmt == "fp8":
        install_quant_linears(lazy, "fp8", "w8a8", bias_dtype=torch.bfloat16)
    lazy.load_state_dict(non_block, strict=False, assign=True)
    row, out = run_offloaded(lazy, {"shape": shape, "tensors": tensors}, sizes, "block", budget, prefetch,
                             args.runs, args.warmup, device, lazy_dir=folder,
                             chunk=16 if args.tiny else args.chunk_tokens)
    shutil.rmtree(folder, ignore_errors=True)
    row.update(dtype=fmt, shape="x".join(map(str, (shape[1], shape[0], shape[2]))), budget_gib=budget / GiB,
               equal_to_resident=bool(out is not None and torch.equal(out, reference)),
               ratio_to_resident=row.get("s_per_step", float("nan")) / resident_s, rss_model_gone_gb=rss_start, rss_lazy_peak_gb=max(rss_start, row.get("rss_after_gb", 0.0)),
               block_gb=sizes.block_bytes / 1e9, non_block_gb=sizes.non_block_bytes / 1e9)
    return row


if __name__ == "__main__":
    main()
