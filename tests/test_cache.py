"""Feature cache policies and runner, without ComfyUI: the skip rules against hand computations, exact
residual reuse on a tiny DiT, threshold 0 == no cache, per-variant coefficient selection."""

import math

import numpy as np
import pytest
import torch

from lightx2v_nodes.cache import tables
from lightx2v_nodes.cache.policies import AdaptiveCache, MagCache, MagCacheCalibration, TeaCache, polynomial
from lightx2v_nodes.cache.runner import FeatureCacheRun
from lightx2v_nodes.cache.settings import (CacheSettings, build_policy, calibration_record, load_calibration,
                                           save_calibration, start_run, too_few_steps_message)
from lightx2v_nodes.errors import LightX2VError
from lightx2v_nodes.wan import synthetic
from lightx2v_nodes.wan.config import WanConfig
from lightx2v_nodes.wan.model import FEATURE_CACHE_KEY, WanDiT

T2V_1_3B = WanConfig(dim=1536, ffn_dim=8960, num_heads=12, num_layers=30, in_dim=16)
T2V_14B = WanConfig(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40, in_dim=16)
I2V_14B = WanConfig(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40, in_dim=36, model_type="i2v")
FLF2V_14B = WanConfig(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40, in_dim=36, model_type="i2v",
                      flf_pos_embed_token_number=514)
TINY = synthetic.tiny_config("t2v")


def schedule(steps):
    return torch.linspace(1.0, 0.0, steps + 1)


def drive(run, sequence):
    """Feed a recorded sequence of (x, e, e0, out) through a run, one call per step; returns the outputs."""
    outputs = []
    for i, (x, e, e0, out) in enumerate(sequence):
        opts = {"sigmas": run_sigma(run, i), "cond_or_uncond": [0]}
        outputs.append(run(x, e, e0, opts, lambda rows, out=out: out[rows]))
    return outputs


def run_sigma(run, i):
    return torch.tensor([run.schedule[i]])


def const_steps(values_x, values_out=None, tokens=16, dim=8):
    """Steps whose tokens and embeddings are constant tensors of the given values."""
    seq = []
    for i, a in enumerate(values_x):
        b = values_out[i] if values_out is not None else 2 * a + 1
        seq.append((torch.full((1, tokens, dim), float(a)), torch.full((1, dim), float(a)),
                    torch.full((1, 6, dim), float(a)), torch.full((1, tokens, dim), float(b))))
    return seq


def pattern(run):
    (p,) = run.patterns.values()
    return p


# --- the rules against hand computations -------------------------------------------------------------

@pytest.mark.parametrize("mode,expected", [("e", "CSSCSSCSSC"), ("e0", "CCCCCSSCSC")])
def test_teacache_hand_computed(mode, expected):
    # poly(rel) = rel; embeddings grow 10% a step, so rel = 0.1 and acc runs 0.1, 0.2, 0.3 >= 0.25 -> compute.
    policy = TeaCache((0, 0, 0, 1, 0), mode, threshold=0.25, warmup_steps=tables.TEACACHE_WARMUP_STEPS[mode])
    run = FeatureCacheRun(policy, schedule(10))
    drive(run, const_steps([1.1 ** i for i in range(10)]))
    assert pattern(run) == expected


def test_teacache_real_coefficients_match_numpy_polyval():
    # A recorded-like embedding sequence with shrinking changes; the reference rule uses np.polyval.
    gen = torch.Generator().manual_seed(0)
    base, drift = torch.randn(1, 6, 32, generator=gen), torch.randn(1, 6, 32, generator=gen)
    steps = 30
    e0s = [base + drift * (0.5 * (1 - i / steps)) ** 1.5 for i in range(steps)]
    coefficients = tables.TEACACHE_COEFFICIENTS[tables.T2V_1_3B]["e0"]
    x = torch.randn(1, 16, 32, generator=gen)
    run = FeatureCacheRun(TeaCache(coefficients, "e0", 0.1, 5), schedule(steps))
    drive(run, [(x, e0[:, 0], e0, x + 1) for e0 in e0s])

    expected, acc = "", 0.0
    for i in range(steps):
        if i < 5 or i == steps - 1:
            expected, acc = expected + "C", 0.0
            continue
        prev, cur = e0s[i - 1].double().numpy(), e0s[i].double().numpy()
        acc += np.polyval(coefficients, np.abs(cur - prev).mean() / np.abs(prev).mean())
        if acc < 0.1:
            expected += "S"
        else:
            expected, acc = expected + "C", 0.0
    assert pattern(run) == expected
    assert 0 < expected.count("S") < steps - 6, expected


