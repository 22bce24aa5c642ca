"""Reusable trunks: vision encoders, language decoders and the vision backbone families.

Importing this package registers its families.
"""

from . import llama, lowformer, phi, qwen, wavemix  # noqa: F401
