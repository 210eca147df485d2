"""The example workflows, written as specs and built into UI-format JSON from the live node schemas.

  .venv/bin/python tests/example_workflows_build.py                # rewrites example_workflows/*.json
  .venv/bin/python tests/example_workflows_build.py --thumbnails   # also the .jpg thumbnails (needs Chromium)

tests/test_example_workflows.py checks that the committed files equal what this builds now, so a node
schema change that would break a user's graph shows up as a failing test, not as a silently shifted widget.
"""

from __future__ import annotations

import json
import pathlib

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "example_workflows"

TEXT_ENCODER = "umt5_xxl_fp8_e4m3fn_scaled.safetensors"
WAN_VAE = "wan_2.1_vae.safetensors"
TINY_VAE = "taew2_1.safetensors"
PROMPT = "A red fox trotting through fresh snow in a birch forest at sunrise, cinematic, detailed fur"
NEGATIVE = "blurry, low quality, static, distorted, watermark, text"

DOWNLOADS = f"""
**Text encoder** `{TEXT_ENCODER}` -> `models/text_encoders/`
**VAE** `{WAN_VAE}` -> `models/vae/` (both from Comfy-Org/Wan_2.1_ComfyUI_repackaged)
**Tiny VAE (much faster decode)** `taew2_1.safetensors` or `.pth` (madebyollin/taehv) -> `models/vae_approx/`;
one of the two decode branches is muted: select its nodes and press Ctrl+M to switch.
"""


def _text_to_video(name, title, dit, note, lora=None, sampler="4step", latent=(832, 480, 81), cache=None,
                   quantization="auto", lora_mode="merge", offload=None, low_vram_decode=False):
    nodes = [
        ("note", "MarkdownNote", {"text": f"## {title}\n{note}\n{DOWNLOADS}"}),
        ("clip", "CLIPLoader", {"clip_name": TEXT_ENCODER, "type": "wan", "device": "default"}),
        ("pos", "CLIPTextEncode", {"text": PROMPT, "clip": "clip.0"}, {"title": "Positive prompt"}),
        ("neg", "CLIPTextEncode", {"text": NEGATIVE, "clip": "clip.0"}, {"title": "Negative prompt"}),
        ("dit", "LightX2VLoadWanDiT", {"model_name": dit, "dtype": "auto", "attention": "auto", "quantization": quantization}),
    ]
    model = "dit.0"
    if lora:
        nodes.append(("lora", "LightX2VApplyLoRA", {"model": model, "lora_name": lora, "strength": 1.0, "mode": lora_mode}))
        model = "lora.0"
    if offload:
        nodes.append(("offload", "LightX2VOffload", {"model": model, **offload}))
        model = "offload.0"
    if cache:
        nodes.append(("cache", "LightX2VFeatureCache", {"model": model, **cache}))
        model = "cache.0"
    width, height, length = latent
    nodes.append(("latent", "EmptyHunyuanLatentVideo", {"width": width, "height": height, "length": length, "batch_size": 1}))
    if sampler == "4step":
        nodes.append(("sampler", "LightX2VFourStepSampler", {
            "model": model, "positive": "pos.0", "negative": "neg.0", "latent_image": "latent.0", "seed": 42,
            "denoising_step_list": "1000,750,500,250", "shift": 5.0, "cfg": 1.0, "mode": "deterministic"}))
    else:
        nodes.append(("sampler", "KSampler", {
            "model": model, "positive": "pos.0", "negative": "neg.0", "latent_image": "latent.0", "seed": 42,
            "steps": 30, "cfg": 5.0, "sampler_name": "uni_pc", "scheduler": "simple", "denoise": 1.0}))
    nodes += _decode_and_save(name, tiny_vae_first=low_vram_decode)
    return {"name": name, "nodes": nodes}


