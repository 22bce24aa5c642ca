"""Light-field data: MATLAB YCbCr and bicubic imresize, BasicLFSR's files, augmentation, patching, metrics,
and the synthetic light fields."""

import math
import random

import numpy as np
import pytest
import torch
from einops import rearrange

from eval.metrics import light_field_psnr_ssim
from zoo.data.lightfield import (
    BasicLFSRTestSet, BasicLFSRTrainingSet, SyntheticLightFields, augment, imresize, lf_divide, lf_integrate,
    prepare_light_field, read_mat_light_field, rgb_to_ycbcr, ycbcr_to_rgb,
)


def test_ycbcr_matlab_values():
    rgb = np.array([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    expected = np.array([[235, 128, 128], [16, 128, 128], [16 + 65.481, 128 - 37.797, 240]]) / 255
    np.testing.assert_allclose(rgb_to_ycbcr(rgb), expected, atol=1e-12)
    torch.testing.assert_close(rgb_to_ycbcr(torch.from_numpy(rgb)), torch.from_numpy(expected))
    colours = np.random.default_rng(0).random((10, 3))
    np.testing.assert_allclose(ycbcr_to_rgb(rgb_to_ycbcr(colours)), colours, atol=1e-12)


def test_imresize_upscale_known_values():
    """x2 of the row [1 2 3 4]. Output j sits at u = j / 2 + 1/4; Keys' cubic (a = -0.5) at offsets 1/4 and 3/4
    gives the taps (-9/128, 111/128, 29/128, -3/128) and their mirror; borders repeat the edge pixel. Linear data
    stays linear away from the borders."""
    image = np.tile(np.array([1.0, 2.0, 3.0, 4.0]), (3, 1))
    expected = [0.90625, 1.1796875, 1.7265625, 2.25, 2.75, 3.2734375, 3.8203125, 4.09375]
    out = imresize(image, 2)
    assert out.shape == (6, 8)
    np.testing.assert_allclose(out, np.tile(expected, (6, 1)), atol=1e-12)
    np.testing.assert_allclose(imresize(np.full((7, 5), 0.3), 1 / 3), np.full((3, 2), 0.3), atol=1e-12)


def _matlab_resize_axis(x: np.ndarray, scale: float) -> np.ndarray:
    """Reference: MATLAB's documented imresize along axis 0, one output pixel at a time."""
    n_in = x.shape[0]
    n_out = math.ceil(n_in * scale)
    width = 4 / scale if scale < 1 else 4

    def kernel(t):
        t = abs(t)
        if t <= 1:
            return 1.5 * t**3 - 2.5 * t**2 + 1
        return -0.5 * t**3 + 2.5 * t**2 - 4 * t + 2 if t <= 2 else 0.0

    out = np.zeros((n_out,) + x.shape[1:])
    for i in range(1, n_out + 1):
        u = i / scale + 0.5 * (1 - 1 / scale)
        first = math.floor(u - width / 2)
        taps = range(first, first + math.ceil(width) + 2)
        weights = [scale * kernel(scale * (u - k)) if scale < 1 else kernel(u - k) for k in taps]
        total = sum(weights)
        for k, weight in zip(taps, weights):
            j = (k - 1) % (2 * n_in)  # symmetric: 1..n, n..1, repeated
            j = j if j < n_in else 2 * n_in - 1 - j
            out[i - 1] += weight / total * x[j]
    return out


@pytest.mark.parametrize("scale, shape", [(1 / 4, (32, 24)), (1 / 2, (13, 9)), (2, (5, 6)), (1 / 3, (10, 10, 2))])
def test_imresize_matches_reference(scale, shape):
    image = np.random.default_rng(1).random(shape)
    reference = _matlab_resize_axis(_matlab_resize_axis(image, scale).swapaxes(0, 1), scale).swapaxes(0, 1)
    np.testing.assert_allclose(imresize(image, scale), reference, atol=1e-12)
    tensor = imresize(torch.from_numpy(image).float(), scale)
    assert tensor.dtype == torch.float32 and np.allclose(tensor.numpy(), reference, atol=1e-6)


def test_imresize_differs_from_torch_bicubic():
    image = torch.rand(32, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ours = imresize(image, 1 / 4)
    torchs = torch.nn.functional.interpolate(image[None, None], scale_factor=1 / 4, mode="bicubic")[0, 0]
    assert (ours - torchs).abs().max() > 1e-2  # antialiasing: MATLAB averages, torch samples


def _write_mat(path, light_field, v73: bool):
    if v73:
        import h5py

        with h5py.File(path, "w") as file:
            file.create_dataset("LF", data=light_field.transpose(4, 3, 2, 1, 0))
    else:
        import scipy.io

        scipy.io.savemat(path, {"LF": light_field})


@pytest.mark.parametrize("v73", [False, True], ids=["v5", "v7.3"])
def test_read_mat_light_field_central_views(tmp_path, v73):
    light_field = np.random.default_rng(2).random((9, 9, 12, 10, 3))
    path = tmp_path / "scene.mat"
    _write_mat(path, light_field, v73)
    read = read_mat_light_field(path)
    np.testing.assert_array_equal(read, light_field[2:7, 2:7])
    lr, hr = prepare_light_field(read, scale=2)
    assert lr.shape == (1, 5 * 6, 5 * 4) and hr.shape == (1, 5 * 12, 5 * 8)
    view = rgb_to_ycbcr(light_field[3, 6, :12, :8])[..., 0]  # central view (1, 4)
    np.testing.assert_allclose(hr[0, 12:24, 32:40].numpy(), view, atol=1e-6)
    np.testing.assert_allclose(lr[0, 6:12, 16:20].numpy(), imresize(view, 0.5), atol=1e-6)


def test_read_mat_errors(tmp_path):
    import scipy.io

    scipy.io.savemat(tmp_path / "small.mat", {"LF": np.zeros((3, 3, 4, 4, 3))})
    with pytest.raises(Exception, match="fewer than the 5x5"):
        read_mat_light_field(tmp_path / "small.mat")
    scipy.io.savemat(tmp_path / "other.mat", {"X": np.zeros(3)})
    with pytest.raises(Exception, match="no light field 'LF'"):
        read_mat_light_field(tmp_path / "other.mat")


def test_basiclfsr_h5_files(tmp_path):
    """Files written as BasicLFSR's Generate_Data_for_* scripts write them (transposed) read back upright."""
    import h5py

    rng = np.random.default_rng(3)
    lr, hr, cbcr = rng.random((20, 15)), rng.random((40, 30)), rng.random((40, 30, 2))
    (tmp_path / "train" / "HCI_new").mkdir(parents=True)
    (tmp_path / "test").mkdir()
    with h5py.File(tmp_path / "train" / "HCI_new" / "000001.h5", "w") as file:
        file.create_dataset("Lr_SAI_y", data=lr.T, dtype="single")
        file.create_dataset("Hr_SAI_y", data=hr.T, dtype="single")
    with h5py.File(tmp_path / "test" / "bedroom.h5", "w") as file:
        file.create_dataset("Lr_SAI_y", data=lr.T, dtype="single")
        file.create_dataset("Sr_SAI_cbcr", data=cbcr.transpose(2, 1, 0), dtype="single")
        file.create_dataset("Hr_SAI_y", data=hr.T, dtype="single")
    item = BasicLFSRTrainingSet(tmp_path / "train", augmentation=False)[0]
    np.testing.assert_allclose(item["degraded"][0].numpy(), lr, atol=1e-7)
    np.testing.assert_allclose(item["clean"][0].numpy(), hr, atol=1e-7)
    test = BasicLFSRTestSet(tmp_path / "test")[0]
    assert test["name"] == "bedroom" and test["cbcr"].shape == (2, 40, 30)
    np.testing.assert_allclose(test["cbcr"].permute(1, 2, 0).numpy(), cbcr, atol=1e-7)
    np.testing.assert_allclose(test["clean"][0].numpy(), hr, atol=1e-7)
    with pytest.raises(Exception, match="No BasicLFSR .h5 files"):
        BasicLFSRTestSet(tmp_path / "nothing")


def test_augmentation_moves_views_and_pixels_together():
    a, h, w, s = 5, 4, 3, 2
    lr = torch.arange(a * h * a * w, dtype=torch.float32).view(1, a * h, a * w)
    hr = torch.nn.functional.interpolate(lr[None], scale_factor=s, mode="nearest")[0]
    seen = set()
    for seed in range(40):
        rng = random.Random(seed)
        replay = random.Random(seed)
        draws = [replay.random() < 0.5 for _ in range(3)]
        out_lr, out_hr = augment(lr, hr, rng)
        seen.add(tuple(draws))
        views = rearrange(lr, "1 (u h) (v w) -> u v h w", u=a, v=a)
        if draws[0]:
            views = views.flip(1, 3)
        if draws[1]:
            views = views.flip(0, 2)
        if draws[2]:
            views = views.permute(1, 0, 3, 2)
        assert torch.equal(rearrange(out_lr, "1 (u h) (v w) -> u v h w", u=a, v=a), views)
        assert torch.equal(out_hr, torch.nn.functional.interpolate(out_lr[None], scale_factor=s, mode="nearest")[0])
    assert len(seen) == 8


def _basiclfsr_divide(data, a, patch, stride):
    """Reference: BasicLFSR's LFdivide, extending each view by mirrored copies (flip and concatenate)."""
    views = rearrange(data, "(u h) (v w) -> (u v) 1 h w", u=a, v=a)
    h, w = views.shape[-2:]
    border = (patch - stride) // 2
    lr_flip, ud_flip, both = views.flip(-1), views.flip(-2), views.flip(-1, -2)
    tiled = torch.cat([torch.cat([both, ud_flip, both], -1), torch.cat([lr_flip, views, lr_flip], -1),
                       torch.cat([both, ud_flip, both], -1)], -2)
    extended = tiled[..., h - border:2 * h + border + stride - 1, w - border:2 * w + border + stride - 1]
    n1, n2 = (h + 2 * border - 1) // stride, (w + 2 * border - 1) // stride
    patches = torch.nn.functional.unfold(extended, patch, stride=stride)
    return rearrange(patches, "(a1 a2) (h w) (n1 n2) -> n1 n2 (a1 h) (a2 w)", a1=a, a2=a, h=patch, n1=n1, n2=n2)


@pytest.mark.parametrize("h, w", [(40, 36), (33, 48), (20, 24)])
def test_lf_divide_matches_basiclfsr_and_integrates_back(h, w):
    mosaic = torch.rand(5 * h, 5 * w)
    patches = lf_divide(mosaic, 5, 32, 16)
    assert torch.equal(patches, _basiclfsr_divide(mosaic, 5, 32, 16))
    views = lf_integrate(patches, 5, 32, 16, h, w)
    assert torch.equal(rearrange(views, "u v h w -> (u h) (v w)"), mosaic)


def _skimage_ssim(x: np.ndarray, y: np.ndarray) -> float:
    """Reference: skimage's structural_similarity(gaussian_weights=True, data_range=1), written with scipy."""
    from scipy.ndimage import gaussian_filter

    def blur(z):
        return gaussian_filter(z, sigma=1.5, truncate=3.5)

    cov_norm = 121 / 120
    ux, uy = blur(x), blur(y)
    vx, vy = cov_norm * (blur(x * x) - ux * ux), cov_norm * (blur(y * y) - uy * uy)
    vxy = cov_norm * (blur(x * y) - ux * uy)
    c1, c2 = 0.01**2, 0.03**2
    s = (2 * ux * uy + c1) * (2 * vxy + c2) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    return float(s[5:-5, 5:-5].mean())


def test_light_field_metrics_per_view_like_basiclfsr():
    gen = torch.Generator().manual_seed(4)
    target = torch.rand(2, 1, 5 * 16, 5 * 14, generator=gen, dtype=torch.float64)
    prediction = (target + 0.05 * torch.randn(target.shape, generator=gen, dtype=torch.float64)).clamp(0, 1)
    psnr, ssim = light_field_psnr_ssim(prediction.float(), target.float(), 5)
    for b in range(2):
        views_p = rearrange(prediction[b, 0].numpy(), "(u h) (v w) -> u v h w", u=5, v=5)
        views_t = rearrange(target[b, 0].float().double().numpy(), "(u h) (v w) -> u v h w", u=5, v=5)
        views_p = views_p.astype(np.float32).astype(np.float64)
        psnrs = [10 * np.log10(1 / np.mean((views_p[u, v] - views_t[u, v]) ** 2)) for u in range(5) for v in range(5)]
        ssims = [_skimage_ssim(views_p[u, v], views_t[u, v]) for u in range(5) for v in range(5)]
        assert abs(psnr[b].item() - np.mean(psnrs)) < 1e-4
        assert abs(ssim[b].item() - np.mean(ssims)) < 1e-5


def test_synthetic_light_fields_have_disparity_and_matlab_lr():
    data = SyntheticLightFields(num_samples=3, image_size=5 * 24, scale=2, planes=1, disparity=(1.0, 1.0))
    views, disparities = data.render(0)
    assert disparities.tolist() == [1.0]
    for u in range(5):
        for v in range(5):  # view (u, v) shows the centre's point (y + du, x + dv): a shift by d per view step
            du, dv = u - 2, v - 2
            np.testing.assert_allclose(views[u, v, 2:-2, 2:-2], views[2, 2, 2 + du:22 + du, 2 + dv:22 + dv],
                                       atol=1e-9)
    item = data[0]
    assert item["degraded"].shape == (1, 60, 60) and item["clean"].shape == (1, 120, 120)
    clean_view = item["clean"][0, 24:48, 48:72].double().numpy()
    np.testing.assert_allclose(item["degraded"][0, 12:24, 24:36].numpy(), np.clip(imresize(clean_view, 0.5), 0, 1),
                               atol=1e-5)
    again = SyntheticLightFields(num_samples=3, image_size=5 * 24, scale=2, planes=1, disparity=(1.0, 1.0))[0]
    assert torch.equal(again["clean"], item["clean"])
    other = SyntheticLightFields(num_samples=3, image_size=5 * 24, scale=2, split="eval")[0]
    assert not torch.equal(other["clean"], item["clean"])
    with pytest.raises(Exception, match="divisible by scale"):
        SyntheticLightFields(image_size=5 * 25, scale=2)


def test_synthetic_occlusion_layers():
    """Nearer discs occlude: with several planes the views are not one shifted image."""
    views, disparities = SyntheticLightFields(image_size=5 * 32, planes=3).render(1)
    assert np.all(np.diff(disparities) >= 0) and views.min() >= 0 and views.max() <= 1
    assert views.std() > 0.05
