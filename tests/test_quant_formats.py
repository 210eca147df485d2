"""Quantized weight formats: the formulas of LightX2V's converter (per-output-channel absmax scales), every file layout loading back to the same
tensors, bad files, QuantLinear's ComfyUI patch hooks, and the backend choice (incl. GPUs without fp8)."""

import logging

import pytest
import torch
from safetensors.torch import save_file

from harness import LogLines
from lightx2v_nodes.errors import LightX2VError
from lightx2v_nodes.quant import QuantLinear, apply_quantization, normalize_quantized, quantize_weight
from lightx2v_nodes.quant import backends
from lightx2v_nodes.quant.formats import is_block_linear
from lightx2v_nodes.quant.synthetic import quantized_checkpoint
from lightx2v_nodes.wan import synthetic
from lightx2v_nodes.wan.checkpoint import load_wan_checkpoint

CFG = synthetic.tiny_config("i2v", layers=2)


@pytest.fixture(scope="module")
def float_sd():
    return synthetic.random_state_dict(CFG, seed=3)


def heavy_tailed(rows, cols, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) / torch.rand(rows, cols, generator=g).clamp_min(0.05)
    w[0] = 0.0  # an all-zero row must not produce NaN scales
    return w


def fp8_nearest(values):
    """Round to the nearest finite float8_e4m3fn value by brute force over all 256 codes (independent of torch's cast)."""
    table = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(torch.float8_e4m3fn).float()
    table = table[torch.isfinite(table)].unique()
    return table[(values.reshape(-1, 1) - table).abs().argmin(dim=1)].reshape(values.shape)


def test_int8_formula():
    w = heavy_tailed(64, 300)
    q, scale = quantize_weight(w, "int8")
    assert q.dtype == torch.int8 and scale.dtype == torch.float32 and scale.shape == (64, 1)
    absmax = w.abs().amax(dim=1, keepdim=True)
    assert torch.equal(scale[1:], absmax[1:] / 127) and torch.isfinite(scale).all()
    scaled = w[1:] / scale[1:]
    assert torch.equal(q[1:].float(), torch.floor(scaled + 0.5).clamp(-128, 127))  # no exact .5 ties in random data
    assert torch.equal(q[0], torch.zeros_like(q[0]))
    assert (q[1:].abs().amax(dim=1) == 127).all()  # each row's absmax element lands on +-127


def test_fp8_formula_round_to_nearest():
    w = heavy_tailed(48, 200, seed=1)
    q, scale = quantize_weight(w, "fp8")
    assert q.dtype == torch.float8_e4m3fn and scale.shape == (48, 1)
    assert torch.equal(scale[1:], w.abs().amax(dim=1, keepdim=True)[1:] / 448)
    scaled = (w[1:] / scale[1:]).clamp(-448, 448)
    assert torch.equal(q[1:].float(), fp8_nearest(scaled))
    assert (q[1:].float().abs().amax(dim=1) == 448).all()


def test_only_block_linears_are_quantized(float_sd):
    quantized = quantized_checkpoint(float_sd, "lightx2v", "int8")
    eight_bit = {k[: -len(".weight")] for k, v in quantized.items() if v.dtype == torch.int8}
    expected = {"self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.q", "cross_attn.k",
                "cross_attn.v", "cross_attn.o", "cross_attn.k_img", "cross_attn.v_img", "ffn.0", "ffn.2"}
    assert eight_bit == {f"blocks.{i}.{m}" for i in range(CFG.num_layers) for m in expected}
    assert all(quantized[k + ".weight_scale"].shape == (quantized[k + ".weight"].shape[0], 1) for k in eight_bit)
    assert not is_block_linear("blocks.0.cross_attn.norm_k_img") and not is_block_linear("img_emb.proj.1")
    assert quantized["head.head.weight"].dtype == torch.float32 and quantized["blocks.0.modulation"].dtype == torch.float32


@pytest.mark.parametrize("layout, file_layout", [("lightx2v", "comfy"), ("lightx2v", "blocks"), ("comfy_scaled_fp8", "original"),
                                                 ("plain_fp8", "diffusion_model")])
