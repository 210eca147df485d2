"""Wan2.2 A14B memory path on the CPU: both experts loaded from per-block folders with their blocks left on disk,
each offloaded and streamed lazily, sampled by the two-expert 4-step sampler. Same latent as the experts held in
RAM; the high-noise expert leaves before the low-noise one arrives; each run reads each expert's blocks once per
step it runs plus the read-ahead past its last step, and nothing else (the non-block weights already in RAM are
never read again)."""

import sys

import pytest
import torch

from harness import run_prompt
from lightx2v_nodes.placeholders import read_header
from lightx2v_nodes.wan import synthetic

LAYERS = 6  # more blocks than the lazy reader's host slots, so every step reads every block from disk
STEPS_HIGH, STEPS_LOW = 2, 2
# While an expert's last block runs, the scheduler already fetches the next step's first block and the reader reads
# one block beyond it: after an expert's last step these two blocks are read for nothing.
READ_AHEAD_BLOCKS = 2
pytestmark = pytest.mark.usefixtures("comfy_nodes", "one_thread")


@pytest.fixture(scope="module")
def folders(models_dir):
    names = {}
    for key, seed in (("high", 51), ("low", 52)):
        sd = synthetic.random_state_dict(synthetic.tiny_config("t2v", layers=LAYERS), seed=seed)
        names[key] = f"wan22_lazy_{key}_blocks"
        synthetic.write_checkpoint(sd, str(models_dir / "diffusion_models" / names[key]), "blocks", "bf16")
    return names


def block_bytes(folder) -> int:
    """Tensor bytes of one block file (the blocks of one model are the same size)."""
    entries, _ = read_header(str(folder / "block_0.safetensors"))
    return sum(e["data_offsets"][1] - e["data_offsets"][0] for e in entries.values())


def expert(name, on_disk):
    return {"class_type": "LightX2VLoadWanDiT", "inputs": {"model_name": name + "/", "dtype": "bf16", "attention": "auto",
                                                            "quantization": "auto", "keep_blocks_on_disk": on_disk}}


def offload(source):
    return {"class_type": "LightX2VOffload", "inputs": {"model": [source, 0], "mode": "block", "vram_budget_gb": 0.0,
                                                        "resident_blocks": 0, "prefetch": 1, "lazy_load_dir": "",
                                                        "debug_timing": False}}


def two_expert_prompt(folders, lazy):
    prompt = {
        "h": expert(folders["high"], lazy), "l": expert(folders["low"], lazy),
        "c": {"class_type": "LightX2VSyntheticConditioning", "inputs": {"seed": 1, "tokens": 12, "dim": 4096}},
        "lat": {"class_type": "EmptyHunyuanLatentVideo", "inputs": {"width": 32, "height": 32, "length": 5, "batch_size": 1}},
        "s": {"class_type": "LightX2VFourStepSampler", "inputs": {
            "model": ["ho" if lazy else "h", 0], "low_noise_model": ["lo" if lazy else "l", 0], "positive": ["c", 0],
            "latent_image": ["lat", 0], "seed": 5, "denoising_step_list": "1000,750,500,250", "shift": 5.0, "cfg": 1.0,
            "mode": "deterministic", "switch_at": "step", "switch_step": STEPS_HIGH}},
    }
    if lazy:
        prompt.update({"ho": offload("h"), "lo": offload("l")})
    return prompt


def _pack_modules(suffix):
    """The engine module as the test imports it and as ComfyUI imported the pack (under its folder name)."""
    return [m for name, m in list(sys.modules.items()) if name.endswith("lightx2v_nodes." + suffix) and m is not None]


def disk_bytes() -> dict[str, int]:
    totals: dict[str, int] = {}
    for module in _pack_modules("offload.lazy"):
        for folder, n in module.disk_bytes_read().items():
            totals[folder] = totals.get(folder, 0) + n
    return totals


