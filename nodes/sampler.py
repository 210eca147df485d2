"""LightX2V sampling nodes: the 4-step distill sampler, its SIGMAS for native custom sampling, and
changing-resolution sampling. All of them run through ComfyUI's own samplers."""

import comfy.samplers
from comfy_api.latest import io, ui

from ..lightx2v_nodes.sampling.changing_resolution import build_plan, parse_rates, parse_switch_steps
from ..lightx2v_nodes.sampling.comfy_sampling import (MODE_SAMPLERS, sample_changing_resolution, sample_two_experts,
                                                      sample_with_sigmas)
from ..lightx2v_nodes.sampling.experts import DISTILL_SWITCH_STEP, expert_switch_step
from ..lightx2v_nodes.sampling.schedule import DEFAULT_STEP_LIST, distill_sigmas, multistep_sigmas, parse_step_list
from .base import LightX2VNode

SEED_MAX = 0xFFFFFFFFFFFFFFFF
STEP_LIST_TOOLTIP = ("Timesteps of the distilled model, most noisy first, in (0, 1000], strictly decreasing, any "
                     "number of steps. LightX2V's 4-step Wan2.1 distills use 1000,750,500,250.")
SHIFT_TOOLTIP = ("Flow shift applied to the schedule: sigma = shift*s / (1 + (shift-1)*s). LightX2V's distilled Wan "
                 "models use 5. It replaces the model's own shift (ModelSamplingSD3 has no effect here).")


def _sampling_inputs(cfg_default: float, cfg_tooltip: str):
    return [
        io.Model.Input("model", tooltip="A Wan MODEL (from LightX2V Load Wan DiT or any native loader), patched as you like."),
        io.Conditioning.Input("positive", tooltip="The prompt (for image-to-video: the positive output of WanImageToVideo)."),
        io.Conditioning.Input("negative", optional=True,
                              tooltip="Only used when cfg is not 1. Leave it unconnected for distilled models."),
        io.Latent.Input("latent_image", tooltip="The starting latent: EmptyHunyuanLatentVideo, or WanImageToVideo's latent."),
        io.Int.Input("seed", default=0, min=0, max=SEED_MAX, control_after_generate=True,
                     tooltip="Seed of the starting noise (and of the fresh noise in renoise mode)."),
    ], io.Float.Input("cfg", default=cfg_default, min=0.0, max=100.0, step=0.1, round=0.01, tooltip=cfg_tooltip)


def _with_summary(latent: dict, summary: str) -> io.NodeOutput:
    """The latent, with the run's summary line (s/step, peak VRAM, cache skips) as the node's UI text."""
    return io.NodeOutput(latent, ui=ui.PreviewText(summary))


# switch_at choice -> the sigma boundary it switches at (None: at switch_step).
SWITCH_CHOICES = {"step": None, "boundary T2V (0.875)": 0.875, "boundary I2V (0.900)": 0.900}


class FourStepSampler(LightX2VNode):
    @classmethod
    def define_schema(cls):
        inputs, cfg = _sampling_inputs(1.0, "Classifier-free guidance. Keep 1.0 for distilled models: one model call "
                                            "per step, no negative pass (cfg on blurs distilled video).")
        return io.Schema(
            node_id="LightX2VFourStepSampler",
            display_name="LightX2V 4-Step Sampler",
            category="LightX2V",
            description="Samples a step-distilled Wan model (or base model + distill LoRA) in a few steps with "
                        "LightX2V's schedule, through ComfyUI's own sampler (previews, patches, I2V all work).",
            inputs=[
                *inputs,
                io.String.Input("denoising_step_list", default=DEFAULT_STEP_LIST, tooltip=STEP_LIST_TOOLTIP),
                io.Float.Input("shift", default=5.0, min=0.01, max=100.0, step=0.01, tooltip=SHIFT_TOOLTIP),
                cfg,
                io.Combo.Input("mode", options=list(MODE_SAMPLERS), default="deterministic",
                               tooltip="deterministic: Euler flow step (LightX2V's current rule; = native euler). "
                                       "renoise: x0 plus fresh seeded noise at each step (the rule most community "
                                       "distill LoRAs were trained with; = native lcm)."),
                io.Model.Input("low_noise_model", optional=True,
                               tooltip="Wan2.2 A14B: the low-noise expert (with its own LoRA, cache, offload). `model` "
                                       "is then the high-noise expert. Both stay loaded while they fit; experts with a LightX2V "
                                       "Offload take turns on the GPU."),
                io.Combo.Input("switch_at", options=list(SWITCH_CHOICES), default="step", optional=True,
                               tooltip="Where the low-noise expert takes over. step: at switch_step (LightX2V's "
                                       "4-step Wan2.2 distills: 2). boundary: at the official Wan2.2 sigma boundary "
                                       "(high-noise expert while sigma >= 0.875 for T2V, 0.900 for I2V)."),
                io.Int.Input("switch_step", default=DISTILL_SWITCH_STEP, min=1, max=1000, optional=True,
                             tooltip="With switch_at = step: steps before it run on the high-noise expert (2 = steps "
                                     "1-2 high, 3-4 low)."),
            ],
            outputs=[io.Latent.Output(tooltip="The denoised latent: decode it with VAE Decode or a tiny VAE.")],
        )

    @classmethod
    def run(cls, model, positive, latent_image, seed, denoising_step_list, shift, cfg, mode, negative=None,
            low_noise_model=None, switch_at="step", switch_step=DISTILL_SWITCH_STEP):
        sigmas = distill_sigmas(parse_step_list(denoising_step_list), shift)
        label = f"{len(sigmas) - 1}-step {mode}"
        if low_noise_model is not None:
            switch = expert_switch_step(sigmas, SWITCH_CHOICES[switch_at], switch_step)
            return _with_summary(*sample_two_experts(model, low_noise_model, positive, negative, latent_image, seed,
                                                     sigmas, switch, cfg, MODE_SAMPLERS[mode], label=label))
        return _with_summary(*sample_with_sigmas(model, positive, negative, latent_image, seed, sigmas, cfg,
                                                 MODE_SAMPLERS[mode], label=label))


