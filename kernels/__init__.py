"""Triton kernels for the quantized linear layers (and the LayerNorm + quantization feeding them), 8-bit attention, LoRA side branches and the fused q/k RMSNorm + RoPE, each next to its plain-PyTorch reference.

Importing this package never fails: without Triton, `TRITON_AVAILABLE` is False and only the references
exist. `TRITON_INTERPRET=1` (set before this package is imported) runs the kernels on the CPU for tests.
The 8-bit quantization formula and its constants (common.py) are exported for the engine's weight quantization.
"""

from .common import FP8_MAX, MIN_ABSMAX, QMAX, TRITON_AVAILABLE, absmax_scale, quantize_rows, quantize_with_scale
from .attention_8bit import (ATTENTION_TILES, attention8, attention8_reference, quantize_kv, quantize_qkv,
                             quantize_qkv_reference)
from .attention_8bit_sparse import (BlockTable, attention8_sparse, attention8_sparse_reference, block_table,
                                    table_tiles)
from .lowrank_add import lowrank_add_, lowrank_add_reference
from .act_quant import (gelu_quantize_per_token, gelu_quantize_per_token_reference, quantize_per_token,
                        quantize_per_token_reference)
from .norm_quant import layer_norm_quantize, layer_norm_quantize_reference
from .scaled_gemm import scaled_gemm, scaled_gemm_reference
from .norm_rope import (rms_norm_rope, rms_norm_rope_column_sums, rms_norm_rope_column_sums_reference,
                        rms_norm_rope_int8, rms_norm_rope_int8_reference, rms_norm_rope_reference)

__all__ = [
    "TRITON_AVAILABLE", "FP8_MAX", "MIN_ABSMAX", "QMAX", "absmax_scale", "quantize_rows", "quantize_with_scale",
    "ATTENTION_TILES", "attention8", "attention8_reference", "quantize_kv", "quantize_qkv", "quantize_qkv_reference",
    "BlockTable", "attention8_sparse", "attention8_sparse_reference", "block_table", "table_tiles",
    "lowrank_add_", "lowrank_add_reference", "gelu_quantize_per_token", "gelu_quantize_per_token_reference",
    "quantize_per_token", "quantize_per_token_reference", "layer_norm_quantize", "layer_norm_quantize_reference",
    "scaled_gemm", "scaled_gemm_reference", "rms_norm_rope", "rms_norm_rope_reference", "rms_norm_rope_int8",
    "rms_norm_rope_int8_reference", "rms_norm_rope_column_sums", "rms_norm_rope_column_sums_reference",
]
