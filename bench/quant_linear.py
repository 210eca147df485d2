"""Quantized linears at the Wan2.1 14B shapes: every backend vs bf16 F.linear, TFLOP/s and speed-up.

Shapes (480x832x81 -> 32,760 video tokens; text context 512 tokens, CLIP image context 257):
  attn 5120->5120 x 32760 (self q/k/v/o, cross q/o: 6 per block), ffn.0 5120->13824, ffn.2 13824->5120,
  cross k/v 5120->5120 x 512 (2 per block), I2V k_img/v_img 5120->5120 x 257 (2 per block).
Backends: bf16 (F.linear), fp8 scaled_mm / triton / weight-only, int8 int_mm / triton / weight-only, each
including the per-token activation quantization; `*-gemm` rows time the matmul alone (activations already
quantized), `act-quant` the quantization alone. Cosine vs the bf16 output is reported for every backend.
`fp8 triton` lets Hopper's fp8 tensor cores accumulate all of K in their reduced-precision accumulator (the
default); `fp8 triton (promoted)` adds each K-tile's partial sum into float32 instead. The accumulation table (GPU)
gives each fp8 GEMM's error against a float64 reference, as a fraction of the sum of absolute products.
Median of --runs after --warmup, CUDA events. The per-block line sums one block's linears (T2V).
Writes JSON to $OUT or bench/results/quant_linear.json; prints the table last.

  python bench/quant_linear.py [--runs 20] [--warmup 5] [--backends ...] [--tma-tiles 'BM,BN,BK,warps,stages;...'] [--tiny]
On a GPU with fp8 it also times the 8192^3 GEMM ceilings (bf16 F.linear, fp8 _scaled_mm, our fp8 GEMM).
  (TRITON_INTERPRET=1 with --tiny also runs the Triton backends, interpreted, on the CPU)
"""

from __future__ import annotations

import argparse
import json
import os

import torch
import torch.nn.functional as F

from bench_common import ROOT, device_name, median_seconds, results_dir, use_comfyui  # noqa: E402,F401  (puts the repo on sys.path)

from lightx2v_nodes.quant import backends, install_quant_linears, quantize_weight  # noqa: E402
from lightx2v_nodes.quant.formats import FORMATS  # noqa: E402
from lightx2v_nodes.kernel_loader import load_kernels  # noqa: E402

from lightx2v_nodes.wan import synthetic  # noqa: E402
from lightx2v_nodes.wan.config import WanConfig  # noqa: E402
from lightx2v_nodes.wan.model import WanDiT  # noqa: E402

kernels = load_kernels()
MODELS = {
    "14B T2V": WanConfig(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40, in_dim=16),
    "14B I2V": WanConfig(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40, in_dim=36, model_type="i2v"),
}

# name: (tokens, in, out, count per T2V block)
FULL_SHAPES = {
    "attn 5120x5120": (32760, 5120, 5120, 6),
    "ffn.0 5120->13824": (32760, 5120, 13824, 1),
    "ffn.2 13824->5120": (32760, 13824, 5120, 1),
    "cross k/v (512 tok)": (512, 5120, 5120, 2),
    "k_img/v_img (257 tok)": (257, 5120, 5120, 0),
}
TINY_SHAPES = {
    "attn 256x256": (96, 256, 256, 6),
    "ffn.0 256->512": (96, 256, 512, 1),
    "ffn.2 512->256": (96, 512, 256, 1),
    "cross k/v (24 tok)": (24, 256, 256, 2),
}
def triton_promoted(x, weight, scale, bias):
    xq, sx = kernels.quantize_per_token(x, weight.dtype)
    return kernels.scaled_gemm(xq, sx, weight, scale, bias, out_dtype=x.dtype, fp8_promote=True)


# backend name -> (format, function of (x, weight, scale, bias), needs CUDA)
BACKENDS = {
    "bf16": (None, None, False),
    "fp8 scaled_mm": ("fp8", backends.scaled_mm, True),
    "fp8 triton": ("fp8", backends.triton, True),
    "fp8 triton (promoted)": ("fp8", triton_promoted, True),
    "fp8 weight-only": ("fp8", backends.weight_only, False),
    "int8 int_mm": ("int8", backends.int_mm, True),
    "int8 triton": ("int8", backends.triton, True),
    "int8 weight-only": ("int8", backends.weight_only, False),
    "fp8 reference": ("fp8", backends.reference, False),
    "int8 reference": ("int8", backends.reference, False),
}
DEFAULT_FULL = [b for b in BACKENDS if "reference" not in b]


def cosine(a, b):
    a, b = a.float().flatten(), b.float().flatten()
    return (a @ b / (a.norm() * b.norm())).item()


