"""LightX2V Multi-GPU on CPU processes with gloo: the blocks of every model call shared by 2, 3 or 4 processes give
the same samples as one process (fp32, relative error <= 1e-5) through KSampler, for T2V and I2V, with LoRAs
(merged, native, side branch), cfg > 1 in all three modes; a killed worker is an error within the timeout, and no
worker process outlives the tests.

Tiny models on 32x32x5 latents (8 tokens): T2V with dim 512 (4 heads of 128; 3 processes split them 2/1/1 and the
tokens 3/3/2), I2V with dim 384 (3 heads: 2 processes split them 2/1), so uneven splits are exercised. Worker groups are reused while the checkpoint and world
size stay the same (each start spawns interpreters that import torch).
"""

import os
import time

import pytest
import torch

from harness import raises_lightx2v_error, run_prompt
from lightx2v_nodes.lora import synthetic as lora_synthetic
from lightx2v_nodes.vae.synthetic import write_random_taehv
from lightx2v_nodes.wan import synthetic

pytestmark = pytest.mark.usefixtures("one_thread")
T2V, I2V, TAEHV, LORA = "mgpu_t2v.safetensors", "mgpu_i2v.safetensors", "mgpu_taew2_1.safetensors", "mgpu_lora.safetensors"
TIMEOUT = 60


def _group_module():
    import sys

    return next(m for name, m in sys.modules.items() if name.endswith("lightx2v_nodes.parallel.group") and "-" in name)


def worker_processes() -> list[int]:
    """Live processes whose parent is this one and that run our worker module."""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if ppid == os.getpid() and b"lightx2v_nodes.parallel.worker" in cmd:
            out.append(int(pid))
    return out


@pytest.fixture(scope="module", autouse=True)
def files(models_dir, comfy_nodes):
    os.environ["LIGHTX2V_WORKER_THREADS"] = "1"
    t2v, i2v = synthetic.tiny_config("t2v", dim=512), synthetic.tiny_config("i2v", dim=384)
    synthetic.write_checkpoint(synthetic.random_state_dict(t2v, seed=31), str(models_dir / "diffusion_models" / T2V), "comfy", "fp32")
    synthetic.write_checkpoint(synthetic.random_state_dict(i2v, seed=32), str(models_dir / "diffusion_models" / I2V), "comfy", "fp32")
    write_random_taehv(str(models_dir / "vae_approx" / TAEHV), latent_channels=16, dtype="fp32", seed=4)
    lora_synthetic.write_lora(lora_synthetic.make_lora(t2v, "lightx2v", rank=4, seed=3), str(models_dir / "loras" / LORA))
    yield
    _group_module().stop_active()
    assert worker_processes() == []


def processes(world_size):
    """The loader puts the model on the GPU where there is one, and the node then runs one process per GPU: on a
    machine with fewer GPUs these tests cannot run (on a CPU machine they run as gloo processes)."""
    return pytest.mark.skipif(torch.cuda.is_available() and torch.cuda.device_count() < world_size,
                              reason=f"the model loads on the GPU here, and {world_size} processes need {world_size} GPUs")


def loader(name):
    return {"class_type": "LightX2VLoadWanDiT", "inputs": {"model_name": name, "dtype": "fp32", "attention": "sdpa"}}


def multi_gpu(source, world_size, mode="ulysses", timeout=TIMEOUT):
    return {"class_type": "LightX2VMultiGPU", "inputs": {"model": source, "world_size": world_size, "mode": mode,
                                                         "devices": "auto", "timeout_seconds": timeout}}


