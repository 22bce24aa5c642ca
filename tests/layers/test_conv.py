"""zoo.layers.conv: the one-GEMM path of Conv2d / TemporalConv3d equals torch's convolution, and is taken only when
the weight outweighs the input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from zoo.layers import conv
from zoo.layers.conv import Conv2d, TemporalConv3d, conv2d_gemm

TOL = {"rtol": 1e-5, "atol": 1e-5}


@pytest.mark.parametrize(("kernel", "stride", "padding", "bias"), [
    (3, 1, 1, True), (3, 2, 1, True), (1, 1, 0, True), (3, 1, 0, False), ((3, 1), 1, (1, 0), True),
])
def test_conv2d_gemm_equals_conv2d(kernel, stride, padding, bias):
    torch.manual_seed(0)
    layer = Conv2d(48, 40, kernel, stride=stride, padding=padding, bias=bias)
    with torch.no_grad():
        if bias:
            layer.bias.normal_()
    x = torch.randn(3, 5, 7, 48).permute(0, 3, 1, 2)  # batch of 3, non-square, not contiguous
    expected = F.conv2d(x, layer.weight, layer.bias, layer.stride, layer.padding)
    ours = conv2d_gemm(x, layer.weight, layer.bias, layer.stride, layer.padding)
    assert ours.is_contiguous() and ours.shape == expected.shape
    assert_close(ours, expected, **TOL)


def test_modules_take_the_gemm_only_when_the_weight_outweighs_the_input(monkeypatch):
    calls = []
    monkeypatch.setattr(conv, "conv2d_gemm", lambda *args, **kwargs: calls.append(args[0].shape) or
                        conv2d_gemm(*args, **kwargs))
    layer = Conv2d(64, 64, 3, padding=1)  # 36,864 weights
    small, large = torch.randn(2, 64, 4, 4), torch.randn(2, 64, 16, 16)  # 2,048 and 32,768 inputs
    with torch.no_grad():
        assert_close(layer(small), F.conv2d(small, layer.weight, layer.bias, padding=1), **TOL)
        assert len(calls) == 1
        assert_close(layer(large), F.conv2d(large, layer.weight, layer.bias, padding=1), **TOL)
        assert len(calls) == 1  # the large input went to torch's convolution
        layer.double()
        assert_close(layer(small.double()), F.conv2d(small.double(), layer.weight, layer.bias, padding=1))
        assert len(calls) == 1  # float64: torch's convolution


def test_temporal_conv3d_equals_conv3d_with_and_without_gemm():
    torch.manual_seed(0)
    layer = TemporalConv3d(96, 80, 3, 1)
    with torch.no_grad():
        layer.bias.normal_()
        for frames, size in ((3, 1), (5, 16)):  # the first takes the GEMM (23,040 weights, 1,152 inputs)
            x = torch.randn(2, frames, 96, size, size + 1).transpose(1, 2)  # (B, C, T, H, W), not contiguous
            assert conv._use_gemm(x, layer.weight) == (size == 1)
            assert_close(layer(x), F.conv3d(x, layer.weight, layer.bias, padding=(1, 0, 0)), **TOL)
    assert layer.kernel_size == (3, 1, 1) and set(layer.state_dict()) == {"weight", "bias"}
