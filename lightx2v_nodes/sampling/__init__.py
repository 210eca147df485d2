"""Sampling: LightX2V's distilled step schedules and changing-resolution plans (ComfyUI-free), and the
adapter that runs them through ComfyUI's own samplers (comfy_sampling.py, the only module here that
imports comfy)."""
