"""Wan2.2 on tiny random weights (fp32, sdpa): TI2V-5B-shaped and A14B-I2V-shaped DiTs through our loader vs
ComfyUI's UNETLoader, the two-expert 4-step sampler vs the native SplitSigmas -> 2x SamplerCustomAdvanced chain
(also with a LoRA per expert vs LoraLoaderModelOnly), and the bad inputs of Wan2.2 graphs."""

import pytest
import torch

from harness import run_prompt
from lightx2v_nodes.errors import LightX2VError
from lightx2v_nodes.lora import synthetic as lora_synthetic
from lightx2v_nodes.sampling.experts import boundary_switch_step, expert_switch_step
from lightx2v_nodes.sampling.schedule import distill_sigmas
from lightx2v_nodes.vae.synthetic import write_random_taehv
from lightx2v_nodes.wan import synthetic
from lightx2v_nodes.wan.config import detect_config
from lightx2v_nodes.wan.model import WanDiT

TOL = 1e-5
pytestmark = pytest.mark.usefixtures("comfy_nodes", "one_thread", "native_unet_fp32")


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.fixture(scope="module")
def files(comfy_nodes, models_dir):
    names = {}
    for key, task, seed, layout in (("ti2v", "ti2v", 31, "comfy"), ("ti2v_diffusers", "ti2v", 31, "diffusers"),
                                    ("t2v_high", "t2v", 32, "comfy"), ("t2v_low", "t2v", 33, "comfy"),
                                    ("i2v_high", "i2v_a14b", 34, "comfy"), ("i2v_low", "i2v_a14b", 35, "comfy")):
        cfg = synthetic.tiny_config(task)
        names[key] = f"wan22_{key}.safetensors"
        synthetic.write_checkpoint(synthetic.random_state_dict(cfg, seed=seed), str(models_dir / "diffusion_models" / names[key]),
                                   layout, "fp32")
    small = synthetic.tiny_config("t2v", dim=128)
    names["t2v_small"] = "wan22_t2v_small.safetensors"
    synthetic.write_checkpoint(synthetic.random_state_dict(small, seed=36), str(models_dir / "diffusion_models" / names["t2v_small"]),
                               "comfy", "fp32")
    vace = synthetic.random_state_dict(synthetic.tiny_config("t2v"), seed=37)
    vace["vace_patch_embedding.weight"] = torch.zeros(256, 96, 1, 2, 2)
    names["vace"] = "wan22_vace.safetensors"
    synthetic.write_checkpoint(vace, str(models_dir / "diffusion_models" / names["vace"]), "comfy", "fp32")
    for key in ("high", "low"):
        lora = lora_synthetic.make_lora(synthetic.tiny_config("t2v"), "lightx2v", rank=8, seed=40 + len(key))
        names[f"lora_{key}"] = f"wan22_lightning_{key}.safetensors"
        lora_synthetic.write_lora({k: v for k, v in lora.items() if not k.endswith("diff_m")},
                                  str(models_dir / "loras" / names[f"lora_{key}"]))
    names["taew2_2"] = "wan22_taew2_2.safetensors"
    write_random_taehv(str(models_dir / "vae_approx" / names["taew2_2"]), latent_channels=48, dtype="fp32", seed=6)
    names["taew2_1"] = "wan22_taew2_1.safetensors"
    write_random_taehv(str(models_dir / "vae_approx" / names["taew2_1"]), latent_channels=16, dtype="fp32", seed=7)
    return names


def ours(name, quantization="auto"):
    return {"class_type": "LightX2VLoadWanDiT", "inputs": {"model_name": name, "dtype": "fp32", "attention": "sdpa",
                                                            "quantization": quantization}}


def native(name):
    return {"class_type": "UNETLoader", "inputs": {"unet_name": name, "weight_dtype": "default"}}


