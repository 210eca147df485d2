"""Applying a LoRA plan to a ComfyUI MODEL (the only module of lightx2v_nodes.lora that imports comfy).

merge: a clone of the ModelPatcher with ComfyUI weight patches ("lora" adapters for low-rank pairs, "diff"
for full diffs, modulation included). ModelPatcher computes them in fp32 when the model is loaded, backs the
original weights up and restores them when another clone (no LoRA, other strength) is loaded, so nothing
drifts; layers that store weights in a special format are patched through their convert_weight/set_weight.
Parameters of non-leaf modules (a block's `modulation`, `head.modulation`, `img_emb.emb_pos`) are never
patched by ModelPatcher.load (it skips modules that have both own parameters and children, which is also
why native LoRA loading drops them): they are replaced through object patches, which ModelPatcher sets on
load and restores on unload just the same.
side-branch: low-rank pairs stay out of the weights, added to the layers' outputs by forward hooks that a
DIFFUSION_MODEL wrapper installs around each forward (wrappers are copied with the clone and leave nothing
behind); full diffs are merged as above.
"""

from __future__ import annotations

import logging

import torch

import comfy.patcher_extension
import comfy.utils
import comfy.weight_adapter
import folder_paths

from ..errors import LightX2VError
from ..parameters import frozen_parameter
from .files import read_lora_file
from .mapping import DiffPatch, LoraPlan, plan_lora
from .merge import low_rank_delta
from .report import details, summary
from .side_branch import WRAPPER_KEY, SideBranches

log = logging.getLogger("lightx2v_nodes")

MODES = ("merge", "side-branch")
PREFIX = "diffusion_model."  # ModelPatcher keys are the model base's: diffusion_model.<original Wan name>
_MERGEABLE_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2)


def lora_choices() -> list[str]:
    return folder_paths.get_filename_list("loras")


def resolve_lora(name: str) -> str:
    try:
        return folder_paths.get_full_path_or_raise("loras", name)
    except FileNotFoundError:
        raise LightX2VError(f"LoRA '{name}' not found in models/loras. Refresh the node list or copy the file there.") from None


class SideBranchWrapper:
    """DIFFUSION_MODEL wrapper: the LoRA's hooks exist only while this patcher's model runs a forward."""

    def __init__(self, branches: SideBranches):
        self.branches = branches

    def __call__(self, executor, *args, **kwargs):
        with self.branches.installed(executor.class_obj):
            return executor(*args, **kwargs)

    def to(self, target):
        self.branches.to(target)
        return self


def _can_merge(module: torch.nn.Module, param: str) -> bool:
    """ModelPatcher can patch float weights, and any weight whose layer exposes convert_/set_<param>."""
    if hasattr(module, f"convert_{param}") and hasattr(module, f"set_{param}"):
        return True
    return getattr(module, param).dtype in _MERGEABLE_DTYPES


def _is_linear_like(module: torch.nn.Module) -> bool:
    weight = getattr(module, "weight", None)
    return weight is not None and weight.dim() == 2 and not isinstance(module, torch.nn.Embedding)


def _owner(dit: torch.nn.Module, target: str) -> tuple[torch.nn.Module, str]:
    module, _, param = target.rpartition(".")
    return (dit.get_submodule(module) if module else dit), param


def _patched_on_load(module: torch.nn.Module) -> bool:
    """ModelPatcher only patches parameters of modules whose parameters are all their own (leaf modules)."""
    own = {name for name, _ in module.named_parameters(recurse=False)}
    return all(name in own for name, _ in module.named_parameters())


def _object_patch(patched, source_model, target: str, patch, strength: float) -> None:
    """Replace one parameter by (its value in this model's chain) + strength * delta, computed in fp32."""
    key = PREFIX + target
    # The original lives in object_patches_backup while some clone's object patches are loaded.
    original = source_model.object_patches_backup.get(key, comfy.utils.get_attr(source_model.model, key))
    current = patched.object_patches.get(key, original)
    if isinstance(patch, DiffPatch):
        delta = patch.diff.to(device=current.device, dtype=torch.float32)
    else:
        delta = low_rank_delta(patch, current.shape, current.device)
    value = (current.detach().to(torch.float32) + strength * delta).to(current.dtype)
    patched.add_object_patch(key, frozen_parameter(value))


