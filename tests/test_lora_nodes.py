"""LightX2V Apply LoRA inside real ComfyUI: exact merges, equivalence with native LoraLoaderModelOnly,
diff_m (which native ignores), side branch, strength changes without drift, errors shown in the UI."""

import uuid

import pytest
import torch

from harness import PromptRun, _Server, run_prompt, tiny_t2v_prompt
from lightx2v_nodes.lora import synthetic
from lightx2v_nodes.wan import synthetic as wan_synthetic
from test_lora import expected_weights, rel_err

SEED = {"t2v": 11, "i2v": 12}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def files(comfy_nodes, models_dir):
    """Tiny T2V/I2V checkpoints (fp32 and bf16) and LoRAs of every family, in ComfyUI's model folders."""
    out = {"base": {}, "lora": {}}
    for task in ("t2v", "i2v"):
        cfg = wan_synthetic.tiny_config(task)
        sd = wan_synthetic.random_state_dict(cfg, seed=SEED[task])
        out["base"][task] = sd
        for dtype in ("fp32", "bf16"):
            name = f"lora_test_{task}_{dtype}.safetensors"
            wan_synthetic.write_checkpoint(sd, str(models_dir / "diffusion_models" / name), "comfy", dtype)
        for family in synthetic.FAMILIES:
            lora = synthetic.make_lora(cfg, family, rank=8, seed=21)
            out["lora"][(task, family)] = lora
            synthetic.write_lora(lora, str(models_dir / "loras" / f"test_{task}_{family}.safetensors"))
        # LightX2V-style LoRA without its diff_m keys, and the same pairs as diffusion_model.*.lora_A/lora_B.
        lx = out["lora"][(task, "lightx2v")]
        synthetic.write_lora({k: v for k, v in lx.items() if not k.endswith("diff_m")}, str(models_dir / "loras" / f"test_{task}_no_diff_m.safetensors"))
        ab = {k.replace("lora_up", "lora_B").replace("lora_down", "lora_A"): v for k, v in lx.items() if "lora_" in k}
        out["lora"][(task, "lora_A/B")] = ab
        synthetic.write_lora(ab, str(models_dir / "loras" / f"test_{task}_ab.safetensors"))
    flux = {f"diffusion_model.double_blocks.{i}.img_attn.qkv.lora_up.weight": torch.zeros(8, 4) for i in range(3)}
    synthetic.write_lora(flux, str(models_dir / "loras" / "test_flux_lora.safetensors"))
    small = synthetic.make_lora(wan_synthetic.tiny_config("t2v", dim=128), "lightx2v", rank=4)
    synthetic.write_lora(small, str(models_dir / "loras" / "test_small_model.safetensors"))
    return out


def lora_file(task, family):
    return {"lora_A/B": f"test_{task}_ab.safetensors"}.get(family, f"test_{task}_{family}.safetensors")


def ours(task, dtype):
    loader = {"class_type": "LightX2VLoadWanDiT", "inputs": {"model_name": f"lora_test_{task}_{dtype}.safetensors", "dtype": dtype, "attention": "auto"}}
    return run_prompt({"1": loader}, outputs=["1"]).output("1")


def native(task, dtype):
    import comfy.sd
    import folder_paths

    path = folder_paths.get_full_path_or_raise("diffusion_models", f"lora_test_{task}_{dtype}.safetensors")
    return comfy.sd.load_diffusion_model(path, model_options={"dtype": {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]})


def apply_ours(model, name, strength=0.7, mode="merge"):
    from lightx2v_nodes.lora.comfy_lora import apply_lora_file

    return apply_lora_file(model, name, strength, mode)


def apply_native(model, name, strength=0.7):
    import nodes

    return nodes.LoraLoaderModelOnly().load_lora_model_only(model, name, strength)[0]


def patched_weights(patcher):
    """The diffusion model's parameters as ComfyUI loads them for sampling (patches applied), then restored."""
    import comfy.model_management as mm

    mm.unload_all_models()
    mm.load_models_gpu([patcher])
    weights = {k: v.detach().to("cpu", copy=True) for k, v in patcher.model.diffusion_model.state_dict().items()}
    mm.unload_all_models()
    return weights


@pytest.mark.parametrize("task,family", [("i2v", "lightx2v"), ("t2v", "lightx2v"), ("t2v", "alpha"), ("t2v", "peft"),
                                         ("t2v", "kohya"), ("i2v", "diff")])
