"""In-process ComfyUI helpers for tests: load nodes, run API-format prompts through ComfyUI's executor."""

from __future__ import annotations

import asyncio
import logging
import uuid


def load_all_nodes(pack_dir):
    import nodes

    async def init():
        await nodes.init_public_apis()
        await nodes.init_builtin_extra_nodes()
        ok = await nodes.load_custom_node(str(pack_dir))
        assert ok, "the pack failed to import (see the log above)"

    asyncio.run(init())
    return nodes.NODE_CLASS_MAPPINGS


class _Server:
    """What PromptExecutor needs from ComfyUI's PromptServer: it records the messages it is sent."""

    def __init__(self):
        self.client_id = None
        self.last_node_id = None
        self.last_prompt_id = None
        self.messages = []

    def send_sync(self, event, data, sid=None):
        self.messages.append((event, data))


class PromptRun:
    def __init__(self, executor, server):
        self.executor, self.server = executor, server

    def output(self, node_id, index=0):
        """The value a node produced at output `index` (from the executor's output cache)."""
        entry = self.executor.caches.outputs.get(str(node_id))
        assert entry is not None, f"node {node_id} has no cached output"
        outputs = entry.outputs if hasattr(entry, "outputs") else entry[0]
        return outputs[index][0] if isinstance(outputs[index], list) else outputs[index]

    def error(self):
        for event, data in self.executor.status_messages:
            if event == "execution_error":
                return data
        return None


def run_prompt(prompt: dict, outputs=None, expect_error: bool = False) -> PromptRun:
    """Validate and execute an API-format prompt in-process; fails with ComfyUI's own error text.

    `outputs` lists node ids to execute when the prompt has no output node (their inputs are validated
    the way the server validates output nodes); by default the prompt's output nodes run.
    """
    import execution

    prompt_id = str(uuid.uuid4())
    if outputs is None:
        valid = asyncio.run(execution.validate_prompt(prompt_id, prompt, None))
        assert valid[0], f"prompt did not validate: {valid[1]} {valid[3]}"
        outputs = valid[2]
    else:
        validated = {}
        for node_id in outputs:
            ok, reasons, _ = asyncio.run(execution.validate_inputs(prompt_id, prompt, str(node_id), validated))
            assert ok, f"node {node_id} did not validate: {reasons}"
    server = _Server()
    executor = execution.PromptExecutor(server, cache_type=execution.CacheType.CLASSIC, cache_args={"lru": 0, "ram": 0.0})
    executor.execute(prompt, prompt_id, {}, [str(o) for o in outputs])
    run = PromptRun(executor, server)
    err = run.error()
    if expect_error:
        assert err is not None, "the prompt was expected to fail but succeeded"
    else:
        assert executor.success and err is None, f"execution failed: {err and err['exception_message']}"
    return run


def raises_lightx2v_error(match: str):
    """pytest.raises for LightX2VError raised inside the loaded pack.

    ComfyUI imports the pack under its folder name, so its LightX2VError is a different class object than
    the one tests get from `import lightx2v_nodes`; compare by name instead.
    """
    import pytest

    class _Check:
        def __enter__(self):
            self.ctx = pytest.raises(ValueError, match=match)
            self.info = self.ctx.__enter__()
            return self.info

        def __exit__(self, *exc):
            handled = self.ctx.__exit__(*exc)
            assert type(self.info.value).__name__ == "LightX2VError", type(self.info.value)
            return handled

    return _Check()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_json(url: str, payload=None):
    """GET (or POST `payload` as JSON) and decode the JSON answer."""
    import json
    import urllib.request

    data = None if payload is None else json.dumps(payload).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read() or b"null")


def make_base_dir(base, root):
    """A ComfyUI --base-directory with the pack linked into custom_nodes/."""
    from comfy_env import MODEL_FOLDERS

    (base / "custom_nodes").mkdir(parents=True, exist_ok=True)
    (base / "custom_nodes" / "lightx2v-nodes").symlink_to(root, target_is_directory=True)
    for folder in MODEL_FOLDERS:
        (base / "models" / folder).mkdir(parents=True, exist_ok=True)
    return base


class ComfyServer:
    """`main.py --cpu` on a free port in a subprocess; a context manager that waits until it answers."""

    def __init__(self, comfy_dir, base_dir, start_timeout=120):
        self.comfy_dir, self.base_dir, self.start_timeout = comfy_dir, base_dir, start_timeout
        self.log_path = base_dir / "server.log"
        self.url = f"http://127.0.0.1:{free_port()}"

    def log(self) -> str:
        return self.log_path.read_text()

    def __enter__(self):
        import os
        import subprocess
        import sys
        import time

        self._log = open(self.log_path, "w")
        port = self.url.rsplit(":", 1)[1]
        self.proc = subprocess.Popen(
            [sys.executable, "main.py", "--cpu", "--base-directory", str(self.base_dir), "--listen", "127.0.0.1",
             "--port", port, "--disable-auto-launch"],
            cwd=self.comfy_dir, stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.time() + self.start_timeout
        while True:
            if self.proc.poll() is not None:
                self.__exit__()
                raise RuntimeError(f"server exited:\n{self.log()[-3000:]}")
            try:
                http_json(self.url + "/system_stats")
                return self
            except OSError:
                if time.time() > deadline:
                    self.__exit__()
                    raise RuntimeError(f"server did not start:\n{self.log()[-3000:]}")
                time.sleep(1)

    def __exit__(self, *exc):
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self._log.close()

    def wait_for(self, prompt_id: str, timeout=180) -> dict:
        """Poll /history until the prompt completes; returns its status dict."""
        import time

        deadline = time.time() + timeout
        while time.time() < deadline:
            history = http_json(f"{self.url}/history/{prompt_id}")
            if prompt_id in history and history[prompt_id]["status"].get("completed") is not None:
                return history[prompt_id]["status"]
            time.sleep(1)
        raise TimeoutError(f"prompt {prompt_id} did not finish:\n{self.log()[-3000:]}")


def tiny_t2v_prompt(model_node: dict, patch_node: dict | None = None, seed=3, steps=3, cfg=2.0, sampler="euler") -> dict:
    """API prompt: "1" loads the model, optional "6" patches it (its "model" input is wired to "1"), two synthetic
    conditionings ("2" positive, "3" negative), a 32x32x5 empty latent ("4") and KSampler ("5")."""
    prompt = {
        "1": model_node,
        "2": {"class_type": "LightX2VSyntheticConditioning", "inputs": {"seed": 1, "tokens": 12, "dim": 4096}},
        "3": {"class_type": "LightX2VSyntheticConditioning", "inputs": {"seed": 2, "tokens": 12, "dim": 4096}},
        "4": {"class_type": "EmptyHunyuanLatentVideo", "inputs": {"width": 32, "height": 32, "length": 5, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {
            "model": ["6", 0] if patch_node else ["1", 0], "positive": ["2", 0], "negative": ["3", 0],
            "latent_image": ["4", 0], "seed": seed, "steps": steps, "cfg": cfg, "sampler_name": sampler,
            "scheduler": "simple", "denoise": 1.0}},
    }
    if patch_node:
        prompt["6"] = {**patch_node, "inputs": {"model": ["1", 0], **patch_node["inputs"]}}
    return prompt


class LogLines(logging.Handler):
    """Collects log messages (for the pack's logger: the suite runs with -p no:logging, so no caplog)."""

    def __init__(self, level=logging.INFO):
        super().__init__(level)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())
