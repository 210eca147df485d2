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
  relative error <= 1e-2 (the DESIGN.md bf16 bound; measured 0).
GPU tests (skipped without CUDA) repeat the kernel checks at full width (5120 = 40 x 128 and 1536 = 12 x 128,
32,760 tokens) and the 8-bit self-attention from projections vs the unfused 8-bit path.
"""

import textwrap

import pytest
import torch
import torch.nn.functional as F

from triton_interpreter import run_in_triton_interpreter
from lightx2v_nodes.kernel_loader import load_kernels
from lightx2v_nodes.wan import norm_rope
from lightx2v_nodes.wan.model import apply_rope, rope_tables

kernels = load_kernels()
DTYPES = [torch.bfloat16, torch.float16, torch.float32]


def inputs(batch, grid, heads, head_dim, dtype, device="cpu", seed=0):
    """A q/k projection [B, L, dim] with an offset and spread like a trained DiT's, a norm weight and RoPE tables."""
    gen = torch.Generator(device=device).manual_seed(seed)
    dim = heads * head_dim
    length = grid[0] * grid[1] * grid[2]
    x = torch.randn(batch, length, dim, generator=gen, device=device) * 3 + 0.5
    weight = torch.randn(dim, generator=gen, device=device) * 0.3 + 1.0
    return x.to(dtype), weight.to(dtype), rope_tables(head_dim, *grid, device=device)


def unfused(x, norm, rotations, heads):
    return apply_rope(norm(x).unflatten(-1, (heads, -1)), rotations)


def assert_close_16bit(got, want, max_fraction=1e-2):
    """got within one rounding of want's dtype, measured on each rotated pair's norm (RoPE preserves it, so a
    1-ulp difference of the normed value before the rotation stays within eps * pair norm after it), and off in
    at most `max_fraction` of the elements."""
    eps = torch.finfo(want.dtype).eps
    pair_norm = want.float().unflatten(-1, (-1, 2)).norm(dim=-1, keepdim=True).expand(*want.shape[:-1], -1, 2)
    diff = (got.float() - want.float()).abs()
    assert (diff <= 2 * eps * pair_norm.flatten(-2)).all(), diff.max().item()
    assert (diff > 0).float().mean().item() <= max_fraction


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


INTERPRETER_CHECKS = textwrap.dedent("""
    import sys
    import torch
    sys.path.insert(0, ROOT)
    sys.path.insert(0, ROOT + "/tests")
    from test_norm_rope import assert_close_16bit, inputs
    from lightx2v_nodes.kernel_loader import load_kernels
    kernels = load_kernels()  # the module the engine calls (counted below)
    from lightx2v_nodes.wan import attention, compile as wan_compile, norm_rope, synthetic
    from lightx2v_nodes.wan.model import WanDiT

    for batch, grid, heads, head_dim, dtype in [(2, (1, 3, 5), 3, 64, torch.bfloat16), (1, (1, 3, 7), 5, 128, torch.bfloat16),
                                                (2, (1, 3, 5), 3, 64, torch.float16), (1, (1, 3, 7), 5, 128, torch.float32)]:
        x, weight, rotations = inputs(batch, grid, heads, head_dim, dtype)
        want = kernels.rms_norm_rope_reference(x, weight, rotations, heads, 1e-6)
        got = kernels.rms_norm_rope(x, weight, rotations, heads, 1e-6)
        assert got.shape == want.shape and got.dtype == dtype
        if dtype == torch.float32:
            assert ((got - want).norm() / want.norm()).item() <= 1e-6
        else:
            assert_close_16bit(got, want)
        if dtype == torch.bfloat16:  # the 8-bit attention path's modes
            q8, qs = kernels.rms_norm_rope_int8(x, weight, rotations, heads, 1e-6)
            want8 = kernels.quantize_qkv(got, got, got)
            assert torch.equal(q8, want8[0]) and torch.equal(qs, want8[1])
            k, sums = kernels.rms_norm_rope_column_sums(x, weight, rotations, heads, 1e-6, block=8)
            _, want_sums = kernels.rms_norm_rope_column_sums_reference(x, weight, rotations, heads, 1e-6, block=8)
            assert torch.equal(k, got) and torch.allclose(sums, want_sums, rtol=1e-6, atol=1e-5)
            mean = sums.sum(dim=2) / k.shape[1]
            assert torch.allclose(mean, k.mean(dim=1, dtype=torch.float32), rtol=1e-6, atol=1e-6)

    # A whole tiny bf16 DiT, fused path forced on (the CPU normally keeps the unfused ops).
    cfg = synthetic.tiny_config("t2v", dim=256, layers=2)
    with torch.device("meta"):
        model = WanDiT(**cfg.unet_config(), dtype=torch.bfloat16)
    state = synthetic.random_state_dict(cfg)
    model.load_state_dict({k: v if k.startswith("patch_embedding") else v.bfloat16() for k, v in state.items()}, assign=True)
    x = torch.randn(1, 16, 3, 8, 8, dtype=torch.bfloat16)
    t = torch.tensor([500.0])
    context = torch.randn(1, 24, cfg.text_dim, dtype=torch.bfloat16)
    calls = {"fused": 0, "int8": 0}
    fused, int8 = norm_rope.fused, kernels.rms_norm_rope_int8
    def count(name, fn):
        def counted(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return counted
    norm_rope.fused = count("fused", fused)
    kernels.rms_norm_rope_int8 = count("int8", int8)

    def rel(a, b):
        return ((a.float() - b.float()).norm() / b.float().norm()).item()

    def forward(force, chunk=None):
        norm_rope._runs_here = (lambda x: True) if force else (lambda x: False)
        for block in model.blocks:
            block.token_chunk = chunk
        with torch.inference_mode():
            return model(x, t, context)

    want = forward(False)
    assert calls["fused"] == 0
    for chunk in (None, 20):
        assert rel(forward(True, chunk), want) <= 1e-2, chunk
    assert calls["fused"] == 2 * 2 * (1 + 3), calls  # q and k of 2 blocks, whole sequence + 3 chunks
    phases = wan_compile.compile_blocks(model, wan_compile.CompileSettings(backend="aot_eager"))
    compiled = forward(True)
    assert not phases.failed and rel(compiled, want) <= 1e-2
    wan_compile.CompiledPhases.remove(model)

    model.set_attention(attention.eight_bit_backend(min_keys=1))  # the kernel at any length, on the CPU
    want8 = forward(False)
    got8 = forward(True)
    assert calls["int8"] == 2, calls  # from_projections: the int8 Q mode, once per block
    assert rel(got8, want8) <= 1e-2
    print("norm_rope matches; tiny DiT rel errors", rel(forward(True, 20), want), rel(compiled, want), rel(got8, want8))
""")


def test_kernel_in_triton_interpreter():
    assert "norm_rope matches" in run_in_triton_interpreter(INTERPRETER_CHECKS)


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
