"""Fused RMSNorm + RoPE of the self-attention q/k (kernels/norm_rope.py, wan/norm_rope.py) and its integration.

- The PyTorch reference equals the model's unfused ops bit for bit on the CPU (torch's nn.RMSNorm and ComfyUI's
  RMSNorm, then model.apply_rope), in bf16, fp16 and fp32; its int8-Q mode equals quantize_qkv_reference's Q
  part; its column sums give K's smoothing mean (float32, 1e-6 relative).
- When the fused path applies: CUDA 16-bit only, never with ComfyUI weight patches or a weight ComfyUI would cast.
- The Triton kernel vs the reference in Triton's CPU interpreter (tiny shapes: 3 x 64 and 5 x 128 heads, odd token
  counts, batch 2): 16-bit outputs differ by at most one rounding (of each rotated pair's norm) in at most 1% of
  the elements (the sum of squares is added in another order; measured: none in bf16, 1-2 elements in fp16),
  fp32 within 1e-6 relative. The int8-Q
  mode equals the kernel's 16-bit output through quantize_qkv bit for bit; the K output of the column-sum mode is
  the 16-bit mode's exactly. A whole tiny bf16 DiT forward with the fused path forced on (whole sequence,
  token-chunked, torch.compile'd with aot_eager, and lightx2v-int8's `from_projections`) vs the unfused forward:
  relative error <= 1e-2 (the bf16 bound of the other model tests; measured 0).
GPU tests (skipped without CUDA) repeat the kernel checks at full width (5120 = 40 x 128 and 1536 = 12 x 128,
32,760 tokens) and the 8-bit self-attention from projections vs the unfused 8-bit path.
"""

import pytest
import torch
import torch.nn.functional as F

from kernel_checks import assert_close_16bit, projection_inputs as inputs
from triton_interpreter import run_in_triton_interpreter
from lightx2v_nodes.kernel_loader import load_kernels
from lightx2v_nodes.wan import norm_rope
from lightx2v_nodes.wan.model import apply_rope

kernels = load_kernels()
DTYPES = [torch.bfloat16, torch.float16, torch.float32]


def unfused(x, norm, rotations, heads):
    return apply_rope(norm(x).unflatten(-1, (heads, -1)), rotations)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads,head_dim", [(12, 128), (3, 64)])
def test_reference_equals_model_ops(dtype, heads, head_dim):
    import comfy.ops

    x, weight, rotations = inputs(2, (3, 4, 5), heads, head_dim, dtype)
    want = kernels.rms_norm_rope_reference(x, weight, rotations, heads, 1e-6)
    for ops in (torch.nn, comfy.ops.disable_weight_init):
        norm = ops.RMSNorm(heads * head_dim, eps=1e-6, elementwise_affine=True, dtype=dtype)
        norm.weight.data.copy_(weight)
        with torch.no_grad():
            got = unfused(x, norm, rotations, heads)
        assert got.dtype == want.dtype and torch.equal(got, want), (ops, (got != want).sum().item())


def test_reference_modes_equal_the_attention_quantization():
    x, weight, rotations = inputs(2, (1, 5, 7), 3, 64, torch.bfloat16)  # 35 tokens: padded to 128
    k = kernels.rms_norm_rope_reference(x, weight, rotations, 3, 1e-6)
    q8, qs = kernels.rms_norm_rope_int8_reference(x, weight, rotations, 3, 1e-6)
    want = kernels.quantize_qkv_reference(k, k, k)
    assert torch.equal(q8, want[0]) and torch.equal(qs, want[1])
    k2, sums = kernels.rms_norm_rope_column_sums_reference(x, weight, rotations, 3, 1e-6, block=16)
    assert torch.equal(k2, k) and sums.shape == (2, 3, 3, 64)
    mean = sums.sum(dim=2) / k.shape[1]
    assert torch.allclose(mean, k.mean(dim=1, dtype=torch.float32), rtol=1e-6, atol=1e-6)


def test_applies_only_to_plain_16bit_cuda_norms(monkeypatch):
    import comfy.ops

    x = torch.zeros(1, 4, 256, dtype=torch.bfloat16)
    plain = torch.nn.RMSNorm(256, eps=1e-6, dtype=torch.bfloat16)
    assert not norm_rope.applies(x, plain, 2)  # the CPU keeps the unfused ops
    monkeypatch.setattr(norm_rope, "_runs_here", lambda t: True)
    assert norm_rope.applies(x, plain, 2)
    assert not norm_rope.applies(x.float(), plain, 2)  # weight dtype != x dtype
    assert not norm_rope.applies(torch.zeros(1, 4, 258, dtype=torch.bfloat16),
                                 torch.nn.RMSNorm(258, eps=1e-6, dtype=torch.bfloat16), 2)  # odd head dim
    assert not norm_rope.applies(x, torch.nn.RMSNorm(256, eps=None, dtype=torch.bfloat16), 2)
    comfy_norm = comfy.ops.disable_weight_init.RMSNorm(256, eps=1e-6, dtype=torch.bfloat16)
    assert norm_rope.applies(x, comfy_norm, 2)
    comfy_norm.weight_function = [lambda w: w * 2]  # a ComfyUI weight patch (the class attribute is a shared [])
    assert not norm_rope.applies(x, comfy_norm, 2)
    # ComfyUI's casting ops: fused only where the cast would hand back the weight itself (same dtype and device)
    assert norm_rope.applies(x, comfy.ops.manual_cast.RMSNorm(256, eps=1e-6, dtype=torch.bfloat16), 2)
    assert not norm_rope.applies(x, comfy.ops.manual_cast.RMSNorm(256, eps=1e-6, dtype=torch.float32), 2)
    assert not norm_rope.applies(x, comfy.ops.manual_cast.RMSNorm(256, eps=1e-6, dtype=torch.bfloat16, device="meta"), 2)


