"""TAEHV, the tiny video autoencoder for Wan latents (taew2_1, lighttaew2_1: 16 channels; taew2_2: 48).

The module only holds the weights, under the key names of the published files (`encoder.<i>.*`,
`decoder.<i>.*`, as in madebyollin/taehv's taehv.py). Running it goes through fused streaming layers
(stream_ops.py) driven by a memory-budgeted runner (runner.py), so one code path serves all three
decode modes:

- parallel:   every layer sees all frames at once (memory grows with the length);
- sequential: every layer sees one frame at a time (memory independent of the length);
- chunked:    every layer sees as many consecutive frames as fit a memory budget (default).

All three give the same frames: the only state crossing a chunk boundary is each MemBlock's previous
input frame and each TPool's unpooled frames, and both are carried exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import LightX2VError
from .runner import StreamRunner
from .stream_ops import Conv, MemBlock, PoolConv, UpConv, activation_format

DECODE_MODES = ("chunked", "parallel", "sequential")
DEFAULT_CHUNK_MB = 256
# Wan latent channels -> pixel (un)shuffle factor of the published files.
PATCH_SIZES = {16: 1, 48: 2}
DECODER_WIDTHS = (256, 128, 64, 64)
ENCODER_WIDTH = 64
ENCODER_TIME_STRIDES = (2, 2, 1)
DECODER_TIME_STRIDES = (1, 2, 2)
TIME_SCALE = 4  # 4 frames per latent frame; a video of T latents decodes to 4T-3 frames
FRAMES_TO_TRIM = 3


@dataclass(frozen=True)
class TaehvSpec:
    latent_channels: int
    has_encoder: bool = True

    @property
    def patch_size(self) -> int:
        return PATCH_SIZES[self.latent_channels]

    @property
    def spatial_scale(self) -> int:
        return 8 * self.patch_size

    @property
    def family(self) -> str:
        return "Wan2.2 (taew2_2)" if self.latent_channels == 48 else "Wan2.1 (taew2_1 / lighttaew2_1)"


def _conv(cin: int, cout: int, bias: bool = True, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=bias)


class _MemBlockWeights(nn.Module):
    """`.conv.0/.2/.4`: conv(2C->C), conv(C->C), conv(C->C); the odd indices are the ReLUs."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.ModuleList([_conv(2 * channels, channels), nn.Identity(), _conv(channels, channels),
                                   nn.Identity(), _conv(channels, channels)])


