"""The path a GPU user gets by default (attention `auto`, bf16 compute, Triton kernels, weights on the GPU), through
ComfyUI's executor, against native UNETLoader + KSampler on the same file. CUDA only.

The equivalence tests elsewhere pin exact attention in fp32; here `auto` resolves to the 8-bit attention kernel (on
GPUs with fp8 tensor cores), so the bound is the one the 8-bit paths are held to: cosine >= 0.99 and relative error
<= 5e-2 against native bf16 with SDPA. The latent is large enough (5 x 64 x 52 = 16,640 tokens) for self-attention
to take the 8-bit kernel rather than its short-sequence SDPA route.
"""

import logging

import pytest
import torch

from harness import run_prompt
from lightx2v_nodes.wan import synthetic

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def bf16_file(models_dir):
    name = "test_gpu_default_path_bf16.safetensors"
    cfg = synthetic.tiny_config("t2v", dim=256, layers=2, ffn_dim=512)
    synthetic.write_checkpoint(synthetic.random_state_dict(cfg, seed=11), str(models_dir / "diffusion_models" / name),
                               "comfy", "bf16")
    return name


def _prompt(model_node, steps=2):
    return {
        "1": model_node,
        "2": {"class_type": "LightX2VSyntheticConditioning", "inputs": {"seed": 1, "tokens": 12, "dim": 4096}},
        "3": {"class_type": "LightX2VSyntheticConditioning", "inputs": {"seed": 2, "tokens": 12, "dim": 4096}},
        "4": {"class_type": "EmptyHunyuanLatentVideo", "inputs": {"width": 832, "height": 1024, "length": 17,
                                                                   "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0], "seed": 3,
            "steps": steps, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}},
    }


def _compare(ours, native):
    ours, native = ours.float().flatten(), native.float().flatten()
    cosine = torch.nn.functional.cosine_similarity(ours, native, dim=0).item()
    rel = ((ours - native).norm() / native.norm()).item()
    return cosine, rel


@pytest.mark.parametrize("quantization", ["none", "fp8"])
def test_default_gpu_path_matches_native(comfy_nodes, bf16_file, quantization, caplog):
    from lightx2v_nodes.wan.attention import has_fp8_tensor_cores

    with caplog.at_level(logging.INFO):
        ours = run_prompt(_prompt({"class_type": "LightX2VLoadWanDiT", "inputs": {
            "model_name": bf16_file, "dtype": "auto", "attention": "auto", "quantization": quantization}}), outputs=["5"])
    native = run_prompt(_prompt({"class_type": "UNETLoader", "inputs": {"unet_name": bf16_file,
                                                                        "weight_dtype": "default"}}), outputs=["5"])
    dit = ours.output("1").model.diffusion_model
    eight_bit = has_fp8_tensor_cores(torch.device("cuda"))
    assert dit.attention.name == ("lightx2v-int8" if eight_bit else "sdpa")
    assert any(dit.attention.name in record.getMessage() for record in caplog.records)  # the log says what runs
    a, b = ours.output("5")["samples"], native.output("5")["samples"]
    assert a.shape == b.shape == (1, 16, 5, 128, 104) and torch.isfinite(a).all()
    cosine, rel = _compare(a, b)
    assert cosine >= 0.99 and rel <= 5e-2, (quantization, cosine, rel)
