"""Tiny synthetic demo weights, so the demo workflow runs out of the box with nothing downloaded.

python -m lightx2v_nodes.demo MODELS_DIR   (called by scripts/setup.sh for the .run/ base directory)
The weights are random: the demo shows the pipeline working, not a real video.
"""

import os
import sys

from .vae.synthetic import write_random_taehv
from .wan import synthetic

DEMO_DIT = "lightx2v_demo_t2v_tiny.safetensors"
DEMO_TINY_VAE = "lightx2v_demo_taew2_1_random.safetensors"


def write_demo_weights(models_dir: str) -> list[str]:
    written = []
    dit_path = os.path.join(models_dir, "diffusion_models", DEMO_DIT)
    if not os.path.exists(dit_path):
        os.makedirs(os.path.dirname(dit_path), exist_ok=True)
        cfg = synthetic.tiny_config("t2v", dim=256, layers=2, ffn_dim=512)
        synthetic.write_checkpoint(synthetic.random_state_dict(cfg, seed=2026), dit_path, "comfy", "bf16")
        written.append(dit_path)
    vae_path = os.path.join(models_dir, "vae_approx", DEMO_TINY_VAE)
    if not os.path.exists(vae_path):
        os.makedirs(os.path.dirname(vae_path), exist_ok=True)
        write_random_taehv(vae_path, latent_channels=16, dtype="fp16", seed=2026)
        written.append(vae_path)
    return written


if __name__ == "__main__":
    for path in write_demo_weights(sys.argv[1]):
        print(f"[setup] wrote demo weights {path}")
