"""8-bit quantized Wan DiT: weight formats, QuantLinear and its matmul backends, on-load quantization, converter."""

from .dit import install_quant_linears, quantize_dit_, set_quant_mode
from .formats import dequantize_weight, is_block_linear, normalize_quantized, quantize_state_dict, quantize_weight
from .linear import QuantLinear
from .loading import QUANTIZATION_CHOICES, QuantPlan, apply_quantization

__all__ = [
    "QUANTIZATION_CHOICES", "QuantLinear", "QuantPlan", "apply_quantization", "dequantize_weight", "install_quant_linears",
    "is_block_linear", "normalize_quantized", "quantize_dit_", "quantize_state_dict", "quantize_weight", "set_quant_mode",
]
