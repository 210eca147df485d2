"""Triton kernels for the quantized linear layers, each next to its plain-PyTorch reference.

Importing this package never fails: without Triton, `TRITON_AVAILABLE` is False and only the references
exist. `TRITON_INTERPRET=1` (set before this package is imported) runs the kernels on the CPU for tests.
"""

try:
    import triton  # noqa: F401

    TRITON_AVAILABLE = True
except ImportError:  # the references below still work
    TRITON_AVAILABLE = False

from .act_quant import quantize_per_token, quantize_per_token_reference  # noqa: E402
from .scaled_gemm import scaled_gemm, scaled_gemm_reference  # noqa: E402

__all__ = ["TRITON_AVAILABLE", "quantize_per_token", "quantize_per_token_reference", "scaled_gemm", "scaled_gemm_reference"]
