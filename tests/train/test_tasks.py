"""Each task trains its tiny model on its embedded dataset to a stated level, in seconds.

    classification  lowformer-tiny on shapes (4 classes, chance 25%): eval accuracy >= 60% after 60 steps
    restoration     toyrestore-tiny (test-only; zoo registers no restoration family yet) on shapes-restoration with
                    noise only: eval PSNR beats the noisy input's by 1 dB after 60 steps; toyrestore-sr-tiny (2x,
                    no skip connection) on shapes-sr: L1 falls 2.5x in 60 steps (it learns to upsample from scratch)
    vlm-sft         smolvlm-tiny on shapes-vqa: answer-token loss falls 3x in 40 steps (the quickstart test reaches
                    >= 80% exact match)
    diffusion       wan-tiny and z-image-tiny on shapes-captions (flow matching with shift): loss falls by 25% in 60
                    steps; epsilon and v-prediction objectives train too
Extra loss terms (distillation) join the loss without changing the loop.
"""

from __future__ import annotations

import pytest
import torch
from timm.data import resolve_data_config

import zoo
from eval.metrics import psnr
from train import TrainConfig, fit
from train.tasks import (
    DiffusionTask,
    DistillationLoss,
    HashedTextEncoder,
    LossTerm,
    PixelLatents,
    get_task,
    shift_sigma,
)
from zoo.data import load_dataset


def run(tmp_path, model, task, steps, **settings):
    settings.setdefault("progress", False)
    settings.setdefault("log_every", 5)
    return fit(TrainConfig(model, task=task, max_steps=steps, output_dir=str(tmp_path / "run"), **settings))


def test_classification_beats_chance(tmp_path):
    result = run(tmp_path, "lowformer-tiny", "classification", 60, batch_size=16, lr=3e-3, warmup_steps=5,
                 eval_samples=100, data_options={"num_samples": 960, "image_size": 32, "cache": True})
    assert result.model.num_classes == 4  # sized to the data
    assert result.metrics["accuracy"] >= 0.6, result.metrics  # chance: 0.25
    assert result.losses[-1] < result.losses[0]
    config = resolve_data_config(model=zoo.from_pretrained(result.model_dir))  # as the weights were trained
    assert (config["input_size"], config["crop_pct"], config["mean"], config["std"]) == ((3, 32, 32), 1.0, (0.5,) * 3,
                                                                                         (0.5,) * 3)


def test_restoration_beats_the_degraded_input(tmp_path, toy_restoration_family):
    degradation = {"blur": [0.0, 0.0], "noise": [0.05, 0.1]}  # denoising: learnable in seconds by a tiny net
    result = run(tmp_path, "toyrestore-tiny", "restoration", 60, batch_size=16, lr=3e-3, eval_samples=64,
                 data_options={"num_samples": 512, "cache": True, **degradation})
    evaluation = load_dataset("shapes-restoration", "restoration", "eval", image_size=32, eval_samples=64,
                              **degradation)
    noisy = torch.stack([psnr(s["degraded"][None], s["clean"][None]) for s in evaluation]).mean()
    assert result.metrics["psnr"] > noisy + 1, (result.metrics, float(noisy))


def test_super_resolution_learns_to_upsample(tmp_path, toy_restoration_family):
    result = run(tmp_path, "toyrestore-sr-tiny", "restoration", 60, batch_size=16, lr=3e-3, eval_samples=64,
                 log_every=10, data_options={"num_samples": 512, "cache": True, "blur": [0.0, 0.0],
                                             "noise": [0.0, 0.0]})
    assert result.losses[-1] < result.losses[0] / 2.5, result.losses
    assert result.metrics["psnr"] > 10


def test_vlm_sft_loss_falls(tmp_path):
    result = run(tmp_path, "smolvlm-tiny", "vlm-sft", 40, batch_size=16, lr=3e-3, warmup_steps=5, eval_samples=16,
                 data_options={"num_samples": 320, "cache": True})
    assert result.losses[-1] < result.losses[0] / 3, result.losses
    assert set(result.metrics) >= {"exact_match", "exact_match/color", "exact_match/count"}


@pytest.mark.parametrize("model", ["wan-tiny", "z-image-tiny"])
def test_flow_matching_loss_falls(tmp_path, model):
    result = run(tmp_path, model, "diffusion", 60, batch_size=8, lr=2e-3, eval_samples=16, log_every=10,
                 data_options={"num_samples": 256, "cache": True})
    assert result.losses[-1] < result.losses[0] * 0.75, result.losses
    assert result.task.objective == "flow" and result.task.timestep_shift > 1


