"""SpikingBrain's weights live on ModelScope: downloads go through the `modelscope` package (its snapshot_download,
replaced here by one that serves a local folder, since modelscope.cn is unreachable), with clear errors when the
package is missing or the download fails; a local folder always works."""

from __future__ import annotations

import sys

import pytest
import torch

import zoo
from tests.backbones.test_spikingbrain import CONFIG, _official_folder, randomized
from zoo.errors import HubError

modelscope = pytest.importorskip("modelscope")

TINY = {"vocab_size": 96, "hidden_size": 48, "intermediate_size": 80, "num_hidden_layers": 4, "num_attention_heads": 6,
        "num_key_value_heads": 2, "attn_layers": (0, 3), "sliding_window": 5, "rope_theta": 10000.0,
        "max_position_embeddings": 256}


def test_pretrained_downloads_through_modelscope(tmp_path, monkeypatch):
    model = randomized()
    folder = tmp_path / "modelscope-cache" / "Panyuqi" / "V1-7B-sft-s3-reasoning"
    _official_folder(model, folder)
    calls = []

    def snapshot_download(model_id, revision=None, allow_patterns=None, **kwargs):
        calls.append((model_id, revision, allow_patterns))
        return str(folder)

    monkeypatch.setattr(modelscope, "snapshot_download", snapshot_download)
    loaded = zoo.create("spikingbrain-7b.sft-reasoning", pretrained=True, dtype="float32", **TINY)
    assert calls == [("Panyuqi/V1-7B-sft-s3-reasoning", None, ["*.json", "*.safetensors", "*.txt"])]
    input_ids = torch.randint(1, 96, (1, 12))
    assert torch.equal(loaded(input_ids), model(input_ids))
    assert not loaded.training


def test_a_release_without_safetensors_is_read_from_its_pickles_safely(tmp_path, monkeypatch):
    model = randomized()
    folder = tmp_path / "pickled"
    _official_folder(model, folder)
    (folder / "model.safetensors").unlink()
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    calls = []

    def snapshot_download(model_id, revision=None, allow_patterns=None, **kwargs):
        calls.append(allow_patterns)
        return str(folder)

    monkeypatch.setattr(modelscope, "snapshot_download", snapshot_download)
    loaded = zoo.create("spikingbrain-7b", pretrained=True, dtype="float32", **TINY)
    assert calls == [["*.json", "*.safetensors", "*.txt"], ["*.json", "*.txt", "*.bin", "*.pth", "*.pt", "*.ckpt"]]
    input_ids = torch.randint(1, 96, (1, 12))
    assert torch.equal(loaded(input_ids), model(input_ids))


def test_a_missing_modelscope_package_names_the_repo_and_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "modelscope", None)  # `import modelscope` now raises ImportError
    expected = r"'Panyuqi/V1-7B-base' is hosted on ModelScope.*pip install mmzoo\[modelscope\]"
    with pytest.raises(HubError, match=expected):
        zoo.create("spikingbrain-7b", pretrained=True, **TINY)
    with pytest.raises(HubError, match=r"Abel2076/SpikingBrain-7B-W8ASpike.*checkpoint_path"):
        zoo.create("spikingbrain-7b.w8aspike", pretrained=True)


def test_a_failed_download_says_how_to_use_a_local_folder(monkeypatch, tmp_path):
    def unreachable(model_id, **kwargs):
        raise ConnectionError("modelscope.cn is unreachable")

    monkeypatch.setattr(modelscope, "snapshot_download", unreachable)
    with pytest.raises(HubError, match=r"Could not get 'Panyuqi/V1-7B-base' from ModelScope.*ConnectionError.*"
                                       r"modelscope download --model Panyuqi/V1-7B-base"):
        zoo.create("spikingbrain-7b", pretrained=True, **TINY)
    # A local folder needs neither the package nor the network.
    monkeypatch.setitem(sys.modules, "modelscope", None)
    _official_folder(randomized(), tmp_path / "local")
    assert zoo.from_pretrained(tmp_path / "local").config.swa_layers == (0, 3)


def test_zoo_run_continues_a_prompt_with_the_folders_tokenizer(tmp_path, capsys):
    from zoo.cli import main
    from zoo.vlm.smolvlm_processing import build_byte_tokenizer

    model = randomized(CONFIG.replace(vocab_size=320))
    folder = tmp_path / "official"
    _official_folder(model, folder)
    tokenizer = build_byte_tokenizer()
    tokenizer.save_pretrained(folder)
    assert main(["run", "spikingbrain-7b", "--checkpoint", str(folder), "--prompt", "the red cat",
                 "--max-new-tokens", "12", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out.rstrip("\n")
    input_ids = torch.tensor([tokenizer.encode("the red cat")])
    expected = model.generate(input_ids, max_new_tokens=12, eos_token_id=tokenizer.eos_token_id)[0, input_ids.shape[1]:]
    expected = expected.tolist()
    if tokenizer.eos_token_id in expected:
        expected = expected[: expected.index(tokenizer.eos_token_id)]
    assert printed == tokenizer.decode(expected, skip_special_tokens=True)
    (folder / "tokenizer.json").unlink()
    (folder / "tokenizer_config.json").unlink()
    assert main(["run", "spikingbrain-7b", "--checkpoint", str(folder), "--prompt", "x", "--device", "cpu"]) != 0
    assert "no tokenizer" in capsys.readouterr().err