def test_polynomial_is_highest_power_first():
    assert polynomial((2.0, -3.0, 5.0), 0.5) == pytest.approx(np.polyval([2.0, -3.0, 5.0], 0.5))


@pytest.mark.parametrize("ratio,threshold,k", [(0.9, 0.5, 2), (0.999, 10.0, 2)])
def test_magcache_hand_computed(ratio, threshold, k):
    # retention 0.2 of 10 steps -> steps 0, 1 computed. ratio 0.9: err 0.1, 0.29, then 0.561 >= 0.5 -> compute.
    # ratio 0.999 with a huge threshold: only K = 2 consecutive skips stop it. Same pattern both ways.
    run = FeatureCacheRun(MagCache({"cond": [ratio] * 10}, threshold, k, 0.2), schedule(10))
    drive(run, const_steps(range(10)))
    assert pattern(run) == "CCSSCSSCSC"


def test_magcache_table_matches_reference_loop():
    table = tables.MAGCACHE_TABLES[tables.T2V_1_3B]
    run = FeatureCacheRun(MagCache({"cond": list(table["ratios"])}, 0.12, 4, 0.2), schedule(50))
    drive(run, const_steps(range(50), tokens=4, dim=4))
    expected, acc_ratio, acc_err, in_row = "", 1.0, 0.0, 0
    for i, r in enumerate(table["ratios"]):
        if i < 10 or i == 49:
            expected, acc_ratio, acc_err, in_row = expected + "C", 1.0, 0.0, 0
            continue
        acc_ratio *= r
        acc_err += abs(1 - acc_ratio)
        in_row += 1
        if acc_err < 0.12 and in_row <= 4:
            expected += "S"
        else:
            expected, acc_ratio, acc_err, in_row = expected + "C", 1.0, 0.0, 0
    assert pattern(run) == expected
    assert expected.count("S") > 10, expected


def test_magcache_ratios_resampled_to_step_count():
    # Magnitudes 1, 0.9, 0.45 at 0, 1/2, 1 of the run; at 5 steps: 1, 0.9**0.5, 0.9, (0.9*0.45)**0.5, 0.45.
    assert tables.interpolate_ratios([1.0, 0.9, 0.5], 5) == pytest.approx([1.0, 0.9 ** 0.5, 0.9 ** 0.5, 0.5 ** 0.5, 0.5 ** 0.5])
    assert tables.interpolate_ratios([1.0, 0.9, 0.5], 3) == [1.0, 0.9, 0.5]
    # Halving the steps: the magnitude change over the run is kept.
    table = tables.MAGCACHE_TABLES[tables.T2V_1_3B]["ratios"]
    assert math.prod(tables.interpolate_ratios(table, 25)) == pytest.approx(math.prod(table))


def test_adaptive_hand_computed():
    # x_t = t, out_t = 10 + 2t: rate k = 2. acc = 2 * |x_t - x_last| / |out_last|, threshold 0.45:
    # s2: 2/12 skip; s3: +4/12 = 0.5 compute; s4: 2/16, s5: +4/16 skip; s6: +6/16 compute; s7, s8 skip; s9 last.
    run = FeatureCacheRun(AdaptiveCache(0.45), schedule(10))
    outputs = drive(run, const_steps(range(10), [10 + 2 * t for t in range(10)]))
    assert pattern(run) == "CCSCSSCSSC"
    # A skipped step returns x + the residual of the last computed step: x_2 + (out_1 - x_1) = 2 + 11.
    assert torch.equal(outputs[2], torch.full_like(outputs[2], 13.0))


