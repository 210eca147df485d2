"""LightX2V Synthetic Conditioning: seeded random text conditioning, standing in for a text encoder.

ComfyUI ships no UMT5 tokenizer (it lives inside the text-encoder checkpoint), so tests and the
out-of-the-box demo use this node instead of CLIPLoader + CLIPTextEncode. It is not for real videos.
"""

from comfy_api.latest import io

from ..lightx2v_nodes.synthetic_conditioning import synthetic_text_embedding
from .base import LightX2VNode


class SyntheticConditioning(LightX2VNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LightX2VSyntheticConditioning",
            display_name="LightX2V Synthetic Conditioning (test)",
            category="LightX2V/testing",
            description="Random text conditioning from a seed, for demos and tests without a text encoder. "
                        "Use CLIPLoader (umt5) + CLIPTextEncode for real prompts.",
            inputs=[
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1, tooltip="Same seed, same conditioning."),
                io.Int.Input("tokens", default=16, min=1, max=512, tooltip="Number of text tokens."),
                io.Int.Input("dim", default=4096, min=16, max=8192, tooltip="Embedding width (Wan's umt5 gives 4096)."),
            ],
            outputs=[io.Conditioning.Output()],
        )

    @classmethod
    def run(cls, seed, tokens, dim):
        return io.NodeOutput([[synthetic_text_embedding(seed, tokens, dim), {}]])


NODES = [SyntheticConditioning]
