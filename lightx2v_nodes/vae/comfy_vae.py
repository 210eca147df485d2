"""ComfyUI side of the tiny VAE: our TAEHV as a native VAE, so VAEDecode, VAEEncode, the tiled
variants and WanImageToVideo all work with it. The only module of lightx2v_nodes.vae importing ComfyUI.
"""

from __future__ import annotations

import math

import torch

import comfy.model_management as mm
import comfy.model_patcher
import comfy.sd
import folder_paths

from ..comfy_common import ProgressReporter
from ..errors import LightX2VError
from .checkpoint import load_taehv
from .taehv import DECODE_MODES, TAEHV, TIME_SCALE, working_memory_bytes

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
FOLDER = "vae_approx"


def tiny_vae_choices() -> list[str]:
    return sorted(folder_paths.get_filename_list(FOLDER))


def decoded_frames(latent_frames: int) -> int:
    return max(0, TIME_SCALE * latent_frames - (TIME_SCALE - 1))


def latent_frames(frames: int) -> int:
    return max(0, math.floor((frames + TIME_SCALE - 1) / TIME_SCALE))


def _pixels_in_range(images: torch.Tensor) -> torch.Tensor:
    return images  # TAEHV works on [0, 1] frames both ways


class TinyWanVAE(comfy.sd.VAE):
    """A comfy.sd.VAE whose model is our TAEHV.

    comfy.sd.VAE.__init__ picks an architecture from the state dict (with the file-name and fp16
    heuristics that mis-handle taew2_1), so its fields are set here directly, as its own TAEHV
    branch sets them: video latents with 4x time and 8x (Wan2.2: 16x) space compression.
    """

    def __init__(self, model: TAEHV, dtype: torch.dtype):
        spec = model.spec
        scale = spec.spatial_scale
        self.first_stage_model = model
        self.latent_channels = spec.latent_channels
        self.latent_dim = 3
        self.output_channels = 3
        self.upscale_ratio = (decoded_frames, scale, scale)
        self.upscale_index_formula = (TIME_SCALE, scale, scale)
        self.downscale_ratio = (latent_frames, scale, scale)
        self.downscale_index_formula = (TIME_SCALE, scale, scale)
        self.process_input = self.process_output = _pixels_in_range
        self.memory_used_decode = lambda shape, dt: working_memory_bytes(spec, shape, dt, model.decode_mode, model.chunk_mb)
        self.memory_used_encode = lambda shape, dt: working_memory_bytes(
            spec, (shape[0], spec.latent_channels, latent_frames(shape[2]), shape[3] // scale, shape[4] // scale),
            dt, model.decode_mode, model.chunk_mb, encode=True)
        self.working_dtypes = list(DTYPES.values())
        self.disable_offload = False
        self.not_video = False
        self.size = None
        self.extra_1d_channel = None
        self.crop_input = True
        self.device = mm.vae_device()
        self.vae_dtype = dtype
        self.output_device = mm.intermediate_device()
        model.default_progress = ProgressReporter
        self.patcher = comfy.model_patcher.ModelPatcher(model, load_device=self.device, offload_device=mm.vae_offload_device())
        self.model_size()


def resolve_dtype(name: str) -> torch.dtype:
    if name == "auto":
        # TAEHV is trained and published in fp16; ComfyUI's --fp16-vae/--bf16-vae/--fp32-vae still apply.
        return mm.vae_dtype(mm.vae_device(), [torch.float16, torch.bfloat16])
    return DTYPES[name]


def load_tiny_vae(name: str, dtype: str = "auto", mode: str = "chunked") -> TinyWanVAE:
    if mode not in DECODE_MODES:
        raise LightX2VError(f"Unknown decode mode '{mode}': use one of {', '.join(DECODE_MODES)}.")
    torch_dtype = resolve_dtype(dtype)
    model = load_taehv(folder_paths.get_full_path_or_raise(FOLDER, name), torch_dtype, mm.vae_offload_device())
    model.decode_mode = mode
    return TinyWanVAE(model, torch_dtype)


def decode_to_images(vae, samples: torch.Tensor, mode: str | None = None) -> torch.Tensor:
    """LATENT samples (B, C, T, h, w) -> IMAGE (B*(4T-3), H, W, 3) float32, with a progress bar."""
    if not isinstance(vae, TinyWanVAE):
        raise LightX2VError("LightX2V Tiny VAE Decode needs the VAE from 'LightX2V Load Tiny VAE'. For other VAEs "
                            "(the full Wan VAE) use the native VAE Decode node.")
    model: TAEHV = vae.first_stage_model
    if samples.ndim == 4:
        samples = samples.unsqueeze(2)  # an image latent is a one-frame video
    mode = mode or model.decode_mode
    mm.load_models_gpu([vae.patcher], memory_required=working_memory_bytes(model.spec, samples.shape, vae.vae_dtype, mode, model.chunk_mb))
    frames = model.decode(samples, mode=mode, progress=ProgressReporter(), out_dtype=torch.float32, out_device=vae.output_device)
    b, _, t, h, w = frames.shape
    return frames.permute(0, 2, 3, 4, 1).reshape(b * t, h, w, 3)
