"""Feed-forward blocks: the gated SwiGLU of Llama-style decoders and the two-layer Mlp of ViTs and DiTs."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


class SwiGLU(nn.Module):
    """down_proj(act(gate_proj(x)) * up_proj(x)): Llama, SmolLM2, Qwen, SpikingBrain, Z-Image.

    Takes (..., dim) and returns (..., out_dim or dim). Key names follow transformers' LlamaMLP.
    """

    def __init__(
        self,
        dim: int,
        hidden_dim: int,
        out_dim: int | None = None,
        bias: bool = False,
        act_layer: Callable[[], nn.Module] = nn.SiLU,
    ):
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden_dim, bias=bias)
        self.up_proj = nn.Linear(dim, hidden_dim, bias=bias)
        self.act = act_layer()
        self.down_proj = nn.Linear(hidden_dim, out_dim or dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class Mlp(nn.Module):
    """fc2(act(fc1(x))): SigLIP and CLIP blocks, Wan's FFN, VLM projectors.

    act_layer defaults to exact GELU; pass ``partial(nn.GELU, approximate="tanh")`` for
    gelu_pytorch_tanh (SigLIP, Wan). Takes (..., dim) and returns (..., out_dim or dim).
    """

    def __init__(
        self,
        dim: int,
        hidden_dim: int,
        out_dim: int | None = None,
        bias: bool = True,
        act_layer: Callable[[], nn.Module] = nn.GELU,
    ):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim, bias=bias)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_dim, out_dim or dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))
