"""One DiT forward: our WanDiT vs ComfyUI's native WanModel, same random weights, same attention kernel.

Full size: 1.3B and 14B T2V at 480x832x81 (latent 21x60x104, 32,760 tokens), bf16, text context 512 tokens.
Both models share the same weight tensors (one copy in VRAM). Our `lightx2v-int8` rows (8-bit attention) are
compared with native's SDPA path, since ComfyUI has no such kernel. Prints s/forward (median of --runs after
--warmup), peak VRAM during the forward and the ratio native/ours. With --quant, our DiT is also run with
its block linears quantized (fp8/int8 W8A8, lightx2v_nodes.quant) against the same native bf16 time. With
--compile, our DiT is also run with torch.compile'd block phases (lightx2v_nodes.wan.compile), in bf16 and in
each --quant format: rows `<attn>+compile` and `<attn>+compile+<fmt>`; `compile_s` is the first (compiling)
call. With --sparse radial (or window), the last of our rows (compiled and quantized where asked, else eager) is
repeated with LightX2V Sparse Attention's default settings at a sparse step (every block but the first sparse; a
4-step run's first step stays dense): row `<row>+radial`. Writes JSON to $OUT or bench/results/.

  python bench/dit_forward.py [--comfyui PATH] [--sizes 1.3B,14B] [--backends lightx2v-int8,sdpa,sage] [--quant fp8,int8] [--compile [--gelu-ab] [--quant-ab] [--norm-quant-ab]] [--rows R1,R2] [--sparse radial] [--tiny]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import time

import torch

from bench_common import ROOT, device_name, results_dir, use_comfyui  # noqa: E402,F401  (puts the repo on sys.path)

from lightx2v_nodes.errors import LightX2VError  # noqa: E402
from lightx2v_nodes.quant import quantize_dit_  # noqa: E402
from lightx2v_nodes.wan import synthetic  # noqa: E402
from lightx2v_nodes.wan.attention import choose_attention  # noqa: E402
from lightx2v_nodes.wan.compile import CompileSettings, compile_blocks  # noqa: E402
from lightx2v_nodes.wan.config import WanConfig  # noqa: E402
from lightx2v_nodes.wan.model import WanDiT  # noqa: E402

SIZES = {
    "1.3B": WanConfig(dim=1536, ffn_dim=8960, num_heads=12, num_layers=30, in_dim=16),
    "14B": WanConfig(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40, in_dim=16),
    "tiny": synthetic.tiny_config("t2v", dim=256, layers=2),
}


def import_comfy(comfy_dir: str, cpu: bool):
    use_comfyui(comfy_dir, cpu)
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


def profile_forward(model, inputs, label, out_dir):
    """Top kernels of one forward by device time (where the time goes, for bench/RESULTS.md)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with torch.inference_mode(), profile(activities=activities) as prof:
        model(*inputs)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    sort = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=sort, row_limit=25, max_name_column_width=70)
    with open(os.path.join(out_dir, f"profile_{label.replace('+', '_')}.txt"), "w") as f:
        f.write(table)


def agreement(out, out_native) -> dict:
    out, ref = out.float().flatten(), out_native.float().flatten()
    return {"rel_err": ((out - ref).norm() / ref.norm()).item(),
            "cosine_vs_native": torch.nn.functional.cosine_similarity(out, ref, dim=0).item()}


def attn8_variant_rows(args, ours, inputs, out_native, rows, size, device):
    """Our bf16 DiT with the 8-bit attention kernel in other P.V variants (kernels/attention_8bit.py defaults),
    against the native time and output already measured for this size."""
    from lightx2v_nodes.kernel_loader import load_kernels

    if not args.attn8_variants:
        return []
    module = load_kernels().attention_8bit
    defaults = (module.PV_DTYPE, module.SPLIT_ACCUMULATION)
    base = next(r for r in rows if r["size"] == size)
    result = []
    ours.set_attention(choose_attention("lightx2v-int8", device, torch.bfloat16))
    for variant in filter(None, args.attn8_variants.split(",")):
        pv, accumulation = variant.split("+")
        module.PV_DTYPE = {"fp8": torch.float8_e4m3fn, "fp16": torch.float16}[pv]
        module.SPLIT_ACCUMULATION = accumulation == "split"
        s, peak, act, out = time_forward(ours, inputs, args.warmup, args.runs, device)
        result.append({"size": size, "backend": f"lightx2v-int8[{variant}]", "native_s": base["native_s"], "ours_s": s,
                       "speedup": base["native_s"] / s, "native_peak_gib": base["native_peak_gib"], "ours_peak_gib": peak,
                       "native_activation_gib": base["native_activation_gib"], "ours_activation_gib": act, **agreement(out, out_native)})
    module.PV_DTYPE, module.SPLIT_ACCUMULATION = defaults
    return result


