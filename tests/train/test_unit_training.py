"""UNIT's training framework (train.unit): the rendered documents, the decoders and their losses, the two stage
tasks through `zoo train`, the saved decoders read back by `zoo eval`, and (slow) the measured effect of the vision
decoder on forgetting."""

from __future__ import annotations

import json

import pytest
import torch
from torch.testing import assert_close

import zoo
from train import TrainConfig, fit, get_task
from train.tasks import ModelSource
from train.unit import CharTokenizer, LanguageDecoder, UnitTask, feature_loss, pretrain_on_shapes
from zoo.data import load_dataset
from zoo.data.documents import RenderedDocuments, vocabulary

TINY_DECODER = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "ffn_dim": 64}
TASK_OPTIONS = {"image_size": 32, "document_size": 64, "max_text_length": 16, "decoder": TINY_DECODER}
# The slow run's bounds; measured (eval/results/unit-tiny-training.json): OCR exact match 0 -> 0.48, feature retention
# 0.995 with the vision decoder and 0.66 without.
OCR_AT_LEAST, RETENTION_AT_LEAST, RETENTION_MARGIN = 0.3, 0.98, 0.2


def test_documents_are_deterministic_rendered_text():
    documents = RenderedDocuments(4, image_size=64, seed=3, split="train", vocabulary_size=20, max_words=3)
    again = RenderedDocuments(4, image_size=64, seed=3, split="train", vocabulary_size=20, max_words=3)
    held_out = RenderedDocuments(4, image_size=64, seed=3, split="eval", vocabulary_size=20, max_words=3)
    words = set(vocabulary(20, seed=3))
    for index in range(4):
        item = documents[index]
        assert torch.equal(item["image"], again[index]["image"]) and item["caption"] == again[index]["caption"]
        assert item["image"].shape == (3, 64, 64) and item["image"].dtype == torch.uint8
        assert 1 <= len(item["caption"].split()) <= 3 and set(item["caption"].split()) <= words
        ink = item["image"].float().mean(0) < 128
        assert 0.01 < ink.float().mean() < 0.5  # text was drawn, inside the page
    assert [held_out[i]["caption"] for i in range(4)] != [documents[i]["caption"] for i in range(4)]


def test_unit_mix_interleaves_documents_and_captioned_images():
    mix = load_dataset("unit-mix", "captions", "train", num_samples=6, image_size=32, document_size=64)
    assert [mix[i]["source"] for i in range(4)] == ["document", "image", "document", "image"]
    assert mix[0]["image"].shape == (3, 64, 64) and mix[1]["image"].shape == (3, 32, 32)
    assert mix[1]["caption"].startswith("a ")


def test_tokenizer_round_trip():
    tokenizer = CharTokenizer()
    ids = tokenizer.encode("Hello, world", max_length=10)
    assert ids[0] == CharTokenizer.BOS and ids[-1] == CharTokenizer.EOS and len(ids) == 10
    assert tokenizer.decode(ids[1:]) == "hello, w"


def test_feature_loss_is_cosine_plus_weighted_l1():
    prediction, target = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    loss, cosine, l1 = feature_loss(prediction, target, mu=0.5)
    by_hand_cosine = 1 - (prediction * target).sum(-1) / (prediction.norm(dim=-1) * target.norm(dim=-1))
    assert_close(cosine, by_hand_cosine.mean())
    assert_close(l1, (prediction - target).abs().mean())
    assert_close(loss, cosine + 0.5 * l1)
    assert float(feature_loss(target, target, mu=1.0)[0]) < 1e-6


def test_residual_vision_decoder_starts_as_the_identity():
    from train.unit import VisionDecoder

    tokens = torch.randn(2, 5, 16)
    assert torch.equal(VisionDecoder(16, 16)(tokens), tokens)
    plain = VisionDecoder(16, 8, residual=False)
    assert plain(tokens).shape == (2, 5, 8)
    with pytest.raises(zoo.ConfigError, match="residual"):
        VisionDecoder(16, 8)


def test_language_decoder_is_opt_125m_by_default_and_reads_the_visual_prefix():
    from transformers import OPTForCausalLM

    with torch.device("meta"):
        decoder = LanguageDecoder(1280, vocab_size=50272, max_positions=2048)
    assert isinstance(decoder.opt, OPTForCausalLM)
    config = decoder.opt.config
    widths = (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.ffn_dim)
    assert widths == (768, 12, 12, 3072)
    assert 124e6 < sum(p.numel() for p in decoder.opt.parameters()) < 126e6  # OPT-125M
    torch.manual_seed(0)
    small = LanguageDecoder(16, vocab_size=len(CharTokenizer()), max_positions=32, **TINY_DECODER).eval()
    text = torch.tensor([[1, 5, 6, 7]])
    visual = torch.randn(1, 4, 16)
    logits = small(visual, text, torch.ones_like(text))
    assert logits.shape == (1, 4, len(CharTokenizer()))
    assert not torch.allclose(logits, small(visual + 1, text, torch.ones_like(text)))  # the prefix matters
    # a causal decoder: the logits at t do not see text after t
    assert_close(small(visual, text[:, :2], torch.ones_like(text[:, :2])), logits[:, :2])


def test_stages_have_the_papers_resolutions():
    pretrain, finetune = get_task("unit-pretrain"), get_task("unit-finetune")
    assert (pretrain.image_size, pretrain.document_size) == (448, 896)  # documents at 4x the pixels
    assert (finetune.image_size, finetune.document_size) == (896, 448)  # scales exchanged
    with pytest.raises(zoo.ConfigError, match="OPT widths"):
        get_task("unit-pretrain", decoder={"layers": 2})


