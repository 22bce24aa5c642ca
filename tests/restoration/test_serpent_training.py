"""A CPU training of the tiny reconstructed Serpent on the embedded Gaussian-deblurring set (shapes-restoration with
a fixed kernel and noise) through the common `restoration` task: the restored images beat the blurred input's PSNR
by at least 1 dB (measured: 24.46 against 22.41 dB). About 40 s on a quiet 2-core CPU, minutes on a shared one,
hence `slow`."""

import pytest
import torch

from eval.metrics import psnr
from train import TrainConfig, fit
from zoo.data import load_dataset

DEBLUR = {"blur": [1.5, 1.5], "noise": [0.01, 0.01]}  # a fixed Gaussian kernel (sigma 1.5 px) and noise std 0.01
MARGIN_DB = 1.0


@pytest.mark.slow
def test_tiny_serpent_deblurring_beats_the_blurred_input(tmp_path):
    result = fit(TrainConfig("serpent-recon-tiny", task="restoration", max_steps=300, batch_size=8, lr=3e-3,
                             warmup_steps=10, eval_samples=64, log_every=50, progress=False, seed=0,
                             output_dir=str(tmp_path / "run"),
                             data_options={"num_samples": 2400, "image_size": 32, "cache": True, **DEBLUR}))
    evaluation = load_dataset("shapes-restoration", "restoration", "eval", image_size=32, eval_samples=64, **DEBLUR)
    blurred = float(torch.stack([psnr(s["degraded"][None], s["clean"][None]) for s in evaluation]).mean())
    print(f"eval PSNR {result.metrics['psnr']:.2f} dB, blurred input {blurred:.2f} dB, {result.seconds:.0f} s")
    assert result.metrics["psnr"] > blurred + MARGIN_DB, (result.metrics, blurred)
