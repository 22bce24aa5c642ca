"""The conversion recipe (a Qwen2 checkpoint into SpikingBrain) and the `language` training task."""

from __future__ import annotations

import pytest
import torch

import zoo
from tests.backbones.norms import randomize_decoder
from train import TrainConfig, fit
from train.tasks import ByteTokenizer, LanguageModelingTask, ModelSource
from zoo.backbones.spikingbrain import SpikingBrainForCausalLM, convert_from_qwen2
from zoo.data import load_dataset
from zoo.errors import ConfigError, InputError

QWEN = {"hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 3, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": None, "vocab_size": 320}


@torch.no_grad()
def test_conversion_transfers_every_qwen2_tensor():
    qwen = randomize_decoder(zoo.create("qwen2.5-tiny", **QWEN).eval())
    input_ids = torch.randint(0, 320, (2, 17))
    # With every layer SWA and a window longer than the prompt the converted model is the Qwen2 model itself.
    as_swa = convert_from_qwen2(qwen, attn_layers=(0, 1, 2), sliding_window=64).eval()
    assert (as_swa(input_ids) - qwen(input_ids)).abs().max() < 1e-5
    assert as_swa.lm_head.weight is as_swa.model.embeddings.weight  # qwen2.5-tiny ties its head
    hybrid = convert_from_qwen2(qwen, sliding_window=8).eval()
    assert isinstance(hybrid, SpikingBrainForCausalLM) and hybrid.config.swa_layers == (1,)
    gla = hybrid.model.layers[0].attn
    assert torch.equal(gla.q_proj.bias, qwen.model.layers[0].self_attn.q_proj.bias)
    assert torch.equal(gla.g_norm.weight, torch.ones(16)) and torch.equal(gla.gk_proj[1].bias, torch.zeros(32))
    assert 0 < gla.gk_proj[0].weight.abs().max() <= 2 ** -2.5 * (6 / (64 + 16)) ** 0.5
    assert (hybrid(input_ids) - qwen(input_ids)).abs().max() > 1e-2  # the GLA layers do change the function
    with pytest.raises(ConfigError, match="Qwen2"):
        convert_from_qwen2(zoo.create("qwen3-tiny"))
    with pytest.raises(ConfigError, match="head_dim"):
        convert_from_qwen2(zoo.create("qwen2.5-tiny"))  # 6 heads of 16 over a width of 64


def test_language_task_encodes_text_and_masks_padding():
    task = LanguageModelingTask(max_length=8)
    model = zoo.create("spikingbrain-tiny")
    task.setup(model, None, ModelSource("spikingbrain-tiny"))
    assert isinstance(task.tokenizer, ByteTokenizer)
    short, long = task.encode({"text": "hi"}), task.encode({"text": "a longer text"})
    assert short["input_ids"].tolist() == [104, 105, 256] and len(long["input_ids"]) == 8
    batch = task.collate([short, long])
    assert batch["input_ids"][0].tolist() == [104, 105, 256] + [257] * 5
    assert task.num_items(batch) == 2 + 7
    output = task.loss(model, batch)
    assert output.num_items == 9 and torch.isfinite(output.loss)
    with pytest.raises(InputError, match="'text'"):
        task.encode({"caption": "x"})
    with pytest.raises(ConfigError, match="vocab_size=258"):
        task.setup(zoo.create("spikingbrain-tiny", vocab_size=200), None, ModelSource("small"))


def test_text_data_from_files(tmp_path):
    (tmp_path / "corpus.txt").write_text("first paragraph\nstill first\n\nsecond one\n")
    (tmp_path / "corpus.jsonl").write_text('{"text": "one"}\n{"text": "two"}\n')
    assert [s["text"] for s in load_dataset(tmp_path / "corpus.txt", "text")] == ["first paragraph\nstill first",
                                                                                  "second one"]
    assert [s["text"] for s in load_dataset(tmp_path / "corpus.jsonl", "text")] == ["one", "two"]
    procedural = load_dataset("procedural-text", "text", num_samples=5)
    assert len(procedural) == 5 and procedural[3] == load_dataset("procedural-text", "text", num_samples=5)[3]
    assert procedural[0] != load_dataset("procedural-text", "text", "eval", num_samples=5)[0]


def test_language_training_lowers_the_loss(tmp_path):
    result = fit(TrainConfig("spikingbrain-tiny", task="language", max_steps=30, batch_size=8, lr=3e-3,
                             output_dir=str(tmp_path / "run"), progress=False, log_every=5, eval_samples=16,
                             data_options={"num_samples": 240, "cache": True}))
    assert result.losses[-1] < 0.7 * result.losses[0], result.losses
    assert result.metrics["perplexity"] == pytest.approx(torch.tensor(result.metrics["loss"]).exp().item())
    reloaded = zoo.from_pretrained(result.model_dir)
    assert isinstance(reloaded, SpikingBrainForCausalLM)
    from eval.evaluate import EvalOptions, run_eval

    scored = run_eval(EvalOptions(str(result.model_dir), num_samples=16))  # the language task by default
    assert scored["task"] == "language"
    assert scored["metrics"]["loss"] == pytest.approx(result.metrics["loss"], rel=1e-4)