def test_node_merge_equals_independent_computation(files, task, family):
    got = patched_weights(apply_ours(ours(task, "fp32"), lora_file(task, family), 0.7))
    prefix = "" if family in ("peft", "kohya") else "diffusion_model."
    want = expected_weights(files["base"][task], files["lora"][(task, family)], family, prefix, 0.7)
    assert got.keys() == want.keys()
    for key in want:
        assert rel_err(got[key], want[key]) <= 1e-6, key
    changed = {k for k in want if not torch.equal(got[k], files["base"][task][k])}
    if family in ("lightx2v", "diff"):
        assert {"blocks.0.modulation", "blocks.1.modulation"} <= changed
    if task == "i2v" and family == "lightx2v":
        assert {"blocks.0.cross_attn.k_img.weight", "blocks.1.cross_attn.v_img.weight", "blocks.0.cross_attn.norm_k_img.weight"} <= changed


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("task,family", [("i2v", "lightx2v"), ("t2v", "alpha"), ("t2v", "kohya"), ("t2v", "diff"), ("t2v", "lora_A/B")])
def test_ours_equals_native_lora_on_native_model(files, dtype, task, family):
    name = lora_file(task, family)
    base = {k: v.to(torch.float32) for k, v in files["base"][task].items()}
    mine = patched_weights(apply_ours(ours(task, dtype), name))
    theirs = patched_weights(apply_native(native(task, dtype), name))
    assert mine.keys() == theirs.keys()
    for key in mine:
        if key.endswith("modulation"):
            # native ComfyUI 0.3.75 skips `blocks.N.diff_m` ("lora key not loaded"), and even the `<param>.diff`
            # form it parses never reaches modulation (ModelPatcher only patches leaf modules): ours applies both.
            assert torch.equal(theirs[key], base[key].to(theirs[key].dtype)), key
        else:
            assert mine[key].dtype == theirs[key].dtype and torch.equal(mine[key], theirs[key]), key
    if family in ("lightx2v", "diff"):
        assert not torch.equal(mine["blocks.1.modulation"], theirs["blocks.1.modulation"])
    if family == "diff":
        assert not torch.equal(mine["head.modulation"], theirs["head.modulation"])


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_native_lora_loader_on_our_model_equals_native_model(files, dtype):
    name = lora_file("i2v", "lightx2v")
    on_ours = patched_weights(apply_native(ours("i2v", dtype), name))
    on_native = patched_weights(apply_native(native("i2v", dtype), name))
    changed = 0
    for key in on_native:
        assert on_ours[key].dtype == on_native[key].dtype and torch.equal(on_ours[key], on_native[key]), key
        changed += not torch.equal(on_native[key], files["base"]["i2v"][key].to(on_native[key].dtype))
    assert changed > 50


def sample_prompt(model_node, lora=None, seed=3):
    """T2V: model [-> LoRA] -> KSampler (3 euler steps, cfg 2) on a tiny latent."""
    return tiny_t2v_prompt(model_node, lora, seed=seed)


OURS = {"class_type": "LightX2VLoadWanDiT", "inputs": {"model_name": "lora_test_t2v_fp32.safetensors", "dtype": "fp32", "attention": "auto"}}
NATIVE = {"class_type": "UNETLoader", "inputs": {"unet_name": "lora_test_t2v_fp32.safetensors", "weight_dtype": "default"}}


def our_lora(name, strength=1.0, mode="merge"):
    return {"class_type": "LightX2VApplyLoRA", "inputs": {"model": ["1", 0], "lora_name": name, "strength": strength, "mode": mode}}


def native_lora(name, strength=1.0):
    return {"class_type": "LoraLoaderModelOnly", "inputs": {"model": ["1", 0], "lora_name": name, "strength_model": strength}}


def samples(prompt):
    return run_prompt(prompt, outputs=["5"]).output("5")["samples"]


def test_native_ignores_diff_m_ours_does_not(files, native_unet_fp32):
    native_out = samples(sample_prompt(NATIVE, native_lora("test_t2v_lightx2v.safetensors")))
    ours_out = samples(sample_prompt(OURS, our_lora("test_t2v_lightx2v.safetensors")))
    ours_without = samples(sample_prompt(OURS, our_lora("test_t2v_no_diff_m.safetensors")))
    assert rel_err(ours_without, native_out) <= 1e-5  # everything but diff_m: same result as native
    assert rel_err(ours_out, native_out) > 1e-3  # diff_m changes the sampled video; native drops it


