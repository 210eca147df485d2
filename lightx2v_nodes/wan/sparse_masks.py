"""Static sparse-attention masks over a Wan video's latent tokens, reduced to the block-sparse kernel's tile table.

Tokens are ordered frame-major (frame, row, column after patching, as WanDiT flattens them): token t is in frame
t // (height * width) at spatial index t % (height * width). A mask is a rule keep(query tokens, key tokens) ->
bool; `tile_mask` reduces it to (query tile, key tile) pairs at the kernel's tile sizes, keeping a pair where any of
its token pairs is kept, so the kernel computes every kept token pair (and the few others sharing its tiles).

- Radial attention (Li et al. 2025, "Radial Attention: O(n log n) Sparse Attention with Energy Decay for Long Video
  Generation", arXiv 2506.19852, and its released mask for Wan, radial_attn/attn_mask.py): query frame i, key
  frame j, distance d = |i - j|, spatial indices k, l within the frames. With g = bit_length(d) (0 for d = 0,
  floor(log2 d) + 1 otherwise), P = 2^bit_length(tokens per frame) and decay length P / 2^g:
  the pair is kept if j == 0 (the first frame is an attention sink, kept whole), or if |k - l| <= width(d) and the
  frame pair survives the skipping rule. width(0) = tokens per frame (same frame: dense), width(1) = half a frame,
  width(d >= 2) = max(P / 2^g * decay, min_band): the band halves each time the distance doubles. Where the decay
  length falls below min_band, only frame pairs with d divisible by min_band / (P / 2^g) are kept (compute density
  keeps halving by skipping frames). Defaults: decay 0.2 and min_band 128 (the published block size), the
  settings of the authors' 4-step Wan2.1-14B script with the LightX2V distill LoRA (wan_t2v_inference_lightx2v.sh:
  decay_factor 0.2, dense_layers 1, dense_timesteps 1). The published code reduces its token mask to 128x128
  blocks by a density rule that drops sparsely hit blocks; ours keeps every block a kept pair falls in.
- 3D window (in the style of Sliding Tile Attention, Zhang et al. 2025, arXiv 2502.04507): the latent grid is cut
  into tiles of (frames, rows, columns) tokens; a query attends to the keys whose tile is within `radius` tiles of
  its own along every axis (clipped at the edges). Unlike STA the tokens are not reordered into tiles, so at the
  kernel's tile granularity (64-128 consecutive tokens, about one or two latent rows) the column window mostly
  covers whole rows; the frame and row windows are what saves work. The window defaults are ours, not published.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch

from ..errors import LightX2VError

# One boolean chunk of the token mask while it is reduced to tiles (elements): bounded memory at 75,600 tokens.
CHUNK_ELEMENTS = 1 << 26


@dataclasses.dataclass(frozen=True)
class TokenGrid:
    """A latent video after patching: frames x height x width tokens, frame-major."""

    frames: int
    height: int
    width: int

    @property
    def per_frame(self) -> int:
        return self.height * self.width

    @property
    def tokens(self) -> int:
        return self.frames * self.per_frame

    def __str__(self) -> str:
        return f"{self.frames}x{self.height}x{self.width}"


Keep = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def radial_keep(grid: TokenGrid, decay: float = 0.2, min_band: int = 128) -> Keep:
    """keep(query tokens [n], key tokens [m]) -> bool [n, m] of the radial mask (module docstring)."""
    if decay <= 0 or min_band < 1:
        raise LightX2VError(f"Radial attention needs decay > 0 and min_band >= 1, got decay {decay}, min_band {min_band}.")
    per_frame = grid.per_frame
    reach = float(2 ** per_frame.bit_length())
    frames = torch.arange(grid.frames)
    distance = (frames[:, None] - frames[None, :]).abs()
    group = torch.where(distance > 0, torch.floor(torch.log2(distance.clamp_min(1).double())) + 1, 0.0)
    decay_length = reach / torch.exp2(group)
    width = torch.clamp_min(decay_length * decay, min_band)
    width = torch.where(distance == 1, float(per_frame // 2), width)
    width = torch.where(distance == 0, float(per_frame), width)
    skip = torch.where(decay_length < min_band, torch.floor(min_band / decay_length), 1.0).long()
    width = torch.where(distance % skip == 0, width, -1.0)  # frame pairs the skipping rule drops: no spatial pair
    width[:, 0] = float(per_frame)  # the attention sink
    # Spatial band per (query frame, key frame), compared with |k - l| for every token pair.
    width = width.float()

    def keep(queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        table = width.to(queries.device)
        spatial = ((queries % per_frame)[:, None] - (keys % per_frame)[None, :]).abs()
        return spatial <= table[(queries // per_frame)[:, None], (keys // per_frame)[None, :]]

    return keep


def window_keep(grid: TokenGrid, tile: tuple[int, int, int] = (3, 6, 8), radius: tuple[int, int, int] = (1, 1, 1)) -> Keep:
    """keep(query tokens [n], key tokens [m]) -> bool [n, m] of the 3D tile window (module docstring)."""
    if min(tile) < 1 or min(radius) < 0:
        raise LightX2VError(f"The 3D window needs tile sizes >= 1 and radii >= 0, got tile {tile}, radius {radius}.")

    def tile_coordinates(tokens):
        frame, spatial = tokens // grid.per_frame, tokens % grid.per_frame
        return frame // tile[0], (spatial // grid.width) // tile[1], (spatial % grid.width) // tile[2]

    def keep(queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        kept = None
        for q_axis, k_axis, r in zip(tile_coordinates(queries), tile_coordinates(keys), radius):
            near = (q_axis[:, None] - k_axis[None, :]).abs() <= r
            kept = near if kept is None else kept & near
        return kept

    return keep


def tile_mask(keep: Keep, length: int, tiles: tuple[int, int], device=None) -> torch.Tensor:
    """bool [1, query tiles, key tiles]: a tile pair is kept where any of its token pairs (within `length`) is."""
    block_m, block_n = tiles
    n_query, n_key = -(-length // block_m), -(-length // block_n)
    keys = torch.arange(n_key * block_n, device=device)
    key_valid = keys < length
    keys = keys.clamp_max(length - 1)
    rows_per_chunk = max(block_m, CHUNK_ELEMENTS // keys.numel() // block_m * block_m)
    out = torch.empty((n_query, n_key), dtype=torch.bool, device=device)
    for start in range(0, n_query * block_m, rows_per_chunk):
        rows = torch.arange(start, min(start + rows_per_chunk, n_query * block_m), device=device)
        kept = keep(rows.clamp_max(length - 1), keys) & key_valid[None, :] & (rows < length)[:, None]
        out[start // block_m: start // block_m + rows.numel() // block_m] = kept.view(-1, block_m, n_key, block_n).any(3).any(1)
    return out[None]
