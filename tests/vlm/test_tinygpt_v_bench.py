"""The TinyGPT-V benchmark's two phases at tiny sizes: the transformers pieces share zoo's weights and agree with it."""

from __future__ import annotations

import pytest

import zoo
from eval.benchmarks import tinygpt_v as bench

pytest.importorskip("transformers")


def test_image_encoding_phase_compares_equal_outputs():
    result = bench.bench_image_encoding(zoo.registry.get_entry("tinygpt-v-tiny").config, repeats=1, warmup=0)
    assert result["max_abs_diff"] < 1e-4 and result["zoo"]["runs"] == 1


@pytest.mark.slow  # compiles the decoding step
def test_decoding_phase_checks_the_tokens(monkeypatch):
    monkeypatch.setattr(bench, "NEW_TOKENS", 6)
    result = bench.bench_decoding(zoo.registry.get_entry("tinygpt-v-tiny").config, repeats=1, warmup=0)
    assert result["tokens_equal"] and result["zoo-compiled"]["runs"] == 1
