"""Wan2.2 A14B two-expert sampling: where the high-noise expert hands over to the low-noise one, and whether two
MODELs can be such a pair.

Official Wan2.2 runs the high-noise expert while t >= boundary * 1000 (T2V boundary 0.875, I2V 0.900); LightX2V's
4-step `wan2.2_moe_distill` configs switch by step index instead (`boundary_step_index` 2: steps 0-1 high, 2-3 low).
Both give the same split on the distilled schedule 1000,750,500,250 with shift 5.
"""

from __future__ import annotations

import torch

from ..errors import LightX2VError

DISTILL_SWITCH_STEP = 2
BOUNDARIES = {"t2v": 0.875, "i2v": 0.900}
# The architecture fields two experts of one Wan2.2 model share (ComfyUI's unet_config names).
_PAIRED_FIELDS = ("model_type", "in_dim", "out_dim", "dim", "ffn_dim", "num_layers")


def boundary_switch_step(sigmas: torch.Tensor, boundary: float) -> int:
    """The first step whose sigma is below the boundary: the steps before it run on the high-noise expert."""
    if not 0.0 < boundary < 1.0:
        raise LightX2VError(f"The expert boundary must be between 0 and 1 (got {boundary:g}); Wan2.2 uses 0.875 for "
                            f"T2V and 0.900 for I2V.")
    return int((sigmas[:-1] >= boundary).sum().item())


def check_switch_step(switch_step: int, steps: int, what: str = "switch step") -> int:
    """Both experts must run at least one step, else one MODEL was connected for nothing."""
    if not 1 <= switch_step <= steps - 1:
        raise LightX2VError(
            f"The {what} is {switch_step} for a {steps}-step schedule, so one expert would run no step. The "
            f"high-noise expert runs the steps before it and the low-noise expert the rest: use a value from 1 to "
            f"{steps - 1} (2 for the 4-step Wan2.2 distills), or disconnect the low-noise model.")
    return switch_step


def expert_switch_step(sigmas: torch.Tensor, boundary: float | None, switch_step: int) -> int:
    """The checked switch step: at the sigma boundary if one is given, else `switch_step`."""
    steps = len(sigmas) - 1
    if boundary is None:
        return check_switch_step(switch_step, steps)
    return check_switch_step(boundary_switch_step(sigmas, boundary), steps, f"step where sigma falls below {boundary:g}")


def split_sigmas(sigmas: torch.Tensor, switch_step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """As ComfyUI's SplitSigmas: the high part ends at the switch sigma, the low part starts from it."""
    return sigmas[:switch_step + 1], sigmas[switch_step:]


def check_expert_pair(high: dict, low: dict, high_name: str, low_name: str) -> None:
    """Two experts must be the same architecture and task (both A14B T2V, or both A14B I2V); `high`/`low` are
    unet_config dicts, `*_name` what to call each model in the message."""
    differences = [f"{field} {high.get(field)} vs {low.get(field)}" for field in _PAIRED_FIELDS
                   if high.get(field) != low.get(field)]
    if differences:
        raise LightX2VError(
            f"The high-noise model ({high_name}) and the low-noise model ({low_name}) are not two experts of one "
            f"Wan2.2 model: {', '.join(differences)}. Load the matching pair (e.g. wan2.2_t2v_high_noise_14B and "
            f"wan2.2_t2v_low_noise_14B, or both I2V files), or disconnect the low-noise model.")
