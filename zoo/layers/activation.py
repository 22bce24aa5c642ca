"""Activations by their transformers names (a config's `hidden_act`)."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import nn


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): OpenAI CLIP's GELU approximation (transformers' "quick_gelu")."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "gelu": nn.GELU,
    "gelu_pytorch_tanh": partial(nn.GELU, approximate="tanh"),
    "quick_gelu": QuickGELU,
}


def activation_layer(name: str) -> Callable[[], nn.Module]:
    """The module factory of a transformers activation name, for `Mlp(act_layer=...)`."""
    if name not in ACTIVATIONS:
        raise ValueError(f"activation '{name}' is not supported; supported: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]
