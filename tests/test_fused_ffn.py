"""The FFN's GELU fused into the 8-bit activation quantization of its second linear (model.feed_forward).

CPU checks (the reference backend; the Triton kernel itself is checked in tests/test_kernels.py):
- the fused path computes exactly scaled_gemm(quantize(GELU_fp32(ffn.0(x)))), bit for bit;
- it differs from the unfused ffn(x) only by the bf16 rounding of the GELU output that it skips, which moves a
  few values by one 8-bit step: relative error <= 2e-2 (fp8, 3 mantissa bits) / 1e-2 (int8) on random inputs;
- hooks on the FFN's modules (a LoRA side branch is one) keep the plain call, so they run;
- fuse_gelu=False keeps the plain call.
"""

import pytest
import torch
import torch.nn as nn

from lightx2v_nodes.quant import QuantLinear
from lightx2v_nodes.kernel_loader import load_kernels
from lightx2v_nodes.wan.model import feed_forward

kernels = load_kernels()


def quantized_ffn(fmt, dim=64, hidden=200):
    torch.manual_seed(0)
    ffn = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim)).bfloat16()
    ffn[0] = QuantLinear.from_float(ffn[0], fmt)
    ffn[2] = QuantLinear.from_float(ffn[2], fmt)
    return ffn


def rel_err(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.parametrize("fmt,bound", [("fp8", 2e-2), ("int8", 1e-2)])
def test_fused_gelu_is_the_reference_composition(fmt, bound):
    ffn = quantized_ffn(fmt)
    x = torch.randn(2, 37, 64).bfloat16()
    got = feed_forward(ffn, x)
    second = ffn[2]
    hidden = ffn[0](x).reshape(-1, 200)
    xq, sx = kernels.gelu_quantize_per_token_reference(hidden, second.weight.dtype)
    want = kernels.scaled_gemm_reference(xq, sx, second.weight, second.weight_scale, second.bias, out_dtype=x.dtype)
    assert torch.equal(got, want.reshape(2, 37, 64))
    plain = ffn(x)
    assert not torch.equal(got, plain)  # the skipped bf16 rounding of the GELU output shows
    assert rel_err(got, plain) <= bound


def test_hooks_keep_the_plain_call():
    ffn = quantized_ffn("fp8")
    x = torch.randn(1, 20, 64).bfloat16()
    seen = []
    handle = ffn[2].register_forward_hook(lambda module, args, out: seen.append(args[0].shape))
    assert torch.equal(feed_forward(ffn, x), ffn(x)) and len(seen) == 2
    handle.remove()
    handle = ffn.register_forward_pre_hook(lambda module, args: seen.append("ffn"))
    assert torch.equal(feed_forward(ffn, x), ffn(x)) and seen[-2:] == ["ffn", "ffn"]
    handle.remove()
    assert not torch.equal(feed_forward(ffn, x), ffn(x))


def test_switch_and_float_layers_keep_the_plain_call():
    ffn = quantized_ffn("int8")
    x = torch.randn(1, 20, 64).bfloat16()
    assert torch.equal(feed_forward(ffn, x, fuse_gelu=False), ffn(x))
    assert not torch.equal(feed_forward(ffn, x), ffn(x))
    float_ffn = nn.Sequential(nn.Linear(64, 200), nn.GELU(approximate="tanh"), nn.Linear(200, 64))
    x = torch.randn(1, 20, 64)
    assert torch.equal(feed_forward(float_ffn, x), float_ffn(x))