@pytest.fixture
def scheduler_events(monkeypatch):
    """(event, model id) for every offload scheduler install and uninstall, in order."""
    events = []
    for module in _pack_modules("offload.scheduler"):
        cls = module.OffloadScheduler

        def wrap(original, event):
            def call(self):
                if self.installed != (event == "install"):
                    events.append((event, id(self.dit)))
                original(self)
            return call

        monkeypatch.setattr(cls, "install", wrap(cls.install, "install"))
        monkeypatch.setattr(cls, "uninstall", wrap(cls.uninstall, "uninstall"))
    return events


def test_lazy_experts_stream_from_disk_one_at_a_time(folders, models_dir, scheduler_events):
    import comfy.model_management as mm

    expected = run_prompt(two_expert_prompt(folders, lazy=False), outputs=["s"]).output("s")["samples"]
    paths = {key: str((models_dir / "diffusion_models" / name).resolve()) for key, name in folders.items()}
    per_block = {key: block_bytes(models_dir / "diffusion_models" / name) for key, name in folders.items()}
    for _ in range(2):  # the second run reads exactly as much as the first: nothing accumulates
        mm.unload_all_models()
        scheduler_events.clear()
        before = disk_bytes()
        run = run_prompt(two_expert_prompt(folders, lazy=True), outputs=["s"])
        # Unloading closes the lazy readers, which waits for their threads: a read-ahead still in flight when the
        # prompt returned is then counted in full (without this the count could miss its last tensor).
        mm.unload_all_models()
        after = disk_bytes()
        assert torch.equal(run.output("s")["samples"], expected)
        read = {key: after.get(path, 0) - before.get(path, 0) for key, path in paths.items()}
        assert read == {"high": (STEPS_HIGH * LAYERS + READ_AHEAD_BLOCKS) * per_block["high"],
                        "low": (STEPS_LOW * LAYERS + READ_AHEAD_BLOCKS) * per_block["low"]}
        high = id(run.output("ho").model.diffusion_model)
        low = id(run.output("lo").model.diffusion_model)
        # The high-noise expert's blocks leave the device before the low-noise expert's scheduler starts.
        assert scheduler_events[:3] == [("install", high), ("uninstall", high), ("install", low)]


def test_a_new_run_starts_with_the_low_noise_expert_off_the_device(folders, comfy_nodes, scheduler_events):
    """Across runs too, streamed experts take turns on the device: the low-noise expert that ended the last run leaves
    before the high-noise one is loaded (ComfyUI itself would keep both while its free-memory check allows, which a
    VRAM cap it cannot see breaks)."""
    import comfy.model_management as mm

    mm.unload_all_models()
    prompt = two_expert_prompt(folders, lazy=True)
    run = run_prompt(prompt, outputs=["s"])
    high, low = run.output("ho"), run.output("lo")
    inputs = dict(prompt["s"]["inputs"], model=high, low_noise_model=low, positive=run.output("c"),
                  latent_image=run.output("lat"), seed=6)
    scheduler_events.clear()
    with torch.inference_mode():  # as the executor runs it
        comfy_nodes["LightX2VFourStepSampler"].execute(**inputs)
    mm.unload_all_models()
    high_id, low_id = id(high.model.diffusion_model), id(low.model.diffusion_model)
    assert scheduler_events[:3] == [("uninstall", low_id), ("install", high_id), ("uninstall", high_id)]


def test_plain_experts_both_stay_loaded(folders):
    """Without a LightX2V Offload the experts stay loaded while ComfyUI finds room, as it keeps a native graph's two
    experts: moving both 14B experts back onto the GPU every run cost 6-12 s a run on an H100 (bench/wan22.py)."""
    import comfy.model_management as mm

    mm.unload_all_models()
    run = run_prompt(two_expert_prompt(folders, lazy=False), outputs=["s"])
    loaded = {id(m.model) for m in mm.current_loaded_models}
    mm.unload_all_models()
    assert {id(run.output("h")), id(run.output("l"))} <= loaded
