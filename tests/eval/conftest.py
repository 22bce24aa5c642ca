"""Fixtures of the evaluation and benchmark tests."""

from __future__ import annotations

import pytest

from tests.eval import blocks


@pytest.fixture(scope="module")
def block_families():
    """Registers mambablock-tiny, mambablock-v2-tiny and glablock-tiny for the module's tests."""
    blocks.register()
    yield
    blocks.unregister()
