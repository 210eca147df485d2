"""Tiny random Wan2.1 / Wan2.2 DiT checkpoints, in every layout and dtype the loader accepts.

No model weights can be downloaded where this project is tested, so tests and the demo build their own.
CLI: python -m lightx2v_nodes.wan.synthetic OUT [--task t2v|i2v|flf2v|i2v_a14b|ti2v] [--dim 256] [--layers 2]
     [--ffn-dim 512] [--layout original|comfy|diffusion_model|diffusers|blocks|pt] [--dtype fp32|bf16|fp16]
"""

from __future__ import annotations

import argparse
import json
import math
import os

import torch
from safetensors.torch import save_file

from .checkpoint import INDEX_NAME, NON_BLOCK_NAME
from .config import CLIP_DIM, HEAD_DIM, PATCH_SIZE, WanConfig
from .keys import original_to_diffusers

LAYOUTS = ("original", "comfy", "diffusion_model", "diffusers", "blocks", "pt")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
FLF_TOKENS = 514  # two CLIP images of 257 tokens


# task -> (input channels, output channels, ComfyUI model_type)
TASKS = {
    "t2v": (16, 16, "t2v"),
    "i2v": (36, 16, "i2v"),
    "flf2v": (36, 16, "i2v"),
    "i2v_a14b": (36, 16, "t2v"),  # Wan2.2 I2V expert: start-image channels, no CLIP image branch
    "ti2v": (48, 48, "t2v"),  # Wan2.2 TI2V-5B: 48-channel latents
}


def tiny_config(task: str = "t2v", dim: int = 256, layers: int = 2, ffn_dim: int = 512, text_dim: int = 4096) -> WanConfig:
    """dim must be a multiple of 128 and text_dim 4096 for ComfyUI's own loader to detect the file."""
    in_dim, out_dim, model_type = TASKS[task]
    return WanConfig(
        dim=dim, ffn_dim=ffn_dim, num_heads=dim // HEAD_DIM, num_layers=layers,
        in_dim=in_dim, out_dim=out_dim, text_dim=text_dim, model_type=model_type,
        flf_pos_embed_token_number=FLF_TOKENS if task == "flf2v" else None,
    )