def test_file_layouts_load_back_to_the_same_tensors(tmp_path, float_sd, layout, file_layout):
    fmt = "int8" if file_layout == "blocks" else "fp8"
    sd = quantized_checkpoint(float_sd, layout, fmt)
    if file_layout == "blocks":
        path = synthetic._write_block_directory({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "model"))
    else:
        prefix = {"comfy": "model.diffusion_model.", "diffusion_model": "diffusion_model.", "original": ""}[file_layout]
        path = str(tmp_path / "model.safetensors")
        save_file({(prefix + k if k != "scaled_fp8" else k): v.contiguous() for k, v in sd.items()}, path)
    loaded, cfg, _ = load_wan_checkpoint(path)
    assert cfg == CFG
    normalized, found = normalize_quantized(loaded)
    expected, _ = normalize_quantized(dict(sd))
    assert found == fmt and normalized.keys() == expected.keys()
    for key, value in expected.items():
        assert normalized[key].dtype == value.dtype and torch.equal(normalized[key].view(torch.uint8) if value.element_size() == 1
                                                                    else normalized[key], value.view(torch.uint8) if value.element_size() == 1 else value), key
    q = "blocks.1.ffn.0"
    if layout == "comfy_scaled_fp8":  # per-tensor scale broadcast to [out, 1]; non-block linears dequantized
        assert torch.equal(normalized[q + ".weight_scale"], sd[q + ".scale_weight"].expand(CFG.ffn_dim, 1))
        assert normalized["head.head.weight"].dtype == torch.bfloat16 and "scaled_fp8" not in normalized
    if layout == "plain_fp8":
        assert torch.equal(normalized[q + ".weight_scale"], torch.ones(CFG.ffn_dim, 1))


def test_missing_scale_and_broken_files(float_sd):
    sd = quantized_checkpoint(float_sd, "lightx2v", "int8")
    del sd["blocks.0.self_attn.o.weight_scale"]
    with pytest.raises(LightX2VError, match=r"blocks\.0\.self_attn\.o\.weight_scale.*Convert"):
        normalize_quantized(sd)
    no_scales = {k: v for k, v in quantized_checkpoint(float_sd, "lightx2v", "int8").items() if not k.endswith("_scale")}
    with pytest.raises(LightX2VError, match="int8 weights cannot be used without"):
        normalize_quantized(no_scales)
    comfy = quantized_checkpoint(float_sd, "comfy_scaled_fp8")
    del comfy["blocks.1.ffn.2.scale_weight"]
    with pytest.raises(LightX2VError, match="scale_weight"):
        normalize_quantized(comfy)


def test_apply_quantization_choices(float_sd):
    int8_file = quantized_checkpoint(float_sd, "lightx2v", "int8")
    sd, plan = apply_quantization(dict(float_sd), "auto")
    assert plan is None and sd["blocks.0.ffn.0.weight"].dtype == torch.float32
    sd, plan = apply_quantization(dict(int8_file), "auto")
    assert (plan.fmt, plan.mode, plan.source) == ("int8", "w8a8", "from the file")
    assert all(torch.equal(sd[k], v) for k, v in int8_file.items())
    mixed = dict(int8_file)  # one block linear left in float by the tool that wrote the file
    mixed["blocks.1.ffn.2.weight"] = float_sd["blocks.1.ffn.2.weight"]
    del mixed["blocks.1.ffn.2.weight_scale"]
    sd, plan = apply_quantization(mixed, "auto")
    assert torch.equal(sd["blocks.1.ffn.2.weight"], int8_file["blocks.1.ffn.2.weight"]) and plan.fmt == "int8"
    sd, plan = apply_quantization(dict(int8_file), "none", torch.float32)
    assert plan is None and "blocks.0.ffn.0.weight_scale" not in sd
    assert torch.allclose(sd["blocks.0.ffn.0.weight"], float_sd["blocks.0.ffn.0.weight"], rtol=0, atol=float_sd["blocks.0.ffn.0.weight"].abs().max() / 254)
    sd, plan = apply_quantization(dict(int8_file), "fp8-weight-only")
    assert (plan.fmt, plan.mode) == ("fp8", "weight_only") and sd["blocks.0.ffn.0.weight"].dtype == torch.float8_e4m3fn
    with pytest.raises(LightX2VError, match="Unknown quantization"):
        apply_quantization(dict(float_sd), "fp4")


