"""Video decode of a Wan2.1 latent: our TAEHV modes vs ComfyUI's TAEHV and ComfyUI's full Wan VAE.

Full size: a 21x60x104 latent (81 frames at 480x832), random weights, TAEHV in fp16, the Wan VAE in
bf16, all in one process. Each model is on the GPU only while it is measured, so "peak" is the
whole decode's VRAM (weights, input, activations and the output video). Prints seconds per decode
(median of --runs after --warmup), peak VRAM, speedups and our error against ComfyUI's TAEHV, and
writes JSON to $OUT or bench/results/.

  python bench/tiny_vae.py [--comfyui PATH] [--chunk-mb 128,256,512] [--skip-wan-vae] [--tiny]

The GPU machine has no ComfyUI install: its source is imported from --comfyui (default <repo>/.comfyui).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time

import torch

from bench_common import ROOT, device_name, results_dir, use_comfyui  # noqa: E402,F401  (puts the repo on sys.path)

from lightx2v_nodes.vae import checkpoint, synthetic  # noqa: E402
from lightx2v_nodes.vae.taehv import DEFAULT_CHUNK_MB  # noqa: E402

WAN21_VAE_CONFIG = {"dim": 96, "z_dim": 16, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_scales": [],
                    "temperal_downsample": [False, True, True], "dropout": 0.0}


def import_comfy(comfy_dir: str, cpu: bool):
    use_comfyui(comfy_dir, cpu)
    import comfy.ldm.wan.vae as comfy_wan_vae
    import comfy.taesd.taehv as comfy_taehv

    return comfy_taehv, comfy_wan_vae


def random_wan_vae(comfy_wan_vae, dtype):
    """ComfyUI's Wan2.1 VAE with random weights (its layers skip initialisation, so every weight is set)."""
    model = comfy_wan_vae.WanVAE(**WAN21_VAE_CONFIG)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma"):
                p.fill_(1.0)
            elif p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(math.prod(p.shape[1:])))
            else:
                p.zero_()
    model.encoder = None  # only decoding is measured
    return model.to(dtype).eval().requires_grad_(False)


