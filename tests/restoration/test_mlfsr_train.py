"""Training MLFSR: L1 on the synthetic light fields beats bicubic; the T2M term distils an EPIT teacher's features."""

import pytest
import torch
import torch.nn.functional as F

import zoo
from eval.metrics import light_field_psnr_ssim
from train import TrainConfig, fit
from train.tasks import FeatureDistillationLoss, get_task
from zoo.data import load_dataset
from zoo.restoration.mlfsr import interpolate_views


def _batch(n: int = 2, image_size: int = 40, split: str = "train") -> dict:
    data = load_dataset("lightfield-sr", "restoration", split, image_size=image_size, scale=2, num_samples=n)
    items = [data[i] for i in range(n)]
    return {"degraded": torch.stack([s["degraded"] for s in items]), "clean": torch.stack([s["clean"] for s in items]),
            "sample_ids": torch.arange(n)}


def test_t2m_term_is_l1_of_body_features_taken_by_a_hook():
    student, teacher = zoo.create("mlfsr-tiny"), zoo.create("epit-tiny")
    term = FeatureDistillationLoss(teacher, weight=0.1)
    task = get_task("restoration", extra_losses=[term])
    batch = _batch()
    calls = []
    student.forward_features = (lambda original: lambda lr: calls.append(1) or original(lr))(student.forward_features)
    for step in range(2):
        out = task.loss(student, batch)
        with torch.no_grad():
            expected = F.l1_loss(student.forward_features(batch["degraded"])[1],
                                 teacher.forward_features(batch["degraded"])[1])
        assert abs(out.metrics["t2m"] - expected.item()) < 1e-6
        l1 = F.l1_loss(out.outputs, batch["clean"])
        assert torch.allclose(out.loss, l1 + 0.1 * expected, atol=1e-6)
    # forward_features ran for the task's forwards and the checks above, and once more only at the first step
    assert len(calls) == 2 + 2 + 1
    with pytest.raises(Exception, match="differ; use a teacher of the student's width"):
        FeatureDistillationLoss(zoo.create("epit-tiny", channels=8, num_heads=2))(task, student, batch, None)


def test_t2m_lowers_the_feature_distance():
    torch.manual_seed(0)
    student, teacher = zoo.create("mlfsr-tiny"), zoo.create("epit-tiny")
    task = get_task("restoration", extra_losses=[{"name": "t2m", "teacher": teacher, "weight": 1.0}])
    batch = _batch(2, 40)
    optimizer = torch.optim.Adam(student.parameters(), lr=3e-3)
    distances = []
    for _ in range(12):
        out = task.loss(student, batch)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        distances.append(out.metrics["t2m"])
    assert distances[-1] < 0.7 * distances[0], distances


@pytest.mark.slow
def test_short_cpu_training_beats_bicubic_then_t2m(tmp_path):
    """Stage 1: L1 on 5x5 light fields of 16 x 16 HR views (x2) for 300 steps at a constant lr beats the bicubic skip
    by > 0.3 dB PSNR per view on held-out scenes (+0.8 dB seen in the same recipe written as a plain loop). Stage 2:
    T2M from that model with an EPIT-tiny teacher lowers the feature distance. About 5-10 minutes on one CPU thread."""
    torch.set_num_threads(1)
    data = {"num_samples": 2000, "image_size": 80, "cache": True}
    stage1 = fit(TrainConfig("mlfsr-tiny", task="restoration", data="lightfield-sr", max_steps=300, batch_size=4,
                             lr=5e-3, schedule="constant", output_dir=str(tmp_path / "stage1"), progress=False,
                             log_every=25, eval_samples=8, data_options=data))
    held_out = _batch(8, 80, "eval")
    with torch.no_grad():
        sr = stage1.model.eval()(held_out["degraded"]).clamp(0, 1)
    bicubic = interpolate_views(held_out["degraded"], 5, 2).clamp(0, 1)
    psnr_model = light_field_psnr_ssim(sr, held_out["clean"], 5)[0].mean()
    psnr_bicubic = light_field_psnr_ssim(bicubic, held_out["clean"], 5)[0].mean()
    print(f"stage 1: MLFSR-tiny {float(psnr_model):.3f} dB, bicubic {float(psnr_bicubic):.3f} dB")
    assert psnr_model > psnr_bicubic + 0.3, (float(psnr_model), float(psnr_bicubic))

    stage2 = fit(TrainConfig(str(stage1.model_dir), task="restoration", data="lightfield-sr", max_steps=30,
                             batch_size=4, lr=1e-3, output_dir=str(tmp_path / "stage2"), progress=False, log_every=5,
                             eval_samples=8, data_options=data,
                             extra_losses=[{"name": "t2m", "teacher": "epit-tiny", "weight": 0.1}]))
    distances = [r["t2m"] for r in stage2.history if "t2m" in r]
    print("stage 2 feature distances:", [round(d, 4) for d in distances])
    assert len(distances) >= 3 and distances[-1] < distances[0], distances


def test_train_configs_load():
    from pathlib import Path

    from train.tasks import build_loss_term

    configs = sorted(Path("train/configs").glob("mlfsr*.yaml"))
    assert len(configs) == 4
    for path in configs:
        config = TrainConfig.from_yaml(path)
        assert config.task == "restoration"
    t2m = TrainConfig.from_yaml("train/configs/mlfsr-x4-t2m.yaml").extra_losses[0]
    assert t2m == {"name": "t2m", "teacher": "epit-x4", "pretrained": True, "weight": 0.1}
    term = build_loss_term(TrainConfig.from_yaml("train/configs/mlfsr-tiny-t2m.yaml").extra_losses[0])
    assert isinstance(term, FeatureDistillationLoss) and term.weight == 0.1


def test_basiclfsr_folder_is_restoration_data(tmp_path):
    import h5py
    import numpy as np

    folder = tmp_path / "SR_5x5_2x" / "EPFL"
    folder.mkdir(parents=True)
    with h5py.File(folder / "000001.h5", "w") as file:
        file.create_dataset("Lr_SAI_y", data=np.random.rand(30, 30).T, dtype="single")
        file.create_dataset("Hr_SAI_y", data=np.random.rand(60, 60).T, dtype="single")
    data = load_dataset(tmp_path / "SR_5x5_2x", "restoration")
    assert len(data) == 1 and data[0]["degraded"].shape == (1, 30, 30) and data[0]["clean"].shape == (1, 60, 60)
    assert load_dataset(tmp_path / "SR_5x5_2x", "restoration", "eval") is None
