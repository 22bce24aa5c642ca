"""FastV on TinyGPT-V (Phi-2 with TinyGPT-V's q/k LayerNorm, attention RMSNorm and partial rotary): budget 1.0 is
exact, the cached decoding steps equal recomputing the pruned sequence without cache on a left-padded batch whose rows
keep different counts (one image against two), and the methods that need a grid of image tokens are clear errors
(the Phi decoder sees the Q-Former's learned queries)."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

import zoo
from tests.backbones.norms import shift_norms_and_biases
from tests.vlm.test_token_reduction import greedy_continue, oracle_fastv_logits
from zoo.errors import InputError
from zoo.layers.attention import DynamicCache, StaticCache
from zoo.vlm.token_reduction import TokenReduction, pruned_layers

EXACT = dict(rtol=0, atol=0)
TOL = dict(rtol=1e-4, atol=1e-4)
QUERIES = 16


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    model = zoo.create("tinygpt-v-tiny", num_query_tokens=QUERIES).eval()
    return shift_norms_and_biases(model)


def _batch(model):
    """Left-padded prompts: one image, then two images; 56 px pixels for the three images in order."""
    generator = torch.Generator().manual_seed(3)
    image = model.config.image_token_id
    rows = []
    for images in (1, 2):
        text = torch.randint(3, 200, (6,), generator=generator)
        parts = [text[:2]] + [torch.full((QUERIES,), image), text[2:3]] * images + [text[3:]]
        rows.append(torch.cat(parts))
    length = max(len(r) for r in rows)
    input_ids = torch.full((2, length), model.config.pad_token_id)
    attention_mask = torch.zeros_like(input_ids)
    for row, ids in enumerate(rows):
        input_ids[row, length - len(ids):] = ids
        attention_mask[row, length - len(ids):] = 1
    return dict(input_ids=input_ids, attention_mask=attention_mask,
                pixel_values=torch.randn(3, 3, 56, 56, generator=generator))


def test_full_budget_reproduces_the_unreduced_logits_exactly(model):
    batch = _batch(model)
    positions = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    reduction = TokenReduction("fastv", 1.0, layer=1)
    with torch.no_grad():
        assert_close(model(**batch, position_ids=positions, token_reduction=reduction),
                     model(**batch, position_ids=positions), **EXACT)
    plain = model.generate(**batch, max_new_tokens=4)
    assert torch.equal(model.generate(**batch, max_new_tokens=4, token_reduction=reduction), plain)


@pytest.mark.parametrize("cache_kind", ["dynamic", "static"])
def test_fastv_cached_decoding_equals_recomputing_the_pruned_sequence(model, cache_kind):
    batch, layer, budget, steps = _batch(model), 1, 0.25, 4
    reduction = TokenReduction("fastv", budget, layer=layer)
    mask, prompt_length = batch["attention_mask"], batch["input_ids"].shape[1]
    cache = DynamicCache() if cache_kind == "dynamic" else StaticCache(prompt_length + steps)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    text_tokens = (~(batch["input_ids"] == model.config.image_token_id) & mask.bool()).sum(1)
    with torch.no_grad():
        logits = model(**batch, position_ids=positions, cache=cache, token_reduction=reduction,
                       logits_to_keep=1)[:, -1]
        # each row keeps a quarter of its image tokens: 4 of 16, 8 of 32
        assert (pruned_layers(cache).kept_mask.sum(1) - text_tokens).tolist() == [4, 8]
        logits, new = greedy_continue(model, logits, mask, positions, cache, steps - 1)
        ids = torch.cat([batch["input_ids"], new], dim=1)
        is_image = ids == model.config.image_token_id
        features = model.image_features(batch["pixel_values"]).flatten(0, 1)
        phi = model.language_model.model
        x = phi.embed_tokens(ids).masked_scatter(is_image[..., None], features)
        full_mask = torch.cat([batch["attention_mask"], torch.ones_like(new)], dim=1).bool()
        oracle = oracle_fastv_logits(phi, model.language_model.lm_head, x, full_mask, is_image, prompt_length, layer,
                                     budget)
    assert_close(logits, oracle, **TOL)
    generated = model.generate(**batch, max_new_tokens=steps, cache=cache_kind, token_reduction=reduction)
    assert torch.equal(generated[:, prompt_length:-1], new)


@pytest.mark.parametrize("method", ["pool", "bilinear", "attention", "merge", "frame_difference"])
def test_methods_needing_a_token_grid_are_clear_errors(model, method):
    with pytest.raises(InputError, match=f"token reduction '{method}' does not apply to TinyGPT-V .*it supports fastv"):
        model(**_batch(model), token_reduction=TokenReduction(method))


def test_fastv_with_compile_is_a_clear_error(model):
    with pytest.raises(InputError, match="cannot decode with compile=True"):
        model.generate(**_batch(model), max_new_tokens=2, cache="static", compile=True,
                       token_reduction=TokenReduction("fastv", 0.5, layer=1))