def _add_patch_batches(model, entries: list[tuple[str, object]], strength: float) -> None:
    """add_patches takes one patch per key per call: batch them so repeated targets stack, not replace."""
    batches: list[dict] = []
    for key, patch in entries:
        batch = next((b for b in batches if key not in b), None)
        if batch is None:
            batch = {}
            batches.append(batch)
        batch[key] = patch
    for batch in batches:
        accepted = set(model.add_patches(batch, strength))
        missing = [k for k in batch if k not in accepted]
        if missing:
            raise LightX2VError(f"The model has no parameter {missing[0]} for LoRA patching (model changed since the LoRA was matched).")


def apply_plan(model, plan: LoraPlan, strength: float, mode: str):
    """A clone of `model` (a ModelPatcher) with the plan applied; the input model is never modified."""
    if mode not in MODES:
        raise LightX2VError(f"Unknown LoRA mode '{mode}': use one of {', '.join(MODES)}.")
    patched = model.clone()
    if strength == 0:
        return patched
    dit = model.get_model_object("diffusion_model")
    entries, branches, fallback = [], [], []
    for p in plan.low_rank:
        module, param = _owner(dit, p.target)
        if not _patched_on_load(module):
            _object_patch(patched, model, p.target, p, strength)
            continue
        mergeable = _can_merge(module, param)
        if _is_linear_like(module) and (mode == "side-branch" or not mergeable):
            branches.append(p)
            if not mergeable:
                fallback.append(p.module)
        elif not mergeable:
            raise LightX2VError(f"Cannot apply LoRA key '{p.source}': {p.target} is stored as {getattr(module, param).dtype} "
                                "and its layer cannot be dequantized for merging.")
        else:
            entries.append((PREFIX + p.target, comfy.weight_adapter.LoRAAdapter(set(), (p.up, p.down, p.alpha, None, None, None))))
    for p in plan.diffs:
        module, param = _owner(dit, p.target)
        if not _patched_on_load(module):
            _object_patch(patched, model, p.target, p, strength)
            continue
        if not _can_merge(module, param):
            raise LightX2VError(f"Cannot apply LoRA key '{p.source}': {p.target} is stored as {getattr(module, param).dtype} "
                                "and its layer cannot be dequantized for merging. Use an unquantized model for this LoRA.")
        entries.append((PREFIX + p.target, ("diff", (p.diff,))))
    if fallback:
        log.warning("LightX2V LoRA: %d quantized layers cannot be merged (no dequantize/requantize support); "
                    "their LoRA pairs run as a side branch instead (e.g. %s).", len(fallback), fallback[0])
    _add_patch_batches(patched, entries, strength)
    if branches:
        patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY,
                                     SideBranchWrapper(SideBranches(branches, strength)))
    return patched


def model_parameter_shapes(model) -> dict[str, tuple[int, ...]]:
    dit = model.get_model_object("diffusion_model")
    return {k: tuple(v.shape) for k, v in dit.state_dict().items()}


def apply_lora_file(model, lora_name: str, strength: float, mode: str):
    """What the LightX2V Apply LoRA node does: read, match every key, report once, apply."""
    lora = read_lora_file(resolve_lora(lora_name))
    plan = plan_lora(lora, model_parameter_shapes(model))
    log.log(logging.WARNING if plan.unmatched else logging.INFO, summary(plan, lora_name, strength, mode))
    if log.isEnabledFor(logging.DEBUG):
        log.debug("LightX2V LoRA '%s' key by key:\n%s", lora_name, "\n".join(details(plan)))
    return apply_plan(model, plan, strength, mode)
