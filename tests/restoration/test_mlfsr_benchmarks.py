"""The MLFSR benchmarks' own logic: the 8 GiB limit search, the memory-capped worker, whole-vs-patch comparison."""

import json
import math
import subprocess
import sys

import pytest
import torch

import zoo
from eval.benchmarks.mlfsr_scaling import EXCEEDED, GIB, fit_power_law, next_limit_size, worker
from eval.benchmarks.mlfsr_whole_vs_patch import compare_modes, interior
from eval.metrics import light_field_psnr_ssim


def test_power_law_fit_recovers_the_exponent():
    k, a = fit_power_law([(x, 3.0 * x**1.5) for x in (256, 1024, 4096, 16384)])
    assert k == pytest.approx(1.5) and a == pytest.approx(3.0)


def test_limit_search_solves_the_linear_law_then_steps_to_a_bracket():
    per_pixel = 8 * GIB / 189**2  # a model whose memory is linear in the pixels and reaches 8 GiB at 189^2
    measured = {64: per_pixel * 64**2, 128: per_pixel * 128**2}
    assert next_limit_size(measured, set(), 8 * GIB, 8) == 184  # 189 rounded down
    measured[184] = per_pixel * 184**2  # under: one step up
    assert next_limit_size(measured, set(), 8 * GIB, 8) == 192
    assert next_limit_size(measured, {192}, 8 * GIB, 8) is None  # over: bracketed within one step
    # a first guess that was over: one step down, inside the bracket
    assert next_limit_size({64: per_pixel * 64**2, 128: per_pixel * 128**2}, {184}, 8 * GIB, 8) == 176
    assert next_limit_size({64: 1.0}, set(), 8 * GIB, 8) == 128  # one size: double it


def test_worker_measures_a_forward():
    """In a process that has run other tests the allocator may reuse freed memory (a peak of 0 above the model) and a
    tiny forward may take under one clock tick of CPU time, so this checks bounds; a fresh worker's RSS is checked in
    test_worker_stops_at_the_memory_cap."""
    row = worker("mlfsr-tiny", 6, repeats=2, device="cpu", threads=1, warmup_size=4)
    assert row["size"] == 6 and len(row["forwards"]) == 2 and row["peak_bytes"] >= 0
    assert row["median_s"] == sorted(f["wall_s"] for f in row["forwards"])[1]
    assert all(0 <= f["user_s"] + f["sys_s"] <= f["wall_s"] + 0.05 for f in row["forwards"])


def test_worker_stops_at_the_memory_cap():
    command = [sys.executable, "-m", "eval.benchmarks.mlfsr_scaling", "--worker", "mlfsr-tiny", "40",
               "--threads", "1", "--warmup-size", "4", "--cap-gib", str(4 / 1024)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == EXCEEDED, result.stderr[-1000:]
    record = json.loads(result.stdout.strip().splitlines()[-1])
    assert record["exceeded"] and record["rss_above_model_bytes"] > 4 * 1024**2


def test_whole_vs_patch_comparison():
    """The two modes agree on the interior when the body is taken out (a 5-pixel receptive field) and differ there
    with it; the reported PSNR is the metric's on the whole-mode output."""
    torch.manual_seed(0)
    model = zoo.create("mlfsr-tiny").eval()
    lr = torch.rand(1, 1, 5 * 20, 5 * 20)
    hr = torch.rand(1, 1, 5 * 40, 5 * 40)
    scenes = [{"degraded": lr[0], "clean": hr[0]}]
    with torch.no_grad():
        full = compare_modes(model, scenes)
        psnr = light_field_psnr_ssim(model.super_resolve(lr).clamp(0, 1), hr, 5)[0].mean()
        model.altblock = torch.nn.Identity()
        local = compare_modes(model, scenes)
    assert full["whole_psnr"] == pytest.approx(float(psnr))
    assert full["interior_margin_hr"] == 16 and interior(hr, 5, 16).shape == (1, 1, 5, 8, 5, 8)
    assert local["interior_max_abs_diff"] < 1e-5 < full["interior_max_abs_diff"]
    assert local["whole_interior_psnr"] == pytest.approx(local["patch_interior_psnr"], abs=1e-3)
    assert local["max_abs_diff"] > 1e-3  # the views' edges differ for any model
    assert math.isfinite(full["interior_whole_vs_patch_psnr"])