def measure(name, model, decode, latents, device, warmup, runs):
    """(median seconds, peak GiB, output) of decode(latents) with the model on the device only meanwhile."""
    cuda = device.type == "cuda"
    model.to(device)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    with torch.inference_mode():
        for _ in range(warmup):
            out = decode(latents)
            del out
        sync()
        times, peak = [], 0
        for _ in range(runs):
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            sync()
            start = time.perf_counter()
            out = decode(latents)
            sync()
            times.append(time.perf_counter() - start)
            if cuda:
                peak = max(peak, torch.cuda.max_memory_allocated())
            if len(times) < runs:
                del out
    model.to("cpu")
    out = out.to("cpu", torch.float32)
    if cuda:
        torch.cuda.empty_cache()
    seconds = statistics.median(times)
    print(f"  {name:<34} {seconds:8.4f} s  peak {peak / 2**30:6.2f} GiB", flush=True)
    return seconds, peak / 2**30, out


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--comfyui", default=os.path.join(ROOT, ".comfyui"))
    parser.add_argument("--chunk-mb", default=None,
                        help="budgets (MiB) to measure our chunked mode at, e.g. 128,256,512 (the default); "
                             "the default budget is always included and marked")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--skip-wan-vae", action="store_true")
    parser.add_argument("--tiny", action="store_true", help="CPU smoke run at a tiny shape")
    args = parser.parse_args()

    device = torch.device("cpu" if args.tiny else "cuda")
    tae_dtype = torch.float32 if args.tiny else torch.float16
    wan_dtype = torch.float32 if args.tiny else torch.bfloat16
    latent_shape = (1, 16, 3, 4, 6) if args.tiny else (1, 16, 21, 60, 104)
    comfy_taehv, comfy_wan_vae = import_comfy(args.comfyui, cpu=args.tiny)

    weights = synthetic.random_taehv_state_dict(16, seed=0)
    ours = checkpoint.build_taehv(weights, tae_dtype)
    theirs = comfy_taehv.TAEHV(latent_channels=16, latent_format=None, show_progress_bar=False)
    theirs.load_state_dict(weights, strict=True)
    theirs = theirs.to(tae_dtype).eval().requires_grad_(False)
    latents = torch.randn(latent_shape, generator=torch.Generator().manual_seed(1)).to(device)

    print(f"decode of a {latent_shape} latent on {device}, TAEHV {tae_dtype}, Wan VAE {wan_dtype}")
    rows = []

    def add(name, model, decode, dtype, **extra):
        s, peak, out = measure(name, model, decode, latents.to(dtype), device, args.warmup, args.runs)
        rows.append({"name": name, "seconds": s, "peak_gib": peak, **extra})
        return out

    theirs.parallel = True
    reference = add("ComfyUI TAEHV parallel", theirs, theirs.decode, tae_dtype, kind="comfy_taehv").clamp(0, 1)
    theirs.parallel = False
    add("ComfyUI TAEHV sequential", theirs, theirs.decode, tae_dtype, kind="comfy_taehv")
    # The tiny shape needs tiny budgets for the chunked mode to cut anything.
    chunk_mb = args.chunk_mb or ("0.05,0.25" if args.tiny else f"{DEFAULT_CHUNK_MB // 2},{DEFAULT_CHUNK_MB * 2}")
    budgets = [float(b) for b in chunk_mb.split(",")]
    if DEFAULT_CHUNK_MB not in budgets:
        budgets.append(DEFAULT_CHUNK_MB)
    ours_runs = [("parallel", None), ("sequential", None)] + [("chunked", b) for b in sorted(budgets)]
    for mode, budget in ours_runs:
        label = f"ours {mode}" + (f" {budget:g} MiB" if budget else "") + (" (default)" if budget == DEFAULT_CHUNK_MB else "")
        out = add(label, ours, lambda x, m=mode, b=budget: ours.decode(x, mode=m, chunk_mb=b), tae_dtype,
                  kind="ours", mode=mode, chunk_mb=budget, default=budget == DEFAULT_CHUNK_MB)
        rows[-1]["rel_err_vs_comfy_taehv"] = rel_err(out, reference)
        assert out.shape == reference.shape, (out.shape, reference.shape)
    if not args.skip_wan_vae:
        wan = random_wan_vae(comfy_wan_vae, wan_dtype)
        add("ComfyUI Wan2.1 VAE (full)", wan, wan.decode, wan_dtype, kind="wan_vae")
        del wan

    wan_row = next((r for r in rows if r["kind"] == "wan_vae"), None)
    comfy_fast = min(r["seconds"] for r in rows if r["kind"] == "comfy_taehv")
    for r in rows:
        r["speedup_vs_wan_vae"] = wan_row["seconds"] / r["seconds"] if wan_row else None
        r["speedup_vs_best_comfy_taehv"] = comfy_fast / r["seconds"]

    out_dir = results_dir()
    name = device_name(device)
    with open(os.path.join(out_dir, "tiny_vae.json"), "w") as f:
        json.dump({"device": name, "torch": torch.__version__, "latent": latent_shape,
                   "taehv_dtype": str(tae_dtype), "wan_vae_dtype": str(wan_dtype), "rows": rows}, f, indent=1)

    print(f"\nTiny VAE decode, {name}, latent {latent_shape} -> {reference.shape[2]} frames "
          f"{reference.shape[3]}x{reference.shape[4]}")
    print(f"{'decoder':<36} {'s':>8} {'peak GiB':>9} {'x Wan VAE':>10} {'x ComfyUI':>10} {'rel err':>8}")
    for r in rows:
        vs_wan = f"{r['speedup_vs_wan_vae']:10.1f}" if r["speedup_vs_wan_vae"] else f"{'-':>10}"
        err = f"{r['rel_err_vs_comfy_taehv']:8.1e}" if "rel_err_vs_comfy_taehv" in r else f"{'-':>8}"
        print(f"{r['name']:<36} {r['seconds']:8.4f} {r['peak_gib']:9.2f} {vs_wan} {r['speedup_vs_best_comfy_taehv']:10.2f} {err}")


if __name__ == "__main__":
    main()
