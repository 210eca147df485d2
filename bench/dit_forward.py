"""One DiT forward: our WanDiT vs ComfyUI's native WanModel, same random weights, same attention kernel.

Full size: 1.3B and 14B T2V at 480x832x81 (latent 21x60x104, 32,760 tokens), bf16, text context 512 tokens.
Both models share the same weight tensors (one copy in VRAM). Prints s/forward (median of --runs after
--warmup), peak VRAM during the forward and the ratio native/ours. Writes JSON to $OUT or bench/results/.

  python bench/dit_forward.py [--comfyui PATH] [--sizes 1.3B,14B] [--backends sdpa,sage] [--tiny]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from lightx2v_nodes.wan import synthetic  # noqa: E402
from lightx2v_nodes.wan.config import WanConfig  # noqa: E402
from lightx2v_nodes.wan.model import WanDiT  # noqa: E402

SIZES = {
    "1.3B": WanConfig(dim=1536, ffn_dim=8960, num_heads=12, num_layers=30, in_dim=16),
    "14B": WanConfig(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40, in_dim=16),
    "tiny": synthetic.tiny_config("t2v", dim=256, layers=2),
}


def import_comfy(comfy_dir: str, cpu: bool):
    sys.path.insert(0, comfy_dir)
    import comfy.cli_args

    comfy.cli_args.args.cpu = cpu
    import comfy.ldm.modules.attention as comfy_attention
    import comfy.ldm.wan.model as comfy_wan
    import comfy.ops

    return comfy_wan, comfy_attention, comfy.ops


def random_weights(cfg: WanConfig, device, dtype):
    gen = torch.Generator(device=device).manual_seed(0)
    weights = {}
    for key, shape in synthetic.parameter_shapes(cfg).items():
        scale = 0.1 if len(shape) != 2 else shape[1] ** -0.5
        target = torch.float32 if key.startswith("patch_embedding.") else dtype
        t = torch.randn(shape, generator=gen, device=device, dtype=torch.float32).mul_(scale)
        if len(shape) == 1 and "norm" in key and key.endswith("weight"):
            t.add_(1.0)
        weights[key] = t.to(target)
    return weights


def time_forward(model, inputs, warmup, runs, device):
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with torch.inference_mode():
        for _ in range(warmup):
            model(*inputs)
        sync()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() if device.type == "cuda" else 0
        times = []
        for _ in range(runs):
            sync()
            start = time.perf_counter()
            out = model(*inputs)
            sync()
            times.append(time.perf_counter() - start)
        peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else 0
    return statistics.median(times), peak / 2**30, (peak - base) / 2**30, out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--comfyui", default=os.path.join(ROOT, ".comfyui"))
    parser.add_argument("--sizes", default="1.3B,14B")
    parser.add_argument("--backends", default="sdpa,sage")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tiny", action="store_true", help="CPU smoke run at a tiny shape")
    args = parser.parse_args()

    device = torch.device("cpu" if args.tiny else "cuda")
    dtype = torch.float32 if args.tiny else torch.bfloat16
    comfy_wan, comfy_attention, comfy_ops = import_comfy(args.comfyui, cpu=args.tiny)
    native_kernels = {"sdpa": comfy_attention.attention_pytorch, "sage": getattr(comfy_attention, "attention_sage", None)}
    latent = (1, 16, 3, 8, 8) if args.tiny else (1, 16, 21, 60, 104)
    sizes = ["tiny"] if args.tiny else args.sizes.split(",")
    rows = []
    for size in sizes:
        cfg = SIZES[size]
        weights = random_weights(cfg, device, dtype)
        with torch.device("meta"):
            native = comfy_wan.WanModel(**cfg.unet_config(), operations=comfy_ops.disable_weight_init, dtype=dtype)
            ours = WanDiT(**cfg.unet_config(), dtype=dtype)
        native.load_state_dict(weights, strict=True, assign=True)
        ours.load_state_dict(weights, strict=True, assign=True)
        gen = torch.Generator(device=device).manual_seed(1)
        x = torch.randn(latent, generator=gen, device=device, dtype=dtype)
        t = torch.tensor([937.5], device=device)
        context = torch.randn(1, 512, 4096, generator=gen, device=device, dtype=dtype)
        for backend in args.backends.split(","):
            try:
                ours.set_attention(backend)
            except ValueError as exc:
                print(f"skip {backend}: {exc}")
                continue
            if native_kernels.get(backend) is None:
                print(f"skip {backend}: ComfyUI has no such kernel")
                continue
            comfy_wan.optimized_attention = native_kernels[backend]
            s_native, peak_native, act_native, out_native = time_forward(native, (x, t, context), args.warmup, args.runs, device)
            s_ours, peak_ours, act_ours, out_ours = time_forward(ours, (x, t, context), args.warmup, args.runs, device)
            rel = ((out_ours.float() - out_native.float()).norm() / out_native.float().norm()).item()
            rows.append({"size": size, "backend": backend, "native_s": s_native, "ours_s": s_ours,
                         "speedup": s_native / s_ours, "native_peak_gib": peak_native, "ours_peak_gib": peak_ours,
                         "native_activation_gib": act_native, "ours_activation_gib": act_ours, "rel_err": rel})
        del native, ours, weights
        if device.type == "cuda":
            torch.cuda.empty_cache()

    out_dir = os.environ.get("OUT") or os.path.join(ROOT, "bench", "results")
    os.makedirs(out_dir, exist_ok=True)
    device_name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    with open(os.path.join(out_dir, "dit_forward.json"), "w") as f:
        json.dump({"device": device_name, "torch": torch.__version__, "latent": latent, "rows": rows}, f, indent=1)
    print(f"\nDiT forward, {device_name}, latent {latent}, {dtype}")
    print(f"{'size':>5} {'attn':>5} {'native s':>9} {'ours s':>8} {'speedup':>8} {'peak nat':>9} {'peak ours':>9} {'rel err':>8}")
    for r in rows:
        print(f"{r['size']:>5} {r['backend']:>5} {r['native_s']:9.3f} {r['ours_s']:8.3f} {r['speedup']:8.3f} "
              f"{r['native_peak_gib']:9.2f} {r['ours_peak_gib']:9.2f} {r['rel_err']:8.1e}")


if __name__ == "__main__":
    main()