def install_sparse(model, mask: str, latent, device):
    """LightX2V Sparse Attention's per-block backends on `model` at a sparse step (step 1: the first step is dense)."""
    from lightx2v_nodes.wan.config import PATCH_SIZE
    from lightx2v_nodes.wan.sparse_attention import SparseAttention, SparseSettings, latent_grid

    sparse = SparseAttention(SparseSettings(mask=mask), model.attention)
    sparse.install(model, latent_grid(torch.empty(latent, device="meta"), None, PATCH_SIZE), 1, device)
    return sparse


def wanted(args, name: str) -> bool:
    """--rows filters the quantized and compiled rows of our DiT (the first backend's eager row always runs)."""
    return not args.rows or name in args.rows.split(",")


def compiled_rows(args, cfg, size, weights, inputs, out_native, rows, device, dtype):
    """Our DiT with compiled block phases, bf16 and each --quant format, against the native bf16 time."""
    base = next(r for r in rows if r["size"] == size and "+" not in r["backend"])
    backend = "aot_eager" if args.tiny else "inductor"  # --tiny checks the code path without C++ codegen
    result = []
    # (format, GELU fused into the FFN's quantization, inductor's own activation quantization, LayerNorm fused into it)
    variants = [(None, True, False, True)] + [(fmt, True, False, True) for fmt in filter(None, args.quant.split(","))]
    quantized = [v[0] for v in variants[1:]]
    sparse_variant = (variants[-1][0], True, False, True, args.sparse) if args.sparse else None
    if args.gelu_ab:
        variants += [(fmt, False, False, True) for fmt in quantized]
    if args.quant_ab:
        variants += [(fmt, True, True, False) for fmt in quantized]
    if args.norm_quant_ab:
        variants += [(fmt, True, False, False) for fmt in quantized]
    variants = [v + (None,) for v in variants] + ([sparse_variant] if sparse_variant else [])
    for fmt, gelu_fusion, inductor_quantization, norm_fused, mask in variants:
        name = (f"{base['backend']}+compile" + (f"+{fmt}" if fmt else "") + ("" if gelu_fusion else "+unfused-gelu")
                + ("+inductor-quant" if inductor_quantization else "")
                + ("+unfused-norm-quant" if fmt and not norm_fused and not inductor_quantization else "")
                + (f"+{mask}" if mask else ""))
        if not wanted(args, name):
            continue
        torch._dynamo.reset()  # each variant compiles its own graphs; none evicts another's cache entries
        with torch.device("meta"):
            model = WanDiT(**cfg.unet_config(), dtype=dtype)
        model.load_state_dict(weights, strict=True, assign=True)
        model.set_attention(choose_attention(base["backend"], device, dtype))
        model.set_fusions(norm_quant=norm_fused, gelu_quant=gelu_fusion)
        if fmt:
            quantize_dit_(model, fmt)
        if mask:
            install_sparse(model, mask, inputs[0].shape, device)
        phases = compile_blocks(model, CompileSettings(backend=backend, mode=args.compile_mode,
                                                       inductor_quantization=inductor_quantization))
        if phases is None:
            print(f"skip compile: unavailable on {device}")
            return result
        start = time.perf_counter()
        with torch.inference_mode():
            model(*inputs)
        if device.type == "cuda":
            torch.cuda.synchronize()
        compile_s = time.perf_counter() - start
        s_c, peak_c, act_c, out_c = time_forward(model, inputs, args.warmup, args.runs, device)
        if args.profile:
            profile_forward(model, inputs, f"{size}_{name}", results_dir())
        result.append({"size": size, "backend": name,
                       "native_s": base["native_s"], "ours_s": s_c, "speedup": base["native_s"] / s_c,
                       "native_peak_gib": base["native_peak_gib"], "ours_peak_gib": peak_c,
                       "native_activation_gib": base["native_activation_gib"], "ours_activation_gib": act_c,
                       **agreement(out_c, out_native), "compile_s": compile_s, "compile_failed": phases.failed})
        del model, phases
        gc.collect()  # installed phases reference their blocks (a cycle): free this variant's weights now
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return result


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--comfyui", default=os.path.join(ROOT, ".comfyui"))
    parser.add_argument("--sizes", default="1.3B,14B")
    parser.add_argument("--backends", default="sdpa,sage")
    parser.add_argument("--quant", default="", help="comma list of fp8,int8: also time our DiT quantized (first backend)")
    parser.add_argument("--compile", action="store_true", help="also time our DiT with torch.compile'd blocks (first backend)")
    parser.add_argument("--profile", action="store_true",
                        help="after timing, profile one forward of each of our rows: top CUDA kernels to $OUT/profile_*.txt")
    parser.add_argument("--compile-mode", default="default", help="LightX2V Compile DiT's mode for the compiled rows")
    parser.add_argument("--quant-ab", action="store_true",
                        help="with --compile --quant: also time each quantized compiled row with inductor's own activation "
                        "quantization instead of our kernels, LayerNorm + modulation included (rows +inductor-quant)")
    parser.add_argument("--norm-quant-ab", action="store_true",
                        help="with --compile --quant: also time each quantized compiled row with the block's LayerNorms and "
                        "modulation unfused from the quantization (rows +unfused-norm-quant)")
    parser.add_argument("--gelu-ab", action="store_true",
                        help="with --compile --quant: also time each quantized compiled row with GELU unfused from the quantization")
    parser.add_argument("--rows", default="", help="comma list of our quantized/compiled rows to run, e.g. "
                        "lightx2v-int8+compile+fp8 (default: all that --quant and --compile ask for)")
    parser.add_argument("--sparse", default="", help="radial or window: also time our last row with LightX2V Sparse "
                        "Attention's default settings (needs the lightx2v-int8 backend first in --backends)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tiny", action="store_true", help="CPU smoke run at a tiny shape")
    parser.add_argument("--attn8-variants", default="",
                        help="comma list of pv dtype + accumulation for extra lightx2v-int8 rows, e.g. fp16+split,fp8+mma")
    args = parser.parse_args()

    device = torch.device("cpu" if args.tiny else "cuda")
    dtype = torch.float32 if args.tiny else torch.bfloat16
    comfy_wan, comfy_attention, comfy_ops = import_comfy(args.comfyui, cpu=args.tiny)
    # ComfyUI has no 8-bit kernel of its own: our lightx2v-int8 rows are compared with its SDPA path.
    native_kernels = {"sdpa": comfy_attention.attention_pytorch, "sage": getattr(comfy_attention, "attention_sage", None),
                      "lightx2v-int8": comfy_attention.attention_pytorch}
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
                chosen = choose_attention(backend, device, dtype)
            except LightX2VError as exc:
                print(f"skip {backend}: {exc}")
                continue
            if chosen.name != backend:
                print(f"skip {backend}: {chosen.description}")
                continue
            ours.set_attention(chosen)
            if native_kernels.get(backend) is None:
                print(f"skip {backend}: ComfyUI has no such kernel")
                continue
            comfy_wan.optimized_attention = native_kernels[backend]
            s_native, peak_native, act_native, out_native = time_forward(native, (x, t, context), args.warmup, args.runs, device)
            s_ours, peak_ours, act_ours, out_ours = time_forward(ours, (x, t, context), args.warmup, args.runs, device)
            if args.profile:
                profile_forward(ours, (x, t, context), f"{size}_{backend}", results_dir())
                profile_forward(native, (x, t, context), f"{size}_{backend}_native", results_dir())
            rows.append({"size": size, "backend": backend, "native_s": s_native, "ours_s": s_ours,
                         "speedup": s_native / s_ours, "native_peak_gib": peak_native, "ours_peak_gib": peak_ours,
                         "native_activation_gib": act_native, "ours_activation_gib": act_ours,
                         **agreement(out_ours, out_native)})
        if rows:
            rows += attn8_variant_rows(args, ours, (x, t, context), out_native, rows, size, device)
        for fmt in filter(None, args.quant.split(",")):
            row = next((r for r in rows if r["size"] == size), None)
            if row is None or not wanted(args, f"{row['backend']}+{fmt}"):
                continue
            with torch.device("meta"):
                quant = WanDiT(**cfg.unet_config(), dtype=dtype)
            quant.load_state_dict(weights, strict=True, assign=True)
            quant.set_attention(choose_attention(row["backend"], device, dtype))
            quantize_dit_(quant, fmt)  # new 8-bit tensors; the bf16 ones stay shared with the native model
            weight_gib = sum(t.numel() * t.element_size() for t in quant.state_dict().values()) / 2**30
            s_q, peak_q, act_q, out_q = time_forward(quant, (x, t, context), args.warmup, args.runs, device)
            if args.profile:
                profile_forward(quant, (x, t, context), f"{size}_{row['backend']}_{fmt}", results_dir())
            rows.append({"size": size, "backend": f"{row['backend']}+{fmt}", "native_s": row["native_s"], "ours_s": s_q,
                         "speedup": row["native_s"] / s_q, "native_peak_gib": row["native_peak_gib"], "ours_peak_gib": peak_q,
                         "native_activation_gib": row["native_activation_gib"], "ours_activation_gib": act_q,
                         **agreement(out_q, out_native), "ours_weight_gib": weight_gib})
            del quant
        if args.sparse and not args.compile and rows and rows[0]["backend"] == "lightx2v-int8":
            last = rows[-1]
            with torch.device("meta"):
                model = WanDiT(**cfg.unet_config(), dtype=dtype)
            model.load_state_dict(weights, strict=True, assign=True)
            model.set_attention(choose_attention("lightx2v-int8", device, dtype))
            fmt = last["backend"].split("+")[1] if "+" in last["backend"] else None
            if fmt:
                quantize_dit_(model, fmt)
            install_sparse(model, args.sparse, x.shape, device)
            s_s, peak_s, act_s, out_s = time_forward(model, (x, t, context), args.warmup, args.runs, device)
            rows.append({**last, "backend": f"{last['backend']}+{args.sparse}", "ours_s": s_s,
                         "speedup": last["native_s"] / s_s, "ours_peak_gib": peak_s, "ours_activation_gib": act_s,
                         **agreement(out_s, out_native)})
            del model
        if args.compile and rows:
            rows += compiled_rows(args, cfg, size, weights, (x, t, context), out_native, rows, device, dtype)
        del native, ours, weights
        if device.type == "cuda":
            torch.cuda.empty_cache()

    out_dir = results_dir()
    name = device_name(device)
    with open(os.path.join(out_dir, "dit_forward.json"), "w") as f:
        json.dump({"device": name, "torch": torch.__version__, "latent": latent, "rows": rows}, f, indent=1)
    print(f"\nDiT forward, {name}, latent {latent}, {dtype}")
    print(f"{'size':>5} {'attn':>28} {'native s':>9} {'ours s':>8} {'speedup':>8} {'peak nat':>9} {'peak ours':>9} "
          f"{'rel err':>8} {'cosine':>8}")
    for r in rows:
        print(f"{r['size']:>5} {r['backend']:>28} {r['native_s']:9.3f} {r['ours_s']:8.3f} {r['speedup']:8.3f} "
              f"{r['native_peak_gib']:9.2f} {r['ours_peak_gib']:9.2f} {r['rel_err']:8.1e} {r['cosine_vs_native']:8.5f}")


if __name__ == "__main__":
    main()
