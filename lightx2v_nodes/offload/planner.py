"""VRAM-budget planner: budget -> offload mode (none / block / phase), resident blocks, token chunking.

Device memory of a run = non-block weights + resident blocks + (prefetch + 1) streaming slots (a block or
a phase each) + activations + allocator slack. Plans without token chunking are tried first; when none
fits, the same modes are tried with the DiT's token-chunked phases (WanBlock.token_chunk), which have a
much smaller activation peak, and the plan line says that chunking is what makes the budget fit.

Activations, per token and in units of the compute dtype's bytes E (T = tokens x batch, D = dim, F = ffn_dim):
- Whole sequence, MEASURED (14B on the H100, 2026-11-24, peak allocated fully resident minus weights):
  bf16 3.26 GiB at 480x832x81 (32,760 tokens), fp8 W8A8 3.50 GiB there and 7.62 GiB at 720x1280x81
  (75,600 tokens): 20.9, 22.4 and 21.1 x D bytes per token. They match the op sequence (with CUDA's fused
  RMSNorm): the peak is k's RoPE in self-attention, 10 [T, D] tensors live (block input, the DiT's embedded
  tokens, modulated x, q, k, float32 pairs and product = 2 each, rotated output) + ~0.5 of small ones.
  The estimate takes max(11 D, 3 D + 2.5 F) x E per token + 5%; slack: three float32 [T, D] tensors.
- Token-chunked (chunk of C tokens x batch = Cb), ESTIMATED from the op sequence of the chunked phases
  (wan/model.py); the peak is the largest of
    attention:  7.5 D T E (block input + embedded tokens + q, k, v + the backend's own 2.5: the 8-bit
                           kernel that `auto` picks on Hopper makes int8 q, k and fp8 v copies (0.5 each)
                           and its output; SDPA needs 1, or 2 when it returns [B, heads, L, d])
    q/k/v fill: 5 D T E + 8 D Cb E   (the chunk's LayerNorm, modulated x, projection, RMSNorm, float32 pairs
                           and product of RoPE, rotated output)
    FFN:        3 D T E + (3 D + 2.5 F) Cb E   (LayerNorm, modulated x, hidden, GELU out, its 8-bit copy, out)
  + 5%. The cross-attention (q chunked, attention and output projection whole) stays below these with
  the GPU's fused 8-bit kernels (~5 [T, D]).
  MEASURED on the CPU (bench/offload_activations.py --tiny: profiler-tracked peak of one block, dim 512,
  ffn 1382, 4 heads x 128, 8,192 tokens, 1,024-token chunks, in [T, D] tensors, block input excluded):
  bf16 9.0 whole -> 4.5 chunked (self-attention 4.5 = q, k, v + output + the CPU SDPA kernel's scratch;
  FFN 6.4 -> 1.9); fp8 22.3 -> 9.5, of which 8.5 is the cross-attention's whole-sequence output
  projection in the CPU reference GEMM (float32 temporaries the GPU kernels do not make). Chunked outputs
  bit-equal. MEASURED on the H100 at 14B (bench/offload_activations.py, one block; bench/RESULTS.md): the
  chunked estimate is within 5% of the measured peak at 32,760 and 75,600 tokens (slightly low at 32,760).
Slack: under a capped caching allocator, freed activation blocks of mixed sizes split cached segments; in
the whole-sequence runs up to ~1.3 GiB at 480p was reserved but unusable when a float32 [T, D] tensor was
asked for, so three of those are kept free. Chunked, no float32 [T, D] tensor exists: every large request
is one [T, D] tensor in the compute dtype, freed and asked for again at the same size (so reused whole),
the rest are chunk-sized; room for one more [T, D] tensor is kept. With PYTORCH_CUDA_ALLOC_CONF=
expandable_segments:True (or ComfyUI's default cudaMallocAsync backend) memory is mapped in pages and
free pages can be given back, so fragmentation costs less still and the slack is spare headroom.
"""

from __future__ import annotations

import dataclasses

import torch

from ..errors import LightX2VError
from .units import non_block_refs, split_units, tensor_bytes, unit_bytes