def _decode_and_save(name, vae_source=None, tiny_vae_first=False, vae_file=WAN_VAE, tiny_vae_file=TINY_VAE, fps=16.0):
    """The full Wan VAE decode and a tiny-VAE decode; the second choice is muted (Ctrl+M toggles)."""
    muted = {"mode": 2} if tiny_vae_first else {}
    vae_nodes = [] if vae_source else [("vae", "VAELoader", {"vae_name": vae_file}, muted)]
    return vae_nodes + [
        ("decode", "VAEDecode", {"samples": "sampler.0", "vae": vae_source or "vae.0"}, muted),
        ("video", "CreateVideo", {"images": "decode.0", "fps": fps}, muted),
        ("save", "SaveVideo", {"video": "video.0", "filename_prefix": f"video/{name}", "format": "auto", "codec": "auto"}, muted),
    ] + _tiny_vae_branch(name, tiny_vae_file, muted=not tiny_vae_first, fps=fps)


def _tiny_vae_branch(name, vae_file, muted, fps=16.0, loaded=False):
    """Decode with LightX2V's tiny VAE (TAEHV): ~20x faster than the Wan VAE, slightly softer frames.
    loaded: the spec already has the `tinyvae` loader node."""
    extra = {"mode": 2} if muted else {}
    loader = [] if loaded else [
        ("tinyvae", "LightX2VLoadTinyVAE", {"vae_name": vae_file, "dtype": "auto", "decode_mode": "chunked"}, extra)]
    return loader + [
        ("tinydecode", "LightX2VTinyVAEDecode", {"samples": "sampler.0", "vae": "tinyvae.0", "decode_mode": "as loaded"}, extra),
        ("tinyvideo", "CreateVideo", {"images": "tinydecode.0", "fps": fps}, extra),
        ("tinysave", "SaveVideo", {"video": "tinyvideo.0", "filename_prefix": f"video/{name}_tiny_vae",
                                   "format": "auto", "codec": "auto"}, extra),
    ]


def _image_to_video():
    name = "wan2.1_i2v_14B_480p_4step"
    note = ("Image-to-video at 480p in 4 steps with LightX2V's step- and CFG-distilled I2V model (cfg stays 1).\n"
            "**DiT** `wan2.1_i2v_480p_14B_lightx2v_4step.safetensors` (lightx2v/Wan2.1-I2V-14B-480P-StepDistill-"
            "CfgDistill-Lightx2v, or any Wan2.1 I2V 14B file plus the I2V distill LoRA) -> `models/diffusion_models/`\n"
            "**CLIP vision** `clip_vision_h.safetensors` -> `models/clip_vision/`. Put your start image in `input/`.")
    spec = _text_to_video(name, "Wan2.1 I2V 14B 480p, 4 steps", "wan2.1_i2v_480p_14B_lightx2v_4step.safetensors", note)
    nodes = [n for n in spec["nodes"] if n[0] in ("note", "clip", "pos", "neg", "dit")]
    nodes += [
        ("vae", "VAELoader", {"vae_name": WAN_VAE}),
        ("clipvision", "CLIPVisionLoader", {"clip_name": "clip_vision_h.safetensors"}),
        ("image", "LoadImage", {"image": "example.png"}),
        ("encode", "CLIPVisionEncode", {"clip_vision": "clipvision.0", "image": "image.0", "crop": "none"}),
        ("i2v", "WanImageToVideo", {"positive": "pos.0", "negative": "neg.0", "vae": "vae.0", "clip_vision_output": "encode.0",
                                    "start_image": "image.0", "width": 832, "height": 480, "length": 81, "batch_size": 1}),
        ("sampler", "LightX2VFourStepSampler", {
            "model": "dit.0", "positive": "i2v.0", "negative": "i2v.1", "latent_image": "i2v.2", "seed": 42,
            "denoising_step_list": "1000,750,500,250", "shift": 5.0, "cfg": 1.0, "mode": "deterministic"}),
    ] + _decode_and_save(name, vae_source="vae.0")
    return {"name": name, "nodes": nodes}


