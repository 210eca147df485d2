"""torch.compile for the DiT: the three phase methods of every block (self-attention, cross-attention, FFN).

Why the phases and not the block or the whole model: WanBlock.forward calls the offload scheduler's
`phase_gate` between phases (stream waits, host bookkeeping), and `run_blocks` honours ComfyUI's
`patches_replace` and the feature cache; all of that stays eager around the compiled phases, so it works
unchanged. Each phase is compiled once from WanBlock's own function with the block passed in: the weights
are graph inputs, so all blocks share one graph per phase, and with fixed shapes (dynamic=False) no step
recompiles. Installing puts a callable in each block's instance __dict__ (shadowing the method); removing
deletes it, so the model object is left exactly as it was.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil

import torch

from ..quant.linear import QuantLinear
from .model import WanBlock

log = logging.getLogger("lightx2v_nodes")

PHASES = ("self_attention_phase", "cross_attention_phase", "ffn_phase")
BACKENDS = ("inductor", "aot_eager")
MODES = ("default", "max-autotune-no-cudagraphs")


@dataclasses.dataclass(frozen=True)
class CompileSettings:
    backend: str = "inductor"
    mode: str = "default"
    # 8-bit linears: inductor's own activation quantization instead of our kernel (bench/dit_forward.py --quant-ab).
    inductor_quantization: bool = False


def unavailable_reason(device_type: str, backend: str = "inductor") -> str | None:
    """Why torch.compile cannot work here (None if it should): checked before anything is compiled."""
    if not hasattr(torch, "compile"):
        return f"this PyTorch ({torch.__version__}) has no torch.compile"
    if backend != "inductor":
        return None
    if device_type == "cuda":
        from torch.utils._triton import has_triton

        if not has_triton():
            return "inductor needs Triton for CUDA code and it is not installed (pip install triton)"
    elif device_type == "cpu" and not any(shutil.which(cc) for cc in ("g++", "c++", "clang++", "cl")):
        return "inductor needs a C++ compiler for CPU code and none is on PATH"
    return None


class _CompiledPhase:
    """One block's phase: runs the shared compiled function, or the eager method after a compile failure."""

    def __init__(self, owner: "CompiledPhases", name: str, block: WanBlock):
        self.owner, self.name, self.block = owner, name, block

    def __call__(self, *args):
        eager = getattr(WanBlock, self.name)
        if self.owner.failed:
            return eager(self.block, *args)
        try:
            return self.owner.functions[self.name](self.block, *args)
        except torch.cuda.OutOfMemoryError:
            raise  # not a compiler problem: ComfyUI handles it
        except Exception as exc:  # noqa: BLE001 - any compiler failure; a real model error re-raises below
            self.owner.fail(exc)
            return eager(self.block, *args)


class CompiledPhases:
    """The compiled phase functions of one model (shared by all its blocks) and their install/remove."""

    def __init__(self, settings: CompileSettings = CompileSettings()):
        if settings.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}")
        if settings.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self.settings = settings
        options = {} if settings.mode == "default" else {"mode": settings.mode}
        self.functions = {name: torch.compile(getattr(WanBlock, name), backend=settings.backend, dynamic=False, **options)
                          for name in PHASES}
        self.failed = False

    def fail(self, exc: Exception) -> None:
        self.failed = True
        log.warning("LightX2V: torch.compile of the DiT blocks failed (%s: %s); running them uncompiled from now on.",
                    type(exc).__name__, str(exc).strip().splitlines()[0][:200] if str(exc).strip() else "")

    def install(self, model: torch.nn.Module) -> None:
        for block in model.blocks:
            for name in PHASES:
                block.__dict__[name] = _CompiledPhase(self, name, block)
            for layer in _quant_linears(block):
                layer.inductor_quantization = self.settings.inductor_quantization

    @staticmethod
    def remove(model: torch.nn.Module) -> None:
        for block in model.blocks:
            for name in PHASES:
                block.__dict__.pop(name, None)
            for layer in _quant_linears(block):
                layer.__dict__.pop("inductor_quantization", None)


def _quant_linears(block: WanBlock):
    return [m for m in block.modules() if isinstance(m, QuantLinear)]


def compile_blocks(model: torch.nn.Module, settings: CompileSettings = CompileSettings()) -> CompiledPhases | None:
    """Install compiled phases on a WanDiT's blocks (plain-PyTorch use, e.g. benchmarks); None if unavailable."""
    device_type = next(model.parameters()).device.type
    reason = unavailable_reason(device_type, settings.backend)
    if reason:
        log.warning("LightX2V: torch.compile unavailable (%s); the DiT blocks run uncompiled.", reason)
        return None
    phases = CompiledPhases(settings)
    phases.install(model)
    return phases
