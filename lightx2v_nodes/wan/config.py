"""Wan2.1 DiT hyper-parameters, detected from tensor shapes (never from file names)."""

from __future__ import annotations

import dataclasses
import re

from ..errors import LightX2VError

HEAD_DIM = 128
CLIP_DIM = 1280  # CLIP-ViT-H penultimate features fed to img_emb
PATCH_SIZE = (1, 2, 2)

# (dim, layers) -> published size name, for the one-line load report and cache tables.
_KNOWN_SIZES = {(1536, 30): "1.3B", (5120, 40): "14B"}


@dataclasses.dataclass(frozen=True)
class WanConfig:
    dim: int
    ffn_dim: int
    num_heads: int
    num_layers: int
    in_dim: int
    out_dim: int = 16
    text_dim: int = 4096
    freq_dim: int = 256
    model_type: str = "t2v"  # "t2v" or "i2v" (FLF2V is i2v with img_emb.emb_pos)
    flf_pos_embed_token_number: int | None = None
    eps: float = 1e-6

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def task(self) -> str:
        if self.model_type == "t2v":
            return "T2V"
        return "FLF2V" if self.flf_pos_embed_token_number else "I2V"

    @property
    def size_name(self) -> str:
        return _KNOWN_SIZES.get((self.dim, self.num_layers), f"dim {self.dim} x {self.num_layers} layers")

    @property
    def variant(self) -> str:
        return f"Wan2.1 {self.task} {self.size_name}"

    def unet_config(self) -> dict:
        """Constructor kwargs of the DiT, named as ComfyUI's WanModel names them."""
        return {
            "model_type": self.model_type,
            "patch_size": PATCH_SIZE,
            "in_dim": self.in_dim,
            "dim": self.dim,
            "ffn_dim": self.ffn_dim,
            "freq_dim": self.freq_dim,
            "text_dim": self.text_dim,
            "out_dim": self.out_dim,
            "num_heads": self.num_heads,
            "num_layers": self.num_layers,
            "eps": self.eps,
            "flf_pos_embed_token_number": self.flf_pos_embed_token_number,
        }


_BLOCK_INDEX = re.compile(r"^blocks\.(\d+)\.")


def detect_config(shapes: dict[str, tuple[int, ...]]) -> WanConfig:
    """Detect a Wan2.1 DiT from the shapes of a state dict in the original key layout."""
    required = ("patch_embedding.weight", "head.head.weight", "blocks.0.ffn.0.weight", "text_embedding.0.weight")
    missing = [k for k in required if k not in shapes]
    if missing:
        raise LightX2VError(f"Not a Wan2.1 DiT: missing {', '.join(missing)}.")
    patch = shapes["patch_embedding.weight"]  # [dim, in_dim, 1, 2, 2]
    if len(patch) != 5 or tuple(patch[2:]) != PATCH_SIZE:
        raise LightX2VError(f"Not a Wan2.1 DiT: patch_embedding.weight has shape {list(patch)}, expected [dim, in_dim, 1, 2, 2].")
    dim, in_dim = patch[0], patch[1]
    if dim % HEAD_DIM:
        raise LightX2VError(f"Unsupported Wan DiT: dim {dim} is not a multiple of the head dim {HEAD_DIM}.")
    num_layers = 1 + max(int(m.group(1)) for k in shapes if (m := _BLOCK_INDEX.match(k)))
    flf = shapes.get("img_emb.emb_pos")
    is_i2v = "img_emb.proj.1.weight" in shapes or "blocks.0.cross_attn.k_img.weight" in shapes
    return WanConfig(
        dim=dim,
        ffn_dim=shapes["blocks.0.ffn.0.weight"][0],
        num_heads=dim // HEAD_DIM,
        num_layers=num_layers,
        in_dim=in_dim,
        out_dim=shapes["head.head.weight"][0] // (PATCH_SIZE[0] * PATCH_SIZE[1] * PATCH_SIZE[2]),
        text_dim=shapes["text_embedding.0.weight"][1],
        freq_dim=shapes.get("time_embedding.0.weight", (dim, 256))[1],
        model_type="i2v" if is_i2v else "t2v",
        flf_pos_embed_token_number=flf[1] if flf is not None else None,
    )
