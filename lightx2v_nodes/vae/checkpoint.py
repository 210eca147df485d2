"""Reading TAEHV files (taew2_1, lighttaew2_1, taew2_2; .safetensors or .pth) into a TAEHV module.

What ComfyUI 0.3.75 gets wrong and this does not: any file name works (nothing is inferred from it),
and the dtype a file is stored in changes nothing (Wan latents are decoded as they are; ComfyUI takes
fp16 16-channel files for HunyuanVideo's taehv and rescales the latents).
"""

from __future__ import annotations

import logging
import os

import torch

from ..errors import LightX2VError
from ..pickle_weights import load_weights_pickle
from .taehv import PATCH_SIZES, TAEHV, TaehvSpec

log = logging.getLogger("lightx2v_nodes")

# Prefixes some exporters put in front of every key.
KEY_PREFIXES = ("first_stage_model.", "vae.", "taehv.", "model.")
# Decoder TGrow layers: index -> the module's kernel rows (channels x time stride).
TGROW_ROWS = {7: 256, 13: 256, 19: 128}
TORCH_EXTENSIONS = (".pth", ".pt", ".ckpt", ".bin")


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """All tensors of a .safetensors file, or of a .pth/.pt file loaded as weights only (no code runs)."""
    name = os.path.basename(path)
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            sd = load_file(path, device="cpu")
        elif path.endswith(TORCH_EXTENSIONS):
            sd = load_weights_pickle(path)
            if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
                sd = sd["state_dict"]
        else:
            raise LightX2VError(f"'{name}': tiny VAE files must be .safetensors or .pth/.pt.")
    except LightX2VError:
        raise
    except Exception as exc:  # a damaged or truncated file
        raise LightX2VError(f"Could not read '{name}' as weights ({type(exc).__name__}: {str(exc)[:200]}): the file "
                            "is damaged or incomplete, e.g. an interrupted download. Download it again.") from None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise LightX2VError(f"'{name}' does not hold a flat dict of tensors, so it is not a TAEHV weight file.")
    return sd


def _strip_prefix(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for prefix in KEY_PREFIXES:
        if sd and all(k.startswith(prefix) for k in sd):
            return {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def _not_taehv(sd: dict[str, torch.Tensor], name: str) -> LightX2VError:
    keys = sorted(sd)[:4]
    if any(k.startswith("decoder.middle.") or k.startswith("decoder.head.") for k in sd):
        what = "This is a full Wan VAE: load it with the native Load VAE node (from models/vae)."
    elif any(k.startswith(("taesd_decoder.", "decoder.layers.")) for k in sd) or "decoder.1.weight" not in sd:
        what = "It looks like another kind of model (an image TAESD decoder or not a VAE at all)."
    else:
        what = "Its decoder does not have TAEHV's 23 layers."
    return LightX2VError(
        f"'{name}' is not a TAEHV tiny video VAE (taew2_1, lighttaew2_1 or taew2_2): it has no "
        f"'decoder.22.weight' (first keys: {keys}). {what} Get taew2_1.safetensors / lighttaew2_1.safetensors "
        f"(Wan2.1) or taew2_2.safetensors (Wan2.2 5B) and put it in models/vae_approx.")


def detect_spec(sd: dict[str, torch.Tensor], name: str = "the file") -> TaehvSpec:
    if "decoder.22.weight" not in sd or "decoder.1.weight" not in sd:
        raise _not_taehv(sd, name)
    channels = sd["decoder.1.weight"].shape[1]
    if channels == 32:
        raise LightX2VError(f"'{name}' is HunyuanVideo 1.5's tiny VAE (lighttaehy1_5, 32 latent channels), not a Wan "
                            f"one. Use taew2_1 / lighttaew2_1 for Wan2.1 or taew2_2 for Wan2.2.")
    if channels not in PATCH_SIZES:
        raise LightX2VError(f"'{name}' is a TAEHV for {channels}-channel latents; Wan uses 16 (taew2_1, lighttaew2_1) "
                            f"or 48 (taew2_2). Use one of those files.")
    out_rows = sd["decoder.22.weight"].shape[0]
    if out_rows != 3 * PATCH_SIZES[channels] ** 2:
        raise LightX2VError(f"'{name}' has {channels} latent channels but {out_rows} output channels; a Wan TAEHV has "
                            f"{3 * PATCH_SIZES[channels] ** 2}. The file does not match any known tiny VAE.")
    return TaehvSpec(channels, has_encoder=any(k.startswith("encoder.") for k in sd))


def trim_tgrow_kernels(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A TGrow kernel with more rows than the module's keeps its last rows (the last time step's outputs)."""
    out = dict(sd)
    for index, rows in TGROW_ROWS.items():
        key = f"decoder.{index}.conv.weight"
        if key in out and out[key].shape[0] > rows:
            out[key] = out[key][-rows:]
    return out


def build_taehv(sd: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32, device="cpu",
                name: str = "the file") -> TAEHV:
    """A TAEHV holding the state dict's weights in `dtype` on `device` (the dict is not modified)."""
    sd = _strip_prefix(sd)
    spec = detect_spec(sd, name)
    sd = trim_tgrow_kernels(sd)
    with torch.device("meta"):
        model = TAEHV(spec)
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd]
    if missing:
        raise LightX2VError(f"'{name}' is missing {len(missing)} TAEHV weights (e.g. {missing[:3]}); the file is "
                            f"incomplete or from another architecture. Re-download it.")
    wrong = [f"{k}: file {tuple(sd[k].shape)}, expected {tuple(v.shape)}" for k, v in expected.items() if sd[k].shape != v.shape]
    if wrong:
        raise LightX2VError(f"'{name}' has TAEHV keys with unexpected shapes ({'; '.join(wrong[:3])}); it is not a "
                            f"Wan tiny VAE layout this loader knows (taew2_1, lighttaew2_1, taew2_2).")
    extra = [k for k in sd if k not in expected]
    if extra:
        log.info("LightX2V tiny VAE: ignoring %d unknown tensors in %s (e.g. %s)", len(extra), name, extra[0])
    weights = {k: sd[k].to(device=device, dtype=dtype) for k in expected}
    model.load_state_dict(weights, strict=True, assign=True)
    model.requires_grad_(False)
    return model.eval()


def load_taehv(path: str, dtype: torch.dtype = torch.float32, device="cpu") -> TAEHV:
    name = os.path.basename(path)
    model = build_taehv(read_state_dict(path), dtype, device, name)
    log.info("LightX2V: loaded tiny VAE %s: %s, %s, %s", name, model.spec.family,
             "encoder + decoder" if model.spec.has_encoder else "decoder only", str(dtype).replace("torch.", ""))
    return model