@pytest.mark.parametrize("loader", [OURS, NATIVE], ids=["our_model", "native_model"])
def test_side_branch_equals_merge(files, loader, native_unet_fp32):
    merged = samples(sample_prompt(loader, our_lora("test_t2v_lightx2v.safetensors", 0.8, "merge")))
    side = samples(sample_prompt(loader, our_lora("test_t2v_lightx2v.safetensors", 0.8, "side-branch")))
    base = samples(sample_prompt(loader))
    assert rel_err(side, merged) <= 1e-5
    assert rel_err(merged, base) > 1e-2


class Session:
    """One PromptExecutor for several prompts, as the server keeps it: unchanged nodes (the loader) are cached."""

    def __init__(self):
        import execution

        self.server = _Server()
        self.executor = execution.PromptExecutor(self.server, cache_type=execution.CacheType.CLASSIC, cache_args={"lru": 0, "ram": 0.0})

    def run(self, prompt, output="5"):
        self.server.messages.clear()
        self.executor.execute(prompt, str(uuid.uuid4()), {}, [output])
        run = PromptRun(self.executor, self.server)
        assert self.executor.success and run.error() is None, run.error()
        return run


def test_strength_zero_and_restore_after_20_strength_changes(files):
    session = Session()
    first = session.run(sample_prompt(OURS))
    base_samples = first.output("5")["samples"]
    model = first.output("1")
    dit = model.model.diffusion_model
    zero = session.run(sample_prompt(OURS, our_lora("test_t2v_lightx2v.safetensors", 0.0))).output("5")["samples"]
    assert torch.equal(zero, base_samples)
    last = None
    for i in range(20):
        strength = round(0.1 + 0.07 * i, 2)
        run = session.run(sample_prompt(OURS, our_lora("test_t2v_lightx2v.safetensors", strength, ("merge", "side-branch")[i % 3 == 2])))
        assert run.output("1") is model, "the loader's MODEL must come from the cache"
        out = run.output("5")["samples"]
        assert last is None or not torch.equal(out, last)
        last = out
    removed = session.run(sample_prompt(OURS)).output("5")["samples"]
    assert torch.equal(removed, base_samples)
    for key, value in files["base"]["t2v"].items():
        assert torch.equal(dit.state_dict()[key].cpu(), value), key


def test_errors_are_shown_in_the_ui(files):
    wrong = run_prompt(sample_prompt(OURS, our_lora("test_flux_lora.safetensors")), outputs=["5"], expect_error=True).error()
    assert wrong["node_type"] == "LightX2VApplyLoRA"
    assert "None of the LoRA's 3 keys" in wrong["exception_message"] and "Flux" in wrong["exception_message"]
    small = run_prompt(sample_prompt(OURS, our_lora("test_small_model.safetensors")), outputs=["5"], expect_error=True).error()
    assert "LoRA key 'diffusion_model." in small["exception_message"] and "different model" in small["exception_message"]


class Int8Linear(torch.nn.Module):
    """Stand-in for a quantized layer: int8 weight, per-row scale, dequantized in forward."""

    def __init__(self, weight, bias):
        super().__init__()
        scale = weight.abs().amax(1, keepdim=True) / 127
        self.weight = torch.nn.Parameter(self.quantize(weight, scale), requires_grad=False)
        self.weight_scale = torch.nn.Parameter(scale, requires_grad=False)
        self.bias = torch.nn.Parameter(bias, requires_grad=False)

    @staticmethod
    def quantize(weight, scale):
        return torch.round(weight / scale).clamp(-128, 127).to(torch.int8)

    def forward(self, x):
        return torch.nn.functional.linear(x, self.weight.float() * self.weight_scale, self.bias)


class Int8LinearWithConvert(Int8Linear):
    """The ComfyUI contract for special weight formats: ModelPatcher dequantizes, merges, requantizes."""

    def convert_weight(self, weight, inplace=False, **kwargs):
        return weight.float() * self.weight_scale

    def set_weight(self, weight, inplace_update=False, seed=None, return_weight=False, **kwargs):
        q = self.quantize(weight, self.weight_scale)
        if return_weight:
            return q
        self.weight = torch.nn.Parameter(q, requires_grad=False)


