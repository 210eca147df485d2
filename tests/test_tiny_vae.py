"""The tiny VAE engine against ComfyUI's own TAEHV (comfy/taesd/taehv.py) on the same random weights.

Tolerance: relative L2 error <= 1e-5 in fp32 (our decoder fuses TGrow/Upsample into the convs, so
results differ from ComfyUI's only by float rounding). Spatial sizes are tiny to keep the CPU run fast.
"""

import functools
import pickle

import pytest
import torch
import torch.nn.functional as F

from comfy.taesd.taehv import TAEHV as ComfyTAEHV
from comfy.taesd.taehv import apply_model_with_memblocks
from lightx2v_nodes.errors import LightX2VError
from lightx2v_nodes.vae import checkpoint, synthetic
from lightx2v_nodes.vae.taehv import DECODE_MODES

TOL = 1e-5
# latent (h, w) per channel count: outputs of 16x24 (Wan2.1) and 32x32 (Wan2.2) pixels
LATENT_HW = {16: (2, 3), 48: (2, 2)}
TINY_BUDGET_MB = 0.25  # cuts the runs of most layers at these sizes (one frame at the widest ones)


@functools.lru_cache(maxsize=None)
def _random_weights(channels):
    return synthetic.random_taehv_state_dict(channels, seed=channels)


def master_weights(channels, encoder=True):
    """Random fp32 weights, drawn once per channel count (11M numbers take a while on a small CPU)."""
    sd = _random_weights(channels)
    return dict(sd) if encoder else {k: v for k, v in sd.items() if k.startswith("decoder.")}


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.fixture(scope="module", params=[16, 48])
def pair(request):
    """(ours, ComfyUI's) TAEHV with the same fp32 random weights."""
    channels = request.param
    sd = master_weights(channels)
    ours = checkpoint.build_taehv(sd, torch.float32)
    ref = ComfyTAEHV(latent_channels=channels, latent_format=None, show_progress_bar=False)
    ref.load_state_dict(sd, strict=True)
    return ours, ref.eval()


class CountingOp:
    """Counts how often the runner calls a streaming op."""

    def __init__(self, op):
        self.op, self.calls = op, 0

    def elements_per_frame(self, h, w):
        return self.op.elements_per_frame(h, w)

    def __call__(self, x, state):
        self.calls += 1
        return self.op(x, state)


def decode_counting_calls(model, latents, mode, chunk_mb=None):
    key, ops = model._plans["decoder"]
    counting = [CountingOp(op) for op in ops]
    model._plans["decoder"] = (key, counting)
    try:
        return model.decode(latents, mode=mode, chunk_mb=chunk_mb), [c.calls for c in counting]
    finally:
        model._plans["decoder"] = (key, ops)


@pytest.mark.parametrize("frames", [1, 2, 5, 21])
def test_decode_matches_comfyui_in_every_mode(pair, frames):
    ours, ref = pair
    c = ours.latent_channels
    latents = torch.randn(1, c, frames, *LATENT_HW[c], generator=torch.Generator().manual_seed(frames))
    ref.parallel = True
    with torch.no_grad():
        expected = ref.decode(latents)
    assert expected.shape[2] == 4 * frames - 3
    inside = ((expected > 0) & (expected < 1)).float().mean().item()
    assert inside > 0.9, f"random weights should decode mostly inside (0, 1), got {inside:.2f}"
    expected = expected.clamp(0, 1)

    ours.decode(latents[:, :, :1])  # builds the plan that decode_counting_calls instruments
    results, calls = {}, {}
    for mode in DECODE_MODES:
        budget = TINY_BUDGET_MB if mode == "chunked" else None
        results[mode], calls[mode] = decode_counting_calls(ours, latents, mode, budget)
        assert results[mode].shape == expected.shape
        assert rel(results[mode], expected) <= TOL, (mode, rel(results[mode], expected))
    assert rel(results["sequential"], results["parallel"]) <= TOL
    assert rel(results["chunked"], results["parallel"]) <= TOL
    assert all(n == 1 for n in calls["parallel"]), calls["parallel"]
    assert calls["sequential"][0] == frames and calls["sequential"][-1] == 4 * frames
    if frames >= 5:  # the budget really cuts runs, but fewer than one frame per call
        assert sum(calls["parallel"]) < sum(calls["chunked"]) < sum(calls["sequential"]), calls
    if frames == 21:
        assert expected.shape[2] == 81


def test_comfyui_sequential_agrees_too(pair):
    ours, ref = pair
    c = ours.latent_channels
    latents = torch.randn(1, c, 3, *LATENT_HW[c], generator=torch.Generator().manual_seed(7))
    ref.parallel = False
    with torch.no_grad():
        expected = ref.decode(latents).clamp(0, 1)
    assert rel(ours.decode(latents, mode="sequential"), expected) <= TOL


