"""Quantized weight formats of Wan DiT files, and the per-channel quantization math of LightX2V's
tools/convert/converter.py (scale = row absmax / 127 or / 448).

Internally a quantized block linear is always `<name>.weight` (int8 or float8_e4m3fn [out, in]) plus
`<name>.weight_scale` (float32 [out, 1]), which is the LightX2V file format. ComfyUI's scaled-fp8 files
(one `scale_weight` per tensor + a top-level `scaled_fp8` marker) and plain fp8 files (no scales) are
brought to that form on load; any other quantized tensor (outside the block linears) is dequantized.
"""

from __future__ import annotations

import re

import torch

from ..errors import LightX2VError
from ..kernel_loader import load_kernels

FORMATS = {"int8": torch.int8, "fp8": torch.float8_e4m3fn}
FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
QUANTIZED_DTYPES = (torch.int8, *FP8_DTYPES)

# Only these 2-D block weights are ever quantized; everything else stays in the compute dtype.
BLOCK_LINEAR = re.compile(
    r"^blocks\.\d+\.(self_attn\.(q|k|v|o)|cross_attn\.(q|k|v|o|k_img|v_img)|ffn\.(0|2))$"
)
SCALE_SUFFIX = ".weight_scale"
COMFY_SCALE_SUFFIX = ".scale_weight"
COMFY_INPUT_SCALE_SUFFIX = ".scale_input"
COMFY_MARKER = "scaled_fp8"


def is_block_linear(module_name: str) -> bool:
    """`blocks.3.self_attn.q` yes; `blocks.3.modulation`, `head.head`, `text_embedding.0` no."""
    return BLOCK_LINEAR.match(module_name) is not None


def format_of_dtype(dtype: torch.dtype) -> str:
    return "int8" if dtype == torch.int8 else "fp8"