def _demo():
    name = "lightx2v_demo_tiny_t2v"
    note = ("## LightX2V demo (runs out of the box)\nTiny **random** weights written by the setup script: the "
            "video is noise, but every stage of a 4-step run executes (load, sample, tiny-VAE decode, save). Swap in real "
            "files with the other example workflows.")
    nodes = [
        ("note", "MarkdownNote", {"text": note}),
        ("dit", "LightX2VLoadWanDiT", {"model_name": "lightx2v_demo_t2v_tiny.safetensors", "dtype": "auto",
                                       "attention": "auto", "quantization": "auto"}),
        ("pos", "LightX2VSyntheticConditioning", {"seed": 1, "tokens": 16, "dim": 4096}, {"title": "Positive (synthetic)"}),
        ("neg", "LightX2VSyntheticConditioning", {"seed": 2, "tokens": 16, "dim": 4096}, {"title": "Negative (synthetic)"}),
        ("latent", "EmptyHunyuanLatentVideo", {"width": 128, "height": 128, "length": 9, "batch_size": 1}),
        ("sampler", "LightX2VFourStepSampler", {
            "model": "dit.0", "positive": "pos.0", "negative": "neg.0", "latent_image": "latent.0", "seed": 42,
            "denoising_step_list": "1000,750,500,250", "shift": 5.0, "cfg": 1.0, "mode": "deterministic"}),
    ] + _tiny_vae_branch(name, "lightx2v_demo_taew2_1_random.safetensors", muted=False)
    return {"name": name, "nodes": nodes}


WAN22_REPO = "Comfy-Org/Wan_2.2_ComfyUI_Repackaged"
WAN22_DOWNLOADS = f"""
**Text encoder** `{TEXT_ENCODER}` -> `models/text_encoders/` (Comfy-Org/Wan_2.1_ComfyUI_repackaged)
**VAE** `{WAN_VAE}` -> `models/vae/` (the A14B experts use the Wan2.1 VAE)
**Tiny VAE (much faster decode)** `taew2_1.safetensors` (madebyollin/taehv) -> `models/vae_approx/`;
one of the two decode branches is muted: select its nodes and press Ctrl+M to switch.
"""


def _two_experts(name, title, task, lora_version, note):
    """Wan2.2 A14B: each expert its own loader and Lightning LoRA; the 4-step sampler runs steps 1-2 on the
    high-noise expert and 3-4 on the low-noise one."""
    files = {level: f"wan2.2_{task}_{level}_noise_14B_fp8_scaled.safetensors" for level in ("high", "low")}
    loras = {level: f"wan2.2_{task}_lightx2v_4steps_lora_{lora_version}_{level}_noise.safetensors" for level in ("high", "low")}
    downloads = (f"**DiTs** `{files['high']}` and `{files['low']}` ({WAN22_REPO}, split_files/diffusion_models) -> "
                 f"`models/diffusion_models/`\n**LoRAs** `{loras['high']}` and `{loras['low']}` ({WAN22_REPO}, "
                 f"split_files/loras; the Wan2.2-Lightning LoRAs of lightx2v) -> `models/loras/`")
    nodes = [
        ("note", "MarkdownNote", {"text": f"## {title}\n{note}\n{downloads}\n{WAN22_DOWNLOADS}"}),
        ("clip", "CLIPLoader", {"clip_name": TEXT_ENCODER, "type": "wan", "device": "default"}),
        ("pos", "CLIPTextEncode", {"text": PROMPT, "clip": "clip.0"}, {"title": "Positive prompt"}),
        ("neg", "CLIPTextEncode", {"text": NEGATIVE, "clip": "clip.0"}, {"title": "Negative prompt"}),
    ]
    for level in ("high", "low"):
        nodes += [
            (f"dit_{level}", "LightX2VLoadWanDiT", {"model_name": files[level], "dtype": "auto", "attention": "auto",
                                                    "quantization": "auto"}, {"title": f"{level.capitalize()}-noise expert"}),
            (f"lora_{level}", "LightX2VApplyLoRA", {"model": f"dit_{level}.0", "lora_name": loras[level], "strength": 1.0,
                                                    "mode": "merge"}, {"title": f"{level.capitalize()}-noise Lightning LoRA"}),
        ]
    if task == "i2v":
        nodes += [
            ("vae", "VAELoader", {"vae_name": WAN_VAE}),
            ("image", "LoadImage", {"image": "example.png"}),
            ("i2v", "WanImageToVideo", {"positive": "pos.0", "negative": "neg.0", "vae": "vae.0", "start_image": "image.0",
                                        "width": 832, "height": 480, "length": 81, "batch_size": 1}),
        ]
        positive, negative, latent = "i2v.0", "i2v.1", "i2v.2"
    else:
        nodes.append(("latent", "EmptyHunyuanLatentVideo", {"width": 832, "height": 480, "length": 81, "batch_size": 1}))
        positive, negative, latent = "pos.0", "neg.0", "latent.0"
    nodes.append(("sampler", "LightX2VFourStepSampler", {
        "model": "lora_high.0", "positive": positive, "negative": negative, "latent_image": latent, "seed": 42,
        "denoising_step_list": "1000,750,500,250", "shift": 5.0, "cfg": 1.0, "mode": "deterministic",
        "low_noise_model": "lora_low.0", "switch_at": "step", "switch_step": 2}))
    nodes += _decode_and_save(name, vae_source="vae.0" if task == "i2v" else None)
    return {"name": name, "nodes": nodes}


