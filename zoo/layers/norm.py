"""Normalisation layers computed in float32: RMSNorm, LayerNorm, GroupNorm, and the q/k norms of attention."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

QK_NORMS = ("rms", "rms_across_heads", "layer")


class RMSNorm(nn.Module):
    """Root-mean-square norm over the last dimension, as in Llama, Qwen, Wan and Z-Image.

    The statistics are computed in float32; the normalised value is cast back to the input dtype
    before the weight is applied (transformers' LlamaRMSNorm order, so fp32 parity is bit-exact).
    """

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight.to(dtype) * x.to(dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm computed in float32 and cast back to the input dtype (same state-dict keys)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).to(x.dtype)


class GroupNorm(nn.GroupNorm):
    """nn.GroupNorm computed in float32 and cast back to the input dtype (same state-dict keys): the U-Nets' norm."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).to(x.dtype)


class HeadRMSNorm(RMSNorm):
    """RMSNorm over each head's channels, one weight of size head_dim shared by all heads.

    Takes (..., heads * head_dim) projections or (B, H, L, head_dim) split heads alike.
    """

    def __init__(self, head_dim: int, eps: float = 1e-6):
        super().__init__(head_dim, eps)
        self.head_dim = head_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.unflatten(-1, (-1, self.head_dim))).flatten(-2)


class HeadLayerNorm(LayerNorm):
    """LayerNorm over each head's channels, one weight and bias of size head_dim shared by all heads.

    Takes (..., heads * head_dim) projections or (B, H, L, head_dim) split heads alike.
    """

    def __init__(self, head_dim: int, eps: float = 1e-5):
        super().__init__(head_dim, eps=eps)
        self.head_dim = head_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.unflatten(-1, (-1, self.head_dim))).flatten(-2)


def qk_norm(kind: str | None, num_heads: int, head_dim: int, eps: float = 1e-6) -> nn.Module:
    """The norm applied to the query or key projection, of shape (..., num_heads * head_dim).

    kind:
        None: no norm (nn.Identity).
        "rms": RMSNorm over each head's channels, weight (head_dim,): Qwen3, Z-Image.
        "rms_across_heads": RMSNorm over all heads' channels at once, weight (num_heads * head_dim,): Wan.
        "layer": LayerNorm over each head's channels, weight and bias (head_dim,): TinyGPT-V's Phi.
    """
    if kind is None:
        return nn.Identity()
    if kind == "rms":
        return HeadRMSNorm(head_dim, eps)
    if kind == "rms_across_heads":
        return RMSNorm(num_heads * head_dim, eps)
    if kind == "layer":
        return HeadLayerNorm(head_dim, eps)
    raise ValueError(f"qk_norm must be None or one of {QK_NORMS}, got {kind!r}")
