"""LightX2V Nodes engine: ComfyUI-free Wan DiT, quantization, LoRA, offload, caches, sampling, tiny VAE.

Only `comfy_adapter` imports ComfyUI; everything else is plain PyTorch and testable without it.
"""
