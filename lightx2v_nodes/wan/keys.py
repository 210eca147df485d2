"""Key layouts of Wan2.1 DiT files, all mapped onto the original Wan key names.

Layouts in the wild: original Wan (no prefix), ComfyUI (`model.diffusion_model.`), `diffusion_model.`,
and diffusers' WanTransformer3DModel names (optionally under `transformer.`).
"""

from __future__ import annotations

import re

from ..errors import LightX2VError

PREFIXES = ("model.diffusion_model.", "diffusion_model.", "transformer.")

# diffusers module path -> original module path (whole dotted segments, matched at the start).
_DIFFUSERS_TOP = {
    "condition_embedder.text_embedder.linear_1": "text_embedding.0",
    "condition_embedder.text_embedder.linear_2": "text_embedding.2",
    "condition_embedder.time_embedder.linear_1": "time_embedding.0",
    "condition_embedder.time_embedder.linear_2": "time_embedding.2",
    "condition_embedder.time_proj": "time_projection.1",
    "condition_embedder.image_embedder.norm1": "img_emb.proj.0",
    "condition_embedder.image_embedder.ff.net.0.proj": "img_emb.proj.1",
    "condition_embedder.image_embedder.ff.net.2": "img_emb.proj.3",
    "condition_embedder.image_embedder.norm2": "img_emb.proj.4",
    "condition_embedder.image_embedder.pos_embed": "img_emb.emb_pos",
    "proj_out": "head.head",
    "scale_shift_table": "head.modulation",
}
# Inside blocks.N. Diffusers' norm2 is the affine cross-attention norm, Wan's norm3.
_DIFFUSERS_BLOCK = {
    "attn1.to_q": "self_attn.q",
    "attn1.to_k": "self_attn.k",
    "attn1.to_v": "self_attn.v",
    "attn1.to_out.0": "self_attn.o",
    "attn1.norm_q": "self_attn.norm_q",
    "attn1.norm_k": "self_attn.norm_k",
    "attn2.to_q": "cross_attn.q",
    "attn2.to_k": "cross_attn.k",
    "attn2.to_v": "cross_attn.v",
    "attn2.to_out.0": "cross_attn.o",
    "attn2.norm_q": "cross_attn.norm_q",
    "attn2.norm_k": "cross_attn.norm_k",
    "attn2.add_k_proj": "cross_attn.k_img",
    "attn2.add_v_proj": "cross_attn.v_img",
    "attn2.norm_added_k": "cross_attn.norm_k_img",
    "norm2": "norm3",
    "ffn.net.0.proj": "ffn.0",
    "ffn.net.2": "ffn.2",
    "scale_shift_table": "modulation",
}
_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")


def strip_prefix(key: str) -> str:
    for prefix in PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def _replace_module(rest: str, table: dict[str, str]) -> str | None:
    for src, dst in table.items():
        if rest == src or rest.startswith(src + "."):
            return dst + rest[len(src):]
    return None


def diffusers_to_original(key: str) -> str:
    """Map one diffusers key (already without prefix) to the original Wan name; unknown keys pass through."""
    m = _BLOCK.match(key)
    if m:
        mapped = _replace_module(m.group(2), _DIFFUSERS_BLOCK)
        return f"blocks.{m.group(1)}.{mapped}" if mapped else key
    return _replace_module(key, _DIFFUSERS_TOP) or key


def original_to_diffusers(key: str) -> str:
    """Inverse of diffusers_to_original (used to write diffusers-layout test files)."""
    m = _BLOCK.match(key)
    if m:
        mapped = _replace_module(m.group(2), {v: k for k, v in _DIFFUSERS_BLOCK.items()})
        return f"blocks.{m.group(1)}.{mapped}" if mapped else key
    return _replace_module(key, {v: k for k, v in _DIFFUSERS_TOP.items()}) or key


def is_diffusers_layout(keys) -> bool:
    return any(k.startswith("condition_embedder.") or ".attn1.to_q." in k for k in keys)


def to_original_layout(state_dict: dict) -> tuple[dict, str]:
    """Return (state dict with original Wan key names, name of the layout found)."""
    stripped = {}
    prefixes_seen = set()
    for key, value in state_dict.items():
        short = strip_prefix(key)
        if short != key:
            prefixes_seen.add(key[: len(key) - len(short)])
        stripped[short] = value
    if is_diffusers_layout(stripped):
        return {diffusers_to_original(k): v for k, v in stripped.items()}, "diffusers"
    layout = next(iter(prefixes_seen)) if prefixes_seen else "original"
    return stripped, layout


def describe_foreign_keys(keys) -> str:
    """A short description of what a non-Wan file seems to hold, for error messages."""
    keys = sorted(keys)
    hints = [
        ("decoder.", "a VAE or tiny VAE (put it in vae/ or vae_approx/)"),
        ("encoder.block.", "a T5 text encoder (put it in text_encoders/)"),
        ("lora_", "a LoRA (use LightX2V Apply LoRA or LoraLoaderModelOnly)"),
        ("double_blocks.", "a Flux/HunyuanVideo DiT, not Wan"),
        ("input_blocks.", "a Stable Diffusion UNet, not Wan"),
        ("vision_model.", "a CLIP vision model (put it in clip_vision/)"),
    ]
    for needle, what in hints:
        if any(needle in k for k in keys):
            return what
    sample = ", ".join(keys[:4]) or "no tensors at all"
    return f"an unknown model (first keys: {sample})"


def check_is_wan(keys) -> None:
    keys = list(keys)
    if "patch_embedding.weight" not in keys or not any(k.startswith("blocks.") for k in keys):
        raise LightX2VError(
            f"This file is not a Wan2.1 DiT: it looks like {describe_foreign_keys(keys)}. "
            "Choose a Wan2.1 diffusion model file (e.g. wan2.1_t2v_14B_bf16.safetensors) in models/diffusion_models."
        )
