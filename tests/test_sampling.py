"""Schedule and changing-resolution math (no ComfyUI): the values LightX2V's WanStepDistillScheduler produces, LightX2V's own
table construction, validation errors."""

import numpy as np
import pytest
import torch

from lightx2v_nodes.errors import LightX2VError
from lightx2v_nodes.sampling.changing_resolution import (build_plan, parse_rates, parse_switch_steps, renoise,
                                                          resize_latent, stage_latent_size)
from lightx2v_nodes.sampling.schedule import distill_sigmas, multistep_sigmas, parse_step_list, timesteps_fed

# LightX2V's distilled configs (denoising_step_list, sample_shift): (list, shift, sigmas, timesteps fed)
REFERENCE_ROWS = [
    ("1000,750,500,250", 5.0, [1.0, 0.9375, 0.833333, 0.625], [1000, 937.5, 833.333, 625]),
    ("999,750,500,250", 5.0, [0.9998, 0.9375, 0.833333, 0.625], [999.8, 937.5, 833.333, 625]),
    ("1000,750,500,250", 8.0, [1.0, 0.96, 0.888889, 0.727273], [1000, 960, 888.889, 727.273]),
]


def lightx2v_distill_table(step_list, shift):
    """LightX2V's WanStepDistillScheduler construction: a float32 table linspace(1, 0, 1001)[:-1], shifted,
    indexed at 1000 - t."""
    table = torch.linspace(1.0, 0.0, 1001)[:-1]
    table = shift * table / (1 + (shift - 1) * table)
    return table[[1000 - int(t) for t in step_list]]


def lightx2v_multistep(steps, shift):
    """LightX2V's WanScheduler: sigma_max from its float32 table, np.linspace to 0, shifted, plus 0."""
    alphas = np.linspace(1, 1 / 1000, 1000)[::-1].copy()
    sigma_max = torch.from_numpy(1.0 - alphas).to(torch.float32)[0].item()
    sigmas = np.linspace(sigma_max, 0.0, steps + 1)[:-1]
    sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
    return torch.from_numpy(np.concatenate([sigmas, [0.0]]).astype(np.float32))


@pytest.mark.parametrize("text,shift,sigmas,timesteps", REFERENCE_ROWS)
def test_reference_rows(text, shift, sigmas, timesteps):
    steps = parse_step_list(text)
    got = distill_sigmas(steps, shift)
    assert got.dtype == torch.float32 and len(got) == 5 and got[-1] == 0
    assert got[:-1].tolist() == pytest.approx(sigmas, abs=5e-7 + 1e-6)
    assert timesteps_fed(got) == pytest.approx(timesteps, abs=1e-3)
    torch.testing.assert_close(got[:-1], lightx2v_distill_table(steps, shift), rtol=1e-6, atol=0)


def test_999_reads_0999_before_the_shift():
    # 999 is index 1 of LightX2V's table: s = 0.999, sigma = 5*0.999/(1+4*0.999)
    assert float(distill_sigmas([999.0], 5.0)[0]) == pytest.approx(4.995 / 4.996, rel=1e-7)


def test_any_length_and_float_steps():
    steps = parse_step_list("[1000, 937.5; 800  600.25,400,200, 100, 1]")
    assert steps == [1000, 937.5, 800, 600.25, 400, 200, 100, 1]
    sigmas = distill_sigmas(steps, 3.0)
    assert len(sigmas) == 9 and torch.all(sigmas[:-1] > sigmas[1:])
    assert float(sigmas[1]) == pytest.approx(3 * 0.9375 / (1 + 2 * 0.9375), rel=1e-7)
    # shift 1 leaves the list as it is
    assert distill_sigmas(steps, 1.0)[:-1].tolist() == pytest.approx([t / 1000 for t in steps], rel=1e-7)


@pytest.mark.parametrize("text,words", [
    ("", "empty"), (" , ", "empty"), ("1000,abc,500", "'abc'"), ("1000,0", "outside"), ("1001,500", "outside"),
    ("-250", "outside"), ("1000,nan", "outside"), ("1000,500,750", "strictly decreasing"),
    ("1000,750,750", "strictly decreasing"),
])
def test_bad_step_lists(text, words):
    with pytest.raises(LightX2VError, match=words):
        parse_step_list(text)


