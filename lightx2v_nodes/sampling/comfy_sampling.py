"""Runs our schedules through ComfyUI's own sampling machinery (the only sampling module importing comfy).

Going through comfy.samplers.CFGGuider + KSAMPLER is what lets image-to-video conditioning from
WanImageToVideo, native model patches and wrappers, latent previews and interruption work unchanged.
Sigmas are passed explicitly, so the MODEL's own model_sampling shift (8 for Wan, or whatever
ModelSamplingSD3 set) never changes the schedule: for flow models it only turns sigma into the
timestep the DiT receives, sigma * 1000.
"""

from __future__ import annotations

import logging
import math
import time

import torch

import comfy.model_management as mm
import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview

from ..comfy_common import CACHE_SKIPS_ATTRIBUTE, show_in_ui
from ..errors import LightX2VError
from .changing_resolution import Stage, renoise, resize_latent
from .experts import check_expert_pair, split_sigmas

log = logging.getLogger("lightx2v_nodes")

# Distill modes of the 4-step sampler and the ComfyUI sampler that implements each update rule.
MODE_SAMPLERS = {
    "deterministic": "euler",  # x_next = x0 + sigma_next * v: an Euler step of the flow ODE
    "renoise": "lcm",  # x_next = (1 - sigma_next) * x0 + sigma_next * fresh seeded noise
}
# Samplers that pick their own steps: a switch step means nothing to them.
ADAPTIVE_SAMPLERS = ("dpm_fast", "dpm_adaptive")


class StepProgress:
    """One progress bar (with latent previews) over a whole run, the latest x0 (the denoised estimate the sampler
    reports at each step), and one summary line at the end: time per step, peak VRAM, feature-cache skips."""

    def __init__(self, model, total_steps: int, label: str):
        self.preview = latent_preview.prepare_callback(model, total_steps)
        self.total_steps = total_steps
        self.label = label
        self.device = mm.get_torch_device()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self.started = time.perf_counter()
        self.steps_done = 0
        self.last_step = -1
        self.x0 = None
        self.cache_skipped = self.cache_passes = 0

    def callback(self, step_offset: int = 0):
        def on_step(step, x0, x, total_steps):
            step += step_offset
            self.steps_done += 1
            self.last_step, self.x0 = step, x0
            self.preview(step, x0, x, self.total_steps)
        return on_step

    def sample(self, guider: comfy.samplers.CFGGuider, *args, step_offset: int = 0, **kwargs) -> torch.Tensor:
        """guider.sample(...) with this run's callback, noting what a feature cache skipped in it."""
        samples = guider.sample(*args, callback=self.callback(step_offset),
                                disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, **kwargs)
        skipped, passes = getattr(guider, CACHE_SKIPS_ATTRIBUTE, (0, 0))
        self.cache_skipped += skipped
        self.cache_passes += passes
        return samples

    def summary(self) -> str:
        """The run's one summary line, logged and shown on the running node."""
        elapsed = time.perf_counter() - self.started
        steps = self.steps_done or self.total_steps
        parts = [f"LightX2V {self.label}: {steps} steps in {elapsed:.1f} s, {elapsed / max(steps, 1):.2f} s/step"]
        if self.device.type == "cuda":
            parts.append(f"peak VRAM {torch.cuda.max_memory_allocated(self.device) / 2**30:.2f} GiB")
        if self.cache_skipped:
            parts.append(f"feature cache skipped {self.cache_skipped}/{self.cache_passes} block passes")
        text = ", ".join(parts)
        log.info(text)
        show_in_ui(text)
        return text


def make_guider(model, positive, negative, cfg: float) -> comfy.samplers.CFGGuider:
    """ComfyUI's CFG guider. At cfg 1 it makes one model call per step and never evaluates the negative."""
    if negative is None:
        if not math.isclose(cfg, 1.0):
            raise LightX2VError(f"cfg {cfg:g} needs a negative conditioning: connect one, or set cfg to 1.0 "
                                f"(distilled models are sampled without CFG).")
        negative = []
    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(positive, negative)
    guider.set_cfg(cfg)
    return guider


def check_sampler_name(sampler_name: str) -> str:
    if sampler_name not in comfy.samplers.KSampler.SAMPLERS:
        raise LightX2VError(f"Unknown sampler '{sampler_name}'. Pick one of: {', '.join(comfy.samplers.KSampler.SAMPLERS)}.")
    return sampler_name


