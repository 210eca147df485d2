"""The converter (CLI and pipeline; its node is tested in test_loader_workflow.py): every source layout, per-block output, LoRA merge, overwrite and bad input."""

import json
import os

import pytest
import torch

from lightx2v_nodes import convert as cli
from lightx2v_nodes.errors import LightX2VError
from lightx2v_nodes.lora.synthetic import make_lora, write_lora
from lightx2v_nodes.quant import is_block_linear, normalize_quantized, quantize_weight
from lightx2v_nodes.converter.pipeline import convert_checkpoint
from lightx2v_nodes.wan import synthetic
from lightx2v_nodes.wan.checkpoint import INDEX_NAME, load_wan_checkpoint

CFG = synthetic.tiny_config("i2v", layers=2)


@pytest.fixture(scope="module")
def float_sd():
    return synthetic.random_state_dict(CFG, seed=7)


def check_output(path, source_sd, fmt, source_dtype):
    loaded, cfg, _ = load_wan_checkpoint(path)
    assert cfg == CFG
    normalized, found = normalize_quantized(dict(loaded))
    assert found == fmt
    for key, value in source_sd.items():
        stored = value.to(source_dtype)
        if key.endswith(".weight") and is_block_linear(key[: -len(".weight")]):
            q, scale = quantize_weight(stored, fmt)
            assert torch.equal(loaded[key].view(torch.uint8), q.view(torch.uint8)), key
            assert torch.equal(loaded[key[:-7] + ".weight_scale"], scale), key
        else:
            assert loaded[key].dtype == torch.bfloat16 and torch.equal(loaded[key], stored.to(torch.bfloat16)), key


@pytest.mark.parametrize("layout, dtype, fmt", [("comfy", "fp16", "fp8"), ("diffusers", "bf16", "int8"), ("blocks", "bf16", "fp8"),
                                                ("pt", "fp32", "int8")])
def test_cli_converts_every_layout(tmp_path, float_sd, layout, dtype, fmt, capsys):
    source = synthetic.write_checkpoint(float_sd, str(tmp_path / ("src" if layout == "blocks" else f"src.{'pt' if layout == 'pt' else 'safetensors'}")), layout, dtype)
    out = str(tmp_path / "out.safetensors")
    assert cli.main([source, out, "--format", fmt]) == 0
    assert "verified" in capsys.readouterr().out
    check_output(out, float_sd, fmt, synthetic.DTYPES[dtype])


def test_save_by_block_layout(tmp_path, float_sd):
    source = synthetic.write_checkpoint(float_sd, str(tmp_path / "src.safetensors"), "original", "bf16")
    out = tmp_path / "blocks"
    report = convert_checkpoint(source, str(out), "int8", save_by_block=True)
    assert sorted(os.listdir(out)) == ["block_0.safetensors", "block_1.safetensors", INDEX_NAME, "non_block.safetensors"]
    index = json.loads((out / INDEX_NAME).read_text())
    assert index["weight_map"]["blocks.1.ffn.2.weight_scale"] == "block_1.safetensors"
    assert index["weight_map"]["head.head.weight"] == "non_block.safetensors"
    assert index["metadata"]["total_size"] == report.output_bytes
    assert set(index["weight_map"]) == set(load_wan_checkpoint(str(out))[0])
    check_output(str(out), float_sd, "int8", torch.bfloat16)


def test_lora_is_merged_before_quantizing(tmp_path, float_sd):
    source = synthetic.write_checkpoint(float_sd, str(tmp_path / "src.safetensors"), "comfy", "fp32")
    lora = make_lora(CFG, "alpha", rank=4, seed=1)
    lora_path = write_lora(lora, str(tmp_path / "lora.safetensors"))
    out = str(tmp_path / "out.safetensors")
    report = convert_checkpoint(source, out, "fp8", lora=lora_path, lora_strength=0.7)
    assert report.lora_patches == len([k for k in lora if k.endswith("lora_up.weight")])
    loaded = load_wan_checkpoint(out)[0]
    for module in ("blocks.0.self_attn.q", "blocks.1.cross_attn.k_img", "blocks.1.ffn.2"):
        up, down = lora[f"diffusion_model.{module}.lora_up.weight"], lora[f"diffusion_model.{module}.lora_down.weight"]
        scale = lora[f"diffusion_model.{module}.alpha"] / up.shape[1]
        q, s = quantize_weight(float_sd[module + ".weight"] + 0.7 * scale * (up @ down), "fp8")
        assert torch.equal(loaded[module + ".weight"].view(torch.uint8), q.view(torch.uint8)) and torch.equal(loaded[module + ".weight_scale"], s)
    merged_head = float_sd["head.head.weight"] + 0.7 * (lora["diffusion_model.head.head.alpha"] / 4) * (
        lora["diffusion_model.head.head.lora_up.weight"] @ lora["diffusion_model.head.head.lora_down.weight"])
    assert torch.equal(loaded["head.head.weight"], merged_head.bfloat16())


def test_refuses_to_overwrite_without_force(tmp_path, float_sd, capsys):
    source = synthetic.write_checkpoint(float_sd, str(tmp_path / "src.safetensors"), "original", "bf16")
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"precious")
    assert cli.main([source, str(out), "--format", "int8"]) == 2
    assert "already exists" in capsys.readouterr().err and out.read_bytes() == b"precious"
    assert cli.main([source, str(out), "--format", "int8", "--force"]) == 0
    assert load_wan_checkpoint(str(out))[1] == CFG
    folder = tmp_path / "not_a_model"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    with pytest.raises(LightX2VError, match="never replaced"):
        convert_checkpoint(source, str(folder), "fp8", save_by_block=True, force=True)
    assert (folder / "notes.txt").exists()


def test_bad_sources(tmp_path, float_sd, capsys):
    from safetensors.torch import save_file

    vae = str(tmp_path / "vae.safetensors")
    save_file({"decoder.0.weight": torch.zeros(4, 4), "decoder.22.bias": torch.zeros(3)}, vae)
    assert cli.main([vae, str(tmp_path / "out.safetensors"), "--format", "fp8"]) == 2
    err = capsys.readouterr().err
    assert "not a Wan2.1 DiT" in err and "VAE" in err
    quantized = str(tmp_path / "q.safetensors")
    convert_checkpoint(synthetic.write_checkpoint(float_sd, str(tmp_path / "src.safetensors"), "original", "bf16"), quantized, "fp8")
    with pytest.raises(LightX2VError, match="already quantized"):
        convert_checkpoint(quantized, str(tmp_path / "again.safetensors"), "int8")
    assert not os.path.exists(tmp_path / "again.safetensors")
    with pytest.raises(LightX2VError, match="must end in .safetensors"):
        convert_checkpoint(quantized, str(tmp_path / "model.bin"), "int8")