def conditioning(prompt):
    prompt["2"] = {"class_type": "LightX2VSyntheticConditioning", "inputs": {"seed": 1, "tokens": 12, "dim": 4096}}
    prompt["3"] = {"class_type": "LightX2VSyntheticConditioning", "inputs": {"seed": 2, "tokens": 12, "dim": 4096}}
    return prompt


def ksampler(latent, positive=("2", 0), negative=("3", 0)):
    return {"class_type": "KSampler", "inputs": {
        "model": ["1", 0], "positive": list(positive), "negative": list(negative), "latent_image": list(latent),
        "seed": 7, "steps": 3, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}}


# --- detection ---------------------------------------------------------------------------------------------------

def test_wan22_shapes_are_detected():
    for task, variant in (("ti2v", "Wan2.2 TI2V"), ("i2v_a14b", "Wan2.2 I2V"), ("t2v", "Wan2.1 T2V")):
        cfg = detect_config(synthetic.parameter_shapes(synthetic.tiny_config(task)))
        assert cfg == synthetic.tiny_config(task) and cfg.variant.startswith(variant)
    full = synthetic.tiny_config("ti2v", dim=3072, layers=30, ffn_dim=14336)
    assert detect_config(synthetic.parameter_shapes(full)).variant == "Wan2.2 TI2V 5B"
    assert (full.in_dim, full.out_dim, full.num_heads) == (48, 48, 24)


@pytest.mark.parametrize("key, family", [("vace_patch_embedding.weight", "VACE"), ("control_adapter.conv.weight", "camera"),
                                         ("casual_audio_encoder.encoder.final_linear.weight", "S2V"),
                                         ("audio_proj.audio_proj_glob_1.layer.bias", "HuMo"),
                                         ("face_adapter.fuser_blocks.0.k_norm.weight", "Animate")])
def test_unsupported_families_are_named(key, family):
    shapes = synthetic.parameter_shapes(synthetic.tiny_config("t2v"))
    shapes[key] = (1,)
    with pytest.raises(LightX2VError, match=family):
        detect_config(shapes)


def test_fun_control_channels_are_refused():
    shapes = synthetic.parameter_shapes(synthetic.tiny_config("i2v"))
    shapes["patch_embedding.weight"] = (256, 48, 1, 2, 2)
    with pytest.raises(LightX2VError, match="Fun-Control"):
        detect_config(shapes)


def test_per_frame_timesteps_match_native_wan():
    import comfy.ldm.wan.model
    import comfy.ops

    cfg = synthetic.tiny_config("ti2v", layers=2)
    weights = synthetic.random_state_dict(cfg, seed=3)
    model = WanDiT(**cfg.unet_config())
    model.load_state_dict(weights)
    reference = comfy.ldm.wan.model.WanModel(**cfg.unet_config(), operations=comfy.ops.disable_weight_init)
    reference.load_state_dict(weights, strict=False)
    gen = torch.Generator().manual_seed(0)
    x, context = torch.randn(2, 48, 3, 6, 8, generator=gen), torch.randn(2, 9, 4096, generator=gen)
    for t in (torch.tensor([999.0, 500.0]), torch.tensor([[0.0, 999.0, 999.0], [0.0, 500.0, 500.0]])):
        with torch.no_grad():
            assert rel_err(model(x, t, context), reference(x, t, context)) <= TOL
    with torch.no_grad():  # token chunking slices the per-token modulation too
        expected = model(x, t, context)
        for block in model.blocks:
            block.token_chunk = 10
        assert rel_err(model(x, t, context), expected) <= TOL


# --- TI2V-5B through the loader ------------------------------------------------------------------------------------