def available(name, device, capability):
    fmt, _, needs_cuda = BACKENDS[name]
    interpreted = "triton" in name and os.environ.get("TRITON_INTERPRET") == "1"  # --tiny on the CPU
    if needs_cuda and device.type != "cuda" and not interpreted:
        return "needs CUDA"
    if device.type == "cuda" and name.startswith("fp8") and "weight-only" not in name and "reference" not in name and capability < (8, 9):
        return "needs compute capability >= 8.9"
    if "triton" in name and not kernels.TRITON_AVAILABLE:
        return "Triton not installed"
    return None


def bench_shape(label, m, k, n, names, device, measure, warmup, runs):
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(m, k, generator=gen, device=device, dtype=torch.float32).to(torch.bfloat16)
    w = (torch.randn(n, k, generator=gen, device=device, dtype=torch.float32) / k ** 0.5).to(torch.bfloat16)
    bias = (0.02 * torch.randn(n, generator=gen, device=device)).to(torch.bfloat16)
    flop = 2.0 * m * k * n
    reference_out = F.linear(x, w, bias)
    capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else (0, 0)
    rows, t_bf16 = [], None
    quantized = {fmt: quantize_weight(w, fmt) for fmt in FORMATS}
    for name in names:
        reason = available(name, device, capability)
        if reason:
            rows.append({"shape": label, "backend": name, "skipped": reason})
            continue
        fmt, fn, _ = BACKENDS[name]
        if fmt is None:
            call = lambda: F.linear(x, w, bias)  # noqa: E731
        else:
            wq, sw = quantized[fmt]
            call = lambda fn=fn, wq=wq, sw=sw: fn(x, wq, sw, bias)  # noqa: E731
        try:
            out = call()
            seconds = measure(call, warmup, runs)
        except Exception as exc:  # report and go on: one broken backend must not hide the others
            rows.append({"shape": label, "backend": name, "skipped": f"failed: {str(exc).splitlines()[0][:120]}"})
            continue
        if fmt is None:
            t_bf16 = seconds
        rows.append({"shape": label, "backend": name, "tokens": m, "in": k, "out": n, "ms": seconds * 1e3,
                     "tflops": flop / seconds / 1e12, "cosine_vs_bf16": cosine(out, reference_out)})
        if fn in (backends.scaled_mm, backends.int_mm, backends.triton, triton_promoted):
            rows.extend(gemm_only_rows(label, name, x, wq, sw, bias, flop, measure, warmup, runs))
    for row in rows:
        if "ms" in row and t_bf16:
            row["speedup_vs_bf16"] = t_bf16 * 1e3 / row["ms"]
    return rows


def gemm_only_rows(label, name, x, wq, sw, bias, flop, measure, warmup, runs):
    """The same backend split into its two launches: activation quantization, then the GEMM alone."""
    qdtype = wq.dtype
    xq, sx = kernels.quantize_per_token(x, qdtype) if kernels.TRITON_AVAILABLE else kernels.quantize_per_token_reference(x, qdtype)
    if "scaled_mm" in name:
        gemm = lambda: torch._scaled_mm(xq, wq.t(), scale_a=sx, scale_b=sw.reshape(1, -1), bias=bias, out_dtype=torch.bfloat16)  # noqa: E731
    elif "int_mm" in name:
        gemm = lambda: torch._int_mm(xq, wq.t())  # noqa: E731
    else:
        promote = True if "promoted" in name else None  # None: the kernel's default
        gemm = lambda: kernels.scaled_gemm(xq, sx, wq, sw, bias, out_dtype=torch.bfloat16, fp8_promote=promote)  # noqa: E731
    rows = []
    seconds = measure(gemm, warmup, runs)
    rows.append({"shape": label, "backend": name + " (gemm only)", "ms": seconds * 1e3, "tflops": flop / seconds / 1e12})
    if kernels.TRITON_AVAILABLE and "triton" in name and "promoted" not in name:
        quant = lambda: kernels.quantize_per_token(x, qdtype)  # noqa: E731
        seconds = measure(quant, warmup, runs)
        rows.append({"shape": label, "backend": name.split()[0] + " act-quant (triton)", "ms": seconds * 1e3,
                     "gb_per_s": x.numel() * (x.element_size() + 1) / seconds / 1e9})
    return rows


def parse_tiles(text):
    """'128,256,128,8,4;256,128,128,8,3' -> [(128, 256, 128, 8, 4), (256, 128, 128, 8, 3)]"""
    return [tuple(int(v) for v in part.split(",")) for part in text.split(";") if part.strip()]


