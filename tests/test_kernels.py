"""Triton kernels vs their PyTorch references.

On the CPU the kernels run in Triton's interpreter (TRITON_INTERPRET=1), in a subprocess because the
variable must be set before triton and the kernels are imported, and this process may already hold them
compiled for real. GPU tests skip without CUDA.

Tolerances: per-token quantization is exact (same scale bits, same 8-bit values; -0.0 and 0.0 count as
equal). GEMM errors are measured against the sum of the absolute products, |xq|@|wq|^T * sx * sw^T, which
bounds any summation order's rounding (a plain relative error blows up where products cancel):
- int8: products are summed exactly as int32 (and exactly in the float32 reference at these K): 1e-6.
- fp8, measured on an H100 (2026-11-24, bench/quant_linear.py): the tensor cores sum fp8 products in an
  accumulator of ~14 mantissa bits (DeepSeek-V3 technical report, "Increasing Accumulation Precision").
  Fast mode (the default: all of K in that accumulator, as cuBLAS's use_fast_accum=True, bit-identical
  errors) reached 9.97e-4 (~2^-10) of the absolute-product sum at K=13824: bound 2^-9. Promoted mode (each 128-wide K-tile added into float32, as
  cuBLAS's default) reached 2.5e-4 at K=72 (a single tile) and 5.3e-4 at K=512 (a later GPU run with
  other autotuned tiles): bound 2^-10. The interpreter sums in
  float32: 1e-5.
bf16 output: within one bf16 ulp of the float32 result (the interpreter truncates where the GPU rounds) plus
the accumulation bound (fast fp8 accumulation on the GPU moves small, cancelling outputs by several ulps:
4.8 ulps measured at 37x72x50).
"""

import textwrap

import pytest
import torch

from triton_interpreter import ROOT, run_in_triton_interpreter
SHAPES = [(1, 16, 16), (37, 72, 50), (45, 100, 33), (40, 96, 70)]  # (M, K, N), most not multiples of 16

CHECKS = textwrap.dedent("""
    import sys
    import torch
    sys.path.insert(0, ROOT)
    import kernels

    def check_quant(x, qdtype, tag):
        q, s = kernels.quantize_per_token(x, qdtype)
        qr, sr = kernels.quantize_per_token_reference(x, qdtype)
        assert q.dtype == qdtype and s.shape == (x.shape[0], 1), tag
        assert torch.equal(s, sr), f"{tag}: scales differ"
        bad = (q.float() != qr.float()).sum().item()
        assert bad == 0, f"{tag}: {bad} quantized values differ"
        return q, s

    def gemm_error(out, xq, sx, wq, sw, bias):
        ref = kernels.scaled_gemm_reference(xq, sx, wq, sw, bias, out_dtype=torch.float32)
        bound = (xq.float().abs() @ wq.float().abs().t()) * sx.float() * sw.float().t()
        return ((out.float() - ref).abs() / (bound + 1e-30)).max().item()

    def check_gemm(m, k, n, qdtype, seed, promote_modes=(True,), tma=None):
        g = torch.Generator(device=DEVICE).manual_seed(seed)
        x = torch.randn(m, k, generator=g, device=DEVICE) * torch.exp(torch.randn(m, k, generator=g, device=DEVICE))
        x[0, :] = 0.0  # an all-zero token
        w = torch.randn(n, k, generator=g, device=DEVICE)
        xq, sx = check_quant(x, qdtype, f"quant {qdtype} {m}x{k}")
        wq, sw = kernels.quantize_per_token_reference(w, qdtype)
        bias = torch.randn(n, generator=g, device=DEVICE)
        for b in (None, bias):
            for promote in promote_modes if qdtype != torch.int8 else (True,):
                out = kernels.scaled_gemm(xq, sx, wq, sw, b, out_dtype=torch.float32, fp8_promote=promote, tiles=TILES,
                                          tma=tma)
                assert torch.isfinite(out).all()
                if qdtype == torch.int8:
                    tol = 1e-6
                elif DEVICE == "cpu":
                    tol = 1e-5
                else:
                    tol = 2.0 ** -10 if promote else 2.0 ** -9
                err = gemm_error(out, xq, sx, wq, sw, b)
                ERRORS.append((qdtype, (m, k, n), promote, err))
                assert err <= tol, f"gemm {qdtype} {m}x{k}x{n} bias={b is not None} promote={promote}: error {err} > {tol}"
        # bf16 output (default accumulation): one bf16 ulp of the result plus the accumulation bound above.
        out = kernels.scaled_gemm(xq, sx, wq, sw, bias.bfloat16(), out_dtype=torch.bfloat16, tiles=TILES, tma=tma)
        ref = kernels.scaled_gemm_reference(xq, sx, wq, sw, bias.bfloat16(), out_dtype=torch.float32)
        accumulation = (xq.float().abs() @ wq.float().abs().t()) * sx.float() * sw.float().t()
        tol = 1e-6 if qdtype == torch.int8 else 1e-5 if DEVICE == "cpu" else 2.0 ** -9
        ratio = ((out.float() - ref).abs() / (ref.abs() * 2.0 ** -7 + tol * accumulation + 1e-30)).max().item()
        assert ratio <= 1.0, f"gemm bf16 {qdtype} {m}x{k}x{n}: error {ratio}x (1 bf16 ulp + accumulation bound)"

    def check_gelu_quant(m, k, qdtype, seed):
        # GELU fused into the quantization vs float32 GELU then the reference quantization. The kernel's GELU
        # formula (x / (1 + exp(-2u)), fast exp2 and division on the GPU) differs
        # from the reference by float32 roundings (~1e-7 relative), which can move a scale by an ulp and a value
        # sitting on a rounding boundary by one quantization step (measured: <= 0.08% of the values); nothing more.
        g = torch.Generator(device=DEVICE).manual_seed(seed)
        x = (torch.randn(m, k, generator=g, device=DEVICE) * 3).bfloat16()
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

    for i, (m, k) in enumerate(GELU_SHAPES):
        for qdtype in (torch.int8, torch.float8_e4m3fn):
            check_gelu_quant(m, k, qdtype, seed=i)

    # Rows up to ONE_PASS_MAX_WIDTH (one pass, several rows per program, a partial last program) and wider rows
    # (two passes over 1,024- and 2,048-wide chunks, a masked last chunk).
    for m, k in ((7, 24), (33, 100), (33, 300), (3, 2500), (2, 20000)):
        g = torch.Generator(device=DEVICE).manual_seed(k)
        x = torch.randn(m, k, generator=g, device=DEVICE) * torch.exp(torch.randn(m, k, generator=g, device=DEVICE))
        for qdtype in (torch.int8, torch.float8_e4m3fn):
            check_quant(x.bfloat16(), qdtype, f"quant {qdtype} {m}x{k}")

    ERRORS = []
    # Both kernels: pointer loads everywhere, the persistent TMA one for fp8 rows of 16-byte multiples. Tiles None:
    # the default choice (interpreter: fixed small tiles).
    for tma in (False, True):
        for TILES in TILE_CHOICES[tma]:
            for i, (m, k, n) in enumerate(SHAPES):
                for qdtype in (torch.int8, torch.float8_e4m3fn):
                    if not tma or (TMA_RUNS and k % 16 == 0 and qdtype != torch.int8):
                        check_gemm(m, k, n, qdtype, seed=i, promote_modes=PROMOTE_MODES, tma=tma)
    print("kernels match their references")
""")


