"""Embedded datasets that need no download, and loaders for the usual user formats."""
