"""LightX2V Offload: stream the DiT's blocks through a small VRAM budget (block or phase granularity)."""

from comfy_api.latest import io

from ..lightx2v_nodes.offload.comfy_offload import OffloadRequest, apply_offload, resolve_block_folder
from ..lightx2v_nodes.offload.planner import MODES
from .base import LightX2VNode


class Offload(LightX2VNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LightX2VOffload",
            display_name="LightX2V Offload",
            category="LightX2V",
            description="Runs a Wan DiT in little VRAM: a few blocks stay on the GPU, the others are copied in on a "
                        "separate stream while the previous block computes, so the copies hide under compute. The "
                        "plan (mode, resident blocks) is made per run from the budget, resolution and frame count "
                        "and logged in one line; ComfyUI's memory manager sees only what the model really uses.",
            inputs=[
                io.Model.Input("model", tooltip="A model from LightX2V Load Wan DiT (after any LoRA nodes or not: both work)."),
                io.Combo.Input("mode", options=list(MODES), default="auto",
                               tooltip="auto: keep everything on the GPU if it fits, else stream whole blocks, else "
                                       "stream block phases (attention / cross-attention / FFN, ~40% of a block each "
                                       "at most). block / phase: force that granularity. none: no offload."),
                io.Float.Input("vram_budget_gb", default=0.0, min=0.0, max=1024.0, step=0.5,
                               tooltip="GPU memory this model may use, weights and activations together. 0 = auto "
                                       "(free VRAM plus what ComfyUI can unload, minus a margin)."),
                io.Int.Input("resident_blocks", default=-1, min=-1, max=128,
                             tooltip="Blocks kept on the GPU for the whole run. -1 = as many as the budget allows."),
                io.Int.Input("prefetch", default=1, min=1, max=8,
                             tooltip="Units copied ahead of the running one. 1 (two GPU buffers) hides copies when a "
                                     "block computes longer than it copies; raise it if the log shows compute stalls."),
                io.String.Input("lazy_load_dir", default="", optional=True,
                                tooltip="Optional LightX2V per-block folder (in models/diffusion_models, or an absolute "
                                        "path) holding this model: block weights are then read from disk during the "
                                        "run instead of kept in RAM (host RAM: non-block weights + a few blocks). "
                                        "Empty = stream from RAM."),
                io.Boolean.Input("debug_timing", default=False, optional=True,
                                 tooltip="Log copy time, compute stalls and host-to-device bandwidth after each run "
                                         "(per-unit lines at debug log level)."),
            ],
            outputs=[io.Model.Output(tooltip="The same model, streaming its blocks; connect it to any sampler.")],
        )

    @classmethod
    def run(cls, model, mode, vram_budget_gb, resident_blocks, prefetch, lazy_load_dir="", debug_timing=False):
        lazy = resolve_block_folder(lazy_load_dir) if lazy_load_dir.strip() else None
        request = OffloadRequest(mode, vram_budget_gb, resident_blocks, prefetch, lazy, debug_timing)
        return io.NodeOutput(apply_offload(model, request))


NODES = [Offload]
