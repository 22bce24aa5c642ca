"""Visual token reduction through `token_reduction=` (zoo.vlm.token_reduction) on SmolVLM: budget 1.0 is exact,
kept counts follow the budget per tile, the kept features match oracles written here, batches whose rows keep
different counts, FastV's cached decoding against recomputing the pruned sequence without cache, and clear errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from torch.testing import assert_close

from tests.backbones.norms import shift_norms_and_biases
from zoo.backbones.llama import LlamaConfig
from zoo.backbones.siglip import SiglipVisionConfig
from zoo.errors import InputError
from zoo.layers.attention import DynamicCache, StaticCache
from zoo.layers.rotary import apply_rotary
from zoo.vlm.smolvlm import SmolVLM, SmolVLMConfig
from zoo.vlm.token_reduction import TokenReduction, pruned_layers

EXACT = dict(rtol=0, atol=0)
TOL = dict(rtol=1e-4, atol=1e-4)
IMAGE = 250
SEQ = 16  # (64 / 8)^2 / 2^2 tokens per tile
BEFORE_LLM = ["pool", "bilinear", "attention", "merge", "frame_difference"]


@pytest.fixture(scope="module")
def model() -> SmolVLM:
    torch.manual_seed(0)
    config = SmolVLMConfig(
        vision=SiglipVisionConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                                  image_size=64, patch_size=8),
        text=LlamaConfig(vocab_size=260, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512),
        scale_factor=2, image_token_id=IMAGE, pad_token_id=0,
    )
    model = SmolVLM(config).eval()
    return shift_norms_and_biases(model)


def _batch(tiles=(3, 2), video: bool = False):
    """Left-padded prompts with different tile counts (all-zero padding tiles); a video repeats frames."""
    generator = torch.Generator().manual_seed(1)
    pixel_values = torch.randn(len(tiles), max(tiles), 3, 64, 64, generator=generator)
    if video:  # frame 1 of prompt 0 repeats frame 0; frame 2 changes only in its top-left 16 x 16 pixels
        pixel_values[0, 1] = pixel_values[0, 0]
        pixel_values[0, 2] = pixel_values[0, 1]
        pixel_values[0, 2, :, :16, :16] += 1
    rows = []
    for row, count in enumerate(tiles):
        pixel_values[row, count:] = 0
        text = torch.randint(1, IMAGE, (7,), generator=generator)
        rows.append(torch.cat([text[:3], torch.full((count * SEQ,), IMAGE), text[3:]]))
    length = max(len(r) for r in rows)
    input_ids = torch.zeros(len(tiles), length, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for row, ids in enumerate(rows):
        input_ids[row, length - len(ids):] = ids
        attention_mask[row, length - len(ids):] = 1
    return dict(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values)


def _image_counts(input_ids, attention_mask):
    return ((input_ids == IMAGE) & attention_mask.bool()).sum(1).tolist()


@pytest.mark.parametrize("method", [*BEFORE_LLM, "fastv"])
def test_full_budget_reproduces_the_unreduced_logits_exactly(model, method):
    batch = _batch()
    reduction = TokenReduction(method, 1.0, layer=2 if method == "fastv" else None)
    with torch.no_grad():
        assert_close(model(**batch, token_reduction=reduction), model(**batch), **EXACT)
        plain = model.generate(**batch, max_new_tokens=4, cache="static")
        assert torch.equal(model.generate(**batch, max_new_tokens=4, cache="static", token_reduction=reduction), plain)


@pytest.mark.parametrize("method,budget,per_tile", [
    ("attention", 0.5, 8), ("attention", 0.25, 4), ("attention", 3, 3), ("merge", 0.5, 8), ("merge", 0.1, 2),
    ("merge", 1, 1), ("pool", 0.25, 4), ("bilinear", 0.25, 4), ("pool", 0.5, 9), ("bilinear", 0.1, 1),
])
def test_kept_counts_follow_the_budget_per_tile(model, method, budget, per_tile):
    batch = _batch()
    reduction = TokenReduction(method, budget)
    assert model.token_reduction_counts(batch["pixel_values"], reduction) == [per_tile] * 5
    with torch.no_grad():
        logits = model(**batch, token_reduction=reduction)
        assert logits.shape[:2] == (2, 7 + 3 * per_tile)
        output = model.generate(**batch, max_new_tokens=3, token_reduction=reduction)
    assert torch.equal(output[:, :batch["input_ids"].shape[1]], batch["input_ids"])
    # the prompt shortened the way forward does it gives the same next tokens as generate
    ids, mask, shortened = model._reduce_prompt(batch["input_ids"], batch["attention_mask"], batch["pixel_values"],
                                                reduction)
    assert shortened and _image_counts(ids, mask) == [3 * per_tile, 2 * per_tile]
    assert mask[:, -1].all()  # still left-padded
    with torch.no_grad():
        again = model(ids, batch["pixel_values"], attention_mask=mask,
                      position_ids=(mask.cumsum(-1) - 1).clamp(min=0), token_reduction=reduction)
    assert_close(again, logits, **EXACT)
    assert torch.equal(output[:, -3], logits[:, -1].argmax(-1))


def _oracle_vision(model, tiles):
    """SigLIP by hand: the tokens and the attention each token receives in the last layer (heads and queries
    averaged), from the modules' weights with plain torch ops."""
    vision = model.vision_model
    patches = vision.embeddings.patch_embedding(tiles).flatten(2).transpose(1, 2)
    x = patches + vision.embeddings.position_embedding.weight[: patches.shape[1]]
    for layer in vision.encoder.layers:
        h = layer.layer_norm1(x)
        attn = layer.self_attn
        heads = attn.num_heads
        q = rearrange(attn.q_proj(h), "b l (h d) -> b h l d", h=heads)
        k = rearrange(attn.k_proj(h), "b l (h d) -> b h l d", h=heads)
        v = rearrange(attn.v_proj(h), "b l (h d) -> b h l d", h=heads)
        probs = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).softmax(-1)
        received = probs.mean(dim=(1, 2))
        x = x + attn.o_proj(rearrange(probs @ v, "b h l d -> b l (h d)"))
        x = x + layer.mlp(layer.layer_norm2(x))
    return vision.post_layernorm(x), received


