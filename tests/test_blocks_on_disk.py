"""Loader `keep_blocks_on_disk`: a per-block folder loaded without its block weights, streamed by the offload node.

Checked through ComfyUI's executor on the CPU: the loaded model holds one-element placeholders for every block
tensor (bf16 and an int8 folder), sampling through LightX2V Offload (no lazy_load_dir given: the loader's folder
is used) equals sampling the fully loaded model bit for bit, and the misuses are clear errors in the UI
(no offload node, mode none, a single file, a quantization other than auto).
"""

import pytest
import torch

from harness import run_prompt
from lightx2v_nodes.wan import synthetic
from test_offload_nodes import loader, offload, prompt


@pytest.fixture(scope="module")
def folders(models_dir):
    cfg = synthetic.tiny_config("t2v", layers=3)
    sd = synthetic.random_state_dict(cfg, seed=11)
    names = {}
    for fmt in ("bf16", "int8"):
        names[fmt] = f"test_blocks_on_disk_{fmt}"
        target = str(models_dir / "diffusion_models" / names[fmt])
        if fmt == "bf16":
            synthetic.write_checkpoint(sd, target, "blocks", "bf16")
        else:
            from lightx2v_nodes.converter.pipeline import convert_checkpoint
            single = str(models_dir / "diffusion_models" / "test_blocks_on_disk_source.safetensors")
            synthetic.write_checkpoint(sd, single, "comfy", "bf16")
            convert_checkpoint(single, target, "int8", save_by_block=True)
    return names


def on_disk_loader(name, **kw):
    node = loader(name + "/", **kw)
    node["inputs"]["keep_blocks_on_disk"] = True
    return node


@pytest.mark.parametrize("fmt", ["bf16", "int8"])
def test_streamed_from_disk_equals_fully_loaded(comfy_nodes, folders, fmt):
    name = folders[fmt]
    loaded = run_prompt({"m": on_disk_loader(name)}, outputs=["m"]).output("m").model.diffusion_model
    blocks = loaded.blocks.state_dict()
    assert all(t.untyped_storage().nbytes() <= t.element_size() for t in blocks.values() if t.numel() > 1)
    held = sum(t.untyped_storage().nbytes() for t in blocks.values())
    assert held < 4096, held  # bytes: the model holds no block weights
    reference = run_prompt(prompt({"m": loader(name + "/"), "o": offload(["m", 0], resident=0)}, ["o", 0]),
                           outputs=["ks"]).output("ks")["samples"]
    # Two offload nodes on the same loaded model, one keeping a block resident: each sampler equals the reference.
    nodes = prompt({"m": on_disk_loader(name), "o": offload(["m", 0], resident=1), "o2": offload(["m", 0], resident=0)},
                   ["o", 0])
    nodes["ks2"] = {**nodes["ks"], "inputs": {**nodes["ks"]["inputs"], "model": ["o2", 0]}}
    run = run_prompt(nodes, outputs=["ks", "ks2"])
    assert torch.equal(run.output("ks")["samples"], reference)
    assert torch.equal(run.output("ks2")["samples"], reference)


def failure(nodes, model_ref):
    run = run_prompt(prompt(nodes, model_ref), outputs=["ks"], expect_error=True)
    error = run.error()
    assert error["exception_type"].endswith("LightX2VError"), error["exception_type"]
    return error["exception_message"]


def test_misuse_is_a_clear_error(comfy_nodes, folders):
    name = folders["bf16"]
    assert "needs a LightX2V Offload node" in failure({"m": on_disk_loader(name)}, ["m", 0])
    assert "mode none cannot run them" in failure({"m": on_disk_loader(name), "o": offload(["m", 0], mode="none")}, ["o", 0])
    assert "quantization must be auto" in failure({"m": on_disk_loader(name, quantization="fp8")}, ["m", 0])
    single = {"m": {**on_disk_loader(name), "inputs": {**on_disk_loader(name)["inputs"], "model_name": "test_blocks_on_disk_source.safetensors"}}}
    assert "needs a LightX2V per-block folder" in failure(single, ["m", 0])