def ti2v_prompt(model_node, taew2_2, start_image):
    prompt = conditioning({"1": model_node})
    prompt["4"] = {"class_type": "LightX2VLoadTinyVAE", "inputs": {"vae_name": taew2_2, "dtype": "fp32", "decode_mode": "chunked"}}
    prompt["6"] = {"class_type": "Wan22ImageToVideoLatent", "inputs": {"vae": ["4", 0], "width": 64, "height": 64,
                                                                       "length": 9, "batch_size": 1}}
    if start_image:
        prompt["7"] = {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0x3366CC}}
        prompt["6"]["inputs"]["start_image"] = ["7", 0]
    prompt["5"] = ksampler(("6", 0))
    prompt["8"] = {"class_type": "LightX2VTinyVAEDecode", "inputs": {"samples": ["5", 0], "vae": ["4", 0], "decode_mode": "as loaded"}}
    return prompt


@pytest.mark.parametrize("start_image", [False, True])
@pytest.mark.parametrize("layout", ["ti2v", "ti2v_diffusers"])
def test_ti2v_matches_native_ksampler(files, start_image, layout):
    run = run_prompt(ti2v_prompt(ours(files[layout]), files["taew2_2"], start_image), outputs=["8"])
    reference = run_prompt(ti2v_prompt(native(files["ti2v"]), files["taew2_2"], start_image), outputs=["8"])
    latent, expected = run.output("5")["samples"], reference.output("5")["samples"]
    assert latent.shape == (1, 48, 3, 4, 4)
    assert rel_err(latent, expected) <= TOL
    if start_image:  # the start frame is kept by the noise mask
        assert run.output("6")["noise_mask"][:, :, 0].abs().sum() == 0
        torch.testing.assert_close(latent[:, :, 0], run.output("6")["samples"][:, :, 0])
    frames = run.output("8")
    assert frames.shape == (9, 64, 64, 3)
    assert torch.allclose(frames, reference.output("8"), atol=1e-5)


def test_ti2v_quantized_on_load_tracks_native(files):
    run = run_prompt(ti2v_prompt(ours(files["ti2v"], "int8-weight-only"), files["taew2_2"], True), outputs=["5"])
    reference = run_prompt(ti2v_prompt(native(files["ti2v"]), files["taew2_2"], True), outputs=["5"])
    a, b = run.output("5")["samples"].flatten().double(), reference.output("5")["samples"].flatten().double()
    assert torch.nn.functional.cosine_similarity(a, b, dim=0) > 0.999


# --- A14B I2V expert with a concat start latent --------------------------------------------------------------------

def i2v_prompt(model_node, taew2_1):
    prompt = conditioning({"1": model_node})
    prompt["4"] = {"class_type": "LightX2VLoadTinyVAE", "inputs": {"vae_name": taew2_1, "dtype": "fp32", "decode_mode": "chunked"}}
    prompt["7"] = {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0x3366CC}}
    prompt["6"] = {"class_type": "WanImageToVideo", "inputs": {"positive": ["2", 0], "negative": ["3", 0], "vae": ["4", 0],
                                                               "start_image": ["7", 0], "width": 64, "height": 64,
                                                               "length": 9, "batch_size": 1}}
    prompt["5"] = ksampler(("6", 2), ("6", 0), ("6", 1))
    return prompt


def test_i2v_a14b_expert_matches_native(files):
    run = run_prompt(i2v_prompt(ours(files["i2v_high"]), files["taew2_1"]), outputs=["5"])
    reference = run_prompt(i2v_prompt(native(files["i2v_high"]), files["taew2_1"]), outputs=["5"])
    assert rel_err(run.output("5")["samples"], reference.output("5")["samples"]) <= TOL
    assert run.output("6", 0)[0][1]["concat_latent_image"].abs().mean() > 0


def test_i2v_a14b_expert_without_start_image_is_explained(files):
    prompt = conditioning({"1": ours(files["i2v_high"])})
    prompt["4"] = {"class_type": "EmptyHunyuanLatentVideo", "inputs": {"width": 32, "height": 32, "length": 5, "batch_size": 1}}
    prompt["5"] = ksampler(("4", 0))
    failed = run_prompt(prompt, outputs=["5"], expect_error=True)
    assert "no start image" in failed.error()["exception_message"]