class DistillSigmas(LightX2VNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LightX2VDistillSigmas",
            display_name="LightX2V Distill Sigmas",
            category="LightX2V",
            description="LightX2V's distilled schedule as SIGMAS (ending in 0) for SamplerCustomAdvanced and the "
                        "other native custom-sampling nodes. euler there = deterministic mode, lcm = renoise mode.",
            inputs=[
                io.String.Input("denoising_step_list", default=DEFAULT_STEP_LIST, tooltip=STEP_LIST_TOOLTIP),
                io.Float.Input("shift", default=5.0, min=0.01, max=100.0, step=0.01, tooltip=SHIFT_TOOLTIP),
            ],
            outputs=[io.Sigmas.Output()],
        )

    @classmethod
    def run(cls, denoising_step_list, shift):
        return io.NodeOutput(distill_sigmas(parse_step_list(denoising_step_list), shift))


class ChangingResolutionSampler(LightX2VNode):
    @classmethod
    def define_schema(cls):
        inputs, cfg = _sampling_inputs(5.0, "Classifier-free guidance (5 is usual for base Wan models, 1 for distilled).")
        return io.Schema(
            node_id="LightX2VChangingResolutionSampler",
            display_name="LightX2V Changing-Resolution Sampler",
            category="LightX2V",
            description="LightX2V's changing-resolution inference: early steps on a smaller latent, then x0 is resized "
                        "and re-noised and sampling continues at full size with a larger shift. Runs each stage "
                        "through ComfyUI's sampler.",
            inputs=[
                *inputs,
                io.Int.Input("steps", default=40, min=1, max=10000, tooltip="Total number of steps over all stages."),
                io.Float.Input("shift", default=5.0, min=0.01, max=100.0, step=0.01,
                               tooltip="Flow shift of the first stage; each later stage adds 1 (as LightX2V does). "
                                       "The schedule is LightX2V's: steps evenly spaced sigmas from 0.999, shifted."),
                cfg,
                io.Combo.Input("sampler_name", options=comfy.samplers.KSampler.SAMPLERS, default="uni_pc_bh2",
                               tooltip="ComfyUI sampler run within each stage (uni_pc_bh2 is LightX2V's UniPC; euler "
                                       "for distilled models)."),
                io.String.Input("resolution_rates", default="0.75",
                                tooltip="One rate per switch, as LightX2V writes them: the latent height and width scale "
                                        "of each stage before its switch. A final full-size stage is always added, so "
                                        "'0.75' runs 0.75x then 1x, and '1.0, 0.75' runs 1x, 0.75x, 1x. Empty = plain sampling."),
                io.String.Input("switch_steps", default="20",
                                tooltip="After which steps (counting from 1, increasing, below steps) the resolution "
                                        "changes; one per rate. '20' with 40 steps = half the steps at the low resolution."),
            ],
            outputs=[io.Latent.Output(tooltip="The denoised latent at full size.")],
        )

    @classmethod
    def run(cls, model, positive, latent_image, seed, steps, shift, cfg, sampler_name, resolution_rates,
            switch_steps, negative=None):
        latent_hw = tuple(latent_image["samples"].shape[-2:])
        stages = build_plan(parse_rates(resolution_rates), parse_switch_steps(switch_steps), steps, shift, latent_hw,
                            schedule=lambda stage_shift: multistep_sigmas(steps, stage_shift))
        return _with_summary(*sample_changing_resolution(model, positive, negative, latent_image, seed, stages, cfg,
                                                         sampler_name))


NODES = [FourStepSampler, DistillSigmas, ChangingResolutionSampler]
