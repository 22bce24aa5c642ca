"""Local checkpoint I/O: save/reload, sharding, formats, strict loading, safe unpickling, model cards."""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import zoo
from tests.toy import ToyConfig, ToyModel
from zoo import hub


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert sa[key].dtype == sb[key].dtype and torch.equal(sa[key], sb[key]), key


def _original_state_dict(model: ToyModel) -> dict[str, torch.Tensor]:
    """The toy model's weights under the 'original' release's key names."""
    renamed = {}
    for key, value in model.state_dict().items():
        key = key.replace("layers.", "net.").replace("head.", "fc.").replace("norm.", "ln.")
        renamed[key] = value.clone()
    return renamed


def test_save_pretrained_reloads_bit_for_bit(tmp_path):
    model = zoo.create("toy-base")
    folder = model.save_pretrained(tmp_path / "saved")
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config["zoo_family"] == "toy" and config["zoo_name"] == "toy-base" and config["hidden"] == 32
    loaded = zoo.from_pretrained(folder)
    _assert_same_weights(model, loaded)
    assert loaded.config == model.config and loaded.zoo_name == "toy-base" and not loaded.training
    assert torch.equal(loaded.scale, model.scale)  # the non-persistent buffer was rebuilt


def test_sharded_save_and_reload(tmp_path):
    model = zoo.create("toy-base")
    folder = model.save_pretrained(tmp_path, max_shard_size=2000)
    shards = sorted(p.name for p in folder.glob("model-*.safetensors"))
    assert len(shards) > 1 and (folder / "model.safetensors.index.json").is_file()
    _assert_same_weights(model, zoo.from_pretrained(folder))
    model.save_pretrained(tmp_path)  # unsharded now: stale shards and index must go
    assert sorted(p.name for p in folder.glob("model*")) == ["model.safetensors"]
    _assert_same_weights(model, zoo.from_pretrained(folder))


def test_missing_shard_is_a_clear_error(tmp_path):
    folder = zoo.create("toy-base").save_pretrained(tmp_path, max_shard_size=2000)
    next(folder.glob("model-*.safetensors")).unlink()
    with pytest.raises(zoo.CheckpointError, match="lists shards that are not in .*download the repo again"):
        zoo.from_pretrained(folder)


def test_dtype_auto_keeps_checkpoint_dtype(tmp_path):
    folder = zoo.create("toy-base", dtype="bfloat16").save_pretrained(tmp_path)
    assert zoo.from_pretrained(folder).head.weight.dtype == torch.bfloat16
    assert zoo.from_pretrained(folder, dtype="float32").head.weight.dtype == torch.float32


def test_shared_tensors_are_saved_separately():
    weight = torch.randn(4, 4)
    state = hub._unshared({"a": weight, "b": weight, "c": weight[1:]})
    assert state["a"].data_ptr() != state["b"].data_ptr()
    assert torch.equal(state["a"], state["b"]) and state["c"].is_contiguous()


def test_checkpoint_path_detects_published_format(tmp_path):
    reference = zoo.create("toy-base")
    torch.save(_original_state_dict(reference), tmp_path / "toy.pth")
    loaded = zoo.create("toy-base", checkpoint_path=tmp_path / "toy.pth")
    _assert_same_weights(reference, loaded)
    assert not loaded.training


def test_training_checkpoint_is_unwrapped(tmp_path):
    reference = zoo.create("toy-base")
    wrapped = {f"module.{k}": v for k, v in reference.state_dict().items() if k != "scale"}
    torch.save({"epoch": 3, "best": 0.5, "state_dict": wrapped}, tmp_path / "ckpt.pt")
    _assert_same_weights(reference, zoo.create("toy-base", checkpoint_path=tmp_path / "ckpt.pt"))


def test_from_pretrained_reads_a_published_format_folder(tmp_path):
    reference = zoo.create("toy-base")
    (tmp_path / "config.json").write_text(json.dumps(
        {"model_type": "toy_original", "d_in": 8, "d_hidden": 32, "depth": 3, "n_classes": 3}))
    save_file(_original_state_dict(reference), tmp_path / "model.safetensors")
    loaded = zoo.from_pretrained(tmp_path)
    assert loaded.config == ToyConfig(hidden=32, num_layers=3)
    _assert_same_weights(reference, loaded)