def _input_latent(model, latent: dict) -> torch.Tensor:
    """The latent as ComfyUI's samplers take it. A latent made for another VAE is an error: ComfyUI would silently
    widen an empty one to the model's channels at the wrong size (a Wan2.1 latent is H/8, Wan2.2's H/16)."""
    samples = latent["samples"]
    channels = model.get_model_object("latent_format").latent_channels
    if not samples.is_nested and samples.ndim == 5 and samples.shape[1] != channels:
        raise LightX2VError(
            f"The latent has {samples.shape[1]} channels but this model works on {channels}-channel latents. Wan2.2 "
            "TI2V-5B takes 48-channel latents (Wan22ImageToVideoLatent); Wan2.1 and the Wan2.2 A14B experts take "
            "16-channel ones (EmptyHunyuanLatentVideo or WanImageToVideo). Use the latent node for this model.")
    return comfy.sample.fix_empty_latent_channels(model, samples)


def sample_with_sigmas(model, positive, negative, latent: dict, seed: int, sigmas: torch.Tensor, cfg: float,
                       sampler_name: str, label: str) -> tuple[dict, str]:
    """What SamplerCustomAdvanced does with RandomNoise + CFGGuider + KSamplerSelect, in one call; returns the
    latent and the run's summary line."""
    latent_image = _input_latent(model, latent)
    noise = comfy.sample.prepare_noise(latent_image, seed, latent.get("batch_index"))
    guider = make_guider(model, positive, negative, cfg)
    progress = StepProgress(model, len(sigmas) - 1, label)
    samples = progress.sample(guider, noise, latent_image, comfy.samplers.sampler_object(check_sampler_name(sampler_name)),
                              sigmas, denoise_mask=latent.get("noise_mask"), seed=seed)
    out = latent.copy()
    out["samples"] = samples.to(mm.intermediate_device())
    return out, progress.summary()


def expert_config(model) -> dict:
    """The architecture fields of a MODEL (ours or native), as ComfyUI's model config names them."""
    config = dict(model.model.model_config.unet_config)
    config.setdefault("out_dim", model.get_model_object("latent_format").latent_channels)
    return config


def check_experts(high, low) -> None:
    """Raises before anything runs if `low` cannot take over from `high`."""
    check_expert_pair(expert_config(high), expert_config(low), type(high.model).__name__, type(low.model).__name__)


def offload_model(model) -> None:
    """Moves one MODEL off the GPU through ComfyUI's model management (other loaded models stay)."""
    loaded = mm.current_loaded_models
    for i in range(len(loaded) - 1, -1, -1):
        if loaded[i].model is model:
            loaded[i].model_unload()
            loaded.pop(i)
    mm.soft_empty_cache()


def _streamed(model) -> bool:
    """Whether a LightX2V Offload streams this MODEL (its patcher carries the offload request)."""
    return hasattr(model, "offload_request")


def sample_two_experts(high, low, positive, negative, latent: dict, seed: int, sigmas: torch.Tensor,
                       switch_step: int, cfg: float, sampler_name: str, label: str) -> tuple[dict, str]:
    """Wan2.2 A14B: the steps before `switch_step` on the high-noise expert, the rest on the low-noise one.

    The same two calls as ComfyUI's SplitSigmas -> SamplerCustomAdvanced(high, RandomNoise) ->
    SamplerCustomAdvanced(low, DisableNoise): each segment loads its own expert (with its own patches, LoRA,
    cache and offload). Plain experts stay loaded while ComfyUI finds room for both, as native graphs keep them.
    Streamed experts (a LightX2V Offload: the user gave a VRAM budget) take turns: the high-noise expert leaves
    before the low-noise one is loaded, and the low-noise expert a previous run left loaded leaves before this run
    starts, since the budget holds one expert's slots and activations, not two.
    """
    check_experts(high, low)
    take_turns = low is not high and (_streamed(high) or _streamed(low))
    if take_turns:
        offload_model(low)
    high_sigmas, low_sigmas = split_sigmas(sigmas, switch_step)
    sampler = comfy.samplers.sampler_object(check_sampler_name(sampler_name))
    latent_image = _input_latent(high, latent)
    noise = comfy.sample.prepare_noise(latent_image, seed, latent.get("batch_index"))
    progress = StepProgress(high, len(sigmas) - 1, label)
    mask = latent.get("noise_mask")
    samples = progress.sample(make_guider(high, positive, negative, cfg), noise, latent_image, sampler, high_sigmas,
                              denoise_mask=mask, seed=seed)
    mm.throw_exception_if_processing_interrupted()
    if take_turns:
        offload_model(high)
    log.info("LightX2V %s: high-noise expert done (steps 1-%d), low-noise expert takes steps %d-%d", label,
             switch_step, switch_step + 1, len(sigmas) - 1)
    samples = samples.to(mm.intermediate_device())
    samples = progress.sample(make_guider(low, positive, negative, cfg), torch.zeros_like(samples, device="cpu"),
                              samples, sampler, low_sigmas, denoise_mask=mask, seed=seed, step_offset=switch_step)
    out = latent.copy()
    out["samples"] = samples.to(mm.intermediate_device())
    return out, progress.summary()