@pytest.mark.parametrize("mode", ["merge", "side-branch"])
def test_quantized_layers(comfy_nodes, mode):
    import comfy.model_patcher
    import comfy.patcher_extension

    from lightx2v_nodes.lora.comfy_lora import WRAPPER_KEY, apply_plan
    from lightx2v_nodes.lora.mapping import plan_lora

    gen = torch.Generator().manual_seed(0)
    dit = torch.nn.Module()
    dit.plain = torch.nn.Linear(32, 48)
    dit.int8 = Int8Linear(torch.randn(48, 32, generator=gen), torch.randn(48, generator=gen))
    dit.int8_convert = Int8LinearWithConvert(torch.randn(48, 32, generator=gen), torch.randn(48, generator=gen))
    holder = torch.nn.Module()
    holder.diffusion_model = dit
    patcher = comfy.model_patcher.ModelPatcher(holder, torch.device("cpu"), torch.device("cpu"))
    lora = {}
    for name in ("plain", "int8", "int8_convert"):
        lora[f"diffusion_model.{name}.lora_up.weight"] = 0.3 * torch.randn(48, 4, generator=gen)
        lora[f"diffusion_model.{name}.lora_down.weight"] = torch.randn(4, 32, generator=gen) / 6
    before = {k: v.clone() for k, v in dit.state_dict().items()}
    dequantized = {"plain": dit.plain.weight.detach().clone(), "int8": dit.int8.weight.float() * dit.int8.weight_scale,
                   "int8_convert": dit.int8_convert.weight.float() * dit.int8_convert.weight_scale}
    plan = plan_lora(lora, {k: tuple(v.shape) for k, v in before.items()})
    patched = apply_plan(patcher, plan, 1.0, mode)
    wrappers = patched.get_wrappers(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY)
    assert set(wrappers[0].branches.modules) == ({"int8"} if mode == "merge" else {"plain", "int8", "int8_convert"})

    x = torch.randn(5, 32, generator=gen)
    patched.patch_model()
    with torch.inference_mode(), wrappers[0].branches.installed(dit):
        got = {name: getattr(dit, name)(x) for name in dequantized}
    patched.unpatch_model()
    for name, weight in dequantized.items():
        delta = lora[f"diffusion_model.{name}.lora_up.weight"] @ lora[f"diffusion_model.{name}.lora_down.weight"]
        want = torch.nn.functional.linear(x, weight + delta, getattr(dit, name).bias)
        # merged into int8 = requantized: within int8 rounding; everything else exact to fp32 rounding.
        tolerance = 2e-2 if (name == "int8_convert" and mode == "merge") else 1e-5
        assert rel_err(got[name], want) <= tolerance, name
    for key, value in dit.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_int8_model_merge_and_side_branch(files):
    """Our int8 (W8A8) model: the LoRA merged (dequantize-merge-requantize) or as a side branch lands within
    the quantization error of the exact fp32 merge, and the model comes back bit-exact afterwards."""
    quantized = {"class_type": "LightX2VLoadWanDiT", "inputs": {**OURS["inputs"], "quantization": "int8"}}
    name = "test_t2v_lightx2v.safetensors"
    exact_base = samples(sample_prompt(OURS))
    exact = samples(sample_prompt(OURS, our_lora(name, 1.0, "merge")))
    session = Session()
    base = session.run(sample_prompt(quantized)).output("5")["samples"]
    merged = session.run(sample_prompt(quantized, our_lora(name, 1.0, "merge"))).output("5")["samples"]
    side = session.run(sample_prompt(quantized, our_lora(name, 1.0, "side-branch"))).output("5")["samples"]
    again = session.run(sample_prompt(quantized)).output("5")["samples"]
    assert torch.equal(again, base)
    quant_error, lora_effect = rel_err(base, exact_base), rel_err(exact_base, exact)  # measured: 5.4e-3, 0.29
    assert quant_error < 0.05 * lora_effect, "int8 quantization error should be small here"
    for result in (merged, side):  # measured: merge 6.9e-3, side-branch 5.7e-3
        assert rel_err(result, exact) < 3 * quant_error
