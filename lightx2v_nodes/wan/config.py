"""Wan2.1 / Wan2.2 DiT hyper-parameters, detected from tensor shapes (never from file names).

Wan2.2's A14B experts have Wan2.1 14B shapes (the I2V experts take 36 input channels and have no CLIP image branch);
TI2V-5B has 48 latent channels in and out. ComfyUI's comfy/model_detection.py tells the Wan families apart by the
same keys; the families this pack does not run are refused by name.
"""

from __future__ import annotations

import dataclasses
import re

from ..errors import LightX2VError

HEAD_DIM = 128
CLIP_DIM = 1280  # CLIP-ViT-H penultimate features fed to img_emb
PATCH_SIZE = (1, 2, 2)

# (dim, layers) -> published size name, for the one-line load report and cache tables.
_KNOWN_SIZES = {(1536, 30): "1.3B", (5120, 40): "14B", (3072, 30): "5B"}
WAN21_LATENT_CHANNELS = 16
WAN22_LATENT_CHANNELS = 48  # the Wan2.2 VAE of TI2V-5B
START_IMAGE_MASK_CHANNELS = 4  # I2V input: noise latent + 4 mask channels + start-image latent

# Keys that mark Wan families this pack does not run (as comfy/model_detection.py tells them apart).
_UNSUPPORTED_FAMILIES = (
    ("vace_patch_embedding.weight", "VACE"),
    ("control_adapter.conv.weight", "camera control (Fun-Camera)"),
    ("casual_audio_encoder.encoder.final_linear.weight", "S2V (speech to video)"),
    ("audio_proj.audio_proj_glob_1.layer.bias", "HuMo"),
    ("face_adapter.fuser_blocks.0.k_norm.weight", "Animate"),
    ("ref_conv.weight", "Fun (reference-image control)"),
)


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
    # "t2v" or "i2v" as ComfyUI names them: "i2v" has the CLIP image branch (FLF2V is i2v with img_emb.emb_pos);
    # Wan2.2's I2V experts are "t2v" with 36 input channels, TI2V-5B is "t2v" with 48 in and out.
    model_type: str = "t2v"
    flf_pos_embed_token_number: int | None = None
    eps: float = 1e-6

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def is_wan22_ti2v(self) -> bool:
        """Wan2.2 TI2V-5B layout: 48-channel latents in and out, start image as the first latent frame."""
        return self.out_dim == WAN22_LATENT_CHANNELS

    @property
    def start_image_channels(self) -> int:
        """Input channels beyond the latent (mask + start-image latent) that WanImageToVideo supplies; 0 if none."""
        return self.in_dim - self.out_dim

    @property
    def task(self) -> str:
        if self.is_wan22_ti2v:
            return "TI2V"
        if self.model_type == "t2v":
            return "I2V" if self.start_image_channels else "T2V"
        return "FLF2V" if self.flf_pos_embed_token_number else "I2V"

    @property
    def size_name(self) -> str:
        return _KNOWN_SIZES.get((self.dim, self.num_layers), f"dim {self.dim} x {self.num_layers} layers")

    @property
    def generation(self) -> str:
        """Wan2.2 where the shapes say so (TI2V-5B, an I2V expert without CLIP branch); A14B T2V experts have the
        exact shapes of Wan2.1 T2V 14B and are reported as such."""
        if self.is_wan22_ti2v or (self.model_type == "t2v" and self.start_image_channels):
            return "Wan2.2"
        return "Wan2.1"

    @property
    def variant(self) -> str:
        return f"{self.generation} {self.task} {self.size_name}"

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


def refuse_unsupported_family(keys) -> None:
    """A LightX2VError naming the Wan family if the keys mark one this pack does not run."""
    keys = set(keys)
    for key, family in _UNSUPPORTED_FAMILIES:
        if key in keys:
            raise LightX2VError(
                f"This is a Wan {family} model (it has {key}), which LightX2V Load Wan DiT does not run: it supports "
                "Wan2.1 T2V/I2V/FLF2V, Wan2.2 A14B T2V/I2V experts and Wan2.2 TI2V-5B. Load this file with "
                "ComfyUI's Load Diffusion Model (UNETLoader) instead.")


def _check_channels(in_dim: int, out_dim: int, is_i2v: bool) -> None:
    """The input/output channel pairs of the families we run; anything else is a control variant (Fun-Control,
    camera, ...) with extra conditioning inputs that our model base would not supply."""
    plain = {(WAN21_LATENT_CHANNELS, WAN21_LATENT_CHANNELS), (WAN22_LATENT_CHANNELS, WAN22_LATENT_CHANNELS)}
    start_image = (WAN21_LATENT_CHANNELS + START_IMAGE_MASK_CHANNELS + WAN21_LATENT_CHANNELS, WAN21_LATENT_CHANNELS)
    if (in_dim, out_dim) in plain and not is_i2v or (in_dim, out_dim) == start_image:
        return
    family = "Fun-Control" if is_i2v and in_dim == 48 else "control or inpainting"
    raise LightX2VError(
        f"This Wan DiT takes {in_dim} input and {out_dim} output channels{' with a CLIP image branch' if is_i2v else ''}, "
        f"which looks like a Wan {family} model; LightX2V Load Wan DiT runs T2V (16 -> 16), I2V (36 -> 16) and "
        "Wan2.2 TI2V-5B (48 -> 48) models. Load this file with ComfyUI's Load Diffusion Model (UNETLoader) instead.")


def detect_config(shapes: dict[str, tuple[int, ...]]) -> WanConfig:
    """Detect a Wan2.1 / Wan2.2 DiT from the shapes of a state dict in the original key layout."""
    refuse_unsupported_family(shapes)
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
    out_dim = shapes["head.head.weight"][0] // (PATCH_SIZE[0] * PATCH_SIZE[1] * PATCH_SIZE[2])
    _check_channels(in_dim, out_dim, is_i2v)
    return WanConfig(
        dim=dim,
        ffn_dim=shapes["blocks.0.ffn.0.weight"][0],
        num_heads=dim // HEAD_DIM,
        num_layers=num_layers,
        in_dim=in_dim,
        out_dim=out_dim,
        text_dim=shapes["text_embedding.0.weight"][1],
        freq_dim=shapes.get("time_embedding.0.weight", (dim, 256))[1],
        model_type="i2v" if is_i2v else "t2v",
        flf_pos_embed_token_number=flf[1] if flf is not None else None,
    )
