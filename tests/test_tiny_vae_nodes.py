"""The tiny VAE nodes inside real ComfyUI: our VAE with native VAEEncode/VAEDecode, our decode node,
and ComfyUI's own TAEHV as the reference (same random weights, fp32, relative error <= 1e-5)."""

import pytest
import torch

from comfy.taesd.taehv import TAEHV as ComfyTAEHV
from harness import run_prompt
from lightx2v_nodes.vae import synthetic

TOL = 1e-5


def rel(a, b):
    a, b = a.detach().cpu().double(), b.detach().cpu().double()
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture(scope="module")
def tiny_vae_file(models_dir):
    """A random Wan2.1 TAEHV under a name ComfyUI's own VAELoader would not list (no taehv/lighttae prefix)."""
    sd = synthetic.random_taehv_state_dict(16, seed=21)
    name = "my_wan_tiny_vae.safetensors"
    synthetic.write_taehv(sd, str(models_dir / "vae_approx" / name), "fp32")
    return name, sd


def roundtrip_prompt(vae_name, mode="chunked", frames=9, decode_mode="as loaded"):
    return {
        "1": {"class_type": "LightX2VLoadTinyVAE", "inputs": {"vae_name": vae_name, "dtype": "fp32", "decode_mode": mode}},
        "2": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 24, "batch_size": frames, "color": 0x806040}},
        "3": {"class_type": "ImageAddNoise", "inputs": {"image": ["2", 0], "seed": 5, "strength": 0.4}},
        "4": {"class_type": "VAEEncode", "inputs": {"pixels": ["3", 0], "vae": ["1", 0]}},
        "5": {"class_type": "VAEDecode", "inputs": {"samples": ["4", 0], "vae": ["1", 0]}},
        "6": {"class_type": "LightX2VTinyVAEDecode", "inputs": {"samples": ["4", 0], "vae": ["1", 0], "decode_mode": decode_mode}},
    }


def test_loader_lists_any_file_name(comfy_nodes, tiny_vae_file):
    name, _ = tiny_vae_file
    ours = comfy_nodes["LightX2VLoadTinyVAE"].INPUT_TYPES()["required"]["vae_name"][1]["options"]  # V3 combo
    native = comfy_nodes["VAELoader"].INPUT_TYPES()["required"]["vae_name"][0]
    assert name in ours and name not in native


def test_native_vae_nodes_and_our_decode_node_agree_with_comfyui_taehv(comfy_nodes, tiny_vae_file):
    import comfy.utils

    name, sd = tiny_vae_file
    updates = []
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: updates.append((value, total)))
    try:
        run = run_prompt(roundtrip_prompt(name), outputs=["5", "6"])
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
    assert updates and updates[-1][0] == updates[-1][1], updates  # the progress bars run to the end
    vae = run.output("1")
    assert type(vae).__name__ == "TinyWanVAE"
    latent = run.output("4")["samples"]
    assert latent.shape == (1, 16, 3, 3, 4)  # 9 frames of 24x32 -> 3 latent frames of 3x4

    ref = ComfyTAEHV(latent_channels=16, latent_format=None, show_progress_bar=False, parallel=True)
    ref.load_state_dict(sd, strict=True)
    with torch.no_grad():
        pixels = run.output("3").movedim(-1, 0).unsqueeze(0)  # IMAGE (T, H, W, 3) -> (1, 3, T, H, W)
        expected_latent = ref.encode(pixels)
        expected_frames = ref.decode(latent).clamp(0, 1)[0].permute(1, 2, 3, 0)
    assert rel(latent, expected_latent) <= TOL

    native, ours = run.output("5"), run.output("6")
    assert native.shape == ours.shape == (9, 24, 32, 3)
    assert ours.dtype == torch.float32 and ours.device.type == "cpu"
    assert torch.equal(native, ours)
    assert rel(ours, expected_frames) <= TOL


@pytest.mark.parametrize("loader_mode,node_mode", [("sequential", "as loaded"), ("parallel", "chunked")])
def test_decode_modes_through_the_nodes_give_the_same_frames(comfy_nodes, tiny_vae_file, loader_mode, node_mode):
    name, _ = tiny_vae_file
    reference = run_prompt(roundtrip_prompt(name, "chunked", frames=5), outputs=["6"]).output("6")
    run = run_prompt(roundtrip_prompt(name, loader_mode, frames=5, decode_mode=node_mode), outputs=["5", "6"])
    assert rel(run.output("5"), reference) <= TOL
    assert rel(run.output("6"), reference) <= TOL


def test_wan22_tiny_vae_decodes_48_channel_latents(comfy_nodes, models_dir):
    name = "taew2_2_random.pth"
    synthetic.write_random_taehv(str(models_dir / "vae_approx" / name), 48, "fp16", seed=2)
    prompt = {
        "1": {"class_type": "LightX2VLoadTinyVAE", "inputs": {"vae_name": name, "dtype": "fp32", "decode_mode": "chunked"}},
        "2": {"class_type": "EmptyHunyuanLatentVideo", "inputs": {"width": 32, "height": 32, "length": 5, "batch_size": 1}},
        "3": {"class_type": "LightX2VTinyVAEDecode", "inputs": {"samples": ["2", 0], "vae": ["1", 0], "decode_mode": "as loaded"}},
    }
    # EmptyHunyuanLatentVideo makes 16 channels: the node explains the mismatch.
    failed = run_prompt(prompt, outputs=["3"], expect_error=True)
    assert "48" in failed.error()["exception_message"] and "16" in failed.error()["exception_message"]
    prompt["2"] = {"class_type": "Wan22ImageToVideoLatent", "inputs": {"vae": ["1", 0], "width": 32, "height": 32, "length": 5, "batch_size": 1}}
    images = run_prompt(prompt, outputs=["3"]).output("3")
    assert images.shape == (5, 32, 32, 3)
    assert 0 <= images.min() and images.max() <= 1


def test_not_a_taehv_file_fails_with_a_clear_message(comfy_nodes, models_dir):
    from safetensors.torch import save_file

    name = "not_a_vae.safetensors"
    save_file({"lora_unet_x.lora_up.weight": torch.zeros(4, 4)}, str(models_dir / "vae_approx" / name))
    prompt = {"1": {"class_type": "LightX2VLoadTinyVAE", "inputs": {"vae_name": name, "dtype": "auto", "decode_mode": "chunked"}}}
    failed = run_prompt(prompt, outputs=["1"], expect_error=True)
    assert failed.error()["exception_type"].endswith("LightX2VError")
    assert "is not a TAEHV" in failed.error()["exception_message"]


def test_decode_node_refuses_other_vaes(comfy_nodes, tiny_vae_file):
    from lightx2v_nodes.errors import LightX2VError
    from lightx2v_nodes.vae.comfy_vae import decode_to_images

    with pytest.raises(LightX2VError, match="native VAE Decode"):
        decode_to_images(object(), torch.zeros(1, 16, 1, 2, 2))
