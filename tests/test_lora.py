"""LoRA key mapping, merge math, report and side branch, without ComfyUI (lightx2v_nodes.lora)."""


import pytest
import torch

from lightx2v_nodes.errors import LightX2VError
from lightx2v_nodes.lora import synthetic
from lightx2v_nodes.lora.files import read_lora_file
from lightx2v_nodes.lora.mapping import plan_lora
from lightx2v_nodes.lora.merge import merge_plan
from lightx2v_nodes.lora.report import details, group_keys, summary
from lightx2v_nodes.lora.side_branch import SideBranches
from lightx2v_nodes.wan import synthetic as wan_synthetic
from lightx2v_nodes.wan.model import WanDiT
from test_diffusers_keys import diffusers_name as diffusers_parameter_name

pytestmark = pytest.mark.usefixtures("one_thread")


def diffusers_name(module):
    """The diffusers name of an original Wan module, from test_diffusers_keys.py's table (not the engine's)."""
    return diffusers_parameter_name(module + ".weight").removesuffix(".weight")


def low_rank_keys(family, module, prefix):
    """(up key, down key, alpha key or None) of one module, spelled as each family spells it."""
    if family in ("lightx2v", "alpha"):
        return f"{prefix}{module}.lora_up.weight", f"{prefix}{module}.lora_down.weight", (f"{prefix}{module}.alpha" if family == "alpha" else None)
    if family == "peft":
        name = diffusers_name(module)
        return f"transformer.{name}.lora_B.weight", f"transformer.{name}.lora_A.weight", None
    name = "lora_unet_" + module.replace(".", "_")
    return f"{name}.lora_up.weight", f"{name}.lora_down.weight", f"{name}.alpha"


def expected_weights(base, lora, family, prefix, strength):
    """The merged parameters, computed from the file in float64 with this test's own reading of the keys."""
    out = {k: v.double().clone() for k, v in base.items()}
    if family != "diff":
        for module in {k.rsplit(".", 1)[0] for k, v in base.items() if k.endswith(".weight") and v.dim() == 2}:
            up_key, down_key, alpha_key = low_rank_keys(family, module, prefix)
            up, down = lora[up_key].double(), lora[down_key].double()
            scale = lora[alpha_key].item() / down.shape[0] if alpha_key else 1.0
            out[f"{module}.weight"] += strength * scale * (up @ down)
    for key, value in lora.items():
        name = key[len(prefix):]
        if key.endswith(".diff_b"):
            target = name[: -len(".diff_b")] + ".bias"
        elif key.endswith(".diff_m"):
            target = name[: -len(".diff_m")] + ".modulation"
        elif key.endswith(".diff"):
            name = name[: -len(".diff")]
            target = name if name in base else name + ".weight"
        else:
            continue
        out[target] += strength * value.double().reshape(out[target].shape)
    return out


def rel_err(a, b):
    a, b = a.detach().cpu().double(), b.detach().cpu().double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


@pytest.mark.parametrize("task", ["t2v", "i2v"])
@pytest.mark.parametrize("family,prefix", [
    ("lightx2v", "diffusion_model."), ("lightx2v", "model.diffusion_model."), ("lightx2v", ""),
    ("alpha", "diffusion_model."), ("peft", ""), ("kohya", ""), ("diff", "diffusion_model."), ("diff", ""),
])
def test_merge_equals_independent_computation(task, family, prefix):
    cfg = wan_synthetic.tiny_config(task)
    base = wan_synthetic.random_state_dict(cfg, seed=2)
    lora = synthetic.make_lora(cfg, family, rank=8, seed=3, prefix=prefix)
    plan = plan_lora(lora, {k: tuple(v.shape) for k, v in base.items()})
    assert plan.unmatched == []
    merged = {k: v.clone() for k, v in base.items()}
    merge_plan(merged, plan, strength=0.7)
    expected = expected_weights(base, lora, family, prefix, 0.7)
    changed = [k for k in base if not torch.equal(merged[k], base[k])]
    assert changed, "nothing was merged"
    for key in base:
        assert rel_err(merged[key], expected[key]) <= 1e-6, key
    touched = set(changed)
    if family in ("lightx2v", "diff"):
        assert "blocks.1.modulation" in touched and "blocks.0.norm3.bias" in touched
    if task == "i2v" and family != "diff":
        assert {"blocks.0.cross_attn.k_img.weight", "blocks.0.cross_attn.v_img.weight"} <= touched
    if task == "i2v" and family == "lightx2v":
        assert "blocks.0.cross_attn.norm_k_img.weight" in touched


class NotATensor:
    """Any pickled object besides tensors: loading it could run code, so it must be refused."""


@pytest.mark.parametrize("rename", [
    ("lora_unet_", "lora_unet__"),  # Wan Fun LoRAs
    ("transformer.", "base_model.model."),  # PEFT without the diffusers prefix
    (".weight", ".default.weight"),  # PEFT adapter named "default"
])
def test_spelling_variants_map_like_the_original(rename):
    cfg = wan_synthetic.tiny_config()
    shapes = {k: tuple(v) for k, v in wan_synthetic.parameter_shapes(cfg).items()}
    family = "kohya" if rename[0] == "lora_unet_" else "peft"
    lora = synthetic.make_lora(cfg, family, rank=4)
    renamed = {k.replace(*rename): v for k, v in lora.items()}
    assert renamed.keys() != lora.keys()
    want, got = plan_lora(lora, shapes), plan_lora(renamed, shapes)
    assert got.unmatched == [] and len(got.low_rank) == len(want.low_rank) == 26
    assert [(p.target, p.scale) for p in got.low_rank] == [(p.target, p.scale) for p in want.low_rank]


