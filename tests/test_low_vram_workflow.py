"""The low-VRAM example workflow's chain on tiny random weights: 8-bit DiT -> distill LoRA as a side branch ->
offload (blocks streamed) -> 4-step sampler -> tiny VAE decode. Offload must not change a single value."""

import pytest
import torch

from harness import run_prompt
from lightx2v_nodes.lora.synthetic import make_lora, write_lora
from lightx2v_nodes.vae.synthetic import write_random_taehv
from lightx2v_nodes.wan import synthetic

DIT, LORA, TAEHV = "low_vram_tiny.safetensors", "low_vram_distill_lora.safetensors", "low_vram_taew2_1.safetensors"


@pytest.fixture(scope="module")
def files(models_dir):
    cfg = synthetic.tiny_config("t2v", layers=3)
    synthetic.write_checkpoint(synthetic.random_state_dict(cfg, seed=31), str(models_dir / "diffusion_models" / DIT), "comfy", "bf16")
    write_lora(make_lora(cfg, "lightx2v", rank=8, seed=3), str(models_dir / "loras" / LORA))
    write_random_taehv(str(models_dir / "vae_approx" / TAEHV), latent_channels=16, dtype="fp32", seed=5)


def chain_prompt(offload: bool):
    prompt = {
        "1": {"class_type": "LightX2VLoadWanDiT", "inputs": {"model_name": DIT, "dtype": "fp32", "attention": "auto",
                                                             "quantization": "int8"}},
        "2": {"class_type": "LightX2VApplyLoRA", "inputs": {"model": ["1", 0], "lora_name": LORA, "strength": 1.0,
                                                            "mode": "side-branch"}},
        "3": {"class_type": "LightX2VSyntheticConditioning", "inputs": {"seed": 1, "tokens": 12, "dim": 4096}},
        "4": {"class_type": "EmptyHunyuanLatentVideo", "inputs": {"width": 64, "height": 64, "length": 9, "batch_size": 1}},
        "5": {"class_type": "LightX2VFourStepSampler", "inputs": {
            "model": ["6", 0] if offload else ["2", 0], "positive": ["3", 0], "latent_image": ["4", 0], "seed": 9,
            "denoising_step_list": "1000,750,500,250", "shift": 5.0, "cfg": 1.0, "mode": "deterministic"}},
        "7": {"class_type": "LightX2VLoadTinyVAE", "inputs": {"vae_name": TAEHV, "dtype": "fp32", "decode_mode": "chunked"}},
        "8": {"class_type": "LightX2VTinyVAEDecode", "inputs": {"samples": ["5", 0], "vae": ["7", 0], "decode_mode": "as loaded"}},
    }
    if offload:
        prompt["6"] = {"class_type": "LightX2VOffload", "inputs": {"model": ["2", 0], "mode": "block", "vram_budget_gb": 0.0,
                                                                   "resident_blocks": 0, "prefetch": 1}}
    return prompt


def test_low_vram_chain_equals_resident(comfy_nodes, files):
    streamed = run_prompt(chain_prompt(offload=True), outputs=["8"])
    resident = run_prompt(chain_prompt(offload=False), outputs=["8"])
    frames = streamed.output("8")
    assert frames.shape == (9, 64, 64, 3) and torch.isfinite(frames).all()
    assert torch.equal(streamed.output("5")["samples"], resident.output("5")["samples"])
    assert torch.equal(frames, resident.output("8"))
