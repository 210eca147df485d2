"""The project's Wan2.1 DiT forward, state-dict compatible with the original Wan key names.

Module names match the original checkpoints (and ComfyUI's WanModel), so files load with no renaming.
Layers are built from an `operations` namespace (Linear, LayerNorm, RMSNorm, Conv3d): plain PyTorch by
default, ComfyUI's ops when wrapped as a native MODEL (so ComfyUI's low-VRAM casting and weight patches
apply). Each block is split into the three phases the offload scheduler streams: self-attention,
cross-attention, FFN.
"""

from __future__ import annotations

import math
import types

import torch
import torch.nn as nn

from ..errors import LightX2VError
from . import norm_quant, norm_rope
from .attention import SDPA, AttentionBackend
from .config import CLIP_DIM, PATCH_SIZE

# transformer_options key of a per-run feature cache: called as cache(x, e, e0, transformer_options, compute).
FEATURE_CACHE_KEY = "lightx2v_feature_cache"

TORCH_OPS = types.SimpleNamespace(Linear=nn.Linear, LayerNorm=nn.LayerNorm, RMSNorm=nn.RMSNorm, Conv3d=nn.Conv3d)


def sinusoidal_embedding(dim: int, timesteps: torch.Tensor) -> torch.Tensor:
    """Wan's timestep embedding: [cos | sin] of t * 10000^(-i/half), computed in float32."""
    half = dim // 2
    position = timesteps.float()
    freqs = torch.pow(10000, -torch.arange(half, device=position.device).to(position).div(half))
    angles = torch.outer(position, freqs)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


