"""Kernel checks against their PyTorch references, and the inputs they share with the kernel test files.

On the CPU each check_* function runs in Triton's interpreter, in a subprocess started by
triton_interpreter.run_in_triton_interpreter (`python tests/kernel_checks.py check_name`); the GPU tests call some of
them directly with GPU shapes. The test files' docstrings give the reasons for the tolerances.
"""

import os
import sys

import torch

from lightx2v_nodes.kernel_loader import load_kernels

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
kernels = load_kernels()  # the module the engine calls (the engine checks below count calls on it)
QDTYPES = (torch.int8, torch.float8_e4m3fn)
GEMM_SHAPES = [(1, 16, 16), (37, 72, 50), (45, 100, 33), (40, 96, 70)]  # (M, K, N), most not multiples of 16
LOWRANK_SHAPES = [(37, 50, 8), (70, 33, 64), (65, 130, 100)]  # (M, N, rank), none a multiple of the tiles


def relative_error(got, want):
    return ((got.float() - want.float()).norm() / want.float().norm()).item()


def layer_norm_inputs(batch, length, dim, dtype, device="cpu", seed=0):
    """A residual stream [B, L, D] with an offset, a spread and one outlier channel like a trained DiT's; an affine
    norm's weight and bias; a modulation [B, 6, D] whose first two rows are shift and scale."""
    gen = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(batch, length, dim, generator=gen, device=device) * 3 + 0.5
    x[..., 3] *= 50
    weight = torch.randn(dim, generator=gen, device=device) * 0.3 + 1.0
    bias = torch.randn(dim, generator=gen, device=device) * 0.1
    mod = torch.randn(batch, 6, dim, generator=gen, device=device) * 0.2
    return x.to(dtype), weight.to(dtype), bias.to(dtype), mod.to(dtype)


def projection_inputs(batch, grid, heads, head_dim, dtype, device="cpu", seed=0):
    """A q/k projection [B, L, dim] with an offset and spread like a trained DiT's, a norm weight and RoPE tables."""
    from lightx2v_nodes.wan.model import rope_tables

    gen = torch.Generator(device=device).manual_seed(seed)
    dim = heads * head_dim
    length = grid[0] * grid[1] * grid[2]
    x = torch.randn(batch, length, dim, generator=gen, device=device) * 3 + 0.5
    weight = torch.randn(dim, generator=gen, device=device) * 0.3 + 1.0
    return x.to(dtype), weight.to(dtype), rope_tables(head_dim, *grid, device=device)


def lowrank_case(m, n, r, dtype, device):
    gen = torch.Generator(device=device).manual_seed(m * n + r)
    out = torch.randn(m, n, generator=gen, device=device).to(dtype)
    h = torch.randn(m, r + 5, generator=gen, device=device).to(dtype)[:, 2:2 + r]  # a column slice, row stride r + 5
    up = torch.randn(n, r, generator=gen, device=device).to(dtype)
    return out, h, up


def assert_close_16bit(got, want, max_fraction=1e-2):
    """got within one rounding of want's dtype, measured on each rotated pair's norm (RoPE preserves it, so a
    1-ulp difference of the normed value before the rotation stays within eps * pair norm after it), and off in
    at most `max_fraction` of the elements."""
    eps = torch.finfo(want.dtype).eps
    pair_norm = want.float().unflatten(-1, (-1, 2)).norm(dim=-1, keepdim=True).expand(*want.shape[:-1], -1, 2)
    diff = (got.float() - want.float()).abs()
    assert (diff <= 2 * eps * pair_norm.flatten(-2)).all(), diff.max().item()
    assert (diff > 0).float().mean().item() <= max_fraction


def _check_quant(x, qdtype, tag):
    q, s = kernels.quantize_per_token(x, qdtype)
    qr, sr = kernels.quantize_per_token_reference(x, qdtype)
    assert q.dtype == qdtype and s.shape == (x.shape[0], 1), tag
    assert torch.equal(s, sr), f"{tag}: scales differ"
    bad = (q.float() != qr.float()).sum().item()
    assert bad == 0, f"{tag}: {bad} quantized values differ"
    return q, s


def _gemm_error(out, xq, sx, wq, sw, bias):
    ref = kernels.scaled_gemm_reference(xq, sx, wq, sw, bias, out_dtype=torch.float32)
    bound = (xq.float().abs() @ wq.float().abs().t()) * sx.float() * sw.float().t()
    return ((out.float() - ref).abs() / (bound + 1e-30)).max().item()


