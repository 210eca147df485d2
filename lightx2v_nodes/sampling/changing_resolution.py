"""LightX2V's changing-resolution inference: the early steps run on a smaller latent.

LightX2V writes a plan as `resolution_rate` (one rate per switch) and `changing_resolution_steps`
(1-based: "after step N, switch"); a final full-resolution stage is always appended. So rates [0.75]
with switch steps [20] of 40 run steps 1-20 at 0.75x and 21-40 at full size, and rates [1.0, 0.75]
with switch steps [10, 35] of 50 run full size, then 0.75x, then full size again.

At a switch after step i (0-based), x0 = x_i - sigma_i * v_i is resized (trilinear) to the next stage's
latent size and re-noised at that same sigma_i with fresh noise: x = (1 - sigma_i) * x0 + sigma_i * noise.
Stage k then samples with shift + k (LightX2V raises the shift by one per switch), continuing at step
i + 1 of the schedule recomputed with the new shift. Only H and W change; a stage at rate r has
int(H*r)//2*2 by int(W*r)//2*2 latents (even, as LightX2V rounds) for r < 1, and exactly H x W at r = 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from ..errors import LightX2VError
from .schedule import check_shift, split_number_list

Schedule = Callable[[float], torch.Tensor]  # shift -> sigmas (one per step, plus the final 0)


@dataclass(frozen=True)
class Stage:
    index: int
    rate: float
    shift: float
    first_step: int  # 0-based index of this stage's first step in the whole run
    end_step: int  # exclusive
    latent_hw: tuple[int, int]
    schedule: torch.Tensor  # the whole run's sigmas under this stage's shift

    @property
    def steps(self) -> int:
        return self.end_step - self.first_step

    @property
    def is_last(self) -> bool:
        return self.end_step == len(self.schedule) - 1

    def sampler_sigmas(self) -> torch.Tensor:
        """The sigmas this stage's sampler runs over. A stage that hands over to another still ends at 0:
        only its last step's x0 is used, and samplers spend no extra model call on a step to sigma 0."""
        sigmas = self.schedule[self.first_step:self.end_step + 1].clone()
        sigmas[-1] = 0.0
        return sigmas

    def exit_sigma(self) -> float:
        """The sigma of this stage's last step: the next stage's latent is re-noised at it."""
        return float(self.schedule[self.end_step - 1])


def parse_rates(text: str) -> list[float]:
    rates = []
    for token in split_number_list(text):
        try:
            rate = float(token)
        except ValueError:
            raise LightX2VError(f"'{token}' in the resolution rates '{text}' is not a number. Example: 0.75") from None
        if not math.isfinite(rate) or not 0 < rate <= 1:
            raise LightX2VError(f"Resolution rate {token} is outside (0, 1]: a rate scales the latent height and width "
                                f"of a stage (0.75 = three quarters). The last stage is always full size.")
        rates.append(rate)
    return rates


def parse_switch_steps(text: str) -> list[int]:
    steps = []
    for token in split_number_list(text):
        try:
            value = float(token)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value != int(value):
            raise LightX2VError(f"Switch step '{token}' in '{text}' is not a whole number. Switch steps count steps "
                                f"from 1: '20' switches resolution after the 20th step.")
        steps.append(int(value))
    return steps


def stage_latent_size(height: int, width: int, rate: float) -> tuple[int, int]:
    if rate == 1.0:
        return height, width
    size = (int(height * rate) // 2 * 2, int(width * rate) // 2 * 2)
    if min(size) < 2:
        raise LightX2VError(f"Resolution rate {rate:g} shrinks the {height}x{width} latent to {size[0]}x{size[1]}, "
                            f"smaller than one 2x2 patch. Use a larger rate or a larger video.")
    return size


def build_plan(rates: list[float], switch_steps: list[int], steps: int, shift: float,
               latent_hw: tuple[int, int], schedule: Schedule) -> list[Stage]:
    """The stages of a run of `steps` steps, validated. No rates and no switch steps = one plain stage."""
    check_shift(shift)
    if len(rates) != len(switch_steps):
        raise LightX2VError(f"Give one resolution rate per switch step (got {len(rates)} rates and "
                            f"{len(switch_steps)} switch steps). As in LightX2V, the stage after the last switch is "
                            f"always full size, so rates '0.75' with switch steps '20' means: 0.75x for steps 1-20, "
                            f"then full size.")
    previous = 0
    for step in switch_steps:
        if step <= previous:
            raise LightX2VError(f"Switch steps must be increasing and at least 1 (got {switch_steps}): each one says "
                                f"after which step (counting from 1) the resolution changes.")
        if step >= steps:
            raise LightX2VError(f"Switch step {step} is beyond the run: with {steps} steps the last switch can come "
                                f"after step {steps - 1} at the latest. Lower the switch step or raise steps.")
        previous = step
    bounds = [0, *switch_steps, steps]
    stages = []
    for k, rate in enumerate([*rates, 1.0]):
        stage_shift = shift + k
        sigmas = schedule(stage_shift)
        if len(sigmas) != steps + 1:
            raise LightX2VError(f"The schedule has {len(sigmas) - 1} steps, expected {steps}.")
        stages.append(Stage(index=k, rate=rate, shift=stage_shift, first_step=bounds[k], end_step=bounds[k + 1],
                            latent_hw=stage_latent_size(*latent_hw, rate), schedule=sigmas))
    return stages


def resize_latent(latent: torch.Tensor, latent_hw: tuple[int, int]) -> torch.Tensor:
    """Trilinear resize of a [B, C, T, H, W] latent (or mask) to new H, W; T is kept."""
    if tuple(latent.shape[-2:]) == tuple(latent_hw):
        return latent
    size = (latent.shape[-3], *latent_hw)
    return F.interpolate(latent.float(), size=size, mode="trilinear", align_corners=False).to(latent.dtype)


def renoise(x0: torch.Tensor, noise: torch.Tensor, sigma: float) -> torch.Tensor:
    """A clean latent put back on the flow path at noise level sigma."""
    return (1.0 - sigma) * x0 + sigma * noise
