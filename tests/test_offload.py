"""Offload scheduler core (no ComfyUI): exact equality for every mode, the copy/compute order, lazy loading,
quantized layers, LoRA side branches, interrupts, out-of-order blocks, the VRAM planner, bad settings."""

import pytest
import torch

from lightx2v_nodes.errors import LightX2VError
from lightx2v_nodes.offload import OffloadScheduler, OffloadSettings
from lightx2v_nodes.offload.planner import GiB, ModelSizes, plan_offload, video_tokens
from lightx2v_nodes.wan import synthetic
from lightx2v_nodes.wan.model import FEATURE_CACHE_KEY, WanDiT

LAYERS = 3


def build(task="t2v", dtype=torch.float32, blocks_on_meta=False, seed=0):
    cfg = synthetic.tiny_config(task, dim=128, layers=LAYERS, ffn_dim=256)
    sd = {k: v.to(torch.float32 if k.startswith("patch_embedding") else dtype)
          for k, v in synthetic.random_state_dict(cfg, seed).items()}
    dit = WanDiT(cfg.model_type, in_dim=cfg.in_dim, dim=cfg.dim, ffn_dim=cfg.ffn_dim, num_heads=cfg.num_heads,
                 num_layers=cfg.num_layers, flf_pos_embed_token_number=cfg.flf_pos_embed_token_number,
                 device="meta", dtype=dtype)
    if blocks_on_meta:
        dit.load_state_dict({k: v for k, v in sd.items() if not k.startswith("blocks.")}, strict=False, assign=True)
    else:
        dit.load_state_dict(sd, assign=True)
    return dit.requires_grad_(False), sd, cfg


def inputs(cfg, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, cfg.in_dim, 2, 4, 6, generator=gen).to(dtype)
    kwargs = {"clip_fea": torch.randn(2, 257, 1280, generator=gen).to(dtype)} if cfg.model_type == "i2v" else {}
    return (x, torch.tensor([900.0, 300.0]), torch.randn(2, 5, 4096, generator=gen).to(dtype)), kwargs


def run(dit, args, kwargs, scheduler=None, times=2):
    outs = []
    with torch.no_grad():
        if scheduler is not None:
            scheduler.install()
        try:
            for _ in range(times):
                outs.append(dit(*args, **kwargs))
        finally:
            if scheduler is not None:
                scheduler.uninstall()
    return outs


@pytest.fixture(scope="module")
def t2v():
    dit, sd, cfg = build()
    args, kwargs = inputs(cfg)
    return dit, sd, cfg, args, kwargs, run(dit, args, kwargs, times=1)[0]


@pytest.mark.parametrize("granularity,resident,prefetch", [
    ("block", 0, 1), ("block", 1, 2), ("block", 0, 4), ("block", LAYERS, 1),
    ("phase", 0, 1), ("phase", 1, 1), ("phase", 0, 4), ("phase", 2, 2),
])
def test_every_mode_equals_no_offload(t2v, granularity, resident, prefetch):
    dit, _, _, args, kwargs, expected = t2v
    before = {k: v.clone() for k, v in dit.state_dict().items()}
    scheduler = OffloadScheduler(dit, OffloadSettings(granularity, resident, prefetch), "cpu")
    for out in run(dit, args, kwargs, scheduler, times=3):
        assert torch.equal(out, expected)
    after = dit.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # uninstall leaves the weights as they were
    assert all(block.phase_gate is None for block in dit.blocks)


def test_bf16_i2v_equals_no_offload():
    dit, _, cfg = build("i2v", torch.bfloat16)
    args, kwargs = inputs(cfg, torch.bfloat16)
    expected = run(dit, args, kwargs, times=1)[0]
    for granularity in ("block", "phase"):
        scheduler = OffloadScheduler(dit, OffloadSettings(granularity, 1, 1), "cpu")
        assert all(torch.equal(out, expected) for out in run(dit, args, kwargs, scheduler))


