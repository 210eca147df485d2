"""Wan2.2 on the GPU, random full-size weights, everything through ComfyUI's executor except part b:

  a) A14B T2V fp8, 4 steps (2 on the high-noise expert, 2 on the low-noise one) + tiny-VAE decode at 480x832x81:
     LightX2V Load Wan DiT x2 -> LightX2V 4-Step Sampler (low_noise_model, switch step 2) -> LightX2V Tiny VAE
     Decode, vs the native chain on two ComfyUI WanModel experts (bf16, SDPA, built in memory from random weights):
     LightX2V Distill Sigmas -> SplitSigmas(2) -> SamplerCustomAdvanced(high) -> SamplerCustomAdvanced(low,
     DisableNoise) -> the same decode. Seconds per run (median) and native/ours.
  b) TI2V-5B at 1280x704x121 (latent 48x31x44x80): one DiT forward (one step at cfg 1), ours (SDPA, auto attention,
     fp8 + auto) vs ComfyUI's WanModel (bf16, SDPA) on the same weights.
  c) Memory: part a's graph with both experts loaded with keep_blocks_on_disk and a LightX2V Offload each (block
     mode, 8 GiB budget), the CUDA allocator capped at 8 GiB: peak VRAM, peak process RSS (goal <= 16 GiB), disk
     bytes each expert's folder gave per run (and what one read per block per step plus the read-ahead past the
     last step comes to), seconds per run with a warm page cache and with the folders evicted from it first
     (cold), and the ratio to part a (experts held in RAM, no cap). Runs first, so RSS is not inflated by part a.

The experts are LightX2V fp8 per-block folders written block by block on the GPU (~14 GB each on disk, nothing
downloaded). Each graph gets one warm-up run, then --runs timed runs with a new seed (only the samplers and the
decode run again). Text encoding is excluded (synthetic 512 x 4096 conditioning). Prints each part's time (the
whole run is meant to fit 8 minutes on an H200) and a table last; JSON to $OUT or bench/results/.

  python bench/wan22.py [--parts c,a,b] [--runs 2] [--tiny]

--tiny runs every part on the CPU with tiny models at 64x64x9 and the same nodes (budget: the planner's
smallest streaming plan, so the blocks are streamed from disk as on the GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import sys
import threading
import time

import psutil
import torch

from bench_common import device_name, results_dir  # noqa: E402  (puts the repo on sys.path)
import dit_forward  # noqa: E402  (before end_to_end, which takes bench/ off sys.path)
from end_to_end import TEXT_DIM, TEXT_TOKENS, TimedExecutor, file_groups, release_models, say, write_fp8_dit  # noqa: E402

from lightx2v_nodes.placeholders import read_header  # noqa: E402
from lightx2v_nodes.quant import quantize_dit_  # noqa: E402
from lightx2v_nodes.vae.synthetic import write_random_taehv  # noqa: E402
from lightx2v_nodes.wan import synthetic  # noqa: E402
from lightx2v_nodes.wan.attention import choose_attention  # noqa: E402
from lightx2v_nodes.wan.config import WanConfig  # noqa: E402
from lightx2v_nodes.wan.model import WanDiT  # noqa: E402

A14B = WanConfig(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40, in_dim=16)  # each expert: Wan2.1-14B shaped
TI2V_5B = synthetic.tiny_config("ti2v", dim=3072, layers=30, ffn_dim=14336)
TINY = {"a14b": synthetic.tiny_config("t2v", dim=256, layers=6, ffn_dim=512), "ti2v": synthetic.tiny_config("ti2v")}
SHAPES = {"full": {"a14b": (832, 480, 81), "ti2v": (1280, 704, 121)}, "tiny": {"a14b": (64, 64, 9), "ti2v": (64, 64, 9)}}
VRAM_CAP_GIB, RSS_GOAL_GIB = 8.0, 16.0
EXPERTS = {"high": "wan2.2_t2v_high_noise_fp8_random/", "low": "wan2.2_t2v_low_noise_fp8_random/"}
VAE_NAME = "taew2_1_random.safetensors"
SWITCH_STEP, STEPS = 2, 4
# While an expert's last block runs, the offload scheduler fetches the next step's first block and the lazy reader
# one block beyond it: past the expert's last step, two blocks read for nothing.
READ_AHEAD_BLOCKS = 2
# Node ids of the prompts.
HIGH, LOW, HIGH_OFFLOAD, LOW_OFFLOAD, COND, LATENT, SAMPLER, TINY_VAE, DECODE = "1", "2", "3", "4", "5", "6", "7", "8", "9"
SIGMAS, SPLIT, NOISE, NO_NOISE, EULER, GUIDE_HIGH, GUIDE_LOW, SAMPLE_HIGH = "20", "21", "22", "23", "24", "25", "26", "27"
GiB = 2**30


class PrebuiltModel:
    """A bench-only node handing out MODELs built in memory (the native experts), so they run through the same
    executor as ours without writing 2 x 28 GB of bf16 files."""

    MODELS: dict = {}
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "get"
    CATEGORY = "bench"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"key": ("STRING", {"default": ""})}}

    def get(self, key):
        return (self.MODELS[key],)


# --- prompts ---------------------------------------------------------------------------------------------------

def common_nodes(shape, seed_node_inputs: dict) -> dict:
    width, height, frames = shape
    return {
        COND: {"class_type": "LightX2VSyntheticConditioning", "inputs": {"seed": 1, "tokens": TEXT_TOKENS, "dim": TEXT_DIM}},
        LATENT: {"class_type": "EmptyHunyuanLatentVideo", "inputs": {"width": width, "height": height, "length": frames,
                                                                     "batch_size": 1}},
        TINY_VAE: {"class_type": "LightX2VLoadTinyVAE", "inputs": {"vae_name": VAE_NAME, "dtype": "auto",
                                                                   "decode_mode": "chunked"}},
        DECODE: {"class_type": "LightX2VTinyVAEDecode", "inputs": {"samples": [SAMPLER, 0], "vae": [TINY_VAE, 0],
                                                                   "decode_mode": "as loaded"}},
        **seed_node_inputs,
    }


def ours_prompt(seed: int, shape, offload: dict | None = None) -> dict:
    """Part a (offload None) or c: our loaders, optionally an Offload each, the two-expert 4-step sampler."""
    prompt = common_nodes(shape, {})
    for node, key in ((HIGH, "high"), (LOW, "low")):
        prompt[node] = {"class_type": "LightX2VLoadWanDiT", "inputs": {
            "model_name": EXPERTS[key], "dtype": "auto", "attention": "auto", "quantization": "auto",
            "keep_blocks_on_disk": offload is not None}}
    high, low = HIGH, LOW
    if offload is not None:
        for node, source in ((HIGH_OFFLOAD, HIGH), (LOW_OFFLOAD, LOW)):
            prompt[node] = {"class_type": "LightX2VOffload", "inputs": {"model": [source, 0], **offload}}
        high, low = HIGH_OFFLOAD, LOW_OFFLOAD
    prompt[SAMPLER] = {"class_type": "LightX2VFourStepSampler", "inputs": {
        "model": [high, 0], "low_noise_model": [low, 0], "positive": [COND, 0], "latent_image": [LATENT, 0],
        "seed": seed, "denoising_step_list": "1000,750,500,250", "shift": 5.0, "cfg": 1.0, "mode": "deterministic",
        "switch_at": "step", "switch_step": SWITCH_STEP}}
    return prompt


def native_prompt(seed: int, shape) -> dict:
    """Part a's native chain: SplitSigmas -> SamplerCustomAdvanced(high) -> SamplerCustomAdvanced(low, DisableNoise)."""
    def custom(noise, guider, sigmas, latent):
        return {"class_type": "SamplerCustomAdvanced", "inputs": {"noise": [noise, 0], "guider": [guider, 0],
                                                                  "sampler": [EULER, 0], "sigmas": sigmas,
                                                                  "latent_image": [latent, 0]}}
    return common_nodes(shape, {
        HIGH: {"class_type": "PrebuiltModel", "inputs": {"key": "high"}},
        LOW: {"class_type": "PrebuiltModel", "inputs": {"key": "low"}},
        SIGMAS: {"class_type": "LightX2VDistillSigmas", "inputs": {"denoising_step_list": "1000,750,500,250", "shift": 5.0}},
        SPLIT: {"class_type": "SplitSigmas", "inputs": {"sigmas": [SIGMAS, 0], "step": SWITCH_STEP}},
        NOISE: {"class_type": "RandomNoise", "inputs": {"noise_seed": seed}},
        NO_NOISE: {"class_type": "DisableNoise", "inputs": {}},
        EULER: {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        GUIDE_HIGH: {"class_type": "BasicGuider", "inputs": {"model": [HIGH, 0], "conditioning": [COND, 0]}},
        GUIDE_LOW: {"class_type": "BasicGuider", "inputs": {"model": [LOW, 0], "conditioning": [COND, 0]}},
        SAMPLE_HIGH: custom(NOISE, GUIDE_HIGH, [SPLIT, 0], LATENT),
        SAMPLER: custom(NO_NOISE, GUIDE_LOW, [SPLIT, 1], SAMPLE_HIGH),
    })


# --- measuring -------------------------------------------------------------------------------------------------

def disk_bytes() -> dict[str, int]:
    """Bytes read per per-block folder by the lazy readers (the pack is imported by ComfyUI under its folder
    name too: both copies count)."""
    totals: dict[str, int] = {}
    for name, module in list(sys.modules.items()):
        if name.endswith("lightx2v_nodes.offload.lazy") and module is not None:
            for folder, n in module.disk_bytes_read().items():
                totals[folder] = totals.get(folder, 0) + n
    return totals


def tensor_bytes(path: str) -> int:
    entries, _ = read_header(path)
    return sum(e["data_offsets"][1] - e["data_offsets"][0] for e in entries.values())


def evict_page_cache(folder: str) -> None:
    """Drop the folder's files from the OS page cache, so the next run reads them from the disk itself."""
    for name in os.listdir(folder):
        fd = os.open(os.path.join(folder, name), os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


class PeakRss:
    """Polls this process's RSS every 20 ms while active (ru_maxrss only knows the whole process life)."""

    def __enter__(self):
        self.peak, self.done = psutil.Process().memory_info().rss, threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()
        return self

    def _poll(self):
        process = psutil.Process()
        while not self.done.wait(0.02):
            self.peak = max(self.peak, process.memory_info().rss)

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join()


def timed_run(bench: TimedExecutor, prompt: dict, sampler_nodes: tuple[str, ...]) -> dict:
    cuda = bench.cuda
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    before = disk_bytes()
    seconds, _ = bench.run(prompt, DECODE)
    nodes = bench.clock.node_seconds()
    after = disk_bytes()
    return {"total_s": seconds, "sampler_s": sum(nodes.get(n, 0.0) for n in sampler_nodes),
            "decode_s": nodes.get(DECODE, 0.0), "nodes_s": nodes,
            "peak_vram_gib": torch.cuda.max_memory_allocated() / GiB if cuda else 0.0,
            "disk_bytes": {f: after[f] - before.get(f, 0) for f in after if after[f] != before.get(f, 0)}}


def graph_runs(bench, make_prompt, runs: int, seed: int, sampler_nodes, label: str) -> dict:
    """One warm-up run, then `runs` timed ones (each a new seed): medians and every run."""
    start = time.perf_counter()
    bench.run(make_prompt(seed), DECODE)
    warmup_s = time.perf_counter() - start
    say(f"{label}: warm-up {warmup_s:.1f} s")
    done = []
    for i in range(runs):
        done.append(timed_run(bench, make_prompt(seed + 1 + i), sampler_nodes))
        say(f"{label}: run {i + 1}/{runs} {done[-1]['total_s']:.2f} s (sampler {done[-1]['sampler_s']:.2f} s)")
    frames = bench.result.output(DECODE)
    return {"warmup_s": warmup_s, "runs": done, "frames_shape": list(frames.shape),
            "frames_finite": bool(torch.isfinite(frames).all()),
            **{k: statistics.median(r[k] for r in done) for k in ("total_s", "sampler_s", "decode_s")},
            "peak_vram_gib": max(r["peak_vram_gib"] for r in done)}


# --- the parts -----------------------------------------------------------------------------------------------

def part_memory(args, shape, models_dir: str, cfg: WanConfig) -> dict:
    """c) Both experts streamed from their folders under the VRAM cap; RSS polled through every run."""
    cuda = not args.tiny
    if args.tiny:  # the smallest streaming plan, so the tiny blocks stream as the full-size ones do
        offload = {"mode": "block", "vram_budget_gb": 0.0, "resident_blocks": 0, "prefetch": 1}
    else:
        offload = {"mode": "block", "vram_budget_gb": VRAM_CAP_GIB, "resident_blocks": -1, "prefetch": 1}
    offload.update(lazy_load_dir="", debug_timing=False)
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.set_per_process_memory_fraction(VRAM_CAP_GIB * GiB / torch.cuda.get_device_properties(0).total_memory)
    folders = {key: os.path.realpath(os.path.join(models_dir, "diffusion_models", name)) for key, name in EXPERTS.items()}
    bench = TimedExecutor(cuda)
    try:
        with PeakRss() as rss:
            row = graph_runs(bench, lambda seed: ours_prompt(seed, shape, offload), args.runs, args.seed,
                             (SAMPLER,), "c) lazy + offload")
            for folder in folders.values():
                evict_page_cache(folder)
            row["cold"] = timed_run(bench, ours_prompt(args.seed + 100, shape, offload), (SAMPLER,))
            say(f"c) cold page cache: {row['cold']['total_s']:.2f} s")
        plans = {key: bench.result.output(node).offload_plan for key, node in (("high", HIGH_OFFLOAD), ("low", LOW_OFFLOAD))}
        row["plans"] = {key: plan.describe() for key, plan in plans.items()}
    finally:
        if cuda:
            torch.cuda.set_per_process_memory_fraction(1.0)
    block = {key: tensor_bytes(os.path.join(folder, "block_0.safetensors")) for key, folder in folders.items()}
    steps = {"high": SWITCH_STEP, "low": STEPS - SWITCH_STEP}
    row.update({
        "vram_cap_gib": VRAM_CAP_GIB if cuda else None, "peak_rss_gib": rss.peak / GiB,
        "ru_maxrss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GiB, "rss_goal_gib": RSS_GOAL_GIB,
        "disk_gb_per_run": {key: row["runs"][-1]["disk_bytes"].get(f, 0) / 1e9 for key, f in folders.items()},
        # resident blocks read once as the expert is loaded, the streamed ones once per step, plus the two blocks
        # read ahead past the expert's last step (an expert still loaded from the last run reads fewer)
        "disk_gb_expected": {key: (plans[key].resident_blocks + steps[key] * (cfg.num_layers - plans[key].resident_blocks)
                                   + READ_AHEAD_BLOCKS) * block[key] / 1e9 for key in folders},
    })
    del bench
    release_models(cuda)
    return row


def build_native_expert(cfg: WanConfig, seed: int, device: str):
    """A ComfyUI ModelPatcher of a native WanModel with random weights, made one file group at a time."""
    import comfy.sd

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    sd = {}
    for i, keys in enumerate(file_groups(cfg).values()):
        sd.update({k: v.to(dtype).cpu() for k, v in synthetic.random_state_dict(cfg, seed + i, keys, device).items()})
    return comfy.sd.load_diffusion_model_state_dict(sd, model_options={"dtype": dtype})


def part_end_to_end(args, shape, cfg: WanConfig) -> dict:
    """a) Ours (fp8 per-block folders, experts held in RAM) vs the native bf16 chain."""
    cuda = not args.tiny
    bench = TimedExecutor(cuda)
    ours = graph_runs(bench, lambda seed: ours_prompt(seed, shape), args.runs, args.seed, (SAMPLER,), "a) ours")
    del bench
    release_models(cuda)
    device = "cuda" if cuda else "cpu"
    start = time.perf_counter()
    PrebuiltModel.MODELS.update(high=build_native_expert(cfg, 1000, device), low=build_native_expert(cfg, 2000, device))
    say(f"a) native experts built in {time.perf_counter() - start:.1f} s")
    import comfy.ldm.wan.model as comfy_wan

    bench = TimedExecutor(cuda)
    native = graph_runs(bench, lambda seed: native_prompt(seed, shape), args.runs, args.seed, (SAMPLE_HIGH, SAMPLER),
                        "a) native")
    native["attention"] = getattr(comfy_wan.optimized_attention, "__name__", str(comfy_wan.optimized_attention))
    del bench
    PrebuiltModel.MODELS.clear()
    release_models(cuda)
    return {"ours": ours, "native": native, "native_over_ours": native["total_s"] / ours["total_s"]}


def part_ti2v(args, shape) -> list[dict]:
    """b) One TI2V-5B forward: ours (several settings) vs ComfyUI's WanModel (SDPA), the same weights."""
    import comfy.ldm.modules.attention as comfy_attention
    import comfy.ldm.wan.model as comfy_wan
    import comfy.ops

    device = torch.device("cpu" if args.tiny else "cuda")
    dtype = torch.float32 if args.tiny else torch.bfloat16
    cfg = TINY["ti2v"] if args.tiny else TI2V_5B
    weights = dit_forward.random_weights(cfg, device, dtype)
    with torch.device("meta"):
        native = comfy_wan.WanModel(**cfg.unet_config(), operations=comfy.ops.disable_weight_init, dtype=dtype)
        ours = WanDiT(**cfg.unet_config(), dtype=dtype)
    native.load_state_dict(weights, strict=True, assign=True)
    ours.load_state_dict(weights, strict=True, assign=True)
    width, height, frames = shape
    gen = torch.Generator(device=device).manual_seed(1)
    x = torch.randn(1, 48, (frames - 1) // 4 + 1, height // 16, width // 16, generator=gen, device=device, dtype=dtype)
    inputs = (x, torch.tensor([937.5], device=device),
              torch.randn(1, TEXT_TOKENS, TEXT_DIM, generator=gen, device=device, dtype=dtype))
    comfy_wan.optimized_attention = comfy_attention.attention_pytorch
    native_s, native_peak, _, reference = dit_forward.time_forward(native, inputs, args.warmup, args.forward_runs, device)
    rows = []
    for name, attention, fmt in (("sdpa", "sdpa", None), ("auto", "auto", None), ("fp8+auto", "auto", "fp8")):
        model = ours
        if fmt:
            with torch.device("meta"):
                model = WanDiT(**cfg.unet_config(), dtype=dtype)
            model.load_state_dict(weights, strict=True, assign=True)
            quantize_dit_(model, fmt)
        chosen = choose_attention(attention, device, dtype)
        model.set_attention(chosen)
        seconds, peak, _, out = dit_forward.time_forward(model, inputs, args.warmup, args.forward_runs, device)
        rows.append({"row": name, "attention": chosen.name, "ours_s": seconds, "native_s": native_s,
                     "native_over_ours": native_s / seconds, "ours_peak_gib": peak, "native_peak_gib": native_peak,
                     "latent": list(x.shape), **dit_forward.agreement(out, reference)})
        say(f"b) TI2V {name}: ours {seconds:.3f} s, native {native_s:.3f} s")
        del model
    del native, ours, weights
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


# --- report --------------------------------------------------------------------------------------------------

def report(summary: dict) -> str:
    lines = [f"Wan2.2 on {summary['device']} ({summary['date']}), {summary['runs']} timed runs per graph (medians):", ""]
    a = summary.get("a")
    if a:
        lines += ["a) A14B fp8 4 steps (2 high + 2 low) + tiny-VAE decode, " + "x".join(map(str, summary["shape_a14b"])),
                  "| graph | total s | sampler s | decode s | warm-up s | peak VRAM GiB |", "| --- | --- | --- | --- | --- | --- |"]
        for name in ("ours", "native"):
            r = a[name]
            lines.append(f"| {name} | {r['total_s']:.2f} | {r['sampler_s']:.2f} | {r['decode_s']:.2f} | "
                         f"{r['warmup_s']:.1f} | {r['peak_vram_gib']:.1f} |")
        lines += [f"native / ours: {a['native_over_ours']:.2f}x", ""]
    if summary.get("b"):
        lines += ["b) TI2V-5B, one forward (= one step at cfg 1), latent " + "x".join(map(str, summary["b"][0]["latent"][1:])),
                  "| ours | ours s | native s (SDPA) | native / ours | rel err |", "| --- | --- | --- | --- | --- |"]
        lines += [f"| {r['row']} ({r['attention']}) | {r['ours_s']:.3f} | {r['native_s']:.3f} | "
                  f"{r['native_over_ours']:.2f} | {r['rel_err']:.1e} |" for r in summary["b"]]
        lines.append("")
    c = summary.get("c")
    if c:
        disk = ", ".join(f"{k} {c['disk_gb_per_run'][k]:.3f} (expected {c['disk_gb_expected'][k]:.3f})" for k in ("high", "low"))
        ratio = f"{c['ratio_to_resident']:.2f}x" if "ratio_to_resident" in c else "-"
        lines += ["c) both experts from disk (lazy) + offload, VRAM cap " + (f"{c['vram_cap_gib']:g} GiB" if c["vram_cap_gib"] else "none (CPU)"),
                  f"   warm page cache {c['total_s']:.2f} s/run ({ratio} of part a ours), cold {c['cold']['total_s']:.2f} s",
                  f"   peak VRAM {c['peak_vram_gib']:.2f} GiB, peak RSS {c['peak_rss_gib']:.2f} GiB (goal <= {RSS_GOAL_GIB:g}), "
                  f"ru_maxrss {c['ru_maxrss_gib']:.2f} GiB", f"   disk GB per run: {disk}", ""]
    lines.append("time per part: " + ", ".join(f"{k} {v:.0f} s" for k, v in summary["part_seconds"].items()))
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default="c,a,b", help="which parts, in this order (c first keeps its RSS clean)")
    parser.add_argument("--runs", type=int, default=2, help="timed runs per graph after one warm-up")
    parser.add_argument("--forward-runs", type=int, default=3, help="timed forwards per row of part b")
    parser.add_argument("--warmup", type=int, default=1, help="warm-up forwards per row of part b")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--tiny", action="store_true", help="CPU smoke run: tiny models at 64x64x9, same nodes")
    args = parser.parse_args(argv)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if not set(parts) <= {"a", "b", "c"}:
        raise SystemExit("--parts takes a comma list of a, b, c")
    cuda = not args.tiny
    if cuda and not torch.cuda.is_available():
        raise SystemExit("the full-size run needs a CUDA GPU; use --tiny on a CPU")

    from comfy_env import bootstrap

    base_dir, pack_link = bootstrap()
    import comfy.cli_args

    comfy.cli_args.args.cpu = args.tiny
    size = "tiny" if args.tiny else "full"
    cfg = TINY["a14b"] if args.tiny else A14B
    device = torch.device("cuda" if cuda else "cpu")
    summary = {"benchmark": "wan22", "device": device_name(device), "torch": torch.__version__,
               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "command": " ".join(sys.argv),
               "runs": args.runs, "shape_a14b": list(SHAPES[size]["a14b"]), "shape_ti2v": list(SHAPES[size]["ti2v"]),
               "part_seconds": {}}
    path = os.path.join(results_dir(), "wan22_tiny.json" if args.tiny else "wan22.json")
    models_dir = str(base_dir / "models")
    try:
        start = time.perf_counter()
        if {"a", "c"} & set(parts):
            for seed, key in ((0, "high"), (1000, "low")):
                written = write_fp8_dit(cfg, os.path.join(models_dir, "diffusion_models", EXPERTS[key]), device.type, seed)
                say(f"wrote the {key}-noise expert ({written / GiB:.2f} GiB)")
            write_random_taehv(os.path.join(models_dir, "vae_approx", VAE_NAME), latent_channels=16, dtype="fp16", seed=7)
            if cuda:
                torch.cuda.empty_cache()
        summary["part_seconds"]["weights"] = time.perf_counter() - start
        from harness import load_all_nodes

        load_all_nodes(pack_link)["PrebuiltModel"] = PrebuiltModel
        for part in parts:
            start = time.perf_counter()
            if part == "c":
                summary["c"] = part_memory(args, SHAPES[size]["a14b"], models_dir, cfg)
            elif part == "a":
                summary["a"] = part_end_to_end(args, SHAPES[size]["a14b"], cfg)
            else:
                summary["b"] = part_ti2v(args, SHAPES[size]["ti2v"])
            summary["part_seconds"][part] = time.perf_counter() - start
            say(f"part {part} took {summary['part_seconds'][part]:.0f} s")
            if "a" in summary and "c" in summary:
                summary["c"]["ratio_to_resident"] = summary["c"]["total_s"] / summary["a"]["ours"]["total_s"]
            with open(path, "w", encoding="utf-8") as f:  # after every part: a timeout keeps what finished
                json.dump(summary, f, indent=1)
    finally:
        shutil.rmtree(base_dir, ignore_errors=True)
    say(f"wrote {path}")
    print("\n" + report(summary))


if __name__ == "__main__":
    main()
