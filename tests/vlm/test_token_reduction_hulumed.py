"""FastV on Hulu-Med (Qwen2.5-style decoder with q/k/v biases): budget 1.0 is exact, the cached decoding steps equal
recomputing the pruned sequence without cache on a left-padded batch whose rows keep different counts, and the
methods not wired into Hulu-Med are clear errors."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

import zoo
from tests.vlm.test_token_reduction import oracle_fastv_logits
from zoo.errors import InputError
from zoo.layers.attention import DynamicCache, StaticCache
from zoo.vlm.token_reduction import TokenReduction, pruned_layers

EXACT = dict(rtol=0, atol=0)
TOL = dict(rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    model = zoo.create("hulu-med-tiny").eval()
    with torch.no_grad():  # every norm and bias randomised
        for name, param in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                param.add_(torch.randn_like(param) * 0.2)
    return model


def _batch(model):
    """Two left-padded image prompts: 4x6 and 2x4 merged tokens (merge 1)."""
    generator = torch.Generator().manual_seed(3)
    image = model.config.image_token_index
    patch = model.config.vision.num_channels * model.config.vision.patch_size**2
    rows = []
    for count in (24, 8):
        text = torch.randint(1, image, (6,), generator=generator)
        rows.append(torch.cat([text[:3], torch.full((count,), image), text[3:]]))
    input_ids = torch.zeros(2, 30, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for row, ids in enumerate(rows):
        input_ids[row, 30 - len(ids):] = ids
        attention_mask[row, 30 - len(ids):] = 1
    return dict(input_ids=input_ids, attention_mask=attention_mask,
                pixel_values=torch.randn(32, patch, generator=generator),
                grid_sizes=torch.tensor([[1, 4, 6], [1, 2, 4]]), merge_sizes=torch.tensor([1, 1]),
                modals=["image", "image"])


def test_full_budget_reproduces_the_unreduced_logits_exactly(model):
    batch = _batch(model)
    reduction = TokenReduction("fastv", 1.0, layer=1)
    with torch.no_grad():
        assert_close(model(**batch, token_reduction=reduction), model(**batch), **EXACT)
    plain = model.generate(**batch, max_new_tokens=4)
    assert torch.equal(model.generate(**batch, max_new_tokens=4, token_reduction=reduction), plain)


@pytest.mark.parametrize("cache_kind", ["dynamic", "static"])
def test_fastv_cached_decoding_equals_recomputing_the_pruned_sequence(model, cache_kind):
    batch, layer, budget, steps = _batch(model), 1, 0.25, 4
    reduction = TokenReduction("fastv", budget, layer=layer)
    mask, prompt_length = batch["attention_mask"], batch["input_ids"].shape[1]
    cache = DynamicCache() if cache_kind == "dynamic" else StaticCache(prompt_length + steps)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = [model(**batch, position_ids=positions, cache=cache, token_reduction=reduction,
                        logits_to_keep=1)[:, -1]]
        assert pruned_layers(cache).kept_mask.sum(1).tolist() == [6 + 6, 6 + 2]
        tokens = []
        for _ in range(steps - 1):
            token = logits[-1].argmax(-1, keepdim=True)
            tokens.append(token)
            mask = torch.cat([mask, torch.ones_like(token)], dim=1)
            positions = positions[:, -1:] + 1
            logits.append(model(token, attention_mask=mask, position_ids=positions, cache=cache,
                                logits_to_keep=1)[:, -1])
        new = torch.cat(tokens, dim=1)
        ids = torch.cat([batch["input_ids"], new], dim=1)
        is_image = ids == model.config.image_token_index
        features = model.visual_features(batch["pixel_values"], batch["grid_sizes"], batch["merge_sizes"])
        x = model.model.embed_tokens(ids).masked_scatter(is_image[..., None], features)
        full_mask = torch.cat([batch["attention_mask"], torch.ones_like(new)], dim=1).bool()
        oracle = oracle_fastv_logits(model.model, model.lm_head, x, full_mask, is_image, prompt_length, layer, budget)
    assert_close(torch.stack(logits, dim=1), oracle, **TOL)
    generated = model.generate(**batch, max_new_tokens=steps, cache=cache_kind, token_reduction=reduction)
    assert torch.equal(generated[:, :-1], new)


@pytest.mark.parametrize("method", ["pool", "attention", "merge", "frame_difference"])
def test_methods_not_wired_into_hulumed_are_clear_errors(model, method):
    with pytest.raises(InputError, match=f"token reduction '{method}' does not apply to Hulu-Med; it supports fastv"):
        model(**_batch(model), token_reduction=TokenReduction(method))
