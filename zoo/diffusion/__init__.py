"""Diffusion denoisers and their pipelines (VAEs, text encoders and schedulers come from diffusers/transformers).

Importing this package registers its families.
"""

from . import wan  # noqa: E402,F401
from . import zimage  # noqa: E402,F401
from . import hummingbird  # noqa: E402,F401
