"""Block-sparse 8-bit attention (kernels/attention_8bit_sparse.py), its masks (wan/sparse_masks.py), the per-block
installation (wan/sparse_attention.py) and the LightX2V Sparse Attention node.

Exactness: for a radial and a 3D-window mask, the sparse kernel equals the dense 8-bit kernel run, per query tile,
on the kept key tiles only (gathered from the same quantized K/V: same per-block K scales and V channel scales),
bit for bit in Triton's interpreter (same tile code, same tiles in the same order); with every tile listed it equals
the dense kernel; at 32-key tiles it matches its PyTorch reference within the dense kernel's 5e-3. GPU tests repeat
this at 21x30x52 tokens x 40 heads x 128 (rel <= 1e-5: compiled kernels specialised for other lengths).
"""

import logging
import os
import sys

import pytest
import torch

from harness import LogLines, run_prompt, tiny_t2v_prompt
from triton_interpreter import ROOT, run_in_triton_interpreter

from lightx2v_nodes.errors import LightX2VError
from lightx2v_nodes.kernel_loader import load_kernels
from lightx2v_nodes.wan import synthetic
from lightx2v_nodes.wan.attention import SDPA, eight_bit_backend
from lightx2v_nodes.wan.model import WanDiT
from lightx2v_nodes.wan.sparse_attention import SparseAttention, SparseSettings, latent_grid, step_index
from lightx2v_nodes.wan.sparse_masks import TokenGrid, radial_keep, tile_mask, window_keep

kernels = load_kernels()

def test_sparse_kernel_in_triton_interpreter():
    assert "sparse kernel equals dense on kept keys" in run_in_triton_interpreter("check_sparse_kernel")


def test_sparse_dit_in_triton_interpreter():
    assert "is the dense 8-bit DiT" in run_in_triton_interpreter("check_sparse_dit")


def token_mask(keep, grid):
    tokens = torch.arange(grid.tokens)
    return keep(tokens, tokens)


def test_radial_mask_follows_its_rule():
    grid = TokenGrid(9, 4, 8)  # 32 tokens per frame: reach 64
    mask = token_mask(radial_keep(grid, decay=1.0, min_band=4), grid).view(9, 32, 9, 32)
    assert mask[:, :, 0].all()  # the first frame is an attention sink
    assert mask[3, :, 3].all()  # same frame: dense
    spatial = (torch.arange(32)[:, None] - torch.arange(32)[None, :]).abs()
    assert torch.equal(mask[3, :, 4], spatial <= 16)  # adjacent: half a frame
    assert torch.equal(mask[2, :, 4], spatial <= 16)  # distance 2: 64 / 2^2
    assert torch.equal(mask[1, :, 5], spatial <= 8)  # distance 4: 64 / 2^3
    assert torch.equal(mask[8, :, 0], torch.ones(32, 32, dtype=torch.bool))
    far = token_mask(radial_keep(TokenGrid(9, 4, 8), decay=1.0, min_band=16), grid).view(9, 32, 9, 32)
    assert torch.equal(far[1, :, 5], spatial <= 16) and not far[1, :, 6].any() and far[1, :, 7].any()  # skipping
    # Symmetric but for the sink column.
    rest = mask[1:, :, 1:].reshape(256, 256)
    assert torch.equal(rest, rest.T)
    assert not torch.equal(mask.reshape(288, 288), mask.reshape(288, 288).T)


def test_window_mask_is_symmetric_and_local():
    grid = TokenGrid(6, 4, 10)
    mask = token_mask(window_keep(grid, (2, 2, 5), (1, 0, 0)), grid)
    assert torch.equal(mask, mask.T)
    view = mask.view(6, 4, 10, 6, 4, 10)
    assert view[0, 0, 0, 3, 1, 4] and not view[0, 0, 0, 4, 0, 0] and not view[0, 0, 0, 0, 2, 0]