def traced_run(dit, args, kwargs, settings, times=2):
    scheduler = OffloadScheduler(dit, settings, "cpu")
    scheduler.install()
    scheduler.trace = []
    with torch.no_grad():
        for _ in range(times):
            dit(*args, **kwargs)
    trace = scheduler.trace
    scheduler.uninstall()
    return trace


def test_block_order_prefetch_one(t2v):
    """Two slots: the next block is copied while one computes, into the slot the block before it left; wraps around."""
    dit, _, _, args, kwargs, _ = t2v
    trace = traced_run(dit, args, kwargs, OffloadSettings("block", 0, 1))
    assert trace == [
        ("copy", "block 0", 0), ("copy", "block 1", 1), ("compute", "block 0"),
        ("copy", "block 2", 0), ("compute", "block 1"),
        ("copy", "block 0", 1), ("compute", "block 2"),  # the next step's first block, during the last one
        ("copy", "block 1", 0), ("compute", "block 0"),
        ("copy", "block 2", 1), ("compute", "block 1"),
        ("copy", "block 0", 0), ("compute", "block 2"),
    ]


def test_phase_order_with_a_resident_block(t2v):
    dit, _, _, args, kwargs, _ = t2v
    trace = traced_run(dit, args, kwargs, OffloadSettings("phase", 1, 1), times=1)
    assert trace == [
        ("copy", "block 0.0", 0), ("copy", "block 0.1", 1), ("compute", "block 0.0"),
        ("copy", "block 0.2", 0), ("compute", "block 0.1"),
        ("copy", "block 1.0", 1), ("compute", "block 0.2"),
        ("copy", "block 1.1", 0), ("compute", "block 1.0"),
        ("copy", "block 1.2", 1), ("compute", "block 1.1"),
        ("copy", "block 0.0", 0), ("compute", "block 1.2"),  # block 2 is resident: prefetch goes on to the next step
        ("compute", "block 2.0"), ("compute", "block 2.1"), ("compute", "block 2.2"),
    ]


@pytest.mark.parametrize("granularity,prefetch", [("block", 1), ("block", 3), ("phase", 2), ("phase", 5)])
def test_schedule_invariants(t2v, granularity, prefetch):
    """Replay the trace: every streamed unit is copied before it computes, no slot is overwritten before its unit
    has computed (a ("compute", u) entry marks u's start; the copies listed before it were issued once the unit
    before u had been enqueued, behind an event), at most prefetch + 1 units are copied and not yet computed, and
    resident units are never copied."""
    dit, _, _, args, kwargs, _ = t2v
    trace = traced_run(dit, args, kwargs, OffloadSettings(granularity, 1, prefetch), times=3)
    resident = {f"block {LAYERS - 1}"} if granularity == "block" else {f"block {LAYERS - 1}.{p}" for p in range(3)}
    slot_holder, waiting = {}, []
    for event in trace:
        if event[0] == "copy":
            _, unit, slot = event
            assert unit not in resident
            assert slot_holder.get(slot) not in waiting
            slot_holder[slot] = unit
            waiting.append(unit)
            assert len(waiting) <= prefetch + 1
        else:
            unit = event[1]
            if unit not in resident:
                assert unit in waiting and unit in slot_holder.values()
                assert slot_holder[[s for s, u in slot_holder.items() if u == unit][0]] == unit
                waiting.remove(unit)
    assert {u for e in trace if e[0] == "compute" for u in [e[1]]} >= resident


@pytest.mark.parametrize("granularity,resident,prefetch", [("block", 0, 1), ("phase", 0, 1), ("block", 2, 1), ("phase", 1, 2),
                                                            ("phase", 0, 7), ("block", 0, 3)])
def test_lazy_loading_equals_eager(tmp_path, t2v, granularity, resident, prefetch):
    _, sd, cfg, args, kwargs, expected = t2v
    folder = synthetic.write_checkpoint(sd, str(tmp_path / "blocks"), "blocks", "fp32")
    lazy, _, _ = build(blocks_on_meta=True)
    scheduler = OffloadScheduler(lazy, OffloadSettings(granularity, resident, prefetch, lazy_dir=folder, disk_workers=2), "cpu")
    outs = run(lazy, args, kwargs, scheduler, times=3)
    assert all(torch.equal(out, expected) for out in outs)
    assert len(scheduler.reader.buffers) == 0  # closed; while running it held 3 block buffers, never the model
    weight = lazy.blocks[0].ffn[0].weight
    assert weight.untyped_storage().nbytes() == weight.element_size()  # at rest: a placeholder, not the weights


