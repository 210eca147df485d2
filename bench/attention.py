"""Attention kernels at Wan2.1's shapes: our 8-bit Triton kernel vs every available backend, speed and accuracy.

Shapes: self-attention at 1,024 / 8,192 / 32,760 tokens (480x832x81) and 75,600 (720x1280x81) x 40 heads x 128,
cross-attention 32,760 queries x 512 text tokens and x 257 image tokens (--head-dim 64 also works).
Inputs are bf16, shaped like a trained DiT's: Q and K carry a few outlier channels (10x), K a large shared bias (what smoothing removes).
Backends: sdpa (PyTorch's choice: cuDNN on the H100), sdpa-flash (its FlashAttention-2), sage (sageattention
1.0.6, when installed), flash (flash-attn, when installed), ours (`lightx2v-int8`: quantization + kernel) and
ours-kernel (the attention kernel alone, inputs already quantized; tensor-descriptor loads on Hopper), ours-kernel-ptr
(its pointer-load version, on Hopper), ours-quant (Q/K/V quantization alone), ours-rotN
(the quantization's time and the attention's accuracy with N-channel Hadamard blocks instead of the default; rot1: none). Accuracy: cosine and relative error of
each backend vs float32 attention (computed per head group, in float32), NaN/Inf check at magnitudes 1e3.
Median of --runs after --warmup, CUDA events. Writes JSON to $OUT or bench/results/attention.json.

  python bench/attention.py [--shapes self-32760,cross-512] [--runs 20] [--warmup 5] [--tiny]
  (--tiny: small shapes, our kernel under TRITON_INTERPRET=1 on the CPU)
  python bench/attention.py --sparse [--tiny]: the block-sparse kernel (LightX2V Sparse Attention's default radial and
  window masks) vs the dense kernel at 21x30x52 (480x832x81) and 21x45x80 (720x1280x81) tokens: ms, kept fraction,
  and the fraction of the ideal saving realised ((dense - sparse) / (dense * (1 - kept))). Writes attention_sparse.json.
"""

from __future__ import annotations

import argparse
import json
import os

import torch
import torch.nn.functional as F

from bench_common import device_name, median_seconds, results_dir  # noqa: E402  (puts the repo on sys.path)

from lightx2v_nodes.kernel_loader import load_kernels  # noqa: E402
from lightx2v_nodes.wan.attention import SDPA, choose_attention  # noqa: E402

kernels = load_kernels()
a8 = kernels.attention_8bit

ROTATION_BLOCKS = (1, 8, 16, 32, 128)
# name: (query tokens, key tokens)
FULL_SHAPES = {"self-1024": (1024, 1024), "self-8192": (8192, 8192), "self-32760": (32760, 32760),
               "self-75600": (75600, 75600), "cross-512": (32760, 512), "cross-257": (32760, 257)}
TINY_SHAPES = {"self-200": (200, 200), "cross-77": (200, 77)}


def wan_like(batch, tokens, heads, dim, device, gen, magnitude=1.0, bias=0.0):
    """Random bf16 [B, L, H, D] with 4 outlier channels per head (10x) and an optional shared per-channel bias."""
    x = torch.randn(batch, tokens, heads, dim, generator=gen, device=device)
    x[..., :4] *= 10.0
    if bias:
        x += bias * torch.randn(1, 1, heads, dim, generator=gen, device=device)
    return (x * magnitude).to(torch.bfloat16)


def exact_attention(q, k, v, head_group: int = 8):
    """float32 attention, a few heads at a time (bounded memory)."""
    outs = []
    for h in range(0, q.shape[2], head_group):
        sl = slice(h, h + head_group)
        o = F.scaled_dot_product_attention(*(t[:, :, sl].float().transpose(1, 2) for t in (q, k, v)))
        outs.append(o.transpose(1, 2))
    return torch.cat(outs, dim=2)


