"""Rotary position embeddings (RoPE) for caller-supplied positions: 1D, partial, 2D axial and 3D video.

`RotaryEmbedding` turns position ids into (cos, sin) tables of one angle per rotated channel pair;
`apply_rotary` rotates the leading channels of q or k with them. The pair layout is chosen where the
tables are applied: rotate-half (channel c pairs with c + rot/2: Llama, Qwen, SigLIP NaViT) or
interleaved (channel 2i pairs with 2i + 1, the complex form of Wan and Z-Image).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Llama3RopeScaling:
    """Llama-3.1 frequency scaling (transformers' rope_type "llama3"): long wavelengths are divided by
    `factor`, short ones kept, and the band between them interpolated smoothly."""

    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192

    def __call__(self, inv_freq: torch.Tensor) -> torch.Tensor:
        """Scale the inverse frequencies of each channel pair."""
        context = self.original_max_position_embeddings
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > context / self.low_freq_factor, inv_freq / self.factor, inv_freq)
        smooth = (context / wavelen - self.low_freq_factor) / (self.high_freq_factor - self.low_freq_factor)
        smoothed = (1 - smooth) * scaled / self.factor + smooth * scaled
        in_band = (wavelen >= context / self.high_freq_factor) & (wavelen <= context / self.low_freq_factor)
        return torch.where(in_band, smoothed, scaled)


def rotary_inv_freq(dim: int, theta: float, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The dim // 2 inverse frequencies theta^(-2i / dim) of a rotary embedding over `dim` channels."""
    if dim <= 0 or dim % 2:
        raise ValueError(f"rotary dim must be a positive even number, got {dim}")
    return 1.0 / theta ** (torch.arange(0, dim, 2, dtype=dtype) / dim)


class RotaryEmbedding(nn.Module):
    """(cos, sin) rotary tables for the positions the caller gives.

    dim: the rotated channels, at most head_dim (fewer gives partial rotation, e.g. Phi's 32 of 80). A
        tuple gives the channels of each position axis, whose angles are concatenated in that order:
        (44, 42, 42) for Wan's (frame, row, column), (32, 48, 48) for Z-Image, (36, 36) for Hulu-Med's
        2D axial NaViT encoder (head_dim 72).
    theta: the frequency base (10000 Llama/SigLIP, 1e6 Qwen2.5, 256 Z-Image).
    scaling: optional Llama3RopeScaling (Llama-3.1, LLaVA-Mini).
    angle_dtype: float32 reproduces transformers' tables bit for bit; float64 keeps angles exact at
        large positions and reproduces diffusers' Wan table bit for bit (Z-Image's rounds its float64
        angles to float32 before cos/sin, so it differs by up to 4e-5 at position 1535).

    forward(position_ids) takes (B, L) ids for one axis or (B, L, n_axes) for several (any leading
    shape works) and returns float32 cos and sin of shape (B, L, sum(dim) // 2).
    """

    def __init__(
        self,
        dim: int | Sequence[int],
        theta: float = 10000.0,
        *,
        scaling: Llama3RopeScaling | None = None,
        angle_dtype: torch.dtype = torch.float32,
    ):
        super().__init__()
        self.axes_dims = (dim,) if isinstance(dim, int) else tuple(dim)
        self.theta = theta
        self.scaling = scaling
        self.angle_dtype = angle_dtype
        if any(d <= 0 or d % 2 for d in self.axes_dims):
            raise ValueError(f"rotary dims must be positive even numbers, got {dim}")

    @property
    def dim(self) -> int:
        """The number of rotated channels."""
        return sum(self.axes_dims)

    def inv_freq(self, device: torch.device | None = None) -> torch.Tensor:
        """Inverse frequencies of every channel pair, axes concatenated: (dim // 2,).

        Recomputed on each call (it is tiny), so no buffer can be cast to a low precision dtype.
        """
        inv_freq = torch.cat([rotary_inv_freq(d, self.theta, self.angle_dtype) for d in self.axes_dims])
        if self.scaling is not None:
            inv_freq = self.scaling(inv_freq)
        return inv_freq.to(device)

    def forward(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n_axes = len(self.axes_dims)
        if n_axes > 1 and (position_ids.ndim < 2 or position_ids.shape[-1] != n_axes):
            raise ValueError(
                f"position_ids must have shape (B, L, {n_axes}) for axes of dims {self.axes_dims}, "
                f"got {tuple(position_ids.shape)}"
            )
        positions = position_ids.to(self.angle_dtype)
        if n_axes == 1:
            positions = positions[..., None]
        inv_freq_per_axis = self.inv_freq(positions.device).split([d // 2 for d in self.axes_dims])
        angles = torch.cat(
            [positions[..., axis, None] * inv_freq for axis, inv_freq in enumerate(inv_freq_per_axis)], dim=-1
        )
        return angles.cos().float(), angles.sin().float()

    def extra_repr(self) -> str:
        dims = self.axes_dims[0] if len(self.axes_dims) == 1 else self.axes_dims
        scaling = f", scaling={self.scaling}" if self.scaling is not None else ""
        return f"dim={dims}, theta={self.theta}{scaling}, angle_dtype={self.angle_dtype}"


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool = False) -> torch.Tensor:
    """Rotate the first 2 * cos.shape[-1] channels of x (B, H, L, D); the rest pass through.

    cos and sin are (B, L, D_rot // 2) or (L, D_rot // 2) from RotaryEmbedding. The rotation is computed
    in float32 and the result has x's dtype. interleaved=False pairs channel c with c + D_rot / 2
    (rotate-half); interleaved=True pairs channel 2i with 2i + 1 (complex multiplication).
    """
    if cos.shape != sin.shape:
        raise ValueError(f"cos and sin must have the same shape, got {tuple(cos.shape)} and {tuple(sin.shape)}")
    rot = 2 * cos.shape[-1]
    if x.ndim != 4 or rot > x.shape[-1] or x.shape[-2] != cos.shape[-2]:
        raise ValueError(
            f"expected x of shape (B, H, L, D) with L = {cos.shape[-2]} and D >= {rot} for cos/sin of shape "
            f"{tuple(cos.shape)}, got x of shape {tuple(x.shape)}"
        )
    cos, sin = cos.unsqueeze(-3), sin.unsqueeze(-3)  # broadcast over heads
    x_rot = x[..., :rot].float()
    if interleaved:  # (even + i odd) * (cos + i sin), as one complex product
        pairs = torch.view_as_complex(x_rot.unflatten(-1, (-1, 2)).contiguous())
        rotated = torch.view_as_real(pairs * torch.complex(cos, sin)).flatten(-2).to(x.dtype)
    else:
        cos, sin = torch.cat((cos, cos), dim=-1), torch.cat((sin, sin), dim=-1)
        rotated = (x_rot * cos + _rotate_half(x_rot) * sin).to(x.dtype)
    if rot == x.shape[-1]:
        return rotated
    return torch.cat((rotated, x[..., rot:]), dim=-1)
