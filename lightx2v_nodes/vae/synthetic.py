"""Random TAEHV weight files in the published layouts, for tests, benchmarks and the demo setup.

The weights are scaled so activations stay O(1) through every layer and decoded pixels land mostly
inside [0, 1] (so comparisons are not flattened by the final clamp).
CLI: python -m lightx2v_nodes.vae.synthetic OUT.safetensors|OUT.pth [--channels 16|48] [--dtype fp16|bf16|fp32]
     [--decoder-only] [--wide-tgrow] [--seed N]
"""

from __future__ import annotations

import argparse
import math

import torch
from safetensors.torch import save_file

from .taehv import TAEHV, TaehvSpec

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Output layer: small weights and a mid-grey bias keep random decodes inside (0, 1).
OUTPUT_SCALE, OUTPUT_BIAS = 0.03, 0.5


def random_taehv_state_dict(latent_channels: int = 16, seed: int = 0, encoder: bool = True) -> dict[str, torch.Tensor]:
    """fp32 random weights for every TAEHV key (He-scaled convs, small biases)."""
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in TAEHV(TaehvSpec(latent_channels, has_encoder=encoder)).state_dict().items()}
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in shapes.items():
        if len(shape) == 1:
            t = 0.02 * torch.randn(shape, generator=gen)
        else:
            fan_in = math.prod(shape[1:])
            # MemBlock convs see [x, past] and add a residual: a little below He scale keeps the norm steady.
            gain = 1.0 if ".conv." in key and not key.endswith("conv.weight") else math.sqrt(2.0)
            t = torch.randn(shape, generator=gen) * gain / math.sqrt(fan_in)
        out[key] = t
    out["decoder.22.weight"] *= OUTPUT_SCALE
    out["decoder.22.bias"] = OUTPUT_BIAS + 0.02 * torch.randn(out["decoder.22.bias"].shape, generator=gen)
    return out


def widen_first_tgrow(sd: dict[str, torch.Tensor], seed: int = 1) -> dict[str, torch.Tensor]:
    """The older layout whose decoder.7 TGrow has a time stride of 2 (512 rows); loaders keep the last 256."""
    out = dict(sd)
    kernel = out["decoder.7.conv.weight"]
    extra = torch.randn(kernel.shape, generator=torch.Generator().manual_seed(seed)) / math.sqrt(kernel.shape[1])
    out["decoder.7.conv.weight"] = torch.cat([extra.to(kernel.dtype), kernel])
    return out


def write_taehv(sd: dict[str, torch.Tensor], path: str, dtype: str | torch.dtype = "fp16") -> str:
    """Write a state dict as .safetensors or as a .pth/.pt pickle of tensors (chosen by the extension)."""
    dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    sd = {k: v.to(dtype).contiguous() for k, v in sd.items()}
    if path.endswith(".safetensors"):
        save_file(sd, path)
    else:
        torch.save(sd, path)
    return path


def write_random_taehv(path: str, latent_channels: int = 16, dtype: str | torch.dtype = "fp16", seed: int = 0,
                       encoder: bool = True, wide_tgrow: bool = False) -> str:
    """A random TAEHV file: 16 channels = taew2_1 / lighttaew2_1 layout, 48 = taew2_2."""
    sd = random_taehv_state_dict(latent_channels, seed, encoder)
    if wide_tgrow:
        sd = widen_first_tgrow(sd, seed + 1)
    return write_taehv(sd, path, dtype)


def main(argv=None):
    parser = argparse.ArgumentParser(description="Write a random TAEHV (Wan tiny VAE) weight file.")
    parser.add_argument("out")
    parser.add_argument("--channels", type=int, choices=(16, 48), default=16)
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="fp16")
    parser.add_argument("--decoder-only", action="store_true")
    parser.add_argument("--wide-tgrow", action="store_true", help="decoder.7 with 512 rows (older layout)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    write_random_taehv(args.out, args.channels, args.dtype, args.seed, not args.decoder_only, args.wide_tgrow)
    print(args.out)


if __name__ == "__main__":
    main()