def test_lazy_reads_another_float_dtype_under_inference_mode(tmp_path, t2v):
    """A bf16 folder streamed into an fp32 model, run as ComfyUI runs it: in inference mode, which the reader's
    threads (converting bf16 to fp32 in place) do not inherit."""
    _, sd, _, args, kwargs, _ = t2v
    folder = synthetic.write_checkpoint(sd, str(tmp_path / "blocks"), "blocks", "bf16")
    rounded, _, _ = build()
    # Only the blocks come from the folder; the model's non-block weights stay fp32.
    rounded.load_state_dict({k: v.to(torch.bfloat16).float() if k.startswith("blocks.") else v for k, v in sd.items()})
    lazy, _, _ = build(blocks_on_meta=True)
    scheduler = OffloadScheduler(lazy, OffloadSettings("block", 0, 1, lazy_dir=folder, disk_workers=2), "cpu")
    with torch.inference_mode():
        expected = rounded(*args, **kwargs)
        scheduler.install()
        try:
            out = lazy(*args, **kwargs)
        finally:
            scheduler.uninstall()
    assert torch.equal(out, expected)


@pytest.mark.parametrize("lazy", [False, True], ids=["eager", "lazy"])
def test_a_run_in_the_other_inference_mode_reinstalls(tmp_path, t2v, lazy):
    """ComfyUI's executor installs and samples under inference mode; a script or node may sample the same MODEL
    later outside it. Buffers made in one mode cannot be written in the other: the scheduler says so, and
    installed again in the run's mode it streams the same result (the ComfyUI side reloads on that signal)."""
    dit, sd, cfg, args, kwargs, expected = t2v
    folder = synthetic.write_checkpoint(sd, str(tmp_path / "blocks"), "blocks", "fp32") if lazy else ""
    model = build(blocks_on_meta=True)[0] if lazy else dit
    scheduler = OffloadScheduler(model, OffloadSettings("phase", 1, 2, lazy_dir=folder), "cpu")
    outs = []
    try:
        for inference in (True, False, True):
            mode = torch.inference_mode() if inference else torch.no_grad()
            with mode:
                if scheduler.installed and not scheduler.fits_current_mode():
                    scheduler.uninstall()
                scheduler.install()
                assert scheduler.fits_current_mode() and scheduler.slots[0].flat.is_inference() == inference
                outs.append(model(*args, **kwargs))
                scheduler.finish()
        assert not scheduler.fits_current_mode()  # installed under inference mode, asked outside it
        with torch.no_grad(), pytest.raises(RuntimeError, match="[Ii]nference"):
            model(*args, **kwargs)  # what the reinstall avoids: streaming into inference buffers outside the mode
    finally:
        scheduler.uninstall()
    assert all(torch.equal(out, expected) for out in outs)


def test_lazy_folder_mismatch_is_a_clear_error(tmp_path, t2v):
    _, sd, _, _, _, _ = t2v
    folder = synthetic.write_checkpoint({k: v.to(torch.bfloat16) for k, v in sd.items()}, str(tmp_path / "b"), "blocks", "bf16")
    int8, _, _ = build(blocks_on_meta=True)
    from lightx2v_nodes.quant import install_quant_linears

    install_quant_linears(int8, "int8", "weight_only")
    with pytest.raises(LightX2VError, match="same quantization"):
        OffloadScheduler(int8, OffloadSettings("block", 0, 1, lazy_dir=folder), "cpu").install()
    with pytest.raises(LightX2VError, match="block_0.safetensors"):
        OffloadScheduler(build(blocks_on_meta=True)[0], OffloadSettings(lazy_dir=str(tmp_path)), "cpu").install()
    good = synthetic.write_checkpoint(sd, str(tmp_path / "c"), "blocks", "fp32")
    path = tmp_path / "c" / "block_1.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    model, _, cfg = build(blocks_on_meta=True)
    args, kwargs = inputs(cfg)
    with pytest.raises(LightX2VError, match="truncated"):
        run(model, args, kwargs, OffloadScheduler(model, OffloadSettings("block", 0, 1, lazy_dir=good), "cpu"))


