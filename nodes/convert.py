"""LightX2V Convert Wan DiT: the converter CLI as a node, for users who never open a terminal."""

import logging
import os

from comfy_api.latest import io, ui

from ..lightx2v_nodes.comfy_adapter import (converted_model_path, diffusion_model_choices, lora_file_choices,
                                            resolve_diffusion_model, resolve_lora_file)
from ..lightx2v_nodes.comfy_common import ProgressReporter
from ..lightx2v_nodes.converter.pipeline import convert_checkpoint
from .base import LightX2VNode

log = logging.getLogger("lightx2v_nodes")
NO_LORA = "none"


class ConvertWanDiT(LightX2VNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LightX2VConvertWanDiT",
            display_name="LightX2V Convert Wan DiT",
            category="LightX2V",
            description="Converts a bf16/fp16 Wan2.1 diffusion model to LightX2V's 8-bit format (fp8 or int8 block "
                        "linears with per-channel scales), optionally with a LoRA merged in first, and saves it into "
                        "models/diffusion_models. Load the result with LightX2V Load Wan DiT (quantization auto) after "
                        "refreshing the node list. Needs about 1.5x the source file's size in free RAM (14B bf16: ~45 GB).",
            inputs=[
                io.Combo.Input("model_name", options=diffusion_model_choices(),
                               tooltip="The float (bf16/fp16/fp32) Wan2.1 model to convert, in any layout the loader accepts."),
                io.Combo.Input("format", options=["fp8", "int8"], default="fp8",
                               tooltip="fp8: best quality, fast 8-bit matmuls on RTX 40xx / H100 and newer. int8: fast "
                                       "8-bit matmuls on RTX 30xx / A100 too."),
                io.String.Input("output_name", default="",
                                tooltip="File name in models/diffusion_models (a folder name with save_by_block). Empty: "
                                        "<model>_<format>_lightx2v.safetensors."),
                io.Combo.Input("lora_name", options=[NO_LORA] + lora_file_choices(), default=NO_LORA,
                               tooltip="Optional LoRA (e.g. a step-distill LoRA) merged into the weights before quantizing."),
                io.Float.Input("lora_strength", default=1.0, min=-10.0, max=10.0, step=0.05,
                               tooltip="Strength of the merged LoRA."),
                io.Boolean.Input("save_by_block", default=False,
                                 tooltip="Write a folder with one file per block (LightX2V's layout for lazy block offload)."),
                io.Boolean.Input("overwrite", default=False, tooltip="Replace an existing output of the same name."),
            ],
            outputs=[io.String.Output(display_name="model_name",
                                      tooltip="The converted model's name, as the loader lists it.")],
            is_output_node=True,
        )

    @classmethod
    def run(cls, model_name, format, output_name, lora_name, lora_strength, save_by_block, overwrite):
        if not output_name.strip():
            stem = os.path.splitext(model_name.rstrip("/"))[0]
            output_name = f"{stem}_{format}_lightx2v" + ("" if save_by_block else ".safetensors")
        output_name = output_name.strip()
        if not save_by_block and not output_name.endswith(".safetensors"):
            output_name += ".safetensors"
        lora = resolve_lora_file(lora_name) if lora_name != NO_LORA else None
        report = convert_checkpoint(resolve_diffusion_model(model_name), converted_model_path(output_name), format, lora,
                                    lora_strength, save_by_block, overwrite, progress=ProgressReporter())
        log.info("LightX2V: converted %s", report.summary())
        listed = output_name.rstrip("/") + ("/" if save_by_block else "")
        return io.NodeOutput(listed, ui=ui.PreviewText(report.summary()))


NODES = [ConvertWanDiT]