def tma_tile_rows(shapes, tiles, device, measure, warmup, runs):
    """The persistent TMA fp8 GEMM alone (activations already quantized) at each shape and candidate tile."""
    rows = []
    for label, (m, k, n, _) in shapes.items():
        gen = torch.Generator(device=device).manual_seed(0)
        x = torch.randn(m, k, generator=gen, device=device).to(torch.bfloat16)
        wq, sw = quantize_weight(torch.randn(n, k, generator=gen, device=device) / k ** 0.5, "fp8")
        xq, sx = kernels.quantize_per_token(x, torch.float8_e4m3fn)
        bias = torch.zeros(n, device=device, dtype=torch.bfloat16)
        expected = kernels.scaled_gemm(xq, sx, wq, sw, bias, tma=True)
        for tile in tiles:
            call = lambda tile=tile: kernels.scaled_gemm(xq, sx, wq, sw, bias, tiles=tile, tma=True)  # noqa: E731
            try:
                same = torch.equal(call(), expected)
                seconds = measure(call, warmup, runs)
            except Exception as exc:  # a tile that does not fit shared memory fails to compile
                rows.append({"shape": label, "backend": f"fp8 tma {tile}", "skipped": str(exc).splitlines()[0][:100]})
                continue
            rows.append({"shape": label, "backend": f"fp8 tma {tile}", "ms": seconds * 1e3,
                         "tflops": 2.0 * m * k * n / seconds / 1e12, "equal_to_default": same})
    return rows


def peak_rows(device, measure, warmup, runs, size=8192):
    """The GEMM ceilings at size^3: bf16 F.linear, fp8 torch._scaled_mm (row-wise scales), our fp8 Triton GEMM."""
    gen = torch.Generator(device=device).manual_seed(1)
    x = torch.randn(size, size, generator=gen, device=device).to(torch.bfloat16)
    w = torch.randn(size, size, generator=gen, device=device).to(torch.bfloat16)
    xq, sx = kernels.quantize_per_token(x, torch.float8_e4m3fn)
    wq, sw = quantize_weight(w, "fp8")
    calls = {"bf16 F.linear": lambda: F.linear(x, w),
             "fp8 scaled_mm": lambda: torch._scaled_mm(xq, wq.t(), scale_a=sx, scale_b=sw.reshape(1, -1),
                                                       out_dtype=torch.bfloat16, use_fast_accum=True),
             "fp8 triton": lambda: kernels.scaled_gemm(xq, sx, wq, sw, None)}
    label = f"peak {size}^3"
    return [{"shape": label, "backend": name, "ms": (t := measure(call, warmup, runs)) * 1e3,
             "tflops": 2.0 * size ** 3 / t / 1e12} for name, call in calls.items()]


def accumulation_errors(device, m=1024, n=1024, ks=(5120, 13824)):
    """fp8 GEMM error vs float64, as a fraction of sum_k |x_k w_k| (max over outputs) and relative norm."""
    gen = torch.Generator(device=device).manual_seed(2)
    rows = []
    for k in ks:
        x = torch.randn(m, k, generator=gen, device=device) * torch.exp(torch.randn(m, k, generator=gen, device=device))
        w = torch.randn(n, k, generator=gen, device=device) / k ** 0.5
        xq, sx = kernels.quantize_per_token(x, torch.float8_e4m3fn)
        wq, sw = quantize_weight(w, "fp8")
        scales = sx.double() * sw.double().t()
        ref = (xq.double() @ wq.double().t()) * scales
        bound = (xq.double().abs() @ wq.double().abs().t()) * scales
        outs = {"triton (promoted)": kernels.scaled_gemm(xq, sx, wq, sw, None, torch.float32, fp8_promote=True),
                "triton (fast acc)": kernels.scaled_gemm(xq, sx, wq, sw, None, torch.float32, fp8_promote=False),
                "scaled_mm": torch._scaled_mm(xq, wq.t(), scale_a=sx, scale_b=sw.reshape(1, -1), out_dtype=torch.float32),
                "scaled_mm (fast acc)": torch._scaled_mm(xq, wq.t(), scale_a=sx, scale_b=sw.reshape(1, -1),
                                                         out_dtype=torch.float32, use_fast_accum=True)}
        for name, out in outs.items():
            diff = (out.double() - ref).abs()
            rows.append({"k": k, "gemm": name, "max_err_over_abs_sum": (diff / bound).max().item(),
                         "rel_norm_err": (diff.norm() / ref.norm()).item()})
    return rows


def per_block(rows, shapes):
    """Milliseconds of one T2V block's linears per backend (only backends measured at every counted shape)."""
    totals = {}
    for name in {r["backend"] for r in rows if "ms" in r and "gemm only" not in r["backend"] and "act-quant" not in r["backend"]}:
        ms = 0.0
        for label, (_, _, _, count) in shapes.items():
            if count:
                row = next((r for r in rows if r["shape"] == label and r["backend"] == name and "ms" in r), None)
                if row is None:
                    break
                ms += count * row["ms"]
        else:
            totals[name] = ms
    return totals