def t2v_prompt(parallel=None, lora=None, cfg=2.0, steps=2):
    """"1" loads, optional "7" applies a LoRA node, optional "6" is the Multi-GPU node (after the LoRA)."""
    prompt = {
        "1": loader(T2V),
        "2": {"class_type": "LightX2VSyntheticConditioning", "inputs": {"seed": 1, "tokens": 12, "dim": 4096}},
        "3": {"class_type": "LightX2VSyntheticConditioning", "inputs": {"seed": 2, "tokens": 12, "dim": 4096}},
        "4": {"class_type": "EmptyHunyuanLatentVideo", "inputs": {"width": 32, "height": 32, "length": 5, "batch_size": 1}},
    }
    model = ["1", 0]
    if lora:
        prompt["7"] = {**lora, "inputs": {"model": model, **lora["inputs"]}}
        model = ["7", 0]
    if parallel:
        prompt["6"] = multi_gpu(model, *parallel)
        model = ["6", 0]
    prompt["5"] = {"class_type": "KSampler", "inputs": {
        "model": model, "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0], "seed": 3,
        "steps": steps, "cfg": cfg, "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}}
    return prompt


def samples(prompt):
    return run_prompt(prompt, outputs=["5"]).output("5")["samples"]


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


MERGE = {"class_type": "LightX2VApplyLoRA", "inputs": {"lora_name": LORA, "strength": 0.8, "mode": "merge"}}
SIDE = {"class_type": "LightX2VApplyLoRA", "inputs": {"lora_name": LORA, "strength": 0.8, "mode": "side-branch"}}
NATIVE = {"class_type": "LoraLoaderModelOnly", "inputs": {"lora_name": LORA, "strength_model": 0.8}}


@pytest.fixture(scope="module")
def single():
    """One-process references, computed once."""
    return {key: samples(t2v_prompt(lora=lora, cfg=cfg)) for key, lora, cfg in (
        ("cfg2", None, 2.0), ("cfg1", None, 1.0), ("merge", MERGE, 2.0), ("side", SIDE, 2.0), ("native", NATIVE, 2.0))}


@pytest.mark.parametrize("world_size", [pytest.param(2, marks=processes(2)), pytest.param(3, marks=processes(3))])
def test_t2v_equals_one_process(single, world_size):
    for mode in ("ulysses", "cfg"):
        for cfg, key in ((2.0, "cfg2"), (1.0, "cfg1")):
            out = samples(t2v_prompt((world_size, mode), cfg=cfg))
            assert torch.isfinite(out).all()
            assert rel(out, single[key]) <= 1e-5, (world_size, mode, cfg)
    assert len(worker_processes()) == world_size - 1


@processes(2)
def test_loras_reach_the_workers(single):
    """A merged LoRA, a native LoRA and a side branch, one after the other on one worker group: each run must match
    its own one-process reference, so the workers also put the file's weights back between them."""
    for key, lora in (("merge", MERGE), ("native", NATIVE), ("side", SIDE), ("cfg2", None), ("merge", MERGE)):
        out = samples(t2v_prompt((2, "ulysses"), lora=lora))
        assert rel(out, single[key]) <= 1e-5, key
        assert rel(single[key], single["cfg2"]) > 1e-3 or key == "cfg2"  # the LoRA changes the result


@processes(4)
def test_both_modes_combined(single):
    """both on 4 processes = two cfg groups of 2-way Ulysses (cfg 2); at cfg 1 all four split the tokens."""
    for cfg, key in ((2.0, "cfg2"), (1.0, "cfg1")):
        assert rel(samples(t2v_prompt((4, "both"), cfg=cfg)), single[key]) <= 1e-5, cfg
    assert rel(samples(t2v_prompt((2, "both"))), single["cfg2"]) <= 1e-5


def test_both_needs_an_even_world_size():
    run = run_prompt(t2v_prompt((3, "both")), outputs=["5"], expect_error=True)
    assert run.error()["node_id"] == "6" and "even number" in run.error()["exception_message"]


def i2v_prompt(parallel=None):
    prompt = {
        "1": loader(I2V),
        "2": {"class_type": "LightX2VSyntheticConditioning", "inputs": {"seed": 1, "tokens": 12, "dim": 4096}},
        "3": {"class_type": "LightX2VSyntheticConditioning", "inputs": {"seed": 2, "tokens": 12, "dim": 4096}},
        "4": {"class_type": "LightX2VLoadTinyVAE", "inputs": {"vae_name": TAEHV, "dtype": "fp32", "decode_mode": "chunked"}},
        "8": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 32, "batch_size": 1, "color": 0x3366CC}},
        "9": {"class_type": "WanImageToVideo", "inputs": {"positive": ["2", 0], "negative": ["3", 0], "vae": ["4", 0],
                                                          "start_image": ["8", 0], "width": 32, "height": 32,
                                                          "length": 5, "batch_size": 1}},
    }
    model = ["1", 0]
    if parallel:
        prompt["6"] = multi_gpu(model, *parallel)
        model = ["6", 0]
    prompt["5"] = {"class_type": "KSampler", "inputs": {
        "model": model, "positive": ["9", 0], "negative": ["9", 1], "latent_image": ["9", 2], "seed": 5, "steps": 2,
        "cfg": 3.0, "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}}
    return prompt


@processes(3)
def test_i2v_equals_one_process():
    reference = samples(i2v_prompt())
    for parallel in ((2, "ulysses"), (2, "cfg"), (3, "ulysses")):
        assert rel(samples(i2v_prompt(parallel)), reference) <= 1e-5, parallel


@processes(2)
def test_killed_worker_is_an_error_within_the_timeout():
    group_module = _group_module()
    samples(t2v_prompt((2, "ulysses"), steps=1))
    [pid] = worker_processes()
    os.kill(pid, 9)
    start = time.monotonic()
    run = run_prompt(t2v_prompt((2, "ulysses"), steps=1, cfg=1.5), outputs=["5"], expect_error=True)
    assert time.monotonic() - start < TIMEOUT
    message = run.error()["exception_message"]
    assert run.error()["exception_type"].endswith("LightX2VError") and "worker 1" in message, message
    assert group_module.active() is None and worker_processes() == []


@processes(2)
def test_hung_worker_is_an_error_within_the_timeout():
    group_module = _group_module()
    samples(t2v_prompt((2, "ulysses", 8), steps=1))
    [pid] = worker_processes()
    os.kill(pid, 19)  # SIGSTOP: alive but never answers
    try:
        start = time.monotonic()
        run = run_prompt(t2v_prompt((2, "ulysses", 8), steps=1, cfg=1.5), outputs=["5"], expect_error=True)
        assert time.monotonic() - start < 8 + 20
        assert run.error()["exception_type"].endswith("LightX2VError"), run.error()
    finally:
        try:
            os.kill(pid, 18)
        except ProcessLookupError:
            pass
    assert group_module.active() is None and worker_processes() == []


def test_world_size_one_is_the_model_itself(single):
    assert rel(samples(t2v_prompt((1, "ulysses"))), single["cfg2"]) == 0.0
