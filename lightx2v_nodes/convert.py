"""python -m lightx2v_nodes.convert SRC OUT --format fp8|int8 [--lora FILE --lora-strength S] [--save-by-block]
[--non-linear-dtype bf16|fp16|fp32] [--force]

Converts a float Wan2.1 DiT (any layout the loader accepts: original, ComfyUI, diffusers, per-block folder,
.pt) to LightX2V's quantized format: 8-bit block linears with per-channel `weight_scale`, the rest in
--non-linear-dtype. The output is verified by reading it back. Needs no ComfyUI.
"""

from __future__ import annotations

import argparse
import logging
import sys

from .errors import LightX2VError
from .converter.pipeline import NON_LINEAR_DTYPES, convert_checkpoint
from .quant.formats import FORMATS


def _progress_bar():
    """(report(done, total), close()): tqdm when installed (created on first use), else a percentage line."""
    try:
        from tqdm import tqdm
    except ImportError:
        def report(done, total):
            if done == total or done % max(total // 20, 1) == 0:
                print(f"\rconverting: {100 * done // total:3d}%", end="\n" if done == total else "", flush=True)
        return report, lambda: None
    bars = []

    def report(done, total):
        if not bars:
            bars.append(tqdm(total=total, desc="converting", unit="tensor"))
        bars[0].update(done - bars[0].n)

    def close():
        for bar in bars:
            bar.close()
    return report, close


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lightx2v_nodes.convert",
                                     description="Convert a bf16/fp16 Wan2.1 DiT to LightX2V int8/fp8 format.")
    parser.add_argument("source", help="checkpoint file or LightX2V per-block folder")
    parser.add_argument("output", help="output .safetensors file (or folder with --save-by-block)")
    parser.add_argument("--format", "--linear-type", dest="fmt", choices=tuple(FORMATS), required=True,
                        help="8-bit format of the block linears")
    parser.add_argument("--lora", help="LoRA file merged into the weights before quantizing")
    parser.add_argument("--lora-strength", type=float, default=1.0)
    parser.add_argument("--save-by-block", action="store_true",
                        help="write block_N.safetensors + non_block.safetensors + index JSON (for lazy offload)")
    parser.add_argument("--non-linear-dtype", choices=tuple(NON_LINEAR_DTYPES), default="bf16",
                        help="dtype of everything that is not quantized (norms, biases, embeddings, head)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing output")
    args = parser.parse_args(argv)
    log = logging.getLogger("lightx2v_nodes")
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)
    previous_level = log.level
    log.setLevel(logging.INFO)
    progress, close = _progress_bar()
    try:
        report = convert_checkpoint(args.source, args.output, args.fmt, args.lora, args.lora_strength,
                                    args.save_by_block, args.force, args.non_linear_dtype, progress)
    except LightX2VError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        close()
        log.removeHandler(handler)
        log.setLevel(previous_level)
    print(report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
