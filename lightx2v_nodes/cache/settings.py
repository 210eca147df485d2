"""What the Feature Cache node chose, turned into a policy and a per-run FeatureCacheRun.

Also the 4-step guard (a distilled run has nothing worth skipping) and MagCache calibration files:
JSON with the recorded ratios per pass, reused by method 'magcache' through calibration_file.
"""

from __future__ import annotations

import dataclasses
import json
import math

from ..errors import LightX2VError
from ..wan.config import WanConfig
from . import tables
from .policies import AdaptiveCache, MagCache, MagCacheCalibration, TeaCache
from .runner import FeatureCacheRun

METHODS = ("teacache", "magcache", "adaptive", "magcache-calibrate")
MIN_CACHED_STEPS = 9  # runs of 8 steps or fewer (distilled 4-step sampling) are left alone
CALIBRATION_FORMAT = "lightx2v-magcache-calibration"


@dataclasses.dataclass(frozen=True)
class CacheSettings:
    method: str
    threshold: float = -1.0  # negative: the method's (and model's) default; 0: never skip
    start_percent: float = 0.0
    end_percent: float = 1.0
    cache_device: str = "gpu"  # where cached residuals live: "gpu" (the compute device) or "cpu"
    verbose: bool = False
    variant: str = "auto"  # coefficient table: auto (from the model) or one of tables.VARIANTS
    teacache_mode: str = "e0"
    calibration: dict | None = None  # a loaded MagCache calibration file, used instead of the tables

    def __post_init__(self):
        if self.method not in METHODS:
            raise LightX2VError(f"Unknown cache method {self.method!r}: choose one of {', '.join(METHODS)}.")
        if self.variant != "auto" and self.variant not in tables.VARIANTS:
            raise LightX2VError(f"Unknown variant {self.variant!r}: choose auto or one of {', '.join(tables.VARIANTS)}.")
        if not 0.0 <= self.start_percent <= self.end_percent <= 1.0:
            raise LightX2VError(f"start_percent ({self.start_percent}) must be <= end_percent ({self.end_percent}), both in [0, 1].")


def too_few_steps_message(steps: int) -> str | None:
    """The warning for a run the cache should not touch, or None."""
    if steps >= MIN_CACHED_STEPS:
        return None
    return (f"LightX2V Feature Cache: this run has {steps} steps; caching only pays off on long (30-50 step) runs "
            f"and is disabled for runs of {MIN_CACHED_STEPS - 1} steps or fewer (e.g. 4-step distilled sampling). "
            "The run goes ahead without the cache; remove the node to silence this.")


def check_model(settings: CacheSettings, cfg: WanConfig) -> None:
    """Fail at the node, not mid-sampling, when the method has no numbers for this model."""
    if settings.method == "teacache":
        tables.teacache_coefficients(cfg, settings.teacache_mode, settings.variant)
    elif settings.method == "magcache" and settings.calibration is None:
        tables.magcache_table(cfg, settings.variant)


def build_policy(settings: CacheSettings, cfg: WanConfig, latent_hw=None):
    """(policy, label for the log) for one run; latent_hw picks I2V 480p vs 720p."""
    threshold = settings.threshold
    if settings.method == "teacache":
        variant, coefficients = tables.teacache_coefficients(cfg, settings.teacache_mode, settings.variant, latent_hw)
        threshold = tables.TEACACHE_DEFAULT_THRESHOLD if threshold < 0 else threshold
        policy = TeaCache(coefficients, settings.teacache_mode, threshold, tables.TEACACHE_WARMUP_STEPS[settings.teacache_mode])
        return policy, f"{policy.describe()}, {variant} coefficients"
    if settings.method == "magcache":
        if settings.calibration is not None:
            table, source = settings.calibration, f"calibrated on {settings.calibration.get('variant', '?')}"
            ratios = dict(table["ratios"])
        else:
            source, table = tables.magcache_table(cfg, settings.variant, latent_hw)
            ratios = {"cond": list(table["ratios"])}
        threshold = table["threshold"] if threshold < 0 else threshold
        policy = MagCache(ratios, threshold, int(table["k"]), float(table["retention"]))
        return policy, f"{policy.describe()}, {source} ratios"
    if settings.method == "adaptive":
        policy = AdaptiveCache(tables.ADAPTIVE_DEFAULT_THRESHOLD if threshold < 0 else threshold)
        return policy, policy.describe()
    policy = MagCacheCalibration()
    return policy, policy.describe()


def start_run(settings: CacheSettings, cfg: WanConfig, sigmas, latent_hw=None) -> FeatureCacheRun:
    """A fresh run (all state reset) for one sampling call with the given schedule."""
    policy, label = build_policy(settings, cfg, latent_hw)
    start = settings.start_percent
    if settings.method == "adaptive":
        start = max(start, tables.ADAPTIVE_WARMUP_FRACTION)
    return FeatureCacheRun(policy, sigmas, start, settings.end_percent, settings.cache_device, settings.verbose, label)


def calibration_record(run: FeatureCacheRun, cfg: WanConfig) -> dict:
    """What a calibration run saves: ratios per pass, with MagCache defaults to start from."""
    ratios = run.policy.ratios()
    if not ratios.get("cond") or len(ratios["cond"]) != run.total:
        raise LightX2VError(
            f"MagCache calibration recorded {len(ratios.get('cond', []))} of {run.total} steps; calibrate with a "
            "plain sampler (one model call per step, e.g. euler) over the whole schedule."
        )
    return {"format": CALIBRATION_FORMAT, "variant": cfg.variant, "steps": run.total, "ratios": ratios,
            **tables.MAGCACHE_CALIBRATED_DEFAULTS}


def save_calibration(path: str, record: dict) -> None:
    with open(path, "w") as f:
        json.dump(record, f, indent=1)


def load_calibration(path: str) -> dict:
    try:
        with open(path) as f:
            record = json.load(f)
    except (OSError, ValueError) as exc:
        raise LightX2VError(f"Cannot read MagCache calibration file {path}: {exc}. Re-run 'magcache-calibrate'.") from None
    ratios = record.get("ratios") if isinstance(record, dict) else None
    valid = (isinstance(ratios, dict) and record.get("format") == CALIBRATION_FORMAT and ratios.get("cond")
             and all(isinstance(v, list) and all(isinstance(r, (int, float)) and math.isfinite(r) for r in v)
                     for v in ratios.values())
             and all(isinstance(record.get(k), (int, float)) for k in ("k", "threshold", "retention")))
    if not valid:
        raise LightX2VError(f"{path} is not a MagCache calibration file written by 'magcache-calibrate'.")
    return record
