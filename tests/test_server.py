"""Smoke test of the real server: `main.py --cpu` loads the pack, lists every node, runs a T2V prompt."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from conftest import COMFY_DIR, ROOT
from lightx2v_nodes.wan import synthetic


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def _post(url, payload):
    req = urllib.request.Request(url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("server-base")
    (base / "custom_nodes").mkdir()
    (base / "custom_nodes" / "lightx2v-nodes").symlink_to(ROOT, target_is_directory=True)
    (base / "models" / "diffusion_models").mkdir(parents=True)
    cfg = synthetic.tiny_config("t2v")
    synthetic.write_checkpoint(synthetic.random_state_dict(cfg), str(base / "models" / "diffusion_models" / "smoke_t2v.safetensors"), "comfy", "bf16")
    port = _free_port()
    log_path = base / "server.log"
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, "main.py", "--cpu", "--base-directory", str(base), "--listen", "127.0.0.1",
                             "--port", str(port), "--disable-auto-launch"],
                            cwd=COMFY_DIR, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            assert proc.poll() is None, f"server exited:\n{log_path.read_text()[-3000:]}"
            try:
                _get(url + "/system_stats")
                break
            except OSError:
                assert time.time() < deadline, f"server did not start:\n{log_path.read_text()[-3000:]}"
                time.sleep(1)
        yield url, log_path
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_pack_imports_and_every_node_is_listed(server, comfy_nodes):
    url, log_path = server
    log = log_path.read_text()
    failed = [line for line in log.splitlines() if "IMPORT FAILED" in line and "lightx2v" in line.lower()]
    assert not failed, failed
    expected = {name for name in comfy_nodes if name.startswith("LightX2V")}
    assert "LightX2VLoadWanDiT" in expected
    info = _get(url + "/object_info")
    missing = expected - set(info)
    assert not missing, missing


def test_t2v_prompt_runs_through_the_server(server):
    url, log_path = server
    prompt = {
        "1": {"class_type": "LightX2VLoadWanDiT", "inputs": {"model_name": "smoke_t2v.safetensors", "dtype": "auto", "attention": "auto"}},
        "2": {"class_type": "LightX2VSyntheticConditioning", "inputs": {"seed": 1, "tokens": 8, "dim": 4096}},
        "3": {"class_type": "EmptyHunyuanLatentVideo", "inputs": {"width": 32, "height": 32, "length": 5, "batch_size": 1}},
        "4": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "positive": ["2", 0], "negative": ["2", 0],
                                                   "latent_image": ["3", 0], "seed": 0, "steps": 2, "cfg": 1.0,
                                                   "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}},
        "5": {"class_type": "SaveLatent", "inputs": {"samples": ["4", 0], "filename_prefix": "smoke"}},
    }
    prompt_id = _post(url + "/prompt", {"prompt": prompt, "client_id": "smoke"})["prompt_id"]
    deadline = time.time() + 120
    while time.time() < deadline:
        history = _get(f"{url}/history/{prompt_id}")
        if prompt_id in history and history[prompt_id]["status"].get("completed") is not None:
            status = history[prompt_id]["status"]
            assert status["status_str"] == "success", json.dumps(status)[:2000]
            return
        time.sleep(1)
    pytest.fail(f"prompt did not finish:\n{log_path.read_text()[-3000:]}")
