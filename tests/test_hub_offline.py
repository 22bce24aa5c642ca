"""Offline Hub tier: the real huggingface_hub code paths against a pre-populated cache and a local server."""

from __future__ import annotations

import time

import torch

import pytest

import zoo
from tests.hub_server import populate_cache
from tests.test_hub import _assert_same_weights, _original_state_dict
from zoo.cli import main


def _published(tmp_path, name="toy-base", **save_kwargs):
    """A model and the folder its 'published' checkpoint lives in."""
    model = zoo.create(name)
    return model, model.save_pretrained(tmp_path / "published", **save_kwargs)


def test_pretrained_from_prepopulated_cache_offline(tmp_path, hf_cache, offline):
    model, folder = _published(tmp_path)
    populate_cache(hf_cache, "zoo-test/toy-base", folder)
    loaded = zoo.create("toy-base", pretrained=True)
    _assert_same_weights(model, loaded)
    _assert_same_weights(model, zoo.from_pretrained("zoo-test/toy-base"))


def test_tagged_source_with_file_patterns_from_cache(tmp_path, hf_cache, offline):
    reference = zoo.create("toy-base")
    release = tmp_path / "release"
    (release / "weights").mkdir(parents=True)
    torch.save(_original_state_dict(reference), release / "weights" / "toy.pth")
    (release / "weights" / "other.pth").write_bytes(b"ignored: not in the source's files")
    populate_cache(hf_cache, "zoo-test/toy-original", release)
    _assert_same_weights(reference, zoo.create("toy-base.orig", pretrained=True))


def test_offline_and_not_cached_says_what_to_do(offline):
    with pytest.raises(zoo.HubError) as info:
        zoo.create("toy-base", pretrained=True)
    message = str(info.value)
    assert "'zoo-test/toy-base'" in message and "HF_HUB_OFFLINE=1" in message
    assert "zoo download zoo-test/toy-base" in message and "checkpoint_path=" in message


def test_unreachable_hub_and_not_cached_says_what_to_do(no_retry_wait):
    with pytest.raises(zoo.HubError, match="http://127.0.0.1:9 is unreachable .* not in the cache"):
        zoo.from_pretrained("zoo-test/toy-base")


def test_push_then_pull_through_the_local_server(fake_hub):
    model = zoo.create("toy-base")
    url = model.push_to_hub("me/toy", commit_message="first")
    assert url.startswith(fake_hub.endpoint + "/me/toy/commit/")
    files = fake_hub.repos["me/toy"].commits[fake_hub.repos["me/toy"].branches["main"]]
    assert {"config.json", "model.safetensors", "README.md"} <= set(files)
    assert 'zoo.from_pretrained("me/toy")' in files["README.md"].decode()
    loaded = zoo.from_pretrained("me/toy")
    _assert_same_weights(model, loaded)
    assert "POST /api/models/me/toy/commit/main" in fake_hub.requests
    assert any(r.startswith("GET /me/toy/resolve/") for r in fake_hub.requests)


def test_sharded_push_pull_and_revisions(fake_hub, tmp_path):
    first = zoo.create("toy-base")
    folder = first.save_pretrained(tmp_path / "first", max_shard_size=2000)
    first_url = zoo.hub.push_folder(folder, "me/toy")
    second = zoo.create("toy-base")
    second.push_to_hub("me/toy")
    _assert_same_weights(second, zoo.from_pretrained("me/toy"))
    first_sha = first_url.rsplit("/", 1)[1]
    _assert_same_weights(first, zoo.from_pretrained("me/toy", revision=first_sha))


def test_pretrained_download_from_server_then_offline(fake_hub, tmp_path, monkeypatch):
    model, folder = _published(tmp_path, max_shard_size=2000)
    fake_hub.upload_folder("zoo-test/toy-base", folder)
    _assert_same_weights(model, zoo.create("toy-base", pretrained=True))
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # now served from the cache alone
    _assert_same_weights(model, zoo.create("toy-base", pretrained=True))


def test_pretrained_source_without_safetensors_falls_back_to_its_pickle(fake_hub, tmp_path):
    """Some published repos (e.g. openai/clip-vit-large-patch14-336) hold only pytorch_model.bin."""
    model, folder = _published(tmp_path)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    fake_hub.upload_folder("zoo-test/toy-base", folder)
    _assert_same_weights(model, zoo.create("toy-base", pretrained=True))


def test_missing_repo_and_revision(fake_hub):
    with pytest.raises(zoo.HubError, match="'zoo-test/nothing' was not found"):
        zoo.from_pretrained("zoo-test/nothing")
    zoo.create("toy-tiny").push_to_hub("me/toy")
    with pytest.raises(zoo.HubError, match="has no revision 'v9'"):
        zoo.from_pretrained("me/toy", revision="v9")


def test_push_failure_is_reported_and_keeps_the_folder(fake_hub, tmp_path, no_retry_wait):
    folder = zoo.create("toy-tiny").save_pretrained(tmp_path / "saved")
    fake_hub.fail_with = 503
    with pytest.raises(zoo.HubError, match="Could not push .* to 'me/toy'.*zoo push"):
        zoo.hub.push_folder(folder, "me/toy")
    assert (folder / "model.safetensors").is_file()


