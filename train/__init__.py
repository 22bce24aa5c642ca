"""The common training loop."""
