"""How a DiT was loaded, kept on it so that worker processes can load the very same model from the file."""

from __future__ import annotations

import dataclasses
import json

import torch

from ..errors import LightX2VError
from ..quant import apply_quantization, install_quant_linears
from ..quant.formats import QUANTIZED_DTYPES, SCALE_SUFFIX
from ..wan.attention import choose_attention
from ..wan.checkpoint import load_wan_checkpoint
from ..wan.model import WanDiT

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclasses.dataclass(frozen=True)
class LoadSpec:
    """path: the checkpoint file or per-block folder; dtype: the resolved weight dtype (torch name, e.g. "bfloat16");
    compute_dtype: where weights are cast per layer at run time (ComfyUI's manual cast), else None;
    attention: the resolved backend; quantization: the loader's choice (QUANTIZATION_CHOICES)."""

    path: str
    dtype: str
    attention: str
    quantization: str = "auto"
    compute_dtype: str | None = None

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "LoadSpec":
        return cls(**json.loads(text))


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _target_dtype(key: str, value: torch.Tensor, dtype: torch.dtype) -> torch.dtype:
    """The loader's rule: 8-bit weights and their scales as stored, the patch embedding float32, the rest `dtype`."""
    if value.dtype in QUANTIZED_DTYPES or key.endswith(SCALE_SUFFIX):
        return value.dtype
    return torch.float32 if key.startswith("patch_embedding.") else dtype


def build_dit(spec: LoadSpec, device) -> WanDiT:
    """A plain-PyTorch WanDiT holding the file's weights as LightX2V Load Wan DiT converts them, on `device`.

    With ComfyUI's manual cast (weights stored in one dtype, computed in another) the weights are kept in the compute
    dtype: the values the layers compute with are the same, the casts happen once.
    """
    weight_dtype = _DTYPES[spec.dtype]
    state_dict, cfg, _ = load_wan_checkpoint(spec.path)
    state_dict, plan = apply_quantization(state_dict, spec.quantization, weight_dtype)
    compute = _DTYPES[spec.compute_dtype] if spec.compute_dtype else weight_dtype
    with torch.device("meta"):
        dit = WanDiT(**cfg.unet_config(), dtype=compute)
    dit.set_attention(choose_attention(spec.attention, device, compute))
    if plan is not None:
        install_quant_linears(dit, plan.fmt, plan.mode, bias_dtype=weight_dtype)
    weights = {}
    for key in list(state_dict):
        value = state_dict.pop(key)
        target = _target_dtype(key, value, weight_dtype)
        if target == weight_dtype:
            target = compute
        weights[key] = value.to(device=device, dtype=target)
    try:
        dit.load_state_dict(weights, strict=True, assign=True)
    except RuntimeError as exc:
        raise LightX2VError(f"A worker could not load {spec.path}: {str(exc)[:400]}") from None
    dit.quant_plan = plan
    return dit.requires_grad_(False).eval()
