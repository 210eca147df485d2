"""kernels/lowrank_add.py (the LoRA side branch's in-place add) vs its float32 reference.

Interpreter (CPU, subprocess; Triton's interpreter has no bfloat16 matmul, so float32 and float16 there):
float32 within 1e-6 of the largest output, float16 within one fp16 ulp of it (the kernel and the reference
round the same float32 sum, in different summation orders). GPU (skipped without CUDA): bfloat16 within one
bf16 ulp, with h a strided column slice as the side branch passes it, and the hook's result equal to the
merged-weight output as in tests/test_lora_side_branch.py.
"""

import textwrap

import pytest
import torch

from lightx2v_nodes.kernel_loader import load_kernels
from triton_interpreter import run_in_triton_interpreter
kernels = load_kernels()
SHAPES = [(37, 50, 8), (70, 33, 64), (65, 130, 100)]  # (M, N, rank), none a multiple of the tiles


def _case(m, n, r, dtype, device):
    gen = torch.Generator(device=device).manual_seed(m * n + r)
    out = torch.randn(m, n, generator=gen, device=device).to(dtype)
    h = torch.randn(m, r + 5, generator=gen, device=device).to(dtype)[:, 2:2 + r]  # a column slice, row stride r + 5
    up = torch.randn(n, r, generator=gen, device=device).to(dtype)
    return out, h, up


CHECKS = textwrap.dedent("""
    import sys
    import torch
    sys.path.insert(0, ROOT)
    sys.path.insert(0, ROOT + "/tests")
    import kernels
    from test_lowrank_add import SHAPES, _case

    for m, n, r in SHAPES:
        for dtype, bound in ((torch.float32, 1e-6), (torch.float16, 2.0 ** -10)):
            out, h, up = _case(m, n, r, dtype, "cpu")
            got = kernels.lowrank_add_(out.clone(), h, up, 0.7).float()
            want = kernels.lowrank_add_reference(out.clone(), h, up, 0.7).float()
            err = ((got - want).abs().max() / want.abs().max()).item()
            assert err <= bound, (m, n, r, dtype, err)
    print("lowrank_add matches its reference")
""")


def test_lowrank_add_in_triton_interpreter():
    assert "lowrank_add matches its reference" in run_in_triton_interpreter(CHECKS)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_lowrank_add_on_gpu():
    pytest.importorskip("triton")
    for m, n, r in SHAPES + [(4096, 5120, 64), (1000, 13824, 192)]:
        out, h, up = _case(m, n, r, torch.bfloat16, "cuda")
        got = kernels.lowrank_add_(out.clone(), h, up, 0.7).float()
        want = kernels.lowrank_add_reference(out.clone(), h, up, 0.7).float()
        err = ((got - want).abs() / want.abs().clamp_min(want.abs().max() * 1e-3)).max().item()
        assert err <= 2.0 ** -7, (m, n, r, err)
