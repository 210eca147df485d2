"""LoRA side branch: the shared projection of sibling layers (q/k/v, k/v, k_img/v_img) equals the per-module
path and merged weights, is never reused for another or a modified input, and is released right after use."""

import gc
import types
import weakref

import pytest
import torch

from lightx2v_nodes.lora import side_branch, synthetic
from lightx2v_nodes.lora.mapping import LoraPlan, plan_lora
from lightx2v_nodes.lora.merge import merge_plan
from lightx2v_nodes.lora.side_branch import SideBranches, input_groups
from lightx2v_nodes.wan import synthetic as wan_synthetic
from lightx2v_nodes.wan.model import WanDiT

pytestmark = pytest.mark.usefixtures("one_thread")

TOL = 1e-5  # fp32, relative


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def low_rank_patches(cfg, seed, modules=None):
    """Rank-8 pairs on every linear of the tiny model, or only on these block modules (e.g. "self_attn.q")."""
    lora = synthetic.make_lora(cfg, "alpha", rank=8, seed=seed)
    plan = plan_lora(lora, {k: tuple(v) for k, v in wan_synthetic.parameter_shapes(cfg).items()})
    return [p for p in plan.low_rank if modules is None or p.module.split(".", 2)[-1] in modules and p.module.startswith("blocks.")]


def make_model(cfg, weights):
    dit = WanDiT(**cfg.unet_config(), device="meta")
    dit.load_state_dict(weights, assign=True)
    return dit.eval()


def model_inputs(cfg):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, cfg.in_dim, 3, 8, 8, generator=gen)
    ctx = torch.randn(1, 7, cfg.text_dim, generator=gen)
    clip = torch.randn(1, 257, 1280, generator=gen) if cfg.in_dim != 16 else None
    return (x, torch.tensor([700.0]), ctx), {"clip_fea": clip}


def run_with(dit, inputs, chain):
    """dit's output with every SideBranches of `chain` installed (hooks of later ones run after earlier ones)."""
    args, kwargs = inputs
    with torch.inference_mode(), chain_installed(dit, chain):
        return dit(*args, **kwargs)


def chain_installed(dit, chain):
    import contextlib

    stack = contextlib.ExitStack()
    for branches in chain:
        stack.enter_context(branches.installed(dit))
    return stack


SELF = ("self_attn.q", "self_attn.k", "self_attn.v")
CROSS = ("cross_attn.k", "cross_attn.v", "cross_attn.k_img", "cross_attn.v_img")
SUBSETS = {
    "all": None,
    "attention only": SELF + CROSS,
    "q and v, k_img alone": ("self_attn.q", "self_attn.v", "cross_attn.k", "cross_attn.k_img"),
    "k only": ("self_attn.k", "cross_attn.v", "cross_attn.v_img"),
}


@pytest.mark.parametrize("task", ["t2v", "i2v"])
@pytest.mark.parametrize("subset", list(SUBSETS))
def test_shared_projection_equals_per_module_and_merge(task, subset):
    cfg = wan_synthetic.tiny_config(task)
    base = wan_synthetic.random_state_dict(cfg, seed=4)
    patches = low_rank_patches(cfg, 5, SUBSETS[subset])
    merged = {k: v.clone() for k, v in base.items()}
    merge_plan(merged, LoraPlan(patches, [], [], 0), strength=0.8)
    inputs = model_inputs(cfg)
    dit = make_model(cfg, base)
    with torch.inference_mode():
        want = make_model(cfg, merged)(*inputs[0], **inputs[1])
    shared = SideBranches(patches, 0.8)
    per_module = SideBranches(patches, 0.8, share_inputs=False)
    got = run_with(dit, inputs, [shared])
    reference = run_with(dit, inputs, [per_module])
    assert rel_err(got, reference) <= TOL and rel_err(got, want) <= TOL and rel_err(reference, want) <= TOL
    assert rel_err(want, run_with(dit, inputs, [])) > 1e-3, "the LoRA should change the output"
    assert not shared._shared, "no projection may outlive the forward"


def test_two_loras_on_the_same_modules():
    """Two pairs on one module inside one SideBranches, and two chained SideBranches (two LoRA nodes)."""
    cfg = wan_synthetic.tiny_config("i2v")
    base = wan_synthetic.random_state_dict(cfg, seed=6)
    first, second = low_rank_patches(cfg, 7), low_rank_patches(cfg, 8, SELF + CROSS + ("ffn.0",))
    merged = {k: v.clone() for k, v in base.items()}
    merge_plan(merged, LoraPlan(first, [], [], 0), strength=0.6)
    merge_plan(merged, LoraPlan(second, [], [], 0), strength=0.6)
    inputs = model_inputs(cfg)
    dit = make_model(cfg, base)
    with torch.inference_mode():
        want = make_model(cfg, merged)(*inputs[0], **inputs[1])
    together = SideBranches(first + second, 0.6)
    assert together.columns["blocks.0.self_attn.k"] == (16, 32)  # q's two rank-8 pairs come first
    one_node = run_with(dit, inputs, [together])
    chained = run_with(dit, inputs, [SideBranches(first, 0.6), SideBranches(second, 0.6)])
    per_module = run_with(dit, inputs, [SideBranches(first + second, 0.6, share_inputs=False)])
    for got in (one_node, chained, per_module):
        assert rel_err(got, want) <= TOL
    assert rel_err(one_node, per_module) <= TOL


