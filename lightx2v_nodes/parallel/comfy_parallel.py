"""ComfyUI side of the multi-process DiT: a clone of the MODEL whose block calls go through parallel.group's
runner, the patch state read from the ModelPatcher that runs the model, and worker shutdown on unload.

Patches reach the workers as the tensors rank 0 computes with: for every key the running ModelPatcher patches
(weight patches: LoRA merges, native LoRA loaders; object patches of parameters) the whole owning module's
current tensors are sent, once per change of the patcher's patch set; the workers put their file values back for
keys no longer patched. LoRA side branches (LightX2V Apply LoRA, side-branch mode) are sent as their low-rank pairs
and installed the same way on the workers; compiled phases (LightX2V Compile DiT) by their settings.
"""

from __future__ import annotations

import logging
import weakref

import torch

import comfy.patcher_extension

from ..comfy_common import lightx2v_dit
from ..errors import LightX2VError
from ..lora.side_branch import WRAPPER_KEY as SIDE_BRANCH_KEY
from ..wan.model import BLOCK_RUNNER_KEY
from .blocks import PatchState
from .group import GroupSettings, ParallelBlocks, stop_active
from .loading import LoadSpec, dtype_name
from .plan import check_mode

log = logging.getLogger("lightx2v_nodes")
PREFIX = "diffusion_model."
NODE = "LightX2V Multi-GPU"


def remember_load_spec(model, path: str, quantization: str) -> None:
    """Called by the loader: how this MODEL's DiT was made, so that workers can make the same one."""
    base, dit = model.model, model.model.diffusion_model
    cast = base.manual_cast_dtype
    dit.load_spec = LoadSpec(path, dtype_name(base.get_dtype()), dit.attention.name, quantization,
                             dtype_name(cast) if cast is not None else None)


def worker_devices(load_device: torch.device, world_size: int, devices: str) -> tuple[str, ...]:
    """The workers' devices: CPU processes for a CPU model; else the GPUs listed ("1,2,3") or, for "auto", the
    first ones other than the model's own."""
    workers = world_size - 1
    if load_device.type != "cuda":
        return ("cpu",) * workers
    count = torch.cuda.device_count()
    if devices.strip() in ("", "auto"):
        indices = [i for i in range(count) if i != (load_device.index or 0)][:workers]
    else:
        try:
            indices = [int(d.strip().removeprefix("cuda:")) for d in devices.split(",") if d.strip()]
        except ValueError:
            raise LightX2VError(f"devices '{devices}' is not a list of GPU numbers such as 1,2,3 (or auto).") from None
    if len(indices) != workers or any(i >= count or i == (load_device.index or 0) for i in indices):
        raise LightX2VError(f"{world_size} processes need {workers} GPU(s) besides the model's {load_device}, but "
                            f"devices '{devices}' gives {indices} and this machine has {count}. Lower the world "
                            "size or list other GPUs.")
    return tuple(f"cuda:{i}" for i in indices)


def _side_branches(transformer_options) -> list:
    wrappers = transformer_options.get("wrappers", {}).get(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, {})
    return [w.branches for w in wrappers.get(SIDE_BRANCH_KEY, [])]


def _patch_source(base_ref):
    def patch_source(dit, transformer_options):
        base = base_ref()
        patcher = getattr(base, "current_patcher", None)
        if patcher is None:
            raise LightX2VError(f"{NODE} runs inside ComfyUI's samplers; this model call has no ModelPatcher.")
        keys = [k for k, v in patcher.patches.items() if v and k.startswith(PREFIX)]
        for key, value in patcher.object_patches.items():
            if key.startswith(PREFIX):
                if not isinstance(value, torch.Tensor):
                    raise LightX2VError(f"{NODE} cannot send the object patch {key} (a {type(value).__name__}) to its "
                                        "workers: only tensor patches can be. Remove the node that adds it.")
                keys.append(key)
        if keys and getattr(base, "model_lowvram", False):
            raise LightX2VError(f"{NODE}: ComfyUI loaded this patched model partially (low VRAM), so its patched "
                                "weights are only computed layer by layer. Free VRAM or use --highvram.")
        branches = _side_branches(transformer_options)
        token = (patcher.patches_uuid, tuple(sorted((k, id(v)) for k, v in patcher.object_patches.items())),
                 tuple(id(b) for b in branches))

        def make_state():
            weights = {}
            for module_name in sorted({k[len(PREFIX):].rpartition(".")[0] for k in keys}):
                module = dit.get_submodule(module_name)
                for name, value in module.state_dict(keep_vars=True).items():
                    weights[f"{module_name}.{name}" if module_name else name] = value
            return PatchState(weights, branches, None)

        return token, make_state

    return patch_source


def _stop_on_unload(patcher, unpatch_all: bool) -> None:
    """Unloading the model frees the workers too (they hold a copy each); the next run starts them again. A clone
    that is garbage collected detaches without unpatching (ModelPatcher.__del__): that is no unload."""
    if unpatch_all:
        stop_active()


def apply_multi_gpu(model, world_size: int, mode: str, devices: str = "auto", timeout: float = 300.0):
    """A clone of `model` (from LightX2V Load Wan DiT) whose blocks run on `world_size` processes."""
    dit = lightx2v_dit(model, NODE, "a single GPU")
    check_mode(mode, world_size)
    spec = getattr(dit, "load_spec", None)
    if spec is None:
        raise LightX2VError(f"{NODE} needs to know how the model was loaded, and this one was not loaded by "
                            "LightX2V Load Wan DiT from a file. Load it with that node.")
    if dit.block_folder is not None:
        raise LightX2VError(f"{NODE} needs the blocks in memory on every process: turn keep_blocks_on_disk off.")
    if timeout <= 0:
        raise LightX2VError(f"The timeout must be positive (got {timeout}).")
    patched = model.clone()
    if world_size == 1:
        patched.model_options["transformer_options"].pop(BLOCK_RUNNER_KEY, None)
        return patched
    settings = GroupSettings(spec, world_size, worker_devices(model.load_device, world_size, devices), float(timeout))
    runner = ParallelBlocks(settings, mode, _patch_source(weakref.ref(model.model)))
    patched.model_options["transformer_options"][BLOCK_RUNNER_KEY] = runner
    patched.add_callback(comfy.patcher_extension.CallbacksMP.ON_DETACH, _stop_on_unload)
    log.info("LightX2V: the DiT blocks will run on %d processes (%s; mode %s).", world_size,
             ", ".join((str(model.load_device),) + settings.worker_devices), mode)
    return patched
