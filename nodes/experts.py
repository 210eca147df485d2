"""Wan2.2 two-expert helper for native custom-sampling graphs: split any SIGMAS at the official expert boundary."""

from comfy_api.latest import io

from ..lightx2v_nodes.sampling.experts import BOUNDARIES, boundary_switch_step, check_switch_step, split_sigmas
from .base import LightX2VNode


class SplitSigmasAtBoundary(LightX2VNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LightX2VSplitSigmasAtBoundary",
            display_name="LightX2V Split Sigmas at Expert Boundary",
            category="LightX2V",
            description="Wan2.2 A14B: splits a schedule where official Wan2.2 hands over from the high-noise to the "
                        "low-noise expert (sigma below the boundary). Feed high_sigmas to SamplerCustomAdvanced with "
                        "the high-noise model, then low_sigmas to a second one with the low-noise model and "
                        "DisableNoise. For step-based splits use native SplitSigmas (step 2 for 4-step distills).",
            inputs=[
                io.Sigmas.Input("sigmas", tooltip="Any schedule (BasicScheduler, LightX2V Distill Sigmas, ...)."),
                io.Float.Input("boundary", default=BOUNDARIES["t2v"], min=0.01, max=0.99, step=0.005,
                               tooltip="Wan2.2's boundary: 0.875 for T2V A14B, 0.900 for I2V A14B. The high-noise "
                                       "expert runs every step whose sigma is at or above it."),
            ],
            outputs=[io.Sigmas.Output(display_name="high_sigmas"), io.Sigmas.Output(display_name="low_sigmas")],
        )

    @classmethod
    def run(cls, sigmas, boundary):
        steps = len(sigmas) - 1
        switch = check_switch_step(boundary_switch_step(sigmas, boundary), steps,
                                   f"step where sigma falls below {boundary:g}")
        return io.NodeOutput(*split_sigmas(sigmas, switch))


NODES = [SplitSigmasAtBoundary]