def test_pt_files_load_weights_only(tmp_path):
    cfg = wan_synthetic.tiny_config()
    lora = synthetic.make_lora(cfg, "lightx2v", rank=4)
    path = synthetic.write_lora(lora, str(tmp_path / "l.pt"))
    assert torch.equal(read_lora_file(path)["diffusion_model.blocks.0.diff_m"], lora["diffusion_model.blocks.0.diff_m"])
    torch.save({"x": NotATensor()}, tmp_path / "evil.pt")
    with pytest.raises(LightX2VError, match="Refused to load .evil.pt.: it asks to call"):
        read_lora_file(str(tmp_path / "evil.pt"))


def shapes_of(cfg):
    return {k: tuple(v) for k, v in wan_synthetic.parameter_shapes(cfg).items()}


def test_report_groups_unmatched_keys_in_one_line():
    cfg = wan_synthetic.tiny_config()
    lora = synthetic.make_lora(cfg, "lightx2v", rank=4)
    lora.update({f"diffusion_model.blocks.{i}.foo.lora_up.weight": torch.zeros(2, 2) for i in range(2)})
    lora["lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight"] = torch.zeros(2, 2)
    plan = plan_lora(lora, shapes_of(cfg))
    assert len(plan.unmatched) == 3
    assert group_keys(plan.unmatched)[0] == ("diffusion_model.blocks.*.foo.lora_up.weight", 2)
    line = summary(plan, "x.safetensors", 1.0, "merge")
    assert "\n" not in line
    assert "26 linear weights" in line and "2 modulation tensors" in line and "3 keys matched nothing" in line
    assert "blocks.*.foo.lora_up.weight x2" in line
    assert len(details(plan)) == len(plan.low_rank) + len(plan.diffs) + 3


def test_lora_for_another_model_is_an_error():
    cfg = wan_synthetic.tiny_config()
    flux = {f"diffusion_model.double_blocks.{i}.img_attn.qkv.lora_up.weight": torch.zeros(4, 2) for i in range(3)}
    with pytest.raises(LightX2VError, match="None of the LoRA's 3 keys.*Flux"):
        plan_lora(flux, shapes_of(cfg))
    with pytest.raises(LightX2VError, match="no tensors"):
        plan_lora({}, shapes_of(cfg))


def test_shape_mismatch_names_the_key():
    small = wan_synthetic.tiny_config(dim=128)
    big = wan_synthetic.tiny_config(dim=256)
    lora = synthetic.make_lora(small, "lightx2v", rank=4)
    with pytest.raises(LightX2VError, match=r"LoRA key 'diffusion_model\.[\w.]+' .*different model"):
        plan_lora(lora, shapes_of(big))
    only_diffs = {"diffusion_model.blocks.0.diff_m": torch.zeros(1, 6, 128)}
    with pytest.raises(LightX2VError, match=r"'diffusion_model\.blocks\.0\.diff_m' has shape \[1, 6, 128\]"):
        plan_lora(only_diffs, shapes_of(big))
    broken = {"diffusion_model.blocks.0.ffn.0.lora_up.weight": torch.zeros(512, 4),
              "diffusion_model.blocks.0.ffn.0.lora_down.weight": torch.zeros(8, 256)}
    with pytest.raises(LightX2VError, match="rank 4 .* rank 8"):
        plan_lora(broken, shapes_of(big))
    half = {"diffusion_model.blocks.0.ffn.0.lora_up.weight": torch.zeros(512, 4)}
    with pytest.raises(LightX2VError, match="no matching down"):
        plan_lora(half, shapes_of(big))


def test_side_branch_equals_merge_fp32():
    torch.manual_seed(0)
    cfg = wan_synthetic.tiny_config("t2v")
    base = wan_synthetic.random_state_dict(cfg, seed=4)
    lora = synthetic.make_lora(cfg, "alpha", rank=8, seed=5)
    plan = plan_lora(lora, {k: tuple(v.shape) for k, v in base.items()})
    merged = {k: v.clone() for k, v in base.items()}
    merge_plan(merged, plan, strength=0.8)

    def model(weights):
        dit = WanDiT(**cfg.unet_config(), device="meta")
        dit.load_state_dict(weights, assign=True)
        return dit.eval()

    x, t, ctx = torch.randn(1, 16, 3, 8, 8), torch.tensor([700.0]), torch.randn(1, 7, cfg.text_dim)
    with torch.inference_mode():
        want = model(merged)(x, t, ctx)
        plain = model(base)
        branches = SideBranches(plan.low_rank, strength=0.8)
        with branches.installed(plain):
            got = plain(x, t, ctx)
        after = plain(x, t, ctx)
        base_out = model(base)(x, t, ctx)
    assert rel_err(got, want) <= 1e-5
    assert rel_err(want, base_out) > 1e-2, "the LoRA should change the output"
    assert torch.equal(after, base_out), "hooks must be gone after the context"
    assert all(not m._forward_hooks for m in plain.modules())