def _check_gemm(m, k, n, qdtype, seed, device, tiles, tma):
    """The GEMM at one shape, with and without bias, both fp8 accumulation modes; returns the float32 outputs' errors
    [(qdtype, shape, promote, error / absolute-product sum)]."""
    g = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(m, k, generator=g, device=device) * torch.exp(torch.randn(m, k, generator=g, device=device))
    x[0, :] = 0.0  # an all-zero token
    w = torch.randn(n, k, generator=g, device=device)
    xq, sx = _check_quant(x, qdtype, f"quant {qdtype} {m}x{k}")
    wq, sw = kernels.quantize_per_token_reference(w, qdtype)
    bias = torch.randn(n, generator=g, device=device)
    errors = []
    for b in (None, bias):
        for promote in (True, False) if qdtype != torch.int8 else (True,):
            out = kernels.scaled_gemm(xq, sx, wq, sw, b, out_dtype=torch.float32, fp8_promote=promote, tiles=tiles,
                                      tma=tma)
            assert torch.isfinite(out).all()
            if qdtype == torch.int8:
                tol = 1e-6
            elif device == "cpu":
                tol = 1e-5
            else:
                tol = 2.0 ** -10 if promote else 2.0 ** -9
            err = _gemm_error(out, xq, sx, wq, sw, b)
            errors.append((qdtype, (m, k, n), promote, err))
            assert err <= tol, f"gemm {qdtype} {m}x{k}x{n} bias={b is not None} promote={promote}: error {err} > {tol}"
    # bf16 output (default accumulation): one bf16 ulp of the result plus the accumulation bound above.
    out = kernels.scaled_gemm(xq, sx, wq, sw, bias.bfloat16(), out_dtype=torch.bfloat16, tiles=tiles, tma=tma)
    ref = kernels.scaled_gemm_reference(xq, sx, wq, sw, bias.bfloat16(), out_dtype=torch.float32)
    accumulation = (xq.float().abs() @ wq.float().abs().t()) * sx.float() * sw.float().t()
    tol = 1e-6 if qdtype == torch.int8 else 1e-5 if device == "cpu" else 2.0 ** -9
    ratio = ((out.float() - ref).abs() / (ref.abs() * 2.0 ** -7 + tol * accumulation + 1e-30)).max().item()
    assert ratio <= 1.0, f"gemm bf16 {qdtype} {m}x{k}x{n}: error {ratio}x (1 bf16 ulp + accumulation bound)"
    return errors


def _check_gelu_quant(m, k, qdtype, seed, device):
    # GELU fused into the quantization vs float32 GELU then the reference quantization. The kernel's GELU
    # formula (x / (1 + exp(-2u)), fast exp2 and division on the GPU) differs
    # from the reference by float32 roundings (~1e-7 relative), which can move a scale by an ulp and a value
    # sitting on a rounding boundary by one quantization step (measured: <= 0.08% of the values); nothing more.
    g = torch.Generator(device=device).manual_seed(seed)
    x = (torch.randn(m, k, generator=g, device=device) * 3).bfloat16()
    x[0, :] = 0.0
    q, s = kernels.gelu_quantize_per_token(x, qdtype)
    qr, sr = kernels.gelu_quantize_per_token_reference(x, qdtype)
    assert q.dtype == qdtype and s.shape == sr.shape
    assert ((s - sr).abs() <= sr * 1e-6).all(), f"gelu quant {qdtype} {m}x{k}: scales"
    got, want = q.float() * s, qr.float() * sr
    step = sr * 1.01 if qdtype == torch.int8 else want.abs() * 2.0 ** -3 + sr * 2.0 ** -6
    assert ((got - want).abs() <= step).all(), f"gelu quant {qdtype} {m}x{k}: values"
    differ = (q.float() != qr.float()).float().mean().item()
    assert differ <= 1e-2, f"gelu quant {qdtype} {m}x{k}: {differ:.2%} of the values differ"


