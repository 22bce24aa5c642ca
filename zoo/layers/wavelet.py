"""Orthonormal 2D Haar wavelet transform (db1, 'zero' mode), single- and multi-level.

For each 2x2 cell ``[a b; c d]`` of every channel one level gives four bands at half resolution:

    LL = (a + b + c + d) / 2      LH = (a + b - c - d) / 2
    HL = (a - b + c - d) / 2      HH = (a - b - c + d) / 2

The layout matches ``pytorch_wavelets.DWTForward(J, wave="db1", mode="zero")``, which WaveMix uses: a lowpass
``(B, C, H / 2**J, W / 2**J)`` and, per level from the finest, highs ``(B, C, 3, h, w)`` in the order LH, HL, HH.
The transform is a reshape plus sums and differences, so it runs on any device and dtype and is differentiable.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor


def haar_dwt2d(x: Tensor, levels: int = 1) -> tuple[Tensor, list[Tensor]]:
    """Multi-level Haar DWT of images ``x`` of shape (B, C, H, W).

    Returns the lowpass of the coarsest level, (B, C, H / 2**levels, W / 2**levels), and a list with the highs of
    each level, finest first: ``highs[j]`` has shape (B, C, 3, H / 2**(j + 1), W / 2**(j + 1)).
    """
    _check_image(x, levels)
    highs = []
    low = x
    for _ in range(levels):
        low, level_highs = _haar_level(low)
        highs.append(level_highs)
    return low, highs


def haar_idwt2d(low: Tensor, highs: list[Tensor]) -> Tensor:
    """Inverse of `haar_dwt2d`: rebuilds (B, C, H, W) from the coarsest lowpass and the highs, finest first."""
    if low.dim() != 4:
        raise ValueError(f"haar_idwt2d expects a lowpass of shape (B, C, h, w), got {tuple(low.shape)}")
    for level_highs in reversed(highs):
        expected = (*low.shape[:2], 3, *low.shape[2:])
        if tuple(level_highs.shape) != expected:
            raise ValueError(
                f"haar_idwt2d expects highs of shape (B, C, 3, h, w) = {expected} at this level, "
                f"got {tuple(level_highs.shape)}"
            )
        low = _inverse_haar_level(low, level_highs)
    return low


def haar_dwt2d_concat(x: Tensor, levels: int = 1) -> list[Tensor]:
    """Haar bands of every level stacked on channels, as a WaveMix block feeds them to its per-level MLPs.

    Entry ``j`` (level j + 1) has shape (B, 4C, H / 2**(j + 1), W / 2**(j + 1)): the lowpass of that level on the
    first C channels, then its highs channel-major (channel 0's LH, HL, HH, then channel 1's, ...).
    """
    _check_image(x, levels)
    stacked = []
    low = x
    for _ in range(levels):
        low, level_highs = _haar_level(low)
        stacked.append(torch.cat([low, rearrange(level_highs, "b c k h w -> b (c k) h w")], dim=1))
    return stacked


def _check_image(x: Tensor, levels: int) -> None:
    if x.dim() != 4:
        raise ValueError(f"Haar DWT expects images of shape (B, C, H, W), got {tuple(x.shape)}")
    if levels < 1:
        raise ValueError(f"Haar DWT needs levels >= 1, got {levels}")
    factor = 2**levels
    height, width = x.shape[-2:]
    if height % factor or width % factor:
        raise ValueError(
            f"Haar DWT with {levels} level(s) needs H and W divisible by 2**{levels} = {factor}, "
            f"got H={height}, W={width}"
        )


def _haar_level(x: Tensor) -> tuple[Tensor, Tensor]:
    a, b, c, d = rearrange(x, "n ch (h i) (w j) -> (i j) n ch h w", i=2, j=2)
    top_sum, bottom_sum, top_diff, bottom_diff = a + b, c + d, a - b, c - d
    low = (top_sum + bottom_sum) * 0.5
    highs = torch.stack([top_sum - bottom_sum, top_diff + bottom_diff, top_diff - bottom_diff], dim=2) * 0.5
    return low, highs


def _inverse_haar_level(low: Tensor, highs: Tensor) -> Tensor:
    # The Haar analysis matrix is symmetric and orthogonal, so synthesis applies the same sums and differences.
    lh, hl, hh = highs.unbind(dim=2)
    low_plus, low_minus, high_plus, high_minus = low + lh, low - lh, hl + hh, hl - hh
    cells = torch.stack([low_plus + high_plus, low_plus - high_plus, low_minus + high_minus, low_minus - high_minus])
    return rearrange(cells * 0.5, "(i j) n ch h w -> n ch (h i) (w j)", i=2, j=2)
