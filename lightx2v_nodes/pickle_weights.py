"""Reading tensors from .pt/.pth pickles without running code from them, for every loader of the pack.

A pickle can name any Python callable to run while it loads. torch.load(weights_only=True) allows only
tensors and plain containers and refuses the rest; the refusal is reported here in one message that says
what the file asked for and what to use instead (PyTorch's own text suggests turning the protection off).
"""

from __future__ import annotations

import os
import pickle
import re

import torch

from .errors import LightX2VError


def _refused_callable(message: str) -> str | None:
    """The callable PyTorch refused ("... unsupported GLOBAL posix.system ..." -> "posix.system")."""
    match = re.search(r"GLOBAL\s+([\w.]+)", message)
    return match.group(1) if match else None


def refused_pickle_message(name: str, detail: str) -> str:
    called = _refused_callable(detail)
    what = f"it asks to call {called} while loading" if called else "it holds Python objects besides tensors"
    return (f"Refused to load '{name}': {what}, and loading that could run code from the file on this machine. "
            "Only tensors are read from .pt/.pth files. Use a .safetensors version of this file.")


def load_weights_pickle(path: str):
    """torch.load with weights_only=True; a code-carrying pickle gets refused_pickle_message."""
    name = os.path.basename(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise LightX2VError(refused_pickle_message(name, str(exc))) from None