def test_start_end_window_and_threshold_zero():
    policy = TeaCache((0, 0, 0, 0, -1.0), "e", threshold=0.5, warmup_steps=1)  # poly < 0: always wants to skip
    run = FeatureCacheRun(policy, schedule(10), start_percent=0.3, end_percent=0.7)
    drive(run, const_steps(range(10)))
    assert pattern(run) == "CCCSSSSCCC"
    off = FeatureCacheRun(TeaCache((0, 0, 0, 0, -1.0), "e", threshold=0.0, warmup_steps=1), schedule(10))
    drive(off, const_steps(range(10)))
    assert pattern(off) == "C" * 10


# --- on the tiny DiT ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_dit():
    model = WanDiT(**TINY.unet_config())
    model.load_state_dict(synthetic.random_state_dict(TINY, seed=5))
    return model.eval()


def sample(model, run=None, steps=10, cfg=2.0, seed=0):
    """Euler flow sampling with CFG, cond and uncond batched as ComfyUI does."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 16, 2, 8, 8, generator=gen)
    context = torch.randn(2, 12, 4096, generator=gen) * 0.2
    sigmas = schedule(steps)
    with torch.no_grad():
        for i in range(steps):
            opts = {"sigmas": sigmas[i].repeat(2), "cond_or_uncond": [0, 1]}
            if run is not None:
                opts[FEATURE_CACHE_KEY] = run
            out = model(x.repeat(2, 1, 1, 1, 1), (sigmas[i] * 1000).repeat(2), context, transformer_options=opts)
            cond, uncond = out.chunk(2)
            x = x + (sigmas[i + 1] - sigmas[i]) * (uncond + cfg * (cond - uncond))
    return x


@pytest.fixture(scope="module")
def no_cache_sample(tiny_dit):
    return sample(tiny_dit)


@pytest.mark.parametrize("method", ["teacache", "magcache", "adaptive", "magcache-calibrate"])
def test_threshold_zero_is_identical_to_no_cache(tiny_dit, no_cache_sample, method):
    settings = CacheSettings(method, threshold=0.0, variant="T2V 1.3B")
    run = start_run(settings, TINY, schedule(10))
    assert torch.equal(sample(tiny_dit, run), no_cache_sample)
    assert run.summary()["skipped"] == 0 and run.summary()["calls"] == 20


def test_skipping_changes_the_output_and_is_counted(tiny_dit):
    run = start_run(CacheSettings("adaptive", threshold=0.5), TINY, schedule(12))
    cached, reference = sample(tiny_dit, run, steps=12), sample(tiny_dit, steps=12)
    summary = run.summary()
    assert summary["skipped"] > 0 and not torch.equal(cached, reference)
    assert set(summary["patterns"]) == {"cond", "uncond"}
    assert summary["speedup"] == pytest.approx(24 / (24 - summary["skipped"]))


def test_skipped_step_applies_exactly_the_cached_residual(tiny_dit, monkeypatch):
    gen = torch.Generator().manual_seed(1)
    x0, x1 = torch.randn(2, 1, 16, 2, 8, 8, generator=gen)
    context = torch.randn(1, 12, 4096, generator=gen) * 0.2
    sigmas = schedule(10)
    policy = TeaCache((0, 0, 0, 0, -1.0), "e", threshold=1.0, warmup_steps=1)  # skips whenever allowed
    run = FeatureCacheRun(policy, sigmas)
    with torch.no_grad():
        tiny_dit(x0, sigmas[:1] * 1000, context, transformer_options={FEATURE_CACHE_KEY: run, "sigmas": sigmas[:1]})
        residual = run.residuals[("cond", "cond")].clone()
        skipped = tiny_dit(x1, sigmas[1:2] * 1000, context, transformer_options={FEATURE_CACHE_KEY: run, "sigmas": sigmas[1:2]})
        assert run.patterns[("cond", "cond")] == "CS"
        # The same forward with every block replaced by "add the residual of step 0".
        monkeypatch.setattr(tiny_dit, "run_blocks", lambda x, *args: x + residual)
        expected = tiny_dit(x1, sigmas[1:2] * 1000, context)
        # ... and the residual is what the blocks added at step 0.
        monkeypatch.undo()
        seen = {}
        original = tiny_dit.run_blocks
        monkeypatch.setattr(tiny_dit, "run_blocks", lambda x, *a: seen.setdefault("r", original(x, *a) - x) + x)
        tiny_dit(x0, sigmas[:1] * 1000, context)
    assert torch.equal(skipped, expected)
    assert torch.allclose(seen["r"], residual, atol=1e-6)


def test_passes_decide_separately_and_only_computed_rows_run(tiny_dit, no_cache_sample):
    # cond: ratio 1 (no change, skips); uncond: ratio 0.5 (always computes) -> the uncond row runs alone.
    run = FeatureCacheRun(MagCache({"cond": [1.0] * 10, "uncond": [0.5] * 10}, 0.5, 10, 0.0), schedule(10))
    cached = sample(tiny_dit, run)
    assert run.patterns[("cond", "cond")] == "CSSSSSSSSC"
    assert run.patterns[("uncond", "uncond")] == "C" * 10
    assert not torch.equal(cached, no_cache_sample)


def test_batched_partial_compute_equals_unbatched(tiny_dit):
    # Step 1: cond skipped, uncond computed through compute(rows); that row must equal a lone uncond forward.
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(1, 16, 2, 8, 8, generator=gen).repeat(2, 1, 1, 1, 1)
    context = torch.randn(2, 12, 4096, generator=gen) * 0.2
    sigmas = schedule(10)
    run = FeatureCacheRun(MagCache({"cond": [1.0] * 10, "uncond": [0.5] * 10}, 0.5, 10, 0.0), sigmas)
    with torch.no_grad():
        for i in range(2):
            opts = {FEATURE_CACHE_KEY: run, "sigmas": sigmas[i].repeat(2), "cond_or_uncond": [0, 1]}
            out = tiny_dit(x, (sigmas[i] * 1000).repeat(2), context, transformer_options=opts)
        alone = tiny_dit(x[1:], (sigmas[1:2] * 1000), context[1:])
    assert run.patterns[("cond", "cond")] == "CS"
    torch.testing.assert_close(out[1:], alone, rtol=1e-5, atol=1e-6)


def test_cpu_cache_device_keeps_residuals_on_cpu(tiny_dit):
    run = start_run(CacheSettings("adaptive", threshold=0.5, cache_device="cpu"), TINY, schedule(12))
    gpu_like = start_run(CacheSettings("adaptive", threshold=0.5, cache_device="gpu"), TINY, schedule(12))
    assert torch.equal(sample(tiny_dit, run, steps=12), sample(tiny_dit, gpu_like, steps=12))
    assert all(r.device.type == "cpu" for r in run.residuals.values()) and run.offload


def test_calibration_records_residual_norm_ratios(tmp_path):
    # out = x + c_t: every token's residual norm is c_t * sqrt(dim), so the ratio is c_t / c_{t-1}.
    scales = [2.0, 1.0, 0.5, 0.25, 0.2, 0.15, 0.1, 0.1, 0.05, 0.04]
    seq = [(x, e, e0, x + c) for (x, e, e0, _), c in zip(const_steps(range(10)), scales)]
    run = FeatureCacheRun(MagCacheCalibration(), schedule(10))
    drive(run, seq)
    expected = [1.0] + [scales[i] / scales[i - 1] for i in range(1, 10)]
    assert run.policy.ratios()["cond"] == pytest.approx(expected, rel=1e-4)
    assert pattern(run) == "C" * 10

    path = str(tmp_path / "calib.json")
    save_calibration(path, calibration_record(run, TINY))
    record = load_calibration(path)
    policy, label = build_policy(CacheSettings("magcache", calibration=record), TINY)
    assert policy.ratios["cond"] == pytest.approx(expected, rel=1e-4) and (policy.k, policy.threshold) == (4, 0.12)
    assert "calibrated on Wan2.1 T2V dim 256 x 2 layers" in label

    (tmp_path / "bad.json").write_text('{"ratios": [1, 2]}')
    with pytest.raises(LightX2VError, match="not a MagCache calibration"):
        load_calibration(str(tmp_path / "bad.json"))


# --- coefficient selection ------------------------------------------------------------------------------

@pytest.mark.parametrize("cfg,latent_hw,variant", [
    (T2V_1_3B, (60, 104), tables.T2V_1_3B),
    (T2V_14B, (90, 160), tables.T2V_14B),
    (I2V_14B, (60, 104), tables.I2V_480P),
    (I2V_14B, (104, 60), tables.I2V_480P),
    (I2V_14B, (90, 160), tables.I2V_720P),
    (I2V_14B, (160, 90), tables.I2V_720P),
])
@pytest.mark.parametrize("mode", ["e", "e0"])
def test_teacache_coefficients_per_variant(cfg, latent_hw, variant, mode):
    policy, label = build_policy(CacheSettings("teacache", teacache_mode=mode), cfg, latent_hw)
    assert policy.coefficients == tables.TEACACHE_COEFFICIENTS[variant][mode]
    assert policy.warmup_steps == (5 if mode == "e0" else 1) and policy.threshold == 0.26
    assert variant in label


def test_every_variant_has_its_own_polynomial():
    for mode in ("e", "e0"):
        assert len({tables.TEACACHE_COEFFICIENTS[v][mode] for v in tables.VARIANTS}) == 4
    assert tables.TEACACHE_COEFFICIENTS[tables.T2V_1_3B]["e"][0] == 2396.76752
    assert tables.TEACACHE_COEFFICIENTS[tables.I2V_720P]["e0"][-1] == -0.0417769401


def test_variant_override():
    policy, _ = build_policy(CacheSettings("teacache", variant=tables.I2V_720P, teacache_mode="e"), TINY)
    assert policy.coefficients == tables.TEACACHE_COEFFICIENTS[tables.I2V_720P]["e"]


@pytest.mark.parametrize("cfg", [TINY, FLF2V_14B])
def test_no_teacache_entry_points_to_adaptive(cfg):
    with pytest.raises(LightX2VError, match="adaptive") as info:
        build_policy(CacheSettings("teacache"), cfg)
    assert cfg.variant in str(info.value) and "variant" in str(info.value)


def test_magcache_tables_and_missing_entries():
    policy, _ = build_policy(CacheSettings("magcache"), T2V_1_3B)
    assert (policy.k, policy.threshold, policy.retention, len(policy.ratios["cond"])) == (4, 0.12, 0.2, 50)
    policy, _ = build_policy(CacheSettings("magcache"), I2V_14B, (60, 104))
    assert (policy.k, policy.threshold, len(policy.ratios["cond"])) == (6, 0.24, 40)
    for cfg, hw in ((T2V_14B, None), (I2V_14B, (90, 160)), (TINY, None)):
        with pytest.raises(LightX2VError, match="magcache-calibrate") as info:
            build_policy(CacheSettings("magcache"), cfg, hw)
        assert "adaptive" in str(info.value)


def test_default_thresholds_and_adaptive_warmup():
    run = start_run(CacheSettings("adaptive"), TINY, schedule(20))
    assert run.policy.threshold == 0.2 and run.start_percent == 0.15
    assert start_run(CacheSettings("adaptive", threshold=0.3, start_percent=0.5), TINY, schedule(20)).start_percent == 0.5


def test_few_steps_guard_message():
    assert "4 steps" in too_few_steps_message(4) and too_few_steps_message(8) is not None
    assert too_few_steps_message(9) is None


def test_bad_settings_are_rejected():
    with pytest.raises(LightX2VError, match="method"):
        CacheSettings("fastcache")
    with pytest.raises(LightX2VError, match="start_percent"):
        CacheSettings("adaptive", start_percent=0.8, end_percent=0.2)
