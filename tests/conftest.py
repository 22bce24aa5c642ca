"""Test fixtures: an isolated Hugging Face home per test, the local fake Hub, and the test-only toy family.

Test tiers (see design.md): unit/parity (default), offline Hub (`hf_cache`, `fake_hub`), `slow`, `gpu`,
`live_hub` (needs ZOO_LIVE_HUB=1). No default test can reach the real Hub: the endpoint points at a
closed local port unless a test starts the fake Hub.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tests import toy
from tests.hub_server import FakeHub, SilentHub

CLOSED_ENDPOINT = "http://127.0.0.1:9"

# The test models are tiny: a second intra-op thread only adds synchronisation, which stalls badly when the
# cores are shared. One thread also makes timings of the suite independent of the machine's core count.
torch.set_num_threads(1)

toy.register()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("ZOO_LIVE_HUB") != "1":
        skip = pytest.mark.skip(reason="live Hub tests need ZOO_LIVE_HUB=1")
        for item in items:
            if "live_hub" in item.keywords:
                item.add_marker(skip)
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs CUDA")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(autouse=True)
def seeded() -> None:
    """Every test starts from the same random state, so random inputs (and tolerances) are reproducible."""
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def isolated_hf_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own HF_HOME and cache, no token, online mode, and a closed endpoint."""
    from huggingface_hub import constants

    home = tmp_path / "hf_home"
    cache = home / "hub"
    cache.mkdir(parents=True)
    for name, value in {"HF_HOME": home, "HF_HUB_CACHE": cache}.items():
        monkeypatch.setenv(name, str(value))
    for name in ("HF_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    point_hub_at(monkeypatch, CLOSED_ENDPOINT)
    return home


def point_hub_at(monkeypatch: pytest.MonkeyPatch, endpoint: str) -> None:
    """Send huggingface_hub's requests to `endpoint`, here and in subprocesses."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")


@pytest.fixture
def no_retry_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    """huggingface_hub retries failed requests with back-off sleeps; skip the sleeping."""
    import huggingface_hub.utils._http as hf_http

    monkeypatch.setattr(hf_http.time, "sleep", lambda seconds: None)


@pytest.fixture
def hf_cache(isolated_hf_home: Path) -> Path:
    """The (empty) Hugging Face cache of this test; fill it with `tests.hub_server.populate_cache`."""
    return isolated_hf_home / "hub"


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """HF_HUB_OFFLINE=1 for this test (in-process and for subprocesses)."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch):
    """A local Hub-compatible server; HF_ENDPOINT points at it for this test."""
    hub = FakeHub().start()
    point_hub_at(monkeypatch, hub.endpoint)
    monkeypatch.setenv("HF_TOKEN", "hf_fake_token_for_tests")
    yield hub
    hub.stop()


@pytest.fixture
def silent_hub(monkeypatch: pytest.MonkeyPatch):
    """HF_ENDPOINT at a server that accepts connections and never answers; requests time out after 1 s."""
    hub = SilentHub().start()
    point_hub_at(monkeypatch, hub.endpoint)
    monkeypatch.setenv("HF_TOKEN", "hf_fake_token_for_tests")
    monkeypatch.setenv("HF_HUB_DOWNLOAD_TIMEOUT", "1")
    yield hub
    hub.stop()


@pytest.fixture
def backoff_waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record zoo's waits between push attempts instead of sleeping them."""
    import zoo.hub

    waits: list[float] = []
    monkeypatch.setattr(zoo.hub.time, "sleep", waits.append)
    return waits