# --- two experts ----------------------------------------------------------------------------------------------------

def two_expert_prompt(high, low, lora):
    prompt = conditioning({"1": high, "9": low})
    if lora:
        for node, source, key in (("11", "1", "high"), ("12", "9", "low")):
            prompt[node] = lora(source, key)
    high_ref, low_ref = (["11", 0], ["12", 0]) if lora else (["1", 0], ["9", 0])
    prompt["4"] = {"class_type": "EmptyHunyuanLatentVideo", "inputs": {"width": 32, "height": 32, "length": 5, "batch_size": 1}}
    return prompt, high_ref, low_ref


def ours_two_experts(files, lora):
    def apply(source, key):
        return {"class_type": "LightX2VApplyLoRA", "inputs": {"model": [source, 0], "lora_name": files[f"lora_{key}"],
                                                              "strength": 1.0, "mode": "merge"}}
    prompt, high, low = two_expert_prompt(ours(files["t2v_high"]), ours(files["t2v_low"]), apply if lora else None)
    prompt["5"] = {"class_type": "LightX2VFourStepSampler", "inputs": {
        "model": high, "low_noise_model": low, "positive": ["2", 0], "latent_image": ["4", 0], "seed": 5,
        "denoising_step_list": "1000,750,500,250", "shift": 5.0, "cfg": 1.0, "mode": "deterministic",
        "switch_at": "step", "switch_step": 2}}
    return prompt


def native_chain(files, lora):
    def apply(source, key):
        return {"class_type": "LoraLoaderModelOnly", "inputs": {"model": [source, 0], "lora_name": files[f"lora_{key}"],
                                                                "strength_model": 1.0}}
    prompt, high, low = two_expert_prompt(native(files["t2v_high"]), native(files["t2v_low"]), apply if lora else None)
    prompt.update({
        "20": {"class_type": "LightX2VDistillSigmas", "inputs": {"denoising_step_list": "1000,750,500,250", "shift": 5.0}},
        "21": {"class_type": "SplitSigmas", "inputs": {"sigmas": ["20", 0], "step": 2}},
        "22": {"class_type": "RandomNoise", "inputs": {"noise_seed": 5}},
        "23": {"class_type": "DisableNoise", "inputs": {}},
        "24": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "25": {"class_type": "BasicGuider", "inputs": {"model": high, "conditioning": ["2", 0]}},
        "26": {"class_type": "BasicGuider", "inputs": {"model": low, "conditioning": ["2", 0]}},
        "27": {"class_type": "SamplerCustomAdvanced", "inputs": {"noise": ["22", 0], "guider": ["25", 0], "sampler": ["24", 0],
                                                                 "sigmas": ["21", 0], "latent_image": ["4", 0]}},
        "5": {"class_type": "SamplerCustomAdvanced", "inputs": {"noise": ["23", 0], "guider": ["26", 0], "sampler": ["24", 0],
                                                                "sigmas": ["21", 1], "latent_image": ["27", 0]}},
    })
    return prompt


@pytest.mark.parametrize("lora", [False, True])
def test_two_expert_sampler_matches_native_chain(files, lora):
    latent = run_prompt(ours_two_experts(files, lora), outputs=["5"]).output("5")["samples"]
    expected = run_prompt(native_chain(files, lora), outputs=["5"]).output("5")["samples"]
    assert rel_err(latent, expected) <= TOL
    # Both experts were used: the high expert alone through all four steps differs.
    prompt = ours_two_experts(files, lora)
    prompt["5"]["inputs"]["low_noise_model"] = prompt["5"]["inputs"]["model"]
    assert rel_err(run_prompt(prompt, outputs=["5"]).output("5")["samples"], expected) > 1e-3


