"""Metrics against known values: PSNR/SSIM of identical and shifted images, the Y channel and border crop, the
Fréchet distance of known Gaussians, CLIP score, top-k, VQA exact match and ANLS."""

import math

import pytest
import torch
import torch.nn.functional as F

from eval import metrics
from zoo.errors import ConfigError, InputError


@pytest.fixture
def images():
    return torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def test_identical_images_give_infinite_psnr_and_ssim_one(images):
    assert torch.isinf(metrics.psnr(images, images)).all()
    assert torch.isinf(metrics.psnr(images, images, y_channel=True, crop_border=4)).all()
    torch.testing.assert_close(metrics.ssim(images, images), torch.ones(3))
    torch.testing.assert_close(metrics.ssim(images, images, y_channel=True), torch.ones(3))


@pytest.mark.parametrize("shift, expected", [(0.1, 20.0), (0.01, 40.0), (1 / 255, 20 * math.log10(255))])
def test_constant_shift_gives_the_known_psnr(images, shift, expected):
    # MSE = shift^2, so PSNR = 10 log10(1 / shift^2) = -20 log10(shift), whatever the images
    torch.testing.assert_close(metrics.psnr(images + shift, images), torch.full((3,), expected))


def test_y_channel_follows_bt601_studio_swing(images):
    white, black = torch.ones(1, 3, 4, 4), torch.zeros(1, 3, 4, 4)
    torch.testing.assert_close(metrics.rgb_to_y(white), torch.full((1, 1, 4, 4), 235 / 255))
    torch.testing.assert_close(metrics.rgb_to_y(black), torch.full((1, 1, 4, 4), 16 / 255))
    pure = torch.eye(3).view(3, 3, 1, 1).expand(3, 3, 2, 2)  # red, green, blue
    y = metrics.rgb_to_y(pure)[:, 0, 0, 0]
    torch.testing.assert_close(y, (16 + torch.tensor([65.481, 128.553, 24.966])) / 255)
    # a grey shift of s moves Y by s * 219 / 255: PSNR_Y = -20 log10(0.1 * 219 / 255)
    expected = -20 * math.log10(0.1 * 219 / 255)
    torch.testing.assert_close(metrics.psnr(images + 0.1, images, y_channel=True), torch.full((3,), expected))


def test_border_crop_ignores_the_border(images):
    damaged = images.clone()
    damaged[..., :2, :] = 1 - damaged[..., :2, :]  # ruin two rows on the top edge
    assert metrics.psnr(damaged, images).max() < 20
    assert torch.isinf(metrics.psnr(damaged, images, crop_border=2)).all()
    torch.testing.assert_close(metrics.ssim(damaged, images, crop_border=2), torch.ones(3))
    shifted = images + 0.1
    shifted[..., :1, :] = 0  # a damaged border row; inside it, a 0.1 shift
    torch.testing.assert_close(metrics.psnr(shifted, images, crop_border=1), torch.full((3,), 20.0))