# A Hub that refuses connections (the default CLOSED_ENDPOINT) or never answers (`silent_hub`)


def _files(folder):
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.iterdir()}


def test_push_to_a_closed_port_is_retried_with_backoff_then_reported(tmp_path, backoff_waits):
    folder = zoo.create("toy-tiny").save_pretrained(tmp_path / "saved")
    before = _files(folder)
    with pytest.raises(zoo.hub.PushError) as info:
        zoo.hub.push_folder(folder, "me/toy")
    assert info.value.attempts == 4 and backoff_waits == [2.0, 4.0, 8.0]
    message = str(info.value)
    assert "after 4 attempt(s): the Hub at http://127.0.0.1:9 is unreachable (ConnectError" in message
    assert f"push it later with `zoo push {folder} me/toy`" in message and "\n" not in message
    assert _files(folder) == before


def test_push_to_hub_with_the_hub_down_says_how_to_push_later(backoff_waits):
    with pytest.raises(zoo.hub.PushError, match=r"Could not push the model to 'me/toy' after 4 attempt\(s\): .*"
                                                r"unreachable.*save_pretrained\(DIR\)` and run `zoo push DIR me/toy`"):
        zoo.create("toy-tiny").push_to_hub("me/toy")
    assert backoff_waits == [2.0, 4.0, 8.0]


def test_cli_push_to_a_closed_port_prints_one_line(tmp_path, capsys, backoff_waits):
    folder = zoo.create("toy-tiny").save_pretrained(tmp_path / "saved")
    assert main(["push", str(folder), "me/x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("zoo push: error: Could not push") and "Traceback" not in err
    assert f"`zoo push {folder} me/x`" in err
    assert len(backoff_waits) == 3


def test_download_from_a_silent_hub_fails_in_bounded_time(silent_hub):
    started = time.monotonic()
    with pytest.raises(zoo.HubError) as info:
        zoo.create("toy-base", pretrained=True)
    assert time.monotonic() - started < 20
    message = str(info.value)
    assert f"{silent_hub.endpoint} did not answer within 1 s (set HF_HUB_DOWNLOAD_TIMEOUT" in message
    assert any("/api/models/zoo-test/toy-base" in request for request in silent_hub.requests)


def test_push_to_a_silent_hub_fails_in_bounded_time(silent_hub, tmp_path, backoff_waits):
    folder = zoo.create("toy-tiny").save_pretrained(tmp_path / "saved")
    before = _files(folder)
    started = time.monotonic()
    with pytest.raises(zoo.hub.PushError, match=f"after 4 attempt.*the Hub at {silent_hub.endpoint} did not answer "
                                                "within 1 s .*HF_HUB_DOWNLOAD_TIMEOUT"):
        zoo.hub.push_folder(folder, "me/toy")
    assert time.monotonic() - started < 20
    assert silent_hub.requests.count("POST /api/repos/create") == 4  # each attempt of zoo's retries waited once
    assert _files(folder) == before


def test_huggingface_hub_retries_do_not_wait_again_for_a_silent_hub(silent_hub, no_retry_wait):
    """huggingface_hub retries a request that timed out up to 5 times; zoo fails the repeats at once."""
    from huggingface_hub.utils import http_backoff

    zoo.hub._begin_hub_call()
    started = time.monotonic()
    with pytest.raises(zoo.hub._Unanswered):
        http_backoff("GET", f"{silent_hub.endpoint}/api/models/me/toy", max_retries=5)
    assert silent_hub.requests == ["GET /api/models/me/toy"] and time.monotonic() - started < 10


def test_timeout_variable_must_be_seconds(monkeypatch):
    monkeypatch.setenv("HF_HUB_DOWNLOAD_TIMEOUT", "soon")
    with pytest.raises(zoo.ConfigError, match="HF_HUB_DOWNLOAD_TIMEOUT must be a number of seconds > 0, got 'soon'"):
        zoo.hub.download("me/toy")
    monkeypatch.setenv("HF_HUB_DOWNLOAD_TIMEOUT", "2.5")
    assert zoo.hub.hub_timeout() == 2.5
    monkeypatch.delenv("HF_HUB_DOWNLOAD_TIMEOUT")
    assert zoo.hub.hub_timeout() == 30


def test_every_request_waits_at_most_the_timeout():
    """Requests without a timeout get 30 s; huggingface_hub's own longer ones (its 60 s metadata retry) are cut too."""
    import httpx2

    request = httpx2.Request("HEAD", "http://127.0.0.1:9/me/toy/resolve/main/config.json",
                             extensions={"timeout": {"connect": None, "read": 60, "write": 10, "pool": None}})
    zoo.hub._begin_hub_call()
    zoo.hub._on_request(request)
    assert request.extensions["timeout"] == {"connect": 30, "read": 30, "write": 10, "pool": 30}
