"""Random LoRA files in every key family, for a given (tiny) Wan config: tests and demos build their own.

Families:
  lightx2v  `diffusion_model.<m>.lora_up/lora_down.weight` (no alpha) + `.diff` (norms), `.diff_b` (biases),
            `blocks.N.diff_m` (modulation): what LightX2V's step-distill LoRAs hold
  alpha     `lora_up/lora_down` + `.alpha` per module (scale = alpha / rank)
  peft      `transformer.<diffusers name>.lora_A/lora_B.weight` (diffusers/PEFT)
  kohya     `lora_unet_blocks_0_self_attn_q.lora_down/lora_up.weight` + `.alpha`
  diff      full diffs only: `.diff` on linear and conv weights, `.diff_b`, `diff_m`, `<parameter>.diff`
CLI: python -m lightx2v_nodes.lora.synthetic OUT --family lightx2v [--task i2v] [--dim 256] [--layers 2] [--rank 8]
"""

from __future__ import annotations

import argparse
import math

import torch
from safetensors.torch import save_file

from ..wan.config import WanConfig
from ..wan.keys import original_to_diffusers
from ..wan.synthetic import DTYPES, parameter_shapes, tiny_config

FAMILIES = ("lightx2v", "alpha", "peft", "kohya", "diff")


def linear_modules(cfg: WanConfig) -> list[str]:
    """Every Linear of the DiT (original names), I2V image layers included."""
    shapes = parameter_shapes(cfg)
    return [k[: -len(".weight")] for k, s in shapes.items() if k.endswith(".weight") and len(s) == 2]


def norm_modules(cfg: WanConfig) -> list[str]:
    shapes = parameter_shapes(cfg)
    return [k[: -len(".weight")] for k, s in shapes.items() if k.endswith(".weight") and len(s) == 1 and k.startswith("blocks.")]


def _low_rank(gen, shape, rank, strength=0.3):
    out, fan_in = shape[0], math.prod(shape[1:])
    up = torch.randn(out, rank, generator=gen) * (strength / math.sqrt(rank))
    down = torch.randn(rank, fan_in, generator=gen) / math.sqrt(fan_in)
    return up, down


def make_lora(cfg: WanConfig, family: str, rank: int = 8, seed: int = 0, prefix: str = "diffusion_model.") -> dict[str, torch.Tensor]:
    """A random LoRA of one family (fp32). `prefix` applies to the lightx2v/alpha/diff families."""
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}")
    gen = torch.Generator().manual_seed(seed)
    shapes = parameter_shapes(cfg)
    sd: dict[str, torch.Tensor] = {}
    if family == "diff":
        for module in linear_modules(cfg)[:: 2] + ["patch_embedding"]:
            sd[f"{prefix}{module}.diff"] = 0.1 * torch.randn(shapes[f"{module}.weight"], generator=gen) / math.sqrt(math.prod(shapes[f"{module}.weight"][1:]))
    else:
        for module in linear_modules(cfg):
            up, down = _low_rank(gen, shapes[f"{module}.weight"], rank)
            alpha = torch.tensor(rank / 2.0)
            if family == "lightx2v":
                sd[f"{prefix}{module}.lora_up.weight"], sd[f"{prefix}{module}.lora_down.weight"] = up, down
            elif family == "alpha":
                sd[f"{prefix}{module}.lora_up.weight"], sd[f"{prefix}{module}.lora_down.weight"] = up, down
                sd[f"{prefix}{module}.alpha"] = alpha
            elif family == "peft":
                name = original_to_diffusers(module)
                sd[f"transformer.{name}.lora_B.weight"], sd[f"transformer.{name}.lora_A.weight"] = up, down
            elif family == "kohya":
                name = "lora_unet_" + module.replace(".", "_")
                sd[f"{name}.lora_up.weight"], sd[f"{name}.lora_down.weight"] = up, down
                sd[f"{name}.alpha"] = alpha
    if family in ("lightx2v", "diff"):
        for key, shape in shapes.items():
            if key.endswith(".bias") and key.startswith("blocks."):
                sd[f"{prefix}{key[: -len('.bias')]}.diff_b"] = 0.01 * torch.randn(shape, generator=gen)
        for module in norm_modules(cfg):
            sd[f"{prefix}{module}.diff"] = 0.05 * torch.randn(shapes[f"{module}.weight"], generator=gen)
        for i in range(cfg.num_layers):
            sd[f"{prefix}blocks.{i}.diff_m"] = 0.05 * torch.randn((1, 6, cfg.dim), generator=gen)
    if family == "diff":
        sd[f"{prefix}head.modulation.diff"] = 0.05 * torch.randn(shapes["head.modulation"], generator=gen)
    return sd


def write_lora(sd: dict[str, torch.Tensor], path: str, dtype: str = "fp32") -> str:
    sd = {k: v.to(DTYPES[dtype]).contiguous() for k, v in sd.items()}
    if path.endswith((".pt", ".pth")):
        torch.save(sd, path)
    else:
        save_file(sd, path)
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description="Write a random LoRA for a tiny Wan2.1 DiT.")
    parser.add_argument("out")
    parser.add_argument("--family", choices=FAMILIES, default="lightx2v")
    parser.add_argument("--task", choices=("t2v", "i2v"), default="t2v")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--ffn-dim", type=int, default=512)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="bf16")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    cfg = tiny_config(args.task, args.dim, args.layers, args.ffn_dim)
    write_lora(make_lora(cfg, args.family, args.rank, args.seed), args.out, args.dtype)
    print(f"wrote a {args.family} LoRA (rank {args.rank}) for {cfg.variant} to {args.out}")


if __name__ == "__main__":
    main()
