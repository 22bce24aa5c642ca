"""Fixtures of the training tests: the test-only restoration family."""

from __future__ import annotations

import pytest

from tests.train import toy_restoration


@pytest.fixture(scope="module")
def toy_restoration_family():
    """Registers toyrestore-tiny and toyrestore-sr-tiny for the module's tests."""
    toy_restoration.register()
    yield
    toy_restoration.unregister()

