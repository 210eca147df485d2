"""LightX2V Multi-GPU: MODEL -> MODEL whose DiT blocks run across several processes (one per GPU)."""

from comfy_api.latest import io

from ..lightx2v_nodes.parallel.comfy_parallel import apply_multi_gpu
from ..lightx2v_nodes.parallel.plan import MODES
from .base import LightX2VNode


class MultiGPU(LightX2VNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LightX2VMultiGPU",
            display_name="LightX2V Multi-GPU",
            category="LightX2V",
            description="Runs the DiT's transformer blocks on several GPUs: one worker process per extra GPU loads "
                        "the same checkpoint, and each step is shared (Ulysses sequence parallel and/or the cfg "
                        "passes on different GPUs). Composes with LoRA, compile, feature cache and the samplers.",
            inputs=[
                io.Model.Input("model", tooltip="A MODEL from LightX2V Load Wan DiT (LoRAs may come before or after)."),
                io.Int.Input("world_size", default=2, min=1, max=16,
                             tooltip="Processes in all, this one included (= GPUs used). 1 = off."),
                io.Combo.Input("mode", options=list(MODES), default="ulysses",
                               tooltip="ulysses: every step's tokens split across all GPUs (any cfg). cfg: the "
                                       "conditional and unconditional passes of cfg > 1 on different GPUs. both: two "
                                       "cfg groups, each splitting tokens across half the GPUs (needs an even world "
                                       "size; at cfg 1 all GPUs split the tokens)."),
                io.String.Input("devices", default="auto", optional=True,
                                tooltip="GPUs of the workers, e.g. 1,2,3; auto = the first ones besides ComfyUI's. "
                                        "A CPU model runs its workers as CPU processes."),
                io.Int.Input("timeout_seconds", default=300, min=5, max=86400, optional=True,
                             tooltip="Longest wait for a worker to finish its part of a step (and to start and load "
                                     "the checkpoint, at least 2 minutes); a dead or hung worker is reported as an "
                                     "error then."),
            ],
            outputs=[io.Model.Output(tooltip="The same model, its blocks run on world_size processes.")],
        )

    @classmethod
    def run(cls, model, world_size, mode, devices="auto", timeout_seconds=300):
        return io.NodeOutput(apply_multi_gpu(model, world_size, mode, devices, timeout_seconds))


NODES = [MultiGPU]
