"""The pack's samplers end each run with one summary line (steps, time per step, peak VRAM on CUDA, feature-cache
skips), logged once (no line per step), shown on the node and returned as its UI text; ComfyUI's progress bar
still counts every step."""

import logging
import re

import pytest
import torch

from harness import run_prompt
from lightx2v_nodes.wan import synthetic

MODEL_NAME = "test_run_summary_t2v.safetensors"
LATENT = (1, 16, 2, 8, 12)
TIMING = r"(\d+) steps in \d+\.\d s, \d+\.\d\d s/step" + (r", peak VRAM \d+\.\d\d GiB" if torch.cuda.is_available() else "")


@pytest.fixture(scope="module")
def model(comfy_nodes, models_dir):
    cfg = synthetic.tiny_config("t2v")
    synthetic.write_checkpoint(synthetic.random_state_dict(cfg, seed=5), str(models_dir / "diffusion_models" / MODEL_NAME),
                               "comfy", "fp32")
    return comfy_nodes["LightX2VLoadWanDiT"]().execute(model_name=MODEL_NAME, dtype="fp32", attention="auto")[0]


def text_cond(seed):
    return [[torch.randn(1, 12, 4096, generator=torch.Generator().manual_seed(seed)) * 0.2, {}]]


def pack_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "lightx2v_nodes"]


def run_node(comfy_nodes, caplog, node_id, **inputs):
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="lightx2v_nodes"), torch.inference_mode():
        out = comfy_nodes[node_id]().execute(positive=text_cond(1), latent_image={"samples": torch.zeros(LATENT)},
                                             seed=3, **inputs)
    return out, pack_lines(caplog)


def only_summary(lines: list[str], label: str) -> str:
    assert not [m for m in lines if re.search(r"step \d+/\d+", m)], lines  # no line per step
    summaries = [m for m in lines if re.match(rf"LightX2V {label}: \d+ steps in ", m)]
    assert len(summaries) == 1, lines
    return summaries[0]


def test_four_step_run_logs_one_summary_and_shows_it(comfy_nodes, caplog, model, monkeypatch):
    import comfy.utils

    bar = []
    monkeypatch.setattr(comfy.utils, "PROGRESS_BAR_HOOK", lambda value, total, preview, node_id=None: bar.append((value, total)))
    out, lines = run_node(comfy_nodes, caplog, "LightX2VFourStepSampler", model=model, denoising_step_list="1000,750,500,250",
                          shift=5.0, cfg=1.0, mode="deterministic")
    line = only_summary(lines, "4-step deterministic")
    assert re.fullmatch(r"LightX2V 4-step deterministic: " + TIMING, line), line
    assert re.fullmatch(TIMING, line.split(": ", 1)[1]).group(1) == "4"
    assert out.ui.as_dict() == {"text": (line,)}
    assert bar == [(1, 4), (2, 4), (3, 4), (4, 4)]  # ComfyUI's progress bar, one update per step


def test_changing_resolution_run_logs_one_summary(comfy_nodes, caplog, model):
    out, lines = run_node(comfy_nodes, caplog, "LightX2VChangingResolutionSampler", model=model, steps=4, shift=5.0,
                          cfg=1.0, sampler_name="euler", resolution_rates="0.5", switch_steps="2")
    line = only_summary(lines, "changing-resolution")
    assert re.fullmatch(r"LightX2V changing-resolution: " + TIMING, line) and " 4 steps " in line, line
    assert out.ui.as_dict() == {"text": (line,)}


def test_summary_counts_feature_cache_skips_and_reaches_the_ui(comfy_nodes, caplog, model, monkeypatch):
    """Through ComfyUI's executor: the summary is the sampler's UI output (in the prompt's history) and its text on
    the node."""
    import server

    shown = []

    class Server:
        def send_progress_text(self, text, node_id, sid=None):
            shown.append((node_id, text))

    monkeypatch.setattr(server.PromptServer, "instance", Server(), raising=False)
    steps = ",".join(str(t) for t in range(1000, 0, -100))  # 10 steps: the cache acts on runs of more than 8
    prompt = {
        "1": {"class_type": "LightX2VLoadWanDiT", "inputs": {"model_name": MODEL_NAME, "dtype": "fp32", "attention": "auto"}},
        "2": {"class_type": "LightX2VFeatureCache", "inputs": {
            "model": ["1", 0], "method": "adaptive", "threshold": 5.0, "start_percent": 0.0, "end_percent": 1.0,
            "cache_device": "cpu", "verbose": False}},
        "3": {"class_type": "LightX2VSyntheticConditioning", "inputs": {"seed": 1, "tokens": 12, "dim": 4096}},
        "4": {"class_type": "EmptyHunyuanLatentVideo", "inputs": {"width": 32, "height": 32, "length": 5, "batch_size": 1}},
        "5": {"class_type": "LightX2VFourStepSampler", "inputs": {
            "model": ["2", 0], "positive": ["3", 0], "latent_image": ["4", 0], "seed": 3, "denoising_step_list": steps,
            "shift": 5.0, "cfg": 1.0, "mode": "deterministic"}},
    }
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="lightx2v_nodes"):
        run = run_prompt(prompt, outputs=["5"])
    line = only_summary(pack_lines(caplog), "10-step deterministic")
    (cache_line,) = [m for m in pack_lines(caplog) if m.startswith("LightX2V Feature Cache (")]
    skipped = re.search(r"skipped (\d+/\d+) block passes", cache_line).group(1)
    assert int(skipped.split("/")[0]) > 0, cache_line
    assert line.endswith(f", feature cache skipped {skipped} block passes"), line
    assert list(run.executor.history_result["outputs"]["5"]["text"]) == [line]  # what /history gives the UI
    assert shown[-1] == ("5", line)
