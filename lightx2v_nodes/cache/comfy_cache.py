"""The feature cache inside ComfyUI: an OUTER_SAMPLE wrapper that starts a fresh run per sampling call.

The node stores (settings, model config) in the MODEL's transformer_options; at the start of every
sampling run the wrapper sees the schedule and the latent size, applies the 4-step guard, builds a
FeatureCacheRun and puts it under FEATURE_CACHE_KEY, where our WanDiT's forward finds it. Working at the
sampler level means any sampler node (KSampler, SamplerCustomAdvanced, ours) gets it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re

import comfy.model_patcher
import comfy.patcher_extension
import folder_paths

from ..errors import LightX2VError
from ..wan.config import WanConfig
from ..comfy_common import CACHE_SKIPS_ATTRIBUTE, lightx2v_dit, show_in_ui
from ..wan.model import FEATURE_CACHE_KEY
from .settings import CacheSettings, calibration_record, check_model, load_calibration, save_calibration, start_run, too_few_steps_message

log = logging.getLogger("lightx2v_nodes")

SETTINGS_KEY = "lightx2v_feature_cache_settings"
WRAPPER_KEY = "lightx2v_feature_cache"
CALIBRATION_FOLDER = "magcache"  # under ComfyUI's models directory


def wan_config_of(model) -> WanConfig:
    """The WanConfig of a MODEL running our DiT; a clear error for any other model."""
    lightx2v_dit(model, "LightX2V Feature Cache", "ComfyUI's native EasyCache node (advanced/debug/model)")
    unet_config = model.model.model_config.unet_config
    return WanConfig(**{f.name: unet_config[f.name] for f in dataclasses.fields(WanConfig) if f.name in unet_config})


def calibration_path(name: str) -> str:
    """models/magcache/<name>.json (the name is reduced to a safe file name)."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", os.path.basename(name.strip())).removesuffix(".json").strip("._")
    if not stem:
        raise LightX2VError("calibration_file is empty: give the MagCache calibration a name, e.g. wan_t2v_14b_40steps.")
    return os.path.join(folder_paths.models_dir, CALIBRATION_FOLDER, stem + ".json")


def default_calibration_name(cfg: WanConfig) -> str:
    return re.sub(r"[^a-z0-9]+", "_", cfg.variant.lower()).strip("_")


def apply_feature_cache(model, settings: CacheSettings, calibration_file: str = ""):
    """A clone of `model` that caches block residuals during every sampling run."""
    cfg = wan_config_of(model)
    if settings.method == "magcache" and calibration_file.strip():
        settings = dataclasses.replace(settings, calibration=load_calibration(calibration_path(calibration_file)))
    check_model(settings, cfg)
    save_to = None
    if settings.method == "magcache-calibrate":
        save_to = calibration_path(calibration_file or default_calibration_name(cfg))
    clone = model.clone()
    clone.model_options["transformer_options"][SETTINGS_KEY] = (settings, cfg, save_to)
    # A second Feature Cache node on the same model replaces the first instead of nesting two runs.
    clone.remove_wrappers_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, WRAPPER_KEY)
    clone.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, WRAPPER_KEY, _outer_sample_wrapper)
    return clone


def _outer_sample_wrapper(executor, noise, latent_image, sampler, sigmas, *args, **kwargs):
    guider = executor.class_obj
    settings, cfg, save_to = guider.model_options["transformer_options"][SETTINGS_KEY]
    warning = too_few_steps_message(len(sigmas) - 1)
    if warning:
        log.warning(warning)
        show_in_ui(warning)
        return executor(noise, latent_image, sampler, sigmas, *args, **kwargs)

    run = start_run(settings, cfg, sigmas, latent_hw=tuple(noise.shape[-2:]))
    log.info("LightX2V Feature Cache: %s over %d steps", run.label, run.total)
    original = guider.model_options
    guider.model_options = comfy.model_patcher.create_model_options_clone(original)
    guider.model_options["transformer_options"][FEATURE_CACHE_KEY] = run
    try:
        result = executor(noise, latent_image, sampler, sigmas, *args, **kwargs)
    finally:
        guider.model_options = original
    summary = run.log_summary()
    counts = run.summary()
    setattr(guider, CACHE_SKIPS_ATTRIBUTE, (counts["skipped"], counts["calls"]))
    if save_to is not None:
        os.makedirs(os.path.dirname(save_to), exist_ok=True)
        save_calibration(save_to, calibration_record(run, cfg))
        summary = f"MagCache ratios saved to {save_to}; use method 'magcache' with calibration_file " \
                  f"'{os.path.basename(save_to)[:-5]}'."
        log.info(summary)
    show_in_ui(summary)
    return result