def rope_tables(head_dim: int, f: int, h: int, w: int, device) -> torch.Tensor:
    """Rotations [L, head_dim/2, 2] (cos, sin; float32) of Wan's 3-axis RoPE (time gets d - 4*(d//6) dims, h and w
    2*(d//6)). Stored as real pairs, not complex, so a torch.compile'd block never sees a complex tensor."""
    axes = (head_dim - 4 * (head_dim // 6), 2 * (head_dim // 6), 2 * (head_dim // 6))
    grids = torch.meshgrid(
        torch.arange(f, dtype=torch.float64, device=device),
        torch.arange(h, dtype=torch.float64, device=device),
        torch.arange(w, dtype=torch.float64, device=device),
        indexing="ij",
    )
    angles = []
    for axis_dim, pos in zip(axes, grids):
        inv_freq = 1.0 / (10000.0 ** (torch.arange(0, axis_dim, 2, dtype=torch.float64, device=device) / axis_dim))
        angles.append(pos.reshape(-1, 1) * inv_freq)
    rotations = torch.polar(torch.ones(1, dtype=torch.float64, device=device), torch.cat(angles, dim=1))
    return torch.view_as_real(rotations.to(torch.complex64)).contiguous()


def apply_rope(x: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs of x [B, L, H, D] by the per-token angles, in float32.

    One complex multiply: fewer passes over the (large) q/k tensors than a real-valued formulation in
    eager mode. Under torch.compile the real-valued form is used: inductor fuses it into one kernel, while
    it cannot generate code for complex numbers.
    """
    if torch.compiler.is_compiling():
        pairs = x.float().unflatten(-1, (-1, 2))
        cos_sin = rotations[None, :, None]
        even, odd, cos, sin = pairs[..., 0], pairs[..., 1], cos_sin[..., 0], cos_sin[..., 1]
        return torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1).flatten(-2).type_as(x)
    pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))
    return torch.view_as_real(pairs * torch.view_as_complex(rotations)[None, :, None]).flatten(-2).type_as(x)


class SelfAttention(nn.Module):
    def __init__(self, dim, num_heads, eps, ops, device, dtype):
        super().__init__()
        self.num_heads = num_heads
        kw = {"device": device, "dtype": dtype}
        self.q = ops.Linear(dim, dim, **kw)
        self.k = ops.Linear(dim, dim, **kw)
        self.v = ops.Linear(dim, dim, **kw)
        self.o = ops.Linear(dim, dim, **kw)
        self.norm_q = ops.RMSNorm(dim, eps=eps, elementwise_affine=True, **kw)
        self.norm_k = ops.RMSNorm(dim, eps=eps, elementwise_affine=True, **kw)
        self.set_attention(SDPA)

    def set_attention(self, backend: AttentionBackend) -> None:
        self.attend = backend.call
        self.attend_from_projections = backend.from_projections

    def heads(self, x):
        return x.unflatten(-1, (self.num_heads, -1))

    def normed_roped(self, projection, norm, rope):
        """RMSNorm over the model dim, head split, RoPE: one fused kernel where it applies (wan/norm_rope.py)."""
        if norm_rope.applies(projection, norm, self.num_heads):
            return norm_rope.fused(projection, norm, rope, self.num_heads)
        return apply_rope(self.heads(norm(projection)), rope)

    def forward(self, x, rope):
        """x: the normed input [B, L, dim], or a QuantizedActivation of it (wan/norm_quant.py)."""
        q = self.q(x)
        # A backend may take the un-normed projections and fuse the norms and RoPE into its own input pass.
        if (self.attend_from_projections is not None and norm_rope.applies(q, self.norm_q, self.num_heads)
                and norm_rope.applies(q, self.norm_k, self.num_heads)):
            return self.o(self.attend_from_projections(q, self.k(x), self.heads(self.v(x)), self.norm_q, self.norm_k,
                                                       rope))
        q = self.normed_roped(q, self.norm_q, rope)
        k = self.normed_roped(self.k(x), self.norm_k, rope)
        return self.o(self.attend(q, k, self.heads(self.v(x))))


class CrossAttention(SelfAttention):
    """Text cross-attention; I2V models add a second attention over the CLIP image tokens."""

    def __init__(self, dim, num_heads, eps, ops, device, dtype, image_input: bool):
        super().__init__(dim, num_heads, eps, ops, device, dtype)
        if image_input:
            kw = {"device": device, "dtype": dtype}
            self.k_img = ops.Linear(dim, dim, **kw)
            self.v_img = ops.Linear(dim, dim, **kw)
            self.norm_k_img = ops.RMSNorm(dim, eps=eps, elementwise_affine=True, **kw)
        self.image_input = image_input

    def forward(self, x, context, context_img_len=None, q=None):
        """q: the queries [B, L, heads, head_dim] if the caller projected them already (x is then unused)."""
        if q is None:
            q = self.heads(self.norm_q(self.q(x)))
        if self.image_input:
            # As in ComfyUI: without clip_fea (context_img_len None) both slices are the whole context.
            context_img, context = context[:, :context_img_len], context[:, context_img_len:]
            k_img = self.heads(self.norm_k_img(self.k_img(context_img)))
            img_out = self.attend(q, k_img, self.heads(self.v_img(context_img)))
        out = self.attend(q, self.heads(self.norm_k(self.k(context))), self.heads(self.v(context)))
        if self.image_input:
            out = out + img_out
        return self.o(out)


def _open_gate(phase: int) -> None:
    """No scheduler: every weight is already where the block runs."""


def token_slices(length: int, chunk: int) -> list[slice]:
    """Equal-as-possible slices of at most `chunk` tokens covering [0, length)."""
    count = -(-length // chunk)
    size = -(-length // count)
    return [slice(start, min(start + size, length)) for start in range(0, length, size)]


def chunked_tokens(fn, length: int, chunk: int) -> list[torch.Tensor]:
    """fn(token slice) -> tensors [B, chunk, ...], chunk by chunk, written into one [B, length, ...] tensor each."""
    outs = None
    for s in token_slices(length, chunk):
        parts = fn(s)
        if outs is None:
            outs = [p.new_empty((p.shape[0], length, *p.shape[2:])) for p in parts]
        for out, part in zip(outs, parts):
            out[:, s] = part
    return outs


def feed_forward(ffn: nn.Sequential, x: torch.Tensor, fuse_gelu: bool = True) -> torch.Tensor:
    """ffn(x) for Linear -> GELU(tanh) -> Linear. An 8-bit second linear (QuantLinear, which has forward_gelu) takes
    the GELU into its activation quantization instead: the [tokens, ffn_dim] GELU output is then never written.
    Layers with hooks (e.g. a LoRA side branch) keep the plain call, so their hooks run; so does fuse_gelu=False."""
    second = ffn[2]
    if (not (fuse_gelu and hasattr(second, "forward_gelu"))
            or any(norm_quant.has_hooks(m) for m in (ffn, ffn[1], second))):
        return ffn(x)
    return second.forward_gelu(ffn[0](x))


class WanBlock(nn.Module):
    def __init__(self, dim, ffn_dim, num_heads, eps, image_input, ops, device, dtype):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.norm1 = ops.LayerNorm(dim, eps, elementwise_affine=False, **kw)
        self.self_attn = SelfAttention(dim, num_heads, eps, ops, device, dtype)
        self.norm3 = ops.LayerNorm(dim, eps, elementwise_affine=True, **kw)
        self.cross_attn = CrossAttention(dim, num_heads, eps, ops, device, dtype, image_input)
        self.norm2 = ops.LayerNorm(dim, eps, elementwise_affine=False, **kw)
        self.ffn = nn.Sequential(ops.Linear(dim, ffn_dim, **kw), nn.GELU(approximate="tanh"), ops.Linear(ffn_dim, dim, **kw))
        self.modulation = nn.Parameter(torch.empty(1, 6, dim, **kw))

    def set_attention(self, backend: AttentionBackend) -> None:
        self.self_attn.set_attention(backend)
        self.cross_attn.set_attention(backend)

    def modulation_terms(self, e0, x):
        """shift/scale/gate for both modulated sub-layers: 6 tensors [B, 1, dim]."""
        return (self.modulation.to(device=x.device, dtype=x.dtype) + e0).chunk(6, dim=1)

    # The inputs of the phases' first linears: norm (+ modulation), quantized once in a fused kernel where the linears
    # are 8-bit (wan/norm_quant.py), else the module ops' 16-bit tensor.

    def self_attention_input(self, x, mod):
        attn = self.self_attn
        return norm_quant.modulated(self.norm1, x, mod[0], mod[1], (attn.q, attn.k, attn.v), fuse=self.fuse_norm_quant)

    def cross_attention_input(self, x):
        return norm_quant.normed(self.norm3, x, (self.cross_attn.q,), fuse=self.fuse_norm_quant)

    def ffn_input(self, x, mod):
        return norm_quant.modulated(self.norm2, x, mod[3], mod[4], (self.ffn[0],), containers=(self.ffn,),
                                    fuse=self.fuse_norm_quant)

    def self_attention_phase(self, x, mod, rope):
        y = self.self_attn(self.self_attention_input(x, mod), rope)
        return torch.addcmul(x, y, mod[2])

    def cross_attention_phase(self, x, context, context_img_len):
        return x + self.cross_attn(self.cross_attention_input(x), context, context_img_len)

    def ffn_phase(self, x, mod):
        y = feed_forward(self.ffn, self.ffn_input(x, mod), self.fuse_gelu_quant)
        return torch.addcmul(x, y, mod[5])

    # Token-chunked variants of the phases (used when `token_chunk` is set). Every op they chunk is per token
    # (norms, modulation, linears, RoPE, GELU, gated residual), so the result is the same as long as a GEMM's
    # rows do not depend on how many rows it has (true on the CPU from 8 rows up; an autotuned GPU GEMM may
    # pick other tiles for other row counts). Only whole-sequence temporaries shrink to one chunk: float32
    # RoPE/RMSNorm intermediates, the [L, ffn_dim] hidden and GELU output, 8-bit activation copies. q, k, v
    # are written into preallocated [B, L, ...] tensors and freed right after attention, which (like the
    # cross-attention over the context) runs on the whole sequence.

    def self_attention_phase_chunked(self, x, mod, rope):
        attn, length = self.self_attn, x.shape[1]

        def qkv(s):
            y = self.self_attention_input(x[:, s], mod)
            q = attn.normed_roped(attn.q(y), attn.norm_q, rope[s])
            return q, attn.normed_roped(attn.k(y), attn.norm_k, rope[s]), attn.heads(attn.v(y))

        q, k, v = chunked_tokens(qkv, length, self.token_chunk)
        y = attn.attend(q, k, v)
        del q, k, v
        # contiguous: with batch > 1 a token slice is strided, and a strided input takes another (batched) GEMM path
        return chunked_tokens(lambda s: (torch.addcmul(x[:, s], attn.o(y[:, s].contiguous()), mod[2]),), length,
                              self.token_chunk)[0]

    def cross_attention_phase_chunked(self, x, context, context_img_len):
        attn = self.cross_attn
        (q,) = chunked_tokens(lambda s: (attn.heads(attn.norm_q(attn.q(self.cross_attention_input(x[:, s])))),), x.shape[1],
                              self.token_chunk)
        return x + attn(None, context, context_img_len, q=q)

    def ffn_phase_chunked(self, x, mod):
        def ffn(s):  # ffn_phase's ops on one chunk (not a call of it: torch.compile may have replaced that one)
            return (torch.addcmul(x[:, s], feed_forward(self.ffn, self.ffn_input(x[:, s], mod), self.fuse_gelu_quant),
                                  mod[5]),)

        return chunked_tokens(ffn, x.shape[1], self.token_chunk)[0]

    # An offload scheduler (lightx2v_nodes.offload) sets this per block: called with the phase index (0, 1, 2)
    # before that phase runs, so the phase's weights are on the compute device when it starts.
    phase_gate = None
    # Tokens per chunk for the chunked phases, None = whole sequence. The offload planner sets it on runs
    # whose activations only fit a VRAM budget chunked; left None, the phases (and torch.compile's graphs of
    # them, wan/compile.py) are untouched.
    token_chunk = None
    # The fused kernels, on in the product; WanDiT.set_fusions turns them off for benchmark A/B runs.
    fuse_norm_quant = True
    fuse_gelu_quant = True

    def forward(self, x, e, freqs, context, context_img_len=None, transformer_options=None):
        # Keyword names match ComfyUI's WanAttentionBlock, so `patches_replace["dit"]` patches can call us.
        gate = self.phase_gate or _open_gate
        chunked = self.token_chunk is not None and self.token_chunk < x.shape[1]
        gate(0)
        mod = self.modulation_terms(e, x)
        phase = self.self_attention_phase_chunked if chunked else self.self_attention_phase
        x = phase(x.contiguous(), mod, freqs)
        gate(1)
        phase = self.cross_attention_phase_chunked if chunked else self.cross_attention_phase
        x = phase(x, context, context_img_len)
        gate(2)
        return self.ffn_phase_chunked(x, mod) if chunked else self.ffn_phase(x, mod)


class Head(nn.Module):
    def __init__(self, dim, out_features, eps, ops, device, dtype):
        super().__init__()
        self.norm = ops.LayerNorm(dim, eps, elementwise_affine=False, device=device, dtype=dtype)
        self.head = ops.Linear(dim, out_features, device=device, dtype=dtype)
        self.modulation = nn.Parameter(torch.empty(1, 2, dim, device=device, dtype=dtype))

    def forward(self, x, e):
        shift, scale = (self.modulation.to(device=x.device, dtype=x.dtype) + e.unsqueeze(1)).chunk(2, dim=1)
        return self.head(torch.addcmul(shift, self.norm(x), 1 + scale))


class ImageProjection(nn.Module):
    """img_emb: CLIP-vision features -> image context tokens (FLF2V adds a position embedding)."""

    def __init__(self, dim, flf_tokens, ops, device, dtype):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.proj = nn.Sequential(
            ops.LayerNorm(CLIP_DIM, **kw), ops.Linear(CLIP_DIM, CLIP_DIM, **kw), nn.GELU(),
            ops.Linear(CLIP_DIM, dim, **kw), ops.LayerNorm(dim, **kw),
        )
        self.emb_pos = nn.Parameter(torch.empty(1, flf_tokens, CLIP_DIM, **kw)) if flf_tokens else None

    def forward(self, clip_fea):
        if self.emb_pos is not None:
            n = min(clip_fea.shape[1], self.emb_pos.shape[1])
            clip_fea = clip_fea[:, :n] + self.emb_pos[:, :n].to(device=clip_fea.device, dtype=clip_fea.dtype)
        return self.proj(clip_fea)


class WanDiT(nn.Module):
    def __init__(self, model_type="t2v", patch_size=PATCH_SIZE, in_dim=16, dim=1536, ffn_dim=8960, freq_dim=256,
                 text_dim=4096, out_dim=16, num_heads=12, num_layers=30, eps=1e-6, flf_pos_embed_token_number=None,
                 device=None, dtype=None, operations=None):
        super().__init__()
        if tuple(patch_size) != PATCH_SIZE:
            raise LightX2VError(f"Unsupported patch size {patch_size}: Wan2.1 uses {PATCH_SIZE}.")
        ops = operations or TORCH_OPS
        kw = {"device": device, "dtype": dtype}
        self.dtype = dtype
        self.model_type, self.in_dim, self.dim, self.out_dim = model_type, in_dim, dim, out_dim
        self.freq_dim, self.num_heads, self.patch_size = freq_dim, num_heads, PATCH_SIZE
        # The patch embedding stays in float32, as in ComfyUI and the original model.
        self.patch_embedding = ops.Conv3d(in_dim, dim, kernel_size=PATCH_SIZE, stride=PATCH_SIZE, device=device, dtype=torch.float32)
        self.text_embedding = nn.Sequential(ops.Linear(text_dim, dim, **kw), nn.GELU(approximate="tanh"), ops.Linear(dim, dim, **kw))
        self.time_embedding = nn.Sequential(ops.Linear(freq_dim, dim, **kw), nn.SiLU(), ops.Linear(dim, dim, **kw))
        self.time_projection = nn.Sequential(nn.SiLU(), ops.Linear(dim, dim * 6, **kw))
        image_input = model_type == "i2v"
        self.blocks = nn.ModuleList(
            WanBlock(dim, ffn_dim, num_heads, eps, image_input, ops, device, dtype) for _ in range(num_layers)
        )
        self.head = Head(dim, out_dim * math.prod(PATCH_SIZE), eps, ops, device, dtype)
        self.img_emb = ImageProjection(dim, flf_pos_embed_token_number, ops, device, dtype) if image_input else None
        self.attention = SDPA

    def set_attention(self, backend: AttentionBackend) -> None:
        """Run every attention call through `backend` (wan.attention.choose_attention decides which; SDPA until then)."""
        self.attention = backend
        for block in self.blocks:
            block.set_attention(backend)

    def set_fusions(self, norm_quant: bool = True, gelu_quant: bool = True) -> None:
        """norm_quant: each LayerNorm (+ modulation) and the 8-bit linears' input quantization in one kernel
        (wan/norm_quant.py); gelu_quant: the FFN's GELU in its second 8-bit linear's quantization (feed_forward)."""
        for block in self.blocks:
            block.fuse_norm_quant, block.fuse_gelu_quant = norm_quant, gelu_quant

    # A per-block folder whose block weights the loader left on disk (placeholders here): only an offload
    # scheduler reading that folder can run the blocks.
    block_folder = None

    def forward(self, x, timestep, context, clip_fea=None, time_dim_concat=None, transformer_options=None, **kwargs):
        """x [B, in_dim, T, H, W], timestep [B] (sigma*1000), context [B, L, text_dim] -> [B, out_dim, T, H, W]."""
        transformer_options = transformer_options or {}
        if self.block_folder is not None and self.blocks[0].phase_gate is None:
            raise LightX2VError(
                "This model's block weights were left on disk (LightX2V Load Wan DiT: keep_blocks_on_disk), so it "
                "needs a LightX2V Offload node between the loader and the sampler to stream them. Add one, or "
                "turn keep_blocks_on_disk off."
            )
        if x.shape[1] != self.in_dim:
            if self.in_dim > x.shape[1]:
                raise LightX2VError(
                    f"This is an image-to-video Wan model ({self.in_dim} input channels) but it received a "
                    f"{x.shape[1]}-channel latent with no image conditioning. Feed the positive/negative "
                    "conditioning through WanImageToVideo (start image + CLIP vision), or load a T2V model."
                )
            raise LightX2VError(f"The model expects {self.in_dim} latent channels but got {x.shape[1]}: wrong model for this latent.")
        t, h, w = x.shape[2:]
        x = _pad_to_patch(x)
        if time_dim_concat is not None:
            x = torch.cat([x, _pad_to_patch(time_dim_concat)], dim=2)
        out = self.forward_tokens(x, timestep, context, clip_fea, transformer_options)
        return out[:, :, :t, :h, :w]

    def forward_tokens(self, x, timestep, context, clip_fea, transformer_options):
        x = self.patch_embedding(x.float()).to(x.dtype)
        grid = x.shape[2:]
        x = x.flatten(2).transpose(1, 2)
        rope = rope_tables(self.dim // self.num_heads, *grid, device=x.device)

        e = self.time_embedding(sinusoidal_embedding(self.freq_dim, timestep.flatten()).to(x.dtype))
        e0 = self.time_projection(e).unflatten(1, (6, self.dim))
        context = self.text_embedding(context)
        context_img_len = None
        if clip_fea is not None and self.img_emb is not None:
            context = torch.cat([self.img_emb(clip_fea), context], dim=1)
            context_img_len = clip_fea.shape[-2]

        cache = transformer_options.get(FEATURE_CACHE_KEY)
        if cache is None:
            x = self.run_blocks(x, e0, rope, context, context_img_len, transformer_options)
        else:
            # A feature cache (lightx2v_nodes.cache) runs the blocks only on the batch rows it cannot skip.
            tokens = x
            x = cache(tokens, e, e0, transformer_options, lambda rows: self.run_blocks(
                tokens[rows], e0[rows], rope, context[rows], context_img_len, transformer_options))
        return self.unpatchify(self.head(x, e), grid)

    def run_blocks(self, x, e0, rope, context, context_img_len, transformer_options):
        """All blocks in order, honouring ComfyUI-style `patches_replace["dit"][("double_block", i)]`."""
        replace = transformer_options.get("patches_replace", {}).get("dit", {})
        for i, block in enumerate(self.blocks):
            if ("double_block", i) in replace:
                def original_block(args, block=block):
                    img = block(args["img"], e=args["vec"], freqs=args["pe"], context=args["txt"],
                                context_img_len=context_img_len, transformer_options=args["transformer_options"])
                    return {"img": img}
                args = {"img": x, "txt": context, "vec": e0, "pe": rope, "transformer_options": transformer_options}
                x = replace[("double_block", i)](args, {"original_block": original_block})["img"]
            else:
                x = block(x, e=e0, freqs=rope, context=context, context_img_len=context_img_len)
        return x

    def unpatchify(self, x, grid):
        b, (pt, ph, pw) = x.shape[0], self.patch_size
        x = x[:, : math.prod(grid)].view(b, *grid, pt, ph, pw, self.out_dim)
        x = torch.einsum("bfhwpqrc->bcfphqwr", x)
        return x.reshape(b, self.out_dim, grid[0] * pt, grid[1] * ph, grid[2] * pw)


def _pad_to_patch(x):
    """Circular padding of T, H, W up to patch multiples, as ComfyUI's pad_to_patch_size does."""
    pad = []
    for size, patch in zip(reversed(x.shape[2:]), reversed(PATCH_SIZE)):
        pad += [0, (patch - size % patch) % patch]
    return torch.nn.functional.pad(x, pad, mode="circular") if any(pad) else x