@pytest.mark.parametrize("tiles", [(32, 32), (16, 64), (64, 128)])
def test_tile_mask_keeps_a_tile_pair_where_any_token_pair_is_kept(tiles):
    grid = TokenGrid(5, 6, 7)  # 210 tokens: partial tiles at both ends
    keep = radial_keep(grid, decay=0.5, min_band=4)
    tokens = token_mask(keep, grid)
    bm, bn = tiles
    padded = torch.zeros(-(-210 // bm) * bm, -(-210 // bn) * bn, dtype=torch.bool)
    padded[:210, :210] = tokens
    want = padded.view(-1, bm, padded.shape[1] // bn, bn).any(3).any(1)
    got = tile_mask(keep, grid.tokens, tiles)
    assert torch.equal(got[0], want)
    table = kernels.block_table(got, tiles)
    assert table.kept_fraction == pytest.approx(want.float().mean().item())
    for row in range(table.indices.shape[1]):  # ascending lists of exactly the kept tiles
        listed = table.indices[0, row, : table.counts[0, row]]
        assert torch.equal(listed.long(), want[row].nonzero().flatten())


def test_block_table_refuses_an_empty_row():
    with pytest.raises(ValueError, match="keeps no key tile"):
        kernels.block_table(torch.tensor([[[True, False], [False, False]]]), (32, 32))


def test_kept_fraction_falls_with_the_decay_and_window():
    grid = TokenGrid(21, 8, 16)
    kept = [kernels.block_table(tile_mask(radial_keep(grid, decay, 8), grid.tokens, (16, 16)), (16, 16)).kept_fraction
            for decay in (4.0, 1.0, 0.25)]
    assert 1 > kept[0] > kept[1] > kept[2] > 0
    windows = [kernels.block_table(tile_mask(window_keep(grid, (3, 2, 16), (r, 1, 1)), grid.tokens, (16, 16)),
                                   (16, 16)).kept_fraction for r in (3, 1, 0)]
    assert 1 > windows[0] > windows[1] > windows[2] > 0


def test_settings_dense_steps_blocks_and_step_index():
    settings = SparseSettings(dense_steps=2, dense_blocks=1)
    assert not settings.sparse_at(1, 5) and not settings.sparse_at(3, 0) and settings.sparse_at(2, 1)
    schedule = torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0])
    assert [step_index(schedule, torch.tensor([s])) for s in (1.0, 0.74, 0.5, 0.26)] == [0, 1, 2, 3]
    assert step_index(None, None) == 0
    with pytest.raises(LightX2VError, match="Unknown sparse attention mask"):
        SparseSettings(mask="diagonal")
    with pytest.raises(LightX2VError, match="lightx2v-int8"):
        SparseAttention(SparseSettings(), SDPA)
    x = torch.zeros(1, 16, 21, 59, 104)
    assert latent_grid(x, None, (1, 2, 2)) == TokenGrid(21, 30, 52)
    assert latent_grid(x, torch.zeros(1, 16, 1, 59, 104), (1, 2, 2)) == TokenGrid(22, 30, 52)


def test_install_puts_the_sparse_backend_on_sparse_blocks_only():
    cfg = synthetic.tiny_config("t2v", dim=256, layers=3)
    with torch.device("meta"):
        model = WanDiT(**cfg.unet_config(), dtype=torch.float32)
    dense = eight_bit_backend(min_keys=1)
    model.set_attention(dense)
    sparse = SparseAttention(SparseSettings(dense_steps=1, dense_blocks=1), dense, min_keys=1)
    grid, cpu = TokenGrid(3, 4, 8), torch.device("cpu")
    sparse.install(model, grid, step=0, device=cpu)
    assert all(block.self_attn.attend is dense.call for block in model.blocks)
    sparse.install(model, grid, step=1, device=cpu)
    assert model.blocks[0].self_attn.attend is dense.call
    assert all(block.self_attn.attend is not dense.call for block in model.blocks[1:])
    assert all(block.cross_attn.attend is dense.call for block in model.blocks)
    assert sparse.backend(grid, cpu) is sparse.backend(grid, cpu)  # one table per grid
    sparse.remove(model)
    assert all(block.self_attn.attend is dense.call for block in model.blocks)


NODE = {"class_type": "LightX2VSparseAttention", "inputs": {
    "mask": "radial", "dense_steps": 1, "dense_blocks": 1, "radial_decay": 0.2, "window_frames": 3,
    "window_height": 6, "window_width": 8, "window_radius": 1}}


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback")
def test_node_on_cpu_runs_dense_and_says_why(comfy_nodes, tiny_t2v):
    logger, handler = logging.getLogger("lightx2v_nodes"), LogLines()
    logger.addHandler(handler)
    try:
        loader = {"class_type": "LightX2VLoadWanDiT", "inputs": {"model_name": tiny_t2v, "dtype": "fp32",
                                                                 "attention": "auto"}}
        with_node = run_prompt(tiny_t2v_prompt(loader, NODE, steps=2), outputs=["5", "6"])
        plain = run_prompt(tiny_t2v_prompt(loader, steps=2), outputs=["5"])
    finally:
        logger.removeHandler(handler)
    assert torch.equal(with_node.output("5")["samples"], plain.output("5")["samples"])
    assert any("needs the lightx2v-int8 attention backend on a CUDA GPU" in line and "dense attention runs" in line
               for line in handler.lines), handler.lines
    assert not with_node.output("6").get_wrappers("diffusion_model", "lightx2v.sparse_attention")


def test_node_refuses_a_native_model(comfy_nodes, tiny_t2v):
    native = {"class_type": "UNETLoader", "inputs": {"unet_name": tiny_t2v, "weight_dtype": "default"}}
    err = run_prompt(tiny_t2v_prompt(native, NODE), outputs=["5"], expect_error=True).error()
    assert err["node_id"] == "6" and "LightX2V Load Wan DiT" in err["exception_message"]


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@requires_cuda
@pytest.mark.parametrize("mask", ["radial", "window"])
def test_sparse_kernel_at_full_shape_on_gpu(mask):
    """21x30x52 tokens (480x832x81), 40 heads x 128, default tiles: vs the dense kernel on the kept keys of each query
    tile (every 8th query tile: 64 dense launches), and a full table vs the dense kernel."""
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("fp8 tensor-core dot needs compute capability >= 8.9")
    sys.path.append(os.path.join(ROOT, "bench"))
    from attention import wan_like

    from kernel_checks import dense_on_kept_keys

    grid, device = TokenGrid(21, 30, 52), torch.device("cuda")
    gen = torch.Generator(device=device).manual_seed(0)
    q, k, v = (wan_like(1, grid.tokens, 40, 128, device, gen, bias=8.0 if i == 1 else 0.0) for i in range(3))
    quantized = kernels.quantize_qkv(q, k, v)
    settings = SparseSettings(mask=mask)
    tiles = kernels.attention_8bit.default_tiles(kernels.attention_8bit.use_tma(device))
    table = kernels.block_table(tile_mask(settings.keep(grid), grid.tokens, tiles[:2], device), tiles[:2])
    out = kernels.attention8_sparse(q, k, v, table, quantized=quantized)
    assert 0.2 < table.kept_fraction < 0.6
    bm = tiles[0]
    checked = range(0, table.indices.shape[1], 8)
    want = dense_on_kept_keys(q, k, v, quantized, table, tiles, checked)
    rows = torch.cat([torch.arange(t * bm, min(t * bm + bm, grid.tokens)) for t in checked])
    got, ref = out[:, rows].float(), want[:, rows].float()
    assert ((got - ref).norm() / ref.norm()).item() <= 1e-5
    full = kernels.block_table(torch.ones(1, table.indices.shape[1], table.key_tiles, dtype=torch.bool, device=device),
                               tiles[:2])
    dense = kernels.attention8(q, k, v, quantized=quantized).float()
    assert ((kernels.attention8_sparse(q, k, v, full, quantized=quantized).float() - dense).norm() / dense.norm()) <= 1e-5
