"""The inputs of a block's 8-bit linears: LayerNorm (+ modulation) and per-token quantization, unfused vs fused.

Shapes: 32,760 tokens (480x832x81) x 14B (5,120) and 1.3B (1,536), bf16 in, fp8 out. Two kinds per shape: `modulated`
(norm1 / norm2: LayerNorm without affine, then x * (1 + scale) + shift; 2 per block) and `affine` (norm3 before the
cross-attention q; 1 per block); "per step" = calls per DiT step (14B 40 blocks, 1.3B 30).
Rows:
  eager         the module ops (F.layer_norm, torch.addcmul), then our quantization kernel (kernels/act_quant.py):
                what the uncompiled model ran before the fusion, per linear fed (q, k and v each quantized it)
  compiled      the module ops under torch.compile, then our quantization kernel (the compiled model before)
  inductor      the module ops and the reference quantization all under torch.compile (inductor fuses them itself)
  fused         kernels.layer_norm_quantize (whole rows in registers); fused-rowsR-wN: R rows, N warps per program
GB/s: the least traffic (read x, write the 8-bit values and the scales) / time. Errors vs
kernels.layer_norm_quantize_reference: largest difference of the dequantized values over their row's absmax, share of
8-bit values that differ.

  python bench/norm_quant.py [--runs 20] [--warmup 5] [--tiny]
  (--tiny: small shapes on the CPU, the kernel under TRITON_INTERPRET=1, torch.compile with aot_eager)
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch
import torch.nn.functional as F

from bench_common import device_name, median_seconds, results_dir  # noqa: E402  (puts the repo on sys.path)

from lightx2v_nodes.kernel_loader import load_kernels  # noqa: E402

kernels = load_kernels()
EPS = 1e-6
QDTYPE = torch.float8_e4m3fn
# name: (dim, blocks, tokens)
FULL = {"14B": (5120, 40, 32760), "1.3B": (1536, 30, 32760)}
TINY = {"tiny-200": (200, 2, 45), "tiny-64": (64, 2, 45)}
CALLS_PER_BLOCK = {"modulated": 2, "affine": 1}
ROWS_WARPS = ((1, 4), (1, 8), (1, 16), (2, 8), (2, 16), (4, 8))  # the fused-rowsR-wN rows


def setup(dim, tokens, device, seed=0):
    gen = torch.Generator(device=device).manual_seed(seed)
    x = (torch.randn(1, tokens, dim, generator=gen, device=device) * 3 + 0.5).to(torch.bfloat16)
    weight = (torch.randn(dim, generator=gen, device=device) * 0.3 + 1.0).to(torch.bfloat16)
    bias = (torch.randn(dim, generator=gen, device=device) * 0.1).to(torch.bfloat16)
    mod = (torch.randn(1, 6, dim, generator=gen, device=device) * 0.2).to(torch.bfloat16)
    return x, {"modulated": dict(shift=mod[:, 0:1], scale=mod[:, 1:2]), "affine": dict(weight=weight, bias=bias)}


def module_ops(x, weight=None, bias=None, shift=None, scale=None):
    y = F.layer_norm(x, (x.shape[-1],), weight, bias, EPS)
    return y if scale is None else torch.addcmul(shift, y, 1 + scale)


def inductor_all(x, **kw):
    return kernels.quantize_per_token_reference(module_ops(x, **kw).reshape(-1, x.shape[-1]), QDTYPE)


def errors(got, want):
    """Largest difference of the dequantized values as a share of their row's absmax, the share of 8-bit values that
    differ, and the largest relative difference of the scales."""
    values, want_values = got[0].float() * got[1], want[0].float() * want[1]
    absmax = want_values.abs().amax(dim=1, keepdim=True)
    return {"max_of_absmax": ((values - want_values).abs() / absmax).max().item(),
            "differ": (got[0].float() != want[0].float()).float().mean().item(),
            "scale_rel": ((got[1] - want[1]).abs() / want[1]).max().item()}


def run_shape(shape, dim, blocks, tokens, device, args, compile_backend):
    x, kinds = setup(dim, tokens, device)
    least = tokens * (dim * (x.element_size() + 1) + 4)
    compiled_ops = torch.compile(module_ops, backend=compile_backend, dynamic=False)
    compiled_all = torch.compile(inductor_all, backend=compile_backend, dynamic=False)
    rows = []
    for kind, kw in kinds.items():
        want = kernels.layer_norm_quantize_reference(x, QDTYPE, EPS, **kw)
        variants = {
            "eager": lambda: kernels.quantize_per_token(module_ops(x, **kw).reshape(-1, dim), QDTYPE),
            "compiled": lambda: kernels.quantize_per_token(compiled_ops(x, **kw).reshape(-1, dim), QDTYPE),
            "inductor": lambda: compiled_all(x, **kw),
            "fused": lambda: kernels.layer_norm_quantize(x, QDTYPE, EPS, **kw),
        }
        for rows_per_program, warps in ROWS_WARPS:
            variants[f"fused-rows{rows_per_program}-w{warps}"] = (
                lambda r=rows_per_program, w=warps: kernels.layer_norm_quantize(x, QDTYPE, EPS, **kw, rows=r, warps=w))
        for name, fn in variants.items():
            with torch.inference_mode():
                seconds = median_seconds(fn, args.warmup, args.runs, device)
                check = errors(fn(), want)
            row = {"shape": shape, "kind": kind, "variant": name, "ms": seconds * 1e3,
                   "ms_per_step": seconds * 1e3 * blocks * CALLS_PER_BLOCK[kind], "GB/s": least / seconds / 1e9, **check}
            rows.append(row)
            print(f"{shape:>8} {kind:<9} {name:<16} {row['ms']:8.3f} ms {row['GB/s']:7.1f} GB/s  max diff / absmax "
                  f"{check['max_of_absmax']:.1e}, differ {check['differ']:.1e}, scale rel {check['scale_rel']:.1e}", flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--tiny", action="store_true", help="small shapes on the CPU (Triton interpreter)")
    args = parser.parse_args()
    if args.tiny:
        device, shapes, compile_backend = torch.device("cpu"), TINY, "aot_eager"
        args.runs, args.warmup = 1, 1
    else:
        if not torch.cuda.is_available():
            sys.exit("bench/norm_quant.py needs a CUDA GPU (or --tiny for the CPU code path check)")
        device, shapes, compile_backend = torch.device("cuda"), FULL, "inductor"
    rows = []
    for shape, (dim, blocks, tokens) in shapes.items():
        rows += run_shape(shape, dim, blocks, tokens, device, args, compile_backend)
    path = os.path.join(results_dir(), "norm_quant" + ("_tiny" if args.tiny else "") + ".json")
    with open(path, "w") as f:
        json.dump({"device": device_name(device), "torch": torch.__version__, "rows": rows}, f, indent=2)
    print(f"\n{device_name(device)}; fp8 out; written {path}")
    print(f"{'shape':>8} {'kind':<9} {'variant':<16} {'ms':>8} {'ms/step':>8} {'GB/s':>7} {'diff/max':>8} {'differ':>8}")
    for r in rows:
        print(f"{r['shape']:>8} {r['kind']:<9} {r['variant']:<16} {r['ms']:8.3f} {r['ms_per_step']:8.2f} {r['GB/s']:7.1f} "
              f"{r['max_of_absmax']:8.1e} {r['differ']:8.1e}")


if __name__ == "__main__":
    main()
