"""Token reduction on Hulu-Med (Qwen2.5-style decoder with q/k/v biases). FastV: budget 1.0 is exact, the cached
decoding steps equal recomputing the pruned sequence without cache on a left-padded batch whose rows keep different
counts. Pool, bilinear, HiRED-style attention and ToMe merging per frame of merged tokens, before the projector:
budget 1.0 is exact, kept counts follow the budget per frame, HiRED and pooling match oracles written here, batched
rows with different kept counts equal each row alone. Frame difference (the built-in rule) and bad budgets are clear
errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from torch.testing import assert_close

import zoo
from tests.backbones.norms import shift_norms_and_biases
from tests.vlm.test_token_reduction import greedy_continue, oracle_fastv_logits
from zoo.errors import InputError
from zoo.backbones.navit import navit_position_ids
from zoo.layers.attention import DynamicCache, StaticCache
from zoo.layers.rotary import apply_rotary
from zoo.vlm.token_reduction import TokenReduction, pruned_layers

EXACT = dict(rtol=0, atol=0)
TOL = dict(rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    model = zoo.create("hulu-med-tiny").eval()
    return shift_norms_and_biases(model)


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
        logits = model(**batch, position_ids=positions, cache=cache, token_reduction=reduction,
                       logits_to_keep=1)[:, -1]
        assert pruned_layers(cache).kept_mask.sum(1).tolist() == [6 + 6, 6 + 2]
        logits, new = greedy_continue(model, logits, mask, positions, cache, steps - 1)
        ids = torch.cat([batch["input_ids"], new], dim=1)
        is_image = ids == model.config.image_token_index
        features = model.visual_features(batch["pixel_values"], batch["grid_sizes"], batch["merge_sizes"])
        x = model.model.embed_tokens(ids).masked_scatter(is_image[..., None], features)
        full_mask = torch.cat([batch["attention_mask"], torch.ones_like(new)], dim=1).bool()
        oracle = oracle_fastv_logits(model.model, model.lm_head, x, full_mask, is_image, prompt_length, layer, budget)
    assert_close(logits, oracle, **TOL)
    generated = model.generate(**batch, max_new_tokens=steps, cache=cache_kind, token_reduction=reduction)
    assert torch.equal(generated[:, :-1], new)


GRID_METHODS = ["pool", "bilinear", "attention", "merge"]


@pytest.mark.parametrize("method", GRID_METHODS)
def test_grid_methods_at_full_budget_reproduce_the_unreduced_logits_exactly(model, method):
    batch = _batch(model)
    reduction = TokenReduction(method, 1.0)
    with torch.no_grad():
        assert_close(model(**batch, token_reduction=reduction), model(**batch), **EXACT)
    assert torch.equal(model.generate(**batch, max_new_tokens=4, token_reduction=reduction),
                       model.generate(**batch, max_new_tokens=4))


# (budget, kept of the 4x6 image, kept of the 2x4 one); pooling keeps round(side * sqrt(budget)) per side
COUNTS = {"pool": [(0.5, 12, 3), (0.25, 6, 2), (0.1, 2, 1)], "attention": [(0.5, 12, 4), (0.25, 6, 2), (0.1, 2, 1)]}
COUNTS["bilinear"], COUNTS["merge"] = COUNTS["pool"], COUNTS["attention"]


@pytest.mark.parametrize("method", GRID_METHODS)
def test_kept_counts_follow_the_budget_per_image_and_rows_batch(model, method):
    batch = _batch(model)
    image = model.config.image_token_index
    for budget, first, second in COUNTS[method]:
        reduction = TokenReduction(method, budget)
        prepared = model.prepare_inputs(batch["input_ids"], batch["attention_mask"], None, batch["pixel_values"],
                                        batch["grid_sizes"], batch["merge_sizes"], batch["modals"], reduction)
        assert (prepared.input_ids == image).sum(1).tolist() == [first, second]
        with torch.no_grad():
            features = model.visual_features(batch["pixel_values"], batch["grid_sizes"], batch["merge_sizes"],
                                             token_reduction=reduction)
            assert features.shape[0] == first + second
            logits = model(**batch, token_reduction=reduction)[:, -1]
            # each row alone (no padding) gives its batched last-token logits
            for row, (patches, grid) in enumerate(((slice(0, 24), [[1, 4, 6]]), (slice(24, 32), [[1, 2, 4]]))):
                ids = batch["input_ids"][row][batch["attention_mask"][row].bool()][None]
                alone = model(ids, pixel_values=batch["pixel_values"][patches], grid_sizes=torch.tensor(grid),
                              merge_sizes=torch.tensor([1]), modals=["image"], token_reduction=reduction)
                assert_close(alone[:, -1], logits[row:row + 1], **TOL)
    output = model.generate(**batch, max_new_tokens=3, token_reduction=TokenReduction(method, 0.25))
    assert output.shape == (2, 3)


def test_counts_are_per_frame_of_merged_tokens_for_videos(model):
    """A 2-frame video at merge size 2 (4x4 merged tokens per frame): each frame keeps its share."""
    generator = torch.Generator().manual_seed(5)
    image = model.config.image_token_index
    patch = model.config.vision.num_channels * model.config.vision.patch_size**2
    ids = torch.cat([torch.tensor([5, 6]), torch.full((32,), image), torch.tensor([7])])[None]
    video = dict(pixel_values=torch.randn(2 * 8 * 8, patch, generator=generator), grid_sizes=torch.tensor([[2, 8, 8]]),
                 merge_sizes=torch.tensor([2]), modals=["video"])
    for method, per_frame in (("pool", 4), ("attention", 4), ("merge", 8)):
        reduction = TokenReduction(method, 0.25 if method != "merge" else 0.5)
        prepared = model.prepare_inputs(ids, None, None, **video, token_reduction=reduction)
        assert int((prepared.input_ids == image).sum()) == 2 * per_frame
        with torch.no_grad():
            assert model.visual_features(**video, token_reduction=reduction).shape[0] == 2 * per_frame
            assert model(ids, **video, token_reduction=reduction).shape[1] == 3 + 2 * per_frame


def _oracle_navit(model, pixel_values, grid):
    """The NaViT encoder on one image by hand (plain torch ops on the modules' weights): the tokens and the attention
    each receives in the last layer (heads and queries averaged)."""
    vision = model.vision_encoder
    p = model.config.vision.patch_size
    x = F.conv2d(pixel_values.view(-1, 3, p, p), vision.embeddings.patch_embedding.proj.weight,
                 vision.embeddings.patch_embedding.proj.bias).flatten(1)[None]
    cos, sin = vision.rotary(navit_position_ids(torch.tensor([grid]), torch.tensor([1])))
    for layer in vision.encoder.layers:
        h = layer.layer_norm1(x)
        attn = layer.self_attn
        q, k, v = (rearrange(proj(h), "b l (h d) -> b h l d", h=attn.num_heads)
                   for proj in (attn.q_proj, attn.k_proj, attn.v_proj))
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        probs = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).softmax(-1)
        received = probs.mean(dim=(1, 2))[0]
        x = x + attn.o_proj(rearrange(probs @ v, "b h l d -> b l (h d)"))
        x = x + layer.mlp(layer.layer_norm2(x))
    return vision.post_layernorm(x)[0], received


def test_attention_and_pool_features_match_oracles(model):
    batch = _batch(model)
    pixels, visual = batch["pixel_values"][:24], dict(grid_sizes=torch.tensor([[1, 4, 6]]),
                                                      merge_sizes=torch.tensor([1]))
    with torch.no_grad():
        tokens, received = _oracle_navit(model, pixels, [1, 4, 6])
        assert_close(model.vision_encoder(pixels, visual["grid_sizes"], visual["merge_sizes"]), tokens, **TOL)
        top = received.topk(6).indices.sort().values  # HiRED: the 6 most attended of 24, in order
        reduced = model.visual_features(pixels, **visual, token_reduction=TokenReduction("attention", 0.25))
        assert_close(reduced, model.mm_projector(tokens[top]), **TOL)
        pooled = F.adaptive_avg_pool2d(rearrange(tokens, "(h w) d -> d h w", h=4), (2, 3))  # round(4 / 2), round(6 / 2)
        reduced = model.visual_features(pixels, **visual, token_reduction=TokenReduction("pool", 0.25))
        assert_close(reduced, model.mm_projector(rearrange(pooled, "d h w -> (h w) d")), **TOL)


def test_frame_difference_and_bad_budgets_are_clear_errors(model):
    with pytest.raises(InputError, match="token reduction 'frame_difference' does not apply to Hulu-Med; it supports "
                                         "pool, bilinear, attention, merge, fastv"):
        model(**_batch(model), token_reduction=TokenReduction("frame_difference"))
    with pytest.raises(InputError, match="budget 9 is larger than the 8 visual tokens"):
        model(**_batch(model), token_reduction=TokenReduction("merge", 9))
    with pytest.raises(InputError, match=r"outside \(0, 1\]"):
        TokenReduction("pool", 1.5)
