"""Per-variant TeaCache coefficients and MagCache ratios, and picking the right entry. The values are the
published ones (LightX2V's configs/caching/teacache/*.json and configs/caching/magcache/*.json).

Peer packs have picked the wrong model's coefficients silently; here the variant comes from the detected
WanConfig (task + size), 480p vs 720p (which weights cannot tell apart) from the latent size, and a model
with no entry gets an error naming the alternatives instead of a guess.
"""

from __future__ import annotations

import math

from ..errors import LightX2VError
from ..wan.config import WanConfig

T2V_1_3B, T2V_14B, I2V_480P, I2V_720P = "T2V 1.3B", "T2V 14B", "I2V 480p", "I2V 720p"
VARIANTS = (T2V_1_3B, T2V_14B, I2V_480P, I2V_720P)

# Polynomials in the relative embedding change, highest power first, fitted by TeaCache per model.
TEACACHE_COEFFICIENTS = {
    T2V_1_3B: {
        "e0": (-52186.2437, 9230.41404, -528.275948, 13.6987616, -0.0499875664),
        "e": (2396.76752, -1311.10545, 201.331979, -8.29855975, 0.137887774),
    },
    T2V_14B: {
        "e0": (-3.03318725e05, 4.90537029e04, -2.65530556e03, 5.87365115e01, -3.15583525e-01),
        "e": (-5784.54975374, 5449.50911966, -1811.16591783, 256.27178429, -13.02252404),
    },
    I2V_480P: {
        "e0": (257151.496, -35422.9917, 1402.86849, -13.5890334, 0.132517977),
        "e": (-302.33167, 223.948934, -52.546397, 5.8734844, -0.201973289),
    },
    I2V_720P: {
        "e0": (8107.0546, 2133.93892, -372.934672, 16.6203073, -0.0417769401),
        "e": (-114.36346466, 65.26524496, -18.82220707, 4.91518089, -0.23412683),
    },
}
TEACACHE_DEFAULT_THRESHOLD = 0.26  # LightX2V's default
TEACACHE_WARMUP_STEPS = {"e0": 5, "e": 1}  # steps always computed at the start of a run

# Mean per-token residual-norm ratio of consecutive steps (cond pass), calibrated at `steps` steps.
MAGCACHE_TABLES = {
    T2V_1_3B: {
        "steps": 50, "k": 4, "threshold": 0.12, "retention": 0.2,
        "ratios": (1.0, 1.0124, 1.00166, 0.99791, 0.99682, 0.99634, 0.99567, 0.99416, 0.99578, 0.9957, 0.99511,
                   0.99535, 0.99552, 0.99541, 0.9954, 0.99489, 0.99518, 0.99484, 0.99481, 0.99415, 0.99419, 0.99396,
                   0.99388, 0.99349, 0.99309, 0.9927, 0.99228, 0.99171, 0.99137, 0.99068, 0.99005, 0.98944, 0.98849,
                   0.98758, 0.98644, 0.98504, 0.9836, 0.98202, 0.97977, 0.97717, 0.9741, 0.97003, 0.96538, 0.9593,
                   0.95086, 0.94013, 0.92402, 0.90241, 0.86821, 0.81838),
    },
    I2V_480P: {
        "steps": 40, "k": 6, "threshold": 0.24, "retention": 0.2,
        "ratios": (1.0, 0.98783, 0.97559, 0.98311, 0.98202, 0.9888, 0.98762, 0.98957, 0.99052, 0.99383, 0.98857,
                   0.99065, 0.98845, 0.99057, 0.98957, 0.98601, 0.98823, 0.98756, 0.98808, 0.98721, 0.98571, 0.98543,
                   0.98157, 0.98411, 0.97952, 0.98149, 0.9774, 0.97825, 0.97355, 0.97085, 0.97056, 0.96588, 0.96113,
                   0.9567, 0.94961, 0.93973, 0.93217, 0.91878, 0.90955, 0.92617),
    },
}
MAGCACHE_CALIBRATED_DEFAULTS = {"k": 4, "threshold": 0.12, "retention": 0.2}