def test_boundary_switch():
    sigmas = distill_sigmas([1000, 750, 500, 250], 5.0)
    assert boundary_switch_step(sigmas, 0.875) == boundary_switch_step(sigmas, 0.9) == 2
    assert expert_switch_step(sigmas, None, 3) == 3
    with pytest.raises(LightX2VError, match="from 1 to 3"):
        expert_switch_step(sigmas, 0.5, 2)  # every step is above 0.5: the low expert would run none


def test_boundary_split_node_matches_split_sigmas(files):
    prompt = {
        "1": {"class_type": "BasicScheduler", "inputs": {"model": ["0", 0], "scheduler": "simple", "steps": 20, "denoise": 1.0}},
        "0": native(files["t2v_high"]),
        "2": {"class_type": "LightX2VSplitSigmasAtBoundary", "inputs": {"sigmas": ["1", 0], "boundary": 0.875}},
    }
    run = run_prompt(prompt, outputs=["2"])
    sigmas = run.output("1")
    switch = int((sigmas[:-1] >= 0.875).sum())
    torch.testing.assert_close(run.output("2", 0), sigmas[:switch + 1])
    torch.testing.assert_close(run.output("2", 1), sigmas[switch:])


def nothing_loaded():
    """Clears ComfyUI's loaded models; returns a check that none was loaded since (a refused graph loads nothing)."""
    import comfy.model_management as mm

    mm.unload_all_models()
    return lambda: mm.current_loaded_models == []


@pytest.mark.parametrize("low, match", [("t2v_small", "dim 256 vs 128"), ("i2v_low", "in_dim 16 vs 36"),
                                        ("ti2v", "in_dim 16 vs 48")])
def test_mismatched_experts_fail_before_sampling(files, low, match):
    prompt = ours_two_experts(files, False)
    prompt["9"] = ours(files[low])
    still_empty = nothing_loaded()
    failed = run_prompt(prompt, outputs=["5"], expect_error=True)
    assert failed.error()["exception_type"].endswith("LightX2VError")
    assert match in failed.error()["exception_message"]
    assert still_empty()


# --- bad input ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("model, latent_channels, wants", [("ti2v", 16, 48), ("t2v_high", 48, 16)])
def test_latent_of_the_other_wan_generation_is_explained(files, model, latent_channels, wants):
    """A Wan2.1 latent with the 5B model, and a Wan2.2 5B latent with a 16-channel model."""
    prompt = conditioning({"1": ours(files[model])})
    if latent_channels == 16:
        prompt["4"] = {"class_type": "EmptyHunyuanLatentVideo", "inputs": {"width": 32, "height": 32, "length": 5, "batch_size": 1}}
    else:
        prompt["7"] = {"class_type": "LightX2VLoadTinyVAE", "inputs": {"vae_name": files["taew2_2"], "dtype": "fp32",
                                                                       "decode_mode": "chunked"}}
        prompt["4"] = {"class_type": "Wan22ImageToVideoLatent", "inputs": {"vae": ["7", 0], "width": 64, "height": 64,
                                                                           "length": 5, "batch_size": 1}}
    prompt["5"] = {"class_type": "LightX2VFourStepSampler", "inputs": {
        "model": ["1", 0], "positive": ["2", 0], "latent_image": ["4", 0], "seed": 5,
        "denoising_step_list": "1000,750,500,250", "shift": 5.0, "cfg": 1.0, "mode": "deterministic"}}
    still_empty = nothing_loaded()
    failed = run_prompt(prompt, outputs=["5"], expect_error=True)
    message = failed.error()["exception_message"]
    assert failed.error()["exception_type"].endswith("LightX2VError")
    assert f"{latent_channels} channels" in message and f"works on {wants}-channel" in message
    assert "Wan22ImageToVideoLatent" in message and still_empty()


def test_unsupported_family_file_is_named_in_the_ui(files):
    failed = run_prompt({"1": ours(files["vace"])}, outputs=["1"], expect_error=True)
    assert failed.error()["exception_type"].endswith("LightX2VError") and "VACE" in failed.error()["exception_message"]
