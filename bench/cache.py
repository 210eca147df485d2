"""Feature caches on a full multi-step run: wall-clock and final-latent error of each method vs no cache.

Our WanDiT standalone (no ComfyUI sampler): T2V 1.3B, random bf16 weights, 480x832x81 (latent 21x60x104),
Euler flow sampling with CFG (cond and uncond batched, as ComfyUI does), default 50 steps, cfg 5.
Methods: none, teacache (e0), teacache-e, magcache, adaptive, and easycache = ComfyUI's own EasyCache
forward wrapper (comfy_extras/nodes_easycache.py) around the same DiT, when ComfyUI is importable.
Each method at its default threshold. Prints seconds, speed-up, skipped passes, relative error of the
final latent vs none and the cond skip pattern (C computed, S skipped); writes JSON to $OUT or bench/results/.
Random weights do not change like trained ones: the TeaCache/MagCache patterns follow the schedule and the
tables, the adaptive/EasyCache ones follow these random features.

  python bench/cache.py [--steps 50] [--frames 81] [--methods none,teacache,...] [--comfyui PATH] [--tiny]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
import uuid

import torch

from bench_common import ROOT, device_name, results_dir, use_comfyui  # noqa: E402,F401  (puts the repo on sys.path)

from lightx2v_nodes.cache.settings import CacheSettings, start_run  # noqa: E402
from lightx2v_nodes.wan import synthetic  # noqa: E402
from lightx2v_nodes.wan.config import WanConfig  # noqa: E402
from lightx2v_nodes.wan.model import FEATURE_CACHE_KEY, WanDiT  # noqa: E402

SIZES = {
    "1.3B": WanConfig(dim=1536, ffn_dim=8960, num_heads=12, num_layers=30, in_dim=16),
    "14B": WanConfig(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40, in_dim=16),
}
METHODS = {
    "teacache": CacheSettings("teacache", teacache_mode="e0"),
    "teacache-e": CacheSettings("teacache", teacache_mode="e"),
    "magcache": CacheSettings("magcache"),
    "adaptive": CacheSettings("adaptive"),
}
EASYCACHE_THRESHOLD, EASYCACHE_START, EASYCACHE_END = 0.2, 0.15, 0.95  # the native node's defaults


def random_model(cfg: WanConfig, device, dtype) -> WanDiT:
    """Random weights generated on the device, scaled like synthetic.random_state_dict."""
    gen = torch.Generator(device=device).manual_seed(0)
    weights = {}
    for key, shape in synthetic.parameter_shapes(cfg).items():
        t = torch.randn(shape, generator=gen, device=device)
        if len(shape) >= 2 and not key.endswith("modulation"):
            t /= (torch.tensor(shape[1:]).prod().item()) ** 0.5
        elif "norm" in key and key.endswith("weight"):
            t = 1.0 + 0.1 * t
        else:
            t *= 0.05
        weights[key] = t.to(torch.float32 if key.startswith("patch_embedding.") else dtype)
    with torch.device("meta"):
        model = WanDiT(**cfg.unet_config(), dtype=dtype)
    model.load_state_dict(weights, strict=True, assign=True)
    return model.eval().requires_grad_(False)


def flow_sigmas(steps: int, shift: float, device) -> torch.Tensor:
    t = torch.linspace(1.0, 0.0, steps + 1, device=device, dtype=torch.float64)
    return (shift * t / (1 + (shift - 1) * t)).float()


def sample(model, noise, context, sigmas, cfg_scale, cache_run=None, easycache=None):
    """Euler flow sampling with CFG; returns (final latent, cond skip pattern of EasyCache or None)."""
    x, uuids, pattern = noise, [uuid.uuid4(), uuid.uuid4()], ""
    for i in range(len(sigmas) - 1):
        opts = {"sigmas": sigmas[i].repeat(2), "cond_or_uncond": [0, 1], "uuids": uuids}
        batch, timestep = x.repeat(2, 1, 1, 1, 1).to(model.dtype), (sigmas[i] * 1000).repeat(2)
        if cache_run is not None:
            opts[FEATURE_CACHE_KEY] = cache_run
        if easycache is not None:
            holder, wrapper = easycache
            opts["easycache"], holder.skip_current_step, before = holder, False, holder.total_steps_skipped
            out = wrapper(model, batch, timestep, context, transformer_options=opts)
            pattern += "S" if holder.total_steps_skipped > before else "C"
        else:
            out = model(batch, timestep, context, transformer_options=opts)
        cond, uncond = out.float().chunk(2)
        x = x + (sigmas[i + 1] - sigmas[i]) * (uncond + cfg_scale * (cond - uncond)).to(x.dtype)
    return x, pattern


def native_easycache(comfy_dir: str, cpu: bool, shift: float):
    """ComfyUI's EasyCache holder + forward wrapper, or None when ComfyUI cannot be imported."""
    try:
        use_comfyui(comfy_dir, cpu)
        import comfy.model_sampling
        from comfy_extras.nodes_easycache import EasyCacheHolder, easycache_forward_wrapper
    except Exception as exc:  # noqa: BLE001 - any import failure just drops the comparison
        print(f"native EasyCache not compared: {exc}")
        return None
    sampling = comfy.model_sampling.ModelSamplingDiscreteFlow()
    sampling.set_parameters(shift=shift)
    holder = EasyCacheHolder(EASYCACHE_THRESHOLD, EASYCACHE_START, EASYCACHE_END, subsample_factor=8,
                             offload_cache_diff=False, output_channels=16)
    return holder.prepare_timesteps(sampling), easycache_forward_wrapper


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", default="1.3B", choices=list(SIZES))
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--cfg", type=float, default=5.0)
    parser.add_argument("--shift", type=float, default=5.0)
    parser.add_argument("--methods", default="none,teacache,teacache-e,magcache,adaptive,easycache")
    parser.add_argument("--comfyui", default=os.path.join(ROOT, ".comfyui"))
    parser.add_argument("--tiny", action="store_true", help="CPU smoke run: tiny model and latent, 12 steps")
    args = parser.parse_args()

    device = torch.device("cpu" if args.tiny else "cuda")
    dtype = torch.float32 if args.tiny else torch.bfloat16
    cfg = synthetic.tiny_config("t2v") if args.tiny else SIZES[args.size]
    steps = 12 if args.tiny else args.steps
    latent = (1, 16, 2, 8, 8) if args.tiny else (1, 16, (args.frames - 1) // 4 + 1, args.height // 8, args.width // 8)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    model = random_model(cfg, device, dtype)
    gen = torch.Generator(device=device).manual_seed(1)
    noise = torch.randn(latent, generator=gen, device=device, dtype=torch.float32)
    context = (torch.randn(2, 12 if args.tiny else 512, 4096, generator=gen, device=device) * 0.2).to(dtype)
    sigmas = flow_sigmas(steps, args.shift, device)
    methods = args.methods.split(",")
    if "none" not in methods:
        methods.insert(0, "none")
    methods.sort(key=lambda m: m != "none")

    with torch.inference_mode():
        model(noise.repeat(2, 1, 1, 1, 1).to(dtype), sigmas[:1].repeat(2) * 1000, context)  # warm-up
        rows, reference = [], None
        for method in methods:
            cache_run = easycache = None
            if method in METHODS:
                # The tiny model has no table entry: borrow the 1.3B numbers through the variant override.
                settings = dataclasses.replace(METHODS[method], variant="T2V 1.3B") if args.tiny else METHODS[method]
                cache_run = start_run(settings, cfg, sigmas, latent[-2:])
            elif method == "easycache":
                easycache = native_easycache(args.comfyui, args.tiny, args.shift)
                if easycache is None:
                    continue
            elif method != "none":
                raise SystemExit(f"unknown method {method}")
            sync()
            start = time.perf_counter()
            final, easy_pattern = sample(model, noise, context, sigmas, args.cfg, cache_run, easycache)
            sync()
            seconds = time.perf_counter() - start
            if reference is None:
                reference = final
            summary = cache_run.summary() if cache_run else None
            row = {
                "method": method, "seconds": seconds,
                "label": summary["method"] if summary else ("ComfyUI EasyCache, threshold 0.2" if easycache else "no cache"),
                "skipped_passes": summary["skipped"] if summary else 2 * easy_pattern.count("S"),
                "passes": 2 * steps,
                "rel_err": ((final - reference).norm() / reference.norm()).item(),
                "pattern": summary["patterns"]["cond"] if summary else (easy_pattern or "C" * steps),
            }
            rows.append(row)
            print(f"{method}: {seconds:.2f} s, {row['skipped_passes']}/{row['passes']} skipped, {row['pattern']}", flush=True)
    for row in rows:
        row["speedup"] = rows[0]["seconds"] / row["seconds"]

    out_dir = results_dir()
    name = device_name(device)
    with open(os.path.join(out_dir, "cache.json"), "w") as f:
        json.dump({"device": name, "torch": torch.__version__, "model": cfg.variant, "latent": latent,
                   "steps": steps, "cfg": args.cfg, "shift": args.shift, "rows": rows}, f, indent=1)
    print(f"\nFeature caches, {cfg.variant} random weights, {name}, latent {latent}, {steps} steps, cfg {args.cfg}")
    print(f"{'method':>11} {'seconds':>8} {'speed-up':>8} {'skipped':>8} {'rel err':>8}  cond pattern")
    for r in rows:
        print(f"{r['method']:>11} {r['seconds']:8.2f} {r['speedup']:8.2f} {r['skipped_passes']:>4}/{r['passes']:<3} "
              f"{r['rel_err']:8.1e}  {r['pattern']}")


if __name__ == "__main__":
    main()
