"""Our DiT against ComfyUI's own WanModel on the same random weights (fp32, rel err <= 1e-5)."""

import pytest
import torch

from lightx2v_nodes.wan import synthetic
from lightx2v_nodes.wan.model import WanDiT

TOL = 1e-5


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def native_wan(cfg, weights):
    import comfy.ldm.wan.model
    import comfy.ops

    model = comfy.ldm.wan.model.WanModel(**cfg.unet_config(), operations=comfy.ops.disable_weight_init)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    assert not missing and not unexpected
    return model.eval()


@pytest.mark.parametrize("task", ["t2v", "i2v", "flf2v"])
def test_direct_forward_matches_native(comfy_nodes, task):
    cfg = synthetic.tiny_config(task, layers=3)
    weights = synthetic.random_state_dict(cfg, seed=11)
    ours = WanDiT(**cfg.unet_config())
    ours.load_state_dict(weights, strict=True)
    native = native_wan(cfg, weights)
    gen = torch.Generator().manual_seed(0)
    # Odd H/W exercise the patch padding; 36 channels = noise + mask + image latent for I2V.
    x = torch.randn(2, cfg.in_dim, 3, 7, 9, generator=gen)
    t = torch.tensor([999.8, 625.0])
    context = torch.randn(2, 24, 4096, generator=gen)
    clip = None if task == "t2v" else torch.randn(2, 514 if task == "flf2v" else 257, 1280, generator=gen)
    with torch.no_grad():
        a = ours(x, t, context, clip_fea=clip)
        b = native(x, t, context, clip_fea=clip)
    assert a.shape == b.shape == (2, 16, 3, 7, 9)
    assert rel_err(a, b) <= TOL


def _i2v_conditioning(seed, latent_shape):
    import node_helpers

    gen = torch.Generator().manual_seed(seed)

    class ClipVisionOutput:
        penultimate_hidden_states = torch.randn(1, 257, 1280, generator=gen)

    image_latent = torch.randn(latent_shape, generator=gen)
    mask = torch.ones(1, 1, latent_shape[2], latent_shape[3], latent_shape[4])
    mask[:, :, 0] = 0.0
    cond = [[torch.randn(1, 10, 4096, generator=gen), {}]]
    return node_helpers.conditioning_set_values(cond, {"concat_latent_image": image_latent, "concat_mask": mask,
                                                       "clip_vision_output": ClipVisionOutput()})


@pytest.fixture(scope="module")
def tiny_files(models_dir):
    names = {}
    for task in ("t2v", "i2v"):
        cfg = synthetic.tiny_config(task)
        names[task] = f"equiv_{task}.safetensors"
        synthetic.write_checkpoint(synthetic.random_state_dict(cfg, seed=5), str(models_dir / "diffusion_models" / names[task]), "original", "fp32")
    return names


def _load_both(comfy_nodes, name):
    ours = comfy_nodes["LightX2VLoadWanDiT"]().execute(model_name=name, dtype="fp32", attention="auto")[0]
    native = comfy_nodes["UNETLoader"]().load_unet(name, "default")[0]
    return ours, native


def test_i2v_ksampler_matches_native(comfy_nodes, tiny_files, native_unet_fp32):
    import nodes

    ours, native = _load_both(comfy_nodes, tiny_files["i2v"])
    latent = {"samples": torch.zeros(1, 16, 2, 4, 4)}
    positive, negative = _i2v_conditioning(1, (1, 16, 2, 4, 4)), _i2v_conditioning(2, (1, 16, 2, 4, 4))
    with torch.inference_mode():
        a = nodes.common_ksampler(ours, 7, 3, 2.0, "euler", "simple", positive, negative, latent)[0]["samples"]
        b = nodes.common_ksampler(native, 7, 3, 2.0, "euler", "simple", positive, negative, latent)[0]["samples"]
    assert torch.isfinite(a).all() and a.abs().mean() > 0.1
    assert rel_err(a, b) <= TOL


def test_i2v_without_image_conditioning_is_a_clear_error(comfy_nodes, tiny_files):
    import nodes

    from harness import raises_lightx2v_error

    ours, _ = _load_both(comfy_nodes, tiny_files["i2v"])
    cond = [[torch.randn(1, 10, 4096), {}]]
    with torch.inference_mode(), raises_lightx2v_error("image-to-video.*WanImageToVideo"):
        nodes.common_ksampler(ours, 1, 2, 1.0, "euler", "simple", cond, cond, {"samples": torch.zeros(1, 16, 2, 4, 4)})


def test_native_patches_and_wrappers_apply_to_our_model(comfy_nodes, tiny_files):
    """patches_replace["dit"] block patches and DIFFUSION_MODEL wrappers (what native EasyCache uses) reach our DiT."""
    import comfy.patcher_extension
    import nodes

    ours, _ = _load_both(comfy_nodes, tiny_files["t2v"])
    model = ours.clone()
    seen = {"blocks": [], "wrapper": 0}

    def block_patch(args, extra):
        seen["blocks"].append(args["img"].shape)
        return extra["original_block"](args)

    def wrapper(executor, *args, **kwargs):
        seen["wrapper"] += 1
        return executor(*args, **kwargs)

    model.set_model_patch_replace(block_patch, "dit", "double_block", 1)
    model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "test", wrapper)
    cond = [[torch.randn(1, 10, 4096), {}]]
    latent = {"samples": torch.zeros(1, 16, 2, 4, 4)}
    with torch.inference_mode():
        patched = nodes.common_ksampler(model, 3, 2, 1.0, "euler", "simple", cond, cond, latent)[0]["samples"]
        plain = nodes.common_ksampler(ours, 3, 2, 1.0, "euler", "simple", cond, cond, latent)[0]["samples"]
    assert seen["wrapper"] == 2 and len(seen["blocks"]) == 2
    assert torch.equal(patched, plain)  # the patch called the original block: same result


def test_native_easycache_runs_on_our_model(comfy_nodes, tiny_files):
    import nodes

    ours, _ = _load_both(comfy_nodes, tiny_files["t2v"])
    cached = comfy_nodes["EasyCache"].execute(ours, reuse_threshold=3.0, start_percent=0.0, end_percent=1.0, verbose=False)[0]
    cond = [[torch.randn(1, 10, 4096), {}]]
    latent = {"samples": torch.zeros(1, 16, 2, 4, 4)}
    calls = []
    dit = ours.model.diffusion_model
    handle = dit.blocks[0].register_forward_hook(lambda *a: calls.append(1))
    try:
        with torch.inference_mode():
            out = nodes.common_ksampler(cached, 3, 8, 1.0, "euler", "simple", cond, cond, latent)[0]["samples"]
    finally:
        handle.remove()
    assert torch.isfinite(out).all()
    assert 0 < len(calls) < 8  # EasyCache skipped some of the 8 steps on our DiT