def comfy_encode(ref, frames):
    """ComfyUI's encoder network applied as upstream TAEHV does (its TAEHV.encode pixel-unshuffles a 5-D
    tensor along the wrong axes for the 48-channel model, which is why ComfyUI disables that case)."""
    x = frames.movedim(2, 1)
    if ref.patch_size > 1:
        x = F.pixel_unshuffle(x, ref.patch_size)
    if x.shape[1] % 4:
        x = torch.cat([x, x[:, -1:].repeat_interleave(4 - x.shape[1] % 4, dim=1)], 1)
    with torch.no_grad():
        return apply_model_with_memblocks(ref.encoder, x, True, False).movedim(2, 1)


@pytest.mark.parametrize("latent_frames", [1, 2, 5, 21])
def test_encode_matches_comfyui_in_every_mode(pair, latent_frames):
    ours, ref = pair
    h, w = (s * ours.spec.spatial_scale for s in LATENT_HW[ours.latent_channels])
    frames = torch.rand(1, 3, 4 * latent_frames - 3, h, w, generator=torch.Generator().manual_seed(latent_frames))
    if ours.latent_channels == 16:
        with torch.no_grad():
            expected = ref.encode(frames)  # ComfyUI's own entry point for taew2_1
    else:
        expected = comfy_encode(ref, frames)
    assert expected.shape == (1, ours.latent_channels, latent_frames, *LATENT_HW[ours.latent_channels])
    # sequential encoding of 81 frames is slow on a small CPU; it is checked up to 17 frames
    for mode in DECODE_MODES if latent_frames < 21 else ("parallel", "chunked"):
        got = ours.encode(frames, mode=mode, chunk_mb=TINY_BUDGET_MB if mode == "chunked" else None)
        assert got.shape == expected.shape
        assert rel(got, expected) <= TOL, (mode, rel(got, expected))


def test_encode_pads_like_comfyui(pair):
    """Frame counts that are not 4k-3 are padded at the end with the last frame."""
    ours, ref = pair
    h, w = (s * ours.spec.spatial_scale for s in LATENT_HW[ours.latent_channels])
    frames = torch.rand(1, 3, 7, h, w, generator=torch.Generator().manual_seed(3))
    expected = comfy_encode(ref, frames)
    assert expected.shape[2] == 2
    assert rel(ours.encode(frames, mode="chunked", chunk_mb=TINY_BUDGET_MB), expected) <= TOL


def test_half_precision_close_to_fp32():
    sd = master_weights(16)
    latents = torch.randn(1, 16, 1, 2, 3, generator=torch.Generator().manual_seed(0))
    full = checkpoint.build_taehv(sd, torch.float32).decode(latents)
    half = checkpoint.build_taehv(sd, torch.bfloat16).decode(latents)
    assert half.dtype == torch.bfloat16 and full.dtype == torch.float32
    assert rel(half.float(), full) <= 2e-2


FILES = [  # (latent channels, extension, stored dtype, variant): every extension x dtype, every variant
    (16, "safetensors", "fp16", "full"), (16, "safetensors", "bf16", "wide_tgrow"), (16, "safetensors", "fp32", "decoder_only"),
    (16, "pth", "fp16", "full"), (16, "pth", "bf16", "decoder_only"), (16, "pth", "fp32", "wide_tgrow"),
    (48, "safetensors", "fp16", "full"),
]


@pytest.mark.parametrize("channels,ext,dtype,variant", FILES)
def test_every_layout_and_dtype_loads_the_same_tensors(tmp_path, channels, ext, dtype, variant):
    encoder = variant != "decoder_only"
    master = master_weights(channels, encoder)
    sd = synthetic.widen_first_tgrow(master) if variant == "wide_tgrow" else master
    path = synthetic.write_taehv(sd, str(tmp_path / f"any_name.{ext}"), dtype)
    model = checkpoint.load_taehv(path, torch.float32)
    assert model.latent_channels == channels
    assert model.spec.has_encoder == encoder
    loaded = model.state_dict()
    assert set(loaded) == set(master)
    stored = synthetic.DTYPES[dtype]
    for key, value in master.items():
        assert torch.equal(loaded[key], value.to(stored).float()), key


def test_random_file_writer(tmp_path):
    path = synthetic.write_random_taehv(str(tmp_path / "t.pth"), 48, "fp16", seed=3, encoder=False, wide_tgrow=True)
    sd = torch.load(path, weights_only=True)
    assert sd["decoder.7.conv.weight"].shape == (512, 256, 1, 1) and sd["decoder.1.weight"].dtype == torch.float16
    assert not any(k.startswith("encoder.") for k in sd)
    assert checkpoint.load_taehv(path).spec.latent_channels == 48


