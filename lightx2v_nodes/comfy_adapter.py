"""Wraps the project's WanDiT as a native MODEL: ComfyUI's own WAN21 / WAN22 model base (latent format, I2V
concat latent, CLIP-vision conditioning, per-frame timesteps, flow model sampling) around our diffusion model, inside a
standard ModelPatcher, so every native node that takes a Wan MODEL works with it.
"""

from __future__ import annotations

import logging
import os

import torch

import comfy.model_base
import comfy.model_management as mm
import comfy.model_patcher
import comfy.patcher_extension
import comfy.supported_models
import folder_paths

from .errors import LightX2VError
from .quant import apply_quantization, install_quant_linears
from .quant.formats import QUANTIZED_DTYPES, SCALE_SUFFIX
from .placeholders import is_placeholder, placeholder
from .wan.attention import choose_attention
from .wan.checkpoint import is_block_directory
from .wan.config import WanConfig
from .wan.model import WanDiT

log = logging.getLogger("lightx2v_nodes")


class ComfyWanDiT(WanDiT):
    """WanDiT whose forward runs through ComfyUI's DIFFUSION_MODEL wrappers, as native Wan does."""

    def __init__(self, *, image_model: str, **config):
        # ComfyUI's BaseModel builds the diffusion model from its model config's unet_config, whose image_model
        # names the model family for ComfyUI's own detection; the rest are WanDiT's arguments.
        super().__init__(**config)

    def forward(self, x, timestep, context, clip_fea=None, time_dim_concat=None, transformer_options={}, **kwargs):
        wrappers = comfy.patcher_extension.get_all_wrappers(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, transformer_options)
        executor = comfy.patcher_extension.WrapperExecutor.new_class_executor(super().forward, self, wrappers)
        return executor.execute(x, timestep, context, clip_fea, time_dim_concat, transformer_options, **kwargs)


def _init_on_meta(model, model_config, device) -> None:
    """BaseModel's constructor with our DiT built on the meta device (weights are assigned later)."""
    comfy.model_base.BaseModel.__init__(model, model_config, comfy.model_base.ModelType.FLOW,
                                        device=torch.device("meta"), unet_model=ComfyWanDiT)
    model.device = device


class LightX2VWan21(comfy.model_base.WAN21):
    """ComfyUI's WAN21 model base with our DiT inside: Wan2.1 and the Wan2.2 A14B experts.

    `image_to_video` is ComfyUI's own flag (True for models with the CLIP image branch); `needs_start_image` makes a
    missing WanImageToVideo start image an error instead of the zeros ComfyUI would feed silently.
    """

    def __init__(self, model_config, image_to_video: bool, needs_start_image: bool, device=None):
        _init_on_meta(self, model_config, device)
        self.image_to_video = image_to_video
        self.needs_start_image = needs_start_image

    def concat_cond(self, **kwargs):
        if self.needs_start_image and kwargs.get("concat_latent_image") is None:
            clip = " and CLIP vision output" if self.image_to_video else " (no CLIP vision needed for Wan2.2 A14B)"
            raise LightX2VError(
                "This is an image-to-video Wan model but the conditioning has no start image. Pass the "
                f"positive and negative conditioning through WanImageToVideo (with a start image{clip}), "
                "or load a text-to-video model."
            )
        return super().concat_cond(**kwargs)


class LightX2VWan22(comfy.model_base.WAN22):
    """ComfyUI's WAN22 model base (Wan2.2 latent format, a timestep per latent frame from the noise mask) with our
    DiT inside: Wan2.2 TI2V-5B."""

    def __init__(self, model_config, device=None):
        _init_on_meta(self, model_config, device)
        self.image_to_video = True  # as comfy.supported_models.WAN22_T2V builds it


def _model_base(cfg: WanConfig, model_config, device):
    if cfg.is_wan22_ti2v:
        return LightX2VWan22(model_config, device=device)
    return LightX2VWan21(model_config, image_to_video=cfg.model_type == "i2v",
                         needs_start_image=cfg.start_image_channels > 0, device=device)


def _model_config_class(cfg: WanConfig):
    """The supported_models class ComfyUI's own loader picks for these shapes (an A14B I2V expert is WAN21_T2V
    there: model_type t2v with 36 input channels)."""
    if cfg.is_wan22_ti2v:
        return comfy.supported_models.WAN22_T2V
    return comfy.supported_models.WAN21_I2V if cfg.model_type == "i2v" else comfy.supported_models.WAN21_T2V


def _weight_dtype(state_dict: dict[str, torch.Tensor]) -> torch.dtype:
    """The dtype most of the float block weights are stored in (8-bit weights and their scales excluded)."""
    counts: dict[torch.dtype, int] = {}
    for key, value in state_dict.items():
        if key.startswith("blocks.") and value.dtype not in QUANTIZED_DTYPES and not key.endswith(SCALE_SUFFIX):
            counts[value.dtype] = counts.get(value.dtype, 0) + value.numel()
    return max(counts, key=counts.get) if counts else torch.bfloat16


