"""Every LoRA key family in use for Wan, mapped onto the DiT's parameters (original Wan names).

Families: `lora_up/lora_down` (+ optional `.alpha`), PEFT/diffusers `lora_A/lora_B` (with diffusers module
names, `transformer.` prefix), kohya `lora_unet_blocks_0_self_attn_q`, and full diffs `.diff` (to `.weight`,
or to the named parameter itself), `.diff_b` (to `.bias`), `.diff_m` (to a block's `modulation`). Prefixes
`diffusion_model.`, `model.diffusion_model.`, `transformer.`, `base_model.model.` or none.
The result is a LoraPlan: low-rank and full-diff patches keyed by parameter name, checked against the
model's shapes, plus the keys that matched nothing.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from ..errors import LightX2VError
from ..wan.keys import diffusers_to_original, original_to_diffusers, strip_prefix

EXTRA_PREFIXES = ("base_model.model.",)  # PEFT saves without the diffusers `transformer.` prefix
KOHYA_PREFIX = "lora_unet_"

# suffix -> (naming family, role in the pair): "up" is [out, rank], "down" is [rank, in].
LOW_RANK_SUFFIXES = {
    ".lora_up.weight": ("lora_up/down", "up"), ".lora_down.weight": ("lora_up/down", "down"),
    ".lora_B.weight": ("lora_A/B", "up"), ".lora_A.weight": ("lora_A/B", "down"),
    ".lora_B.default.weight": ("lora_A/B.default", "up"), ".lora_A.default.weight": ("lora_A/B.default", "down"),
    ".lora.up.weight": ("lora.up/down", "up"), ".lora.down.weight": ("lora.up/down", "down"),
}
ALPHA_SUFFIX = ".alpha"
# full-diff suffix -> the parameter of the module it is added to (None: the key names the parameter itself).
DIFF_SUFFIXES = {".diff_b": "bias", ".diff_m": "modulation", ".diff": "weight"}
UNSUPPORTED_SUFFIXES = (".dora_scale", ".hada_w1_a", ".lokr_w1", ".oft_blocks")


@dataclasses.dataclass
class LowRankPatch:
    """W += strength * scale * up @ down, scale = alpha / rank (1 without alpha)."""

    target: str  # parameter name, original Wan layout (e.g. blocks.0.self_attn.q.weight)
    up: torch.Tensor  # [out, rank] (conv LoRAs: [out, rank, 1, 1, 1])
    down: torch.Tensor  # [rank, in] (conv LoRAs: [rank, in, kt, kh, kw])
    alpha: float | None
    source: str  # the up key, for messages

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    @property
    def scale(self) -> float:
        return 1.0 if self.alpha is None else self.alpha / self.rank

    @property
    def module(self) -> str:
        return self.target.rsplit(".", 1)[0]


@dataclasses.dataclass
class DiffPatch:
    """P += strength * diff (already reshaped to the parameter's shape)."""

    target: str
    diff: torch.Tensor
    source: str


@dataclasses.dataclass
class LoraPlan:
    low_rank: list[LowRankPatch]
    diffs: list[DiffPatch]
    unmatched: list[str]
    total_keys: int

    @property
    def targets(self) -> set[str]:
        return {p.target for p in self.low_rank} | {p.target for p in self.diffs}


def _strip(key: str) -> str:
    key = strip_prefix(key)
    for prefix in EXTRA_PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def _split_suffix(key: str) -> tuple[str, str, str] | None:
    """(module or parameter path, suffix, kind) with kind "up", "down", "alpha" or "diff"."""
    for suffix, (_, role) in LOW_RANK_SUFFIXES.items():
        if key.endswith(suffix):
            return key[: -len(suffix)], suffix, role
    if key.endswith(ALPHA_SUFFIX):
        return key[: -len(ALPHA_SUFFIX)], ALPHA_SUFFIX, "alpha"
    for suffix in DIFF_SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)], suffix, "diff"
    return None


class _ModuleNames:
    """Resolves a LoRA's module path (original, diffusers or kohya spelling) to an original module path."""

    def __init__(self, param_shapes: dict[str, tuple[int, ...]]):
        self.params = param_shapes
        self.modules = {k.rsplit(".", 1)[0] for k in param_shapes if "." in k}
        self.kohya = {}
        for module in sorted(self.modules):
            self.kohya.setdefault(module.replace(".", "_"), module)
            self.kohya.setdefault(original_to_diffusers(module).replace(".", "_"), module)

    def resolve(self, path: str) -> str:
        if path.startswith(KOHYA_PREFIX):
            # Wan Fun LoRAs write `lora_unet__blocks_...` (double underscore).
            return self.kohya.get(path[len(KOHYA_PREFIX):].lstrip("_"), path)
        if path in self.modules or path in self.params:
            return path
        mapped = diffusers_to_original(path)
        return mapped if mapped in self.modules or mapped in self.params else path


def _shape(t) -> list[int]:
    return list(t.shape)


