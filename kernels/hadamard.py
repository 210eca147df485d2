"""Walsh-Hadamard rotation of each head's channels, applied to Q and K before their 8-bit quantization.

Trained DiTs have a few outlier channels in Q and K. With one int8 scale per token (Q) or per block of
tokens (K), the outliers set the absmax, and every other channel keeps only a few int8 levels. An
orthogonal rotation of the channels leaves every score unchanged, since (q H)(k H)^T = q k^T. A Hadamard
block spreads each outlier over the block's channels, which brings the absmax down towards their RMS.

Blocks are used rather than one transform over all D channels because the butterfly stages inside a thread's
registers cost nothing, while those across threads go through shared memory: on the 10x-outlier stress inputs of
bench/attention.py, 16-channel blocks (attention_8bit.ROTATION_BLOCK) give most of the accuracy of rotating all 128
channels at no measurable cost, where the full rotation doubles the quantization time.

The rotation is the unnormalised Sylvester matrix (entries +-1), so scores come out `block` times larger;
the factor 1/block is exact in float32 and is folded into Q's scale. Both implementations run the same
butterfly: log2(block) stages of (a + b, a - b) on pairs h apart, h = 1, 2, ..., block/2. They therefore add
in the same order, and the Triton kernels' rotated values equal the reference's bit for bit.
"""

from __future__ import annotations

import torch


def hadamard_reference(x: torch.Tensor, block: int) -> torch.Tensor:
    """Each run of `block` channels of x [..., D] (block a power of 2 dividing D) times the unnormalised
    block x block Hadamard matrix, in x's dtype; block = D rotates all channels together."""
    d = x.shape[-1]
    h = 1
    while h < block:
        pairs = x.unflatten(-1, (d // (2 * h), 2, h))
        a, b = pairs[..., 0, :], pairs[..., 1, :]
        x = torch.stack((a + b, a - b), dim=-2).flatten(-3)
        h *= 2
    return x


try:
    import triton
    import triton.language as tl

    @triton.jit
    def hadamard_rows(x, ROWS: tl.constexpr, D: tl.constexpr, BLOCK: tl.constexpr):
        """hadamard_reference(x, BLOCK) of float32 x [ROWS, D], with the same butterfly."""
        for stage in tl.static_range(8):  # BLOCK <= 256
            if (1 << stage) < BLOCK:  # pairs 1 << stage apart (no constexpr name: Triton forbids reassigning one)
                pairs = tl.permute(tl.reshape(x, [ROWS, D // (2 << stage), 2, 1 << stage]), (0, 1, 3, 2))
                a, b = tl.split(pairs)
                x = tl.reshape(tl.permute(tl.join(a + b, a - b), (0, 1, 3, 2)), [ROWS, D])
        return x
except ImportError:
    triton = None
