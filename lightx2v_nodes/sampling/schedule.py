"""Sigma schedules of LightX2V's Wan schedulers (flow matching: x_sigma = (1 - sigma) * x0 + sigma * noise).

A distilled model is sampled at a fixed list of training timesteps (LightX2V `denoising_step_list`,
e.g. 1000,750,500,250). Each t is read as an unshifted sigma s = t/1000 (LightX2V looks t up in the
table linspace(1, 0, 1001) at index 1000 - t, which is the same number), then the flow shift is applied.
The DiT receives timestep = sigma * 1000 as a float; the sampler's last step goes to sigma 0.
"""

from __future__ import annotations

import math
import re

import torch

from ..errors import LightX2VError

NUM_TRAIN_TIMESTEPS = 1000
DEFAULT_STEP_LIST = "1000,750,500,250"
# LightX2V's multi-step scheduler starts from the table's first entry, sigma 0.999 before the shift.
MULTISTEP_SIGMA_MAX = 1.0 - 1.0 / NUM_TRAIN_TIMESTEPS


def split_number_list(text: str) -> list[str]:
    """'1000, 750 500;250' or '[1000, 750]' -> the number tokens (commas, semicolons or spaces separate)."""
    return [token for token in re.split(r"[\s,;]+", str(text).strip().strip("[]()")) if token]


def parse_step_list(text: str) -> list[float]:
    """A denoising step list: numbers in (0, 1000], strictly decreasing, at least one."""
    tokens = split_number_list(text)
    if not tokens:
        raise LightX2VError(f"The denoising step list is empty. Give timesteps separated by commas, "
                            f"e.g. {DEFAULT_STEP_LIST}.")
    steps = []
    for token in tokens:
        try:
            value = float(token)
        except ValueError:
            raise LightX2VError(f"'{token}' in the denoising step list '{text}' is not a number. Give timesteps "
                                f"separated by commas, e.g. {DEFAULT_STEP_LIST}.") from None
        if not math.isfinite(value) or not 0 < value <= NUM_TRAIN_TIMESTEPS:
            raise LightX2VError(f"Timestep {token} in the denoising step list is outside (0, {NUM_TRAIN_TIMESTEPS}]. "
                                f"Use values such as {DEFAULT_STEP_LIST}.")
        if steps and value >= steps[-1]:
            raise LightX2VError(f"The denoising step list '{text}' must be strictly decreasing (from most to least "
                                f"noisy), but {token} follows {steps[-1]:g}. Example: {DEFAULT_STEP_LIST}.")
        steps.append(value)
    return steps


def check_shift(shift: float) -> float:
    if not math.isfinite(shift) or shift <= 0:
        raise LightX2VError(f"shift must be a positive number (got {shift}); LightX2V's distilled Wan models use 5.")
    return float(shift)


def flow_shift(s: float, shift: float) -> float:
    """The timestep shift of flow models: sigma = shift*s / (1 + (shift-1)*s)."""
    return shift * s / (1.0 + (shift - 1.0) * s)


def distill_sigmas(step_list: list[float], shift: float) -> torch.Tensor:
    """float32 sigmas for a denoising step list, one per step plus the final 0."""
    check_shift(shift)
    sigmas = [flow_shift(t / NUM_TRAIN_TIMESTEPS, shift) for t in step_list] + [0.0]
    return torch.tensor(sigmas, dtype=torch.float64).to(torch.float32)


def multistep_sigmas(steps: int, shift: float) -> torch.Tensor:
    """LightX2V's multi-step (UniPC) schedule: `steps` evenly spaced unshifted sigmas from 0.999 down
    (excluding 0), shifted, plus the final 0."""
    check_shift(shift)
    if steps < 1:
        raise LightX2VError(f"steps must be at least 1 (got {steps}).")
    unshifted = [MULTISTEP_SIGMA_MAX * (1.0 - i / steps) for i in range(steps)]
    return torch.tensor([flow_shift(s, shift) for s in unshifted] + [0.0], dtype=torch.float64).to(torch.float32)


def timesteps_fed(sigmas: torch.Tensor) -> list[float]:
    """The float timesteps the DiT receives at each step (the final sigma 0 is never evaluated)."""
    return [float(s) * NUM_TRAIN_TIMESTEPS for s in sigmas[:-1]]