def backends(device):
    found = {"sdpa": SDPA.call}
    if device.type == "cuda":
        def sdpa_flash(q, k, v):
            with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.FLASH_ATTENTION):
                return SDPA.call(q, k, v)
        found["sdpa-flash"] = sdpa_flash
        for name in ("sage", "flash"):
            try:
                backend = choose_attention(name, device, torch.bfloat16)
            except Exception:  # noqa: BLE001 - a package that is not installed is just not compared
                continue
            found[name] = backend.call
    found["ours"] = lambda q, k, v: kernels.attention8(q, k, v)
    return found


def compare(out, ref):
    out, ref = out.float().flatten(), ref.float().flatten()
    return {"cosine": F.cosine_similarity(out, ref, dim=0).item(), "rel_err": ((out - ref).norm() / ref.norm()).item(),
            "finite": bool(torch.isfinite(out).all())}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--shapes", default=None, help="comma-separated names (default: all)")
    parser.add_argument("--heads", type=int, default=40)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--sparse", action="store_true", help="time the block-sparse kernel's masks vs the dense kernel")
    parser.add_argument("--sweep", default=None, help="a shape name: time our kernel's fixed tile configs and options there")
    args = parser.parse_args()
    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    table = TINY_SHAPES if args.tiny else FULL_SHAPES
    names = args.shapes.split(",") if args.shapes else list(table)
    heads = 2 if args.tiny else args.heads
    runs, warmup = (1, 0) if args.tiny else (args.runs, args.warmup)
    gen = torch.Generator(device=device).manual_seed(0)
    if args.sparse:
        return sparse_rows(heads, args.head_dim, runs, warmup, device, gen, args.tiny)
    if args.sweep:
        return sweep(table[args.sweep], heads, args.head_dim, runs, warmup, device, gen)
    rows = []
    for name in names:
        lq, lk = table[name]
        q = wan_like(1, lq, heads, args.head_dim, device, gen)
        k = wan_like(1, lk, heads, args.head_dim, device, gen, bias=8.0)
        v = wan_like(1, lk, heads, args.head_dim, device, gen)
        flops = 4 * lq * lk * heads * args.head_dim
        ref = exact_attention(q, k, v)
        big = [t.float().mul(1e3 / t.float().abs().amax()).to(torch.bfloat16) for t in (q, k, v)]
        for backend, fn in backends(device).items():
            row = {"shape": name, "backend": backend, "lq": lq, "lk": lk}
            # Each backend gets its own copies: sageattention 1.0.6 subtracts K's mean in place (k -= km), which
            # re-rounds K in bf16 and would change every later backend's inputs (measured: ours 3.7e-2 -> 4.3e-2).
            row.update(compare(fn(*(t.clone() for t in (q, k, v))).reshape(ref.shape), ref))
            mine = [t.clone() for t in (q, k, v)]
            row["s"] = median_seconds(lambda: fn(*mine), warmup, runs, device)
            row["tflops"] = flops / row["s"] / 1e12
            del mine
            row["finite_at_1e3"] = bool(torch.isfinite(fn(*big)).all())
            rows.append(row)
            if backend == "ours":
                quantized = kernels.quantize_qkv(q, k, v)
                kernel_only = {"shape": name, "backend": "ours-kernel", "lq": lq, "lk": lk}
                kernel_only["s"] = median_seconds(lambda: kernels.attention8(q, k, v, quantized=quantized), warmup, runs, device)
                kernel_only["tflops"] = flops / kernel_only["s"] / 1e12
                kernel_only["config"] = str(a8.default_tiles(a8.use_tma(device)))
                rows.append(kernel_only)
                if a8.use_tma(device):
                    pointer_s = median_seconds(lambda: kernels.attention8(q, k, v, quantized=quantized, tma=False),
                                               warmup, runs, device)
                    rows.append({"shape": name, "backend": "ours-kernel-ptr", "lq": lq, "lk": lk, "s": pointer_s,
                                 "tflops": flops / pointer_s / 1e12, "config": str(a8.ATTENTION_TILES)})
                quant_s = median_seconds(lambda: kernels.quantize_qkv(q, k, v), warmup, runs, device)
                rows.append({"shape": name, "backend": "ours-quant", "lq": lq, "lk": lk, "s": quant_s, "tflops": 0.0})
                for block in ROTATION_BLOCKS:  # the other Hadamard block sizes: quantization time and accuracy
                    if block != a8.ROTATION_BLOCK:
                        rotated = kernels.quantize_qkv(q, k, v, rotation_block=block)
                        rows.append({"shape": name, "backend": f"ours-rot{block}", "lq": lq, "lk": lk,
                                     "s": median_seconds(lambda: kernels.quantize_qkv(q, k, v, rotation_block=block),
                                                         warmup, runs, device), "tflops": 0.0,
                                     **compare(kernels.attention8(q, k, v, quantized=rotated), ref), "finite_at_1e3": True})
        del q, k, v, ref, big
        if device.type == "cuda":
            torch.cuda.empty_cache()

    with open(os.path.join(results_dir(), "attention.json"), "w") as f:
        json.dump({"device": device_name(device), "torch": torch.__version__, "heads": heads,
                   "head_dim": args.head_dim, "rows": rows}, f, indent=1)
    print(f"\nAttention, {device_name(device)}, {heads} heads x {args.head_dim}, bf16 inputs")
    print(f"{'shape':>12} {'backend':>12} {'ms':>9} {'TFLOP/s':>8} {'cosine':>8} {'rel err':>8} {'ok@1e3':>6}")
    for r in rows:
        acc = (f"{r['cosine']:8.5f} {r['rel_err']:8.1e} {str(r['finite_at_1e3']):>6}" if "cosine" in r else "")
        print(f"{r['shape']:>12} {r['backend']:>12} {r['s'] * 1e3:9.3f} {r['tflops']:8.1f} {acc}{r.get('config', '')}")


