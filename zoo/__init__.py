"""zoo: a model zoo of small, fast multimodal architectures.

    import zoo
    model = zoo.create("smolvlm-256m", pretrained=True)
    zoo.list_models("smolvlm*", pretrained=True)
"""

__version__ = "0.1.0"

from .config import ZooConfig
from .errors import CheckpointError, ConfigError, HubError, InputError, UnknownModelError, ZooError
from .factory import create, from_pretrained
from .modeling import ZooModel
from .registry import list_models, model_info

# Importing the family packages registers their models.
from . import backbones, diffusion, restoration, vlm  # noqa: E402,F401  isort: skip

__all__ = [
    "CheckpointError", "ConfigError", "HubError", "InputError", "UnknownModelError", "ZooConfig", "ZooError", "ZooModel",
    "create", "from_pretrained", "list_models", "model_info",
]
