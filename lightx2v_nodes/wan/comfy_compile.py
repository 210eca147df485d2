"""ComfyUI side of torch.compile for our DiT: a DIFFUSION_MODEL wrapper that puts the compiled phases on the
blocks for the duration of each model call and takes them off afterwards (lightx2v_nodes/wan/compile.py).

A wrapper on a cloned ModelPatcher, not a change to the model object, so the node composes with LoRA,
Offload and cache nodes in any order, and a workflow without the node runs the model exactly as before.
"""

from __future__ import annotations

import logging

import comfy.patcher_extension

from ..comfy_common import lightx2v_dit
from .compile import CompiledPhases, CompileSettings, unavailable_reason

log = logging.getLogger("lightx2v_nodes")
WRAPPER_KEY = "lightx2v.compile"
_WRAPPER_TYPE = comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL


def apply_compile(model, settings: CompileSettings):
    """A clone of `model` (a ModelPatcher of LightX2V Load Wan DiT) whose DiT blocks run compiled."""
    lightx2v_dit(model, "LightX2V Compile DiT", "ComfyUI's TorchCompileModel node")
    patched = model.clone()
    patched.remove_wrappers_with_key(_WRAPPER_TYPE, WRAPPER_KEY)
    reason = unavailable_reason(model.load_device.type, settings.backend)
    if reason:
        log.warning("LightX2V: torch.compile unavailable (%s); the DiT blocks run uncompiled.", reason)
        return patched
    phases = CompiledPhases(settings)

    def run_compiled(executor, *args, **kwargs):
        target = executor.class_obj
        phases.install(target)
        try:
            return executor(*args, **kwargs)
        finally:
            phases.remove(target)

    patched.add_wrapper_with_key(_WRAPPER_TYPE, WRAPPER_KEY, run_compiled)
    log.info("LightX2V: the DiT blocks' phases will be compiled (torch.compile, %s, mode %s) on the first step; "
             "later steps at the same resolution reuse the compiled code.", settings.backend, settings.mode)
    return patched
