"""Vision-language models: backbones + connectors + token reduction, with processors and generation.

Importing this package registers its families.
"""
