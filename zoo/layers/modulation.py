"""adaLN modulation of diffusion transformers: a conditioning vector scales, shifts and gates each block.

Wan: a shared SiLU -> Linear(dim, 6 * dim) projection of the time embedding plus a learned per-block
table (`ScaleShiftTable`), giving shift/scale/gate for attention and FFN, added in float32.
Z-Image: a per-block Linear(256, 4 * dim) without SiLU (`AdaLNModulation(..., act_layer=None)`) giving
scale/gate for attention and FFN, no shift; the gates go through tanh.
Both produce chunks of the same shapes, used with `modulate` and `gated_residual`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def modulate(x: torch.Tensor, shift: torch.Tensor | None, scale: torch.Tensor) -> torch.Tensor:
    """x * (1 + scale) + shift (no shift when None), in the promoted dtype, cast back to x's dtype.

    x is (B, L, dim); shift and scale are (B, 1, dim) or per-token (B, L, dim).
    """
    out = x * (1 + scale)
    if shift is not None:
        out = out + shift
    return out.to(x.dtype)


def gated_residual(x: torch.Tensor, branch: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """x + gate * branch, in the promoted dtype, cast back to x's dtype (pass gate.tanh() for Z-Image)."""
    return (x + gate * branch).to(x.dtype)


def _chunks(modulation: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(B, n, dim) -> n tensors (B, 1, dim); per-token (B, L, n, dim) -> n tensors (B, L, dim)."""
    if modulation.ndim == 3:
        return modulation.split(1, dim=1)
    return modulation.unbind(dim=-2)


class AdaLNModulation(nn.Module):
    """Linear(act(cond)) split into num_chunks modulation vectors of size dim.

    cond is (B, cond_dim), or (B, L, cond_dim) for per-token conditioning; returns num_chunks tensors
    of shape (B, 1, dim) or (B, L, dim). act_layer=None drops the activation (Z-Image's blocks).
    """

    def __init__(
        self,
        cond_dim: int,
        dim: int,
        num_chunks: int,
        act_layer: Callable[[], nn.Module] | None = nn.SiLU,
        bias: bool = True,
    ):
        super().__init__()
        self.num_chunks = num_chunks
        self.act = act_layer() if act_layer is not None else nn.Identity()
        self.linear = nn.Linear(cond_dim, num_chunks * dim, bias=bias)

    def forward(self, cond: torch.Tensor) -> tuple[torch.Tensor, ...]:
        modulation = self.linear(self.act(cond))
        return _chunks(modulation.unflatten(-1, (self.num_chunks, -1)))


class ScaleShiftTable(nn.Module):
    """A learned (1, num_chunks, dim) table added in float32 to a modulation shared by all blocks (Wan).

    forward takes the shared modulation (B, num_chunks, dim), per-token (B, L, num_chunks, dim), or
    anything broadcasting to those (Wan's head adds the time embedding (B, 1, dim) to both chunks), and
    returns num_chunks float32 tensors of shape (B, 1, dim) or (B, L, dim).
    """

    def __init__(self, num_chunks: int, dim: int):
        super().__init__()
        self.table = nn.Parameter(torch.randn(1, num_chunks, dim) / dim**0.5)

    def forward(self, modulation: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return _chunks(self.table.float() + modulation.float())