def _shuffle(x, r=2):
    side = math.isqrt(x.shape[1])
    grid = rearrange(x, "b (h w) d -> b h w d", h=side)
    return rearrange(grid, "b (h a) (w c) d -> b (h w) (a c d)", a=r, c=r)


def test_attention_and_pool_features_match_oracles(model):
    batch = _batch(tiles=(2,))
    tiles = batch["pixel_values"][0]
    with torch.no_grad():
        tokens, received = _oracle_vision(model, tiles)
        assert_close(model.vision_model(tiles), tokens, **TOL)
        # HiRED: a shuffled token scores the attention its 2 x 2 patches receive; the 4 best per tile, in order
        scores = _shuffle(received[..., None]).sum(-1)
        top = scores.topk(4, dim=-1).indices.sort(-1).values
        expected = torch.stack([_shuffle(tokens)[t, top[t]] for t in range(2)]).flatten(0, 1)
        reduced = model.image_features(batch["pixel_values"], None, TokenReduction("attention", 0.25))
        assert_close(reduced, model.connector(expected), **TOL)
        # pooling to a quarter of the tokens: 2 x 2 average pooling of the patch grid, then the shuffle
        pooled = F.avg_pool2d(rearrange(tokens, "b (h w) d -> b d h w", h=8), 2)
        expected = _shuffle(rearrange(pooled, "b d h w -> b (h w) d")).flatten(0, 1)
        reduced = model.image_features(batch["pixel_values"], None, TokenReduction("pool", 0.25))
        assert_close(reduced, model.connector(expected), **TOL)


def test_merged_features_are_combinations_of_their_own_tile(model):
    batch = _batch(tiles=(2,))
    with torch.no_grad():
        tokens = model.vision_model(batch["pixel_values"][0])
        shuffled = _shuffle(tokens)
        merged = model.image_features(batch["pixel_values"], None, TokenReduction("merge", 0.25))
    # 4 tokens per tile, each a weighted mean of that tile's shuffled tokens: through the linear connector, inside
    # the span of the tile's 16 projected tokens (64 wide); the size-weighted sums are tested on merge_tokens itself
    assert merged.shape == (8, model.config.text.hidden_size)
    projected = model.connector(shuffled)
    for tile in range(2):
        basis = projected[tile].T
        solution = torch.linalg.lstsq(basis, merged[tile * 4:(tile + 1) * 4].T).solution
        assert_close(basis @ solution, merged[tile * 4:(tile + 1) * 4].T, rtol=1e-3, atol=1e-3)


