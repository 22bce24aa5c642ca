"""Feed-forward blocks: the gated SwiGLU of Llama-style decoders, the two-layer Mlp of ViTs and DiTs, and the GEGLU
projection of Stable-Diffusion-style transformers."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def project(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """`layer(x)` for x (..., in_features). For one row on CPU under torch.compile (a decoding step) it is a multiply
    and a sum, which inductor fuses into one parallel reduction over the weight: decoding reads every weight once
    per token, and MKL's one-row GEMV reads it on one thread where the reduction uses them all. Inductor's own
    decompose_mm_pass does the same but only when no side exceeds 2048 (not an MLP's wide projections, an LM head,
    or any projection of a 2560-wide Phi-2), so LM heads, SwiGLU's gate and up, Mlp and attention's q/k/v/o go through
    here."""
    if torch.compiler.is_compiling() and x.device.type == "cpu" and x.shape[:-1].numel() == 1:
        y = (x.unsqueeze(-2) * layer.weight).sum(-1)
        return y if layer.bias is None else y + layer.bias
    return layer(x)


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
        return self.down_proj(self.act(project(self.gate_proj, x)) * project(self.up_proj, x))


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
        return project(self.fc2, self.act(project(self.fc1, x)))


class GEGLU(nn.Module):
    """value * gelu(gate), both halves of one projection `proj` (dim -> 2 * hidden_dim): the input half of the
    feed-forward of Stable-Diffusion-style transformers (lvdm, diffusers' GEGLU). Takes (..., dim), returns
    (..., hidden_dim)."""

    def __init__(self, dim: int, hidden_dim: int, bias: bool = True):
        super().__init__()
        self.proj = nn.Linear(dim, 2 * hidden_dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)
