"""TinyGPT-V from the Hub stand-in (three repos, BLIP-2 read partially through its index) and bad parts: a stage file
of another model, an old phi-msft Phi-2, a pickle that is not plain tensors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import zoo
from tests.vlm.test_tinygpt_v import PHI, Parts
from zoo.cli import main
from zoo.errors import CheckpointError


def _equal_models(first, second) -> None:
    assert first.config == second.config
    state = second.state_dict()
    for key, tensor in first.state_dict().items():
        assert torch.equal(tensor, state[key]), key


def test_create_pretrained_assembles_three_hub_repos(tmp_path, fake_hub):
    parts = Parts(tmp_path, stage=4)
    fake_hub.upload_folder("Salesforce/blip2-flan-t5-xxl", parts.vision_dir)
    fake_hub.upload_folder("microsoft/phi-2", parts.llm_dir)
    stages = tmp_path / "stages"
    stages.mkdir()
    shutil.copy(parts.stage_file, stages / "TinyGPT-V_for_Stage4.pth")
    stage3 = torch.load(parts.stage_file, weights_only=True)
    stage3["config"]["model"].update(arch="minigpt4", image_size=28)
    torch.save(stage3, stages / "TinyGPT-V_for_Stage3.pth")
    fake_hub.upload_folder("Tyrannosaurus/TinyGPT-V", stages)

    model = zoo.create("tinygpt-v", pretrained=True)
    _equal_models(model, zoo.from_pretrained(parts.paths))
    assert (model.zoo_name, model.zoo_tag, model.training) == ("tinygpt-v", None, False)
    fetched = [request for request in fake_hub.requests if "/resolve/" in request]
    assert any("model-00001-of-00002.safetensors" in request for request in fetched)
    assert not any("model-00002-of-00002" in request for request in fetched)  # BLIP-2's language model: not read
    assert not any("Stage3" in request for request in fetched)

    stage3_model = zoo.create("tinygpt-v.stage3", pretrained=True)
    assert (stage3_model.config.arch, stage3_model.config.vision.image_size) == ("minigpt4", 28)
    assert stage3_model.zoo_tag == "stage3"


def test_download_fetches_the_three_parts(tmp_path, fake_hub, capsys):
    parts = Parts(tmp_path)
    fake_hub.upload_folder("Salesforce/blip2-flan-t5-xxl", parts.vision_dir)
    fake_hub.upload_folder("microsoft/phi-2", parts.llm_dir)
    stages = tmp_path / "stages"
    stages.mkdir()
    shutil.copy(parts.stage_file, stages / "TinyGPT-V_for_Stage3.pth")
    fake_hub.upload_folder("Tyrannosaurus/TinyGPT-V", stages)
    assert main(["download", "tinygpt-v.stage3"]) == 0
    printed = dict(line.split(": ", 1) for line in capsys.readouterr().out.splitlines())
    assert set(printed) == {"vision", "llm", "stage"} and printed["stage"].endswith("TinyGPT-V_for_Stage3.pth")
    assert not (Path(printed["vision"]) / "model-00002-of-00002.safetensors").exists()
    _equal_models(zoo.from_pretrained({name: Path(path) for name, path in printed.items()}),
                  zoo.from_pretrained(parts.paths))


def _stage(parts: Parts, model: dict, config: dict | None = None) -> str:
    path = parts.stage_file.with_name("other.pth")
    torch.save({"model": model, "config": {"model": config or {"arch": "minigpt4", "lora_r": 6, "lora_alpha": 16}}},
               path)
    return path


def test_a_stage_file_of_another_model_is_refused(tmp_path):
    parts = Parts(tmp_path)
    minigpt_v2 = {**parts.stage,  # MiniGPT-v2's Llama LoRA on q_proj and v_proj
                  "llama_model.base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(6, 60)}
    with pytest.raises(CheckpointError, match=r"1 key\(s\) TinyGPT-V does not have: .*q_proj\.lora_A.* not a "
                                              r"TinyGPT-V stage file: a TinyGPT-V stage checkpoint"):
        zoo.from_pretrained({**parts.paths, "stage": _stage(parts, minigpt_v2)})
    minigpt4 = {"llama_proj.weight": torch.zeros(4096, 24), "llama_proj.bias": torch.zeros(4096)}  # Vicuna's
    with pytest.raises(CheckpointError, match="no llama_proj/llama_proj2 weights"):
        zoo.from_pretrained({**parts.paths, "stage": _stage(parts, minigpt4)})
    plain = parts.stage_file.with_name("plain.pth")
    torch.save(parts.stage, plain)  # a bare state dict: no config.model
    with pytest.raises(CheckpointError, match="no 'model' dict of tensors"):
        zoo.from_pretrained({**parts.paths, "stage": plain})
    with pytest.raises(CheckpointError, match="not rank 4 as the stage's config.model.lora_r says"):
        zoo.from_pretrained({**parts.paths, "stage": _stage(parts, parts.stage, {"arch": "minigpt4", "lora_r": 4})})


def test_a_stage_file_that_pickles_objects_is_not_unpickled(tmp_path):
    parts = Parts(tmp_path)
    path = parts.stage_file.with_name("objects.pth")
    torch.save({"model": parts.stage, "config": {"model": {"arch": "minigpt4"}}, "runner": shutil.copy}, path)
    with pytest.raises(CheckpointError, match=r"could not be read safely with torch.load\(weights_only=True\)"):
        zoo.from_pretrained({**parts.paths, "stage": path})


def test_an_old_phi_msft_llm_names_the_layout_expected(tmp_path):
    parts = Parts(tmp_path)
    msft = tmp_path / "phi-msft"
    msft.mkdir()
    (msft / "config.json").write_text(json.dumps({"model_type": "phi-msft", "n_embd": PHI["hidden_size"]}))
    save_file({"layers.1.mixer.Wqkv.weight": torch.zeros(180, 60), "layers.0.wte.weight": torch.zeros(200, 60)},
              msft / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"model_type 'phi-msft', keys like layers.1.mixer.Wqkv.weight; the old "
                                              r"phi-msft format has layers.N.mixer.\*\)\. TinyGPT-V needs Phi-2 in "
                                              r"transformers' layout .* download microsoft/phi-2 at its current"):
        zoo.from_pretrained({**parts.paths, "llm": msft})


def test_parts_must_be_named(tmp_path):
    parts = Parts(tmp_path)
    with pytest.raises(CheckpointError, match=r"No zoo family is assembled from the parts llm, stage, vision_tower\. "
                                              r"Families published in parts — tinygpt_v: vision, llm, stage"):
        zoo.from_pretrained({"vision_tower": parts.vision_dir, "llm": parts.llm_dir, "stage": parts.stage_file})
    with pytest.raises(CheckpointError,
                       match=r"phi is not a BLIP-2 checkpoint .*vision part is Salesforce/blip2-flan-t5-xxl"):
        zoo.from_pretrained({**parts.paths, "vision": parts.llm_dir})


def test_an_unsharded_blip2_folder_reads_the_same_tensors(tmp_path):
    from safetensors.torch import load_file

    parts = Parts(tmp_path)
    sharded = zoo.from_pretrained(parts.paths)
    tensors = {}
    for shard in sorted(parts.vision_dir.glob("*.safetensors")):
        tensors.update(load_file(shard))
        shard.unlink()
    (parts.vision_dir / "model.safetensors.index.json").unlink()
    save_file(tensors, parts.vision_dir / "model.safetensors")
    _equal_models(zoo.from_pretrained(parts.paths), sharded)