def _check_low_rank(patch: LowRankPatch, weight_shape: tuple[int, ...], down_key: str) -> None:
    up, down = patch.up, patch.down
    out, fan_in = weight_shape[0], math.prod(weight_shape[1:])
    if up.dim() < 2 or down.dim() < 2:
        raise LightX2VError(f"LoRA key '{patch.source}' is not a matrix (shape {_shape(up)}): the file is damaged.")
    if up.shape[1] != down.shape[0]:
        raise LightX2VError(
            f"LoRA key '{patch.source}' has rank {up.shape[1]} but '{down_key}' has rank {down.shape[0]}: "
            "the pair does not fit together (damaged or mixed-up file)."
        )
    if up.shape[0] != out or down[0].numel() != fan_in:
        raise LightX2VError(
            f"LoRA key '{patch.source}' does not fit the model: up {_shape(up)} x down {_shape(down)} cannot "
            f"be added to {patch.target} of shape {list(weight_shape)}. The LoRA was made for a different "
            "model (e.g. Wan 1.3B vs 14B, or T2V vs I2V): pick the LoRA that matches this model."
        )


def _diff_patch(key: str, target: str, diff: torch.Tensor, shape: tuple[int, ...]) -> DiffPatch:
    if diff.numel() != torch.Size(shape).numel():
        raise LightX2VError(
            f"LoRA key '{key}' has shape {_shape(diff)} but {target} has shape {list(shape)}. The LoRA was "
            "made for a different model (e.g. Wan 1.3B vs 14B): pick the LoRA that matches this model."
        )
    return DiffPatch(target, diff.reshape(shape), key)


def plan_lora(lora: dict[str, torch.Tensor], param_shapes: dict[str, tuple[int, ...]]) -> LoraPlan:
    """Match every key of a LoRA state dict to the model's parameters (original Wan names -> shapes)."""
    if not lora:
        raise LightX2VError("The LoRA file holds no tensors: it is empty or damaged. Download it again.")
    names = _ModuleNames(param_shapes)
    pairs: dict[tuple[str, str], dict[str, str]] = {}  # (module, family) -> {"up": key, "down": key}
    alphas: dict[str, str] = {}  # module -> alpha key
    diffs: list[DiffPatch] = []
    unmatched: list[str] = []
    for key in lora:
        if key.endswith(UNSUPPORTED_SUFFIXES):
            raise LightX2VError(
                f"LoRA key '{key}' belongs to a DoRA/LoHa/LoKr/OFT adapter, which LightX2V Apply LoRA does "
                "not apply. Use ComfyUI's LoraLoaderModelOnly for this file."
            )
        split = _split_suffix(_strip(key))
        if split is None:
            unmatched.append(key)
            continue
        path, suffix, kind = split
        module = names.resolve(path)
        if kind == "diff":
            target = f"{module}.{DIFF_SUFFIXES[suffix]}"
            if target not in param_shapes and suffix == ".diff" and module in param_shapes:
                target = module  # ComfyUI's generic form: `<parameter>.diff`
            if target in param_shapes:
                diffs.append(_diff_patch(key, target, lora[key], param_shapes[target]))
            else:
                unmatched.append(key)
        elif f"{module}.weight" not in param_shapes:
            unmatched.append(key)
        elif kind == "alpha":
            alphas[module] = key
        else:
            pairs.setdefault((module, LOW_RANK_SUFFIXES[suffix][0]), {})[kind] = key
    low_rank = [_low_rank_patch(lora, module, keys, alphas, param_shapes) for (module, _), keys in pairs.items()]
    used_alphas = {alphas[p.module] for p in low_rank if p.module in alphas}
    unmatched += [k for k in alphas.values() if k not in used_alphas]
    if not low_rank and not diffs:
        raise LightX2VError(_no_match_message(list(lora)))
    return LoraPlan(low_rank, diffs, unmatched, len(lora))


def _low_rank_patch(lora, module, keys, alphas, param_shapes) -> LowRankPatch:
    if "up" not in keys or "down" not in keys:
        have = keys.get("up") or keys.get("down")
        missing = "down (lora_down / lora_A)" if "down" not in keys else "up (lora_up / lora_B)"
        raise LightX2VError(f"LoRA key '{have}' has no matching {missing} tensor: the file is incomplete or damaged.")
    alpha_key = alphas.get(module)
    alpha = float(lora[alpha_key].float().flatten()[0]) if alpha_key else None
    target = f"{module}.weight"
    patch = LowRankPatch(target, lora[keys["up"]], lora[keys["down"]], alpha, keys["up"])
    _check_low_rank(patch, param_shapes[target], keys["down"])
    return patch


def _no_match_message(keys: list[str]) -> str:
    keys = sorted(keys)
    hints = [
        ("double_blocks", "Flux or HunyuanVideo"),
        ("single_blocks", "Flux or HunyuanVideo"),
        ("transformer_blocks", "a DiT other than Wan (e.g. LTX-Video, Qwen-Image, Mochi)"),
        ("down_blocks", "Stable Diffusion / SDXL"),
        ("input_blocks", "Stable Diffusion / SDXL"),
        ("lora_te", "a text encoder"),
    ]
    what = next((name for needle, name in hints if any(needle in k for k in keys)), None)
    sample = ", ".join(keys[:3])
    looks = f" It looks like a LoRA for {what}." if what else ""
    return (
        f"None of the LoRA's {len(keys)} keys matches a parameter of this Wan model (first keys: {sample}).{looks} "
        "Applying it would do nothing: pick a LoRA made for Wan2.1/2.2 of this size and task."
    )