def resident_weights(tiny: bool) -> dict:
    """GiB of weights a whole DiT keeps resident: bf16 vs 8-bit block linears (built on the meta device, exact)."""
    models = {"tiny T2V": synthetic.tiny_config("t2v")} if tiny else MODELS
    sizes = {}
    for name, cfg in models.items():
        for fmt in (None, "fp8", "int8"):
            model = WanDiT(**cfg.unet_config(), device="meta", dtype=torch.bfloat16)
            if fmt:
                install_quant_linears(model, fmt)
            params = list(model.parameters())
            sizes[f"{name} {fmt or 'bf16'}"] = sum(p.numel() * p.element_size() for p in params) / 2**30
    return sizes


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--backends", default=None, help="comma-separated subset of: " + ", ".join(BACKENDS))
    parser.add_argument("--tiny", action="store_true", help="tiny shapes on the CPU: checks the code paths run")
    parser.add_argument("--tma-tiles", default=None,
                        help="GPU: also time the TMA fp8 GEMM alone with these tiles, e.g. '128,256,128,8,4;256,128,128,8,3' "
                             "(BLOCK_M, BLOCK_N, BLOCK_K, warps, stages)")
    args = parser.parse_args(argv)
    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    shapes = TINY_SHAPES if args.tiny else FULL_SHAPES
    names = args.backends.split(",") if args.backends else (list(BACKENDS) if args.tiny else DEFAULT_FULL)
    unknown = [n for n in names if n not in BACKENDS]
    if unknown:
        parser.error(f"unknown backends {unknown}")
    if "bf16" not in names:
        names = ["bf16"] + names
    def measure(fn, warmup, runs):
        return median_seconds(fn, warmup, runs, device)
    runs, warmup = (3, 1) if args.tiny else (args.runs, args.warmup)
    rows = []
    for label, (m, k, n, _) in shapes.items():
        rows += bench_shape(label, m, k, n, names, device, measure, warmup, runs)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    block = per_block(rows, shapes)
    capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else (0, 0)
    if capability >= (8, 9) and kernels.TRITON_AVAILABLE:
        rows += peak_rows(device, measure, warmup, runs)
        if args.tma_tiles and capability >= (9, 0):
            rows += tma_tile_rows(shapes, parse_tiles(args.tma_tiles), device, measure, warmup, runs)
    accumulation = accumulation_errors(device) if capability >= (8, 9) and kernels.TRITON_AVAILABLE else []
    resident = resident_weights(args.tiny)
    name = device_name(device)
    result = {"device": name, "torch": torch.__version__, "tiny": args.tiny, "rows": rows, "block_ms": block,
              "resident_weights_gib": resident, "fp8_accumulation": accumulation}
    out_dir = results_dir()
    path = os.path.join(out_dir, "quant_linear" + ("_tiny" if args.tiny else "") + ".json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)

    print(f"\nQuantized linears on {name} (torch {torch.__version__}); JSON: {path}")
    print(f"{'shape':24s} {'backend':34s} {'ms':>9s} {'TFLOP/s':>9s} {'x bf16':>7s} {'cosine':>8s}")
    for r in rows:
        if "skipped" in r:
            print(f"{r['shape']:24s} {r['backend']:34s} {'skipped: ' + r['skipped']}")
            continue
        tflops = f"{r['tflops']:9.1f}" if "tflops" in r else f"{r['gb_per_s']:6.0f}GB/s"
        speed = f"{r['speedup_vs_bf16']:7.2f}" if "speedup_vs_bf16" in r else " " * 7
        cos = f"{r['cosine_vs_bf16']:8.5f}" if "cosine_vs_bf16" in r else ""
        if "equal_to_default" in r:
            cos = "same bits" if r["equal_to_default"] else "DIFFERENT"
        print(f"{r['shape']:24s} {r['backend']:34s} {r['ms']:9.3f} {tflops} {speed} {cos}")
    if accumulation:
        print(f"\nfp8 GEMM error vs float64 ({1024}x{1024} outputs; error / sum|products|, max; relative norm error):")
        for r in accumulation:
            print(f"  K={r['k']:<6d} {r['gemm']:22s} {r['max_err_over_abs_sum']:10.2e} {r['rel_norm_err']:10.2e}")
    print("\nResident DiT weights (8-bit block linears + bf16 rest, as the model holds them):")
    for name, gib in resident.items():
        print(f"  {name:20s} {gib:8.3f} GiB")
    if block:
        base = block.get("bf16")
        print("\nOne T2V block's linears (6 attn + ffn.0 + ffn.2 + 2 cross k/v):")
        for name, ms in sorted(block.items(), key=lambda kv: kv[1]):
            print(f"  {name:20s} {ms:9.3f} ms" + (f"   {base / ms:5.2f}x bf16" if base else ""))


if __name__ == "__main__":
    main()
