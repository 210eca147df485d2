"""LightX2V Feature Cache inside real ComfyUI: native KSampler runs on a tiny checkpoint, the 8-step guard,
the native-model error, MagCache calibration files."""

import json
import logging

import pytest
import torch

from harness import run_prompt, tiny_t2v_prompt
from lightx2v_nodes.wan import synthetic

MODEL_NAME = "test_cache_tiny_t2v.safetensors"


@pytest.fixture(scope="module")
def tiny_model(models_dir):
    cfg = synthetic.tiny_config("t2v")
    synthetic.write_checkpoint(synthetic.random_state_dict(cfg, seed=7), str(models_dir / "diffusion_models" / MODEL_NAME), "comfy", "fp32")
    return MODEL_NAME


class LogLines(logging.Handler):
    """Records the pack's log lines (tests run with -p no:logging, so no caplog)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.lines = []

    def emit(self, record):
        self.lines.append((record.levelno, record.getMessage()))


@pytest.fixture
def pack_log():
    handler, logger = LogLines(), logging.getLogger("lightx2v_nodes")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler.lines
    logger.removeHandler(handler)
    logger.setLevel(old_level)


def prompt(model_node, cache=None, steps=10, sampler="euler"):
    node = None
    if cache:
        node = {"class_type": "LightX2VFeatureCache", "inputs": {
            "method": "teacache", "threshold": -1.0, "start_percent": 0.0, "end_percent": 1.0, "cache_device": "gpu",
            "verbose": False, **cache}}
    return tiny_t2v_prompt(model_node, node, steps=steps, sampler=sampler)


def ours(name):
    return {"class_type": "LightX2VLoadWanDiT", "inputs": {"model_name": name, "dtype": "fp32", "attention": "auto"}}


def samples(run):
    return run.output("5")["samples"]


@pytest.fixture(scope="module")
def reference(comfy_nodes, tiny_model):
    """No-cache outputs at 10 and 4 steps."""
    return {steps: samples(run_prompt(prompt(ours(tiny_model), steps=steps), outputs=["5"])) for steps in (10, 4)}


@pytest.mark.parametrize("method,extra", [("teacache", {"variant": "T2V 1.3B"}), ("magcache", {"variant": "T2V 1.3B"}),
                                          ("adaptive", {}), ("teacache", {"variant": "I2V 720p", "teacache_mode": "e"})])
def test_threshold_zero_matches_no_cache(reference, tiny_model, pack_log, method, extra):
    run = run_prompt(prompt(ours(tiny_model), {"method": method, "threshold": 0.0, **extra}), outputs=["5"])
    assert torch.equal(samples(run), reference[10])
    summary = [m for _, m in pack_log if "skipped" in m]
    assert len(summary) == 1 and "skipped 0/20 block passes" in summary[0], pack_log


def test_skipping_run_logs_counts_and_changes_output(reference, tiny_model, pack_log):
    run = run_prompt(prompt(ours(tiny_model), {"method": "adaptive", "threshold": 0.5, "cache_device": "cpu",
                                               "verbose": True}, steps=12), outputs=["5"])
    out = samples(run)
    assert torch.isfinite(out).all() and out.shape == reference[10].shape
    (summary,) = [m for _, m in pack_log if "skipped" in m]
    skipped = int(summary.split("skipped ")[1].split("/")[0])
    assert 0 < skipped < 24 and "/24 block passes" in summary and "cond" in summary and "uncond" in summary
    assert sum("-> skip" in m for _, m in pack_log) == skipped  # verbose: one line per decision
    patterns = [m.rsplit(": ", 1)[1] for _, m in pack_log if "pattern" in m]
    assert len(patterns) == 2 and sum(p.count("S") for p in patterns) == skipped


def test_four_step_run_warns_and_is_untouched(reference, tiny_model, pack_log, monkeypatch):
    import server

    sent = []

    class Recorder:
        def send_progress_text(self, text, node_id, sid=None):
            sent.append((node_id, text))

    monkeypatch.setattr(server.PromptServer, "instance", Recorder(), raising=False)
    run = run_prompt(prompt(ours(tiny_model), {"method": "teacache", "threshold": 5.0, "variant": "T2V 1.3B"}, steps=4),
                     outputs=["5"])
    assert torch.equal(samples(run), reference[4])
    warnings = [m for level, m in pack_log if level == logging.WARNING]
    assert len(warnings) == 1 and "4 steps" in warnings[0]
    assert sent == [("5", warnings[0])]  # shown on the sampler node
    assert not any("skipped" in m for _, m in pack_log)


def test_native_model_is_refused(comfy_nodes, tiny_model):
    native = {"class_type": "UNETLoader", "inputs": {"unet_name": tiny_model, "weight_dtype": "default"}}
    run = run_prompt(prompt(native, {"method": "adaptive"}), outputs=["5"], expect_error=True)
    message = run.error()["exception_message"]
    assert "LightX2V Load Wan DiT" in message and "EasyCache" in message


def test_model_without_table_points_to_alternatives(comfy_nodes, tiny_model):
    run = run_prompt(prompt(ours(tiny_model), {"method": "magcache"}), outputs=["5"], expect_error=True)
    message = run.error()["exception_message"]
    assert "dim 256 x 2 layers" in message and "adaptive" in message and "magcache-calibrate" in message


def test_calibrate_then_reuse(reference, tiny_model, models_dir, pack_log):
    run = run_prompt(prompt(ours(tiny_model), {"method": "magcache-calibrate", "calibration_file": "tiny test"},
                            steps=10), outputs=["5"])
    assert torch.equal(samples(run), reference[10])  # calibration never skips
    record = json.loads((models_dir / "magcache" / "tiny_test.json").read_text())
    assert record["steps"] == 10 and set(record["ratios"]) == {"cond", "uncond"}
    assert len(record["ratios"]["cond"]) == 10 and record["ratios"]["cond"][0] == 1.0
    assert record["variant"] == "Wan2.1 T2V dim 256 x 2 layers"

    run = run_prompt(prompt(ours(tiny_model), {"method": "magcache", "calibration_file": "tiny_test", "threshold": 1.0},
                            steps=12), outputs=["5"])
    (summary,) = [m for _, m in pack_log if "skipped" in m and "MagCache, threshold" in m]
    assert "calibrated on Wan2.1 T2V dim 256 x 2 layers" in summary
    assert int(summary.split("skipped ")[1].split("/")[0]) > 0


def test_sampler_custom_advanced_gets_the_same_cache(comfy_nodes, tiny_model, pack_log):
    cache = {"method": "adaptive", "threshold": 0.5}
    ksampler = samples(run_prompt(prompt(ours(tiny_model), cache, steps=12), outputs=["5"]))
    p = prompt(ours(tiny_model), cache, steps=12)
    p.update({
        "7": {"class_type": "RandomNoise", "inputs": {"noise_seed": 3}},
        "8": {"class_type": "CFGGuider", "inputs": {"model": ["6", 0], "positive": ["2", 0], "negative": ["3", 0], "cfg": 2.0}},
        "9": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "10": {"class_type": "BasicScheduler", "inputs": {"model": ["6", 0], "scheduler": "simple", "steps": 12, "denoise": 1.0}},
        "11": {"class_type": "SamplerCustomAdvanced", "inputs": {"noise": ["7", 0], "guider": ["8", 0], "sampler": ["9", 0],
                                                                  "sigmas": ["10", 0], "latent_image": ["4", 0]}},
    })
    del p["5"]
    custom = run_prompt(p, outputs=["11"]).output("11")["samples"]
    summaries = [m for _, m in pack_log if "skipped" in m]
    assert len(summaries) == 2 and summaries[0] == summaries[1] and "skipped 0/" not in summaries[0]
    assert torch.equal(custom, ksampler)