def _setup(task: UnitTask, seed: int = 0):
    torch.manual_seed(seed)
    model = zoo.create("unit-tiny")
    data = load_dataset("unit-mix", "captions", "train", num_samples=8, image_size=32, document_size=64)
    task.setup(model, data, ModelSource("unit-tiny"))
    return model, data


def test_losses_train_the_encoder_and_both_decoders_against_a_frozen_copy():
    task = get_task("unit-pretrain", **TASK_OPTIONS)
    model, data = _setup(task)
    batch = task.collate([{**task.encode(data[i]), "sample_id": i} for i in range(4)])
    assert batch["document"]["pixels"].shape == (2, 3, 64, 64) and batch["image"]["pixels"].shape == (2, 3, 32, 32)
    output = task.loss(model.train(), batch)
    assert set(output.metrics) >= {"language_loss", "vision_loss", "vision_cosine_loss", "vision_l1"}
    assert_close(output.loss, torch.tensor(output.metrics["language_loss"] + output.metrics["vision_loss"]))
    output.loss.backward()
    for module in (model, task.language_decoder, task.vision_decoder):
        assert all(p.grad is not None for p in module.parameters() if p.requires_grad)
    assert all(p.grad is None and not p.requires_grad for p in task.teacher.parameters())
    # the frozen copy holds the starting weights
    assert all(torch.equal(a, b) for a, b in zip(task.teacher.state_dict().values(), model.state_dict().values()))

    without = get_task("unit-pretrain", vision_weight=0.0, **TASK_OPTIONS)
    model, _ = _setup(without)
    assert without.vision_decoder is None and without.trainable_modules() == [without.language_decoder]
    assert "vision_loss" not in without.loss(model, batch).metrics


def test_other_backbones_are_refused():
    task = get_task("unit-pretrain", **TASK_OPTIONS)
    with pytest.raises(zoo.ConfigError, match="trains UNIT encoders"):
        task.setup(zoo.create("lowformer-tiny"), None, ModelSource("lowformer-tiny"))


def test_zoo_train_then_zoo_eval_reads_the_saved_decoders(tmp_path):
    """Two steps of each stage through `zoo train` (the finetune continuing from the pretraining's folder, with its
    decoders and frozen copy); `zoo eval` of the saved folder gives the run's own final evaluation."""
    from eval.evaluate import EvalOptions, run_eval

    common = dict(max_steps=2, batch_size=4, lr=1e-3, eval_every=2, eval_samples=4, progress=False,
                  data_options={"num_samples": 16})
    pretrain = fit(TrainConfig("unit-tiny", task="unit-pretrain", output_dir=str(tmp_path / "pre"),
                               task_options=TASK_OPTIONS, **common))
    saved = pretrain.model_dir
    assert (saved / "unit_training" / "language_decoder.safetensors").is_file()
    assert (saved / "unit_training" / "teacher.safetensors").is_file()
    metrics = pretrain.metrics
    assert {"ocr_exact_match", "ocr_cer", "feature_retention", "language_loss"} <= set(metrics)
    result = run_eval(EvalOptions(str(saved), task="unit-pretrain", num_samples=4, device="cpu",
                                  task_options=TASK_OPTIONS))
    assert result["metrics"] == pytest.approx(metrics, abs=1e-5)

    finetune = fit(TrainConfig(str(saved), task="unit-finetune", output_dir=str(tmp_path / "fine"),
                               task_options={**TASK_OPTIONS, "image_size": 64, "document_size": 32}, **common))
    teacher = json.loads((finetune.model_dir / "unit_training" / "config.json").read_text())
    assert teacher["decoder"] == TINY_DECODER
    from zoo.hub import load_state_dict

    original = load_state_dict(saved / "unit_training" / "teacher.safetensors")
    kept = load_state_dict(finetune.model_dir / "unit_training" / "teacher.safetensors")
    assert all(torch.equal(original[k], kept[k]) for k in original)  # still the original encoder


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_unit_training_reads_text_and_the_vision_decoder_limits_forgetting(tmp_path):
    """unit-tiny pretrained on shapes, then `unit-pretrain` for 1000 steps with and without the vision decoder (the
    run of the README's table, a few minutes on a free CPU): OCR exact match rises from 0, and the run with the vision
    decoder keeps its image features closer to the original encoder's."""
    torch.manual_seed(0)
    start = zoo.create("unit-tiny")
    assert pretrain_on_shapes(start, steps=150) > 0.9
    start.save_pretrained(tmp_path / "start")
    finals = {}
    for weight in (1.0, 0.0):
        options = {**TASK_OPTIONS, "vision_weight": weight,
                   "decoder": {"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "ffn_dim": 512}}
        result = fit(TrainConfig(str(tmp_path / "start"), task="unit-pretrain", output_dir=str(tmp_path / f"{weight}"),
                                 max_steps=1000, batch_size=32, lr=1e-3, warmup_steps=20, eval_every=1000,
                                 eval_samples=128, progress=False, task_options=options,
                                 data_options={"num_samples": 50000, "vocabulary_size": 30}))
        first = json.loads((tmp_path / f"{weight}" / "metrics.jsonl").read_text().splitlines()[0])["eval"]
        assert first["ocr_exact_match"] == 0 and first["feature_retention"] == pytest.approx(1.0)
        finals[weight] = result.metrics
    assert finals[1.0]["ocr_exact_match"] >= OCR_AT_LEAST
    assert finals[1.0]["feature_retention"] >= RETENTION_AT_LEAST
    assert finals[1.0]["feature_retention"] > finals[0.0]["feature_retention"] + RETENTION_MARGIN