def quantize_weight(weight: torch.Tensor, fmt: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-output-channel symmetric quantization, kernels/common.py's formula (absmax / 127 for int8, / 448 for fp8):
    (q [out, in], scale [out, 1] float32)."""
    return load_kernels().quantize_rows(weight, FORMATS[fmt])


def dequantize_weight(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return (q.float() * scale.float()).to(dtype)


def detect_file_format(state_dict: dict[str, torch.Tensor]) -> str | None:
    """'lightx2v', 'comfy_scaled_fp8', 'plain_fp8' or None (not quantized), for original-layout keys."""
    if any(k.endswith(SCALE_SUFFIX) for k in state_dict):
        return "lightx2v"
    if COMFY_MARKER in state_dict or any(k.endswith(COMFY_SCALE_SUFFIX) for k in state_dict):
        return "comfy_scaled_fp8"
    if any(v.dtype in QUANTIZED_DTYPES and k.endswith(".weight") for k, v in state_dict.items()):
        return "plain_fp8"
    return None


def _scale_of(state_dict, module: str, weight: torch.Tensor, file_format: str) -> torch.Tensor:
    """The [out, 1] float32 scale of one quantized weight, whatever the file's format."""
    rows = weight.shape[0]
    if file_format == "lightx2v":
        scale = state_dict.get(module + SCALE_SUFFIX)
        if scale is None:
            raise LightX2VError(
                f"The quantized weight '{module}.weight' ({str(weight.dtype).replace('torch.', '')}) has no "
                f"'{module}{SCALE_SUFFIX}' in this LightX2V-format file: the file is incomplete or was written by a "
                "broken converter. Convert the original bf16 model again (LightX2V Convert Wan DiT or "
                "`python -m lightx2v_nodes.convert`)."
            )
        if scale.numel() == 1:
            return scale.float().reshape(1, 1).expand(rows, 1).clone()
        if scale.numel() != rows:
            raise LightX2VError(
                f"'{module}{SCALE_SUFFIX}' has {scale.numel()} values but '{module}.weight' has {rows} rows; "
                "expected one scale per output channel [out, 1]."
            )
        return scale.float().reshape(rows, 1)
    if file_format == "comfy_scaled_fp8":
        scale = state_dict.get(module + COMFY_SCALE_SUFFIX)
        if scale is None:
            raise LightX2VError(
                f"The fp8 weight '{module}.weight' has no '{module}{COMFY_SCALE_SUFFIX}' although the file is a "
                "ComfyUI scaled-fp8 checkpoint: the file is damaged. Download it again."
            )
        return scale.float().reshape(-1)[:1].reshape(1, 1).expand(rows, 1).clone()
    if weight.dtype == torch.int8:
        raise LightX2VError(
            f"'{module}.weight' is int8 but the file has no scales (no '*{SCALE_SUFFIX}' tensors): int8 weights "
            "cannot be used without them. Use a complete LightX2V int8 file or convert the bf16 model again."
        )
    return torch.ones(rows, 1)  # plain fp8: the stored values are the weights


def normalize_quantized(state_dict: dict[str, torch.Tensor], compute_dtype: torch.dtype = torch.bfloat16):
    """Bring any quantized file to the internal form; returns (state dict, 'int8'|'fp8'|None).

    Block linears keep their 8-bit weight plus a float32 [out, 1] `weight_scale`; every other quantized
    tensor is dequantized to `compute_dtype`; markers and input scales are dropped.
    """
    file_format = detect_file_format(state_dict)
    if file_format is None:
        return state_dict, None
    out = {}
    formats = set()
    for key, value in state_dict.items():
        if key == COMFY_MARKER or key.endswith((SCALE_SUFFIX, COMFY_SCALE_SUFFIX, COMFY_INPUT_SCALE_SUFFIX)):
            continue
        if value.dtype not in QUANTIZED_DTYPES:
            out[key] = value
            continue
        module = key[: -len(".weight")] if key.endswith(".weight") else None
        if module is None or value.dim() != 2:
            raise LightX2VError(f"Unexpected quantized tensor '{key}' {tuple(value.shape)} {value.dtype}: only linear weights can be 8-bit.")
        scale = _scale_of(state_dict, module, value, file_format)
        if is_block_linear(module) and value.dtype in (torch.int8, torch.float8_e4m3fn):
            out[key] = value
            out[module + SCALE_SUFFIX] = scale
            formats.add(format_of_dtype(value.dtype))
        else:  # e.g. e5m2, or a head/embedding linear quantized by another tool
            out[key] = dequantize_weight(value, scale, compute_dtype)
    _check_no_orphan_scales(state_dict, out)
    if len(formats) > 1:
        raise LightX2VError("This file mixes int8 and fp8 block weights; convert it again from the bf16 model with one format.")
    return out, (formats.pop() if formats else None)


def _check_no_orphan_scales(original, normalized) -> None:
    orphans = [k for k in original if k.endswith(SCALE_SUFFIX) and k[: -len("_scale")] not in normalized]
    if orphans:
        raise LightX2VError(f"Scales without weights in this file, e.g. '{orphans[0]}': the file is damaged.")


def quantize_state_dict(state_dict: dict[str, torch.Tensor], fmt: str, progress=None) -> dict[str, torch.Tensor]:
    """Quantize every float block linear of an original-layout state dict (8-bit ones and the rest pass through).

    The input dict is emptied as it goes, so each float weight can be freed once quantized.
    """
    out = {}
    keys = list(state_dict)
    for i, key in enumerate(keys):
        value = state_dict.pop(key)
        module = key[: -len(".weight")]
        if key.endswith(".weight") and is_block_linear(module) and value.dim() == 2 and value.dtype not in QUANTIZED_DTYPES:
            out[key], out[module + SCALE_SUFFIX] = quantize_weight(value, fmt)
        else:
            out[key] = value
        if progress:
            progress(i + 1, len(keys))
    return out


def dequantize_state_dict(state_dict: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The inverse for an internal-form state dict: every quantized block linear back to `dtype`."""
    out = {}
    for key, value in state_dict.items():
        if key.endswith(SCALE_SUFFIX):
            continue
        scale = state_dict.get(key[: -len(".weight")] + SCALE_SUFFIX) if key.endswith(".weight") else None
        out[key] = dequantize_weight(value, scale, dtype) if scale is not None else value
    return out
