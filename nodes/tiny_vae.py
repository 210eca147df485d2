"""LightX2V Load Tiny VAE (a native VAE running our TAEHV) and LightX2V Tiny VAE Decode."""

from comfy_api.latest import io

from ..lightx2v_nodes.vae.comfy_vae import DTYPES, decode_to_images, load_tiny_vae, tiny_vae_choices
from ..lightx2v_nodes.vae.taehv import DECODE_MODES
from .base import LightX2VNode

MODE_HELP = ("chunked: as many frames per layer as fit a small memory budget (fast, under 1 GiB at 480p/81 frames); "
             "parallel: all frames per layer (fast, memory grows with the length); "
             "sequential: one frame at a time (least memory, slowest). All give the same frames.")


class LoadTinyVAE(LightX2VNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LightX2VLoadTinyVAE",
            display_name="LightX2V Load Tiny VAE",
            category="LightX2V",
            description="Loads a TAEHV tiny VAE for Wan latents (taew2_1 / lighttaew2_1 for Wan2.1, taew2_2 for Wan2.2 "
                        "5B) as a native VAE: use it with VAE Decode, VAE Encode, WanImageToVideo or LightX2V Tiny VAE "
                        "Decode. Decodes 81 frames at 480p in a fraction of the full Wan VAE's time and memory, with "
                        "somewhat softer detail.",
            inputs=[
                io.Combo.Input("vae_name", options=tiny_vae_choices(),
                               tooltip="A file in models/vae_approx, any name (.safetensors, or .pth loaded as weights "
                                       "only). The kind (16 or 48 latent channels) is read from the tensors."),
                io.Combo.Input("dtype", options=["auto", *DTYPES], default="auto",
                               tooltip="Compute dtype. auto = fp16 on GPUs that run it well (TAEHV's own precision), "
                                       "else bf16 or fp32."),
                io.Combo.Input("decode_mode", options=list(DECODE_MODES), default="chunked", tooltip=MODE_HELP),
            ],
            outputs=[io.Vae.Output(tooltip="A native VAE for Wan video latents.")],
        )

    @classmethod
    def run(cls, vae_name, dtype, decode_mode):
        return io.NodeOutput(load_tiny_vae(vae_name, dtype, decode_mode))


class TinyVAEDecode(LightX2VNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LightX2VTinyVAEDecode",
            display_name="LightX2V Tiny VAE Decode",
            category="LightX2V",
            description="Decodes a Wan video latent with the tiny VAE into frames (T latent frames give 4T-3 images), "
                        "with a progress bar. Gives the same frames as the native VAE Decode with the same VAE.",
            inputs=[
                io.Latent.Input("samples", tooltip="A Wan video latent (e.g. from the sampler)."),
                io.Vae.Input("vae", tooltip="The VAE from LightX2V Load Tiny VAE."),
                io.Combo.Input("decode_mode", options=["as loaded", *DECODE_MODES], default="as loaded",
                               tooltip="Override the loader's decode mode for this decode. " + MODE_HELP),
            ],
            outputs=[io.Image.Output(tooltip="The decoded frames as an image batch.")],
        )

    @classmethod
    def run(cls, samples, vae, decode_mode):
        mode = None if decode_mode == "as loaded" else decode_mode
        return io.NodeOutput(decode_to_images(vae, samples["samples"], mode))


NODES = [LoadTinyVAE, TinyVAEDecode]
