"""Feature caches for multi-step Wan sampling: TeaCache, MagCache (+ calibration), adaptive (EasyCache-style).

ComfyUI-free: policies.py holds the skip rules, tables.py the per-model numbers, runner.py the per-run
state and the hook WanDiT calls, settings.py the node's choices -> a run. comfy_cache.py plugs a run into
ComfyUI's sampler wrappers.
"""

from .policies import AdaptiveCache, MagCache, MagCacheCalibration, TeaCache
from .runner import FeatureCacheRun
from .settings import METHODS, CacheSettings, start_run

__all__ = ["AdaptiveCache", "MagCache", "MagCacheCalibration", "TeaCache", "FeatureCacheRun", "METHODS",
           "CacheSettings", "start_run"]
