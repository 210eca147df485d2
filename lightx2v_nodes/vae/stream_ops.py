"""TAEHV's layers as streaming operations on runs of consecutive frames.

Each op is called as `op(x, state) -> (y, state)` with x a (t, C, H, W) tensor holding
the next t frames of one video, and the state it returned for the previous run (None at the start).
`op.elements_per_frame(h, w)` is the op's peak live memory per input frame (in elements), which the
runner uses to size the runs.

Speed comes from doing less work and fewer memory passes than the layer-by-layer reference while
computing the same function:
- channels-last activations on CUDA (cuDNN's native layout for half-precision convolutions; on the
  CPU, PyTorch runs small channels-last convolutions through a slow fallback, so NCHW is used there);
- Upsample(x2 nearest) -> TGrow (1x1) -> conv3x3 is one "sub-pixel" conv: TGrow commutes with nearest
  upsampling and folds into the conv weights, and a 3x3 conv on a nearest-upsampled image equals, for
  each of the four output pixel parities, a 2x2 conv on the small image. One 2x2 conv with 4*S*Cout
  outputs therefore replaces the upsampled tensor, the TGrow and the 3x3 conv (4/9 of the multiply-adds),
  and one strided copy interleaves the parities (and the S frames) into the output;
- TPool (1x1 over S frames) folds into the strided conv after it;
- MemBlock builds its [x, past] input in one buffer instead of pad + cat, and does ReLU/add in place.
Fused weights are computed in float64 once per plan, then cast to the compute dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def activation_format(device: torch.device) -> torch.memory_format:
    return torch.channels_last if torch.device(device).type == "cuda" else torch.contiguous_format


# Which of a 3x3 kernel's taps land on each tap of the 2x2 low-resolution kernel, for output parity
# 0 (rows 2i-1, 2i, 2i+1 -> small rows i-1, i, i) and parity 1 (rows 2i, 2i+1, 2i+2 -> i, i, i+1).
_SUBPIXEL_TAPS = torch.tensor([[[1, 0, 0], [0, 1, 1]], [[1, 1, 0], [0, 0, 1]]], dtype=torch.float64)


def _cast(weight: torch.Tensor | None, dtype, device) -> torch.Tensor | None:
    if weight is None:
        return None
    weight = weight.detach().to(device=device, dtype=dtype)
    return weight.contiguous(memory_format=activation_format(device)) if weight.ndim == 4 else weight.contiguous()


def _exact(weight: torch.Tensor) -> torch.Tensor:
    """A weight in float64 on the CPU (MPS has no float64), for fusing without extra rounding."""
    return weight.detach().to(device="cpu", dtype=torch.float64)


class Conv:
    """A 3x3 conv, optionally with TAEHV's Clamp (tanh(x/3)*3) before it and a ReLU after it.

    `pad_outputs_to` rounds the output channels up with zero filters (cuDNN's tensor-core kernels for
    half-precision channels-last convs want multiples of 8; the RGB output layer has 3 or 12); the
    result is a view of the real channels.
    """

    def __init__(self, weight, bias, dtype, relu: bool = False, clamp_input: bool = False, pad_outputs_to: int = 1):
        self.cin, self.cout = weight.shape[1], weight.shape[0]
        padded = -(-self.cout // pad_outputs_to) * pad_outputs_to
        if padded > self.cout:
            weight = torch.cat([weight, weight.new_zeros((padded - self.cout, *weight.shape[1:]))])
            bias = torch.cat([bias, bias.new_zeros(padded - self.cout)])
        self.weight, self.bias = _cast(weight, dtype, weight.device), _cast(bias, dtype, weight.device)
        self.relu, self.clamp_input = relu, clamp_input

    def elements_per_frame(self, h: int, w: int) -> int:
        return (2 * self.cin + self.weight.shape[0]) * h * w

    def __call__(self, x, state):
        if self.clamp_input:
            x = torch.tanh(x / 3).mul_(3)
        y = F.conv2d(x, self.weight, self.bias, padding=1)
        if self.relu:
            y.relu_()
        return y[:, :self.cout], None


class MemBlock:
    """relu(conv(relu(conv(relu(conv([x, past]))))) + x), past = the previous frame's x (zeros at t=0).

    The state is the last input frame of the run, which is the first frame's `past` in the next run.
    """

    def __init__(self, convs, dtype):
        device = convs[0][0].device
        (self.w0, self.b0), (self.w1, self.b1), (self.w2, self.b2) = [(_cast(w, dtype, device), _cast(b, dtype, device)) for w, b in convs]
        self.channels = self.w1.shape[0]
        self.format = activation_format(device)

    def elements_per_frame(self, h: int, w: int) -> int:
        return 4 * self.channels * h * w

    def __call__(self, x, past):
        t, c, h, w = x.shape
        both = torch.empty((t, 2 * c, h, w), dtype=x.dtype, device=x.device, memory_format=self.format)
        both[:, :c].copy_(x)
        if past is None:
            both[:1, c:].zero_()
        else:
            both[:1, c:].copy_(past)
        both[1:, c:].copy_(x[:-1])
        last = x[-1:].clone(memory_format=self.format)
        y = F.conv2d(both, self.w0, self.b0, padding=1).relu_()
        del both
        y = F.conv2d(y, self.w1, self.b1, padding=1).relu_()
        y = F.conv2d(y, self.w2, self.b2, padding=1)
        return y.add_(x).relu_(), last


def subpixel_upsample_conv_weight(conv_weight: torch.Tensor, grow_weight: torch.Tensor | None, stride: int) -> torch.Tensor:
    """conv3x3(upsample2x(TGrow(x))) as one 2x2 conv weight with outputs ordered (row parity, column parity,
    TGrow frame, channel). Computed in float64."""
    k = _exact(conv_weight)  # (cout, cin, 3, 3)
    cout, cin = k.shape[:2]
    if grow_weight is None:
        k = k[None]
    else:
        grow = _exact(grow_weight)[:, :, 0, 0].reshape(stride, cin, cin)  # frame s: (grown channel, input channel)
        k = torch.einsum("oikl,sij->sojkl", k, grow)
    k2 = torch.einsum("pak,qbl,soikl->pqsoiab", _SUBPIXEL_TAPS, _SUBPIXEL_TAPS, k)
    return k2.reshape(4 * stride * cout, cin, 2, 2)


class UpConv:
    """Upsample(x2 nearest) + TGrow(stride S) + bias-free conv3x3 (+ ReLU): t frames -> t*S frames at 2x size."""

    def __init__(self, conv_weight, grow_weight, stride: int, dtype, relu: bool = False):
        self.weight = _cast(subpixel_upsample_conv_weight(conv_weight, grow_weight, stride), dtype, conv_weight.device)
        self.stride, self.relu = stride, relu
        self.format = activation_format(conv_weight.device)
        self.cout, self.cin = conv_weight.shape[:2]

    def elements_per_frame(self, h: int, w: int) -> int:
        return (self.cin + 8 * self.stride * self.cout) * (h + 1) * (w + 1)

    def __call__(self, x, state):
        t, _, h, w = x.shape
        s, c = self.stride, self.cout
        y = F.conv2d(x, self.weight, None, padding=1)  # (t, 4*S*c, h+1, w+1): parity (py, px) of pixel (i, j) at (i+py, j+px)
        if self.relu:
            y.relu_()
        out = torch.empty((t * s, c, 2 * h, 2 * w), dtype=y.dtype, device=y.device, memory_format=self.format)
        # Element (frame, s, ch, i, py, j, px) of the output is y[frame, ((py*2+px)*S+s)*c+ch, i+py, j+px]:
        # both sides are strided views in that index order, so one copy interleaves everything.
        yt, yc, yh, yw = y.stride()
        source = y.as_strided((t, s, c, h, 2, w, 2), (yt, c * yc, yc, yh, yh + 2 * s * c * yc, yw, yw + s * c * yc),
                              y.storage_offset())
        ot, oc, oh, ow = out.stride()
        out.as_strided((t, s, c, h, 2, w, 2), (s * ot, ot, oc, 2 * oh, oh, 2 * ow, ow)).copy_(source)
        return out, None


class PoolConv:
    """TPool(stride S) followed by the bias-free stride-2 conv3x3, folded into one conv over S frames.

    The state holds the frames (fewer than S) still waiting for a partner.
    """

    def __init__(self, pool_weight, conv_weight, stride: int, dtype):
        k, pool = _exact(conv_weight), _exact(pool_weight)[:, :, 0, 0]  # (cout, c, 3, 3), (c, S*c)
        self.weight = _cast(torch.einsum("oikl,ij->ojkl", k, pool), dtype, conv_weight.device)
        self.stride, self.channels, self.cout = stride, pool.shape[0], k.shape[0]
        self.format = activation_format(conv_weight.device)

    def elements_per_frame(self, h: int, w: int) -> int:
        return 2 * self.channels * h * w + self.cout * h * w // (4 * self.stride)

    def __call__(self, x, pending):
        if pending is not None:
            x = torch.cat([pending, x])
        s, c = self.stride, self.channels
        t, _, h, w = x.shape
        n = t - t % s
        pending = x[n:].clone(memory_format=self.format) if n < t else None
        if n == 0:
            return x[:0], pending
        if s == 1:
            pooled = x
        else:
            pooled = torch.empty((n // s, s * c, h, w), dtype=x.dtype, device=x.device, memory_format=self.format)
            for k in range(s):
                pooled[:, k * c:(k + 1) * c].copy_(x[k:n:s])
        return F.conv2d(pooled, self.weight, None, stride=2, padding=1), pending
