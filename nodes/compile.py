"""LightX2V Compile DiT: torch.compile of the blocks of a LightX2V Wan DiT (MODEL -> MODEL)."""

from comfy_api.latest import io

from ..lightx2v_nodes.wan.comfy_compile import apply_compile
from ..lightx2v_nodes.wan.compile import BACKENDS, MODES, CompileSettings
from .base import LightX2VNode


class CompileDiT(LightX2VNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LightX2VCompileDiT",
            display_name="LightX2V Compile DiT",
            category="LightX2V",
            description="Compiles the DiT's blocks with torch.compile (one graph per block phase, shared by all "
                        "blocks): fuses norms, modulation, RoPE and the 8-bit activation quantization. The first "
                        "step compiles (about a minute); later steps and runs at the same resolution reuse it. "
                        "Falls back to uncompiled blocks with one log line where compilation is unavailable.",
            inputs=[
                io.Model.Input("model", tooltip="A model from LightX2V Load Wan DiT (LoRA, Offload and cache nodes "
                                                "may come before or after this one)."),
                io.Combo.Input("backend", options=list(BACKENDS), default="inductor",
                               tooltip="inductor: generates fused kernels (needs Triton on NVIDIA GPUs). aot_eager: "
                                       "traces without generating code (for debugging; no speed-up)."),
                io.Combo.Input("mode", options=list(MODES), default="default",
                               tooltip="default: quick compile. max-autotune-no-cudagraphs: also benchmarks kernel "
                                       "variants while compiling (much longer first step, sometimes faster)."),
            ],
            outputs=[io.Model.Output(tooltip="The same model with compiled blocks; connect it to any sampler.")],
        )

    @classmethod
    def run(cls, model, backend, mode):
        return io.NodeOutput(apply_compile(model, CompileSettings(backend, mode)))


NODES = [CompileDiT]
