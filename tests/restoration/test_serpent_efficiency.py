"""The Serpent efficiency benchmark's own measures: the live-tensor peak tracer against hand-counted sizes, the
FLOP count including the scans, and the scaling-exponent fit."""

import math

import torch

import zoo
from eval.benchmarks.serpent_efficiency import LiveTensorPeak, scaling_exponent, tensor_peak
from zoo.layers.flops import flops_by_op


def test_live_tensor_peak_counts_live_storages_once():
    x = torch.zeros(1000, device="meta")  # 4000 bytes, existing: not counted
    with LiveTensorPeak([x]) as tracer:
        a = x + 1  # 4000 live
        b = a.view(10, 100)  # a view: same storage, not counted again
        c = b * 2  # 4000 + 4000 live
        a.add_(1)  # in place: nothing new
        del a, b  # a's storage freed with its last view: 4000 live
        d = torch.cat([c.flatten(), c.flatten()])  # flatten is a view; d adds 8000: 12000 live
        del c, d
    assert tracer.peak == 12000 and tracer.current == 0


def test_tensor_peak_of_a_linear_layer():
    layer = torch.nn.Linear(256, 512, bias=False).to("meta")
    x = torch.zeros(8, 256, device="meta")
    # weights + input + output, nothing else lives at once
    assert math.isclose(tensor_peak(layer, x) * 2**20, 4 * (256 * 512 + 8 * 256 + 8 * 512))


def test_serpent_flops_include_every_direction_of_the_scan():
    model = zoo.create("serpent-recon-tiny").to("meta")
    counts = flops_by_op(model, torch.zeros(1, 3, 32, 32, device="meta"))
    # 2 blocks (encoder scale 0 and decoder scale 0) at 16x16 tokens, 1 at 8x8; 4 directions; d_inner 16 and 32
    per_step = 7 * 4 + 1 + 2 + 1 + 1  # 7 per state (4 states), dt*u, D skip, delta bias, softplus
    expected = 4 * per_step * (2 * 16 * 256 + 32 * 64)
    assert counts["selective_scan"] == expected


def test_scaling_exponent_recovers_powers():
    sizes = (256, 512, 1024)
    assert math.isclose(scaling_exponent(sizes, [s**2 for s in sizes]), 1.0)
    assert math.isclose(scaling_exponent(sizes, [3 * s**4 for s in sizes]), 2.0)
