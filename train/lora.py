"""LoRA fine-tuning through peft: adapters on the attention projections, merged into the weights for export."""

from __future__ import annotations

import copy
import fnmatch
from collections.abc import Sequence
from typing import Any

from torch import nn

from zoo.errors import ConfigError


def apply_lora(model: nn.Module, rank: int, alpha: float | None = None, dropout: float = 0.0,
               targets: Sequence[str] = ("q_proj", "k_proj", "v_proj", "o_proj"), trainable: Sequence[str] = ()) -> int:
    """Add LoRA adapters (peft) to every Linear whose name ends in one of `targets` (or, for a target holding a dot or
    a `*`, whose full name matches it as an fnmatch pattern, e.g. "language_model.*.q_proj"), in place, and freeze
    every other parameter but those whose names match a `trainable` fnmatch pattern (e.g. TinyGPT-V's norms and
    projections). Returns the number of adapted layers; none is a ConfigError. `alpha` defaults to `rank`."""
    try:
        from peft import LoraConfig, inject_adapter_in_model
        from peft.tuners.lora import LoraLayer
    except ImportError as error:
        raise ConfigError("LoRA fine-tuning needs peft: pip install peft") from error
    linears = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    chosen = [name for name in linears if any(
        fnmatch.fnmatch(name, target) if "." in target or "*" in target else name.rsplit(".", 1)[-1] == target
        for target in targets)]
    if not chosen:
        present = {name.rsplit(".", 1)[-1] for name in linears}
        raise ConfigError(
            f"No Linear layer of {type(model).__name__} is named {', '.join(targets)} (lora_targets); "
            f"its Linear layers are named: {', '.join(sorted(present)) or 'none'}."
        )
    config = LoraConfig(r=rank, lora_alpha=alpha if alpha is not None else rank, lora_dropout=dropout,
                        target_modules=chosen, bias="none")
    inject_adapter_in_model(config, model)
    count = 0
    for name, parameter in model.named_parameters():
        parameter.requires_grad_("lora_" in name or any(fnmatch.fnmatch(name, pattern) for pattern in trainable))
    for module in model.modules():
        count += isinstance(module, LoraLayer)
    return count


def has_lora(model: nn.Module) -> bool:
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:
        return False
    return any(isinstance(module, LoraLayer) for module in model.modules())


def merged_copy(model: nn.Module) -> nn.Module:
    """A copy of `model` with every LoRA adapter merged into its base layer and the adapters removed: a plain model
    whose state dict has the original keys (it saves and reloads like one that never had LoRA)."""
    from peft.tuners.lora import LoraLayer

    merged = copy.deepcopy(model)
    for name, module in list(merged.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge(safe_merge=True)
            parent_name, _, child = name.rpartition(".")
            parent = merged.get_submodule(parent_name) if parent_name else merged
            setattr(parent, child, module.get_base_layer())
    for parameter in merged.parameters():
        parameter.requires_grad_(True)
    return merged


def adapter_state_dict(model: nn.Module) -> dict[str, Any]:
    """The LoRA weights alone, in peft's format (keys without the adapter name)."""
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(model)


def freeze_all_but(model: nn.Module, trainable: Sequence[str]) -> int:
    """Freeze every parameter whose name matches no `trainable` fnmatch pattern; returns how many stay trainable
    (none is a ConfigError naming the patterns)."""
    count = 0
    for name, parameter in model.named_parameters():
        keep = any(fnmatch.fnmatch(name, pattern) for pattern in trainable)
        parameter.requires_grad_(keep)
        count += keep
    if not count:
        raise ConfigError(f"No parameter of {type(model).__name__} matches the trainable patterns {list(trainable)}.")
    return count
