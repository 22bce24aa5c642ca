"""Token reduction on LLaVA-Mini: the reduction applies to the patch tokens pre-fusion reads (the LLM sees c^2 tokens
per image whatever the budget). Budget 1.0 is exact for images and high-resolution crops, pre-fusion reads the
budget's count per partition, HiRED's ranking follows the class token's attention (an oracle written here), and the
methods that do not apply are clear errors."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from einops import rearrange
from torch.testing import assert_close

import zoo
from tests.backbones.norms import shift_norms_and_biases
from zoo.errors import InputError
from zoo.vlm.token_reduction import TokenReduction

EXACT = dict(rtol=0, atol=0)
TOL = dict(rtol=1e-4, atol=1e-4)


def _model(resolution_ratio: int = 1):
    torch.manual_seed(0)
    model = zoo.create("llava-mini-tiny")
    if resolution_ratio > 1:
        model = type(model)(dataclasses.replace(model.config, resolution_ratio=resolution_ratio))
    model.eval()
    return shift_norms_and_biases(model)


@pytest.fixture(scope="module")
def model():
    return _model()


def _inputs(model):
    generator = torch.Generator().manual_seed(2)
    text = torch.randint(1, 300, (2, 9), generator=generator)
    first = torch.cat([text[0, :4], torch.tensor([-200]), text[0, 4:]])
    second = torch.cat([text[1, :2], torch.tensor([-200]), text[1, 2:6], torch.zeros(3, dtype=torch.long)])
    attention_mask = torch.ones(2, 10, dtype=torch.long)
    attention_mask[1, 7:] = 0
    size = model.config.vision.image_size
    images = torch.randn(2, model.config.num_parts, 3, size, size, generator=generator)
    return dict(input_ids=torch.stack([first, second]), attention_mask=attention_mask, images=images)


def _prefusion_lengths(model, inputs, reduction):
    lengths = []
    handle = model.prefusion_layers[0].register_forward_pre_hook(lambda module, args: lengths.append(args[0].shape[1]))
    try:
        with torch.no_grad():
            model(**inputs, token_reduction=reduction)
    finally:
        handle.remove()
    return lengths


@pytest.mark.parametrize("resolution_ratio", [1, 2])
@pytest.mark.parametrize("method", ["pool", "bilinear", "attention", "merge"])
def test_full_budget_reproduces_the_unreduced_logits_exactly(method, resolution_ratio):
    model = _model(resolution_ratio)
    inputs = _inputs(model)
    reduction = TokenReduction(method, 1.0)
    with torch.no_grad():
        assert_close(model(**inputs, token_reduction=reduction), model(**inputs), **EXACT)
        plain = model.generate(**inputs, max_new_tokens=3)
        assert torch.equal(model.generate(**inputs, max_new_tokens=3, token_reduction=reduction), plain)


@pytest.mark.parametrize("method,budget,kept", [
    ("pool", 0.25, 4), ("bilinear", 0.25, 4), ("attention", 0.5, 8), ("attention", 3, 3), ("merge", 0.25, 4),
])
def test_prefusion_reads_the_budget_per_partition(model, method, budget, kept):
    inputs = _inputs(model)
    text, queries = inputs["input_ids"].shape[1], model.config.compressor_size**2
    assert _prefusion_lengths(model, inputs, None) == [16 + queries + text]
    assert _prefusion_lengths(model, inputs, TokenReduction(method, budget)) == [kept + queries + text]
    high = _model(2)
    inputs = _inputs(high)
    # the stitched 8 x 8 grid of the four crops is one partition, the full image another
    stitched = {"pool": 16, "bilinear": 16, "attention": 32, "merge": 16}[method] if budget != 3 else 3
    assert _prefusion_lengths(high, inputs, TokenReduction(method, budget)) == [stitched + kept + queries + text]
    with torch.no_grad():
        logits = high(**inputs, token_reduction=TokenReduction(method, budget))
    assert logits.shape[:2] == (2, inputs["input_ids"].shape[1] - 1 + queries)


def test_attention_keeps_the_patches_the_class_token_attends_to(model):
    inputs = _inputs(model)
    tower, config = model.vision_tower, model.config
    images = inputs["images"][:, 0]
    with torch.no_grad():
        x = tower.pre_layrnorm(tower.embeddings(images))
        select = config.mm_vision_select_layer % (len(tower.encoder.layers) + 1)
        for block in tower.encoder.layers[:select - 1]:
            x = block(x)
        last = tower.encoder.layers[select - 1]
        h = last.layer_norm1(x)
        attn = last.self_attn
        q = rearrange(attn.q_proj(h[:, :1]), "b l (h d) -> b h l d", h=attn.num_heads)
        k = rearrange(attn.k_proj(h), "b l (h d) -> b h l d", h=attn.num_heads)
        cls = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).softmax(-1).mean(dim=(1, 2))[:, 1:]
        patches = last(x)[:, 1:]
        top = cls.topk(8, dim=-1).indices.sort(-1).values
        expected = torch.stack([patches[b, top[b]] for b in range(2)])

        seen = []
        handle = model.mm_projector.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
        try:
            model(**inputs, token_reduction=TokenReduction("attention", 0.5))
        finally:
            handle.remove()
    assert_close(seen[0], expected, **TOL)


@pytest.mark.parametrize("method,message", [
    ("fastv", "'fastv' does not apply to LLaVA-Mini: its LLM sees one compressed token"),
    ("frame_difference", "'frame_difference' does not apply to LLaVA-Mini"),
])
def test_methods_that_do_not_apply_are_clear_errors(model, method, message):
    reduction = TokenReduction(method, layer=1) if method == "fastv" else TokenReduction(method)
    with pytest.raises(InputError, match=message):
        model(**_inputs(model), token_reduction=reduction)
    with pytest.raises(InputError, match=message):
        model.generate(**_inputs(model), max_new_tokens=2, token_reduction=reduction)
