"""The self-attention's q/k RMSNorm + RoPE: unfused eager ops, the same ops under torch.compile, our fused kernel.

Shapes: 32,760 tokens (480x832x81) x 14B (5120 = 40 heads x 128) and 1.3B (1536 = 12 x 128), bf16, one q (or k)
projection per call (a DiT step makes 2 per block: 80 for the 14B, 60 for the 1.3B; the "per step" column).
Rows:
  eager         the model's unfused ops (nn.RMSNorm, head split, apply_rope's complex multiply)
  compiled      the same ops under torch.compile (inductor; the real-valued RoPE the compiled model uses)
  fused         kernels.rms_norm_rope (bf16 out; fused-rows4: 4 tokens per program instead of 1)
  fused-int8q   kernels.rms_norm_rope_int8 (attention8's int8 Q + scales, for lightx2v-int8; -rotN: its Hadamard
                rotation in N-channel blocks instead of the default, rot1: none)
  fused-ksums   kernels.rms_norm_rope_column_sums (bf16 K + per-128-token column sums, for lightx2v-int8;
                -wN: N warps per program; fused-int8q-wN, -rowsR-wN likewise, R tokens per program;
                fused-ksums32: sums per 32 tokens, 4x the programs, in case 128-token programs starve the GPU)
  attn-unfused  lightx2v-int8 self-attention (14B only): eager norm + RoPE of q and k, then the backend
  attn-fused    the same from the projections (`from_projections`: the two fused modes, K mean from the sums)
GB/s: the least traffic the operation needs (read x, the RoPE rows and the weight, write the output) / time.
Errors vs kernels.rms_norm_rope_reference (the model's ops with their roundings; int8 rows vs its int8
reference in int8 units; attention rows: cosine of attn-fused vs attn-unfused).

  python bench/norm_rope.py [--runs 20] [--warmup 5] [--tiny]
  (--tiny: small shapes on the CPU, the kernels under TRITON_INTERPRET=1, torch.compile with aot_eager)
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
from lightx2v_nodes.wan import attention  # noqa: E402
from lightx2v_nodes.wan.model import apply_rope, rope_tables  # noqa: E402

kernels = load_kernels()
EPS = 1e-6
WARPS = (2, 4, 8, 16)  # warps per program for the -wN rows (the default: kernels/norm_rope.py ELEMENTS_PER_WARP)
# name: (heads, head_dim, blocks, latent grid after patching)
FULL = {"14B": (40, 128, 40, (21, 30, 52)), "1.3B": (12, 128, 30, (21, 30, 52))}
TINY = {"tiny-5x128": (5, 128, 2, (1, 5, 7)), "tiny-3x64": (3, 64, 2, (1, 3, 9))}


def setup(heads, head_dim, grid, device, seed=0):
    gen = torch.Generator(device=device).manual_seed(seed)
    dim = heads * head_dim
    tokens = grid[0] * grid[1] * grid[2]
    x = (torch.randn(1, tokens, dim, generator=gen, device=device) * 3 + 0.5).to(torch.bfloat16)
    norm = torch.nn.RMSNorm(dim, eps=EPS, dtype=torch.bfloat16, device=device)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(dim, generator=gen, device=device) * 0.3 + 1.0)
    return x, norm, rope_tables(head_dim, *grid, device=device)


def unfused(x, norm, rotations, heads):
    return apply_rope(norm(x).unflatten(-1, (heads, -1)), rotations)


def errors(got, want):
    diff = (got.float() - want.float()).abs()
    return {"max_abs": diff.max().item(), "rel": (diff.norm() / want.float().norm().clamp_min(1e-30)).item()}


def least_bytes(x, heads, out_bytes_per_element, extra=0):
    tokens, dim = x.shape[1], x.shape[2]
    rope_bytes = tokens * (dim // heads) * 4  # cos, sin float32 per token
    return tokens * dim * (x.element_size() + out_bytes_per_element) + rope_bytes + dim * 2 + extra


def measure(name, fn, bytes_moved, device, args, shape, per_step, check):
    seconds = median_seconds(fn, args.warmup, args.runs, device)
    row = {"shape": shape, "variant": name, "ms": seconds * 1e3, "ms_per_step": seconds * 1e3 * per_step,
           "GB/s": bytes_moved / seconds / 1e9, **check(fn())}
    print(f"{shape:>11} {name:<14} {row['ms']:8.3f} ms  {row['GB/s']:7.1f} GB/s  {check.__name__}: "
          + ", ".join(f"{k} {v:.3g}" for k, v in row.items() if k not in ("shape", "variant", "ms", "ms_per_step", "GB/s")),
          flush=True)
    return row


def run_shape(shape, heads, head_dim, blocks, grid, device, args, compile_backend):
    x, norm, rotations = setup(heads, head_dim, grid, device)
    per_step = 2 * blocks
    ref = kernels.rms_norm_rope_reference(x, norm.weight, rotations, heads, EPS)
    ref8 = kernels.rms_norm_rope_int8_reference(x, norm.weight, rotations, heads, EPS)
    dim = heads * head_dim

    def vs_reference(out):
        return errors(out, ref)

    def vs_int8_reference(out):
        q8, scales = out
        return {"max_int8_diff": (q8.int() - ref8[0].int()).abs().max().item(),
                "scale_rel": ((scales - ref8[1]).abs() / ref8[1]).max().item()}

    def vs_reference_and_mean(out):
        k, sums = out
        mean_err = errors(sums.sum(dim=2) / k.shape[1], k.mean(dim=1, dtype=torch.float32))["rel"]
        return {**errors(k, ref), "mean_rel": mean_err}

    compiled = torch.compile(unfused, backend=compile_backend, dynamic=False)
    rows = []
    plain = least_bytes(x, heads, 2)
    with torch.inference_mode():
        rows.append(measure("eager", lambda: unfused(x, norm, rotations, heads), plain, device, args, shape, per_step,
                            vs_reference))
        rows.append(measure("compiled", lambda: compiled(x, norm, rotations, heads), plain, device, args, shape,
                            per_step, vs_reference))
        rows.append(measure("fused", lambda: kernels.rms_norm_rope(x, norm.weight, rotations, heads, EPS), plain,
                            device, args, shape, per_step, vs_reference))
        rows.append(measure("fused-rows4", lambda: kernels.rms_norm_rope(x, norm.weight, rotations, heads, EPS, rows=4),
                            plain, device, args, shape, per_step, vs_reference))
        rows.append(measure("fused-int8q", lambda: kernels.rms_norm_rope_int8(x, norm.weight, rotations, heads, EPS),
                            least_bytes(x, heads, 1, extra=heads * ref8[1].shape[-1] * 4), device, args, shape,
                            per_step, vs_int8_reference))
        for block in (1, 8, 16):  # Q's Hadamard rotation in smaller blocks (1: none) than the default
            rows.append(measure(f"fused-int8q-rot{block}",
                                lambda: kernels.rms_norm_rope_int8(x, norm.weight, rotations, heads, EPS, rotation_block=block),
                                least_bytes(x, heads, 1, extra=heads * ref8[1].shape[-1] * 4), device, args, shape,
                                per_step, lambda out: {}))
        for warps in WARPS:  # other warps per program than the default
            rows.append(measure(f"fused-int8q-w{warps}",
                                lambda: kernels.rms_norm_rope_int8(x, norm.weight, rotations, heads, EPS, warps=warps),
                                least_bytes(x, heads, 1, extra=heads * ref8[1].shape[-1] * 4), device, args, shape,
                                per_step, vs_int8_reference))
        for rows_per_program, warps in ((2, 8), (4, 8), (4, 4)):
            rows.append(measure(f"fused-int8q-rows{rows_per_program}-w{warps}",
                                lambda: kernels.rms_norm_rope_int8(x, norm.weight, rotations, heads, EPS,
                                                                   rows=rows_per_program, warps=warps),
                                least_bytes(x, heads, 1, extra=heads * ref8[1].shape[-1] * 4), device, args, shape,
                                per_step, vs_int8_reference))
        sums_bytes = heads * -(-x.shape[1] // 128) * head_dim * 4
        for warps in WARPS:
            rows.append(measure(f"fused-ksums-w{warps}",
                                lambda: kernels.rms_norm_rope_column_sums(x, norm.weight, rotations, heads, EPS, warps=warps),
                                least_bytes(x, heads, 2, extra=sums_bytes), device, args, shape, per_step,
                                vs_reference_and_mean))
        rows.append(measure("fused-ksums", lambda: kernels.rms_norm_rope_column_sums(x, norm.weight, rotations, heads, EPS),
                            least_bytes(x, heads, 2, extra=sums_bytes), device, args, shape, per_step,
                            vs_reference_and_mean))
        rows.append(measure("fused-ksums32", lambda: kernels.rms_norm_rope_column_sums(x, norm.weight, rotations, heads,
                                                                                      EPS, block=32),
                            least_bytes(x, heads, 2, extra=4 * sums_bytes), device, args, shape, per_step,
                            vs_reference_and_mean))
        if shape in ("14B", "tiny-5x128"):
            rows += attention_rows(x, norm, rotations, heads, head_dim, blocks, device, args, shape)
    return rows


def attention_rows(q_proj, norm_q, rotations, heads, head_dim, blocks, device, args, shape):
    """lightx2v-int8 self-attention with the unfused norm/RoPE vs from the projections (both eager)."""
    k_proj, norm_k, _ = setup(heads, head_dim, (1, 1, q_proj.shape[1]), device, seed=1)
    v = torch.randn(1, q_proj.shape[1], heads, head_dim, device=device).to(torch.bfloat16)
    # --tiny: the 8-bit kernel in the interpreter, at any length
    backend = (attention.eight_bit_backend(min_keys=1) if args.tiny
               else attention.choose_attention("lightx2v-int8", device, torch.bfloat16))
    attend = backend.call
    want = attend(unfused(q_proj, norm_q, rotations, heads), unfused(k_proj, norm_k, rotations, heads), v)

    def vs_unfused(out):
        return {"cosine": F.cosine_similarity(out.float().flatten(), want.float().flatten(), dim=0).item()}

    traffic = 4 * least_bytes(q_proj, heads, 2)  # only the norm/RoPE part's least traffic (q and k), for scale
    return [measure("attn-unfused", lambda: attend(unfused(q_proj, norm_q, rotations, heads),
                                                   unfused(k_proj, norm_k, rotations, heads), v),
                    traffic, device, args, shape, blocks, vs_unfused),
            measure("attn-fused", lambda: backend.from_projections(q_proj, k_proj, v, norm_q, norm_k, rotations),
                    traffic, device, args, shape, blocks, vs_unfused)]


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
            sys.exit("bench/norm_rope.py needs a CUDA GPU (or --tiny for the CPU code path check)")
        device, shapes, compile_backend = torch.device("cuda"), FULL, "inductor"
    rows = []
    for shape, (heads, head_dim, blocks, grid) in shapes.items():
        rows += run_shape(shape, heads, head_dim, blocks, grid, device, args, compile_backend)
    result = {"device": device_name(device), "torch": torch.__version__, "tokens": {s: v[3] for s, v in shapes.items()},
              "rows": rows}
    path = os.path.join(results_dir(), "norm_rope" + ("_tiny" if args.tiny else "") + ".json")
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    print(f"\n{device_name(device)}; per-step = 2 calls per block (attention rows: 1 per block); written {path}")
    print(f"{'shape':>11} {'variant':<14} {'ms':>9} {'ms/step':>9} {'GB/s':>8}  error")
    for row in rows:
        err = {k: v for k, v in row.items() if k not in ("shape", "variant", "ms", "ms_per_step", "GB/s")}
        print(f"{row['shape']:>11} {row['variant']:<14} {row['ms']:9.3f} {row['ms_per_step']:9.2f} {row['GB/s']:8.1f}  "
              + ", ".join(f"{k} {v:.3g}" for k, v in err.items()))


if __name__ == "__main__":
    main()
