"""LightX2V Apply LoRA: a Wan LoRA of any key family (step-distill LoRAs included) -> a patched native MODEL."""

from comfy_api.latest import io

from ..lightx2v_nodes.lora.comfy_lora import MODES, apply_lora_file, lora_choices
from .base import LightX2VNode


class ApplyLoRA(LightX2VNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LightX2VApplyLoRA",
            display_name="LightX2V Apply LoRA",
            category="LightX2V",
            description="Applies a Wan LoRA (LightX2V step-distill LoRAs, lora_up/down, lora_A/B, kohya, full diffs "
                        "including modulation) to any Wan MODEL. Every key is matched or reported; a LoRA for another "
                        "model is an error. Chain several nodes for several LoRAs.",
            inputs=[
                io.Model.Input("model", tooltip="A Wan MODEL (LightX2V Load Wan DiT, UNETLoader, or another LoRA node)."),
                io.Combo.Input("lora_name", options=lora_choices(),
                               tooltip="A LoRA file in models/loras (.safetensors, or .pt/.pth loaded as weights only)."),
                io.Float.Input("strength", default=1.0, min=-10.0, max=10.0, step=0.01,
                               tooltip="Multiplier of the LoRA. 1.0 for step-distill LoRAs; 0 leaves the model unchanged."),
                io.Combo.Input("mode", options=list(MODES), default="merge",
                               tooltip="merge: added into the weights when the model loads (fastest sampling; undone "
                                       "automatically when the LoRA is removed or changed). side-branch: the low-rank "
                                       "path runs beside each layer (a few % slower, works on any weight format, e.g. "
                                       "quantized layers); full diffs are merged either way."),
            ],
            outputs=[io.Model.Output(tooltip="The model with the LoRA applied (the input model is not modified).")],
        )

    @classmethod
    def run(cls, model, lora_name, strength, mode):
        return io.NodeOutput(apply_lora_file(model, lora_name, strength, mode))


NODES = [ApplyLoRA]