SPARSE_GRIDS = {"480x832x81": (21, 30, 52), "720x1280x81": (21, 45, 80)}
TINY_SPARSE_GRIDS = {"tiny": (5, 4, 10)}


def sparse_rows(heads, head_dim, runs, warmup, device, gen, tiny):
    """Dense kernel vs block-sparse kernel with each mask, inputs already quantized (the kernels alone)."""
    from lightx2v_nodes.wan.sparse_attention import SparseSettings
    from lightx2v_nodes.wan.sparse_masks import TokenGrid, tile_mask

    rows = []
    for name, dims in (TINY_SPARSE_GRIDS if tiny else SPARSE_GRIDS).items():
        grid = TokenGrid(*dims)
        q = wan_like(1, grid.tokens, heads, head_dim, device, gen)
        k = wan_like(1, grid.tokens, heads, head_dim, device, gen, bias=8.0)
        v = wan_like(1, grid.tokens, heads, head_dim, device, gen)
        quantized = kernels.quantize_qkv(q, k, v)
        dense_out = kernels.attention8(q, k, v, quantized=quantized)
        dense_s = median_seconds(lambda: kernels.attention8(q, k, v, quantized=quantized), warmup, runs, device)
        rows.append({"grid": name, "tokens": grid.tokens, "mask": "dense", "kept": 1.0, "s": dense_s})
        tiles = kernels.table_tiles(device)
        for mask in ("radial", "window"):
            settings = SparseSettings(mask=mask)
            built = median_seconds(lambda: tile_mask(settings.keep(grid), grid.tokens, tiles, device), 0, 1, device)
            table = kernels.block_table(tile_mask(settings.keep(grid), grid.tokens, tiles, device), tiles)
            sparse_s = median_seconds(lambda: kernels.attention8_sparse(q, k, v, table, quantized=quantized), warmup,
                                      runs, device)
            out = kernels.attention8_sparse(q, k, v, table, quantized=quantized)
            ideal = 1 - table.kept_fraction
            rows.append({"grid": name, "tokens": grid.tokens, "mask": mask, "kept": table.kept_fraction, "s": sparse_s,
                         "of_ideal_saving": (dense_s - sparse_s) / (dense_s * ideal) if ideal else float("nan"),
                         "mask_build_s": built, **{f"{key}_vs_dense8": val for key, val in compare(out, dense_out).items()
                                                  if key != "finite"}})
        del q, k, v, quantized, dense_out
    with open(os.path.join(results_dir(), "attention_sparse.json"), "w") as f:
        json.dump({"device": device_name(device), "heads": heads, "head_dim": head_dim, "rows": rows}, f, indent=1)
    print(f"\nBlock-sparse 8-bit attention (kernel alone), {device_name(device)}, {heads} heads x {head_dim}")
    print(f"{'grid':>12} {'tokens':>7} {'mask':>7} {'kept':>6} {'ms':>9} {'of ideal':>8} {'cos vs dense':>12} {'mask s':>7}")
    for r in rows:
        extra = (f"{r['of_ideal_saving']:8.1%} {r['cosine_vs_dense8']:12.5f} {r['mask_build_s']:7.2f}"
                 if "of_ideal_saving" in r else "")
        print(f"{r['grid']:>12} {r['tokens']:>7} {r['mask']:>7} {r['kept']:6.1%} {r['s'] * 1e3:9.3f} {extra}")