def test_quant_linear_comfy_patch_hooks():
    torch.manual_seed(0)
    layer = QuantLinear.from_float(torch.nn.Linear(64, 32), "int8")
    q0, s0 = layer.weight, layer.weight_scale.clone()
    dense = layer.convert_weight(q0.float(), inplace=True)
    assert torch.equal(dense, q0.float() * s0)
    merged = dense + 0.5  # larger than the old range: needs fresh scales
    layer.set_weight(merged.clone())
    assert layer.weight is not q0 and torch.equal(layer.current_scale(), quantize_weight(merged, "int8")[1])
    assert torch.equal(layer.state_dict()["weight_scale"], layer.current_scale())
    layer.weight = q0  # what ComfyUI's unpatch does: the original tensor, hence the original scale
    assert torch.equal(layer.current_scale(), s0)
    kept = layer.set_weight(merged, return_weight=True)  # low-VRAM path: existing scales, values clamp
    assert kept.dtype == torch.int8 and kept.float().abs().max() <= 128


def test_backend_choice(monkeypatch):
    monkeypatch.delenv(backends.ENV_OVERRIDE, raising=False)
    assert backends.choose("fp8", "w8a8", "cpu") == ["reference"]
    assert backends.choose("int8", "weight_only", "cuda", (9, 0)) == ["weight_only"]
    # Measured on an H100 (backends.py docstring): our Triton kernels first at video-token counts, cuBLAS's
    # fp8 GEMM first for the few-token context projections, Triton for int8 at every size.
    monkeypatch.setattr(backends._kernels, "TRITON_AVAILABLE", True)
    assert backends.choose("fp8", "w8a8", "cuda", (9, 0)) == ["triton", "scaled_mm", "weight_only"]
    assert backends.choose("fp8", "w8a8", "cuda", (9, 0), few_tokens=True) == ["scaled_mm", "triton", "weight_only"]
    assert backends.choose("int8", "w8a8", "cuda", (8, 0)) == ["triton", "int_mm", "reference"]
    assert backends.choose("int8", "w8a8", "cuda", (8, 0), few_tokens=True)[0] == "triton"
    monkeypatch.setattr(backends._kernels, "TRITON_AVAILABLE", False)
    assert backends.choose("fp8", "w8a8", "cuda", (9, 0)) == ["scaled_mm", "weight_only"]
    assert backends.choose("int8", "w8a8", "cuda", (8, 0)) == ["int_mm", "reference"]
    records = LogLines(logging.WARNING)
    logging.getLogger("lightx2v_nodes").addHandler(records)
    try:
        assert backends.choose("fp8", "w8a8", "cuda", (8, 6)) == ["weight_only"]
    finally:
        logging.getLogger("lightx2v_nodes").removeHandler(records)
    text = "\n".join(records.lines)
    assert "compute capability >= 8.9" in text and "8.6" in text and "int8" in text
    monkeypatch.setenv(backends.ENV_OVERRIDE, "scaled_mm")
    with pytest.raises(LightX2VError, match="cannot run fp8 w8a8"):
        backends.choose("fp8", "w8a8", "cuda", (8, 0))
    monkeypatch.setenv(backends.ENV_OVERRIDE, "fast")
    with pytest.raises(LightX2VError, match="not a backend"):
        backends.choose("int8", "w8a8", "cpu")


def test_dispatch_logs_one_line_per_token_class(monkeypatch):
    monkeypatch.delenv(backends.ENV_OVERRIDE, raising=False)
    layer = QuantLinear.from_float(torch.nn.Linear(32, 16), "int8")
    records = LogLines(logging.WARNING)
    records.setLevel(logging.INFO)
    logger = logging.getLogger("lightx2v_nodes")
    level = logger.level
    logger.addHandler(records)
    logger.setLevel(logging.INFO)
    backends.dispatch.reset()
    try:
        for tokens in (2000, 1500, 512, 300, 2000):
            assert layer(torch.randn(tokens, 32)).shape == (tokens, 16)
    finally:
        logger.removeHandler(records)
        logger.setLevel(level)
        backends.dispatch.reset()
    lines = [line for line in records.lines if "int8 W8A8 linears" in line]
    assert len(lines) == 2, lines
    assert ">= 1024 tokens" in lines[0] and "< 1024 tokens" in lines[1] and "reference" in lines[0].lower()
