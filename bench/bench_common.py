"""What every benchmark script shares: the repo on sys.path, where results go, the device's name, and
importing the extracted ComfyUI (from --comfyui) for native comparisons."""

import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def results_dir() -> str:
    """$OUT on the GPU machine (what comes back from a device run), else bench/results/."""
    path = os.environ.get("OUT") or os.path.join(ROOT, "bench", "results")
    os.makedirs(path, exist_ok=True)
    return path


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def use_comfyui(comfy_dir: str, cpu: bool) -> None:
    """Put ComfyUI on sys.path and pick its device before comfy.model_management is imported (it decides then)."""
    if comfy_dir not in sys.path:
        sys.path.insert(0, comfy_dir)
    import comfy.cli_args

    comfy.cli_args.args.cpu = cpu
