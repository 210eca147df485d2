"""Our loader inside real ComfyUI: API prompts with native nodes, equivalence with native UNETLoader, the attention
backend it logs, and the converter node's output loading back."""

import logging

import pytest
import torch

from harness import run_prompt, tiny_t2v_prompt as t2v_prompt
from lightx2v_nodes.wan import synthetic
from lightx2v_nodes.wan.attention import choose_attention


def test_t2v_prompt_ours_equals_native(comfy_nodes, tiny_t2v, native_unet_fp32):
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


def load_logged(comfy_nodes, caplog, name, dtype, attention_choice):
    """(the loaded DiT, the loader's one log line)"""
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="lightx2v_nodes"):
        model = comfy_nodes["LightX2VLoadWanDiT"]().execute(model_name=name, dtype=dtype, attention=attention_choice)[0]
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("LightX2V: loaded")]
    assert len(lines) == 1, lines  # logged once
    return model.model.diffusion_model, lines[0]


def test_loader_log_names_the_attention_backend_that_runs(comfy_nodes, caplog, tiny_t2v):
    pytest.importorskip("triton")
    import comfy.model_management

    device = comfy.model_management.get_torch_device()
    dit, line = load_logged(comfy_nodes, caplog, tiny_t2v, "bf16", "lightx2v-int8")
    want = choose_attention("lightx2v-int8", device, torch.bfloat16)
    assert dit.attention.name == want.name and f"attention {want.description}," in line
    if device.type == "cpu":
        assert "attention sdpa instead of the requested lightx2v-int8" in line
    assert all(block.self_attn.attend is dit.attention.call for block in dit.blocks)

    dit, line = load_logged(comfy_nodes, caplog, tiny_t2v, "fp32", "auto")
    assert dit.attention.name == "sdpa" and "attention sdpa (auto: exact attention for fp32 compute)," in line


def test_loader_refuses_an_unknown_attention_backend_before_reading_the_file(comfy_nodes, models_dir):
    from harness import raises_lightx2v_error

    (models_dir / "diffusion_models" / "test_attention_choice_unread.safetensors").write_bytes(b"not read")
    with raises_lightx2v_error("unknown attention 'xformers-magic': choose one of auto, "):
        comfy_nodes["LightX2VLoadWanDiT"]().execute(model_name="test_attention_choice_unread.safetensors",
                                                    dtype="auto", attention="xformers-magic")


def test_convert_node_then_load(comfy_nodes, models_dir):
    float_sd = synthetic.random_state_dict(synthetic.tiny_config("i2v", layers=2), seed=7)
    synthetic.write_checkpoint(float_sd, str(models_dir / "diffusion_models" / "convert_src.safetensors"), "comfy", "bf16")
    node = {"class_type": "LightX2VConvertWanDiT", "inputs": {
        "model_name": "convert_src.safetensors", "format": "int8", "output_name": "", "lora_name": "none",
        "lora_strength": 1.0, "save_by_block": False, "overwrite": False}}
    result = run_prompt({"1": node})
    name = result.output("1")
    assert name == "convert_src_int8_lightx2v.safetensors"
    assert (models_dir / "diffusion_models" / name).is_file()
    again = run_prompt({"1": node}, expect_error=True)
    assert "already exists" in again.error()["exception_message"]
    loaded = run_prompt({"2": {"class_type": "LightX2VLoadWanDiT", "inputs": {
        "model_name": name, "dtype": "fp32", "attention": "auto", "quantization": "auto"}}}, outputs=["2"])
    dit = loaded.output("2").model.diffusion_model
    assert dit.quant_plan.fmt == "int8" and dit.blocks[1].cross_attn.v_img.weight.dtype == torch.int8
