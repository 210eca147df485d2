"""The offload scheduler inside ComfyUI's model management (the only offload module that imports comfy).

How it cooperates with comfy.model_management (0.3.75):
- The node returns a clone of the MODEL whose class is OffloadModelPatcher (a ModelPatcher subclass; later
  clones, e.g. a LoRA node after this one, keep the class because ModelPatcher.clone builds
  `self.__class__`). Its patches UUID is fresh, so switching between it and a plain clone of the same
  model makes ComfyUI unpatch and reload the weights instead of reusing the other clone's placement.
- An OUTER_SAMPLE wrapper sees the latent before ComfyUI loads the model and asks the planner for a plan
  (budget, resolution, frames, batch); the plan sets `model_size()` to what the model really occupies on
  the GPU: non-block weights + resident blocks + streaming slots. load_models_gpu frees other models
  (text encoder, VAE) by that number, and `loaded_size()` reports the same after loading.
- `load()` runs ComfyUI's own loader on the non-block modules only (`_load_list` leaves the blocks out),
  so their weights, LoRA patches and object patches are handled exactly as usual; the blocks stay on the
  offload device and the scheduler streams them. It moves each streamed block into one page-locked buffer
  of its own (pinning.py says why not in place); ComfyUI's in-place pinning of block weights is undone
  first, and ComfyUI never pins the new buffers (they already report is_pinned). LoRA weight patches on block layers become ComfyUI LowVramPatch weight
  functions, applied to the streamed copy on the GPU as in ComfyUI's low-VRAM mode, so the host weights
  are never rewritten and host RAM stays flat; side-branch LoRAs are forward hooks and need nothing.
- When only token-chunked activations fit the budget at the run's resolution, the plan says so and the
  scheduler sets WanBlock.token_chunk while installed (bit-equal output, smaller activation peak).
- `unpatch_model` / `detach` uninstall the scheduler first, so the module is plain again whenever another
  clone takes over; `partially_unload` frees nothing piecemeal (returns 0), which makes ComfyUI unload the
  model completely when it needs the memory.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import uuid
import weakref

import torch

import comfy.model_management as mm
import comfy.model_patcher
import comfy.patcher_extension
import comfy.utils
import folder_paths

from ..comfy_common import lightx2v_dit
from ..errors import LightX2VError
from ..parameters import frozen_parameter
from ..wan.checkpoint import NON_BLOCK_NAME, is_block_directory, read_safetensors
from ..wan.keys import to_original_layout
from ..wan.model import WanDiT
from .planner import CHUNK_TOKENS, GiB, MODES, ModelSizes, Plan, latent_tokens, plan_offload
from .scheduler import OffloadScheduler, OffloadSettings
from ..placeholders import is_placeholder, placeholder
from .units import non_block_refs, tensor_bytes

log = logging.getLogger("lightx2v_nodes")

PREFIX = "diffusion_model."
BLOCK_PREFIX = PREFIX + "blocks."
REQUEST_KEY = "lightx2v_offload"
WRAPPER_KEY = "lightx2v_offload"
AUTO_MARGIN = GiB // 2  # on top of ComfyUI's reserved VRAM, for the 'auto' budget
PLAN_TOKENS = 32760  # plan before the first run: 480x832x81 (the real plan is made per run from the latent)


@dataclasses.dataclass(frozen=True)
class OffloadRequest:
    mode: str = "auto"
    budget_gb: float = 0.0  # 0 = auto
    resident_blocks: int = -1  # -1 = planner
    prefetch: int = 1
    lazy_dir: str | None = None
    timing: bool = False
    chunk_tokens: int = CHUNK_TOKENS  # token chunk the planner may turn on when only chunked activations fit


_installed: "weakref.WeakKeyDictionary[torch.nn.Module, tuple[int, OffloadScheduler]]" = weakref.WeakKeyDictionary()


def _dit_of(patcher) -> WanDiT:
    return lightx2v_dit(patcher, "LightX2V Offload", "ComfyUI's own --lowvram mode")


class OffloadModelPatcher(comfy.model_patcher.ModelPatcher):
    """A ModelPatcher whose blocks stay on the offload device and are streamed by OffloadScheduler."""

    offload_plan: Plan | None = None

    @property
    def offload_request(self) -> OffloadRequest:
        return self.attachments[REQUEST_KEY]

    def _streaming(self) -> bool:
        return self.current_plan().mode != "none"

    def current_plan(self) -> Plan:
        if self.offload_plan is None:
            self.offload_plan = make_plan(self, PLAN_TOKENS, 1)
        return self.offload_plan

    # ---- what ComfyUI accounts ----

    def model_size(self):
        plan = self.current_plan()
        if plan.mode == "none":  # not the cached `size`: clones inherit it from a streaming parent
            return comfy.model_management.module_size(self.model)
        return plan.weights_bytes

    def get_ram_usage(self):
        if self.offload_request.lazy_dir:  # block weights live on disk; a few blocks pass through RAM
            sizes = ModelSizes.of(_dit_of(self))
            return sizes.non_block_bytes + 3 * sizes.block_bytes
        return comfy.model_management.module_size(self.model)

    # ---- loading ----

    def _load_list(self):
        entries = super()._load_list()
        if not self._streaming():
            return entries
        return [e for e in entries if not (e[2] + ".").startswith(BLOCK_PREFIX)]

    def load(self, device_to=None, lowvram_model_memory=0, force_patch_weights=False, full_load=False):
        if not self._streaming():
            return super().load(device_to, lowvram_model_memory, force_patch_weights, full_load)
        dit = _dit_of(self)
        held = _installed.get(dit)
        if held is not None and held[0] == id(self) and held[1].installed:
            return None  # already loaded by this patcher (ComfyUI calls load again on every run)
        _uninstall(dit)
        # ComfyUI loads (and patches) every non-block module; the blocks are not in _load_list.
        super().load(device_to, lowvram_model_memory=1e32, force_patch_weights=force_patch_weights, full_load=False)
        # _load_list skips parameters of non-leaf modules (head.modulation, img_emb.emb_pos): move them too.
        non_block = non_block_refs(dit)
        for ref in non_block:
            if ref.get().device != torch.device(device_to):
                ref.point_to(ref.get().to(device_to))
        plan, request = self.current_plan(), self.offload_request
        settings = OffloadSettings(plan.mode, plan.resident_blocks, plan.prefetch, request.lazy_dir, timing=request.timing,
                                   token_chunk=plan.token_chunk)
        counter = self._patch_blocks_lowvram()
        # The scheduler moves streamed blocks into page-locked buffers of its own; block weights that ComfyUI
        # locked in place (an earlier low-VRAM load of a clone) are unlocked first, while ComfyUI still holds them.
        for key in [k for k in self.pinned if k.startswith(BLOCK_PREFIX)]:
            self.unpin_weight(key)
        scheduler = OffloadScheduler(dit, settings, device_to, manage_non_block=False)
        scheduler.install()
        _installed[dit] = (id(self), scheduler)
        self.model.model_lowvram = True  # unpatch_model then wipes the block weight functions
        self.model.lowvram_patch_counter += counter
        self.model.model_loaded_weight_memory = tensor_bytes(non_block) + scheduler.device_bytes()
        log.info("LightX2V Offload: %s", plan.describe())
        if counter:
            # A layer's weight functions run on every call of it, so once per token chunk when chunked.
            per = " once per token chunk" if plan.token_chunk is not None else ""
            log.info("LightX2V Offload: %d merged LoRA weight patches on streamed blocks are applied to each streamed "
                     "copy%s (host weights stay untouched); LightX2V Apply LoRA in side-branch mode costs less per step.",
                     counter, per)
        return None

    def _patch_blocks_lowvram(self) -> int:
        """Block weight patches (merged LoRAs) as ComfyUI low-VRAM patches, applied to the streamed copy."""
        count = 0
        for key in self.patches:
            if not key.startswith(BLOCK_PREFIX):
                continue
            module_name, _, param = key.rpartition(".")
            module = comfy.utils.get_attr(self.model, module_name)
            if param not in ("weight", "bias") or not hasattr(module, f"{param}_function"):
                continue
            _, set_func, convert_func = comfy.model_patcher.get_key_weight(self.model, key)
            setattr(module, f"{param}_function", [comfy.model_patcher.LowVramPatch(key, self.patches, convert_func, set_func)])
            count += 1
        return count

    def partially_unload(self, device_to, memory_to_free=0, force_patch_weights=False):
        if not self._streaming():
            return super().partially_unload(device_to, memory_to_free, force_patch_weights)
        return 0  # nothing piecemeal: ComfyUI then unloads this model completely

    def unpatch_model(self, device_to=None, unpatch_weights=True):
        if unpatch_weights:
            _uninstall(_dit_of(self))
        return super().unpatch_model(device_to, unpatch_weights)

    def detach(self, unpatch_all=True):
        _uninstall(_dit_of(self))
        return super().detach(unpatch_all)


def _uninstall(dit) -> None:
    held = _installed.pop(dit, None)
    if held is not None:
        held[1].uninstall()


def scheduler_of(patcher) -> OffloadScheduler | None:
    held = _installed.get(_dit_of(patcher))
    return held[1] if held is not None else None


def budget_bytes(patcher, request: OffloadRequest) -> int:
    if request.budget_gb > 0:
        return int(request.budget_gb * GiB)
    device = patcher.load_device
    # 'auto': what is free, plus what ComfyUI could unload to make room, minus its reserve and a margin.
    reclaimable = sum(m.model_loaded_memory() for m in mm.current_loaded_models if m.device == device)
    return max(0, int(mm.get_free_memory(device) + reclaimable - mm.extra_reserved_memory() - AUTO_MARGIN))


def make_plan(patcher, tokens: int, batch: int) -> Plan:
    request = patcher.offload_request
    dit = _dit_of(patcher)
    sizes = ModelSizes.of(dit)
    dtype = patcher.model.get_dtype()
    dtype_bytes = torch.empty((), dtype=dtype).element_size() if dtype is not None else 2
    return plan_offload(sizes, budget_bytes(patcher, request), tokens, batch, request.mode, request.prefetch,
                        request.resident_blocks, dtype_bytes, chunk_tokens=request.chunk_tokens)


def _outer_sample_wrapper(executor, noise, latent_image, sampler, sigmas, *args, **kwargs):
    guider = executor.class_obj
    patcher = guider.model_patcher
    if not isinstance(patcher, OffloadModelPatcher):  # some node rebuilt the MODEL and kept only the wrapper
        log.warning("LightX2V Offload: the sampled MODEL is no longer an offloading one; running without offload.")
        return executor(noise, latent_image, sampler, sigmas, *args, **kwargs)
    batch = noise.shape[0] * (1 if getattr(guider, "cfg", 1.0) == 1.0 else 2)
    plan = make_plan(patcher, latent_tokens(noise.shape), batch)
    installed = scheduler_of(patcher)
    if patcher.offload_plan != plan or (installed is not None and not installed.fits_current_mode()):
        # A new plan places the weights differently, and buffers made under ComfyUI's inference mode cannot be
        # written by a run outside it (a MODEL sampled again from a script or another node): a new patches UUID
        # makes ComfyUI unpatch the model completely (weights back on the offload device) and load it again.
        patcher.offload_plan = plan
        patcher.patches_uuid = uuid.uuid4()
    try:
        return executor(noise, latent_image, sampler, sigmas, *args, **kwargs)
    finally:
        scheduler = scheduler_of(patcher)
        if scheduler is not None:
            summary = scheduler.finish()  # also after an interrupt: weights back at rest, model reusable
            if summary:
                log.info("LightX2V Offload timing: %d copies, %.1f GB, copy %.1f ms, compute stalled %.1f ms "
                         "(%.1f GB/s)", summary["copies"], summary["copied_bytes"] / 1e9, summary["copy_ms"],
                         summary["stall_ms"], summary["copied_bytes"] / 1e6 / max(summary["copy_ms"], 1e-9))


def apply_offload(model, request: OffloadRequest):
    """A clone of `model` (a ModelPatcher) that streams its blocks; mode none returns a plain clone."""
    if request.mode not in MODES:
        raise LightX2VError(f"Unknown offload mode '{request.mode}': use one of {', '.join(MODES)}.")
    if request.prefetch < 1:
        raise LightX2VError(f"prefetch must be at least 1 (got {request.prefetch}).")
    dit = _dit_of(model)
    if request.resident_blocks > len(dit.blocks):
        raise LightX2VError(f"resident_blocks = {request.resident_blocks} but the model has {len(dit.blocks)} blocks: "
                            f"use -1 (planner) or 0..{len(dit.blocks)}.")
    if dit.block_folder is not None and not request.lazy_dir:
        # The loader left the blocks on disk (keep_blocks_on_disk): stream them from the folder it read. (Not
        # blocks_on_disk(dit): a scheduler installed by an earlier run may hold resident blocks in the module.)
        if request.mode == "none":
            raise LightX2VError("This model's blocks were left on disk by the loader, so they can only be streamed: "
                                "use offload mode auto, block or phase (mode none cannot run them).")
        request = dataclasses.replace(request, lazy_dir=dit.block_folder)
    if request.mode == "none" and not isinstance(model, OffloadModelPatcher):
        return model.clone()
    needs_twin = request.lazy_dir and dit.block_folder is None and not blocks_on_disk(dit)
    patched = _lazy_twin(model, request.lazy_dir) if needs_twin else model.clone()
    patched.__class__ = OffloadModelPatcher
    patched.patches_uuid = uuid.uuid4()  # weights are placed differently from any plain clone
    patched.offload_plan = None
    patched.set_attachments(REQUEST_KEY, request)
    patched.remove_wrappers_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, WRAPPER_KEY)
    patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, WRAPPER_KEY, _outer_sample_wrapper)
    return patched


# ---- lazy mode ----

def resolve_block_folder(name: str) -> str:
    """A per-block folder: absolute, or relative to models/diffusion_models (a trailing '/' is fine)."""
    name = name.strip()
    candidates = [name] if os.path.isabs(name) else [
        os.path.join(root, name.rstrip("/")) for root in folder_paths.get_folder_paths("diffusion_models")]
    for path in candidates:
        if is_block_directory(path):
            return path
    raise LightX2VError(f"lazy_load_dir '{name}' is not a LightX2V per-block folder (non_block.safetensors + "
                        "block_N.safetensors) in models/diffusion_models. Leave it empty to stream from RAM.")


def blocks_on_disk(dit) -> bool:
    """True when the block weights are already placeholders (a lazy twin, or a loader that skipped them)."""
    return all(is_placeholder(t) or t.numel() <= 1 for t in dit.blocks.state_dict().values())


def _lazy_twin(model, folder: str):
    """A clone of `model` around a copy of its model base whose block weights are host placeholders.

    The block weights of the input MODEL are left alone (other nodes may use it); the twin's are read from
    `folder` while it runs. Non-block weights come from the folder's non_block.safetensors.
    """
    dit = _dit_of(model)
    memo = {}
    for tensor in dit.blocks.state_dict(keep_vars=True).values():
        memo[id(tensor)] = _placeholder_like(tensor)
    base = copy.deepcopy(model.model, memo)
    non_block, _ = to_original_layout(read_safetensors(os.path.join(folder, NON_BLOCK_NAME)))
    refs = {ref.key: ref for ref in non_block_refs(base.diffusion_model)}
    if set(refs) != set(non_block):
        raise LightX2VError(f"'{folder}' does not match this model: its {NON_BLOCK_NAME} differs in "
                            f"{sorted(set(refs) ^ set(non_block))[:3]}. Use the folder the model was loaded from.")
    for key, ref in refs.items():  # from the file: the input model's copies may be on the GPU or LoRA-patched
        ref.point_to(non_block[key].to(dtype=ref.get().dtype))
    _forget_load_state(base)
    for attr, value in (("model_loaded_weight_memory", 0), ("lowvram_patch_counter", 0), ("model_lowvram", False),
                        ("current_weight_patches_uuid", None), ("model_offload_buffer_memory", 0)):
        setattr(base, attr, value)
    base.device = model.offload_device
    twin = model.clone()
    twin.model = base
    twin.backup, twin.object_patches_backup, twin.hook_backup, twin.pinned = {}, {}, {}, set()
    twin.size = 0
    return twin


def _forget_load_state(base) -> None:
    """The copy must not inherit what loading did to the source: patched flags, low-VRAM patches, scheduler gates."""
    for module in base.modules():
        state = module.__dict__
        state.pop("comfy_patched_weights", None)
        state.pop("phase_gate", None)
        state.pop("token_chunk", None)
        if "prev_comfy_cast_weights" in state:
            module.comfy_cast_weights = state.pop("prev_comfy_cast_weights")
        for attr in ("weight_function", "bias_function"):
            if attr in state:
                state[attr] = []


def _placeholder_like(tensor):
    value = placeholder(tensor.shape, tensor.dtype)
    return frozen_parameter(value) if isinstance(tensor, torch.nn.Parameter) else value
