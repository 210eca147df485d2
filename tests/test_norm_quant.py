"""LayerNorm (+ modulation) fused with the 8-bit quantization of the block linears' inputs (kernels/norm_quant.py,
wan/norm_quant.py) and its integration.

- The PyTorch reference is the module ops then quantize_per_token_reference (torch's nn.LayerNorm and ComfyUI's,
  torch.addcmul), checked on the CPU against those module calls.
- When the fused path applies: CUDA 16-bit only; plain or affine LayerNorms without ComfyUI weight patches; only W8A8
  QuantLinears of one format multiplying quantized inputs, none with hooks (a LoRA side branch); modulation in x's dtype.
- The Triton kernel vs the reference in Triton's CPU interpreter (bf16 and fp16; fp8 and int8; plain, affine,
  modulated with batch 2 and a shared batch-1 modulation; a strided token slice; widths that are and are not a sum
  of two powers of 2; programs with rows past the end): equal bit for bit there (the interpreter adds the sums in the reference's order).
  A whole tiny DiT with fp8 and int8 linears, fused path forced on (whole sequence, token-chunked, torch.compile'd
  with aot_eager) vs the unfused forward: relative error <= 1e-2 (the bf16 bound of the other model tests; measured
  0), and the fused kernel runs 3 times per block.
GPU tests (skipped without CUDA) repeat the kernel checks at full width (5,120 and 1,536 x 32,760 tokens), where the
sums' order may move a 16-bit value by one ulp: see assert_close_8bit.
"""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from kernel_checks import layer_norm_inputs as inputs
from triton_interpreter import run_in_triton_interpreter
from lightx2v_nodes.quant import QuantLinear
from lightx2v_nodes.kernel_loader import load_kernels
from lightx2v_nodes.quant.linear import QuantizedActivation
from lightx2v_nodes.wan import norm_quant

kernels = load_kernels()
QDTYPES = [torch.float8_e4m3fn, torch.int8]


@pytest.mark.parametrize("qdtype", QDTYPES)
def test_reference_is_the_module_ops(qdtype):
    import comfy.ops

    x, weight, bias, mod = inputs(2, 9, 96, torch.bfloat16)
    for ops in (torch.nn, comfy.ops.disable_weight_init):
        plain = ops.LayerNorm(96, eps=1e-6, elementwise_affine=False, dtype=torch.bfloat16)
        affine = ops.LayerNorm(96, eps=1e-6, elementwise_affine=True, dtype=torch.bfloat16)
        affine.weight.data.copy_(weight)
        affine.bias.data.copy_(bias)
        with torch.no_grad():
            modulated = torch.addcmul(mod[:, 0:1], plain(x), 1 + mod[:, 1:2]).reshape(-1, 96)
            normed = affine(x).reshape(-1, 96)
        for got, want in ((kernels.layer_norm_quantize_reference(x, qdtype, 1e-6, shift=mod[:, 0:1], scale=mod[:, 1:2]),
                           kernels.quantize_per_token_reference(modulated, qdtype)),
                          (kernels.layer_norm_quantize_reference(x, qdtype, 1e-6, weight, bias),
                           kernels.quantize_per_token_reference(normed, qdtype))):
            assert torch.equal(got[0].float(), want[0].float()) and torch.equal(got[1], want[1]), ops


def fp8_linears(count, dim=64):
    torch.manual_seed(0)
    return [QuantLinear.from_float(nn.Linear(dim, dim).bfloat16(), "fp8") for _ in range(count)]