def test_prefixed_keys_and_wide_tgrow_trim_to_the_last_rows(tmp_path):
    sd = synthetic.widen_first_tgrow(master_weights(16))
    assert sd["decoder.7.conv.weight"].shape[0] == 512
    path = synthetic.write_taehv({"vae." + k: v for k, v in sd.items()}, str(tmp_path / "x.safetensors"), "fp32")
    model = checkpoint.load_taehv(path)
    assert torch.equal(model.decoder[7].conv.weight, sd["decoder.7.conv.weight"][256:])


def _error(path):
    with pytest.raises(LightX2VError) as info:
        checkpoint.load_taehv(str(path))
    return str(info.value)


def test_non_taehv_files_get_clear_errors(tmp_path):
    from safetensors.torch import save_file

    wan_vae = tmp_path / "wan_2.1_vae.safetensors"
    save_file({"decoder.middle.0.residual.0.gamma": torch.ones(384, 1, 1, 1), "decoder.head.0.gamma": torch.ones(96, 1, 1, 1)}, str(wan_vae))
    assert "full Wan VAE" in _error(wan_vae) and "Load VAE" in _error(wan_vae)

    other = tmp_path / "lora.safetensors"
    save_file({"lora_unet_x.lora_up.weight": torch.zeros(4, 4)}, str(other))
    msg = _error(other)
    assert "not a TAEHV" in msg and "vae_approx" in msg

    sd = master_weights(16)
    hunyuan = dict(sd, **{"decoder.1.weight": torch.zeros(256, 32, 3, 3), "decoder.22.weight": torch.zeros(12, 64, 3, 3)})
    save_file(hunyuan, str(tmp_path / "lighttaehy1_5.safetensors"))
    assert "HunyuanVideo 1.5" in _error(tmp_path / "lighttaehy1_5.safetensors")

    broken = dict(sd)
    del broken["decoder.9.conv.2.weight"]
    save_file(broken, str(tmp_path / "broken.safetensors"))
    assert "missing 1 TAEHV weights" in _error(tmp_path / "broken.safetensors")

    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file at all")
    assert "Could not read" in _error(garbage)


class NotATensor:
    pass


def test_pickles_that_need_code_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"decoder.1.weight": NotATensor()}, f, protocol=2)
    assert "Refused to load" in _error(path) and "weights_only" not in _error(path)


def test_wrong_latents_and_missing_encoder_are_explained():
    wan21 = checkpoint.build_taehv(master_weights(16, encoder=False))
    with pytest.raises(LightX2VError, match="48 channels.*Wan2.2"):
        wan21.decode(torch.zeros(1, 48, 2, 2, 2))
    with pytest.raises(LightX2VError, match="only a decoder"):
        wan21.encode(torch.zeros(1, 3, 5, 16, 16))
    with pytest.raises(LightX2VError, match="Unknown TAEHV mode"):
        wan21.decode(torch.zeros(1, 16, 1, 2, 2), mode="fast")


def test_channels_last_layout_used_on_cuda_gives_the_same_frames(pair, monkeypatch):
    """CUDA runs channels-last activations (other strides in the sub-pixel interleave); check that path here."""
    from lightx2v_nodes.vae import stream_ops, taehv

    ours, ref = pair
    c = ours.latent_channels
    latents = torch.randn(1, c, 3, *LATENT_HW[c], generator=torch.Generator().manual_seed(4))
    ref.parallel = True
    with torch.no_grad():
        expected = ref.decode(latents).clamp(0, 1)
    for module in (stream_ops, taehv):
        monkeypatch.setattr(module, "activation_format", lambda device: torch.channels_last)
    ours._plans.clear()
    try:
        for mode in DECODE_MODES:
            assert rel(ours.decode(latents, mode=mode, chunk_mb=TINY_BUDGET_MB), expected) <= TOL, mode
    finally:
        ours._plans.clear()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_decode_matches_comfyui(pair):
    ours, ref = pair
    c = ours.latent_channels
    latents = torch.randn(1, c, 5, 8, 12, generator=torch.Generator().manual_seed(6))
    ref.parallel = True
    with torch.no_grad():
        expected = ref.decode(latents).clamp(0, 1)
    ours.to("cuda")
    try:
        for mode in DECODE_MODES:  # in full float32: conftest turns cuDNN's TF32 off
            assert rel(ours.decode(latents, mode=mode).cpu(), expected) <= TOL, mode
        half = checkpoint.build_taehv(master_weights(c), torch.float16, "cuda")
        assert rel(half.decode(latents, mode="chunked").float().cpu(), expected) <= 1e-2
    finally:
        ours.to("cpu")
