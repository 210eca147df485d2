"""Our loader inside real ComfyUI: API prompts with native nodes, equivalence with native UNETLoader."""

import pytest
import torch

from harness import run_prompt, tiny_t2v_prompt as t2v_prompt
from lightx2v_nodes.wan import synthetic


@pytest.fixture(scope="module")
def tiny_t2v(models_dir):
    cfg = synthetic.tiny_config("t2v")
    name = "test_tiny_t2v_fp32.safetensors"
    synthetic.write_checkpoint(synthetic.random_state_dict(cfg, seed=1), str(models_dir / "diffusion_models" / name), "comfy", "fp32")
    return name


def test_t2v_prompt_ours_equals_native(comfy_nodes, tiny_t2v):
    ours = run_prompt(t2v_prompt({"class_type": "LightX2VLoadWanDiT",
                                  "inputs": {"model_name": tiny_t2v, "dtype": "fp32", "attention": "auto"}}), outputs=["5"])
    native = run_prompt(t2v_prompt({"class_type": "UNETLoader",
                                    "inputs": {"unet_name": tiny_t2v, "weight_dtype": "default"}}), outputs=["5"])
    assert type(ours.output("1").model.diffusion_model).__name__ == "ComfyWanDiT"
    assert type(native.output("1").model.diffusion_model).__name__ == "WanModel"
    a, b = ours.output("5")["samples"], native.output("5")["samples"]
    assert a.shape == b.shape == (1, 16, 2, 4, 4)
    assert torch.isfinite(a).all()
    rel = ((a - b).norm() / b.norm()).item()
    assert rel <= 1e-5, rel


def test_bad_file_error_reaches_the_ui(comfy_nodes, models_dir):
    from safetensors.torch import save_file

    name = "test_not_wan.safetensors"
    save_file({"decoder.22.bias": torch.zeros(3)}, str(models_dir / "diffusion_models" / name))
    run = run_prompt(t2v_prompt({"class_type": "LightX2VLoadWanDiT",
                                 "inputs": {"model_name": name, "dtype": "auto", "attention": "auto"}}),
                     outputs=["5"], expect_error=True)
    err = run.error()
    assert err["node_id"] == "1" and err["exception_type"].endswith("LightX2VError")
    assert "not a Wan2.1 DiT" in err["exception_message"] and "VAE" in err["exception_message"]
