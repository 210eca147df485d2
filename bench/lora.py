"""LoRA costs at Wan2.1 14B shapes, random weights: side-branch overhead per step, and merge time.

1. Side branch: one 14B DiT block (dim 5120, ffn 13824, 40 heads) in bf16 at 480x832x81 (32,760 tokens, text
   context 512 tokens), forward time without and with a LoRA side branch on all its linears, for ranks 32,
   64, 128. A step is 40 such blocks plus a small head, so the block overhead is the per-step overhead
   (target <= 5% at rank 64). The default branch folds itself into transient copies of the 16-bit weights
   where that moves less memory (video tokens); `act.path` times the block with the activation path only
   (shared q/k/v projection + in-place add, what quantized weights and short inputs use). The block's
   linears alone are timed too (the side branch's own share).
2. Merge: 40 blocks of random bf16 weights on the GPU (~13.9B block parameters) and a rank-64 LoRA on the
   host (as read from a file): time to merge every low-rank pair (fp32 math, cast back) with our merge, and
   with ComfyUI's own calculate_weight (what ModelPatcher runs for the node's `merge` mode) when ComfyUI is
   importable (--comfyui PATH or ./.comfyui).

Prints a table last; writes JSON to $OUT or bench/results/lora.json.
  python bench/lora.py [--ranks 32,64,128] [--runs 10] [--merge-blocks 40] [--comfyui PATH] [--tiny]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time

import torch

from bench_common import ROOT, device_name, results_dir, use_comfyui  # noqa: E402,F401  (puts the repo on sys.path)

from lightx2v_nodes.lora.mapping import LowRankPatch, LoraPlan  # noqa: E402
from lightx2v_nodes.lora.merge import merge_plan  # noqa: E402
from lightx2v_nodes.lora.side_branch import SideBranches  # noqa: E402
from lightx2v_nodes.wan.model import TORCH_OPS, WanBlock, rope_tables  # noqa: E402
from lightx2v_nodes.wan.attention import choose_attention  # noqa: E402

FULL = {"dim": 5120, "ffn": 13824, "heads": 40, "grid": (21, 30, 52), "context": 512, "blocks": 40}
TINY = {"dim": 256, "ffn": 512, "heads": 2, "grid": (2, 8, 8), "context": 16, "blocks": 2}


def block_linears(dim: int, ffn: int) -> dict[str, tuple[int, int]]:
    names = [f"{kind}.{p}" for kind in ("self_attn", "cross_attn") for p in "qkvo"]
    shapes = {n: (dim, dim) for n in names}
    shapes.update({"ffn.0": (ffn, dim), "ffn.2": (dim, ffn)})
    return shapes


def make_block(s, device, dtype) -> WanBlock:
    block = WanBlock(s["dim"], s["ffn"], s["heads"], 1e-6, False, TORCH_OPS, device, dtype)
    with torch.no_grad():
        for name, p in block.named_parameters():
            if p.dim() == 2:
                p.normal_(0, p.shape[1] ** -0.5)
            elif "norm" in name:
                p.fill_(1.0)
            else:
                p.normal_(0, 0.02)
    block.set_attention(choose_attention("auto", device, dtype))
    return block.eval()


def random_plan(shapes: dict[str, tuple[int, int]], rank: int, device, dtype, prefix: str = "") -> LoraPlan:
    patches = []
    for name, (out, fan_in) in shapes.items():
        up = torch.randn(out, rank, device=device, dtype=dtype) * 0.01
        down = torch.randn(rank, fan_in, device=device, dtype=dtype) * fan_in ** -0.5
        patches.append(LowRankPatch(f"{prefix}{name}.weight", up, down, None, name))
    return LoraPlan(patches, [], [], 2 * len(patches))


ROUNDS = 5  # alternating without/with measurements per rank


def timed(fn, warmup: int, runs: int, device) -> float:
    """Median seconds of fn() over runs, after warmup calls."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_side_branch(s, ranks, runs, device, dtype):
    block = make_block(s, device, dtype)
    tokens = math.prod(s["grid"])
    x = torch.randn(1, tokens, s["dim"], device=device, dtype=dtype)
    context = torch.randn(1, s["context"], s["dim"], device=device, dtype=dtype)
    e = torch.randn(1, 6, s["dim"], device=device, dtype=dtype) * 0.1
    rope = rope_tables(s["dim"] // s["heads"], *s["grid"], device=device)
    shapes = block_linears(s["dim"], s["ffn"])
    hidden = torch.randn(1, tokens, s["ffn"], device=device, dtype=dtype)
    # Each linear with the input it sees in the block: cross-attention k/v read the text context, ffn.2 the FFN hidden.
    inputs = {"cross_attn.k": context, "cross_attn.v": context, "ffn.2": hidden}
    linears = [(block.get_submodule(n), inputs.get(n, x)) for n in shapes]

    def run_block():
        block(x, e, rope, context)

    def run_linears():
        for module, inp in linears:
            module(inp)

    rows = []
    with torch.inference_mode():
        for rank in ranks:
            patches = random_plan(shapes, rank, "cpu", dtype).low_rank
            branches = SideBranches(patches, strength=1.0)
            activation_path = SideBranches(patches, strength=1.0, fold_weights=False)
            # Alternate without/with in rounds so clock or thermal drift hits both sides alike.
            samples = {"block": [], "block+": [], "linears": [], "linears+": [], "block+activation": []}
            for _ in range(ROUNDS):
                samples["block"].append(timed(run_block, 1, runs, device))
                samples["linears"].append(timed(run_linears, 1, runs, device))
                with branches.installed(block):
                    samples["block+"].append(timed(run_block, 1, runs, device))
                    samples["linears+"].append(timed(run_linears, 1, runs, device))
                with activation_path.installed(block):
                    samples["block+activation"].append(timed(run_block, 1, runs, device))
            base_block, with_block, base_linears, with_linears, activation_block = (
                statistics.median(samples[k]) for k in ("block", "block+", "linears", "linears+", "block+activation"))
            rows.append({
                "rank": rank, "block_ms": base_block * 1e3, "block_side_branch_ms": with_block * 1e3,
                "block_overhead_pct": 100 * (with_block / base_block - 1),
                "block_activation_path_ms": activation_block * 1e3,
                "block_activation_path_overhead_pct": 100 * (activation_block / base_block - 1),
                "linears_ms": base_linears * 1e3, "linears_side_branch_ms": with_linears * 1e3,
                "linears_overhead_pct": 100 * (with_linears / base_linears - 1),
                "step_estimate_s": s["blocks"] * base_block, "step_side_branch_estimate_s": s["blocks"] * with_block,
                "rounds_ms": {k: [round(v * 1e3, 3) for v in vals] for k, vals in samples.items()},
            })
    return rows


def comfy_merge_function(comfy_dir, cpu):
    """ComfyUI's own weight-patch math, or None when ComfyUI cannot be imported."""
    if not comfy_dir or not os.path.isfile(os.path.join(comfy_dir, "comfy", "lora.py")):
        return None
    use_comfyui(comfy_dir, cpu)
    import comfy.float
    import comfy.lora
    import comfy.weight_adapter

    def merge(params, plan, strength):
        # What ModelPatcher.patch_weight_to_device does per key: fp32 copy, calculate_weight, round back.
        for p in plan.low_rank:
            weight = params[p.target]
            adapter = comfy.weight_adapter.LoRAAdapter(set(), (p.up, p.down, p.alpha, None, None, None))
            out = comfy.lora.calculate_weight([(strength, adapter, 1.0, None, None)], weight.to(torch.float32, copy=True), p.target)
            weight.copy_(comfy.float.stochastic_rounding(out, weight.dtype))

    return merge


def bench_merge(s, rank, blocks, runs, device, dtype, comfy_merge):
    shapes = block_linears(s["dim"], s["ffn"])
    params, patches = {}, []
    for i in range(blocks):
        for name, (out, fan_in) in shapes.items():
            params[f"blocks.{i}.{name}.weight"] = torch.randn(out, fan_in, device=device, dtype=dtype) * fan_in ** -0.5
        patches += random_plan(shapes, rank, "cpu", dtype, prefix=f"blocks.{i}.").low_rank
    plan = LoraPlan(patches, [], [], 2 * len(patches))
    rows = [{"impl": "ours (lightx2v_nodes.lora.merge)", "seconds": timed(lambda: merge_plan(params, plan, 1.0), 1, runs, device)}]
    if comfy_merge is not None:
        rows.append({"impl": "ComfyUI calculate_weight (node merge mode)", "seconds": timed(lambda: comfy_merge(params, plan, 1.0), 1, runs, device)})
    for row in rows:
        row.update({"blocks": blocks, "rank": rank, "parameters": sum(p.numel() for p in params.values()),
                    "lora_parameters": sum(p.up.numel() + p.down.numel() for p in patches)})
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="tiny shapes on the CPU (checks the code paths)")
    parser.add_argument("--ranks", default="32,64,128")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--merge-blocks", type=int, default=None, help="blocks to merge (default: all 40)")
    parser.add_argument("--merge-runs", type=int, default=3)
    parser.add_argument("--comfyui", default=os.environ.get("COMFYUI_DIR", os.path.join(ROOT, ".comfyui")))
    args = parser.parse_args()

    if args.tiny:
        s, device, dtype, runs = TINY, torch.device("cpu"), torch.float32, 2
    else:
        if not torch.cuda.is_available():
            sys.exit("bench/lora.py needs a CUDA GPU (use --tiny on the CPU)")
        s, device, dtype, runs = FULL, torch.device("cuda"), torch.bfloat16, args.runs
    ranks = [int(r) for r in args.ranks.split(",")]
    side = bench_side_branch(s, ranks, runs, device, dtype)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    comfy_merge = comfy_merge_function(args.comfyui, cpu=device.type != "cuda")
    merge = bench_merge(s, 64 if 64 in ranks else ranks[0], args.merge_blocks or s["blocks"],
                        1 if args.tiny else args.merge_runs, device, dtype, comfy_merge)

    result = {"device": device_name(device), "dtype": str(dtype),
              "shapes": {k: list(v) if isinstance(v, tuple) else v for k, v in s.items()}, "tokens": math.prod(s["grid"]),
              "torch": torch.__version__, "side_branch": side, "merge": merge}
    out_dir = results_dir()
    path = os.path.join(out_dir, "lora_tiny.json" if args.tiny else "lora.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)

    print(f"\nLoRA side branch, one block at {result['tokens']} tokens ({result['device']}, {dtype}); JSON: {path}")
    print(f"{'rank':>5} {'block ms':>9} {'+branch':>9} {'overhead':>9} {'act.path':>9} {'linears ms':>11} {'+branch':>9} {'overhead':>9} "
          f"{'step s (x%d)' % s['blocks']:>14}")
    for r in side:
        print(f"{r['rank']:>5} {r['block_ms']:>9.2f} {r['block_side_branch_ms']:>9.2f} {r['block_overhead_pct']:>8.2f}% "
              f"{r['block_activation_path_overhead_pct']:>8.2f}% "
              f"{r['linears_ms']:>11.2f} {r['linears_side_branch_ms']:>9.2f} {r['linears_overhead_pct']:>8.2f}% "
              f"{r['step_estimate_s']:>6.3f}->{r['step_side_branch_estimate_s']:.3f}")
    print(f"\nLoRA merge, rank {merge[0]['rank']}, {merge[0]['blocks']} blocks, {merge[0]['parameters'] / 1e9:.2f}B parameters")
    for r in merge:
        print(f"  {r['impl']:<45} {r['seconds']:.3f} s")


if __name__ == "__main__":
    main()
