"""Unrolling images and light fields into token sequences for directional scans, and folding them back.

Images (VMamba's SS2D, Serpent's four-direction unrolling): (batch, channels, height, width) becomes
(batch, directions, channels, height * width), one sequence per direction:

    "row"              row-major raster, (h w)
    "column"           column-major raster, (w h)
    "row_reversed"     "row" read backwards
    "column_reversed"  "column" read backwards

Light fields (MLFSR's subspace scans): features (batch, channels, U * V, height, width) with angular size
(U, V) become (batch', length, channels) token sequences, one per 2-D slice of the 4-D light field:

    "spatial"   batch (b, u, v), sequence (h, w)
    "angular"   batch (b, h, w), sequence (u, v)
    "epi_h"     batch (b, v, w), sequence (u, h)
    "epi_w"     batch (b, u, h), sequence (v, w)
"""

import math

import torch
from einops import rearrange
from torch import Tensor

IMAGE_DIRECTIONS = ("row", "column", "row_reversed", "column_reversed")
# 1: a raster scan; 2: the raster forwards and backwards (as Vim); 4: VMamba's cross-scan order.
DIRECTION_PRESETS = {1: ("row",), 2: ("row", "row_reversed"), 4: IMAGE_DIRECTIONS}

# subspace: (axes folded into the batch, axes of the sequence)
LIGHT_FIELD_SUBSPACES = {
    "spatial": ("u v", "h w"),
    "angular": ("h w", "u v"),
    "epi_h": ("v w", "u h"),
    "epi_w": ("u h", "v w"),
}


def _directions(directions: int | tuple[str, ...]) -> tuple[str, ...]:
    if isinstance(directions, int):
        if directions not in DIRECTION_PRESETS:
            raise ValueError(f"directions must be one of {tuple(DIRECTION_PRESETS)} or names, got {directions}")
        return DIRECTION_PRESETS[directions]
    unknown = [d for d in directions if d not in IMAGE_DIRECTIONS]
    if unknown or not directions:
        raise ValueError(f"directions must be names from {IMAGE_DIRECTIONS}, got {tuple(directions)}")
    return tuple(directions)


def _raster(direction: str) -> str:
    return "(h w)" if direction.startswith("row") else "(w h)"


def image_to_sequences(x: Tensor, directions: int | tuple[str, ...] = 4) -> Tensor:
    """(batch, channels, height, width) -> (batch, directions, channels, height * width).

    ``directions`` is 1, 2 or 4 (see ``DIRECTION_PRESETS``) or a tuple of names from ``IMAGE_DIRECTIONS``.
    """
    if x.dim() != 4:
        raise ValueError(f"image_to_sequences: x must be (batch, channels, height, width), got {tuple(x.shape)}")
    sequences = []
    for direction in _directions(directions):
        sequence = rearrange(x, f"b c h w -> b c {_raster(direction)}")
        sequences.append(sequence.flip(-1) if direction.endswith("_reversed") else sequence)
    return torch.stack(sequences, dim=1)


def sequences_to_image(sequences: Tensor, height: int, width: int, directions: int | tuple[str, ...] = 4) -> Tensor:
    """Inverse of `image_to_sequences`, summing the directions: (batch, directions, channels, length) -> image."""
    directions = _directions(directions)
    if sequences.dim() != 4 or sequences.shape[1] != len(directions) or sequences.shape[-1] != height * width:
        raise ValueError(
            f"sequences_to_image: sequences must be (batch, {len(directions)}, channels, {height * width}) "
            f"for directions {directions}, got {tuple(sequences.shape)}"
        )
    image = None
    for sequence, direction in zip(sequences.unbind(1), directions, strict=True):
        if direction.endswith("_reversed"):
            sequence = sequence.flip(-1)
        folded = rearrange(sequence, f"b c {_raster(direction)} -> b c h w", h=height, w=width)
        image = folded if image is None else image + folded
    return image


def _subspace(subspace: str) -> tuple[str, str]:
    if subspace not in LIGHT_FIELD_SUBSPACES:
        raise ValueError(f"subspace must be one of {tuple(LIGHT_FIELD_SUBSPACES)}, got {subspace!r}")
    return LIGHT_FIELD_SUBSPACES[subspace]


def light_field_to_sequences(x: Tensor, angular_size: tuple[int, int], subspace: str) -> Tensor:
    """(batch, channels, U * V, height, width) -> (batch', length, channels) for one subspace scan."""
    u, v = angular_size
    if x.dim() != 5 or x.shape[2] != u * v:
        raise ValueError(
            f"light_field_to_sequences: x must be (batch, channels, {u} * {v}, height, width), got {tuple(x.shape)}"
        )
    batch_axes, sequence_axes = _subspace(subspace)
    return rearrange(x, f"b c (u v) h w -> (b {batch_axes}) ({sequence_axes}) c", u=u, v=v)


def sequences_to_light_field(
    sequences: Tensor, angular_size: tuple[int, int], spatial_size: tuple[int, int], subspace: str
) -> Tensor:
    """Inverse of `light_field_to_sequences`: (batch', length, channels) -> (batch, channels, U * V, H, W)."""
    sizes = dict(zip("uvhw", (*angular_size, *spatial_size), strict=True))
    batch_axes, sequence_axes = _subspace(subspace)
    folded = math.prod(sizes[a] for a in batch_axes.split())
    length = math.prod(sizes[a] for a in sequence_axes.split())
    if sequences.dim() != 3 or sequences.shape[1] != length or sequences.shape[0] % folded:
        raise ValueError(
            f"sequences_to_light_field: {subspace} sequences must be (batch * {folded}, {length}, channels) for "
            f"angular size {tuple(angular_size)}, spatial size {tuple(spatial_size)}; got {tuple(sequences.shape)}"
        )
    return rearrange(sequences, f"(b {batch_axes}) ({sequence_axes}) c -> b c (u v) h w", **sizes)


__all__ = [
    "DIRECTION_PRESETS",
    "IMAGE_DIRECTIONS",
    "LIGHT_FIELD_SUBSPACES",
    "image_to_sequences",
    "light_field_to_sequences",
    "sequences_to_image",
    "sequences_to_light_field",
]