def parameter_shapes(cfg: WanConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor of a Wan2.1 DiT in the original layout, with its shape."""
    d, f = cfg.dim, cfg.ffn_dim
    shapes = {
        "patch_embedding.weight": (d, cfg.in_dim, *PATCH_SIZE), "patch_embedding.bias": (d,),
        "text_embedding.0.weight": (d, cfg.text_dim), "text_embedding.0.bias": (d,),
        "text_embedding.2.weight": (d, d), "text_embedding.2.bias": (d,),
        "time_embedding.0.weight": (d, cfg.freq_dim), "time_embedding.0.bias": (d,),
        "time_embedding.2.weight": (d, d), "time_embedding.2.bias": (d,),
        "time_projection.1.weight": (6 * d, d), "time_projection.1.bias": (6 * d,),
        "head.head.weight": (cfg.out_dim * math.prod(PATCH_SIZE), d), "head.head.bias": (cfg.out_dim * math.prod(PATCH_SIZE),),
        "head.modulation": (1, 2, d),
    }
    attn = ["q", "k", "v", "o"] + (["k_img", "v_img"] if cfg.model_type == "i2v" else [])
    for i in range(cfg.num_layers):
        b = f"blocks.{i}."
        for kind in ("self_attn", "cross_attn"):
            for name in attn if kind == "cross_attn" else attn[:4]:
                shapes[f"{b}{kind}.{name}.weight"] = (d, d)
                shapes[f"{b}{kind}.{name}.bias"] = (d,)
            shapes[f"{b}{kind}.norm_q.weight"] = (d,)
            shapes[f"{b}{kind}.norm_k.weight"] = (d,)
        if cfg.model_type == "i2v":
            shapes[f"{b}cross_attn.norm_k_img.weight"] = (d,)
        shapes.update({
            f"{b}norm3.weight": (d,), f"{b}norm3.bias": (d,),
            f"{b}ffn.0.weight": (f, d), f"{b}ffn.0.bias": (f,),
            f"{b}ffn.2.weight": (d, f), f"{b}ffn.2.bias": (d,),
            f"{b}modulation": (1, 6, d),
        })
    if cfg.model_type == "i2v":
        c = CLIP_DIM
        shapes.update({
            "img_emb.proj.0.weight": (c,), "img_emb.proj.0.bias": (c,),
            "img_emb.proj.1.weight": (c, c), "img_emb.proj.1.bias": (c,),
            "img_emb.proj.3.weight": (d, c), "img_emb.proj.3.bias": (d,),
            "img_emb.proj.4.weight": (d,), "img_emb.proj.4.bias": (d,),
        })
        if cfg.flf_pos_embed_token_number:
            shapes["img_emb.emb_pos"] = (1, cfg.flf_pos_embed_token_number, c)
    return shapes


def random_state_dict(cfg: WanConfig, seed: int = 0, keys: set[str] | None = None, device="cpu") -> dict[str, torch.Tensor]:
    """fp32 random weights scaled so activations stay O(1) through the blocks (outputs are never NaN).

    `keys` limits it to those names (e.g. one block at a time, for full-size models); `device` is where
    they are generated (a GPU makes a 14B model in seconds).
    """
    gen = torch.Generator(device=device).manual_seed(seed)

    def randn(shape):
        return torch.randn(shape, generator=gen, device=device)

    out = {}
    for key, shape in parameter_shapes(cfg).items():
        if keys is not None and key not in keys:
            continue
        if key.endswith("modulation") or key.endswith("emb_pos"):
            t = randn(shape) * 0.1
        elif len(shape) == 1 and ("norm" in key or "img_emb.proj.0" in key or "img_emb.proj.4" in key):
            t = (1.0 + 0.1 * randn(shape)) if key.endswith("weight") else 0.05 * randn(shape)
        elif len(shape) == 1:
            t = 0.02 * randn(shape)
        else:
            fan_in = math.prod(shape[1:])
            t = randn(shape) / math.sqrt(fan_in)
        out[key] = t
    return out


def _block_of(key: str) -> int | None:
    return int(key.split(".")[1]) if key.startswith("blocks.") else None


def write_checkpoint(state_dict: dict[str, torch.Tensor], path: str, layout: str = "original", dtype: str = "fp32") -> str:
    """Write an original-layout state dict in the given layout; returns the path written."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}")
    sd = {k: v.to(DTYPES[dtype]).contiguous() for k, v in state_dict.items()}
    if layout == "comfy":
        sd = {"model.diffusion_model." + k: v for k, v in sd.items()}
    elif layout == "diffusion_model":
        sd = {"diffusion_model." + k: v for k, v in sd.items()}
    elif layout == "diffusers":
        sd = {original_to_diffusers(k): v for k, v in sd.items()}
    elif layout == "pt":
        torch.save(sd, path)
        return path
    elif layout == "blocks":
        return _write_block_directory(sd, path)
    save_file(sd, path)
    return path


def _write_block_directory(sd: dict[str, torch.Tensor], path: str) -> str:
    """LightX2V --save_by_block: block_{i}.safetensors, non_block.safetensors and the index JSON."""
    os.makedirs(path, exist_ok=True)
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        i = _block_of(key)
        groups.setdefault(NON_BLOCK_NAME if i is None else f"block_{i}.safetensors", {})[key] = value
    weight_map = {}
    for name, tensors in groups.items():
        save_file(tensors, os.path.join(path, name))
        weight_map.update({k: name for k in tensors})
    total = sum(v.numel() * v.element_size() for v in sd.values())
    with open(os.path.join(path, INDEX_NAME), "w", encoding="utf-8") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=1)
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description="Write a tiny random Wan2.1 DiT checkpoint.")
    parser.add_argument("out")
    parser.add_argument("--task", choices=tuple(TASKS), default="t2v")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--ffn-dim", type=int, default=512)
    parser.add_argument("--layout", choices=LAYOUTS, default="original")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="bf16")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    cfg = tiny_config(args.task, args.dim, args.layers, args.ffn_dim)
    path = write_checkpoint(random_state_dict(cfg, args.seed), args.out, args.layout, args.dtype)
    print(f"wrote {cfg.variant} ({args.layout}, {args.dtype}) to {path}")


if __name__ == "__main__":
    main()