@pytest.mark.parametrize("shift", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_shift(shift):
    with pytest.raises(LightX2VError, match="shift"):
        distill_sigmas([1000, 500], shift)
    with pytest.raises(LightX2VError, match="shift"):
        multistep_sigmas(10, shift)


@pytest.mark.parametrize("steps,shift", [(50, 5.0), (40, 3.0), (4, 5.0), (1, 8.0)])
def test_multistep_schedule_matches_lightx2v(steps, shift):
    ours = multistep_sigmas(steps, shift)
    assert len(ours) == steps + 1 and ours[-1] == 0
    torch.testing.assert_close(ours, lightx2v_multistep(steps, shift), rtol=1e-6, atol=1e-7)


def plan_50(rates=(1.0, 0.75), switches=(10, 35)):
    return build_plan(list(rates), list(switches), 50, 5.0, (60, 104), lambda s: multistep_sigmas(50, s))


def test_lightx2v_example_plan():
    stages = plan_50()
    assert [(s.first_step, s.end_step) for s in stages] == [(0, 10), (10, 35), (35, 50)]
    assert [s.shift for s in stages] == [5.0, 6.0, 7.0]  # shift + 1 after each switch
    assert [s.rate for s in stages] == [1.0, 0.75, 1.0]
    assert [s.latent_hw for s in stages] == [(60, 104), (44, 78), (60, 104)]
    assert sum(s.steps for s in stages) == 50
    assert [s.is_last for s in stages] == [False, False, True]
    for stage in stages:
        sigmas = stage.sampler_sigmas()
        assert len(sigmas) == stage.steps + 1 and sigmas[-1] == 0
        torch.testing.assert_close(sigmas[:-1], multistep_sigmas(50, stage.shift)[stage.first_step:stage.end_step])
    # re-noise at the sigma of the switch step itself (LightX2V's step_index), under the old shift
    assert stages[0].exit_sigma() == pytest.approx(float(multistep_sigmas(50, 5.0)[9]))
    assert stages[1].exit_sigma() == pytest.approx(float(multistep_sigmas(50, 6.0)[34]))


def test_no_switch_is_one_plain_stage():
    (stage,) = build_plan([], [], 30, 5.0, (60, 104), lambda s: multistep_sigmas(30, s))
    assert (stage.first_step, stage.end_step, stage.shift, stage.latent_hw) == (0, 30, 5.0, (60, 104))
    torch.testing.assert_close(stage.sampler_sigmas(), multistep_sigmas(30, 5.0), rtol=0, atol=0)


def test_stage_sizes_round_to_even():
    assert stage_latent_size(60, 104, 0.75) == (44, 78)
    assert stage_latent_size(90, 160, 0.5) == (44, 80)
    assert stage_latent_size(45, 81, 1.0) == (45, 81)  # full size is kept exactly
    with pytest.raises(LightX2VError, match="patch"):
        stage_latent_size(4, 4, 0.25)


@pytest.mark.parametrize("rates,switches,words", [
    ([0.75], [50], "beyond"), ([0.75], [60], "beyond"), ([0.75, 0.5], [30, 20], "increasing"),
    ([0.75, 0.5], [20, 20], "increasing"), ([0.75], [0], "increasing"), ([0.75], [], "one resolution rate per"),
    ([0.75, 0.5], [20], "one resolution rate per"),
])
def test_bad_plans(rates, switches, words):
    with pytest.raises(LightX2VError, match=words):
        plan_50(rates, switches)


@pytest.mark.parametrize("text,words", [("0", "outside"), ("-0.5", "outside"), ("1.5", "outside"), ("x", "not a number")])
def test_bad_rates(text, words):
    with pytest.raises(LightX2VError, match=words):
        parse_rates(text)


def test_parse_plan_strings():
    assert parse_rates("[1.0, 0.75]") == [1.0, 0.75]
    assert parse_rates("") == []
    assert parse_switch_steps("10, 35") == [10, 35]
    with pytest.raises(LightX2VError, match="whole number"):
        parse_switch_steps("10.5")
    with pytest.raises(LightX2VError, match="whole number"):
        parse_switch_steps("ten")


def test_resize_and_renoise():
    x = torch.randn(1, 16, 3, 8, 12)
    assert resize_latent(x, (8, 12)) is x
    small = resize_latent(x, (6, 8))
    assert small.shape == (1, 16, 3, 6, 8)
    # trilinear with T kept = bilinear per frame
    per_frame = torch.nn.functional.interpolate(x[:, :, 1], size=(6, 8), mode="bilinear", align_corners=False)
    torch.testing.assert_close(small[:, :, 1], per_frame)
    # a constant latent stays constant (weights sum to 1: resizing commutes with per-channel affine maps)
    torch.testing.assert_close(resize_latent(torch.full_like(x, 0.3), (6, 8)), torch.full((1, 16, 3, 6, 8), 0.3))
    noise = torch.randn_like(small)
    torch.testing.assert_close(renoise(small, noise, 0.25), 0.75 * small + 0.25 * noise)
