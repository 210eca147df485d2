"""Offload scheduler: block/phase weight streaming on a copy stream, lazy per-block loading, VRAM planner."""

from .scheduler import OffloadScheduler, OffloadSettings
from .units import GRANULARITIES, split_units

__all__ = ["GRANULARITIES", "OffloadScheduler", "OffloadSettings", "split_units"]