def _ti2v_5b():
    name = "wan2.2_ti2v_5B"
    note = ("Wan2.2 TI2V-5B: text- (or image-) to-video at 1280x704, 24 fps, 20 steps with CFG, on 48-channel latents "
            "that the tiny VAE taew2_2 both makes and decodes. For image-to-video, connect a Load Image node to "
            "start_image of Wan22ImageToVideoLatent (the start frame is kept, the rest generated).\n"
            f"**DiT** `wan2.2_ti2v_5B_fp16.safetensors` ({WAN22_REPO}, split_files/diffusion_models) -> "
            "`models/diffusion_models/`\n"
            f"**Text encoder** `{TEXT_ENCODER}` -> `models/text_encoders/` (Comfy-Org/Wan_2.1_ComfyUI_repackaged)\n"
            "**Tiny VAE** `taew2_2.safetensors` (madebyollin/taehv) -> `models/vae_approx/`\n"
            f"**VAE (muted full-quality decode)** `wan2.2_vae.safetensors` ({WAN22_REPO}, split_files/vae) -> "
            "`models/vae/`; select its nodes and press Ctrl+M to switch decoders.")
    nodes = [
        ("note", "MarkdownNote", {"text": f"## Wan2.2 TI2V 5B, 720p, tiny VAE\n{note}"}),
        ("clip", "CLIPLoader", {"clip_name": TEXT_ENCODER, "type": "wan", "device": "default"}),
        ("pos", "CLIPTextEncode", {"text": PROMPT, "clip": "clip.0"}, {"title": "Positive prompt"}),
        ("neg", "CLIPTextEncode", {"text": NEGATIVE, "clip": "clip.0"}, {"title": "Negative prompt"}),
        ("dit", "LightX2VLoadWanDiT", {"model_name": "wan2.2_ti2v_5B_fp16.safetensors", "dtype": "auto",
                                       "attention": "auto", "quantization": "auto"}),
        ("tinyvae", "LightX2VLoadTinyVAE", {"vae_name": "taew2_2.safetensors", "dtype": "auto", "decode_mode": "chunked"}),
        ("latent", "Wan22ImageToVideoLatent", {"vae": "tinyvae.0", "width": 1280, "height": 704, "length": 121,
                                               "batch_size": 1}),
        ("sampler", "KSampler", {
            "model": "dit.0", "positive": "pos.0", "negative": "neg.0", "latent_image": "latent.0", "seed": 42,
            "steps": 20, "cfg": 5.0, "sampler_name": "uni_pc", "scheduler": "simple", "denoise": 1.0}),
    ]
    muted = {"mode": 2}
    nodes += [
        ("vae", "VAELoader", {"vae_name": "wan2.2_vae.safetensors"}, muted),
        ("decode", "VAEDecode", {"samples": "sampler.0", "vae": "vae.0"}, muted),
        ("video", "CreateVideo", {"images": "decode.0", "fps": 24.0}, muted),
        ("save", "SaveVideo", {"video": "video.0", "filename_prefix": f"video/{name}", "format": "auto", "codec": "auto"}, muted),
    ] + _tiny_vae_branch(name, "taew2_2.safetensors", muted=False, fps=24.0, loaded=True)
    return {"name": name, "nodes": nodes}


