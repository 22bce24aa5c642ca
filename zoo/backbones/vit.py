"""Pieces shared by the ViT-style vision trunks (CLIP, EVA, NaViT SigLIP): the pre-LN encoder layer, the
patch-size check and the bicubic resize of learned position embeddings."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from zoo.errors import InputError
from zoo.layers.attention import Attention
from zoo.layers.mlp import Mlp
from zoo.layers.norm import LayerNorm


class EncoderLayer(nn.Module):
    """x + attn(layer_norm1(x)), then x + mlp(layer_norm2(x)), with transformers' key names.

    `attention` replaces the default biased `Attention` (EVA's fused qkv); it takes the keyword arguments that
    `forward` passes on (attn_mask, rotary, cu_seqlens).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_dim: int,
        act_layer: Callable[[], nn.Module],
        eps: float,
        attention: nn.Module | None = None,
    ):
        super().__init__()
        self.layer_norm1 = LayerNorm(dim, eps=eps)
        if attention is None:
            attention = Attention(dim, num_heads, qkv_bias=True, out_bias=True)
        self.self_attn = attention
        self.layer_norm2 = LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, mlp_dim, act_layer=act_layer)

    def forward(self, x: torch.Tensor, **attention_kwargs) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x), **attention_kwargs)
        return x + self.mlp(self.layer_norm2(x))


def check_images(pixel_values: torch.Tensor, num_channels: int, patch_size: int) -> tuple[int, int]:
    """The (rows, columns) patch grid of images (N, C, H, W); InputError unless H and W divide by the patch."""
    if pixel_values.ndim != 4 or pixel_values.shape[1] != num_channels:
        raise InputError(f"pixel_values must be (N, {num_channels}, H, W), got {tuple(pixel_values.shape)}.")
    height, width = pixel_values.shape[2:]
    if height % patch_size or width % patch_size:
        raise InputError(
            f"image size {height}x{width} is not divisible by the patch size {patch_size}; resize or crop the "
            f"images to a multiple of {patch_size}."
        )
    return height // patch_size, width // patch_size


def resize_positions(positions: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Learned positions (side * side, D) of a square patch grid, bicubically resized (align_corners=False, in
    float32) to `grid` = (rows, columns): (rows * columns, D) in the input's dtype."""
    count, dim = positions.shape
    side = math.isqrt(count)
    if side * side != count:
        raise ValueError(f"{count} position embeddings do not form a square grid")
    if (side, side) == tuple(grid):
        return positions
    square = positions.float().reshape(1, side, side, dim).permute(0, 3, 1, 2)
    resized = F.interpolate(square, size=tuple(grid), mode="bicubic", align_corners=False)
    return resized.permute(0, 2, 3, 1).reshape(-1, dim).to(positions.dtype)
