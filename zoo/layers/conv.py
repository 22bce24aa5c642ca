"""Convolutions that run as one matrix product on CPU when their weight outweighs their input.

torch's float32 CPU convolution (oneDNN) reorders the weight into its blocked layout at every call. Where the
weight holds many times more numbers than the input (a U-Net's deepest levels: 1280 channels on frames of 4x4 or
2x2 latents) that reorder costs more than the convolution itself; unfolding the input (im2col) and multiplying it
by the weight where it lies, in one GEMM over the whole batch, does not. Elsewhere oneDNN is faster and is used.
Both modules keep nn.Conv2d's / nn.Conv3d's parameters and state-dict keys.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# The GEMM runs when weight.numel() >= WEIGHT_TO_INPUT * input.numel(). On a 2-core AMD EPYC (2 threads, float32,
# eval/benchmarks/hummingbird.py's U-Net convolutions, 8 frames) oneDNN against the GEMM: 3x3 over 1280 channels at
# 4x4, 52.7 against 25.1 ms (ratio 90), at 2x2, 36.5 against 9.0 ms (360); at 8x8, 113 against 89 ms (22); over
# 640 -> 640 channels at 8x8 (ratio 11) 9.1 against 7.4 ms but 1920 -> 640 at 8x8 (11) 86 against 99 ms; at 16x16
# (ratios 1-3) oneDNN is up to 2.3x faster.
WEIGHT_TO_INPUT = 16


def _use_gemm(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (x.device.type == "cpu" and x.dtype == torch.float32 and x.numel() > 0
            and weight.numel() >= WEIGHT_TO_INPUT * x.numel())


def conv2d_gemm(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: tuple[int, int] = (1, 1),
    padding: tuple[int, int] = (0, 0),
) -> torch.Tensor:
    """F.conv2d(x, weight, bias, stride, padding) (groups 1, no dilation, zero padding) as im2col and one GEMM:
    x (N, C, H, W), weight (O, C, kh, kw) -> (N, O, Ho, Wo), contiguous."""
    n, _, h, w = x.shape
    kernel = weight.shape[2:]
    out_h = (h + 2 * padding[0] - kernel[0]) // stride[0] + 1
    out_w = (w + 2 * padding[1] - kernel[1]) // stride[1] + 1
    if kernel == (1, 1) and stride == (1, 1) and padding == (0, 0):
        cols = x.flatten(2)
    else:
        cols = F.unfold(x, kernel, padding=padding, stride=stride)  # (N, C * kh * kw, Ho * Wo)
    cols = cols.transpose(0, 1).flatten(1)  # (C * kh * kw, N * Ho * Wo): the whole batch in one product
    weight = weight.flatten(1)
    out = weight @ cols if bias is None else torch.addmm(bias[:, None], weight, cols)
    return out.view(-1, n, out_h, out_w).transpose(0, 1).contiguous()


class Conv2d(nn.Conv2d):
    """nn.Conv2d; on CPU in float32, when the weight outweighs the input (see `WEIGHT_TO_INPUT`), one GEMM."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (self.groups != 1 or self.dilation != (1, 1) or self.padding_mode != "zeros"
                or isinstance(self.padding, str) or not _use_gemm(x, self.weight)):
            return super().forward(x)
        return conv2d_gemm(x, self.weight, self.bias, self.stride, self.padding)


class TemporalConv3d(nn.Conv3d):
    """nn.Conv3d with a (k, 1, 1) kernel, stride 1 and padding (p, 0, 0): a convolution over the frames of each
    pixel of (B, C, T, H, W). On CPU in float32, when the weight outweighs the input, one GEMM over the frames
    unfolded (the video seen as (B, C, T, H * W) images and a (k, 1) kernel)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_frames: int, padding_frames: int, bias: bool = True):
        super().__init__(in_channels, out_channels, (kernel_frames, 1, 1), padding=(padding_frames, 0, 0), bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _use_gemm(x, self.weight):
            return super().forward(x)
        out = conv2d_gemm(x.flatten(3), self.weight[..., 0], self.bias, padding=(self.padding[0], 0))
        return out.view(*out.shape[:3], *x.shape[3:])
