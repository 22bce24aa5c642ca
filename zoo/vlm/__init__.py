"""Vision-language models: backbones + connectors + token reduction, with processors and generation.

Importing this package registers its families.
"""

from . import hulumed, llavamini, smolvlm, tinygpt_v  # noqa: E402,F401
from .token_reduction import TokenReduction  # noqa: E402,F401