def test_quantized_layers_and_side_branch_lora_stream(t2v):
    """8-bit weights + float32 scales are streamed like any tensor; LoRA forward hooks on the linears still fire."""
    from lightx2v_nodes.lora.mapping import LowRankPatch
    from lightx2v_nodes.lora.side_branch import SideBranches
    from lightx2v_nodes.quant import quantize_dit_, set_quant_mode

    dit, _, cfg = build(seed=3)
    quantize_dit_(dit, "int8")
    set_quant_mode(dit, "weight_only")
    args, kwargs = inputs(cfg)
    gen = torch.Generator().manual_seed(1)
    patches = [LowRankPatch(target=f"blocks.{i}.ffn.0.weight", source="test", alpha=None,
                            down=torch.randn(4, cfg.dim, generator=gen), up=torch.randn(cfg.ffn_dim, 4, generator=gen) * 0.1)
               for i in range(LAYERS)]
    branches = SideBranches(patches, strength=0.5)
    with branches.installed(dit):
        expected = run(dit, args, kwargs, times=1)[0]
        for granularity in ("block", "phase"):
            scheduler = OffloadScheduler(dit, OffloadSettings(granularity, 0, 2), "cpu")
            assert all(torch.equal(out, expected) for out in run(dit, args, kwargs, scheduler))
    assert not torch.equal(run(dit, args, kwargs, times=1)[0], expected)  # the branch did contribute