def test_from_pretrained_errors(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    with pytest.raises(zoo.CheckpointError, match="No zoo family reads .*'model_type': 'bert'.*toy: zoo, original"):
        zoo.from_pretrained(tmp_path)
    with pytest.raises(zoo.CheckpointError, match="is a file; .*checkpoint_path"):
        zoo.from_pretrained(tmp_path / "config.json")
    with pytest.raises(zoo.CheckpointError, match="neither an existing folder nor a Hub repo id"):
        zoo.from_pretrained(tmp_path / "nope")
    folder = zoo.create("toy-tiny").save_pretrained(tmp_path / "toy")
    with pytest.raises(zoo.CheckpointError, match="holds a 'toy' model, not 'wan'"):
        zoo.from_pretrained(folder, family="wan")
    with pytest.raises(zoo.UnknownModelError, match="Unknown family 'nonesuch'. Families: .*toy"):
        zoo.from_pretrained(tmp_path, family="nonesuch")
    (tmp_path / "empty").mkdir()
    with pytest.raises(zoo.CheckpointError, match="has no config.json or model_index.json"):
        zoo.from_pretrained(tmp_path / "empty")


def test_strict_loading_reports_keys_and_converter(tmp_path):
    state = zoo.create("toy-base").state_dict()
    state.pop("head.bias")
    state["extra.weight"] = torch.zeros(1)
    state["norm.weight"] = torch.zeros(7)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(zoo.CheckpointError) as info:
        zoo.create("toy-base", checkpoint_path=tmp_path / "bad.pt")
    message = str(info.value)
    assert "converter 'zoo' ran" in message
    assert "1 missing key(s): head.bias" in message
    assert "1 unexpected key(s): extra.weight" in message
    assert "norm.weight: checkpoint (7,) vs model (32,)" in message


def test_wrong_size_checkpoint_names_the_mismatch(tmp_path):
    torch.save(zoo.create("toy-tiny").state_dict(), tmp_path / "tiny.pt")
    with pytest.raises(zoo.CheckpointError, match="2 missing key.*layers.2.weight.*shape mismatch"):
        zoo.create("toy-base", checkpoint_path=tmp_path / "tiny.pt")


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_truncated_checkpoint_is_an_error_not_a_partial_load(tmp_path, suffix):
    path = tmp_path / f"model{suffix}"
    state = zoo.create("toy-base").state_dict()
    save_file(state, path) if suffix == ".safetensors" else torch.save(state, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(zoo.CheckpointError, match="corrupt or truncated|could not be read safely"):
        hub.load_state_dict(path)


def test_garbage_and_unknown_files(tmp_path):
    (tmp_path / "w.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(zoo.CheckpointError, match="corrupt or truncated"):
        hub.load_state_dict(tmp_path / "w.safetensors")
    (tmp_path / "w.npz").write_bytes(b"x")
    with pytest.raises(zoo.CheckpointError, match="Unsupported checkpoint format '.npz'"):
        hub.load_state_dict(tmp_path / "w.npz")
    with pytest.raises(zoo.CheckpointError, match="does not exist"):
        hub.load_state_dict(tmp_path / "missing.pt")


def test_folder_with_ambiguous_weights_asks_which(tmp_path):
    save_file({"a": torch.zeros(1)}, tmp_path / "one.safetensors")
    save_file({"a": torch.zeros(1)}, tmp_path / "two.safetensors")
    with pytest.raises(zoo.CheckpointError, match="several weight files .*one.safetensors, two.safetensors"):
        hub.load_state_dict(tmp_path)
    assert hub.find_weight_files(tmp_path, ["two.*"]) == [tmp_path / "two.safetensors"]


class _Exploit:
    """Unpickling this would run a shell command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_torch_checkpoint_cannot_execute_code(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"weight": torch.ones(2), "evil": _Exploit(marker)}, tmp_path / "model.pt")
    state = hub.load_state_dict(tmp_path / "model.pt")
    assert list(state) == ["weight"] and torch.equal(state["weight"], torch.ones(2))
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_plain_pickle_cannot_execute_code(tmp_path):
    marker = tmp_path / "pwned"
    (tmp_path / "model.pkl.pt").write_bytes(pickle.dumps({"evil": _Exploit(marker)}))
    with pytest.raises(zoo.CheckpointError):
        hub.load_state_dict(tmp_path / "model.pkl.pt")
    assert not marker.exists()


def test_checkpoint_of_only_foreign_objects_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    torch.save(_Exploit(marker), tmp_path / "evil.pt")
    with pytest.raises(zoo.CheckpointError, match="no tensors zoo can extract safely.*system"):
        hub.load_state_dict(tmp_path / "evil.pt")
    assert not marker.exists()


class _PickledNet(torch.nn.Module):
    """A module pickled whole, as some published checkpoints are."""

    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
        self.head = torch.nn.Linear(4, 2)


def test_whole_pickled_module_yields_its_tensors_only(tmp_path, caplog):
    net = _PickledNet()
    torch.save({"model": net, "epoch": 7}, tmp_path / "whole.pth")
    with caplog.at_level(logging.WARNING, logger="zoo.hub"):
        state = hub.load_state_dict(tmp_path / "whole.pth")
    assert state.keys() == net.state_dict().keys()
    for key, value in net.state_dict().items():
        assert torch.equal(state[key], value)
    assert "_PickledNet" in caplog.text and "were not built" in caplog.text


def test_model_card_renders_facts_and_given_results(tmp_path):
    folder = zoo.create("toy-base").save_pretrained(
        tmp_path, card_data={"results": {"top1": 51.5}, "efficiency": {"img/s": 120}, "training": "10 steps"})
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: zoo\nlicense: mit\n")
    assert "- arxiv:2401.00001" in card and "# toy-base" in card and "2.56K parameters" in card
    assert "| top1 | 99.0 |" in card  # published
    assert "| top1 | 51.5 |" in card and "| img/s | 120 |" in card and "10 steps" in card
    assert 'zoo.from_pretrained("path/to/this/folder")' in card


def test_model_without_registered_name_still_saves(tmp_path):
    model = ToyModel(ToyConfig(hidden=5))
    folder = model.save_pretrained(tmp_path)
    assert "# toy" in (folder / "README.md").read_text()
    _assert_same_weights(model, zoo.from_pretrained(folder))


# ---------------------------------------------------------------------------------------------------
# Checkpoint dtypes (issue 17, bug 6)


def _floating_dtypes(model: torch.nn.Module) -> set[torch.dtype]:
    return {t.dtype for t in [*model.parameters(), *model.buffers()] if t.is_floating_point()}


def _mixed_checkpoint(folder: Path, dominant: torch.dtype, odd: torch.dtype, odd_key: str = "head.bias") -> Path:
    """A saved toy-base whose tensors are all `dominant` but one, `odd_key`, in `odd`."""
    model = zoo.create("toy-base")
    folder = model.save_pretrained(folder)
    state = {k: v.to(odd if k == odd_key else dominant) for k, v in model.state_dict().items()}
    save_file(state, folder / "model.safetensors")
    return folder


@pytest.mark.parametrize(("dominant", "odd"), [(torch.float32, torch.float16), (torch.bfloat16, torch.float32)])
def test_mixed_dtype_checkpoint_loads_in_its_dominant_dtype(tmp_path, dominant, odd, hf_cache, offline):
    from tests.hub_server import populate_cache

    folder = _mixed_checkpoint(tmp_path / "mixed", dominant, odd)
    populate_cache(hf_cache, "zoo-test/toy-base", folder)
    x = torch.randn(2, 8, dtype=dominant)
    for model in (zoo.from_pretrained(folder), zoo.create("toy-base", checkpoint_path=folder),
                  zoo.create("toy-base", pretrained=True)):
        assert _floating_dtypes(model) == {dominant}  # the rebuilt buffer `scale` too
        assert model(x).dtype == dominant


def test_checkpoint_is_cast_to_the_dtype_asked_for(tmp_path):
    folder = _mixed_checkpoint(tmp_path, torch.float32, torch.float16)
    for model in (zoo.from_pretrained(folder, dtype="bfloat16"),
                  zoo.create("toy-base", checkpoint_path=folder, dtype=torch.bfloat16)):
        assert _floating_dtypes(model) == {torch.bfloat16}
        assert model(torch.randn(2, 8, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_integer_tensor_for_a_float_parameter_names_the_key(tmp_path):
    folder = _mixed_checkpoint(tmp_path, torch.float32, torch.int8, odd_key="layers.1.weight")
    message = r"1 tensor\(s\) of the wrong kind .*: layers\.1\.weight \(int8 for float32\)\. Quantized checkpoints"
    with pytest.raises(zoo.CheckpointError, match=message):
        zoo.from_pretrained(folder)
    with pytest.raises(zoo.CheckpointError, match=message):
        zoo.create("toy-base", checkpoint_path=folder / "model.safetensors")


def test_float_tensor_for_an_integer_buffer_names_the_key(tmp_path):
    folder = zoo.create("lowformer-tiny").save_pretrained(tmp_path)
    state = hub.load_state_dict(folder)
    key = next(k for k in state if k.endswith("num_batches_tracked"))
    save_file({**state, key: state[key].float()}, folder / "model.safetensors")
    with pytest.raises(zoo.CheckpointError, match=rf"{re.escape(key)} \(float32 for int64\)"):
        zoo.from_pretrained(folder)


@pytest.mark.parametrize("command", [["download", "a/b/c"], ["download", "me/my model"], ["push", "DIR", "bad/id/x"]])
def test_invalid_repo_id_is_a_one_line_error(command, tmp_path, capsys):
    from zoo.cli import main

    folder = str(zoo.create("toy-tiny").save_pretrained(tmp_path))
    assert main([folder if arg == "DIR" else arg for arg in command]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"zoo {command[0]}: error: '{command[-1]}' is not a valid Hub repo id" in err and "'owner/name'" in err


def test_model_card_header_is_valid_model_card_data(tmp_path):
    from huggingface_hub import ModelCard, ModelCardData

    folder = zoo.create("toy-base").save_pretrained(tmp_path)
    card = ModelCard.load(folder / "README.md")
    assert isinstance(card.data, ModelCardData)
    assert card.data.to_dict() == {"library_name": "zoo", "license": "mit", "tags": ["zoo", "toy", "backbone",
                                                                                         "arxiv:2401.00001"]}
    assert card.text.startswith("\n# toy-base\n")


def test_published_model_card_keeps_its_dataset():
    from huggingface_hub import ModelCard

    from zoo.backbones.lowformer import VARIANTS, LowFormer

    with torch.device("meta"):
        model = LowFormer(VARIANTS["b0"])
    model.zoo_name = "lowformer-b0"
    data = ModelCard(hub.render_model_card(model)).data
    assert data.datasets == ["imagenet-1k"] and data.pipeline_tag == "image-classification"
    assert "datasets" not in hub.render_model_card(zoo.create("lowformer-tiny"))  # random weights: no data


@pytest.mark.parametrize("name, tag, dataset", [
    ("wavemix-144-7-l1-cifar10", None, "cifar10"),
    ("wavemix-192-16-l3-tinyimagenet", "tinyimagenet_r128", "tiny-imagenet"),
    ("wavemix-192-16-l3-galaxy10", None, "galaxy10-decals"),
])
def test_published_card_names_the_data_of_the_weights_tag(name, tag, dataset):
    from huggingface_hub import ModelCard

    with torch.device("meta"):
        model = zoo.create(name)
    model.zoo_tag = tag
    card = ModelCard(hub.render_model_card(model))
    assert card.data.datasets == [dataset] and "imagenet-1k" not in str(card.data)


def test_trained_model_card_names_its_own_data(tmp_path):
    from huggingface_hub import ModelCard

    model = zoo.create("lowformer-tiny")
    card = hub.render_model_card(model, card_data={"datasets": ["shapes"], "training": "trained"})
    assert ModelCard(card).data.datasets == ["shapes"] and "imagenet" not in card.lower()
    card = hub.render_model_card(model, card_data={"datasets": ["hf:user/flowers:train"]})
    assert ModelCard(card).data.datasets == ["user/flowers"]
    card = hub.render_model_card(model, card_data={"datasets": [str(tmp_path / "train.jsonl")]})
    assert ModelCard(card).data.datasets is None and "imagenet" not in card.lower()  # a local file is no Hub id


def test_saved_weights_follow_the_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        folder = zoo.create("toy-base").save_pretrained(tmp_path / "saved", max_shard_size=2000)
        modes = {p.name: p.stat().st_mode & 0o777 for p in folder.iterdir()}
        os.umask(0o027)
        hub.save_safetensors({"a": torch.zeros(2)}, tmp_path / "group.safetensors")
    finally:
        os.umask(previous)
    assert len(modes) > 4 and set(modes.values()) == {0o644}, modes
    assert (tmp_path / "group.safetensors").stat().st_mode & 0o777 == 0o640
