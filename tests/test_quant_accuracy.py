"""Accuracy of W8A8 on the CPU reference path (the numbers the GPU kernels are checked against) vs bf16.

Weights carry outliers the way real DiT weights do: heavy tails (a Gaussian scale mixture, kurtosis ~30) and
a few output channels 20x larger. Full width = the 14B's 5120 x 5120 attention shape (the FFN shapes only
differ in size and take too long to generate on a CPU runner). Per-output-channel scales absorb the latter. Outliers along the *input*
dimension (in weight columns or in activation channels) hit every row's or token's scale instead; int8
W8A8 then drops to ~0.995 cosine (measured) while fp8 stays above 0.999, which is why fp8 is the default
where the GPU has it. Both cases are asserted below with their own thresholds.
"""

import pytest
import torch
import torch.nn.functional as F

from lightx2v_nodes.quant import QuantLinear, quantize_dit_
from lightx2v_nodes.wan import synthetic
from lightx2v_nodes.wan.model import WanDiT


def cosine(a, b):
    a, b = a.double().flatten(), b.double().flatten()
    return (a @ b / (a.norm() * b.norm())).item()


def outlier_linear(fan_in, fan_out, seed, input_outliers=False):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(fan_out, fan_in, generator=g) * torch.exp(0.75 * torch.randn(fan_out, fan_in, generator=g)) / fan_in ** 0.5
    w[torch.randperm(fan_out, generator=g)[:4]] *= 20
    if input_outliers:
        w[:, torch.randperm(fan_in, generator=g)[:4]] *= 20
    layer = torch.nn.Linear(fan_in, fan_out, dtype=torch.bfloat16)
    layer.weight.data.copy_(w)
    layer.bias.data.normal_(0, 0.02, generator=g)
    return layer


@pytest.mark.parametrize("fan_in, fan_out, tokens", [(256, 384, 77), (5120, 5120, 24)], ids=["tiny", "14B-attention"])
@pytest.mark.parametrize("fmt", ["fp8", "int8"])
def test_w8a8_layer_cosine(fan_in, fan_out, tokens, fmt):
    layer = outlier_linear(fan_in, fan_out, seed=fan_out)
    x = torch.randn(tokens, fan_in, generator=torch.Generator().manual_seed(1), dtype=torch.float32).bfloat16()
    reference = F.linear(x, layer.weight, layer.bias)
    quantized = QuantLinear.from_float(layer, fmt)
    out = quantized(x)
    assert out.dtype == torch.bfloat16 and out.shape == reference.shape
    assert cosine(out, reference) >= 0.998


@pytest.mark.parametrize("fmt, threshold", [("fp8", 0.998), ("int8", 0.99)])
def test_w8a8_input_channel_outliers(fmt, threshold):
    layer = outlier_linear(1024, 512, seed=5, input_outliers=True)
    x = torch.randn(64, 1024, generator=torch.Generator().manual_seed(2))
    x[:, :4] *= 20  # activation outlier channels too
    x = x.bfloat16()
    assert cosine(QuantLinear.from_float(layer, fmt)(x), F.linear(x, layer.weight, layer.bias)) >= threshold


def test_weight_only_is_dequantized_matmul():
    layer = outlier_linear(256, 128, seed=9)
    x = torch.randn(3, 5, 256).bfloat16()
    for fmt in ("fp8", "int8"):
        quantized = QuantLinear.from_float(layer, fmt, mode="weight_only")
        dense = (quantized.weight.float() * quantized.weight_scale).bfloat16()
        assert torch.equal(quantized(x), F.linear(x, dense, layer.bias))


def test_tiny_dit_forward_cosine():
    """Whole forward of a 4-block I2V DiT (all 12 block linears per block quantized) vs the same model in bf16."""
    cfg = synthetic.tiny_config("i2v", layers=4)
    state_dict = synthetic.random_state_dict(cfg, seed=4)

    def build():
        model = WanDiT(**cfg.unet_config(), dtype=torch.bfloat16)
        model.load_state_dict(state_dict)
        return model.eval()

    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 36, 2, 8, 8, generator=g).bfloat16()
    context = torch.randn(1, 12, 4096, generator=g).bfloat16()
    clip = torch.randn(1, 8, 1280, generator=g).bfloat16()
    t = torch.tensor([750.0])
    with torch.no_grad():
        reference = build()(x, t, context, clip_fea=clip)
        for fmt in ("fp8", "int8"):
            quantized = quantize_dit_(build(), fmt)
            assert sum(isinstance(m, QuantLinear) for m in quantized.modules()) == 4 * 12
            out = quantized(x, t, context, clip_fea=clip)
            assert torch.isfinite(out).all()
            assert cosine(out, reference) >= 0.995, fmt
