"""GELU(tanh) + per-token 8-bit quantization of the FFN's hidden state (the input of ffn.2), three ways:

- eager: F.gelu (bf16 out) then our Triton per-token quantization (two launches, the GELU output written and read)
- inductor: the same ops (GELU, then the reference quantization's torch ops) under torch.compile, as the compiled
  DiT blocks ran them before the fused kernel
- fused: kernels.gelu_quantize_per_token (one launch; the hidden state is read from memory once, 8 bits written)

Shapes: 32,760 tokens (480x832x81) x 13,824 (14B) and x 8,960 (1.3B), bf16 in, fp8 and int8 out. Median ms after
warm-up (CUDA events), GB/s of the minimal traffic (bf16 read + 8-bit write), and the fraction of 8-bit values
that differ from the float32-GELU reference. Writes JSON to $OUT or bench/results/gelu_quant.json.

  python bench/gelu_quant.py [--runs 20] [--warmup 5] [--tiny]
"""

from __future__ import annotations

import argparse
import json
import os

import torch
import torch.nn.functional as F

from bench_common import device_name, median_seconds, results_dir  # noqa: E402  (puts the repo on sys.path)

from lightx2v_nodes.kernel_loader import load_kernels  # noqa: E402

kernels = load_kernels()


def variants(qdtype, device):
    def eager(h):
        gelu = F.gelu(h, approximate="tanh")
        if device.type == "cuda":
            return kernels.quantize_per_token(gelu, qdtype)
        return kernels.quantize_per_token_reference(gelu, qdtype)

    found = {"eager": eager}
    if device.type == "cuda":
        found["inductor"] = torch.compile(
            lambda h: kernels.quantize_per_token_reference(F.gelu(h, approximate="tanh"), qdtype), dynamic=False)
    found["fused"] = lambda h: kernels.gelu_quantize_per_token(h, qdtype)
    return found


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--tiny", action="store_true", help="small rows on the CPU (run with TRITON_INTERPRET=1)")
    args = parser.parse_args()
    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    tokens, widths = (64, {"tiny": 700}) if args.tiny else (32760, {"14B": 13824, "1.3B": 8960})
    runs, warmup = (1, 0) if args.tiny else (args.runs, args.warmup)
    rows = []
    for size, width in widths.items():
        h = (torch.randn(tokens, width, device=device) * 2).to(torch.bfloat16)
        for qdtype in (torch.float8_e4m3fn, torch.int8):
            want, _ = kernels.gelu_quantize_per_token_reference(h, qdtype)
            for name, fn in variants(qdtype, device).items():
                seconds = median_seconds(lambda: fn(h), warmup, runs, device)
                q, _ = fn(h)
                rows.append({"size": size, "width": width, "dtype": str(qdtype).split(".")[-1], "variant": name,
                             "ms": seconds * 1e3, "gb_s": h.numel() * 3 / seconds / 1e9,
                             "differ": (q.float() != want.float()).float().mean().item()})
    with open(os.path.join(results_dir(), "gelu_quant.json"), "w") as f:
        json.dump({"device": device_name(device), "tokens": tokens, "rows": rows}, f, indent=1)
    print(f"\nGELU + per-token quantization, {device_name(device)}, {tokens} tokens")
    print(f"{'size':>6} {'dtype':>14} {'variant':>9} {'ms':>8} {'GB/s':>7} {'differ':>8}")
    for r in rows:
        print(f"{r['size']:>6} {r['dtype']:>14} {r['variant']:>9} {r['ms']:8.3f} {r['gb_s']:7.0f} {r['differ']:8.1e}")


if __name__ == "__main__":
    main()
