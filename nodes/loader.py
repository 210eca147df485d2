"""LightX2V Load Wan DiT: a Wan2.1 diffusion model file -> a native MODEL running the project's DiT."""

import logging

from comfy_api.latest import io

from ..lightx2v_nodes.errors import LightX2VError
from ..lightx2v_nodes.comfy_common import ProgressReporter
from ..lightx2v_nodes.comfy_adapter import build_model_patcher, diffusion_model_choices, resolve_diffusion_model
from ..lightx2v_nodes.parallel.comfy_parallel import remember_load_spec
from ..lightx2v_nodes.quant import QUANTIZATION_CHOICES
from ..lightx2v_nodes.wan.attention import BACKENDS, check_attention_choice
from ..lightx2v_nodes.wan.checkpoint import load_wan_checkpoint
from .base import LightX2VNode

log = logging.getLogger("lightx2v_nodes")


class LoadWanDiT(LightX2VNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LightX2VLoadWanDiT",
            display_name="LightX2V Load Wan DiT",
            category="LightX2V",
            description="Loads a Wan2.1 diffusion model (T2V, I2V or FLF2V, any size) with LightX2V's DiT engine. "
                        "The variant is detected from the tensor shapes. Works with every native node that takes a MODEL.",
            inputs=[
                io.Combo.Input("model_name", options=diffusion_model_choices(),
                               tooltip="A file in models/diffusion_models (.safetensors, or .pt/.pth loaded as weights only), "
                                       "or a LightX2V per-block folder (shown with a trailing '/'). Original Wan, ComfyUI "
                                       "and diffusers key layouts are all accepted."),
                io.Combo.Input("dtype", options=["auto", "bf16", "fp16", "fp32"], default="auto",
                               tooltip="Compute dtype. auto picks what ComfyUI would pick for this GPU and file."),
                io.Combo.Input("attention", options=list(BACKENDS), default="auto",
                               tooltip="Attention kernel. lightx2v-int8 = our 8-bit Triton kernel (int8 Q.K, fp8 P.V; "
                                       "1.4x cuDNN on an H200 at 480p, used for long self-attention, SDPA elsewhere). "
                                       "auto = exact PyTorch SDPA for fp32 compute, else lightx2v-int8 where it can "
                                       "run (CUDA GPU with fp8 tensor cores: RTX 40xx / H100 or newer; Triton), else "
                                       "SDPA. A choice that cannot run here runs SDPA; the log says what runs. sage "
                                       "and flash need the sageattention / flash-attn packages."),
                io.Combo.Input("quantization", options=list(QUANTIZATION_CHOICES), default="auto", optional=True,
                               tooltip="8-bit block linears (attention q/k/v/o and FFN; the rest stays in the compute dtype). "
                                       "auto = as stored in the file. fp8/int8 quantize a bf16 file on load (or keep a file "
                                       "already in that format) and quantize activations per token (W8A8: fp8 needs an "
                                       "RTX 40xx/H100-class GPU, int8 runs on any recent GPU). -weight-only keeps 8-bit "
                                       "storage but multiplies in bf16. none dequantizes a quantized file."),
                io.Boolean.Input("keep_blocks_on_disk", default=False, optional=True,
                                 tooltip="Per-block folders only: load just the non-block weights and leave the "
                                         "transformer blocks on disk. A LightX2V Offload node after this loader then "
                                         "streams them from the folder, so host RAM holds a few blocks instead of "
                                         "the model (for machines with little RAM). Needs quantization auto (the "
                                         "folder's own format)."),
            ],
            outputs=[io.Model.Output(tooltip="A native MODEL: connect it to KSampler, LoRA loaders, WanImageToVideo, ...")],
        )

    @classmethod
    def run(cls, model_name, dtype, attention, quantization="auto", keep_blocks_on_disk=False):
        check_attention_choice(attention)  # before reading the file
        progress = ProgressReporter()
        path = resolve_diffusion_model(model_name)
        if keep_blocks_on_disk and quantization != "auto":
            raise LightX2VError(f"keep_blocks_on_disk streams the folder's blocks as they are stored, so quantization "
                                f"must be auto (got {quantization}). Convert the model to a per-block folder in the "
                                "format you want (LightX2V Convert Wan DiT / --save-by-block), or turn it off.")
        state_dict, cfg, layout = load_wan_checkpoint(path, progress=lambda d, t: progress(d, 2 * t),
                                                      blocks_on_disk=keep_blocks_on_disk)
        parameters = sum(v.numel() for v in state_dict.values())
        model = build_model_patcher(state_dict, cfg, dtype, attention, quantization,
                                    progress=lambda d, t: progress(t + d, 2 * t))
        dit = model.model.diffusion_model
        remember_load_spec(model, path, quantization)
        if keep_blocks_on_disk:
            dit.block_folder = path
        quant = dit.quant_plan.describe() if dit.quant_plan else "none"
        log.info("LightX2V: loaded %s (%s layout), dtype %s, attention %s, quantization %s, %.2fM parameters",
                 cfg.variant, layout, str(model.model.get_dtype()).replace("torch.", ""),
                 dit.attention.description, quant, parameters / 1e6)
        return io.NodeOutput(model)


NODES = [LoadWanDiT]