def specs() -> list[dict]:
    distill_note = ("Text-to-video in 4 steps with a LightX2V step- and CFG-distilled model: cfg stays 1, one model call "
                    "per step.\n**DiT** `{file}` ({repo}) -> `models/diffusion_models/`")
    return [
        _demo(),
        _text_to_video("wan2.1_t2v_14B_4step", "Wan2.1 T2V 14B, 4 steps (distilled checkpoint)",
                       "wan2.1_t2v_14B_lightx2v_4step.safetensors",
                       distill_note.format(file="wan2.1_t2v_14B_lightx2v_4step.safetensors",
                                           repo="lightx2v/Wan2.1-T2V-14B-StepDistill-CfgDistill-Lightx2v")),
        _text_to_video("wan2.1_t2v_14B_lora_4step", "Wan2.1 T2V 14B base + LightX2V distill LoRA, 4 steps",
                       "wan2.1_t2v_14B_bf16.safetensors",
                       "The base model becomes a 4-step generator with LightX2V's step-distill LoRA (cfg 1).\n"
                       "**DiT** `wan2.1_t2v_14B_bf16.safetensors` (Comfy-Org/Wan_2.1_ComfyUI_repackaged) -> "
                       "`models/diffusion_models/`\n**LoRA** `Wan21_T2V_14B_lightx2v_cfg_step_distill_lora_rank64.safetensors` "
                       "(lightx2v/Wan2.1-T2V-14B-StepDistill-CfgDistill-Lightx2v, loras/) -> `models/loras/`",
                       lora="Wan21_T2V_14B_lightx2v_cfg_step_distill_lora_rank64.safetensors"),
        _image_to_video(),
        _text_to_video("wan2.1_t2v_1.3B_4step", "Wan2.1 T2V 1.3B, 4 steps",
                       "wan2.1_t2v_1.3B_lightx2v_4step.safetensors",
                       distill_note.format(file="wan2.1_t2v_1.3B_lightx2v_4step.safetensors",
                                           repo="lightx2v/Wan2.1-T2V-1.3B-StepDistill-CfgDistill-Lightx2v"),
                       latent=(832, 480, 81)),
        _text_to_video("wan2.1_t2v_14B_fp8_low_vram_4step", "Wan2.1 T2V 14B fp8 in ~8 GB of VRAM, 4 steps",
                       "wan2.1_t2v_14B_bf16.safetensors",
                       "For small GPUs: the 14B model quantized to fp8 on load (or load a converted fp8 file with "
                       "quantization auto), the distill LoRA as a side branch (nothing to requantize while streaming), "
                       "block weights streamed by LightX2V Offload within an 8 GB budget, and the tiny VAE for "
                       "decoding (the full-VAE branch is muted). Needs about 32 GB of system RAM; with less, convert "
                       "the model once to an fp8 per-block folder (LightX2V Convert Wan DiT, save_by_block on), load "
                       "that folder with quantization auto and keep_blocks_on_disk on: the blocks then stream from "
                       "disk and RAM holds only a few.\n"
                       "**DiT** `wan2.1_t2v_14B_bf16.safetensors` -> `models/diffusion_models/`\n"
                       "**LoRA** `Wan21_T2V_14B_lightx2v_cfg_step_distill_lora_rank64.safetensors` -> `models/loras/`",
                       lora="Wan21_T2V_14B_lightx2v_cfg_step_distill_lora_rank64.safetensors", lora_mode="side-branch",
                       quantization="fp8",
                       offload={"mode": "auto", "vram_budget_gb": 8.0, "resident_blocks": -1, "prefetch": 1,
                                "lazy_load_dir": "", "debug_timing": False},
                       low_vram_decode=True),
        _text_to_video("wan2.1_t2v_14B_30step_feature_cache", "Wan2.1 T2V 14B, 30 steps with CFG + feature cache",
                       "wan2.1_t2v_14B_bf16.safetensors",
                       "A classic multi-step run (30 steps, cfg 5) where the LightX2V feature cache (TeaCache) skips "
                       "transformer passes whose output barely changes. Not for 4-step runs: there it does nothing.\n"
                       "**DiT** `wan2.1_t2v_14B_bf16.safetensors` -> `models/diffusion_models/`",
                       sampler="ksampler",
                       cache={"method": "teacache", "threshold": 0.2, "start_percent": 0.0, "end_percent": 1.0,
                              "cache_device": "gpu", "verbose": False}),
        _two_experts("wan2.2_t2v_A14B_lightning_4step", "Wan2.2 T2V A14B, two experts + Lightning LoRAs, 4 steps", "t2v",
                     "v1.1", "Text-to-video with both Wan2.2 A14B experts in 4 steps (cfg 1): steps 1-2 on the "
                     "high-noise expert, 3-4 on the low-noise one, each with its own Lightning LoRA. Both experts stay on "
                     "the GPU while they fit; for small GPUs add LightX2V Offload after each LoRA, and they take turns."),
        _two_experts("wan2.2_i2v_A14B_lightning_4step", "Wan2.2 I2V A14B, two experts + Lightning LoRAs, 4 steps", "i2v",
                     "v1", "Image-to-video with both Wan2.2 A14B I2V experts in 4 steps (cfg 1): WanImageToVideo "
                     "without CLIP vision (Wan2.2 has no image encoder branch). Put your start image in `input/`."),
        _ti2v_5b(),
    ]