@pytest.mark.parametrize("objective", ["epsilon", "v_prediction"])
def test_unet_objectives_train(tmp_path, objective):
    result = run(tmp_path, "wan-tiny", "diffusion", 30, batch_size=8, lr=2e-3, eval_samples=16, log_every=10,
                 task_options={"objective": objective}, data_options={"num_samples": 256, "cache": True})
    assert result.losses[-1] < result.losses[0], result.losses


def test_timestep_shift():
    sigma = torch.linspace(0, 1, 11)
    assert torch.allclose(shift_sigma(sigma, 1.0), sigma)
    shifted = shift_sigma(sigma, 3.0)
    assert shifted[0] == 0 and shifted[-1] == 1 and (shifted[1:-1] > sigma[1:-1]).all()


def test_stand_in_encoders():
    latents = PixelLatents(16, factor=2)
    images = torch.rand(2, 3, 8, 8) * 2 - 1
    encoded = latents.encode(images)
    assert encoded.shape == (2, 16, 4, 4)
    torch.testing.assert_close(latents.decode(encoded), images)  # 12 -> 16 channels loses nothing
    text = HashedTextEncoder(8)
    features, lengths = text(["a red circle", "a red square at the top"])
    assert features.shape == (2, 32, 8) and lengths.tolist() == [3, 6]
    assert torch.equal(text(["a red circle"])[0][0], features[0])  # the same padding in any batch
    assert torch.equal(features[0, 1], features[1, 1]) and not torch.equal(features[0, 2], features[1, 2])


def test_extra_loss_terms_join_the_loss(tmp_path):
    """A family adds a term (here distillation from a teacher, and a custom term) without touching the loop."""

    class WeightNorm(LossTerm):
        name = "weight_norm"

        def __call__(self, task, model, batch, outputs):
            return sum(p.pow(2).sum() for p in model.parameters()) * 0

    teacher = DistillationLoss("lowformer-tiny", weight=0.5, temperature=2.0, num_classes=4)
    result = run(tmp_path, "lowformer-tiny", "classification", 4, batch_size=8, eval_samples=8,
                 extra_losses=[{"name": "distillation", "teacher": "lowformer-tiny", "num_classes": 4}],
                 data_options={"num_samples": 32, "image_size": 32})
    assert "distillation" in result.history[-2] and result.history[-2]["distillation"] > 0
    task = get_task("classification", extra_losses=[teacher, WeightNorm()])
    assert [term.name for term in task.extra_losses] == ["distillation", "weight_norm"]


def test_diffusion_noise_depends_on_the_sample_not_the_batch():
    task = DiffusionTask()
    batch = {"latents": torch.zeros(3, 4, 2, 2), "sample_ids": torch.tensor([7, 8, 9])}
    noise, sigma = task.noise_and_sigma(batch)
    single = {"latents": torch.zeros(1, 4, 2, 2), "sample_ids": torch.tensor([8])}
    noise_one, sigma_one = task.noise_and_sigma(single)
    assert torch.equal(noise[1], noise_one[0]) and torch.equal(sigma[1], sigma_one[0])


def test_vlm_batches_are_what_the_processor_gives(tmp_path):
    """encode + collate build exactly the processor's inputs (prompt ids, pixel values), followed by the answer."""
    import zoo
    from train.tasks import ModelSource, VLMSFTTask
    from zoo.data.shapes import ShapesVQA

    task = VLMSFTTask()
    data = ShapesVQA(num_samples=8, image_size=64)
    task.setup(zoo.create("smolvlm-tiny"), data, ModelSource("smolvlm-tiny"))
    for index in range(8):
        sample = data[index]
        batch = task.collate([{**task.encode(sample), "sample_id": index}])
        expected = task.processor(text=task.prompt(sample["question"]), images=[sample["image"]])
        length = expected["input_ids"].shape[1]
        assert torch.equal(batch["input_ids"][0, :length], expected["input_ids"][0])
        assert torch.equal(batch["pixel_values"], expected["pixel_values"])
        answer = batch["input_ids"][0, length:][batch["labels"][0, length:] != -100]
        assert task.processor.tokenizer.decode(answer) == f" {sample['answer']}<end_of_utterance>"
        assert (batch["labels"][0, :length] == -100).all()