def test_interrupted_run_leaves_the_model_usable(t2v):
    dit, _, _, args, kwargs, expected = t2v
    scheduler = OffloadScheduler(dit, OffloadSettings("phase", 0, 2), "cpu")
    scheduler.install()
    handle = dit.blocks[1].cross_attn.register_forward_pre_hook(lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
    try:
        with pytest.raises(KeyboardInterrupt), torch.no_grad():
            dit(*args, **kwargs)
    finally:
        handle.remove()
    scheduler.finish()
    with torch.no_grad():
        assert torch.equal(dit(*args, **kwargs), expected)
    scheduler.uninstall()
    assert torch.equal(run(dit, args, kwargs, times=1)[0], expected)


def test_blocks_out_of_order_and_feature_cache_hook(t2v):
    """A patches_replace that runs a block twice, and a feature cache calling run_blocks: same as without offload."""
    dit, _, _, args, kwargs, _ = t2v

    def twice(block_args, extra):
        once = extra["original_block"](block_args)
        return extra["original_block"]({**block_args, "img": once["img"]})

    def cache(tokens, e, e0, options, compute):
        return compute(slice(None))

    options = {"patches_replace": {"dit": {("double_block", 1): twice}}, FEATURE_CACHE_KEY: cache}
    kw = {**kwargs, "transformer_options": options}
    expected = run(dit, args, kw, times=1)[0]
    for granularity in ("block", "phase"):
        scheduler = OffloadScheduler(dit, OffloadSettings(granularity, 0, 1), "cpu")
        assert all(torch.equal(out, expected) for out in run(dit, args, kw, scheduler))


def test_bad_settings(t2v):
    dit = t2v[0]
    with pytest.raises(LightX2VError, match="granularity"):
        OffloadScheduler(dit, OffloadSettings("layer"), "cpu")
    with pytest.raises(LightX2VError, match="resident_blocks must be between 0 and 3"):
        OffloadScheduler(dit, OffloadSettings("block", 4), "cpu")
    with pytest.raises(LightX2VError, match="prefetch depth"):
        OffloadScheduler(dit, OffloadSettings("block", 0, 0), "cpu")


# ---- planner ----

WAN14B_FP8 = ModelSizes(num_blocks=40, block_bytes=int(0.353e9), phase_bytes=int(0.142e9), non_block_bytes=int(0.47e9),
                        dim=5120, ffn_dim=13824)
WAN14B_BF16 = ModelSizes(num_blocks=40, block_bytes=int(0.703e9), phase_bytes=int(0.283e9), non_block_bytes=int(0.47e9),
                         dim=5120, ffn_dim=13824)


def test_planner_picks_mode_and_residents():
    tokens = video_tokens(832, 480, 81)
    assert tokens == 32760
    roomy = plan_offload(WAN14B_BF16, 80 * GiB, tokens)
    assert roomy.mode == "none"
    eight = plan_offload(WAN14B_FP8, 8 * GiB, tokens)
    assert eight.mode == "block" and 0 < eight.resident_blocks < 40
    assert eight.weights_bytes + eight.activation_bytes <= 8 * GiB
    assert plan_offload(WAN14B_FP8, 8 * GiB, tokens, resident_override=0).resident_blocks == 0
    more = plan_offload(WAN14B_FP8, 8 * GiB, tokens, prefetch=3)
    assert more.resident_blocks < eight.resident_blocks  # deeper prefetch costs slots
    tight = plan_offload(WAN14B_BF16, eight.activation_bytes + int(1.4 * GiB), tokens)
    assert tight.mode == "phase"  # two bf16 blocks do not fit, three phases do
    line = eight.describe()
    assert "\n" not in line and "block offload" in line and "GiB" in line
    hd_tokens = video_tokens(1280, 720, 81)
    hd, sd = plan_offload(WAN14B_FP8, 16 * GiB, hd_tokens), plan_offload(WAN14B_FP8, 16 * GiB, tokens)
    assert hd.activation_bytes > sd.activation_bytes and hd.resident_blocks < sd.resident_blocks
    # 720p whole-sequence activations measured 7.6 GiB on the H100: 8 GiB fits only token-chunked
    # (tests/test_token_chunking.py), and is refused with the numbers when chunking is not allowed
    with pytest.raises(LightX2VError, match="too small for this model at 75600 tokens"):
        plan_offload(WAN14B_FP8, 8 * GiB, hd_tokens, allow_chunking=False)


def test_planner_errors():
    with pytest.raises(LightX2VError, match="too small.*at least"):
        plan_offload(WAN14B_FP8, 2 * GiB, 32760)
    with pytest.raises(LightX2VError, match="only 40 blocks"):
        plan_offload(WAN14B_FP8, 8 * GiB, 32760, resident_override=41)
    with pytest.raises(LightX2VError, match="Unknown offload mode"):
        plan_offload(WAN14B_FP8, 8 * GiB, 32760, mode="layers")


def test_model_sizes_of_a_dit(t2v):
    dit = t2v[0]
    sizes = ModelSizes.of(dit)
    total = sum(t.numel() * t.element_size() for t in dit.state_dict().values())
    assert sizes.num_blocks == LAYERS
    assert sizes.non_block_bytes + LAYERS * sizes.block_bytes >= total  # blocks are counted packed (aligned)
    assert 0.3 < sizes.phase_bytes / sizes.block_bytes < 0.6  # FFN, the largest phase


def test_streamed_blocks_move_into_one_packed_buffer_each():
    """Each streamed block ends up in one host buffer, its units back to back, reused by later installs and
    released when the module lets go of it; resident blocks are left where they are."""
    import gc

    from lightx2v_nodes.offload import pinning

    dit, _, cfg = build(seed=5)
    args, kwargs = inputs(cfg)
    expected = run(dit, args, kwargs, times=1)[0]
    before = {k: v.clone() for k, v in dit.state_dict().items()}
    resident_ptrs = [t.data_ptr() for t in dit.blocks[LAYERS - 1].state_dict().values()]
    gc.collect()

    def bases():
        out = []
        for block in dit.blocks:
            storages = {t.untyped_storage().data_ptr() for t in block.state_dict().values()}
            out.append(storages.pop() if len(storages) == 1 else None)
        return out

    scheduler = OffloadScheduler(dit, OffloadSettings("block", 1, 1), "cpu")
    assert all(torch.equal(out, expected) for out in run(dit, args, kwargs, scheduler))
    first = bases()
    assert None not in first[:-1] and first[-1] is None  # streamed blocks packed, the resident one untouched
    assert [t.data_ptr() for t in dit.blocks[LAYERS - 1].state_dict().values()] == resident_ptrs
    assert set(first[:-1]) <= pinning.live_buffers()
    assert all(torch.equal(before[k], v) for k, v in dit.state_dict().items())

    scheduler = OffloadScheduler(dit, OffloadSettings("phase", 0, 2), "cpu")
    scheduler.install()
    for u in scheduler.units:  # a phase is a contiguous range of its block's buffer
        assert scheduler.host_flat[u.index].data_ptr() == dit.blocks[u.block].modulation.data_ptr() + u.base
    assert u.base > 0 and bases()[:-1] == first[:-1]  # block buffers reused: no copy
    with torch.no_grad():
        assert torch.equal(dit(*args, **kwargs), expected)
    scheduler.uninstall()
    packed = bases()
    assert None not in packed and set(packed) <= pinning.live_buffers()

    dit.blocks[0].to(torch.float64).to(torch.float32)  # the module lets go of block 0's buffer (as .to() does)
    del scheduler
    assert packed[0] not in pinning.live_buffers() and set(packed[1:]) <= pinning.live_buffers()
    scheduler = OffloadScheduler(dit, OffloadSettings("block", 0, 1), "cpu")
    assert all(torch.equal(out, expected) for out in run(dit, args, kwargs, scheduler))
    assert bases()[1:] == packed[1:] and bases()[0] in pinning.live_buffers()


# ---- GPU ----

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@cuda
@pytest.mark.parametrize("granularity", ["block", "phase"])
def test_gpu_equality_and_copy_stream(granularity):
    dit, _, cfg = build(dtype=torch.bfloat16)
    args, kwargs = inputs(cfg, torch.bfloat16)
    resident = dit.to("cuda")
    expected = run(resident, [a.cuda() for a in args], kwargs, times=1)[0]
    dit.to("cpu")
    scheduler = OffloadScheduler(dit, OffloadSettings(granularity, 1, 1, timing=True), "cuda")
    scheduler.install()
    assert scheduler.streams.copy_stream != torch.cuda.current_stream()
    streamed = [u for u in scheduler.units if u.block < LAYERS - 1]
    assert all(scheduler.host_flat[u.index].is_pinned() for u in streamed)  # one page-locked range per block
    assert all(t.is_pinned() for u in streamed for t in scheduler.host[u.index])
    with torch.no_grad():
        out = dit(*[a.cuda() for a in args], **kwargs)
    summary = scheduler.finish()
    scheduler.uninstall()
    assert torch.equal(out, expected)
    assert summary["copies"] > 0 and summary["copied_bytes"] > 0
    assert all(p.device.type == "cpu" for p in dit.blocks[0].parameters())


@cuda
def test_gpu_lazy_loading_reads_into_page_locked_buffers(tmp_path):
    dit, sd, cfg = build(dtype=torch.bfloat16)
    args, kwargs = inputs(cfg, torch.bfloat16)
    args = [a.cuda() for a in args]
    expected = run(dit.to("cuda"), args, kwargs, times=1)[0]
    folder = synthetic.write_checkpoint({k: v.to(torch.bfloat16) for k, v in sd.items()}, str(tmp_path / "b"), "blocks", "bf16")
    lazy, _, _ = build(dtype=torch.bfloat16, blocks_on_meta=True)
    scheduler = OffloadScheduler(lazy, OffloadSettings("phase", 1, 2, lazy_dir=folder), "cuda")
    scheduler.install()
    assert all(buffer.is_pinned() for buffer in scheduler.reader.buffers)
    with torch.no_grad():
        outs = [lazy(*args, **kwargs) for _ in range(2)]
    scheduler.uninstall()
    assert all(torch.equal(out, expected) for out in outs)