def test_frame_difference_keeps_changed_tokens_and_one_per_frame(model):
    batch = _batch(tiles=(3, 2), video=True)
    reduction = TokenReduction("frame_difference")
    counts = model.token_reduction_counts(batch["pixel_values"], reduction)
    # prompt 0: frame 0 whole, frame 1 unchanged (its first token), frame 2 changed in one 16 x 16 token;
    # prompt 1: two random frames, every token changes
    assert counts == [SEQ, 1, 1, SEQ, SEQ]
    with torch.no_grad():
        logits = model(**batch, token_reduction=reduction)
        output = model.generate(**batch, max_new_tokens=3, token_reduction=reduction)
    assert logits.shape[1] == 7 + 2 * SEQ
    ids, mask, _ = model._reduce_prompt(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], reduction)
    assert _image_counts(ids, mask) == [SEQ + 2, 2 * SEQ]
    assert torch.equal(output[:, -3], logits[:, -1].argmax(-1))


def oracle_fastv_logits(text, lm_head, x, mask, is_image, prompt_length, layer, budget):
    """Recomputes, without a cache, the logits of the last prompt token and of each new token of the embedded
    sequence x (B, prompt + new, D): layers < K over the whole sequence; layer K - 1's attention from the last prompt
    token ranks the image tokens of each row; layers >= K over the kept prompt tokens and the new tokens, at their
    original positions."""
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
    cos, sin = text.rotary(positions)
    length = x.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    for index in range(layer):
        block = text.layers[index]
        if index == layer - 1:
            h = block.input_layernorm(x)[:, :prompt_length]
            attn = block.self_attn
            q = attn.q_norm(attn.q_proj(h[:, -1:]))
            k = attn.k_norm(attn.k_proj(h))
            q = rearrange(q, "b l (h d) -> b h l d", d=attn.head_dim)
            k = rearrange(k, "b l (h d) -> b h l d", d=attn.head_dim)
            q = apply_rotary(q, cos[:, prompt_length - 1:prompt_length], sin[:, prompt_length - 1:prompt_length])
            k = apply_rotary(k, cos[:, :prompt_length], sin[:, :prompt_length])
            k = k.repeat_interleave(attn.num_heads // attn.num_kv_heads, dim=1)
            scores = (q @ k.transpose(-1, -2) / math.sqrt(attn.head_dim))
            scores = scores.masked_fill(~mask[:, None, None, :prompt_length], -math.inf).softmax(-1).mean(dim=(1, 2))
        x = block(x, (cos, sin), (causal & mask[:, None, None, :]), None, index)
    logits = []
    for row in range(x.shape[0]):
        visual = (is_image[row, :prompt_length] & mask[row, :prompt_length]).nonzero().flatten()
        k = max(1, round(budget * len(visual)))
        chosen = visual[scores[row, visual].topk(k).indices]
        text_positions = (~is_image[row] & mask[row]).nonzero().flatten()
        kept = torch.cat([chosen, text_positions]).sort().values
        y, (c, s) = x[row:row + 1, kept], (cos[row:row + 1, kept], sin[row:row + 1, kept])
        for index in range(layer, len(text.layers)):
            y = text.layers[index](y, (c, s), None, None, index)
        row_logits = lm_head((text.norm if hasattr(text, "norm") else text.final_layernorm)(y))[0]  # Llama, Phi
        last_prompt = int((kept < prompt_length).sum()) - 1
        logits.append(row_logits[last_prompt:])
    return torch.stack(logits)


def _oracle_fastv_logits(model, batch, new_tokens, layer, budget):
    ids = torch.cat([batch["input_ids"], new_tokens], dim=1)
    mask = torch.cat([batch["attention_mask"], torch.ones_like(new_tokens)], dim=1).bool()
    x = model.text_model.embed_tokens(ids)
    is_image = ids == IMAGE
    x = x.masked_scatter(is_image[..., None], model.image_features(batch["pixel_values"], None))
    return oracle_fastv_logits(model.text_model, model.lm_head, x, mask, is_image, batch["input_ids"].shape[1],
                               layer, budget)


def greedy_continue(model, logits: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache,
                    steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy decoding through `cache` after a prefill whose last logits are `logits` (B, V) and whose mask and
    positions are `mask`, `positions` (B, L): `steps` tokens, one call each. Returns every step's logits
    (B, steps + 1, V), the prefill's first, and the tokens (B, steps)."""
    logits, tokens = [logits], []
    for _ in range(steps):
        token = logits[-1].argmax(-1, keepdim=True)
        tokens.append(token)
        mask = torch.cat([mask, torch.ones_like(token)], dim=1)
        positions = positions[:, -1:] + 1
        logits.append(model(token, attention_mask=mask, position_ids=positions, cache=cache, logits_to_keep=1)[:, -1])
    return torch.stack(logits, dim=1), torch.cat(tokens, dim=1)


@pytest.mark.parametrize("cache_kind", ["dynamic", "static"])
def test_fastv_cached_decoding_equals_recomputing_the_pruned_sequence(model, cache_kind):
    batch, layer, budget, steps = _batch(), 2, 0.25, 4
    reduction = TokenReduction("fastv", budget, layer=layer)
    mask, prompt_length = batch["attention_mask"], batch["input_ids"].shape[1]
    cache = DynamicCache() if cache_kind == "dynamic" else StaticCache(prompt_length + steps)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = model(**batch, position_ids=positions, cache=cache, token_reduction=reduction,
                       logits_to_keep=1)[:, -1]
        state = pruned_layers(cache)
        # each row keeps a quarter of its image tokens (48 and 32) and all its text, left-padded to the longest
        assert state.kept_mask.sum(1).tolist() == [7 + 48 // 4, 7 + 32 // 4]
        assert cache.get_seq_length(0) == prompt_length and cache.get_seq_length(layer) == state.kept_mask.shape[1]
        logits, new = greedy_continue(model, logits, mask, positions, cache, steps - 1)
        oracle = _oracle_fastv_logits(model, batch, new, layer, budget)
        generated = model.generate(**batch, max_new_tokens=steps, cache=cache_kind, token_reduction=reduction)
    assert_close(logits, oracle, **TOL)
    assert torch.equal(generated[:, prompt_length:-1], new)


@pytest.mark.parametrize("kwargs,message", [
    (dict(method="attention", budget=0.0), r"budget 0.0 is outside \(0, 1\]"),
    (dict(method="attention", budget=1.5), r"budget 1.5 is outside \(0, 1\]"),
    (dict(method="merge", budget=0), "keeps no token"),
    (dict(method="prune", budget=0.5), "method 'prune' is unknown"),
    (dict(method="fastv", budget=0.5), "pass layer=K >= 1"),
    (dict(method="pool", budget=0.5, layer=2), "layer= applies to the in-LLM method 'fastv' only"),
    (dict(method="frame_difference", budget=0.5), "takes no budget"),
    (dict(method="attention", budget="half"), "fraction in \\(0, 1\\] or a token count"),
])
def test_bad_reductions_are_clear_errors(kwargs, message):
    with pytest.raises(InputError, match=message):
        TokenReduction(**kwargs)


def test_budget_larger_than_the_tokens_and_bad_layers_are_clear_errors(model):
    batch = _batch()
    with torch.no_grad():
        with pytest.raises(InputError, match="budget 17 is larger than the 16 visual tokens"):
            model(**batch, token_reduction=TokenReduction("attention", 17))
        with pytest.raises(InputError, match="fastv layer=3 must be below the decoder's 3 layers"):
            model(**batch, token_reduction=TokenReduction("fastv", 0.5, layer=3))
        with pytest.raises(InputError, match="compile=True"):
            model.generate(**batch, max_new_tokens=2, cache="static", compile=True,
                           token_reduction=TokenReduction("fastv", 0.5, layer=1))
        with pytest.raises(InputError, match="must be a zoo.vlm.TokenReduction"):
            model(**batch, token_reduction="attention")
