"""The LLaVA-Mini efficiency benchmark: its FLOP counting checked against an analytic count at the published size, and
a smoke run on the tiny model (the published-width run is eval/benchmarks/llavamini_efficiency.py, under the lock)."""

from __future__ import annotations

import json

import pytest
import torch

import zoo
from eval.benchmarks.llavamini_efficiency import baseline_flops, main, mini_flops


def _decoder_flops(config, tokens: int) -> int:
    """2 x MAC of a Llama decoder over `tokens` tokens without cache (full attention matrices, as counted), plus the
    LM head on the last token."""
    d, heads, kv, hd, mlp = (config.hidden_size, config.num_attention_heads, config.num_key_value_heads,
                             config.resolved_head_dim, config.intermediate_size)
    linear = d * heads * hd * 2 + d * kv * hd * 2 + 3 * d * mlp
    attention = 2 * 2 * heads * tokens * tokens * hd
    return config.num_hidden_layers * (2 * tokens * linear + attention) + 2 * d * config.vocab_size


def test_tiny_llm_flops_match_the_analytic_count():
    model = zoo.create("llava-mini-tiny").requires_grad_(False)
    text = model.config.text
    assert baseline_flops(model, 24, device="cpu")["llm"] == _decoder_flops(text, 23 + 16)
    assert mini_flops(model, 24, device="cpu")["llm"] == _decoder_flops(text, 23 + 4)
    assert mini_flops(model, 24, frames=3, device="cpu")["llm"] == _decoder_flops(text, 23 + 12)


@pytest.mark.slow
def test_published_llm_flops_match_the_analytic_count():
    with torch.device("meta"):
        model = zoo.create("llava-mini-llama3.1-8b").requires_grad_(False)
    text = model.config.text
    baseline = baseline_flops(model, 64)
    assert baseline["llm"] == _decoder_flops(text, 63 + 576)
    mini = mini_flops(model, 64)
    assert mini["llm"] == _decoder_flops(text, 63 + 1)
    # pre-fusion: 4 of the same layers over 576 + 1 + 64 tokens, inside the vision stage
    prefusion = 4 * (2 * 641 * (4096 * 4096 * 2 + 4096 * 1024 * 2 + 3 * 4096 * 14336) + 4 * 32 * 641 * 641 * 128)
    assert prefusion < mini["vision_and_prefusion"] < prefusion * 1.5
    assert 0.6 < 1 - mini["total"] / baseline["total"] < 0.9


def test_smoke_run_on_the_tiny_model(tmp_path):
    out = tmp_path / "result.json"
    main(["--model", "llava-mini-tiny", "--repeats", "1", "--text-tokens", "24", "--out", str(out)])
    result = json.loads(out.read_text())
    kv = result["kv_cache"]
    assert kv["llava_mini"]["image_tokens"] == 4 and kv["llava_1.5_style"]["image_tokens"] == 16
    assert kv["llava_mini"]["cache_tokens"] == 23 + 4 and kv["llava_1.5_style"]["cache_tokens"] == 23 + 16
    ratio = kv["llava_1.5_style"]["bytes_per_image_published_bf16"] / kv["llava_mini"]["bytes_per_image_published_bf16"]
    assert ratio == 4
    assert result["flops_check_timed_model"]["llava_mini"] > 0