def check_quantization_and_gemm(device="cpu", shapes=GEMM_SHAPES, gelu_shapes=((5, 200), (3, 5000), (2, 20000)),
                                tma_runs=True, tile_choices=None):
    """Per-token quantization (plain and GELU-fused) and the scaled GEMM; returns the GEMM errors of _check_gemm.
    tile_choices: {tma: tiles to run} (None: the default choice, fixed small tiles in the interpreter);
    tma_runs: whether the persistent TMA kernel runs here (fp8 rows of 16-byte multiples)."""
    for i, (m, k) in enumerate(gelu_shapes):
        for qdtype in QDTYPES:
            _check_gelu_quant(m, k, qdtype, i, device)
    # Rows up to ONE_PASS_MAX_WIDTH (one pass, several rows per program, a partial last program) and wider rows
    # (two passes over 1,024- and 2,048-wide chunks, a masked last chunk).
    for m, k in ((7, 24), (33, 100), (33, 300), (3, 2500), (2, 20000)):
        g = torch.Generator(device=device).manual_seed(k)
        x = torch.randn(m, k, generator=g, device=device) * torch.exp(torch.randn(m, k, generator=g, device=device))
        for qdtype in QDTYPES:
            _check_quant(x.bfloat16(), qdtype, f"quant {qdtype} {m}x{k}")
    errors = []
    for tma in (False, True):
        for tiles in (tile_choices or {False: (None,), True: (None,)})[tma]:
            for i, (m, k, n) in enumerate(shapes):
                for qdtype in QDTYPES:
                    if not tma or (tma_runs and k % 16 == 0 and qdtype != torch.int8):
                        errors += _check_gemm(m, k, n, qdtype, i, device, tiles, tma)
    return errors


def check_lowrank_add():
    """float32 and float16 (the interpreter has no bfloat16 matmul), h a strided column slice."""
    for m, n, r in LOWRANK_SHAPES:
        for dtype, bound in ((torch.float32, 1e-6), (torch.float16, 2.0 ** -10)):
            out, h, up = lowrank_case(m, n, r, dtype, "cpu")
            got = kernels.lowrank_add_(out.clone(), h, up, 0.7).float()
            want = kernels.lowrank_add_reference(out.clone(), h, up, 0.7).float()
            err = ((got - want).abs().max() / want.abs().max()).item()
            assert err <= bound, (m, n, r, dtype, err)


def _tiny_dit(dtype):
    """A random 2-block t2v WanDiT in dtype (the patch embedding in float32) and its inputs (x, t, context)."""
    from lightx2v_nodes.wan import synthetic
    from lightx2v_nodes.wan.model import WanDiT

    cfg = synthetic.tiny_config("t2v", dim=256, layers=2)
    with torch.device("meta"):
        model = WanDiT(**cfg.unet_config(), dtype=dtype)
    state = synthetic.random_state_dict(cfg)
    model.load_state_dict({k: v if k.startswith("patch_embedding") else v.to(dtype) for k, v in state.items()},
                          assign=True)
    # Seeded: the fused and unfused 8-bit paths differ only where a value rounds to the other 8-bit level (0 to 3e-3
    # relative over 12 seeds of these inputs), so a result must reproduce from run to run.
    gen = torch.Generator().manual_seed(0)
    inputs = (torch.randn(1, 16, 3, 8, 8, generator=gen).to(dtype), torch.tensor([500.0]),
              torch.randn(1, 24, cfg.text_dim, generator=gen).to(dtype))
    return model, inputs


def check_attention8():
    """Quantization bit for bit, both kernels vs the reference at odd lengths, then a tiny DiT through the kernel."""
    sys.path.append(os.path.join(ROOT, "bench"))  # after everything else: its module names are generic
    from attention import compare, exact_attention

    from lightx2v_nodes.wan import attention as wan_attention

    torch.manual_seed(0)
    for (b, lq, lk, h, d), tiles in [((1, 70, 45, 2, 64), (32, 32, 4, 1)), ((2, 33, 130, 1, 128), (32, 32, 4, 1)),
                                     ((1, 150, 150, 1, 128), (64, 64, 4, 1))]:
        q = torch.randn(b, lq, h, d)
        k = torch.randn(b, lk, h, d) + 3 * torch.randn(1, 1, h, d)
        v = torch.randn(b, lk, h, d)
        for got, want in zip(kernels.quantize_qkv(q, k, v), kernels.quantize_qkv_reference(q, k, v)):
            assert got.dtype == want.dtype and torch.equal(got.float(), want.float()), (b, lq, lk, h, d)
        out = kernels.attention8(q, k, v, tiles=tiles)
        ref = kernels.attention8_reference(q, k, v, block_n=tiles[1])
        rel = relative_error(out, ref)
        assert rel <= 5e-3, (b, lq, lk, h, d, rel)
        assert torch.equal(kernels.attention8(q, k, v, tiles=tiles, tma=True), out)  # the tensor-descriptor kernel
        assert compare(out, exact_attention(q, k, v))["cosine"] >= 0.995
        big = [t * (1e3 / t.abs().amax()) for t in (q, k, v)]
        assert torch.isfinite(kernels.attention8(*big, tiles=tiles)).all()

    # A whole tiny DiT with every attention call (self and cross) through the kernel vs SDPA.
    model, inputs = _tiny_dit(torch.float32)
    with torch.inference_mode():
        model.set_attention(wan_attention.SDPA)
        want = model(*inputs)
        model.set_attention(wan_attention.eight_bit_backend(min_keys=1))  # the kernel at any length, on the CPU
        got = model(*inputs)
    cosine = compare(got, want)["cosine"]
    assert cosine >= 0.99, cosine
    print("tiny DiT cosine", round(cosine, 5))


