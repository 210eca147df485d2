"""The sampler nodes inside real ComfyUI, on tiny random Wan models loaded with our loader.

Checks: the timesteps our DiT receives (recorded with a native DIFFUSION_MODEL wrapper), equality with
native SamplerCustomAdvanced (euler = deterministic, lcm = renoise) for T2V and I2V, a hand-written
LightX2V update rule, model-call counts with and without CFG, changing-resolution shapes, step accounting
and switch re-noising, and the errors users see.
"""

import pytest
import torch

from harness import raises_lightx2v_error, run_prompt
from lightx2v_nodes.sampling.changing_resolution import resize_latent
from lightx2v_nodes.sampling.schedule import distill_sigmas, multistep_sigmas, parse_step_list
from lightx2v_nodes.wan import synthetic

TOL = 1e-5
T2V_LATENT = (1, 16, 2, 8, 12)


def rel_err(a, b):
    a, b = a.detach().cpu().float(), b.detach().cpu().float()
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture(scope="module")
def tiny_models(models_dir):
    names = {}
    for task in ("t2v", "i2v"):
        names[task] = f"sampler_{task}.safetensors"
        synthetic.write_checkpoint(synthetic.random_state_dict(synthetic.tiny_config(task), seed=11),
                                   str(models_dir / "diffusion_models" / names[task]), "comfy", "fp32")
    return names


@pytest.fixture(scope="module")
def models(comfy_nodes, tiny_models):
    load = comfy_nodes["LightX2VLoadWanDiT"]()
    return {task: load.execute(model_name=name, dtype="fp32", attention="auto")[0] for task, name in tiny_models.items()}


class Recorder:
    """A native DIFFUSION_MODEL wrapper on a clone of the model: what our DiT receives and returns per call."""

    def __init__(self, model):
        import comfy.patcher_extension

        self.calls = []
        self.model = model.clone()
        self.model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "sampler-test", self)

    def __call__(self, executor, x, timestep, context, clip_fea=None, *args, **kwargs):
        out = executor(x, timestep, context, clip_fea, *args, **kwargs)
        # CPU copies: on a GPU the DiT runs on cuda:0 while the tests build expectations on the CPU.
        self.calls.append({"x": x.to("cpu", copy=True), "t": timestep.to("cpu", copy=True), "clip_fea": clip_fea,
                           "out": out.to("cpu", copy=True)})
        return out

    def timesteps(self):
        return [float(c["t"][0]) for c in self.calls]

    def rows(self):
        return sum(c["x"].shape[0] for c in self.calls)


def text_cond(seed, tokens=12):
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, tokens, 4096, generator=gen) * 0.2, {}]]


def i2v_cond(seed, latent_shape):
    import node_helpers

    gen = torch.Generator().manual_seed(seed + 100)

    class ClipVisionOutput:
        penultimate_hidden_states = torch.randn(1, 257, 1280, generator=gen)

    mask = torch.ones(1, 1, *latent_shape[2:])
    mask[:, :, 0] = 0.0
    values = {"concat_latent_image": torch.randn(latent_shape, generator=gen), "concat_mask": mask,
              "clip_vision_output": ClipVisionOutput()}
    return node_helpers.conditioning_set_values(text_cond(seed), values)


def four_step(comfy_nodes, model, positive, negative=None, seed=3, steps="1000,750,500,250", shift=5.0, cfg=1.0,
              mode="deterministic", latent_shape=T2V_LATENT):
    node = comfy_nodes["LightX2VFourStepSampler"]
    kwargs = {} if negative is None else {"negative": negative}
    with torch.inference_mode():
        out = node.execute(model=model, positive=positive, latent_image={"samples": torch.zeros(latent_shape)}, seed=seed,
                           denoising_step_list=steps, shift=shift, cfg=cfg, mode=mode, **kwargs)[0]
    return out["samples"]


def native_custom_advanced(comfy_nodes, model, positive, negative, sigmas, sampler_name, cfg, seed=3,
                           latent_shape=T2V_LATENT):
    import comfy.samplers
    from comfy_extras.nodes_custom_sampler import Noise_RandomNoise

    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(positive, negative)
    guider.set_cfg(cfg)
    with torch.inference_mode():
        out = comfy_nodes["SamplerCustomAdvanced"].execute(
            noise=Noise_RandomNoise(seed), guider=guider, sampler=comfy.samplers.sampler_object(sampler_name),
            sigmas=sigmas, latent_image={"samples": torch.zeros(latent_shape)})[0]
    return out["samples"]


# --- exact schedule, as the DiT receives it -------------------------------------------------------------

