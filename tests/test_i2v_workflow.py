"""Image-to-video end to end, as the I2V example workflow wires it, on tiny random weights:
start image -> WanImageToVideo (encoding with our tiny VAE as a native VAE) -> 4-step sampler -> tiny VAE decode.
Our loader and ComfyUI's UNETLoader must give the same video (fp32)."""

import pytest
import torch

from harness import run_prompt
from lightx2v_nodes.vae.synthetic import write_random_taehv
from lightx2v_nodes.wan import synthetic

DIT, TAEHV = "i2v_workflow_tiny.safetensors", "i2v_workflow_taew2_1.safetensors"


@pytest.fixture(scope="module")
def files(models_dir):
    cfg = synthetic.tiny_config("i2v")
    synthetic.write_checkpoint(synthetic.random_state_dict(cfg, seed=21), str(models_dir / "diffusion_models" / DIT), "comfy", "fp32")
    write_random_taehv(str(models_dir / "vae_approx" / TAEHV), latent_channels=16, dtype="fp32", seed=4)


def i2v_prompt(model_node):
    return {
        "1": model_node,
        "2": {"class_type": "LightX2VSyntheticConditioning", "inputs": {"seed": 1, "tokens": 12, "dim": 4096}},
        "3": {"class_type": "LightX2VSyntheticConditioning", "inputs": {"seed": 2, "tokens": 12, "dim": 4096}},
        "4": {"class_type": "LightX2VLoadTinyVAE", "inputs": {"vae_name": TAEHV, "dtype": "fp32", "decode_mode": "chunked"}},
        "5": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0x3366CC}},
        "6": {"class_type": "WanImageToVideo", "inputs": {"positive": ["2", 0], "negative": ["3", 0], "vae": ["4", 0],
                                                          "start_image": ["5", 0], "width": 64, "height": 64,
                                                          "length": 9, "batch_size": 1}},
        "7": {"class_type": "LightX2VFourStepSampler", "inputs": {
            "model": ["1", 0], "positive": ["6", 0], "negative": ["6", 1], "latent_image": ["6", 2], "seed": 5,
            "denoising_step_list": "1000,750,500,250", "shift": 5.0, "cfg": 1.0, "mode": "deterministic"}},
        "8": {"class_type": "LightX2VTinyVAEDecode", "inputs": {"samples": ["7", 0], "vae": ["4", 0], "decode_mode": "as loaded"}},
    }


def test_i2v_graph_ours_equals_native(comfy_nodes, files, native_unet_fp32):
    ours = run_prompt(i2v_prompt({"class_type": "LightX2VLoadWanDiT", "inputs": {
        "model_name": DIT, "dtype": "fp32", "attention": "auto", "quantization": "auto"}}), outputs=["8"])
    native = run_prompt(i2v_prompt({"class_type": "UNETLoader", "inputs": {"unet_name": DIT, "weight_dtype": "default"}}),
                        outputs=["8"])
    latent, native_latent = ours.output("7")["samples"], native.output("7")["samples"]
    assert latent.shape == (1, 16, 3, 8, 8)
    assert ((latent - native_latent).norm() / native_latent.norm()).item() <= 1e-5
    frames, native_frames = ours.output("8"), native.output("8")
    assert frames.shape == (9, 64, 64, 3) and 0.0 <= frames.min() and frames.max() <= 1.0
    assert torch.allclose(frames, native_frames, atol=1e-5)
    # The start image reached the model: the concat latent is the encoded blue frame, not zeros.
    positive = ours.output("6", 0)
    assert positive[0][1]["concat_latent_image"].abs().mean() > 0
