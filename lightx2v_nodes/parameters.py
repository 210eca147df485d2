"""Frozen Parameters that work in and out of inference mode.

ComfyUI runs every node under torch.inference_mode(). A Parameter object made there cannot later be pointed at a
tensor made outside it: after `param.data = t`, every op on it fails with "Inference tensors do not track version
counter". The offload scheduler re-points parameters, and a MODEL may be sampled again outside the executor (a
script, another node), so the Parameters the pack creates are made outside inference mode: such a Parameter takes
tensors of either kind.
"""

from __future__ import annotations

import torch


def frozen_parameter(value: torch.Tensor) -> torch.nn.Parameter:
    """A requires_grad=False Parameter around `value`, made outside inference mode whatever the caller's mode."""
    with torch.inference_mode(False):
        return torch.nn.Parameter(value, requires_grad=False)