class _TimeConvWeights(nn.Module):
    """TPool (cin = C*stride -> C) or TGrow (C -> C*stride): one bias-free 1x1 conv, `.conv.weight`."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)


def _decoder_weights(latent_channels: int, patch_size: int) -> nn.ModuleList:
    n0, n1, n2, n3 = DECODER_WIDTHS
    s0, s1, s2 = DECODER_TIME_STRIDES
    idle = nn.Identity  # Clamp, ReLU and Upsample have no weights
    return nn.ModuleList([
        idle(), _conv(latent_channels, n0), idle(),
        _MemBlockWeights(n0), _MemBlockWeights(n0), _MemBlockWeights(n0), idle(), _TimeConvWeights(n0, n0 * s0), _conv(n0, n1, bias=False),
        _MemBlockWeights(n1), _MemBlockWeights(n1), _MemBlockWeights(n1), idle(), _TimeConvWeights(n1, n1 * s1), _conv(n1, n2, bias=False),
        _MemBlockWeights(n2), _MemBlockWeights(n2), _MemBlockWeights(n2), idle(), _TimeConvWeights(n2, n2 * s2), _conv(n2, n3, bias=False),
        idle(), _conv(n3, 3 * patch_size ** 2),
    ])


def _encoder_weights(latent_channels: int, patch_size: int) -> nn.ModuleList:
    c = ENCODER_WIDTH
    layers: list[nn.Module] = [_conv(3 * patch_size ** 2, c), nn.Identity()]
    for stride in ENCODER_TIME_STRIDES:
        layers += [_TimeConvWeights(c * stride, c), _conv(c, c, bias=False, stride=2),
                   _MemBlockWeights(c), _MemBlockWeights(c), _MemBlockWeights(c)]
    layers.append(_conv(c, latent_channels))
    return nn.ModuleList(layers)


def _memblock(weights: _MemBlockWeights, dtype) -> MemBlock:
    convs = [weights.conv[i] for i in (0, 2, 4)]
    return MemBlock([(c.weight, c.bias) for c in convs], dtype)


def _decoder_ops(dec: nn.ModuleList, dtype) -> list:
    ops = [Conv(dec[1].weight, dec[1].bias, dtype, relu=True, clamp_input=True)]
    for first, stride in zip((3, 9, 15), DECODER_TIME_STRIDES):
        ops += [_memblock(dec[first + k], dtype) for k in range(3)]
        grow, conv = dec[first + 4].conv.weight, dec[first + 5].weight
        ops.append(UpConv(conv, grow, stride, dtype, relu=first == 15))  # the last one is followed by decoder.21 = ReLU
    ops.append(Conv(dec[22].weight, dec[22].bias, dtype, pad_outputs_to=8))
    return ops


def _encoder_ops(enc: nn.ModuleList, dtype) -> list:
    ops = [Conv(enc[0].weight, enc[0].bias, dtype, relu=True)]
    for first, stride in zip((2, 7, 12), ENCODER_TIME_STRIDES):
        ops.append(PoolConv(enc[first].conv.weight, enc[first + 1].weight, stride, dtype))
        ops += [_memblock(enc[first + 2 + k], dtype) for k in range(3)]
    ops.append(Conv(enc[17].weight, enc[17].bias, dtype))
    return ops


class TAEHV(nn.Module):
    """Weights of one TAEHV file plus encode/decode in ComfyUI's video layout (B, C, T, H, W)."""

    def __init__(self, spec: TaehvSpec):
        super().__init__()
        if spec.latent_channels not in PATCH_SIZES:
            raise LightX2VError(f"TAEHV with {spec.latent_channels} latent channels is not a Wan tiny VAE "
                                f"(expected 16 for Wan2.1 or 48 for Wan2.2).")
        self.spec = spec
        self.decoder = _decoder_weights(spec.latent_channels, spec.patch_size)
        self.encoder = _encoder_weights(spec.latent_channels, spec.patch_size) if spec.has_encoder else None
        self.decode_mode = "chunked"
        self.chunk_mb = DEFAULT_CHUNK_MB
        self.default_progress = None  # a factory of progress(done, total) callbacks, used when none is passed
        self._plans: dict = {}

    @property
    def latent_channels(self) -> int:
        return self.spec.latent_channels

    @property
    def weight_dtype(self) -> torch.dtype:
        return self.decoder[1].weight.dtype

    @property
    def weight_device(self) -> torch.device:
        return self.decoder[1].weight.device

    def _apply(self, fn, recurse=True):
        # Moving or casting the module (ComfyUI offloading it, .to(...)) drops the fused copies of the
        # weights, which would otherwise stay behind on the old device.
        self._plans.clear()
        return super()._apply(fn, recurse)

    def _plan(self, part: str) -> list:
        """The fused streaming layers for the current weights (rebuilt when weights move or change dtype)."""
        module = getattr(self, part)
        key = tuple(p.data_ptr() for p in module.parameters()) + (str(self.weight_device), self.weight_dtype)
        cached = self._plans.get(part)
        if cached is None or cached[0] != key:
            build = _decoder_ops if part == "decoder" else _encoder_ops
            with torch.no_grad():
                cached = (key, build(module, self.weight_dtype))
            self._plans[part] = cached
        return cached[1]

    def _budget(self, mode: str, chunk_mb: int | None) -> float:
        if mode not in DECODE_MODES:
            raise LightX2VError(f"Unknown TAEHV mode '{mode}': use one of {', '.join(DECODE_MODES)}.")
        return {"parallel": math.inf, "sequential": 0.0}.get(mode, (chunk_mb or self.chunk_mb) * 2**20)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, mode: str | None = None, chunk_mb: int | None = None,
               progress=None, out_dtype: torch.dtype | None = None, out_device=None, **_comfy_options) -> torch.Tensor:
        """(B, C, T, h, w) latents -> (B, 3, 4T-3, 8h*p, 8w*p) frames in [0, 1].

        The result is a permuted view of a (B, T, H, W, 3) tensor: ComfyUI's IMAGE layout is then a free
        movedim away. `progress(done, total)` is called with output frames written.
        """
        if latents.ndim != 5 or latents.shape[1] != self.latent_channels:
            raise LightX2VError(self._latent_mismatch(latents))
        mode = mode or self.decode_mode
        budget = self._budget(mode, chunk_mb)
        progress = progress or (self.default_progress and self.default_progress())
        ops = self._plan("decoder")
        b, _, t, h, w = latents.shape
        p = self.spec.patch_size
        frames = TIME_SCALE * t - FRAMES_TO_TRIM
        out = torch.empty((b, frames, 8 * h * p, 8 * w * p, 3), dtype=out_dtype or self.weight_dtype,
                          device=out_device or self.weight_device)
        written = 0

        def sink(x, video):
            # video.pos counts the decoder's raw frames; the first FRAMES_TO_TRIM of each video are dropped.
            nonlocal written
            first_raw, video.pos = video.pos, video.pos + x.shape[0]
            x = x[max(0, FRAMES_TO_TRIM - first_raw):]
            if x.shape[0] == 0:
                return
            if p > 1:
                x = F.pixel_shuffle(x, p)
            start = video.pos - x.shape[0] - FRAMES_TO_TRIM
            out[video.index, start:video.pos - FRAMES_TO_TRIM].copy_(x.clamp_(0, 1).permute(0, 2, 3, 1))
            written += x.shape[0]
            if progress:
                progress(written, b * frames)

        for index in range(b):
            video = _Cursor(index)
            runner = StreamRunner(ops, budget, lambda x, v=video: sink(x, v))
            source = latents[index].transpose(0, 1)
            for piece in source.split(1 if mode == "sequential" else t):
                runner.push(self._to_compute(piece))
        return out.permute(0, 4, 1, 2, 3)

    @torch.no_grad()
    def encode(self, frames: torch.Tensor, mode: str | None = None, chunk_mb: int | None = None,
               progress=None, out_dtype: torch.dtype | None = None, **_comfy_options) -> torch.Tensor:
        """(B, 3, T, H, W) frames in [0, 1] -> (B, C, ceil(T/4), H/8p, W/8p) latents.

        The video is padded at the end to a multiple of 4 frames by repeating its last frame.
        """
        if self.encoder is None:
            raise LightX2VError("This tiny VAE file has only a decoder, so it cannot encode images. Use a file that "
                                "includes the encoder (taew2_1 / lighttaew2_1 have one) or the full Wan VAE.")
        if frames.ndim != 5 or frames.shape[1] != 3:
            raise LightX2VError(f"TAEHV encodes (batch, 3, frames, height, width) RGB video; got shape {tuple(frames.shape)}.")
        mode = mode or self.decode_mode
        budget = self._budget(mode, chunk_mb)
        progress = progress or (self.default_progress and self.default_progress())
        ops = self._plan("encoder")
        b, _, t, h, w = frames.shape
        p = self.spec.patch_size
        latent_t = -(-t // TIME_SCALE)
        pad = latent_t * TIME_SCALE - t
        lat_h, lat_w = -(-h // (8 * p)), -(-w // (8 * p))
        out = torch.empty((b, self.latent_channels, latent_t, lat_h, lat_w), dtype=out_dtype or self.weight_dtype, device=self.weight_device)

        def sink(x, video):
            n = x.shape[0]
            out[video.index, :, video.pos:video.pos + n].copy_(x.transpose(0, 1))
            video.pos += n
            if progress:
                progress(video.index * latent_t + video.pos, b * latent_t)

        per_feed = {"sequential": 1, "parallel": t + pad}.get(mode, TIME_SCALE * 4)
        for index in range(b):
            video = _Cursor(index)
            runner = StreamRunner(ops, budget, lambda x, v=video: sink(x, v))
            source = frames[index].transpose(0, 1)
            if pad:
                source = torch.cat([source, source[-1:].expand(pad, -1, -1, -1)])
            for piece in source.split(per_feed):
                piece = self._to_compute(piece)
                runner.push(F.pixel_unshuffle(piece, p).contiguous(memory_format=activation_format(self.weight_device)) if p > 1 else piece)
        return out

    def _to_compute(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(device=self.weight_device, dtype=self.weight_dtype).contiguous(memory_format=activation_format(self.weight_device))

    def _latent_mismatch(self, latents: torch.Tensor) -> str:
        shape = tuple(latents.shape)
        if latents.ndim == 5 and latents.shape[1] in PATCH_SIZES:
            other = TaehvSpec(latents.shape[1]).family
            return (f"The latent has {latents.shape[1]} channels ({other}) but this tiny VAE is for "
                    f"{self.spec.family} latents with {self.latent_channels}: load the matching tiny VAE file.")
        return (f"The tiny VAE decodes Wan video latents (batch, {self.latent_channels}, frames, height, width); "
                f"got shape {shape}.")


class _Cursor:
    """Where the next frames of one video go."""

    def __init__(self, index: int):
        self.index = index
        self.pos = 0


def working_memory_bytes(spec: TaehvSpec, latent_shape, dtype: torch.dtype, mode: str, chunk_mb: int = DEFAULT_CHUNK_MB,
                         encode: bool = False) -> int:
    """A generous estimate of the activation memory one decode (or encode) of `latent_shape` needs.

    Chunked mode holds about three budgets of activations (the chunks in flight at different depths);
    parallel mode holds the widest layer for every frame; sequential mode that of one frame.
    """
    b, _, t, h, w = latent_shape
    size = torch.finfo(dtype).bits // 8
    pixels = 64 * h * w * spec.patch_size ** 2
    output = 0 if encode else 3 * (TIME_SCALE * t) * pixels * size
    per_frame = 2 * 64 * pixels * size * 4  # widest layer (64 channels at full size), input + output, x4 frames
    if mode == "parallel":
        return output + per_frame * t
    if mode == "sequential":
        return output + per_frame
    return output + max(3 * chunk_mb * 2**20, per_frame)
