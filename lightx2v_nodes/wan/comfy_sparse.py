"""ComfyUI side of block-sparse self-attention: a DIFFUSION_MODEL wrapper that puts the sparse backend on the
blocks for each model call (lightx2v_nodes/wan/sparse_attention.py) and takes it off afterwards.

A wrapper on a cloned ModelPatcher, as LightX2V Compile DiT does: a workflow without the node runs the model
exactly as before, and the node composes with the LoRA, Offload, cache and compile nodes.
"""

from __future__ import annotations

import logging

import comfy.patcher_extension

from ..comfy_common import lightx2v_dit
from .config import PATCH_SIZE
from .model import BLOCK_RUNNER_KEY
from .sparse_attention import SparseAttention, SparseSettings, latent_grid, step_index

log = logging.getLogger("lightx2v_nodes")
NODE = "LightX2V Sparse Attention"
WRAPPER_KEY = "lightx2v.sparse_attention"
_WRAPPER_TYPE = comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL


def why_dense(dense_backend, device_type: str) -> str | None:
    """Why the sparse kernel cannot run on this model, naming what runs instead; None where it can."""
    if device_type != "cuda" or dense_backend.name != "lightx2v-int8":
        return (f"{NODE} needs the lightx2v-int8 attention backend on a CUDA GPU with fp8 tensor cores and bf16/fp16 "
                f"compute (LightX2V Load Wan DiT: attention auto or lightx2v-int8); this model runs "
                f"{dense_backend.description} on {device_type}, so dense attention runs unchanged")
    return None


def apply_sparse_attention(model, settings: SparseSettings):
    """A clone of `model` (a ModelPatcher of LightX2V Load Wan DiT) whose self-attention runs block-sparse."""
    dit = lightx2v_dit(model, NODE, "a LightX2V-loaded model (native models have no block-sparse 8-bit kernel)")
    patched = model.clone()
    patched.remove_wrappers_with_key(_WRAPPER_TYPE, WRAPPER_KEY)
    reason = why_dense(dit.attention, model.load_device.type)
    if reason:
        log.warning("LightX2V: %s.", reason)
        return patched
    sparse = SparseAttention(settings, dit.attention)
    warned = []

    def run_sparse(executor, x, timestep, context, clip_fea=None, time_dim_concat=None, transformer_options=None,
                   **kwargs):
        options = transformer_options or {}
        target = executor.class_obj
        if BLOCK_RUNNER_KEY in options:  # Multi-GPU: the blocks run in other processes, which this cannot reach
            if not warned:
                warned.append(True)
                log.warning("LightX2V: %s does not reach LightX2V Multi-GPU's workers; dense attention runs.", NODE)
            return executor(x, timestep, context, clip_fea, time_dim_concat, transformer_options, **kwargs)
        step = step_index(options.get("sample_sigmas"), options.get("sigmas"))
        sparse.install(target, latent_grid(x, time_dim_concat, PATCH_SIZE), step, x.device)
        try:
            return executor(x, timestep, context, clip_fea, time_dim_concat, transformer_options, **kwargs)
        finally:
            sparse.remove(target)

    patched.add_wrapper_with_key(_WRAPPER_TYPE, WRAPPER_KEY, run_sparse)
    log.info("LightX2V: self-attention runs block-sparse: %s.", settings.describe())
    return patched
