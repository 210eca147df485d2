"""Activation peak of one Wan block forward, whole-sequence vs token-chunked: what the offload planner's
activation model (lightx2v_nodes/offload/planner.py) rests on.

CUDA (default): a 14B block (dim 5120, ffn 13824, 40 heads x 128; random weights, one block only, so it
takes seconds) at each --shapes token count, bf16 and fp8 W8A8; peak = the caching allocator's
max_memory_allocated above the block's inputs. --tiny: the same code on the CPU at a proportionate
scaled-down block (dim 512, ffn 1382, 4 heads x 128, 8,192 tokens), peak from torch.profiler's memory
events (lightx2v_nodes/offload/peak_memory.py). Printed per phase and for the block, in [T, D] tensors of
the compute dtype (block input excluded), next to the planner's modelled peak for a block (its DiT-level
peak minus the block's input and the embedded tokens the DiT holds outside the blocks; margin and slack
excluded). The CPU's kernels differ (composite RMSNorm, float32 reference GEMM for fp8, SDPA scratch), so
only the GPU numbers calibrate the planner.
Writes JSON to $OUT or bench/results/offload_activations.json and prints a table last.

  python bench/offload_activations.py [--shapes 480x832x81,720x1280x81] [--dtypes bf16,fp8] [--tiny]
"""

from __future__ import annotations

import argparse
import json
import os

import torch

from bench_common import device_name, results_dir  # noqa: E402  (puts the repo on sys.path)

from lightx2v_nodes.offload.peak_memory import peak_bytes  # noqa: E402
from lightx2v_nodes.offload.planner import CHUNK_TOKENS, ModelSizes, activation_peak_bytes  # noqa: E402
from lightx2v_nodes.quant import quantize_dit_  # noqa: E402
from lightx2v_nodes.wan.attention import choose_attention  # noqa: E402
from lightx2v_nodes.wan.model import TORCH_OPS, WanBlock, rope_tables  # noqa: E402


def make_block(dim, ffn, fmt, device) -> WanBlock:
    block = WanBlock(dim, ffn, dim // 128, 1e-6, False, TORCH_OPS, device, torch.bfloat16).requires_grad_(False)
    gen = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for name, p in block.named_parameters():
            scale = p.shape[-1] ** -0.5 if p.dim() == 2 else 0.05
            p.copy_(torch.randn(p.shape, generator=gen, device=device) * scale + (1.0 if "norm" in name else 0.0))
    block.set_attention(choose_attention("auto", device, torch.bfloat16))
    if fmt == "fp8":
        holder = torch.nn.Module()
        holder.blocks = torch.nn.ModuleList([block])
        quantize_dit_(holder, "fp8")
    return block


def measure(block, grid, dim, chunk, device) -> dict:
    f, h, w = grid
    tokens = f * h * w
    gen = torch.Generator(device=device).manual_seed(1)
    x = torch.randn(1, tokens, dim, generator=gen, device=device).bfloat16()
    e = (torch.randn(1, 6, dim, generator=gen, device=device) * 0.1).bfloat16()
    context = torch.randn(1, 512, dim, generator=gen, device=device).bfloat16()
    rope = rope_tables(128, f, h, w, device)
    block.token_chunk = chunk
    chunked = chunk is not None
    with torch.inference_mode():
        mod = block.modulation_terms(e, x)
        phases = {
            "self_attn": lambda: (block.self_attention_phase_chunked if chunked else block.self_attention_phase)(x, mod, rope),
            "cross_attn": lambda: (block.cross_attention_phase_chunked if chunked else block.cross_attention_phase)(x, context, None),
            "ffn": lambda: (block.ffn_phase_chunked if chunked else block.ffn_phase)(x, mod),
            "block": lambda: block(x, e, rope, context),
        }
        peaks = {name: peak_bytes(fn, device)[1] for name, fn in phases.items()}
        out = block(x, e, rope, context)
    block.token_chunk = None
    return {"tokens": tokens, "peaks": peaks, "out": out}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--shapes", default="480x832x81,720x1280x81", help="HxWxF video shapes (CUDA)")
    parser.add_argument("--dtypes", default="bf16,fp8")
    parser.add_argument("--chunk-tokens", type=int, default=CHUNK_TOKENS)
    parser.add_argument("--tiny", action="store_true", help="CPU, scaled-down block (dim 512, 8,192 tokens)")
    args = parser.parse_args()

    device = torch.device("cpu" if args.tiny else "cuda")
    if args.tiny:
        dim, ffn, grids, chunk = 512, 1382, [(8, 32, 32)], 1024
    else:
        dim, ffn, chunk = 5120, 13824, args.chunk_tokens
        shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
        grids = [((frames - 1) // 4 + 1, height // 16, width // 16) for height, width, frames in shapes]
    sizes = ModelSizes(1, 0, 0, 0, dim, ffn)
    rows = []
    for fmt in args.dtypes.split(","):
        block = make_block(dim, ffn, fmt, device)
        for grid in grids:
            whole, chunked = measure(block, grid, dim, None, device), measure(block, grid, dim, chunk, device)
            tokens, unit = whole["tokens"], whole["tokens"] * dim * 2
            for label, m, c in (("whole", whole, None), ("chunked", chunked, chunk)):
                # The model counts the block's input and the DiT's embedded tokens, allocated before a block runs.
                model = activation_peak_bytes(sizes, tokens, token_chunk=c) - 2 * unit
                rows.append({"dtype": fmt, "grid": grid, "tokens": tokens, "run": label, "chunk": c,
                             "peak_units": {k: v / unit for k, v in m["peaks"].items()}, "model_block_units": model / unit,
                             "block_gib": m["peaks"]["block"] / 2 ** 30})
                print(rows[-1], flush=True)
            rows[-1]["equal_to_whole"] = bool(torch.equal(whole["out"], chunked["out"]))
        del block
    result = {"device": device_name(device), "torch": torch.__version__, "dim": dim, "ffn_dim": ffn, "rows": rows}
    with open(os.path.join(results_dir(), "offload_activations.json"), "w") as f:
        json.dump(result, f, indent=1)
    print(f"\nBlock activation peak, {result['device']}, dim {dim}, ffn {ffn}; unit = one bf16 [tokens, dim] tensor")
    print(f"{'fmt':>4} {'tokens':>6} {'run':>7} {'chunk':>5} {'self':>5} {'cross':>5} {'ffn':>5} {'block':>5} "
          f"{'model':>5} {'GiB':>6} {'equal':>5}")
    for r in rows:
        p = r["peak_units"]
        print(f"{r['dtype']:>4} {r['tokens']:>6} {r['run']:>7} {r['chunk'] or '':>5} {p['self_attn']:5.2f} "
              f"{p['cross_attn']:5.2f} {p['ffn']:5.2f} {p['block']:5.2f} {r['model_block_units']:5.2f} "
              f"{r['block_gib']:6.2f} {str(r.get('equal_to_whole', '')):>5}")


if __name__ == "__main__":
    main()