ADAPTIVE_DEFAULT_THRESHOLD = 0.2  # EasyCache's default
ADAPTIVE_WARMUP_FRACTION = 0.15  # EasyCache's default start

# 480p latents are 60x104 (or 104x60), 720p 90x160: split halfway in pixel area.
_720P_MIN_LATENT_AREA = (60 * 104 + 90 * 160) // 2


def resolution_of(latent_hw: tuple[int, int] | None) -> str | None:
    if latent_hw is None:
        return None
    return "720p" if latent_hw[0] * latent_hw[1] >= _720P_MIN_LATENT_AREA else "480p"


def model_variant(cfg: WanConfig, latent_hw: tuple[int, int] | None = None) -> str | None:
    """The table key for a detected model, or None when the tables do not cover it.

    I2V without a latent size yet resolves to 480p only for checking coverage; the sampler wrapper passes
    the real latent size at the start of each run.
    """
    if cfg.task == "T2V" and cfg.size_name in ("1.3B", "14B"):
        return f"T2V {cfg.size_name}"
    if cfg.task == "I2V" and cfg.size_name == "14B":
        return f"I2V {resolution_of(latent_hw) or '480p'}"
    return None


def _no_entry(method: str, cfg: WanConfig, known, calibrate: bool) -> LightX2VError:
    fixes = "use method 'adaptive' (it needs no per-model numbers)"
    if calibrate:
        fixes += ", or run once with 'magcache-calibrate' and then load the saved ratios with calibration_file"
    return LightX2VError(
        f"{method} has no coefficients for {cfg.variant} (tables exist for {', '.join(known)}). Fix: {fixes}; "
        "or set 'variant' to force a table, if your model is a fine-tune of one of those."
    )


def teacache_coefficients(cfg: WanConfig, mode: str, variant: str = "auto", latent_hw=None) -> tuple[str, tuple[float, ...]]:
    """(variant used, coefficients) for TeaCache in mode 'e' or 'e0'; `variant` other than auto overrides."""
    key = variant if variant != "auto" else model_variant(cfg, latent_hw)
    if key not in TEACACHE_COEFFICIENTS:
        raise _no_entry("TeaCache", cfg, TEACACHE_COEFFICIENTS, calibrate=False)
    return key, TEACACHE_COEFFICIENTS[key][mode]


def magcache_table(cfg: WanConfig, variant: str = "auto", latent_hw=None) -> tuple[str, dict]:
    key = variant if variant != "auto" else model_variant(cfg, latent_hw)
    if key not in MAGCACHE_TABLES:
        raise _no_entry("MagCache", cfg, MAGCACHE_TABLES, calibrate=True)
    return key, MAGCACHE_TABLES[key]


def interpolate_ratios(ratios, steps: int) -> list[float]:
    """A ratio table calibrated at len(ratios) steps, resampled to `steps` steps.

    The product of the ratios is the residual magnitude along the run; it is interpolated (log-linearly,
    over the fraction of the run) and differenced again, so fewer steps get proportionally larger changes.
    """
    n = len(ratios)
    if n == steps:
        return [float(r) for r in ratios]
    if n == 1 or steps == 1:
        return [float(ratios[0])] * steps
    log_magnitude = [0.0]
    for r in ratios[1:]:
        log_magnitude.append(log_magnitude[-1] + math.log(r))

    def at(fraction: float) -> float:
        pos = fraction * (n - 1)
        lo = min(int(pos), n - 2)
        return log_magnitude[lo] + (pos - lo) * (log_magnitude[lo + 1] - log_magnitude[lo])

    curve = [at(i / (steps - 1)) for i in range(steps)]
    return [float(ratios[0])] + [math.exp(curve[i] - curve[i - 1]) for i in range(1, steps)]
