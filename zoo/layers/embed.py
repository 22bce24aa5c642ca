"""Input embeddings: image/video patches to tokens, and sinusoidal timestep embeddings for diffusion."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from einops import rearrange
from torch import nn


class PatchEmbed(nn.Module):
    """Non-overlapping patches to tokens: a Conv2d (images) or Conv3d (videos) with kernel = stride = patch.

    patch_size: an int or (ph, pw) for images (B, C, H, W); (pt, ph, pw) for videos (B, C, T, H, W),
    e.g. Wan's (1, 2, 2). forward returns tokens (B, N, dim) in row-major grid order and the grid
    size, (H / ph, W / pw) or (T / pt, H / ph, W / pw).
    """

    def __init__(self, in_channels: int, dim: int, patch_size: int | tuple[int, ...], bias: bool = True):
        super().__init__()
        self.patch_size = (patch_size, patch_size) if isinstance(patch_size, int) else tuple(patch_size)
        if len(self.patch_size) not in (2, 3):
            raise ValueError(f"patch_size must be an int, (ph, pw) or (pt, ph, pw), got {patch_size}")
        conv = nn.Conv2d if len(self.patch_size) == 2 else nn.Conv3d
        self.proj = conv(in_channels, dim, kernel_size=self.patch_size, stride=self.patch_size, bias=bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        spatial = x.shape[2:]
        if (
            x.ndim != 2 + len(self.patch_size)
            or x.shape[1] != self.proj.in_channels
            or any(size % patch for size, patch in zip(spatial, self.patch_size, strict=True))
        ):
            layout = "(B, C, H, W)" if len(self.patch_size) == 2 else "(B, C, T, H, W)"
            raise ValueError(
                f"expected input {layout} with C = {self.proj.in_channels} and sizes divisible by the patch "
                f"{self.patch_size}, got {tuple(x.shape)}"
            )
        x = self.proj(x)
        # Contiguous tokens: a channels-last view would make every later norm copy its input.
        return rearrange(x, "b c ... -> b (...) c").contiguous(), tuple(x.shape[2:])


def timestep_embedding(
    t: torch.Tensor,
    dim: int,
    *,
    flip_sin_to_cos: bool = False,
    downscale_freq_shift: float = 1.0,
    scale: float = 1.0,
    max_period: float = 10000.0,
) -> torch.Tensor:
    """Sinusoidal embedding (..., dim) in float32 of timesteps t (...), as diffusers' get_timestep_embedding.

    Frequencies are exp(-ln(max_period) * i / (dim // 2 - downscale_freq_shift)) for i < dim // 2; the
    output is [sin, cos] or, with flip_sin_to_cos, [cos, sin], zero-padded when dim is odd. Wan and
    Z-Image use flip_sin_to_cos=True, downscale_freq_shift=0 (Z-Image on t * 1000). Per-token timesteps
    (B, L) give (B, L, dim).
    """
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device)
    freqs = torch.exp(exponent / (half - downscale_freq_shift))
    angles = scale * (t[..., None].float() * freqs)
    sin, cos = torch.sin(angles), torch.cos(angles)
    embedding = torch.cat((cos, sin) if flip_sin_to_cos else (sin, cos), dim=-1)
    if dim % 2:
        embedding = nn.functional.pad(embedding, (0, 1))
    return embedding


class TimestepEmbedding(nn.Module):
    """linear_2(act(linear_1(x))): the MLP on a sinusoidal timestep embedding (diffusers' key names).

    Wan: TimestepEmbedding(256, dim); Z-Image: TimestepEmbedding(256, 1024, out_dim=256).
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int,
        out_dim: int | None = None,
        act_layer: Callable[[], nn.Module] = nn.SiLU,
    ):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, hidden_dim)
        self.act = act_layer()
        self.linear_2 = nn.Linear(hidden_dim, out_dim or hidden_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(x)))