def _ssim_by_hand(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Wang et al. 2004 as BasicSR computes it: 11x11 Gaussian (sigma 1.5), valid positions, per channel, mean."""
    coords = torch.arange(11, dtype=torch.float64) - 5
    g = torch.exp(-(coords**2) / (2 * 1.5**2))
    window = torch.outer(g / g.sum(), g / g.sum())[None, None]
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    scores = []
    for image_x, image_y in zip(x.double(), y.double()):
        channels = []
        for a, b in zip(image_x, image_y):
            a, b = a[None, None], b[None, None]
            mu_a, mu_b = F.conv2d(a, window), F.conv2d(b, window)
            var_a = F.conv2d(a * a, window) - mu_a**2
            var_b = F.conv2d(b * b, window) - mu_b**2
            cov = F.conv2d(a * b, window) - mu_a * mu_b
            ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
            channels.append(ssim_map.mean())
        scores.append(torch.stack(channels).mean())
    return torch.stack(scores).float()


def test_ssim_matches_the_definition(images):
    noisy = (images + 0.05 * torch.randn(images.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    torch.testing.assert_close(metrics.ssim(noisy, images), _ssim_by_hand(noisy, images), atol=1e-5, rtol=0)
    torch.testing.assert_close(metrics.ssim(noisy, images, y_channel=True),
                               _ssim_by_hand(metrics.rgb_to_y(noisy), metrics.rgb_to_y(images)), atol=1e-5, rtol=0)


def test_image_metric_errors(images):
    with pytest.raises(InputError, match="differ in shape"):
        metrics.psnr(images, images[:, :, :16])
    with pytest.raises(InputError, match="crop_border"):
        metrics.psnr(images, images, crop_border=16)
    with pytest.raises(InputError, match="11 x 11"):
        metrics.ssim(images[..., :8, :8], images[..., :8, :8])
    with pytest.raises(InputError, match="RGB"):
        metrics.rgb_to_y(images[:, :1])


def _exact_gaussian_samples(mean: torch.Tensor, cov: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """n samples whose sample mean and (unbiased) sample covariance are exactly `mean` and `cov`."""
    x = torch.randn(n, len(mean), dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    x = x - x.mean(0)
    whitened = x @ torch.linalg.inv(torch.linalg.cholesky(torch.cov(x.T))).T
    return whitened @ torch.linalg.cholesky(cov).T + mean


def test_frechet_distance_of_known_gaussians():
    # N(mu1, diag(s1)) and N(mu2, diag(s2)): d^2 = |mu1 - mu2|^2 + sum(s1 + s2 - 2 sqrt(s1 s2))
    mu1, mu2 = torch.tensor([0.0, 1.0, -2.0], dtype=torch.float64), torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64)
    s1, s2 = torch.tensor([1.0, 4.0, 0.25], dtype=torch.float64), torch.tensor([4.0, 1.0, 1.0], dtype=torch.float64)
    closed_form = float((mu1 - mu2).square().sum() + (s1 + s2 - 2 * (s1 * s2).sqrt()).sum())
    assert closed_form == pytest.approx(5 + 1 + 1 + 0.25)
    a = _exact_gaussian_samples(mu1, torch.diag(s1), 50, seed=0)
    b = _exact_gaussian_samples(mu2, torch.diag(s2), 80, seed=1)
    assert metrics.frechet_distance(a, b) == pytest.approx(closed_form, rel=1e-6)
    assert metrics.frechet_distance_from_stats(mu1, torch.diag(s1), mu2, torch.diag(s2)) == pytest.approx(closed_form)


def test_frechet_distance_with_full_covariances():
    # Same covariance: the trace terms cancel, leaving |mu1 - mu2|^2; scaled covariances S and 4S: Tr(S + 4S - 4S)
    cov = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
    mu = torch.tensor([3.0, -1.0], dtype=torch.float64)
    assert metrics.frechet_distance_from_stats(mu, cov, torch.zeros(2), cov) == pytest.approx(10.0)
    assert metrics.frechet_distance_from_stats(mu, cov, mu, 4 * cov) == pytest.approx(float(cov.trace()))
    a = _exact_gaussian_samples(mu, cov, 40, seed=2)
    b = _exact_gaussian_samples(torch.zeros(2, dtype=torch.float64), 4 * cov, 40, seed=3)
    expected = metrics.frechet_distance_from_stats(mu, cov, torch.zeros(2), 4 * cov)
    assert metrics.frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)
    assert metrics.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(InputError, match="two samples"):
        metrics.frechet_distance(a[:1], b)


def test_clip_score_known_angles():
    image = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
    text = torch.tensor([[3.0, 0.0], [0.5, 3**0.5 / 2], [0.0, 1.0], [-1.0, 0.0]])
    # cos 0 -> 100, cos 60 -> 50, cos 90 -> 0, cos 180 -> clamped to 0
    assert metrics.clip_score(image, text) == pytest.approx((100 + 50 + 0 + 0) / 4, abs=1e-4)
    assert metrics.clip_score(image[:1], text[:1]) == pytest.approx(100.0)


def test_clip_features_from_a_local_model(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.CLIPConfig(
        text_config={"vocab_size": 99, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 16},
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 8},
        projection_dim=8,
    )
    model = transformers.CLIPModel(config).eval()

    class Processor:  # stands in for CLIPProcessor, whose tokenizer files would need a download
        def __call__(self, images=None, text=None, **kwargs):
            if images is not None:
                return {"pixel_values": torch.stack(images)}
            ids = torch.tensor([[len(word) % 99 for word in t.split()][:8] + [0] * (8 - len(t.split()[:8])) for t in text])
            return {"input_ids": ids, "attention_mask": (ids > 0).long()}

    extractor = metrics.ClipFeatures(model, Processor())
    pixels = [torch.randn(3, 32, 32) for _ in range(2)]
    image_features, text_features = extractor.images(pixels), extractor.texts(["a red square", "two blue circles"])
    assert image_features.shape == text_features.shape == (2, 8)
    assert extractor.score(pixels, ["a red square", "two blue circles"]) == pytest.approx(
        metrics.clip_score(image_features, text_features))
    with pytest.raises(ConfigError, match="download=True"):
        metrics.load_clip(str(tmp_path / "not-a-folder"))


def test_topk_accuracy():
    logits = torch.tensor([[0.1, 0.9, 0.0, 0.0, 0.0, 0.0],   # label 1: top-1
                           [0.5, 0.4, 0.3, 0.2, 0.1, 0.0],   # label 4: 5th, top-5 only
                           [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]])  # label 0: last, neither
    labels = torch.tensor([1, 4, 0])
    scores = metrics.topk_accuracy(logits, labels, ks=(1, 5))
    assert scores == pytest.approx({"top1": 1 / 3, "top5": 2 / 3})
    assert list(metrics.topk_accuracy(logits[:, :3], torch.tensor([1, 0, 0]), ks=(1, 5))) == ["top1"]


def test_vqa_normalisation_and_exact_match():
    assert metrics.normalize_answer("  Two dogs. ") == "2 dogs"
    assert metrics.normalize_answer("The Red-Circle!") == "red circle"
    assert metrics.normalize_answer("1,000") == "1000"
    assert metrics.normalize_answer("3.5") == "3.5"
    assert metrics.normalize_answer("cant") == metrics.normalize_answer("can't") == "can't"
    predictions = ["Two", "a red circle", "blue", "yes"]
    references = [["2"], "red circle", ["green", "teal"], "no"]
    assert metrics.vqa_exact_match(predictions, references) == 0.5
    with pytest.raises(InputError, match="2 predictions but 1 references"):
        metrics.vqa_exact_match(["a", "b"], ["a"])


def test_anls_hand_computed():
    # kitten -> sitting: 3 edits over 7 characters, NL 0.43 < 0.5 -> 4/7; abc -> xyz: NL 1 -> 0; exact -> 1
    assert metrics.anls(["kitten"], ["sitting"]) == pytest.approx(4 / 7)
    assert metrics.anls(["abc"], ["xyz"]) == 0.0
    assert metrics.anls(["Hello "], [["hi", "hello"]]) == 1.0
    # 2 edits over 4 characters: NL exactly 0.5 is not below the threshold -> 0
    assert metrics.anls(["abcd"], ["abxy"]) == 0.0
    assert metrics.anls(["kitten", "abc", "hello"], ["sitting", "xyz", "HELLO"]) == pytest.approx((4 / 7 + 0 + 1) / 3)
    assert metrics.anls([""], [""]) == 1.0