def test_kernel_in_triton_interpreter():
    run_in_triton_interpreter("check_rms_norm_rope")


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@requires_cuda
@pytest.mark.parametrize("heads", [40, 12])
def test_kernel_at_full_width_on_gpu(heads):
    pytest.importorskip("triton")
    x, weight, rotations = inputs(1, (21, 30, 52), heads, 128, torch.bfloat16, device="cuda")  # 32,760 tokens
    want = kernels.rms_norm_rope_reference(x, weight, rotations, heads, 1e-6)
    got = kernels.rms_norm_rope(x, weight, rotations, heads, 1e-6)
    assert_close_16bit(got, want)
    assert_close_16bit(kernels.rms_norm_rope(x, weight, rotations, heads, 1e-6, rows=4), want)
    with torch.no_grad():  # the model's ops on the GPU (CUDA's fused rms_norm kernel, complex RoPE)
        model_ops = apply_rope(F.rms_norm(x, (heads * 128,), weight, 1e-6).unflatten(-1, (heads, -1)), rotations)
    assert_close_16bit(got, model_ops)
    q8, qs = kernels.rms_norm_rope_int8(x, weight, rotations, heads, 1e-6)
    want8 = kernels.quantize_qkv(got, got, got)
    # Not bit-identical on the GPU (they are in the interpreter): the compiled int8 mode may contract the RoPE
    # multiply-adds differently, moving a bf16 value by one ulp, hence a token's scale by up to one bf16 ulp
    # (2^-7 relative) and an 8-bit value by one step (H100, 2026-11-24: max 1 step, scales 7.1e-3 relative).
    assert (q8.int() - want8[0].int()).abs().max().item() <= 1
    assert ((qs - want8[1]).abs() <= want8[1].abs() * 2.0 ** -7).all()
    k, sums = kernels.rms_norm_rope_column_sums(x, weight, rotations, heads, 1e-6)
    assert_close_16bit(k, want)
    # The same per-token code as rms_norm_rope: identical K at the same warps per program (the column-sums mode's
    # default may take fewer warps, which changes the order of the sum of squares).
    k8, _ = kernels.rms_norm_rope_column_sums(x, weight, rotations, heads, 1e-6, warps=8)
    assert torch.equal(k8, kernels.rms_norm_rope(x, weight, rotations, heads, 1e-6, warps=8))
    mean = sums.sum(dim=2) / k.shape[1]
    assert torch.allclose(mean, k.mean(dim=1, dtype=torch.float32), rtol=1e-5, atol=1e-6)


@requires_cuda
def test_int8_self_attention_from_projections_on_gpu():
    pytest.importorskip("triton")
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("the 8-bit attention kernel needs fp8 tensor cores")
    from lightx2v_nodes.wan.attention import choose_attention

    heads = 40
    x, weight_q, rotations = inputs(1, (21, 30, 52), heads, 128, torch.bfloat16, device="cuda")
    k_proj, weight_k, _ = inputs(1, (21, 30, 52), heads, 128, torch.bfloat16, device="cuda", seed=1)
    v = torch.randn(1, x.shape[1], heads, 128, device="cuda", dtype=torch.bfloat16)
    norms = []
    for weight in (weight_q, weight_k):
        norm = torch.nn.RMSNorm(heads * 128, eps=1e-6, dtype=torch.bfloat16, device="cuda")
        norm.weight.data.copy_(weight)
        norms.append(norm)
    backend = choose_attention("lightx2v-int8", torch.device("cuda"), torch.bfloat16)
    assert backend.name == "lightx2v-int8", backend.description
    with torch.no_grad():
        want = backend.call(unfused(x, norms[0], rotations, heads), unfused(k_proj, norms[1], rotations, heads), v)
        got = backend.from_projections(x, k_proj, v, norms[0], norms[1], rotations)
    cosine = F.cosine_similarity(got.float().flatten(), want.float().flatten(), dim=0).item()
    assert cosine >= 0.9999, cosine
