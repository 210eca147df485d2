"""LoRA as a side branch: y = layer(x) + strength * scale * (x @ down^T) @ up^T, weights left untouched.

Forward hooks on the target modules add the low-rank path to whatever the layer returns, so it works for
every weight format (bf16, fp8, int8, offloaded) and costs ~rank/dim extra FLOPs. Hooks live only inside
`installed(...)`, so nothing is left on the shared modules between runs.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from .mapping import LowRankPatch


class SideBranches:
    def __init__(self, patches: list[LowRankPatch], strength: float):
        self.branches: dict[str, list[tuple[torch.Tensor, torch.Tensor, float]]] = {}
        for p in patches:
            self.branches.setdefault(p.module, []).append((p.down.flatten(1), p.up.flatten(1), strength * p.scale))
        self._cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def modules(self) -> list[str]:
        return list(self.branches)

    def to(self, target):
        """ComfyUI moves sampling wrappers to the compute device and back: drop copies on other devices."""
        if not isinstance(target, torch.dtype):
            kind = torch.device(target).type
            self._cache = {k: v for k, v in self._cache.items() if k[2].type == kind}
        return self

    def _weights(self, module: str, index: int, device, dtype):
        key = (module, index, device, dtype)
        if key not in self._cache:
            down, up, _ = self.branches[module][index]
            self._cache[key] = (down.to(device=device, dtype=dtype), up.to(device=device, dtype=dtype))
        return self._cache[key]

    def _hook(self, name: str):
        def add_branches(module, args, kwargs, output):
            x = args[0] if args else kwargs["input"]
            for index, (_, _, factor) in enumerate(self.branches[name]):
                down, up = self._weights(name, index, output.device, output.dtype)
                h = F.linear(x.to(output.dtype), down)
                if output.is_contiguous() and not output.requires_grad:
                    # In place into the layer's fresh output: no extra [tokens, out] tensor.
                    output.view(-1, output.shape[-1]).addmm_(h.view(-1, h.shape[-1]), up.t(), alpha=factor)
                else:
                    output = output + F.linear(h, up) * factor
            return output
        return add_branches

    @contextlib.contextmanager
    def installed(self, root: torch.nn.Module):
        """Hooks on root's target submodules for the duration of the block."""
        handles = [root.get_submodule(name).register_forward_hook(self._hook(name), with_kwargs=True)
                   for name in self.branches]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
