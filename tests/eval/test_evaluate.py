"""`zoo eval`: every task on the embedded datasets, saved checkpoints, the JSON it writes and its model-card data,
and clear errors."""

from __future__ import annotations

import json

import pytest
import torch

import zoo
from eval import metrics
from eval.evaluate import EvalOptions, run_eval
from tests.train import toy_restoration
from zoo.cli import main
from zoo.errors import ConfigError, InputError, UnknownModelError


@pytest.fixture(scope="module")
def restoration_family():
    toy_restoration.register()
    yield
    toy_restoration.unregister()


def test_classification_checkpoint_folder_and_card(tmp_path, capsys):
    torch.manual_seed(0)
    model = zoo.create("lowformer-tiny", num_classes=4)
    folder = model.save_pretrained(tmp_path / "model")
    out = tmp_path / "result.json"
    assert main(["eval", str(folder), "--data", "shapes", "--num-samples", "24", "--out", str(out)]) == 0
    assert "top1" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["task"] == "classification" and result["num_samples"] == 24 and result["split"] == "eval"
    assert set(result["metrics"]) == {"top1", "loss"}  # 4 classes: no top-5
    # the same weights given as --checkpoint to the registered name score the same
    again = run_eval(EvalOptions("lowformer-tiny", data="shapes", num_samples=24, checkpoint=str(folder),
                                 model_options={"num_classes": 4}))
    assert again["metrics"] == pytest.approx(result["metrics"])
    # by hand: the task's batches, normalised as the saved model's pretrained_cfg says, and the model's logits
    from train.tasks import get_task
    from zoo.data import load_dataset

    task = get_task("classification", mean=model.pretrained_cfg["mean"], std=model.pretrained_cfg["std"])
    dataset = torch.utils.data.Subset(load_dataset("shapes", "classification", "eval", image_size=64,
                                                   eval_samples=24), range(24))
    model.eval()
    batch = task.collate([task.encode(dataset[i]) for i in range(24)])
    with torch.no_grad():
        expected = metrics.topk_accuracy(model(batch["pixel_values"]), batch["labels"], ks=(1,))["top1"]
    assert result["metrics"]["top1"] == pytest.approx(expected)
    card = zoo.hub.render_model_card(model, card_data=result["card_data"])
    assert "## Results" in card and "| top1 (shapes) |" in card


def test_restoration_psnr_ssim_and_crop(restoration_family, tmp_path):
    result = run_eval(EvalOptions("toyrestore-sr-tiny", data="shapes-sr", num_samples=6, batch_size=4))
    assert set(result["metrics"]) == {"psnr", "psnr_y", "ssim", "ssim_y", "l1"}
    assert result["conventions"]["crop_border"] == 2  # the dataset's scale
    assert all(torch.isfinite(torch.tensor(v)) for v in result["metrics"].values())
    plain = run_eval(EvalOptions("toyrestore-tiny", data="shapes-restoration", num_samples=4, crop_border=0))
    assert plain["conventions"]["crop_border"] == 0 and plain["metrics"]["ssim"] <= 1


def test_vlm_exact_match_and_anls():
    result = run_eval(EvalOptions("smolvlm-tiny", num_samples=6, batch_size=6, task_options={"max_new_tokens": 3}))
    assert result["task"] == "vlm-sft" and result["data"] == "shapes-vqa"
    assert {"exact_match", "vqa_exact_match", "anls"} <= set(result["metrics"])
    assert any(key.startswith("vqa_exact_match/") for key in result["metrics"])
    assert all(0 <= v <= 1 for v in result["metrics"].values())


def test_diffusion_uses_the_task_evaluation():
    result = run_eval(EvalOptions("wan-tiny", num_samples=4))
    assert list(result["metrics"]) == ["loss"] and result["metrics"]["loss"] > 0


def test_user_jsonl_data(tmp_path):
    from PIL import Image

    for i, colour in enumerate(["red", "blue"]):
        Image.new("RGB", (64, 64), colour).save(tmp_path / f"{i}.png")
    lines = [{"image": f"{i}.png", "label": i} for i in range(2)]
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    result = run_eval(EvalOptions("lowformer-tiny", data=str(data), split="train"))
    assert result["num_samples"] == 2 and "top1" in result["metrics"]
    with pytest.raises(InputError, match="has no evaluation split"):
        run_eval(EvalOptions("lowformer-tiny", data=str(data)))


def test_eval_errors(capsys):
    with pytest.raises(UnknownModelError):
        run_eval(EvalOptions("nope-tiny"))
    with pytest.raises(ConfigError, match="Task 'vlm-sft' trains vlm models"):
        run_eval(EvalOptions("lowformer-tiny", task="vlm-sft"))
    with pytest.raises(InputError, match="neither an embedded dataset nor an existing path"):
        run_eval(EvalOptions("lowformer-tiny", data="shapez"))
    with pytest.raises(ConfigError, match="--split takes eval or train"):
        run_eval(EvalOptions("lowformer-tiny", split="test"))
    assert main(["eval", "lowformer-tiny", "--data", "shapes-vqa"]) == 2
    assert "holds vqa samples, but this task needs classification" in capsys.readouterr().err


def test_token_reduction_settings_scored_with_flops_and_ttft(tmp_path):
    out = tmp_path / "tr.json"
    assert main(["eval", "smolvlm-tiny", "--num-samples", "4", "--batch-size", "4", "--task-options",
                 '{"max_new_tokens": 2}', "--token-reduction", "pool:1.0", "pool:0.25", "fastv:0.5:layer=1",
                 "--ttft-repeats", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = result["token_reduction"]
    assert list(rows) == ["none", "pool:1.0", "pool:0.25", "fastv:0.5:layer=1"]
    assert rows["none"]["metrics"] == result["metrics"]
    assert rows["pool:1.0"]["metrics"] == rows["none"]["metrics"]  # budget 1.0: the same answers
    assert rows["pool:1.0"]["prefill_flops"] == rows["none"]["prefill_flops"]
    # smolvlm-tiny's 2 x 2 tokens pooled to 1: the decoder sees 3 tokens fewer
    assert rows["pool:0.25"]["flops_vs_none"] < 1
    for row in rows.values():
        assert 0 <= row["metrics"]["exact_match"] <= 1 and row["ttft_p50_ms"] > 0
    assert "token_reduction" in result["conventions"]


def test_token_reduction_errors():
    with pytest.raises(ConfigError, match="--token-reduction applies to vision-language tasks"):
        run_eval(EvalOptions("lowformer-tiny", num_samples=2, token_reduction=("pool:0.5",)))
    with pytest.raises(InputError, match=r"outside \(0, 1\]"):
        run_eval(EvalOptions("smolvlm-tiny", num_samples=2, token_reduction=("pool:2.0",)))
    with pytest.raises(InputError, match="fastv prunes after a decoder layer"):
        run_eval(EvalOptions("smolvlm-tiny", num_samples=2, token_reduction=("fastv:0.5",)))