def conditioning_at_size(conditioning, latent_hw: tuple[int, int]):
    """Conditioning whose image-to-video concat latent and mask are resized (trilinear, like the noisy
    latent) to a stage's latent size. ComfyUI would rescale them itself, but with a center crop whenever
    the even-rounded stage size changes the aspect ratio, misaligning them with the latent."""
    if conditioning is None:
        return None
    out = []
    for tensor, options in conditioning:
        options = options.copy()
        for key in ("concat_latent_image", "concat_mask"):
            value = options.get(key)
            if isinstance(value, torch.Tensor) and value.ndim == 5:
                options[key] = resize_latent(value, latent_hw)
        out.append([tensor, options])
    return out


def _noise_reaching(x_start: torch.Tensor, latent_in: torch.Tensor, sigma: float) -> torch.Tensor:
    """The noise n for which ComfyUI's start point sigma*n + (1-sigma)*latent is exactly x_start: a stage
    after a switch starts from our re-noised latent, at the step its schedule continues from."""
    return (x_start - (1.0 - sigma) * latent_in) / sigma


def sample_changing_resolution(model, positive, negative, latent: dict, seed: int, stages: list[Stage], cfg: float,
                               sampler_name: str) -> tuple[dict, str]:
    """Runs each stage through ComfyUI's sampler at its own latent size (stage k uses seed + k); returns the latent
    and the run's summary line."""
    check_sampler_name(sampler_name)
    if len(stages) > 1 and sampler_name in ADAPTIVE_SAMPLERS:
        raise LightX2VError(f"Sampler '{sampler_name}' chooses its own steps, so it cannot switch resolution at a given "
                            f"step. Use euler, uni_pc_bh2, dpmpp_2m or another fixed-step sampler.")
    full = _input_latent(model, latent)
    if full.is_nested or full.ndim != 5:
        raise LightX2VError(f"Changing-resolution sampling needs a video latent [B, C, T, H, W]; got shape "
                            f"{tuple(full.shape)}. Use EmptyHunyuanLatentVideo or WanImageToVideo for the latent.")
    full_hw = tuple(full.shape[-2:])
    progress = StepProgress(model, stages[-1].end_step, "changing-resolution")
    previous = None
    for stage in stages:
        mm.throw_exception_if_processing_interrupted()
        latent_image = resize_latent(full, stage.latent_hw)
        stage_seed = (seed + stage.index) % 2**64
        noise = comfy.sample.prepare_noise(latent_image, stage_seed, latent.get("batch_index"))
        sigmas = stage.sampler_sigmas()
        if previous is not None:
            x0 = resize_latent(progress.x0.to(device=noise.device, dtype=noise.dtype), stage.latent_hw)
            x_start = renoise(x0, noise, previous.exit_sigma())
            latent_in = model.model.process_latent_in(latent_image) if torch.count_nonzero(latent_image) > 0 else latent_image
            noise = _noise_reaching(x_start, latent_in, float(sigmas[0]))
        conds = (positive, negative) if stage.latent_hw == full_hw else (
            conditioning_at_size(positive, stage.latent_hw), conditioning_at_size(negative, stage.latent_hw))
        log.info("LightX2V changing-resolution: stage %d, steps %d-%d, latent %dx%d, shift %g",
                 stage.index + 1, stage.first_step + 1, stage.end_step, *stage.latent_hw, stage.shift)
        samples = progress.sample(make_guider(model, *conds, cfg), noise, latent_image,
                                  comfy.samplers.sampler_object(sampler_name), sigmas,
                                  denoise_mask=latent.get("noise_mask"), seed=stage_seed, step_offset=stage.first_step)
        if not stage.is_last and progress.last_step != stage.end_step - 1:
            raise LightX2VError(f"Sampler '{sampler_name}' does not report its denoised latent at every step, which "
                                f"changing resolution needs at a switch. Use euler, lcm, uni_pc or dpmpp_2m.")
        previous = stage
    out = latent.copy()
    out["samples"] = samples.to(mm.intermediate_device())
    return out, progress.summary()
