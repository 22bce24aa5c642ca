"""`zoo eval` of a Serpent restoration model: PSNR and SSIM, and LPIPS where the lpips package and its backbone's
torchvision weights are present (they cannot be downloaded here: the plumbing is tested with the package's own
linear heads on a random backbone, and the refusal without weights)."""

import pytest
import torch

from eval import metrics
from eval.evaluate import EvalOptions, run_eval
from zoo.errors import ZooError

lpips_package = pytest.importorskip("lpips")


@pytest.fixture
def random_backbone_lpips(monkeypatch):
    torch.manual_seed(0)
    model = lpips_package.LPIPS(net="alex", pnet_rand=True, verbose=False).eval()
    monkeypatch.setitem(metrics._LPIPS, "alex", model)
    return model


def test_lpips_without_cached_backbone_weights_says_so(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(metrics, "_LPIPS", {})
    with pytest.raises(ZooError, match="zoo does not download"):
        metrics.lpips(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32))


def test_lpips_scales_inputs_and_is_zero_for_identical_images(random_backbone_lpips):
    x, y = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    assert torch.allclose(metrics.lpips(x, x), torch.zeros(2), atol=1e-6)
    expected = random_backbone_lpips(x * 2 - 1, y * 2 - 1).flatten()
    assert torch.allclose(metrics.lpips(x, y), expected) and (expected > 0).all()


def test_zoo_eval_of_serpent_reports_psnr_ssim_and_lpips(random_backbone_lpips):
    result = run_eval(EvalOptions("serpent-recon-tiny", task="restoration", data="shapes-restoration",
                                  num_samples=4, batch_size=4, data_options={"blur": [1.5, 1.5],
                                                                             "noise": [0.01, 0.01]}))
    scores = result["metrics"]
    assert {"psnr", "ssim", "lpips"} <= set(scores) and scores["lpips"] > 0
    assert result["conventions"]["lpips"].startswith("alex")


def test_zoo_eval_without_lpips_weights_notes_why(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setattr(metrics, "_LPIPS", {})
    result = run_eval(EvalOptions("serpent-recon-tiny", task="restoration", data="shapes-restoration",
                                  num_samples=2, batch_size=2))
    assert "lpips" not in result["metrics"] and "not computed" in result["conventions"]["lpips"]