def test_groups_come_from_sibling_names():
    names = ["blocks.3.self_attn.q", "blocks.3.self_attn.v", "blocks.3.self_attn.o", "blocks.3.cross_attn.q",
             "blocks.3.cross_attn.k", "blocks.3.cross_attn.v", "blocks.3.cross_attn.v_img", "blocks.4.self_attn.k",
             "blocks.3.ffn.0", "head.head", "q"]
    assert set(input_groups(names)) == {
        ("blocks.3.self_attn.q", "blocks.3.self_attn.v"), ("blocks.3.self_attn.o",), ("blocks.3.cross_attn.q",),
        ("blocks.3.cross_attn.k", "blocks.3.cross_attn.v"), ("blocks.3.cross_attn.v_img",),
        ("blocks.4.self_attn.k",), ("blocks.3.ffn.0",), ("head.head",), ("q",)}


def counting_projections(monkeypatch):
    """Counts side_branch's x @ down^T GEMMs (the model's own linears are not counted)."""
    calls = []

    def linear(x, weight, *rest):
        calls.append(weight.shape[0])
        return torch.nn.functional.linear(x, weight, *rest)

    monkeypatch.setattr(side_branch, "F", types.SimpleNamespace(linear=linear))
    return calls


def test_siblings_read_their_input_once_and_release_it(monkeypatch):
    cfg = wan_synthetic.tiny_config("i2v", layers=1)
    dit = make_model(cfg, wan_synthetic.random_state_dict(cfg, seed=1))
    blocks = SELF + CROSS + ("self_attn.o", "cross_attn.q", "cross_attn.o", "ffn.0", "ffn.2")
    branches = SideBranches(low_rank_patches(cfg, 2, blocks), 1.0)
    args, kwargs = model_inputs(cfg)
    calls = counting_projections(monkeypatch)
    attn, group = dit.blocks[0].self_attn, ("blocks.0.self_attn.q", "blocks.0.self_attn.k", "blocks.0.self_attn.v")
    seen = {}

    def after_q(module, args, output):  # registered after the LoRA hook, so it runs after it
        seen["h"] = weakref.ref(branches._shared[group].h)
        seen["waiting"] = set(branches._shared[group].waiting)

    def after_v(module, args, output):
        seen["released"] = group not in branches._shared

    with branches.installed(dit):
        handles = [attn.q.register_forward_hook(after_q), attn.v.register_forward_hook(after_v)]
        with torch.inference_mode():
            dit(*args, **kwargs)
        for handle in handles:
            handle.remove()
    # 12 linears: self q/k/v one GEMM, cross k/v one, k_img/v_img one, the 5 others their own.
    assert sorted(calls) == sorted([24, 16, 16] + [8] * 5)
    assert seen["waiting"] == {group[1], group[2]} and seen["released"]
    gc.collect()
    assert seen["h"]() is None and not branches._shared


def test_projection_is_never_reused_for_another_or_modified_input():
    cfg = wan_synthetic.tiny_config(layers=1)
    dit = make_model(cfg, wan_synthetic.random_state_dict(cfg, seed=1))
    patches = low_rank_patches(cfg, 2, SELF)
    attn = dit.blocks[0].self_attn
    scenarios = {  # (module, input) calls; "modify" doubles x in place (its version counter moves)
        "another input": [("q", "x"), ("k", "y"), ("v", "x"), ("q", "x")],
        "modified in place": [("q", "x"), "modify", ("k", "x"), ("v", "x")],
        "a member runs twice": [("q", "x"), ("k", "x"), ("q", "x"), ("v", "x"), ("k", "x")],
    }

    def outputs(branches, calls):
        gen = torch.Generator().manual_seed(9)
        tensors = {"x": torch.randn(1, 5, cfg.dim, generator=gen), "y": torch.randn(1, 5, cfg.dim, generator=gen)}
        out = []
        with branches.installed(dit), torch.no_grad():
            for call in calls:
                if call == "modify":
                    tensors["x"].mul_(2)
                else:
                    out.append(getattr(attn, call[0])(tensors[call[1]]))
        return out

    for name, calls in scenarios.items():
        shared = SideBranches(patches, 1.0)
        got, want = outputs(shared, calls), outputs(SideBranches(patches, 1.0, share_inputs=False), calls)
        assert all(rel_err(a, b) <= TOL for a, b in zip(got, want)), name
        assert not shared._shared


