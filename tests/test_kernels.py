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

import pytest
import torch

from kernel_checks import GEMM_SHAPES, check_quantization_and_gemm
from triton_interpreter import run_in_triton_interpreter


def test_kernels_in_triton_interpreter():
    run_in_triton_interpreter("check_quantization_and_gemm")


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@requires_cuda
def test_kernels_on_gpu():
    pytest.importorskip("triton")
    capability = torch.cuda.get_device_capability()
    if capability < (8, 9):
        pytest.skip("fp8 tensor-core dot needs compute capability >= 8.9")
    # a small and a large tile per kernel (autotuning every test shape takes minutes; fixed tiles that do not fit
    # shared memory fail instead of being skipped; these checks write float32 outputs, whose epilogue tile the TMA
    # kernel's default TMA_TILES, meant for 16-bit outputs, cannot also hold)
    tiles = {False: ((64, 128, 128, 4, 4), (128, 256, 64, 8, 5)), True: ((64, 128, 128, 4, 4), (128, 128, 128, 8, 4))}
    errors = check_quantization_and_gemm("cuda", GEMM_SHAPES + [(300, 512, 1000), (1000, 1024, 384)],
                                         [(5, 200), (300, 8960), (1000, 13824)], tma_runs=capability >= (9, 0),
                                         tile_choices=tiles)
    worst = {}
    for qdtype, _, promote, err in errors:
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
