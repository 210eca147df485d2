"""TAEHV tiny VAE for Wan latents: weights (taehv.py), fused streaming layers (stream_ops.py), the
memory-budgeted runner (runner.py), file loading (checkpoint.py), random files (synthetic.py) and the
ComfyUI VAE adapter (comfy_vae.py, the only module here that imports ComfyUI)."""