SWEEP_TILES = [(64, 128, 4, 2), (64, 128, 4, 3), (64, 128, 4, 4), (128, 128, 8, 3), (128, 128, 8, 2), (128, 64, 4, 3),
               (64, 64, 4, 3)]
# (P.V operand type, split accumulation): the default first, then one change at a time.
SWEEP_OPTIONS = [("fp8", True), ("fp8", False), ("fp16", True)]


def sweep(shape, heads, head_dim, runs, warmup, device, gen):
    """Our kernel at fixed tiles (default options) and at its best-known tiles with each option changed: ms, error vs fp32."""
    lq, lk = shape
    q = wan_like(1, lq, heads, head_dim, device, gen)
    k = wan_like(1, lk, heads, head_dim, device, gen, bias=8.0)
    v = wan_like(1, lk, heads, head_dim, device, gen)
    ref = exact_attention(q, k, v)
    tiles_list = SWEEP_TILES if device.type == "cuda" else [(32, 32, 4, 1)]
    loads = [True, False] if a8.use_tma(device) else [False]  # tensor-descriptor loads (Hopper), pointer loads
    cases = [(tma, tiles, SWEEP_OPTIONS[0]) for tma in loads for tiles in tiles_list]
    cases += [(tma, a8.default_tiles(tma) if device.type == "cuda" else tiles_list[0], o)
              for tma in loads for o in SWEEP_OPTIONS[1:]]
    quantized = {pv: kernels.quantize_qkv(q, k, v, pv_dtype=dtype)
                 for pv, dtype in (("fp8", torch.float8_e4m3fn), ("fp16", torch.float16))}
    rows = []
    for tma, tiles, (pv, split) in cases:
        def run():
            return kernels.attention8(q, k, v, quantized=quantized[pv], tiles=tiles, split_accumulation=split, tma=tma)
        row = {"loads": "tma" if tma else "pointer", "tiles": tiles, "pv": pv, "split": split}
        try:
            row.update(s=median_seconds(run, warmup, runs, device), **compare(run(), ref))
        except Exception as exc:  # noqa: BLE001 - a config that does not compile (shared memory) is skipped
            row["error"] = str(exc)[:120]
        rows.append(row)
    with open(os.path.join(results_dir(), "attention_sweep.json"), "w") as f:
        json.dump({"device": device_name(device), "shape": shape, "rows": rows}, f, indent=1)
    print(f"\nSweep at {lq}x{lk} tokens, {heads} heads x {head_dim}")
    for r in sorted(rows, key=lambda r: r.get("s", float("inf"))):
        result = f"{r['s'] * 1e3:8.3f} ms  rel err {r['rel_err']:.2e}" if "s" in r else r["error"]
        print(f"{r['loads']:>8} {str(r['tiles']):>20} pv={r['pv']:4} split={r['split']!s:5} {result}")


if __name__ == "__main__":
    main()
