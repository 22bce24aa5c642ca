"""zoo: a model zoo of small, fast multimodal architectures.

    import zoo
    model = zoo.create("smolvlm-256m", pretrained=True)
    zoo.list_models("smolvlm*", pretrained=True)

Importing `zoo` is cheap: torch and the model families load on first use of the names below (the registry
imports the family packages on its first lookup), so `zoo --help` and `zoo --version` start at once.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from .errors import CheckpointError, ConfigError, HubError, InputError, UnknownModelError, ZooError

__version__ = "0.1.0"

_LAZY = {
    "ZooConfig": "config", "ZooModel": "modeling", "create": "factory", "from_pretrained": "factory",
    "list_models": "registry", "model_info": "registry",
}

__all__ = [
    "CheckpointError", "ConfigError", "HubError", "InputError", "UnknownModelError", "ZooConfig", "ZooError", "ZooModel",
    "create", "from_pretrained", "list_models", "model_info",
]


def __getattr__(name: str) -> Any:
    """The public names of `_LAZY` and the subpackages (`zoo.registry`, `zoo.vlm`, ...), imported on first access."""
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    elif importlib.util.find_spec(f"{__name__}.{name}") is not None:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module 'zoo' has no attribute '{name}'")
    globals()[name] = value
    return value
