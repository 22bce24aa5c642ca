"""TinyGPT-V's four training stages as `zoo train` configs, run with tinygpt-v-tiny on shapes-VQA."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import zoo
from train import TrainConfig, fit
from train.tasks import ModelSource, TinyGPTVSFTTask, get_task
from zoo.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[2] / "train" / "configs"


def _config(stage: int, tmp_path: Path, **overrides) -> TrainConfig:
    settings = dict(output_dir=str(tmp_path / f"stage{stage}"), max_steps=3, batch_size=4, eval_every=0,
                    eval_samples=4, progress=False, data_options={"num_samples": 16})
    return TrainConfig.from_yaml(CONFIGS / f"tinygpt_v_stage{stage}.yaml", **{**settings, **overrides})


@pytest.mark.parametrize("stage", [1, 4])
def test_stage_config_trains_only_lora_norms_and_projections(stage, tmp_path):
    config = _config(stage, tmp_path)
    assert (config.lora_rank, config.lora_alpha, config.lora_dropout) == (64, 16, 0.05)
    before = zoo.create("tinygpt-v-tiny", **config.model_options).state_dict()
    result = fit(config)
    trained = zoo.from_pretrained(result.model_dir)
    assert trained.config.arch == ("minigpt_v2" if stage == 4 else "minigpt4")
    changed = {key for key, value in trained.state_dict().items() if not torch.equal(value, before[key])}
    assert changed, "nothing trained"
    frozen = [key for key in changed if key.startswith(("vision_model.", "qformer.", "query_tokens"))
              or key.endswith(("final_layernorm.weight", "final_layernorm.bias", "embed_tokens.weight",
                               "lm_head.weight", "lm_head.bias", "input_layernorm.bias"))]
    assert not frozen, frozen
    assert any(".q_proj.weight" in key for key in changed)  # the merged LoRA
    assert {"llama_proj.weight", "language_model.model.layers.0.self_attn.q_norm.weight",
            "language_model.model.layers.1.post_layernorm.weight"} <= changed
    assert (Path(result.model_dir) / "tokenizer.json").is_file()


def test_stages_2_and_3_load(tmp_path):
    for stage in (2, 3):
        config = _config(stage, tmp_path)
        assert config.task == "tinygpt-v-sft" and config.trainable == _config(1, tmp_path).trainable


def test_prompt_and_labels(tmp_path):
    task = get_task("tinygpt-v-sft")
    assert isinstance(task, TinyGPTVSFTTask)
    task.setup(zoo.create("tinygpt-v-tiny"), None, ModelSource("tinygpt-v-tiny"))
    sample = {"image": np.zeros((20, 20, 3), dtype=np.uint8), "question": "What colour?", "answer": "red"}
    encoded = task.encode(sample)
    prompt = task.processor.token_ids("###Human: <Img><ImageHere></Img> What colour? ###Assistant: ")
    tokenizer = task.processor.tokenizer
    answer = tokenizer("red", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert encoded["input_ids"].tolist() == prompt + answer
    assert encoded["labels"].tolist() == [-100] * len(prompt) + answer
    assert encoded["pixel_values"].shape == (3, 56, 56)
    with pytest.raises(ConfigError, match="trains TinyGPT-V models, not 'smolvlm'"):
        task.check_entry(zoo.registry.get_entry("smolvlm-tiny"), "smolvlm")


def test_trainable_patterns_without_lora_freeze_the_rest():
    from train.lora import freeze_all_but

    model = zoo.create("tinygpt-v-tiny")
    assert freeze_all_but(model, ["llama_proj*"]) == 4
    assert {name for name, p in model.named_parameters() if p.requires_grad} == {
        "llama_proj.weight", "llama_proj.bias", "llama_proj2.weight", "llama_proj2.bias"}
    with pytest.raises(ConfigError, match=r"matches the trainable patterns \['nothing\*'\]"):
        freeze_all_but(model, ["nothing*"])