def _counting(calls, name, fn):
    def counted(*args, **kwargs):
        calls[name] += 1
        return fn(*args, **kwargs)
    return counted


def _forward(model, inputs, norm_module, force, chunk=None):
    """model(*inputs) with the fused path of norm_module (wan.norm_quant or wan.norm_rope) forced on or off (the CPU
    normally keeps the unfused ops), each block's token chunk set to chunk."""
    norm_module._runs_here = (lambda x: True) if force else (lambda x: False)
    for block in model.blocks:
        block.token_chunk = chunk
    with torch.inference_mode():
        return model(*inputs)


def check_layer_norm_quantize():
    """The kernel, then a tiny DiT through wan.norm_quant (patches the engine's modules: run it in its own process)."""
    from lightx2v_nodes.quant.dit import quantize_dit_
    from lightx2v_nodes.wan import compile as wan_compile, norm_quant

    def check(got, want):
        assert got[0].dtype == want[0].dtype and got[1].shape == want[1].shape
        assert torch.equal(got[0].float(), want[0].float()) and torch.equal(got[1], want[1])

    # (rows per program: None = by width; 4 with 5 rows leaves the last program's rows partly past the end)
    for batch, length, dim, dtype, rows in [(2, 7, 64, torch.bfloat16, None), (1, 5, 200, torch.bfloat16, 4),
                                            (2, 3, 96, torch.float16, None), (2, 4, 160, torch.float16, 1)]:
        x, weight, bias, mod = layer_norm_inputs(batch, length, dim, dtype)
        for qdtype in (torch.float8_e4m3fn, torch.int8):
            for kw in ({}, dict(weight=weight, bias=bias), dict(shift=mod[:, 0:1], scale=mod[:, 1:2]),
                       dict(shift=mod[:1, 2:3], scale=mod[:1, 3:4])):
                check(kernels.layer_norm_quantize(x, qdtype, 1e-6, **kw, rows=rows),
                      kernels.layer_norm_quantize_reference(x, qdtype, 1e-6, **kw))
        sliced = x[:, 1:length - 1]  # a token slice of a batch: strided rows
        check(kernels.layer_norm_quantize(sliced, torch.int8, 1e-6, shift=mod[:, 0:1], scale=mod[:, 1:2], rows=rows),
              kernels.layer_norm_quantize_reference(sliced, torch.int8, 1e-6, shift=mod[:, 0:1], scale=mod[:, 1:2]))

    calls = {"fused": 0}
    kernels.layer_norm_quantize = _counting(calls, "fused", kernels.layer_norm_quantize)
    for fmt in ("fp8", "int8"):
        model, inputs = _tiny_dit(torch.bfloat16)
        quantize_dit_(model, fmt)
        calls["fused"] = 0
        want = _forward(model, inputs, norm_quant, False)
        assert calls["fused"] == 0
        assert relative_error(_forward(model, inputs, norm_quant, True), want) <= 1e-2
        assert calls["fused"] == 2 * 3, calls  # 2 blocks x (self-attention, cross-attention, FFN inputs)
        assert relative_error(_forward(model, inputs, norm_quant, True, 20), want) <= 1e-2
        phases = wan_compile.compile_blocks(model, wan_compile.CompileSettings(backend="aot_eager"))
        compiled = _forward(model, inputs, norm_quant, True)
        assert not phases.failed and relative_error(compiled, want) <= 1e-2
        wan_compile.CompiledPhases.remove(model)
        print(fmt, "tiny DiT rel error compiled", relative_error(compiled, want))


