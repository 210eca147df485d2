"""Seeded random text embeddings shaped like umt5-xxl output, for tests and the demo."""

import torch


def synthetic_text_embedding(seed: int, tokens: int = 16, dim: int = 4096) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(1, tokens, dim, generator=gen) * 0.2