def build_all(node_classes) -> dict[str, dict]:
    from workflow_ui import build_workflow

    return {spec["name"]: build_workflow(spec, node_classes) for spec in specs()}


FIT_TO_GRAPH = """() => {
  const nodes = window.app.graph._nodes || window.app.graph.nodes;
  let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
  for (const n of nodes) {
    x0 = Math.min(x0, n.pos[0]); y0 = Math.min(y0, n.pos[1] - 30);
    x1 = Math.max(x1, n.pos[0] + n.size[0]); y1 = Math.max(y1, n.pos[1] + n.size[1]);
  }
  window.app.canvas.ds.fitToBounds([x0, y0, x1 - x0, y1 - y0]);
  window.app.canvas.setDirty(true, true);
}"""


def write_thumbnails(names):
    """Screenshots of each workflow in the real frontend, shown by ComfyUI's template browser."""
    import tempfile

    from playwright.sync_api import sync_playwright

    from comfy_env import COMFY_DIR, ROOT
    from harness import ComfyServer, http_json, make_base_dir

    base = make_base_dir(pathlib.Path(tempfile.mkdtemp(prefix="lightx2v-thumbs-")), ROOT)
    with ComfyServer(COMFY_DIR, base) as server, sync_playwright() as p:
        # Full-detail nodes at thumbnail zoom, no minimap or canvas info in the picture.
        for setting, value in (("Comfy.TutorialCompleted", True), ("Comfy.Minimap.Visible", False),
                               ("Comfy.Graph.CanvasInfo", False), ("LiteGraph.Canvas.MinFontSizeForLOD", 1),
                               ("LiteGraph.Canvas.LowQualityRenderingZoomThreshold", 0.1)):
            http_json(f"{server.url}/settings/{setting}", value)
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.goto(server.url)
        page.wait_for_function("window.app && window.app.graph && window.app.canvas", timeout=120_000)
        for name in names:
            workflow = json.loads((EXAMPLES / f"{name}.json").read_text())
            page.evaluate("async (w) => { await window.app.loadGraphData(w); }", workflow)
            page.evaluate(FIT_TO_GRAPH)
            page.wait_for_timeout(500)
            page.screenshot(path=str(EXAMPLES / f"{name}.jpg"), type="jpeg", quality=70,
                            clip={"x": 60, "y": 90, "width": 1480, "height": 820})
            print(f"wrote example_workflows/{name}.jpg")
        browser.close()


def main():
    import logging
    import sys

    from comfy_env import bootstrap
    from harness import load_all_nodes

    logging.disable(logging.WARNING)
    _, pack = bootstrap()
    node_classes = load_all_nodes(pack)
    EXAMPLES.mkdir(exist_ok=True)
    workflows = build_all(node_classes)
    for name, workflow in workflows.items():
        (EXAMPLES / f"{name}.json").write_text(json.dumps(workflow, indent=1) + "\n")
        print(f"wrote example_workflows/{name}.json")
    if "--thumbnails" in sys.argv:
        write_thumbnails(workflows)


if __name__ == "__main__":
    main()