def check_rms_norm_rope():
    """The kernel's modes, then a tiny DiT through wan.norm_rope (patches the engine's modules: its own process)."""
    from lightx2v_nodes.wan import attention as wan_attention, compile as wan_compile, norm_rope

    for batch, grid, heads, head_dim, dtype in [(2, (1, 3, 5), 3, 64, torch.bfloat16),
                                                (1, (1, 3, 7), 5, 128, torch.bfloat16),
                                                (2, (1, 3, 5), 3, 64, torch.float16),
                                                (1, (1, 3, 7), 5, 128, torch.float32)]:
        x, weight, rotations = projection_inputs(batch, grid, heads, head_dim, dtype)
        want = kernels.rms_norm_rope_reference(x, weight, rotations, heads, 1e-6)
        got = kernels.rms_norm_rope(x, weight, rotations, heads, 1e-6)
        assert got.shape == want.shape and got.dtype == dtype
        if dtype == torch.float32:
            assert relative_error(got, want) <= 1e-6
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

    # A whole tiny bf16 DiT, fused path forced on.
    model, inputs = _tiny_dit(torch.bfloat16)
    calls = {"fused": 0, "int8": 0}
    norm_rope.fused = _counting(calls, "fused", norm_rope.fused)
    kernels.rms_norm_rope_int8 = _counting(calls, "int8", kernels.rms_norm_rope_int8)
    want = _forward(model, inputs, norm_rope, False)
    assert calls["fused"] == 0
    for chunk in (None, 20):
        assert relative_error(_forward(model, inputs, norm_rope, True, chunk), want) <= 1e-2, chunk
    assert calls["fused"] == 2 * 2 * (1 + 3), calls  # q and k of 2 blocks, whole sequence + 3 chunks
    phases = wan_compile.compile_blocks(model, wan_compile.CompileSettings(backend="aot_eager"))
    compiled = _forward(model, inputs, norm_rope, True)
    assert not phases.failed and relative_error(compiled, want) <= 1e-2
    wan_compile.CompiledPhases.remove(model)

    model.set_attention(wan_attention.eight_bit_backend(min_keys=1))  # the kernel at any length, on the CPU
    want8 = _forward(model, inputs, norm_rope, False)
    got8 = _forward(model, inputs, norm_rope, True)
    assert calls["int8"] == 2, calls  # from_projections: the int8 Q mode, once per block
    assert relative_error(got8, want8) <= 1e-2
    print("tiny DiT rel errors", relative_error(compiled, want), relative_error(got8, want8))


def dense_on_kept_keys(q, k, v, quantized, table, tiles, query_tiles=None):
    """Per query tile (all, or those given): the dense kernel over the listed key tiles only (BLOCK_N = 128: one
    K scale per tile). Rows of other query tiles stay zero."""
    q8, qs, k8, ks, v8t, vs = quantized
    b, lq, h, d = q.shape
    bm, bn = table.tiles
    assert bn == 128
    out = torch.zeros_like(q)
    for tile in range(table.indices.shape[1]) if query_tiles is None else query_tiles:
        listed = [int(t) for t in table.indices[0, tile, :int(table.counts[0, tile])]]
        rows = slice(tile * bm, min(tile * bm + bm, lq))
        q8_tile = torch.zeros((b, h, 128, d), dtype=q8.dtype, device=q.device)
        qs_tile = torch.zeros((b, h, 128), dtype=qs.dtype, device=q.device)
        q8_tile[:, :, :rows.stop - rows.start] = q8[:, :, rows]
        qs_tile[:, :, :rows.stop - rows.start] = qs[:, :, rows]
        keys = torch.cat([torch.arange(t * 128, t * 128 + 128) for t in listed]).to(q.device)
        kept = sum(min(128, k.shape[1] - t * 128) for t in listed)
        sub = (q8_tile, qs_tile, k8[:, :, keys].contiguous(), ks[:, :, listed].contiguous(),
               v8t[..., keys].contiguous(), vs)
        out[:, rows] = kernels.attention8(q[:, rows], k[:, :kept], v[:, :kept], quantized=sub, tiles=tiles)
    return out


