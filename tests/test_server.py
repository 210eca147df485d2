"""Smoke test of the real server: `main.py --cpu` loads the pack, lists every node, runs a T2V prompt."""

import json

import pytest

from conftest import COMFY_DIR, ROOT
from harness import ComfyServer, http_json, make_base_dir
from lightx2v_nodes.wan import synthetic


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = make_base_dir(tmp_path_factory.mktemp("server-base"), ROOT)
    cfg = synthetic.tiny_config("t2v")
    synthetic.write_checkpoint(synthetic.random_state_dict(cfg), str(base / "models" / "diffusion_models" / "smoke_t2v.safetensors"), "comfy", "bf16")
    with ComfyServer(COMFY_DIR, base) as srv:
        yield srv


def test_pack_imports_and_every_node_is_listed(server, comfy_nodes):
    failed = [line for line in server.log().splitlines() if "IMPORT FAILED" in line and "lightx2v" in line.lower()]
    assert not failed, failed
    expected = {name for name in comfy_nodes if name.startswith("LightX2V")}
    assert "LightX2VLoadWanDiT" in expected
    missing = expected - set(http_json(server.url + "/object_info"))
    assert not missing, missing


def test_t2v_prompt_runs_through_the_server(server):
    prompt = {
        "1": {"class_type": "LightX2VLoadWanDiT", "inputs": {"model_name": "smoke_t2v.safetensors", "dtype": "auto", "attention": "auto"}},
        "2": {"class_type": "LightX2VSyntheticConditioning", "inputs": {"seed": 1, "tokens": 8, "dim": 4096}},
        "3": {"class_type": "EmptyHunyuanLatentVideo", "inputs": {"width": 32, "height": 32, "length": 5, "batch_size": 1}},
        "4": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "positive": ["2", 0], "negative": ["2", 0],
                                                   "latent_image": ["3", 0], "seed": 0, "steps": 2, "cfg": 1.0,
                                                   "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}},
        "5": {"class_type": "SaveLatent", "inputs": {"samples": ["4", 0], "filename_prefix": "smoke"}},
    }
    prompt_id = http_json(server.url + "/prompt", {"prompt": prompt, "client_id": "smoke"})["prompt_id"]
    status = server.wait_for(prompt_id)
    assert status["status_str"] == "success", json.dumps(status)[:2000]


def test_example_workflows_are_served_as_templates(server):
    """ComfyUI's template browser lists the pack's example_workflows/ and serves each file unchanged."""
    from example_workflows_build import EXAMPLES

    names = sorted(p.stem for p in EXAMPLES.glob("*.json"))
    assert "lightx2v_demo_tiny_t2v" in names
    listed = http_json(server.url + "/workflow_templates").get("lightx2v-nodes", [])
    assert sorted(listed) == names
    for name in names:
        served = http_json(f"{server.url}/api/workflow_templates/lightx2v-nodes/{name}.json")
        assert served == json.loads((EXAMPLES / f"{name}.json").read_text())
