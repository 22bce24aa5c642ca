"""Reusable trunks: vision encoders, language decoders and the vision backbone families.

Importing this package registers its families.
"""

from . import clip, llama, lowformer, navit, phi, qwen, spikingbrain, unit, wavemix  # noqa: F401