def check_sparse_kernel():
    """Block-sparse kernel (radial and window masks) vs the dense kernel on each query tile's kept keys, TMA vs
    pointer loads, vs its PyTorch reference; a full table is the dense kernel."""
    from lightx2v_nodes.wan.sparse_masks import TokenGrid, radial_keep, tile_mask, window_keep

    torch.manual_seed(0)
    grid = TokenGrid(4, 8, 39)  # 1,248 tokens: the last 128-key tile is partial (96 keys)
    b, h, d = 1, 1, 64
    q = torch.randn(b, grid.tokens, h, d)
    k = torch.randn(b, grid.tokens, h, d) + 2 * torch.randn(1, 1, h, d)
    v = torch.randn(b, grid.tokens, h, d)
    quantized = kernels.quantize_qkv(q, k, v)
    masks = {"radial": radial_keep(grid, decay=0.25, min_band=16), "window": window_keep(grid, (1, 2, 5), (1, 1, 1))}
    for name, keep in masks.items():
        tiles = (32, 128, 4, 1)
        table = kernels.block_table(tile_mask(keep, grid.tokens, tiles[:2]), tiles[:2])
        listed = torch.arange(table.indices.shape[2]) < table.counts[..., None]
        listed_tail = (table.indices == table.key_tiles - 1) & listed
        assert 0 < table.kept_fraction < 1 and 0 < int(listed_tail.sum()) < table.indices.shape[1], name
        got = kernels.attention8_sparse(q, k, v, table, quantized=quantized, tiles=tiles)
        assert torch.equal(got, dense_on_kept_keys(q, k, v, quantized, table, tiles)), name
        assert torch.equal(kernels.attention8_sparse(q, k, v, table, quantized=quantized, tiles=tiles, tma=True), got)
        small = (32, 32, 4, 1)
        table = kernels.block_table(tile_mask(keep, grid.tokens, small[:2]), small[:2])
        got = kernels.attention8_sparse(q, k, v, table, quantized=quantized, tiles=small)
        ref = kernels.attention8_sparse_reference(q, k, v, table, quantized=quantized)
        rel = ((got - ref).norm() / ref.norm()).item()
        assert rel <= 5e-3, (name, rel)
        print(name, "kept", round(table.kept_fraction, 3), "rel vs reference", rel)
    every = kernels.block_table(torch.ones(1, 39, 10, dtype=torch.bool), (32, 128))
    assert torch.equal(kernels.attention8_sparse(q, k, v, every, quantized=quantized, tiles=(32, 128, 4, 1)),
                       kernels.attention8(q, k, v, quantized=quantized, tiles=(32, 128, 4, 1)))
    print("sparse kernel equals dense on kept keys")


def check_sparse_dit():
    """A tiny DiT: sparse self-attention with a window keeping every tile is the dense 8-bit model, bit for bit."""
    from lightx2v_nodes.wan import attention, synthetic
    from lightx2v_nodes.wan.model import WanDiT
    from lightx2v_nodes.wan.sparse_attention import SparseAttention, SparseSettings
    from lightx2v_nodes.wan.sparse_masks import TokenGrid

    cfg = synthetic.tiny_config("t2v", dim=256, layers=2)
    with torch.device("meta"):
        model = WanDiT(**cfg.unet_config(), dtype=torch.float32)
    model.load_state_dict(synthetic.random_state_dict(cfg), assign=True)
    x, t, context = torch.randn(1, 16, 3, 8, 16), torch.tensor([500.0]), torch.randn(1, 24, cfg.text_dim)
    model.set_attention(attention.eight_bit_backend(min_keys=1))
    with torch.inference_mode():
        dense = model(x, t, context)
        sparse = SparseAttention(SparseSettings(mask="window", window_radius=(9, 9, 9), dense_blocks=0),
                                 model.attention, min_keys=1)
        sparse.install(model, TokenGrid(3, 4, 8), step=1, device=torch.device("cpu"))
        out = model(x, t, context)
        sparse.remove(model)
    assert torch.equal(out, dense)
    print("a window keeping every tile is the dense 8-bit DiT")


if __name__ == "__main__":  # python tests/kernel_checks.py check_name (triton_interpreter.run_in_triton_interpreter)
    name = sys.argv[1]
    if not name.startswith("check_"):
        raise SystemExit(f"not a check: {name}")
    globals()[name]()
    print("passed:", name)
