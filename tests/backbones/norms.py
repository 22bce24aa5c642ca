"""Test helper shared by the backbone parity tests."""

from __future__ import annotations

import torch


def randomize_norms(model: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial norm statistics and affines, so that a swapped or missed norm shows in the outputs."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
            if isinstance(module, (torch.nn.BatchNorm2d, torch.nn.GroupNorm, torch.nn.LayerNorm)):
                module.weight.copy_(1 + 0.1 * torch.randn(module.weight.shape, generator=generator))
                module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=generator))
    return model


def randomize_decoder(model: torch.nn.Module) -> torch.nn.Module:
    """A transformers decoder for parity tests: every norm and bias moved off identity and zero, so a missed or
    swapped one shows, and its q/k projections scaled by 8, so that attention is peaked and positions (rotary,
    masks, windows) weigh in the logits."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                param.add_(torch.randn(param.shape, generator=generator) * 0.1)
            if ".q_proj.weight" in name or ".k_proj.weight" in name:
                param.mul_(8)
    return model


def randomize_biases(model: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Every parameter named `*bias` (norm biases included) set to N(0, 0.1^2), so a dropped bias shows."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.copy_(0.1 * torch.randn(param.shape, generator=generator))
    return model


def shift_norms_and_biases(model: torch.nn.Module, std: float = 0.2) -> torch.nn.Module:
    """Every parameter with "norm" in its name and every bias shifted by N(0, std^2) noise from the global generator
    (seed it first), so that a missed or swapped norm or bias shows in the outputs."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                param.add_(torch.randn_like(param) * std)
    return model
