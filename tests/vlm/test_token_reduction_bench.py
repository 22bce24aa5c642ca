"""`zoo bench --token-reduction`: the spec parser, the prefill KV-cache bytes against the count of cached positions,
and the prefill FLOPs against the unreduced run."""

from __future__ import annotations

import pytest

import zoo
from eval.bench import BenchOptions, run_bench
from zoo.errors import ConfigError, InputError
from zoo.vlm.token_reduction import TokenReduction


@pytest.mark.parametrize("spec,expected", [
    ("attention:0.25", TokenReduction("attention", 0.25)),
    ("merge:16", TokenReduction("merge", 16)),
    ("fastv:0.5:layer=2", TokenReduction("fastv", 0.5, layer=2)),
    ("frame_difference:threshold=0.05", TokenReduction("frame_difference", threshold=0.05)),
    ("pool", TokenReduction("pool")),
])
def test_spec_round_trips(spec, expected):
    assert TokenReduction.parse(spec) == expected
    assert TokenReduction.parse(expected.describe()) == expected


@pytest.mark.parametrize("spec,message", [
    ("attention:half", "cannot be read"),
    ("fastv:0.5:depth=2", "cannot be read"),
    ("attention:1.5", r"outside \(0, 1\]"),
])
def test_bad_specs_are_clear_errors(spec, message):
    with pytest.raises(InputError, match=message):
        TokenReduction.parse(spec)


def _bench(spec):
    return run_bench(BenchOptions("smolvlm-tiny", token_reduction=spec, repeats=1, warmup=0, memory=False,
                                  new_tokens=2, threads=1))


def test_bench_reports_kv_bytes_and_fewer_prefill_flops():
    text = zoo.create("smolvlm-tiny").config.text
    per_position = 2 * text.num_key_value_heads * text.resolved_head_dim * 4  # keys and values, fp32
    # the default input: 8 text tokens and one tile of 4 <image> tokens, 2 decoder layers
    records = {spec: _bench(spec) for spec in (None, "attention:0.5", "pool:0.25", "fastv:0.25:layer=1")}
    assert records[None]["kv_cache_bytes"] == 2 * 12 * per_position
    assert records["attention:0.5"]["kv_cache_bytes"] == 2 * 10 * per_position
    assert records["fastv:0.25:layer=1"]["kv_cache_bytes"] == (12 + 9) * per_position
    assert records["attention:0.5"]["token_reduction"] == "attention:0.5"
    assert records["pool:0.25"]["kv_cache_bytes"] == 2 * 9 * per_position
    flops = {spec: record["implementations"]["zoo"]["flops"]["ttft"] for spec, record in records.items()}
    assert flops["pool:0.25"] < flops[None] and flops["fastv:0.25:layer=1"] < flops[None]
    # HiRED's ranking recomputes q and k of the encoder's last layer: on this tiny model that costs more than the
    # two dropped tokens save in the 2-layer decoder (the counter sees it; eval/benchmarks shows the published sizes)
    assert flops["attention:0.5"] > flops[None]


def test_bench_refuses_reduction_for_other_tasks_and_with_a_reference():
    with pytest.raises(ConfigError, match="applies to vision-language models"):
        run_bench(BenchOptions("llama-tiny", token_reduction="attention:0.5", repeats=1))
    with pytest.raises(ConfigError, match="bench the unreduced model against --compare in a separate run"):
        run_bench(BenchOptions("smolvlm-tiny", compare="transformers", token_reduction="attention:0.5", repeats=1))
