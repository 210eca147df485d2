"""The 8-bit attention kernel (kernels/attention_8bit.py) and the `lightx2v-int8` backend.

Three layers of checks:
- The PyTorch reference of the kernel's algorithm vs exact float32 attention, on inputs shaped like a trained
  DiT's (bench/attention.py's `wan_like`: K with a large shared per-channel bias; "outliers" adds 4 channels
  at 10x in Q and K). Bounds: cosine >= 0.995, relative error <= 5e-2 (with outliers 3.6e-2 at 1,024
  tokens on the CPU and 3.7e-2 at 32,760 on the H200 since Q and K are Hadamard-rotated in 16-channel blocks,
  4.8-5.2e-2 before; sageattention 1.0.6 gives 5.2-6.1e-2 on the same inputs; without outliers 3.7-3.8e-2, fp8
  P.V's own error); finite outputs at magnitudes 1e3.
- The Triton kernels vs that reference in Triton's interpreter (kernel_checks.check_attention8; CPU, subprocess:
  TRITON_INTERPRET must be set before triton is imported). Quantization is bit-exact; the tensor-descriptor
  (Hopper) kernel equals the pointer-load one. Attention within 5e-3 relative: the kernel folds the score offset
  into one fused multiply-add (rounding ~1e-4 of a score unit) and a few P values then round to the neighbouring
  fp8 value. Odd lengths (masked key tails), Lq != Lk, batch 2, head dims 64/128.
- A whole tiny DiT forward with every attention call through the kernel: cosine >= 0.99 vs SDPA.
GPU tests (skipped without CUDA) repeat the accuracy bounds at 1k, 8k and 32,760 tokens x 40 heads, and check both
kernels against the reference on Hopper.
"""

import os
import sys

import pytest
import torch

from triton_interpreter import ROOT, run_in_triton_interpreter

sys.path.append(os.path.join(ROOT, "bench"))  # after everything else: its module names are generic

from attention import compare, exact_attention, wan_like  # noqa: E402

from lightx2v_nodes.kernel_loader import load_kernels  # noqa: E402

kernels = load_kernels()
REL_ERR_BOUND = 5e-2


def wan_inputs(kind, tokens, heads, head_dim, device, seed=0, keys=None):
    gen = torch.Generator(device=device).manual_seed(seed)
    q = wan_like(1, tokens, heads, head_dim, device, gen)
    k = wan_like(1, keys or tokens, heads, head_dim, device, gen, bias=8.0)
    v = wan_like(1, keys or tokens, heads, head_dim, device, gen)
    if kind == "bias":  # no outlier channels
        q, k = (t.float() for t in (q, k))
        q[..., :4] /= 10.0
        k[..., :4] /= 10.0
        q, k = q.bfloat16(), k.bfloat16()
    return q, k, v


def magnified(tensors, magnitude=1e3):
    return [t.float().mul(magnitude / t.float().abs().amax()).to(t.dtype) for t in tensors]


@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("kind", ["bias", "outliers"])
def test_reference_algorithm_accuracy(kind, head_dim):
    q, k, v = wan_inputs(kind, 1024, 2, head_dim, "cpu")
    result = compare(kernels.attention8_reference(q, k, v), exact_attention(q, k, v))
    assert result["cosine"] >= 0.995 and result["rel_err"] <= REL_ERR_BOUND, result
    big = magnified((q, k, v))
    assert torch.isfinite(kernels.attention8_reference(*big)).all()


@pytest.mark.parametrize("block", [2, 16, 128])
def test_hadamard_reference_is_the_block_diagonal_sylvester_matrix(block):
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < block:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    x = torch.randn(5, 128, dtype=torch.float64)
    want = x @ torch.block_diag(*[h] * (128 // block))
    assert torch.allclose(kernels.hadamard.hadamard_reference(x, block), want, rtol=0, atol=1e-12)
    # Orthogonal up to the factor block: scores scale by exactly that factor, which Q's scales undo.
    y = torch.randn(7, 128, dtype=torch.float64)
    rotated = kernels.hadamard.hadamard_reference(x, block) @ kernels.hadamard.hadamard_reference(y, block).T
    assert torch.allclose(rotated, block * (x @ y.T), rtol=1e-12, atol=1e-9)


def test_k_smoothing_does_not_change_softmax():
    """Subtracting K's token mean shifts every score of a query row equally: exact attention is unchanged."""
    q, k, v = (t.double().transpose(1, 2) for t in wan_inputs("outliers", 300, 2, 64, "cpu"))
    smoothed = k - k.mean(dim=2, keepdim=True)
    def attend(keys):
        return torch.softmax(q @ keys.transpose(-1, -2) / 8.0, dim=-1) @ v
    assert torch.allclose(attend(smoothed), attend(k), rtol=1e-9, atol=1e-12)


def test_kernel_in_triton_interpreter():
    run_in_triton_interpreter("check_attention8")


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _require_fp8_gpu():
    pytest.importorskip("triton")
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("fp8 tensor-core dot needs compute capability >= 8.9")


@requires_cuda
def test_kernel_matches_reference_on_gpu():
    _require_fp8_gpu()
    for lq, lk, d in [(70, 45, 64), (333, 1000, 128), (1000, 257, 128)]:
        q, k, v = wan_inputs("outliers", lq, 3, d, "cuda", keys=lk)
        quantized = kernels.quantize_qkv(q, k, v)
        names = ("q8", "q_scale", "k8", "k_scale", "v8t", "v_scale")
        for name, got, want in zip(names, quantized, kernels.quantize_qkv_reference(q, k, v)):
            differ = (got.float() != want.float()).sum().item()
            assert differ == 0, f"{name}: {differ} of {got.numel()} differ ({lq}x{lk}x{d})"
        for tiles in [(64, 128, 4, 3), (64, 128, 4, 2), (128, 64, 4, 3)]:
            ref = kernels.attention8_reference(q, k, v, block_n=tiles[1], quantized=quantized).float()
            for tma in (False, True) if kernels.attention_8bit.use_tma(q.device) else (False,):
                out = kernels.attention8(q, k, v, quantized=quantized, tiles=tiles, tma=tma).float()
                assert ((out - ref).norm() / ref.norm()).item() <= 5e-3, (lq, lk, d, tiles, tma)


@requires_cuda
@pytest.mark.parametrize("tokens", [1024, 8192, 32760])
@pytest.mark.parametrize("kind", ["bias", "outliers"])
def test_accuracy_at_wan_shapes_on_gpu(kind, tokens):
    _require_fp8_gpu()
    q, k, v = wan_inputs(kind, tokens, 40, 128, "cuda")
    result = compare(kernels.attention8(q, k, v), exact_attention(q, k, v))
    assert result["cosine"] >= 0.995 and result["rel_err"] <= REL_ERR_BOUND, result
    assert torch.isfinite(kernels.attention8(*magnified((q, k, v)))).all()