GiB = 1024 ** 3
MODES = ("auto", "block", "phase", "none")
ACTIVATION_MARGIN = 1.05  # allocator rounding and small temporaries (modulation, scales, attention statistics)
SLACK_TENSORS = 3  # float32 [tokens, dim] tensors of fragmentation room under a capped allocator
CHUNK_TOKENS = 8192  # token chunk of the chunked phases: big enough for full-speed GEMMs, small temporaries


@dataclasses.dataclass(frozen=True)
class ModelSizes:
    num_blocks: int
    block_bytes: int  # largest block
    phase_bytes: int  # largest phase
    non_block_bytes: int
    dim: int
    ffn_dim: int

    @classmethod
    def of(cls, dit: torch.nn.Module) -> "ModelSizes":
        blocks = unit_bytes(split_units(dit, "block"))
        phases = unit_bytes(split_units(dit, "phase"))
        ffn = dit.blocks[0].ffn[0]
        return cls(len(blocks), max(blocks), max(phases), tensor_bytes(non_block_refs(dit)), dit.dim, ffn.out_features)


def latent_tokens(latent_shape) -> int:
    """Tokens of a [B, C, T, H, W] latent after Wan's (1, 2, 2) patching."""
    t, h, w = latent_shape[-3:]
    return t * ((h + 1) // 2) * ((w + 1) // 2)


def video_tokens(width: int, height: int, frames: int) -> int:
    """480x832x81 -> 21 x 30 x 52 = 32,760 tokens."""
    return ((frames - 1) // 4 + 1) * ((height // 8 + 1) // 2) * ((width // 8 + 1) // 2)


def activation_bytes(sizes: ModelSizes, tokens: int, batch: int = 1, dtype_bytes: int = 2,
                     token_chunk: int | None = None) -> int:
    """Peak activation memory of one forward + allocator slack, for a model computing in `dtype_bytes` floats,
    whole-sequence or with phases chunked into `token_chunk` tokens (the module docstring derives it)."""
    t = tokens * batch
    whole = token_chunk is None or token_chunk >= tokens
    slack = SLACK_TENSORS * 4 * sizes.dim * t if whole else sizes.dim * t * dtype_bytes
    return int(activation_peak_bytes(sizes, tokens, batch, dtype_bytes, token_chunk) * ACTIVATION_MARGIN) + slack


def activation_peak_bytes(sizes: ModelSizes, tokens: int, batch: int = 1, dtype_bytes: int = 2,
                          token_chunk: int | None = None) -> int:
    """The modelled activation peak alone (no margin, no slack)."""
    d, f, e, t = sizes.dim, sizes.ffn_dim, dtype_bytes, tokens * batch
    if token_chunk is None or token_chunk >= tokens:
        return int(max(11 * d, 3 * d + 2.5 * f) * e * t)
    cb = chunk_size(tokens, token_chunk) * batch
    return int(max(7.5 * d * t, 5 * d * t + 8 * d * cb, 3 * d * t + (3 * d + 2.5 * f) * cb) * e)


def chunk_size(tokens: int, token_chunk: int) -> int:
    """Tokens in the largest chunk WanBlock runs (it splits the sequence into equal-as-possible chunks)."""
    count = -(-tokens // token_chunk)
    return -(-tokens // count)


@dataclasses.dataclass(frozen=True)
class Plan:
    mode: str  # "none", "block" or "phase"
    resident_blocks: int
    prefetch: int
    weights_bytes: int  # on the device: non-block + resident + slots
    activation_bytes: int
    budget_bytes: int
    num_blocks: int
    token_chunk: int | None = None  # WanBlock.token_chunk for the run (None: whole-sequence phases)
    tokens: int = 0

    @property
    def granularity(self) -> str:
        return self.mode

    def describe(self) -> str:
        if self.mode == "none":
            head = f"all {self.num_blocks} blocks resident (no offload)"
        else:
            head = (f"{self.mode} offload: {self.resident_blocks}/{self.num_blocks} blocks resident, "
                    f"{self.num_blocks - self.resident_blocks} streamed, prefetch {self.prefetch}")
        chunks = ""
        if self.token_chunk is not None:
            size = chunk_size(self.tokens, self.token_chunk)
            chunks = (f" (token-chunked: {-(-self.tokens // size)} chunks of {size} tokens, needed to fit; "
                      f"whole-sequence would not)")
        return (f"{head}; weights {self.weights_bytes / GiB:.2f} GiB + activations ~{self.activation_bytes / GiB:.2f} GiB"
                f"{chunks} of a {self.budget_bytes / GiB:.2f} GiB budget")


def _weights(sizes: ModelSizes, mode: str, resident: int, prefetch: int) -> int:
    streamed = sizes.num_blocks - resident
    if mode == "none" or streamed == 0:
        return sizes.non_block_bytes + sizes.num_blocks * sizes.block_bytes
    unit, units = (sizes.block_bytes, streamed) if mode == "block" else (sizes.phase_bytes, 3 * streamed)
    return sizes.non_block_bytes + resident * sizes.block_bytes + min(prefetch + 1, units) * unit


def plan_offload(sizes: ModelSizes, budget_bytes: int, tokens: int, batch: int = 1, mode: str = "auto",
                 prefetch: int = 1, resident_override: int = -1, dtype_bytes: int = 2, allow_chunking: bool = True,
                 chunk_tokens: int = CHUNK_TOKENS) -> Plan:
    """The plan for a budget. resident_override >= 0 fixes the resident block count (mode must stream).

    Whole-sequence phases are preferred; token chunking into `chunk_tokens` (when `allow_chunking` and the
    sequence is longer than one chunk) is chosen only when no whole-sequence plan fits, for streaming modes.
    """
    if mode not in MODES:
        raise LightX2VError(f"Unknown offload mode '{mode}': use one of {', '.join(MODES)}.")
    if prefetch < 1:
        raise LightX2VError(f"prefetch depth must be at least 1, got {prefetch}.")
    if resident_override > sizes.num_blocks:
        raise LightX2VError(f"resident_blocks = {resident_override} but the model has only {sizes.num_blocks} blocks: "
                            f"use -1 (planner) or a number up to {sizes.num_blocks}.")
    n = sizes.num_blocks
    chunkings = [None] + ([chunk_tokens] if allow_chunking and tokens > chunk_tokens else [])

    def make(m: str, resident: int, chunk: int | None) -> Plan:
        act = activation_bytes(sizes, tokens, batch, dtype_bytes, chunk)
        return Plan(m, resident, prefetch, _weights(sizes, m, resident, prefetch), act, budget_bytes, n, chunk, tokens)

    if mode == "none":
        return make("none", n, None)
    candidates = ["block", "phase"] if mode == "auto" else [mode]
    if resident_override >= 0:  # the first chunking that fits; if none does, the leanest (the user asked for it)
        plans = [make(candidates[0], resident_override, chunk) for chunk in chunkings]
        return next((p for p in plans if p.weights_bytes + p.activation_bytes <= budget_bytes), plans[-1])
    if mode == "auto":
        whole = make("none", n, None)
        if whole.weights_bytes + whole.activation_bytes <= budget_bytes:
            return whole
    for chunk in chunkings:
        act = activation_bytes(sizes, tokens, batch, dtype_bytes, chunk)
        for m in candidates:
            if _weights(sizes, m, 0, prefetch) + act > budget_bytes:
                continue
            resident = 0
            while resident < n and _weights(sizes, m, resident + 1, prefetch) + act <= budget_bytes:
                resident += 1
            return make(m, resident, chunk)
    act = activation_bytes(sizes, tokens, batch, dtype_bytes, chunkings[-1])
    smallest = _weights(sizes, "phase" if mode != "block" else "block", 0, 1) + act
    chunked = " token-chunked" if chunkings[-1] is not None else ""
    raise LightX2VError(
        f"A {budget_bytes / GiB:.2f} GiB VRAM budget is too small for this model at {tokens} tokens (batch {batch}): "
        f"streaming needs at least {smallest / GiB:.2f} GiB ({act / GiB:.2f} GiB of it{chunked} activations). Lower the "
        "resolution or frame count, use phase mode or an fp8 model, or raise vram_budget_gb.")


def auto_budget(device: torch.device, margin_bytes: int = GiB) -> int:
    """Free device memory minus a margin (the 'auto' budget outside ComfyUI)."""
    if device.type != "cuda":
        raise LightX2VError("vram budget 'auto' needs a CUDA device; give the budget in GB.")
    free, _ = torch.cuda.mem_get_info(device)
    return max(0, free - margin_bytes)
