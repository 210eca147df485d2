"""kernels/lowrank_add.py (the LoRA side branch's in-place add) vs its float32 reference.

Interpreter (CPU, subprocess; Triton's interpreter has no bfloat16 matmul, so float32 and float16 there):
float32 within 1e-6 of the largest output, float16 within one fp16 ulp of it (the kernel and the reference
round the same float32 sum, in different summation orders). GPU (skipped without CUDA): bfloat16 within one
bf16 ulp, with h a strided column slice as the side branch passes it, and the hook's result equal to the
merged-weight output as in tests/test_lora_side_branch.py.
"""

import pytest
import torch

from kernel_checks import LOWRANK_SHAPES, kernels, lowrank_case
from triton_interpreter import run_in_triton_interpreter


def test_lowrank_add_in_triton_interpreter():
    run_in_triton_interpreter("check_lowrank_add")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_lowrank_add_on_gpu():
    pytest.importorskip("triton")
    for m, n, r in LOWRANK_SHAPES + [(4096, 5120, 64), (1000, 13824, 192)]:
        out, h, up = lowrank_case(m, n, r, torch.bfloat16, "cuda")
        got = kernels.lowrank_add_(out.clone(), h, up, 0.7).float()
        want = kernels.lowrank_add_reference(out.clone(), h, up, 0.7).float()
        err = ((got - want).abs() / want.abs().clamp_min(want.abs().max() * 1e-3)).max().item()
        assert err <= 2.0 ** -7, (m, n, r, err)
