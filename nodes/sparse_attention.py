"""LightX2V Sparse Attention: block-sparse 8-bit self-attention with a radial or 3D-window mask (MODEL -> MODEL)."""

from comfy_api.latest import io

from ..lightx2v_nodes.wan.comfy_sparse import apply_sparse_attention
from ..lightx2v_nodes.wan.sparse_attention import MASKS, SparseSettings
from .base import LightX2VNode

_DEFAULTS = SparseSettings()


class SparseAttention(LightX2VNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LightX2VSparseAttention",
            display_name="LightX2V Sparse Attention",
            category="LightX2V",
            description="Self-attention computes only the key tiles a static mask keeps (radial: dense for the "
                        "same frame, a band that halves as the frame distance doubles, the first frame kept whole; "
                        "window: a 3D tile neighbourhood). This CHANGES the output: judge it on real weights and "
                        "prompts. Defaults follow the Radial Attention authors' 4-step Wan2.1-14B settings. Needs "
                        "the lightx2v-int8 attention backend on a CUDA GPU; elsewhere the model runs dense, with a "
                        "warning. The kept fraction is logged once per video size.",
            inputs=[
                io.Model.Input("model", tooltip="A model from LightX2V Load Wan DiT with attention auto or "
                                                "lightx2v-int8."),
                io.Combo.Input("mask", options=list(MASKS), default=_DEFAULTS.mask,
                               tooltip="radial (Li et al. 2025, arXiv 2506.19852) or window (3D tiles in the style "
                                       "of Sliding Tile Attention, arXiv 2502.04507; our default sizes)."),
                io.Int.Input("dense_steps", default=_DEFAULTS.dense_steps, min=0, max=1000,
                             tooltip="The first steps of each sampling run use dense attention."),
                io.Int.Input("dense_blocks", default=_DEFAULTS.dense_blocks, min=0, max=100,
                             tooltip="The first blocks of the DiT always use dense attention."),
                io.Float.Input("radial_decay", default=_DEFAULTS.decay, min=0.01, max=4.0, step=0.01,
                               tooltip="Radial: band width factor for frames two or more apart (larger keeps more)."),
                io.Int.Input("window_frames", default=_DEFAULTS.window_tile[0], min=1, max=64,
                             tooltip="Window: latent frames per tile."),
                io.Int.Input("window_height", default=_DEFAULTS.window_tile[1], min=1, max=256,
                             tooltip="Window: latent rows per tile (after 2x2 patching)."),
                io.Int.Input("window_width", default=_DEFAULTS.window_tile[2], min=1, max=256,
                             tooltip="Window: latent columns per tile (after 2x2 patching)."),
                io.Int.Input("window_radius", default=_DEFAULTS.window_radius[0], min=0, max=16,
                             tooltip="Window: tiles kept on each side of a query's tile, along every axis."),
            ],
            outputs=[io.Model.Output(tooltip="The model with block-sparse self-attention; connect it to any sampler.")],
        )

    @classmethod
    def run(cls, model, mask, dense_steps, dense_blocks, radial_decay, window_frames, window_height, window_width,
                window_radius):
        settings = SparseSettings(mask=mask, dense_steps=dense_steps, dense_blocks=dense_blocks, decay=radial_decay,
                                  window_tile=(window_frames, window_height, window_width),
                                  window_radius=(window_radius,) * 3)
        return io.NodeOutput(apply_sparse_attention(model, settings))


NODES = [SparseAttention]