def _is_stored_as_is(key: str, value: torch.Tensor) -> bool:
    """8-bit block weights and their float32 scales keep their dtype; everything else takes the compute dtype."""
    return value.dtype in QUANTIZED_DTYPES or key.endswith(SCALE_SUFFIX)


def build_model_patcher(state_dict: dict[str, torch.Tensor], cfg: WanConfig, dtype: str = "auto",
                        attention: str = "auto", quantization: str = "auto", progress=None) -> comfy.model_patcher.ModelPatcher:
    """A native MODEL around our DiT, holding the given original-layout weights.

    `quantization` is one of QUANTIZATION_CHOICES; with an 8-bit plan the block linears become QuantLinear
    (the rest of the DiT is built from ComfyUI's ops as usual); the plan is kept as `diffusion_model.quant_plan`.
    `attention` is one of wan.attention.BACKENDS, decided here for the load device and compute dtype; what runs is
    `diffusion_model.attention`.
    """
    load_device = mm.get_torch_device()
    offload_device = mm.unet_offload_device()
    model_config = _model_config_class(cfg)({**cfg.unet_config(), "image_model": "wan2.1"})
    if dtype == "auto":
        parameters = sum(v.numel() for v in state_dict.values())
        unet_dtype = mm.unet_dtype(model_params=parameters, supported_dtypes=model_config.supported_inference_dtypes,
                                   weight_dtype=_weight_dtype(state_dict))
    else:
        unet_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
    manual_cast = mm.unet_manual_cast(unet_dtype, load_device, model_config.supported_inference_dtypes)
    model_config.set_inference_dtype(unet_dtype, manual_cast)
    backend = choose_attention(attention, load_device, manual_cast or unet_dtype)
    state_dict, plan = apply_quantization(state_dict, quantization, unet_dtype)

    model = _model_base(cfg, model_config, offload_device)
    if plan is not None:
        install_quant_linears(model.diffusion_model, plan.fmt, plan.mode, bias_dtype=unet_dtype)
    keys = list(state_dict)
    weights = {}
    for i, key in enumerate(keys):
        value = state_dict.pop(key)
        # As in ComfyUI's WanModel the patch embedding stays float32.
        target = value.dtype if _is_stored_as_is(key, value) else torch.float32 if key.startswith("patch_embedding.") else unet_dtype
        # Placeholders of blocks left on disk stay one-element tensors (`.to` would allocate the full size).
        weights[key] = placeholder(value.shape, target) if is_placeholder(value) else value.to(device=offload_device, dtype=target)
        if progress and (i % 64 == 0 or i == len(keys) - 1):
            progress(i + 1, len(keys))
    model.diffusion_model.requires_grad_(False)
    try:
        # Parameters made outside ComfyUI's inference mode take tensors of either mode later (parameters.py).
        with torch.inference_mode(False):
            model.diffusion_model.load_state_dict(weights, strict=True, assign=True)
    except RuntimeError as exc:
        raise LightX2VError(f"The file's tensors do not fit a {cfg.variant}: {str(exc)[:400]}") from None
    model.diffusion_model.quant_plan = plan
    model.diffusion_model.set_attention(backend)
    return comfy.model_patcher.ModelPatcher(model, load_device=load_device, offload_device=offload_device)


def diffusion_model_choices() -> list[str]:
    """Files in models/diffusion_models plus LightX2V per-block directories (listed with a trailing '/')."""
    files = list(folder_paths.get_filename_list("diffusion_models"))
    dirs = []
    for root in folder_paths.get_folder_paths("diffusion_models"):
        if not os.path.isdir(root):
            continue
        for current, subdirs, _ in os.walk(root, followlinks=True):
            for name in subdirs:
                path = os.path.join(current, name)
                if is_block_directory(path):
                    dirs.append(os.path.relpath(path, root).replace(os.sep, "/") + "/")
    return sorted(files) + sorted(dirs)


def resolve_diffusion_model(name: str) -> str:
    if name.endswith("/"):
        for root in folder_paths.get_folder_paths("diffusion_models"):
            path = os.path.join(root, name.rstrip("/"))
            if os.path.isdir(path):
                return path
        raise LightX2VError(f"Per-block checkpoint folder '{name}' not found in models/diffusion_models.")
    return folder_paths.get_full_path_or_raise("diffusion_models", name)


def converted_model_path(name: str) -> str:
    """Where the converter node writes `name`: models/diffusion_models (not the legacy models/unet)."""
    if not name or os.path.isabs(name) or ".." in name.replace("\\", "/").split("/"):
        raise LightX2VError(f"Invalid output name '{name}': give a plain file name such as wan_t2v_14B_fp8.safetensors.")
    folders = folder_paths.get_folder_paths("diffusion_models")  # models/unet (legacy) comes first in ComfyUI
    folder = next((f for f in folders if os.path.basename(os.path.normpath(f)) == "diffusion_models"), folders[0])
    return os.path.join(folder, name)


def lora_file_choices() -> list[str]:
    return list(folder_paths.get_filename_list("loras"))


def resolve_lora_file(name: str) -> str:
    return folder_paths.get_full_path_or_raise("loras", name)
