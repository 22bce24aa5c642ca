"""Offline Hub tier: the real huggingface_hub code paths against a pre-populated cache and a local server."""

from __future__ import annotations

import torch

import pytest

import zoo
from tests.hub_server import populate_cache
from tests.test_hub import _assert_same_weights, _original_state_dict


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
