"""Running kernel checks (tests/kernel_checks.py) in Triton's CPU interpreter, shared by the kernel test files.

The checks run in a subprocess because TRITON_INTERPRET must be set before triton and the kernels are imported,
and the test process may already hold them compiled for a GPU.
"""

import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_in_triton_interpreter(check: str) -> str:
    """Run kernel_checks.<check>() under TRITON_INTERPRET=1 on the CPU; the test fails unless it returns. Skips with
    a GPU present (the GPU tests run the compiled kernels) and on Triton < 3.8, whose interpreter hands scalar
    kernel arguments to range() as 1-element arrays (CI has 3.8). Returns the check's stdout."""
    triton = pytest.importorskip("triton")
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present: the GPU tests run the same checks on the compiled kernels")
    if tuple(int(part) for part in triton.__version__.split("+")[0].split(".")[:2]) < (3, 8):
        pytest.skip(f"Triton {triton.__version__}'s interpreter cannot run these kernels (needs >= 3.8, as in CI)")
    path = os.pathsep.join([ROOT, os.environ["PYTHONPATH"]]) if os.environ.get("PYTHONPATH") else ROOT
    env = {**os.environ, "TRITON_INTERPRET": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": path}
    script = os.path.join(ROOT, "tests", "kernel_checks.py")
    result = subprocess.run([sys.executable, script, check], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and f"passed: {check}" in result.stdout, result.stdout + result.stderr[-3000:]
    return result.stdout