def test_applies_only_where_it_can_stand_in(monkeypatch):
    import comfy.ops

    x = torch.zeros(1, 4, 64, dtype=torch.bfloat16)
    plain = nn.LayerNorm(64, eps=1e-6, elementwise_affine=False, dtype=torch.bfloat16)
    linears = fp8_linears(3)
    assert not norm_quant.applies(plain, x, linears)  # the CPU keeps the module ops
    monkeypatch.setattr(norm_quant, "_runs_here", lambda t: True)
    assert norm_quant.applies(plain, x, linears)
    assert norm_quant.applies(nn.LayerNorm(64, eps=1e-6, dtype=torch.bfloat16), x, linears)  # affine, x's dtype
    assert not norm_quant.applies(nn.LayerNorm(64, eps=1e-6), x, linears)  # affine weight in float32
    assert not norm_quant.applies(nn.RMSNorm(64, eps=1e-6, dtype=torch.bfloat16), x, linears)
    assert not norm_quant.applies(plain, x, linears + [nn.Linear(64, 64)])  # a 16-bit linear among them
    int8 = QuantLinear.from_float(nn.Linear(64, 64).bfloat16(), "int8")
    assert not norm_quant.applies(plain, x, linears + [int8])  # two formats
    weight_only = QuantLinear.from_float(nn.Linear(64, 64).bfloat16(), "fp8", mode="weight_only")
    assert not norm_quant.applies(plain, x, [weight_only])
    handle = linears[1].register_forward_hook(lambda module, args, out: None)
    assert not norm_quant.applies(plain, x, linears)
    handle.remove()
    container = nn.Sequential(*linears)
    handle = container.register_forward_pre_hook(lambda module, args: None)
    assert not norm_quant.applies(plain, x, linears, containers=(container,))
    handle.remove()
    comfy_norm = comfy.ops.disable_weight_init.LayerNorm(64, eps=1e-6, dtype=torch.bfloat16)
    assert norm_quant.applies(comfy_norm, x, linears)
    comfy_norm.weight_function = [lambda w: w * 2]  # a ComfyUI weight patch (the class attribute is a shared [])
    assert not norm_quant.applies(comfy_norm, x, linears)
    assert not norm_quant.applies(comfy.ops.manual_cast.LayerNorm(64, eps=1e-6, dtype=torch.bfloat16, device="meta"),
                                  x, linears)
    mod = torch.zeros(1, 6, 64)  # float32 modulation: the module ops would give a float32 input
    assert not isinstance(norm_quant.modulated(plain, x, mod[:, 0:1], mod[:, 1:2], linears), QuantizedActivation)


@pytest.mark.parametrize("fmt", ["fp8", "int8"])
def test_prequantized_input_is_the_layers_own_quantization(fmt):
    """QuantLinear(QuantizedActivation of y) == QuantLinear(y) when the activation is quantize_per_token(y)."""
    torch.manual_seed(0)
    layer = QuantLinear.from_float(nn.Linear(64, 48).bfloat16(), fmt)
    y = torch.randn(2, 7, 64).bfloat16()
    values, scales = kernels.quantize_per_token_reference(y.reshape(-1, 64), layer.weight.dtype)
    got = layer(QuantizedActivation(values, scales, y.shape, y.dtype))
    assert got.shape == (2, 7, 48) and torch.equal(got, layer(y))
    other = kernels.quantize_per_token_reference(y.reshape(-1, 64), torch.int8 if fmt == "fp8" else torch.float8_e4m3fn)
    with pytest.raises(ValueError, match="cannot feed"):
        layer(QuantizedActivation(*other, y.shape, y.dtype))


def test_kernel_in_triton_interpreter():
    run_in_triton_interpreter("check_layer_norm_quantize")


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def assert_close_8bit(got, want):
    """Dequantized values within one 8-bit step of the value plus 2^-7 of the row's absmax, in at most 1% of the
    elements; scales within one bf16 ulp (2^-7). A 16-bit norm output one ulp off moves the modulated value by up to
    2^-8 of the norm's magnitude, which near a cancelling shift is many 8-bit steps of a small result."""
    values, want_values = got[0].float() * got[1], want[0].float() * want[1]
    absmax = want_values.abs().amax(dim=1, keepdim=True)
    if want[0].dtype == torch.float8_e4m3fn:  # one e4m3 step around the value: 2^(exponent - 3), subnormals 2^-9
        step = torch.exp2(torch.floor(torch.log2(want[0].float().abs().clamp_min(2.0 ** -6))) - 3) * want[1]
    else:
        step = want[1].expand_as(want_values)
    diff = (values - want_values).abs()
    assert (diff <= step + absmax * 2.0 ** -7).all(), (diff - step - absmax * 2.0 ** -7).max().item()
    assert (got[0].float() != want[0].float()).float().mean().item() <= 1e-2
    assert ((got[1] - want[1]).abs() <= want[1] * 2.0 ** -7).all()


@requires_cuda
@pytest.mark.parametrize("dim", [5120, 1536])
@pytest.mark.parametrize("qdtype", QDTYPES)
def test_kernel_at_full_width_on_gpu(dim, qdtype):
    pytest.importorskip("triton")
    x, weight, bias, mod = inputs(2, 16380, dim, torch.bfloat16, device="cuda")  # 32,760 tokens in two batches
    for kw in ({}, dict(weight=weight, bias=bias), dict(shift=mod[:, 0:1], scale=mod[:, 1:2])):
        want = kernels.layer_norm_quantize_reference(x, qdtype, 1e-6, **kw)
        assert_close_8bit(kernels.layer_norm_quantize(x, qdtype, 1e-6, **kw), want)