@pytest.mark.parametrize("steps,shift,expected", [
    ("1000,750,500,250", 5.0, [1000, 937.5, 833.333, 625]),
    ("999,750,500,250", 5.0, [999.8, 937.5, 833.333, 625]),
    ("1000,750,500,250", 8.0, [1000, 960, 888.889, 727.273]),
])
def test_dit_receives_reference_timesteps(comfy_nodes, models, steps, shift, expected):
    rec = Recorder(models["t2v"])
    # The model's own flow shift (8 for Wan) must not override the schedule.
    assert rec.model.get_model_object("model_sampling").shift == 8.0
    out = four_step(comfy_nodes, rec.model, text_cond(1), steps=steps, shift=shift)
    assert rec.timesteps() == pytest.approx(expected, abs=1e-3)
    assert all(c["t"].dtype == torch.float32 for c in rec.calls)
    assert out.shape == T2V_LATENT and torch.isfinite(out).all()


def test_cfg_one_makes_one_call_per_step_and_cfg_two_evaluates_the_negative(comfy_nodes, models):
    positive, negative = text_cond(1), text_cond(2)
    one = Recorder(models["t2v"])
    four_step(comfy_nodes, one.model, positive, negative, cfg=1.0)
    assert len(one.calls) == 4 and one.rows() == 4  # negative connected but never evaluated
    two = Recorder(models["t2v"])
    four_step(comfy_nodes, two.model, positive, negative, cfg=2.0)
    assert two.rows() == 8  # cond + uncond per step (ComfyUI may batch both into one call)
    assert two.timesteps()[::len(two.calls) // 4] == pytest.approx(one.timesteps())


# --- equality with native sampling ----------------------------------------------------------------------

def _graph(sampler_node: dict) -> dict:
    return {
        "1": {"class_type": "LightX2VLoadWanDiT", "inputs": {"model_name": "sampler_t2v.safetensors", "dtype": "fp32",
                                                              "attention": "auto"}},
        "2": {"class_type": "LightX2VSyntheticConditioning", "inputs": {"seed": 1, "tokens": 12, "dim": 4096}},
        "3": {"class_type": "LightX2VSyntheticConditioning", "inputs": {"seed": 2, "tokens": 12, "dim": 4096}},
        "4": {"class_type": "EmptyHunyuanLatentVideo", "inputs": {"width": 96, "height": 64, "length": 5, "batch_size": 1}},
        "9": sampler_node,
    }


@pytest.mark.parametrize("mode,native_sampler,cfg", [("deterministic", "euler", 1.0), ("renoise", "lcm", 2.5)])
def test_t2v_prompt_equals_native_custom_advanced(comfy_nodes, tiny_models, mode, native_sampler, cfg):
    ours = run_prompt(_graph({"class_type": "LightX2VFourStepSampler", "inputs": {
        "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0], "seed": 42,
        "denoising_step_list": "1000,750,500,250", "shift": 5.0, "cfg": cfg, "mode": mode}}), outputs=["9"])
    native_graph = _graph({"class_type": "SamplerCustomAdvanced", "inputs": {
        "noise": ["5", 0], "guider": ["6", 0], "sampler": ["7", 0], "sigmas": ["8", 0], "latent_image": ["4", 0]}})
    native_graph.update({
        "5": {"class_type": "RandomNoise", "inputs": {"noise_seed": 42}},
        "6": {"class_type": "CFGGuider", "inputs": {"model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "cfg": cfg}},
        "7": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": native_sampler}},
        "8": {"class_type": "LightX2VDistillSigmas", "inputs": {"denoising_step_list": "1000,750,500,250", "shift": 5.0}},
    })
    native = run_prompt(native_graph, outputs=["9"])
    a, b = ours.output("9")["samples"], native.output("9")["samples"]
    assert a.shape == b.shape == T2V_LATENT and a.abs().mean() > 0.1
    assert rel_err(a, b) <= TOL


@pytest.mark.parametrize("mode,native_sampler,cfg", [("deterministic", "euler", 3.0), ("renoise", "lcm", 1.0)])
def test_i2v_equals_native_custom_advanced(comfy_nodes, models, mode, native_sampler, cfg):
    positive, negative = i2v_cond(1, T2V_LATENT), i2v_cond(2, T2V_LATENT)
    rec = Recorder(models["i2v"])
    ours = four_step(comfy_nodes, rec.model, positive, negative, cfg=cfg, mode=mode)
    # the image conditioning reached the DiT: 16 noise + 4 mask + 16 image channels, CLIP features
    assert rec.calls[0]["x"].shape[1] == 36 and rec.calls[0]["clip_fea"].shape[-2:] == (257, 1280)
    sigmas = distill_sigmas(parse_step_list("1000,750,500,250"), 5.0)
    native = native_custom_advanced(comfy_nodes, models["i2v"], positive, negative, sigmas, native_sampler, cfg=cfg)
    assert ours.abs().mean() > 0.1
    assert rel_err(ours, native) <= TOL


@pytest.mark.parametrize("mode", ["deterministic", "renoise"])
def test_matches_hand_written_lightx2v_update_rule(comfy_nodes, models, mode):
    """x0 = x - sigma*v; deterministic: x = x0 + sigma_next*v; renoise: x = (1-sigma_next)*x0 + sigma_next*noise."""
    import comfy.model_management
    import comfy.sample

    model, seed = models["t2v"], 5
    context = text_cond(1)[0][0]
    sigmas = distill_sigmas(parse_step_list("1000,750,500,250"), 5.0).tolist()
    dit, base = model.model.diffusion_model, model.model
    comfy.model_management.load_models_gpu([model])  # sampling runs on the load device (cuda:0 on a GPU)
    device = model.load_device
    with torch.inference_mode():
        x = comfy.sample.prepare_noise(torch.zeros(T2V_LATENT), seed).to(device)  # sigma 1: pure noise
        # ComfyUI's lcm draws its fresh noise from the seed, with a generator on the device the latent is on
        fresh = torch.Generator(device=device).manual_seed(seed)
        for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
            v = dit(x, torch.tensor([sigma * 1000.0], device=device), context.to(device))
            x0 = x - sigma * v
            if mode == "deterministic":
                x = x0 + sigma_next * v
            else:
                noise = torch.randn(x.shape, generator=fresh, device=device)
                x = x0 if sigma_next == 0 else (1 - sigma_next) * x0 + sigma_next * noise
        expected = base.process_latent_out(x.cpu())
    got = four_step(comfy_nodes, model, text_cond(1), seed=seed, mode=mode)
    assert rel_err(got, expected) <= TOL


# --- errors users see -----------------------------------------------------------------------------------

def test_bad_step_list_error_reaches_the_ui(comfy_nodes, tiny_models):
    run = run_prompt(_graph({"class_type": "LightX2VFourStepSampler", "inputs": {
        "model": ["1", 0], "positive": ["2", 0], "latent_image": ["4", 0], "seed": 0,
        "denoising_step_list": "1000,500,750", "shift": 5.0, "cfg": 1.0, "mode": "deterministic"}}),
        outputs=["9"], expect_error=True)
    assert "strictly decreasing" in run.error()["exception_message"]


def test_cfg_without_negative_is_a_clear_error(comfy_nodes, models):
    with raises_lightx2v_error("needs a negative"):
        four_step(comfy_nodes, models["t2v"], text_cond(1), cfg=3.0)


def test_sigmas_node(comfy_nodes):
    sigmas = comfy_nodes["LightX2VDistillSigmas"].execute(denoising_step_list="999,750,500,250", shift=5.0)[0]
    assert sigmas.tolist() == pytest.approx([0.9998, 0.9375, 0.833333, 0.625, 0.0], abs=1e-6)
    with raises_lightx2v_error("outside"):
        comfy_nodes["LightX2VDistillSigmas"].execute(denoising_step_list="1000,0", shift=5.0)
    with raises_lightx2v_error("shift"):
        comfy_nodes["LightX2VDistillSigmas"].execute(denoising_step_list="1000,500", shift=0.0)


# --- changing resolution --------------------------------------------------------------------------------

def changing(comfy_nodes, model, positive, negative=None, rates="0.5", switches="2", steps=5, shift=3.0, cfg=1.0,
             sampler="euler", seed=7, latent_shape=T2V_LATENT, start=None):
    node = comfy_nodes["LightX2VChangingResolutionSampler"]
    kwargs = {} if negative is None else {"negative": negative}
    start = torch.zeros(latent_shape) if start is None else start
    with torch.inference_mode():
        return node.execute(model=model, positive=positive, latent_image={"samples": start}, seed=seed,
                            steps=steps, shift=shift, cfg=cfg, sampler_name=sampler, resolution_rates=rates,
                            switch_steps=switches, **kwargs)[0]["samples"]


@pytest.mark.parametrize("sampler", ["euler", "uni_pc_bh2"])
def test_single_stage_equals_plain_sampling(comfy_nodes, models, sampler):
    positive, negative = text_cond(1), text_cond(2)
    ours = changing(comfy_nodes, models["t2v"], positive, negative, rates="", switches="", steps=4, cfg=2.0, sampler=sampler)
    native = native_custom_advanced(comfy_nodes, models["t2v"], positive, negative, multistep_sigmas(4, 3.0), sampler,
                                    cfg=2.0, seed=7)
    assert rel_err(ours, native) <= TOL


@pytest.mark.parametrize("rate,stage0_hw,start_latent", [("0.5", (4, 6), False), ("1.0", (8, 12), False),
                                                          ("0.5", (4, 6), True)])
def test_switch_step_accounting_and_renoise(comfy_nodes, models, rate, stage0_hw, start_latent):
    """A non-empty start latent (video-to-video) is noised at the first step only; the switch re-noises x0."""
    import comfy.sample

    rec = Recorder(models["t2v"])
    start = torch.randn(T2V_LATENT, generator=torch.Generator().manual_seed(9)) if start_latent else None
    out = changing(comfy_nodes, rec.model, text_cond(1), rates=rate, switches="2", steps=5, shift=3.0, start=start)
    assert out.shape == T2V_LATENT and torch.isfinite(out).all()
    # 5 steps, 5 model calls: 2 on the stage-0 latent, 3 at full size
    assert [tuple(c["x"].shape[-2:]) for c in rec.calls] == [stage0_hw] * 2 + [(8, 12)] * 3
    first, second = multistep_sigmas(5, 3.0), multistep_sigmas(5, 4.0)  # shift + 1 after the switch
    assert rec.timesteps() == pytest.approx([*(first[:2] * 1000).tolist(), *(second[2:5] * 1000).tolist()], rel=1e-6)
    # stage 0 runs exactly like plain sampling of the same schedule at its size
    plain = Recorder(models["t2v"])
    changing(comfy_nodes, plain.model, text_cond(1), rates="", switches="", steps=5, shift=3.0,
             latent_shape=(1, 16, 2, *stage0_hw), start=None if start is None else resize_latent(start, stage0_hw))
    assert torch.equal(rec.calls[1]["x"], plain.calls[1]["x"])
    # at the switch: x0 = x - sigma*v from step 2, resized, re-noised at step 2's sigma with seed + 1 noise
    sigma = float(first[1])
    x0 = rec.calls[1]["x"] - sigma * rec.calls[1]["out"]
    noise = comfy.sample.prepare_noise(torch.zeros(T2V_LATENT), 7 + 1)
    expected = (1 - sigma) * resize_latent(x0, (8, 12)) + sigma * noise
    assert rel_err(rec.calls[2]["x"], expected) <= TOL


def test_i2v_changing_resolution_resizes_the_image_conditioning(comfy_nodes, models):
    # 10x12 at rate 0.5 -> 4x6 (even rounding changes the aspect ratio: ComfyUI's own rescale would crop)
    shape = (1, 16, 2, 10, 12)
    positive, negative = i2v_cond(1, shape), i2v_cond(2, shape)
    rec = Recorder(models["i2v"])
    out = changing(comfy_nodes, rec.model, positive, negative, rates="0.5", switches="3", steps=4, latent_shape=shape)
    assert out.shape == shape and torch.isfinite(out).all()
    assert [tuple(c["x"].shape[1:]) for c in rec.calls] == [(36, 2, 4, 6)] * 3 + [(36, 2, 10, 12)]  # cfg 1: no negative
    # the image channels the DiT saw in stage 0 are the concat latent resized like the noisy latent (no crop)
    image = positive[0][1]["concat_latent_image"]
    expected = models["i2v"].model.process_latent_in(resize_latent(image, (4, 6)))
    assert rel_err(rec.calls[0]["x"][:, 20:], expected) <= TOL
    assert rel_err(rec.calls[3]["x"][:, 20:], models["i2v"].model.process_latent_in(image)) <= TOL


@pytest.mark.parametrize("rates,switches,steps,words", [
    ("0.75", "5", 5, "beyond"), ("0.75, 0.5", "3, 2", 6, "increasing"), ("0", "2", 5, "outside"),
    ("0.75", "", 5, "one resolution rate per"),
])
def test_changing_resolution_rejects_bad_plans(comfy_nodes, models, rates, switches, steps, words):
    with raises_lightx2v_error(words):
        changing(comfy_nodes, models["t2v"], text_cond(1), rates=rates, switches=switches, steps=steps)


def test_adaptive_samplers_cannot_switch(comfy_nodes, models):
    with raises_lightx2v_error("chooses its own steps"):
        changing(comfy_nodes, models["t2v"], text_cond(1), sampler="dpm_adaptive")


def test_changing_resolution_prompt_runs_without_negative(comfy_nodes, tiny_models):
    run = run_prompt(_graph({"class_type": "LightX2VChangingResolutionSampler", "inputs": {
        "model": ["1", 0], "positive": ["2", 0], "latent_image": ["4", 0], "seed": 1, "steps": 4, "shift": 5.0,
        "cfg": 1.0, "sampler_name": "euler", "resolution_rates": "0.5", "switch_steps": "2"}}), outputs=["9"])
    out = run.output("9")["samples"]
    assert out.shape == T2V_LATENT and torch.isfinite(out).all()
