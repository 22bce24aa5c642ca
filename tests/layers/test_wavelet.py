"""Haar DWT/IDWT: closed-form bands, perfect reconstruction, WaveMix's stacked layout, and parity with
pytorch_wavelets' DWTForward/DWTInverse(wave="db1", mode="zero") when it is installed."""

import sys
import types

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.testing import assert_close

from zoo.layers.wavelet import haar_dwt2d, haar_dwt2d_concat, haar_idwt2d

FP32 = dict(rtol=0, atol=1e-6)


def _pytorch_wavelets():
    """pytorch_wavelets 1.3 imports pkg_resources, which recent setuptools no longer ship; it only needs the name."""
    if "pkg_resources" not in sys.modules:
        try:
            import pkg_resources  # noqa: F401
        except ImportError:
            shim = types.ModuleType("pkg_resources")
            shim.resource_stream = None
            sys.modules["pkg_resources"] = shim
    return pytest.importorskip("pytorch_wavelets")


@st.composite
def images(draw, max_levels=3):
    levels = draw(st.integers(1, max_levels))
    factor = 2**levels
    shape = (
        draw(st.integers(1, 2)),
        draw(st.integers(1, 3)),
        factor * draw(st.integers(1, 3)),
        factor * draw(st.integers(1, 3)),
    )
    torch.manual_seed(draw(st.integers(0, 2**16)))
    return torch.randn(shape), levels


def test_bands_match_the_closed_form_on_a_hand_example():
    x = torch.tensor([[1.0, 2.0], [3.0, 5.0]]).view(1, 1, 2, 2)
    low, (highs,) = haar_dwt2d(x)
    assert low.item() == (1 + 2 + 3 + 5) / 2
    assert highs.flatten().tolist() == [(1 + 2 - 3 - 5) / 2, (1 - 2 + 3 - 5) / 2, (1 - 2 - 3 + 5) / 2]


def test_bands_match_the_closed_form_for_every_cell_and_channel():
    x = torch.randn(2, 3, 4, 6)
    low, (highs,) = haar_dwt2d(x)
    a, b, c, d = x[..., 0::2, 0::2], x[..., 0::2, 1::2], x[..., 1::2, 0::2], x[..., 1::2, 1::2]
    assert_close(low, (a + b + c + d) / 2, **FP32)
    assert_close(highs[:, :, 0], (a + b - c - d) / 2, **FP32)
    assert_close(highs[:, :, 1], (a - b + c - d) / 2, **FP32)
    assert_close(highs[:, :, 2], (a - b - c + d) / 2, **FP32)


def test_multilevel_shapes_and_recursion():
    x = torch.randn(2, 3, 16, 24)
    low, highs = haar_dwt2d(x, levels=3)
    assert low.shape == (2, 3, 2, 3)
    assert [tuple(h.shape) for h in highs] == [(2, 3, 3, 8, 12), (2, 3, 3, 4, 6), (2, 3, 3, 2, 3)]
    low1, (highs1,) = haar_dwt2d(x)
    _, (highs2,) = haar_dwt2d(low1)
    assert_close(highs[0], highs1, rtol=0, atol=0)
    assert_close(highs[1], highs2, rtol=0, atol=0)


@settings(max_examples=25, deadline=None)
@given(images())
def test_idwt_inverts_dwt(case):
    x, levels = case
    low, highs = haar_dwt2d(x, levels)
    assert_close(haar_idwt2d(low, highs), x, **FP32)


@settings(max_examples=15, deadline=None)
@given(images())
def test_transform_preserves_energy(case):
    x, levels = case
    low, highs = haar_dwt2d(x.double(), levels)
    energy = low.square().sum() + sum(h.square().sum() for h in highs)
    assert_close(energy, x.double().square().sum())


def test_concat_layout_is_lowpass_then_channel_major_highs():
    x = torch.randn(2, 3, 8, 8)
    low, highs = haar_dwt2d(x, levels=2)
    stacked = haar_dwt2d_concat(x, levels=2)
    assert [tuple(s.shape) for s in stacked] == [(2, 12, 4, 4), (2, 12, 2, 2)]
    low1, _ = haar_dwt2d(x)
    assert_close(stacked[0][:, :3], low1, rtol=0, atol=0)
    assert_close(stacked[1][:, :3], low, rtol=0, atol=0)
    for level, level_highs in enumerate(highs):
        for channel in range(3):
            for band in range(3):
                assert torch.equal(stacked[level][:, 3 + 3 * channel + band], level_highs[:, channel, band])


def test_keeps_dtype_and_is_differentiable():
    x = torch.randn(1, 2, 4, 4, dtype=torch.bfloat16)
    low, highs = haar_dwt2d(x)
    assert low.dtype == highs[0].dtype == haar_idwt2d(low, highs).dtype == torch.bfloat16
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: haar_idwt2d(*haar_dwt2d(t * t, 2)), (x,))


@settings(max_examples=15, deadline=None)
@given(images())
def test_parity_with_pytorch_wavelets(case):
    pytorch_wavelets = _pytorch_wavelets()
    x, levels = case
    ref_low, ref_highs = pytorch_wavelets.DWTForward(J=levels, wave="db1", mode="zero")(x)
    low, highs = haar_dwt2d(x, levels)
    assert_close(low, ref_low, **FP32)
    for ours, theirs in zip(highs, ref_highs, strict=True):
        assert_close(ours, theirs, **FP32)
    assert_close(haar_idwt2d(ref_low, ref_highs), pytorch_wavelets.DWTInverse(wave="db1", mode="zero")((low, highs)))


@pytest.mark.parametrize("shape", [(1, 1, 6, 8), (1, 1, 8, 10)])
def test_indivisible_size_names_the_required_divisibility(shape):
    with pytest.raises(ValueError, match=r"divisible by 2\*\*2 = 4, got H=\d+, W=\d+"):
        haar_dwt2d(torch.zeros(shape), levels=2)
    with pytest.raises(ValueError, match=r"divisible by 2\*\*2 = 4"):
        haar_dwt2d_concat(torch.zeros(shape), levels=2)


def test_shape_errors_name_the_expected_shapes():
    with pytest.raises(ValueError, match=r"\(B, C, H, W\), got \(4, 4\)"):
        haar_dwt2d(torch.zeros(4, 4))
    low, highs = haar_dwt2d(torch.zeros(1, 2, 4, 4))
    with pytest.raises(ValueError, match=r"\(B, C, 3, h, w\) = \(1, 2, 3, 2, 2\) at this level, got \(1, 2, 2, 2\)"):
        haar_idwt2d(low, [highs[0][:, :, 0]])
