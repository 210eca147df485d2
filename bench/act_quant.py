"""Per-token activation quantization (kernels/act_quant.py) at Wan's widths, optionally against an older version.

32,760 rows (480x832x81) x 1,536 / 5,120 (1.3B / 14B dim) and 8,960 / 13,824 (their FFN widths), bf16 in, fp8 and
int8 out, plain and with GELU fused. Median ms (bench_common.median_seconds), GB/s of the minimal traffic (bf16 read
+ 8-bit write) and whether q and the scales equal the PyTorch reference bit for bit (plain mode must; GELU mode
differs in the last float32 rounding of GELU itself). --baseline PATH times another copy of act_quant.py on the
same inputs (e.g. `git show HEAD~3:kernels/act_quant.py > /tmp/old.py`). Writes JSON to $OUT or bench/results/.

  python bench/act_quant.py [--runs 50] [--warmup 10] [--baseline PATH] [--tiny]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys

import torch

from bench_common import device_name, median_seconds, results_dir  # noqa: E402  (puts the repo on sys.path)

from lightx2v_nodes.kernel_loader import load_kernels  # noqa: E402

kernels = load_kernels()
WIDTHS = (1536, 5120, 8960, 13824)


def load_baseline(path):
    """Another act_quant.py, loaded inside the kernels package so that its relative imports (.common) resolve."""
    name = f"{kernels.__name__}.act_quant_baseline"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--baseline", default=None, help="another act_quant.py to time on the same inputs")
    parser.add_argument("--tiny", action="store_true", help="small rows on the CPU (TRITON_INTERPRET=1): the code path runs")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    rows, widths = (64, (96, 3000)) if args.tiny else (32760, WIDTHS)
    baseline = load_baseline(args.baseline) if args.baseline else None
    results = []
    for width in widths:
        x = torch.randn(rows, width, device=device).bfloat16()
        for qdtype in (torch.float8_e4m3fn, torch.int8):
            for gelu in (False, True):
                name = "gelu_quantize_per_token" if gelu else "quantize_per_token"
                want_q, want_s = getattr(kernels, name + "_reference")(x, qdtype)
                q, s = getattr(kernels, name)(x, qdtype)
                row = {"width": width, "qdtype": str(qdtype).replace("torch.", ""), "gelu": gelu,
                       "equal_to_reference": bool(torch.equal(s, want_s) and torch.equal(q.float(), want_q.float())),
                       "ms": median_seconds(lambda: getattr(kernels, name)(x, qdtype), args.warmup, args.runs, device) * 1e3}
                row["gb_per_s"] = x.numel() * 3 / row["ms"] / 1e6
                if baseline is not None:
                    row["baseline_ms"] = median_seconds(lambda: getattr(baseline, name)(x, qdtype), args.warmup,
                                                        args.runs, device) * 1e3
                results.append(row)
        del x
    with open(os.path.join(results_dir(), "act_quant.json"), "w") as f:
        json.dump({"device": device_name(device), "rows": rows, "results": results}, f, indent=1)
    print(f"\nPer-token quantization, {device_name(device)}, {rows} rows, bf16 in")
    print(f"{'width':>6} {'out':>14} {'gelu':>5} {'ms':>8} {'GB/s':>6} {'baseline ms':>11} {'exact':>6}")
    for r in results:
        base = f"{r['baseline_ms']:11.3f}" if "baseline_ms" in r else " " * 11
        print(f"{r['width']:6d} {r['qdtype']:>14} {r['gelu']!s:>5} {r['ms']:8.3f} {r['gb_per_s']:6.0f} {base} "
              f"{r['equal_to_reference']!s:>6}")


if __name__ == "__main__":
    main()
