"""LoRA files for the Wan DiT: every key family mapped onto the model's parameters, exact merges, and
side-branch application (the low-rank path kept out of the weights). ComfyUI-free except comfy_lora.py."""
