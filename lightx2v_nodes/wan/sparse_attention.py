"""Block-sparse self-attention for our WanDiT: which blocks and steps run sparse, and the backend that does.

`SparseAttention` holds the settings and the model's own (dense) 8-bit backend. Per model call it puts a sparse
backend on the self-attention of every block that runs sparse at this step (cross-attention and the dense blocks
keep the model's backend) and takes it off afterwards (`install` / `remove`), so nothing changes outside the calls
it wraps. The sparse backend is the 8-bit one with the block-sparse kernel (kernels/attention_8bit_sparse.py) and a
tile table for the video's token grid (wan/sparse_masks.py), built once per grid and device; its kept fraction is
logged once. Sequences shorter than the 8-bit kernel's threshold stay on SDPA, dense.
"""

from __future__ import annotations

import dataclasses
import logging

import torch

from ..errors import LightX2VError
from ..kernel_loader import load_kernels
from .attention import MIN_KEYS_8BIT, AttentionBackend, eight_bit_backend
from .sparse_masks import TokenGrid, radial_keep, tile_mask, window_keep

log = logging.getLogger("lightx2v_nodes")

MASKS = ("radial", "window")


@dataclasses.dataclass(frozen=True)
class SparseSettings:
    """mask: radial or window (wan/sparse_masks.py). The first `dense_steps` steps of a sampling run and the first
    `dense_blocks` blocks run dense. Defaults: the Radial Attention authors' 4-step Wan2.1-14B settings (decay 0.2,
    one dense step, one dense block); the window's tile and radius are ours."""

    mask: str = "radial"
    dense_steps: int = 1
    dense_blocks: int = 1
    decay: float = 0.2
    min_band: int = 128
    window_tile: tuple[int, int, int] = (3, 6, 8)
    window_radius: tuple[int, int, int] = (1, 1, 1)

    def __post_init__(self):
        if self.mask not in MASKS:
            raise LightX2VError(f"Unknown sparse attention mask '{self.mask}': choose one of {', '.join(MASKS)}.")
        if self.dense_steps < 0 or self.dense_blocks < 0:
            raise LightX2VError("dense_steps and dense_blocks count steps and blocks: they cannot be negative.")

    def keep(self, grid: TokenGrid):
        if self.mask == "radial":
            return radial_keep(grid, self.decay, self.min_band)
        return window_keep(grid, self.window_tile, self.window_radius)

    def sparse_at(self, step: int, block: int) -> bool:
        return step >= self.dense_steps and block >= self.dense_blocks

    def describe(self) -> str:
        shape = (f"decay {self.decay}, min band {self.min_band}" if self.mask == "radial"
                 else f"tiles {'x'.join(map(str, self.window_tile))}, radius {'x'.join(map(str, self.window_radius))}")
        return (f"{self.mask} mask ({shape}), dense for the first {self.dense_steps} step(s) and "
                f"{self.dense_blocks} block(s)")


def step_index(schedule, sigma) -> int:
    """The step of a sampling run (schedule: its N + 1 sigmas) whose sigma is nearest `sigma`; 0 without either."""
    if schedule is None or sigma is None or len(schedule) < 2:
        return 0
    value = float(sigma.flatten()[0]) if torch.is_tensor(sigma) else float(sigma)
    steps = [float(s) for s in schedule][:-1]
    return min(range(len(steps)), key=lambda i: abs(steps[i] - value))


class SparseAttention:
    """The sparse backend per token grid, and its installation on a WanDiT's blocks for one model call."""

    def __init__(self, settings: SparseSettings, dense: AttentionBackend, min_keys: int = MIN_KEYS_8BIT):
        if dense.name != "lightx2v-int8":
            raise LightX2VError(f"Sparse attention runs on the lightx2v-int8 backend, this model runs {dense.description}.")
        self.settings, self.dense, self.min_keys = settings, dense, min_keys
        self._backends = {}

    def table(self, grid: TokenGrid, device: torch.device):
        kernels = load_kernels()
        tiles = kernels.table_tiles(device)
        return kernels.block_table(tile_mask(self.settings.keep(grid), grid.tokens, tiles, device), tiles)

    def backend(self, grid: TokenGrid, device: torch.device) -> AttentionBackend:
        key = (grid, str(device))
        if key not in self._backends:
            if grid.tokens < self.min_keys:
                self._backends[key] = self.dense
                log.info("LightX2V Sparse Attention: %s tokens (%s) are fewer than the 8-bit kernel's %d: dense "
                         "attention (SDPA) runs.", grid.tokens, grid, self.min_keys)
            else:
                table = self.table(grid, device)
                kernels = load_kernels()

                def attend(q, k, v, quantized=None):
                    return kernels.attention8_sparse(q, k, v, table, quantized=quantized)

                description = f"lightx2v-int8 block-sparse ({self.settings.mask}, {table.kept_fraction:.1%} kept)"
                self._backends[key] = eight_bit_backend(self.min_keys, description, attend)
                log.info("LightX2V Sparse Attention: %s on %s tokens (%s): %.1f%% of the key tiles kept (ideal "
                         "self-attention saving %.1f%%).", self.settings.describe(), grid.tokens, grid,
                         100 * table.kept_fraction, 100 * (1 - table.kept_fraction))
        return self._backends[key]

    def install(self, dit, grid: TokenGrid, step: int, device: torch.device) -> None:
        """The sparse backend on the self-attention of every block that runs sparse at `step`."""
        sparse = self.backend(grid, device)
        for index, block in enumerate(dit.blocks):
            block.self_attn.set_attention(sparse if self.settings.sparse_at(step, index) else dit.attention)

    @staticmethod
    def remove(dit) -> None:
        for block in dit.blocks:
            block.self_attn.set_attention(dit.attention)


def latent_grid(x: torch.Tensor, time_dim_concat: torch.Tensor | None, patch_size) -> TokenGrid:
    """The token grid WanDiT makes of x [B, C, T, H, W] (padded up to the patch, frames of time_dim_concat added)."""
    frames, height, width = (-(-size // patch) for size, patch in zip(x.shape[2:], patch_size))
    if time_dim_concat is not None:
        frames += -(-time_dim_concat.shape[2] // patch_size[0])
    return TokenGrid(frames, height, width)