def test_kernels_in_triton_interpreter():
    script = f"DEVICE = 'cpu'\nTMA_RUNS = True\nSHAPES = {SHAPES!r}\nGELU_SHAPES = [(5, 200), (3, 5000), (2, 20000)]\nPROMOTE_MODES = (True, False)\nTILE_CHOICES = {{False: (None,), True: (None,)}}\n" + CHECKS
    assert "kernels match their references" in run_in_triton_interpreter(script)


def test_references_without_triton_match_formulas():
    """The references are what runs without Triton: they must reproduce the quantization formula exactly."""
    from lightx2v_nodes.quant import quantize_weight
    from lightx2v_nodes.kernel_loader import load_kernels

    kernels = load_kernels()
    w = torch.randn(33, 70) * 5
    for fmt, qdtype in (("int8", torch.int8), ("fp8", torch.float8_e4m3fn)):
        q, s = kernels.quantize_per_token_reference(w, qdtype)
        qw, sw = quantize_weight(w, fmt)
        assert torch.equal(s, sw) and torch.equal(q.float(), qw.float())


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@requires_cuda
def test_kernels_on_gpu():
    pytest.importorskip("triton")
    capability = torch.cuda.get_device_capability()
    if capability < (8, 9):
        pytest.skip("fp8 tensor-core dot needs compute capability >= 8.9")
    namespace = {"ROOT": ROOT, "DEVICE": "cuda", "SHAPES": SHAPES + [(300, 512, 1000), (1000, 1024, 384)],
                 "TMA_RUNS": torch.cuda.get_device_capability() >= (9, 0),
                 "GELU_SHAPES": [(5, 200), (300, 8960), (1000, 13824)],
                 "PROMOTE_MODES": (True, False),
                 # a small and a large tile per kernel (autotuning every test shape takes minutes; fixed tiles that
                 # do not fit shared memory fail instead of being skipped; these checks write float32 outputs, whose
                 # epilogue tile the TMA kernel's default TMA_TILES, meant for 16-bit outputs, cannot also hold)
                 "TILE_CHOICES": {False: ((64, 128, 128, 4, 4), (128, 256, 64, 8, 5)),
                                  True: ((64, 128, 128, 4, 4), (128, 128, 128, 8, 4))}}
    exec(compile(CHECKS, "kernel_checks", "exec"), namespace)
    worst = {}
    for qdtype, _, promote, err in namespace["ERRORS"]:
        worst[(str(qdtype), promote)] = max(err, worst.get((str(qdtype), promote), 0.0))
    print("worst GEMM error / absolute-product sum:", worst)


@requires_cuda
@pytest.mark.parametrize("fmt", ["fp8", "int8"])
def test_every_gpu_backend_matches_the_reference(fmt, monkeypatch):
    from lightx2v_nodes.quant import QuantLinear, backends

    capability = torch.cuda.get_device_capability()
    names = backends.candidates(fmt, "w8a8", "cuda", capability)
    if not names:
        pytest.skip(f"{fmt} W8A8 is not available on compute capability {capability}")
    torch.manual_seed(0)
    layer = torch.nn.Linear(1024, 768, dtype=torch.bfloat16, device="cuda")
    quantized = QuantLinear.from_float(layer, fmt)
    x = torch.randn(2, 333, 1024, device="cuda", dtype=torch.bfloat16)
    x2d = x.reshape(-1, 1024)
    expected = backends.reference(x2d, quantized.weight, quantized.weight_scale, quantized.bias)
    for name in names:
        if name == "weight_only":
            continue
        out = backends.BACKENDS[name](x2d, quantized.weight, quantized.weight_scale, quantized.bias)
        rel = ((out.float() - expected.float()).norm() / expected.float().norm()).item()
        assert out.dtype == torch.bfloat16 and rel <= 5e-3, (name, rel)
    monkeypatch.delenv(backends.ENV_OVERRIDE, raising=False)
    backends.dispatch.reset()
    out = quantized(x)
    assert out.shape == (2, 333, 768) and torch.isfinite(out).all()
