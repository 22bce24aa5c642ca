"""Vision-language models: backbones + connectors + token reduction, with processors and generation.

Importing this package registers its families.
"""

from . import smolvlm  # noqa: E402,F401
from . import tinygpt_v  # noqa: E402,F401