def test_outputs_that_need_autograd_take_the_out_of_place_add():
    cfg = wan_synthetic.tiny_config(layers=1)
    dit = make_model(cfg, wan_synthetic.random_state_dict(cfg, seed=1))
    branches = SideBranches(low_rank_patches(cfg, 2), 0.5)
    args, kwargs = model_inputs(cfg)
    with torch.inference_mode(), branches.installed(dit):
        want = dit(*args, **kwargs)
    dit.blocks[0].self_attn.q.weight.requires_grad_(True)
    with branches.installed(dit):
        got = dit(*args, **kwargs)
    assert got.requires_grad and rel_err(got.detach(), want) <= TOL
    got.square().mean().backward()
    assert dit.blocks[0].self_attn.q.weight.grad is not None


def test_compiled_phases_trace_without_graph_breaks():
    """Under torch.compile the shared cache is bypassed: its host bookkeeping would split the phase's graph."""
    from lightx2v_nodes.wan.attention import SDPA
    from lightx2v_nodes.wan.model import rope_tables

    cfg = wan_synthetic.tiny_config(layers=1)
    dit = make_model(cfg, wan_synthetic.random_state_dict(cfg, seed=1))
    block = dit.blocks[0]
    block.set_attention(SDPA)
    gen = torch.Generator().manual_seed(0)
    x, mod = torch.randn(1, 48, cfg.dim, generator=gen), [torch.randn(1, 1, cfg.dim, generator=gen) * 0.1 for _ in range(6)]
    rope = rope_tables(128, 3, 4, 4, device="cpu")
    branches = SideBranches(low_rank_patches(cfg, 2, SELF), 1.0)
    with torch.inference_mode(), branches.installed(dit):
        eager = block.self_attention_phase(x, mod, rope)
        explained = torch._dynamo.explain(lambda x: block.self_attention_phase(x, mod, rope))(x)
        compiled = torch.compile(lambda x: block.self_attention_phase(x, mod, rope), backend="aot_eager")(x)
    torch._dynamo.reset()
    assert explained.graph_break_count == 0, explained.break_reasons
    assert rel_err(compiled, eager) <= TOL


# ---- folding the branch into a transient copy of 16-bit weights ----

@pytest.mark.parametrize("task", ["t2v", "i2v"])
def test_folded_weights_equal_the_activation_path_and_are_restored(task):
    cfg = wan_synthetic.tiny_config(task)
    dit = make_model(cfg, wan_synthetic.random_state_dict(cfg, seed=4))
    inputs = model_inputs(cfg)
    patches = low_rank_patches(cfg, 5)
    stored = {name: (p, p.detach().clone()) for name, p in dit.named_parameters()}
    activation = run_with(dit, inputs, [SideBranches(patches, 0.8, fold_weights=False)])
    chained = [SideBranches(patches, 0.8, fold_weights=True), SideBranches(low_rank_patches(cfg, 6), -0.5, fold_weights=True)]
    folded = run_with(dit, inputs, chained[:1])
    assert rel_err(folded, activation) <= TOL
    both_folded = run_with(dit, inputs, chained)
    both_activation = run_with(dit, inputs, [SideBranches(patches, 0.8, fold_weights=False),
                                             SideBranches(low_rank_patches(cfg, 6), -0.5, fold_weights=False)])
    assert rel_err(both_folded, both_activation) <= TOL
    for name, p in dit.named_parameters():  # the very same Parameter objects, bit-identical values
        assert p is stored[name][0] and torch.equal(p, stored[name][1]), name


def test_folding_is_chosen_by_memory_traffic_and_undone_after_an_error():
    assert side_branch._folding_pays(32760, 5120, 5120) and side_branch._folding_pays(32760, 13824, 5120)
    assert not side_branch._folding_pays(512, 5120, 5120)  # the text context of cross-attention k/v
    cfg = wan_synthetic.tiny_config("t2v")
    dit = make_model(cfg, wan_synthetic.random_state_dict(cfg, seed=4))
    branches = SideBranches(low_rank_patches(cfg, 5), 1.0, fold_weights=True)
    q = dit.blocks[0].self_attn.q
    original = q.weight

    def fail(module, args):
        raise RuntimeError("interrupted")

    handle = q.register_forward_pre_hook(fail)  # registered after the fold hook: the weight is folded by then
    with pytest.raises(RuntimeError, match="interrupted"), torch.inference_mode():
        with branches.installed(dit):
            q(torch.randn(3, cfg.dim))
    handle.remove()
    assert q.weight is original and not branches._folded
