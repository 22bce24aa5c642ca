"""Token reduction: pixel shuffle (parity with transformers' Idefics3 connector), grid pooling and bilinear
down-sampling, frame-difference pruning (Hulu-Med semantics, checked against transformers' VideoLLaMA3 with the
/255 accounted for), ToMe merging against an O(N^2) reference, LLaVA-Mini's query compressor against a hand-written
composition with nn.MultiheadAttention, and FastV-style top-k selection."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.testing import assert_close

from zoo.layers.token_reduction import (
    QueryCompressor,
    attention_received,
    bipartite_soft_matching,
    downsample_token_grid,
    frame_difference_mask,
    keep_top_tokens,
    merge_tokens,
    pixel_shuffle_tokens,
    resize_token_grid,
    select_tokens_by_attention,
)

EXACT = dict(rtol=0, atol=0)
TOL = dict(rtol=1e-5, atol=1e-6)
FAST = settings(max_examples=25, deadline=None)


def _seeded(draw):
    torch.manual_seed(draw(st.integers(0, 2**16)))


# ----------------------------------------------------------------------------------------------------
# pixel shuffle


@FAST
@given(st.data())
def test_pixel_shuffle_matches_transformers_idefics3(data):
    from transformers.models.idefics3.modeling_idefics3 import Idefics3Connector

    scale = data.draw(st.integers(1, 4))
    side = scale * data.draw(st.integers(1, 4))
    _seeded(data.draw)
    x = torch.randn(data.draw(st.integers(1, 2)), side * side, data.draw(st.integers(1, 5)))
    assert_close(pixel_shuffle_tokens(x, scale), Idefics3Connector.pixel_shuffle(None, x, scale), **EXACT)


def test_pixel_shuffle_layout_row_offset_then_column_offset_then_channels():
    x = torch.arange(16.0).view(1, 16, 1)  # token id = its row-major index on a 4x4 grid
    out = pixel_shuffle_tokens(x, 2)
    assert out.shape == (1, 4, 4)
    assert out[0].tolist() == [[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15]]


def test_pixel_shuffle_errors_name_the_grid():
    with pytest.raises(ValueError, match="square grid of tokens, got N=12"):
        pixel_shuffle_tokens(torch.zeros(1, 12, 4), 2)
    with pytest.raises(ValueError, match="divisible by scale_factor=2, got a 5x5 grid"):
        pixel_shuffle_tokens(torch.zeros(1, 25, 4), 2)
    with pytest.raises(ValueError, match=r"\(B, N, D\), got \(16, 4\)"):
        pixel_shuffle_tokens(torch.zeros(16, 4), 2)


# ----------------------------------------------------------------------------------------------------
# pooling and bilinear down-sampling


@FAST
@given(st.data())
def test_downsample_matches_torch_on_non_square_grids(data):
    factor = data.draw(st.integers(1, 3))
    height, width = factor * data.draw(st.integers(1, 4)), factor * data.draw(st.integers(1, 5))
    mode = data.draw(st.sampled_from(["avg", "bilinear"]))
    _seeded(data.draw)
    grid = torch.randn(data.draw(st.integers(1, 2)), 3, height, width)
    tokens = grid.flatten(2).transpose(1, 2)
    if mode == "avg":
        expected = F.avg_pool2d(grid, factor)
    else:
        expected = F.interpolate(grid, size=(height // factor, width // factor), mode="bilinear", align_corners=False)
    out, new_size = downsample_token_grid(tokens, (height, width), factor, mode)
    assert new_size == (height // factor, width // factor)
    assert_close(out, expected.flatten(2).transpose(1, 2), **EXACT)


def test_bilinear_by_two_is_average_pooling():
    tokens = torch.randn(2, 6 * 4, 5)
    bilinear, _ = downsample_token_grid(tokens, (6, 4), 2, "bilinear")
    average, _ = downsample_token_grid(tokens, (6, 4), 2, "avg")
    assert_close(bilinear, average, rtol=0, atol=1e-6)


def test_downsample_errors():
    with pytest.raises(ValueError, match=r"\(B, h\*w=24, D\) for grid \(4, 6\), got \(1, 20, 3\)"):
        downsample_token_grid(torch.zeros(1, 20, 3), (4, 6), 2)
    with pytest.raises(ValueError, match=r"grid \(4, 6\) divisible by factor=4"):
        downsample_token_grid(torch.zeros(1, 24, 3), (4, 6), 4)
    with pytest.raises(ValueError, match="'avg' or 'bilinear', got 'bicubic'"):
        downsample_token_grid(torch.zeros(1, 24, 3), (4, 6), 2, "bicubic")


# ----------------------------------------------------------------------------------------------------
# frame-difference pruning


def test_frame_difference_hand_example():
    frames = torch.tensor(
        [
            [[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]],
            [[0.2, 0.2], [1.05, 1.05], [2.0, 2.3]],  # mean changes 0.2, 0.05, 0.15
            [[0.2, 0.2], [1.05, 1.05], [2.0, 2.3]],  # no change: only the first token survives
        ]
    )
    assert frame_difference_mask(frames).tolist() == [[True, True, True], [True, False, True], [True, False, False]]
    assert frame_difference_mask(frames, threshold=0.16).tolist() == [
        [True, True, True],
        [True, False, False],
        [True, False, False],
    ]
    assert frame_difference_mask(frames, min_tokens=2)[2].tolist() == [True, True, False]
    assert frame_difference_mask(frames[:1]).tolist() == [[True, True, True]]


@FAST
@given(st.data())
def test_frame_difference_matches_videollama3_with_threshold_times_255(data):
    from transformers.models.video_llama_3.video_processing_video_llama_3 import VideoLlama3VideoProcessor

    merge = data.draw(st.integers(1, 2))
    t, h, w = data.draw(st.integers(1, 4)), merge * data.draw(st.integers(1, 3)), merge * data.draw(st.integers(1, 3))
    patch_values, threshold, min_tokens = 12, 0.1, data.draw(st.integers(1, 3))
    _seeded(data.draw)
    num_tokens = (h // merge) * (w // merge)
    # per-token change sizes straddle the threshold; rows are merge blocks of patches, as the processor lays them out
    steps = torch.rand(t, num_tokens, 1) * 0.3 * torch.randn(t, num_tokens, merge * merge * patch_values).sign()
    pixel_values = steps.cumsum(0).reshape(t * h * w, patch_values)
    ours = frame_difference_mask(pixel_values.view(t, num_tokens, -1), threshold, min_tokens)
    theirs = VideoLlama3VideoProcessor._get_compression_mask(
        None, pixel_values, torch.tensor([[t, h, w]]), torch.tensor([merge]), threshold * 255, min_tokens
    )
    assert torch.equal(ours.flatten(), theirs)


def test_frame_difference_error_names_shape():
    with pytest.raises(ValueError, match=r"\(T, N, P\), got \(4, 5\)"):
        frame_difference_mask(torch.zeros(4, 5))


# ----------------------------------------------------------------------------------------------------
# ToMe bipartite soft matching


def _tome_reference(x, metric, sizes, r, num_protected):
    """O(N^2) loops: even tokens pick their most cosine-similar odd token, the r best pairs merge (weighted mean)."""
    batch, length, _ = x.shape
    tokens, merged_sizes = [], []
    for b in range(batch):
        unit = metric[b].double() / metric[b].double().norm(dim=-1, keepdim=True)
        sources = [i for i in range(0, length, 2) if i >= num_protected]
        targets = [j for j in range(1, length, 2) if j >= num_protected]
        best = {i: max((float(unit[i] @ unit[j]), j) for j in targets) for i in sources} if targets else {}
        chosen = sorted(best, key=lambda i: -best[i][0])[:r]
        groups = {k: [k] for k in range(length) if k not in chosen}
        for i in chosen:
            groups[best[i][1]].append(i)
        weights = [sum(sizes[b, k] for k in groups[g]) for g in sorted(groups)]
        tokens.append(
            torch.stack(
                [
                    sum(x[b, k] * sizes[b, k] for k in groups[g]) / w
                    for g, w in zip(sorted(groups), weights, strict=True)
                ]
            )
        )
        merged_sizes.append(torch.stack(weights))
    return torch.stack(tokens), torch.stack(merged_sizes)


@FAST
@given(st.data())
def test_tome_matches_reference_and_preserves_size(data):
    batch, length = data.draw(st.integers(1, 2)), data.draw(st.integers(1, 13))
    r, num_protected = data.draw(st.integers(0, 8)), data.draw(st.integers(0, 2))
    _seeded(data.draw)
    x, metric = torch.randn(batch, length, 3), torch.randn(batch, length, 6)
    sizes = torch.randint(1, 4, (batch, length)).float()

    merge = bipartite_soft_matching(metric, r, num_protected)
    tokens, new_sizes = merge.merge(x, sizes)
    ref_tokens, ref_sizes = _tome_reference(x, metric, sizes, r, num_protected)

    possible = (length + 1) // 2 - (num_protected + 1) // 2 if length // 2 > num_protected // 2 else 0
    assert merge.num_tokens == length - min(r, max(possible, 0)) == ref_tokens.shape[1]
    assert_close(tokens, ref_tokens.float(), rtol=0, atol=1e-5)
    assert_close(new_sizes, ref_sizes.float(), **EXACT)
    assert new_sizes.sum() == sizes.sum()
    assert_close((tokens * new_sizes[..., None]).sum(1), (x * sizes[..., None]).sum(1), rtol=0, atol=1e-4)
    protected = min(num_protected, length)
    assert_close(tokens[:, :protected], x[:, :protected], rtol=0, atol=1e-6)


def test_tome_unmerge_and_chained_sources():
    torch.manual_seed(0)
    x = torch.randn(2, 11, 4)
    first = bipartite_soft_matching(x, 4, num_protected=1)
    merged, sizes = first.merge(x)
    second = bipartite_soft_matching(merged, 2, num_protected=1)
    twice, twice_sizes = second.merge(merged, sizes)

    unmerged = first.unmerge(merged)
    assert unmerged.shape == x.shape
    assert_close(unmerged, merged.gather(1, first.assignment[..., None].expand(-1, -1, 4)), **EXACT)
    combined = second.after(first)
    once, once_sizes = combined.merge(x)
    assert_close(once, twice, rtol=0, atol=1e-6)
    assert_close(once_sizes, twice_sizes, **EXACT)
    assert twice_sizes.sum(1).tolist() == [11, 11]


def test_tome_merge_keeps_dtype_and_sums_sizes_in_fp32():
    x = torch.randn(1, 600, 8, dtype=torch.bfloat16)
    merge = bipartite_soft_matching(x, 299)
    tokens, sizes = merge.merge(x, torch.full((1, 600), 3.0, dtype=torch.bfloat16))
    assert tokens.dtype == torch.bfloat16 and sizes.dtype == torch.float32
    assert sizes.sum().item() == 1800


def test_tome_zero_r_is_identity_and_errors_name_shapes():
    x = torch.randn(1, 5, 3)
    merge = bipartite_soft_matching(x, 0)
    assert merge.num_tokens == 5
    assert_close(merge.merge(x)[0], x, **EXACT)
    with pytest.raises(ValueError, match=r"\(B, N, C\), got \(5, 3\)"):
        bipartite_soft_matching(x[0], 2)
    with pytest.raises(ValueError, match=r"\(B, N\) = \(1, 5\), got \(1, 4, 3\)"):
        merge.merge(x[:, :4])


# ----------------------------------------------------------------------------------------------------
# LLaVA-Mini query compressor


def _mae_sincos(dim, grid):
    """MAE's 2D sin-cos table from its formula: first half encodes the column index, second half the row index."""

    def one_axis(half, positions):
        omega = 1.0 / 10000 ** (np.arange(half // 2) / (half / 2))
        angles = np.outer(positions, omega)
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    cols, rows = np.meshgrid(np.arange(grid), np.arange(grid))
    return torch.from_numpy(np.concatenate([one_axis(dim // 2, cols.ravel()), one_axis(dim // 2, rows.ravel())], 1))


def test_query_compressor_state_dict_and_c1_pos_embed():
    compressor = QueryCompressor(grid_size=1, embed_dim=1024, num_heads=8)
    assert compressor.pos_embed.tolist() == [[0.0] * 256 + [1.0] * 256 + [0.0] * 256 + [1.0] * 256]
    assert not compressor.pos_embed.requires_grad
    shapes = {k: tuple(v.shape) for k, v in compressor.state_dict().items()}
    assert shapes == {
        "query": (1, 1024),
        "pos_embed": (1, 1024),
        "ln_q.weight": (1024,),
        "ln_q.bias": (1024,),
        "ln_kv.weight": (1024,),
        "ln_kv.bias": (1024,),
        "attn.in_proj_weight": (3072, 1024),
        "attn.in_proj_bias": (3072,),
        "attn.out_proj.weight": (1024, 1024),
        "attn.out_proj.bias": (1024,),
    }
    assert "kv_proj.weight" in QueryCompressor(2, 64, 4, kv_dim=48).state_dict()


@pytest.mark.parametrize("grid_size", [2, 3])
def test_query_compressor_pos_embed_follows_mae_formula(grid_size):
    compressor = QueryCompressor(grid_size=grid_size, embed_dim=32, num_heads=4)
    assert_close(compressor.pos_embed, _mae_sincos(32, grid_size).float(), rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("grid_size", "embed_dim", "kv_dim", "key_grid", "batch"),
    [(1, 1024, None, (24, 24), 1), (2, 64, 48, (6, 6), 2), (3, 32, None, (4, 7), 2), (2, 32, None, (2, 2), 1)],
)
def test_query_compressor_matches_hand_written_multihead_attention(grid_size, embed_dim, kv_dim, key_grid, batch):
    torch.manual_seed(0)
    compressor = QueryCompressor(grid_size, embed_dim, num_heads=4 if embed_dim < 1024 else 8, kv_dim=kv_dim).eval()
    with torch.no_grad():
        for norm in (compressor.ln_q, compressor.ln_kv):
            norm.weight.normal_(1.0, 0.1)
            norm.bias.normal_(0.0, 0.1)
    x = torch.randn(batch, key_grid[0] * key_grid[1], kv_dim or embed_dim)

    reference = nn.MultiheadAttention(embed_dim, compressor.attn.num_heads, batch_first=True).eval()
    reference.load_state_dict(compressor.attn.state_dict())
    kv = x if kv_dim is None else x @ compressor.kv_proj.weight.T
    kv = F.layer_norm(kv, (embed_dim,), compressor.ln_kv.weight, compressor.ln_kv.bias, 1e-5)
    query = F.layer_norm(compressor.query, (embed_dim,), compressor.ln_q.weight, compressor.ln_q.bias, 1e-5)
    query_pos = compressor.pos_embed.view(1, grid_size, grid_size, embed_dim).permute(0, 3, 1, 2)
    key_pos = F.interpolate(query_pos, size=key_grid, mode="bicubic", align_corners=False)
    key_pos = key_pos.permute(0, 2, 3, 1).reshape(-1, embed_dim)
    with torch.no_grad():
        expected, _ = reference((query + compressor.pos_embed).expand(batch, -1, -1), kv + key_pos, kv)
        square = key_grid[0] == key_grid[1]
        out = compressor(x) if square else compressor(x, key_grid=key_grid)
    assert out.shape == (batch, grid_size**2, embed_dim)
    assert_close(out, expected, rtol=0, atol=1e-5)


def test_query_compressor_errors_name_shapes():
    compressor = QueryCompressor(2, 32, 4)
    with pytest.raises(ValueError, match=r"N=12 tokens, not a square grid; pass key_grid"):
        compressor(torch.zeros(1, 12, 32))
    with pytest.raises(ValueError, match=r"N=12 tokens for key_grid=\(3, 5\)"):
        compressor(torch.zeros(1, 12, 32), key_grid=(3, 5))
    with pytest.raises(ValueError, match=r"\(B, N, kv_dim\), got \(12, 32\)"):
        compressor(torch.zeros(12, 32))
    with pytest.raises(ValueError, match="divisible by 4, got 30"):
        QueryCompressor(2, 30, 3)


# ----------------------------------------------------------------------------------------------------
# FastV-style attention-score selection


def _expected_kept(scores, candidates, budget):
    ranked = sorted((i for i in range(len(scores)) if candidates[i]), key=lambda i: -scores[i])
    top = set(ranked[:budget])
    return [i for i in range(len(scores)) if not candidates[i] or i in top]


@FAST
@given(st.data())
def test_selection_keeps_the_budget_in_order(data):
    batch, length = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 12))
    budget = data.draw(st.integers(0, 14))
    candidates = torch.tensor(
        data.draw(st.lists(st.lists(st.booleans(), min_size=length, max_size=length), min_size=batch, max_size=batch))
    )
    _seeded(data.draw)
    attention = torch.rand(batch, 2, 3, length).softmax(-1)
    position_ids = torch.randint(0, 100, (batch, length))
    selection = select_tokens_by_attention(attention, candidates, budget, position_ids=position_ids)

    scores = attention.mean(dim=(1, 2))
    kept = [_expected_kept(scores[b].tolist(), candidates[b].tolist(), budget) for b in range(batch)]
    assert selection.indices.shape[1] == max(len(k) for k in kept)
    for b, row in enumerate(kept):
        padding = selection.indices.shape[1] - len(row)
        assert selection.attention_mask[b].tolist() == [False] * padding + [True] * len(row)
        assert selection.indices[b, padding:].tolist() == row
        assert selection.position_ids[b, padding:].tolist() == position_ids[b, row].tolist()
        assert sum(candidates[b, row].tolist()) == min(budget, int(candidates[b].sum()))
    hidden = torch.randn(batch, length, 5)
    assert_close(selection.gather(hidden), hidden.gather(1, selection.indices[..., None].expand(-1, -1, 5)), **EXACT)


def test_selection_from_scores_with_padding():
    scores = torch.tensor([[0.0, 0.9, 0.1, 0.5, 0.3, 0.0], [0.2, 0.1, 0.4, 0.3, 0.0, 0.0]])
    candidates = torch.tensor([[0, 1, 1, 1, 1, 0], [0, 1, 1, 1, 1, 1]], dtype=torch.bool)
    attention_mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    selection = select_tokens_by_attention(scores, candidates, 2, attention_mask=attention_mask)
    assert selection.indices[0, -4:].tolist() == [0, 1, 3, 5]
    assert selection.indices[1].tolist() == [0, 2, 3, 4, 5]
    assert selection.attention_mask.tolist() == [[False, True, True, True, True], [True, True, True, False, False]]
    assert selection.position_ids[1].tolist() == [0, 2, 3, 4, 5]
    renumbered = selection.attention_mask.cumsum(-1) - 1
    assert renumbered[0, 1:].tolist() == [0, 1, 2, 3]


def test_selection_errors_name_shapes():
    with pytest.raises(ValueError, match=r"\(B, heads, Lq, L\) or scores \(B, L\), got \(2, 3, 4\)"):
        select_tokens_by_attention(torch.zeros(2, 3, 4), torch.zeros(2, 4, dtype=torch.bool), 1)
    with pytest.raises(ValueError, match=r"candidates of shape \(B, L\) = \(2, 4\), got \(2, 5\)"):
        select_tokens_by_attention(torch.zeros(2, 1, 1, 4), torch.zeros(2, 5, dtype=torch.bool), 1)


def test_selection_empty_candidates_keeps_everything():
    selection = select_tokens_by_attention(torch.rand(1, 7), torch.zeros(1, 7, dtype=torch.bool), 3)
    assert selection.indices.tolist() == [list(range(7))]
    assert selection.attention_mask.all()
    assert selection.position_ids.tolist() == [list(range(7))]


def test_selection_takes_a_budget_per_row():
    scores = torch.tensor([[0.1, 0.5, 0.2, 0.9, 0.0], [0.3, 0.2, 0.1, 0.4, 0.0]])
    candidates = torch.tensor([[0, 1, 1, 1, 0], [0, 1, 1, 1, 0]], dtype=torch.bool)
    selection = select_tokens_by_attention(scores, candidates, torch.tensor([2, 0]))
    assert selection.indices[0].tolist() == [0, 1, 3, 4]
    assert selection.indices[1, -2:].tolist() == [0, 4]
    assert selection.attention_mask.tolist() == [[True] * 4, [False, False, True, True]]


# ----------------------------------------------------------------------------------------------------
# Before-LLM reduction helpers: grid resizing, top-k dropping, merging to a count, attention received


def test_resize_token_grid_pools_like_torch_and_keeps_a_same_size_grid():
    x = torch.randn(2, 6 * 4, 5)
    grid = rearrange(x, "b (h w) d -> b d h w", h=6)
    expected = rearrange(F.avg_pool2d(grid, 2), "b d h w -> b (h w) d")
    assert_close(resize_token_grid(x, (6, 4), (3, 2)), expected, rtol=1e-6, atol=1e-6)
    expected = rearrange(F.interpolate(grid, size=(4, 3), mode="bilinear"), "b d h w -> b (h w) d")
    assert_close(resize_token_grid(x, (6, 4), (4, 3), "bilinear"), expected, **EXACT)
    assert resize_token_grid(x, (6, 4), (6, 4)) is x
    with pytest.raises(ValueError, match="mode must be 'avg' or 'bilinear'"):
        resize_token_grid(x, (6, 4), (3, 2), "nearest")


def test_keep_top_tokens_keeps_order_and_errors():
    x = torch.arange(10.0).view(1, 5, 2)
    kept, indices = keep_top_tokens(x, torch.tensor([[0.3, 0.1, 0.9, 0.3, 0.5]]), 3)
    assert indices.tolist() == [[0, 2, 4]]
    assert kept.tolist() == [[[0.0, 1.0], [4.0, 5.0], [8.0, 9.0]]]
    with pytest.raises(ValueError, match=r"keeps 1..N=5 tokens, got k=6"):
        keep_top_tokens(x, torch.zeros(1, 5), 6)


@pytest.mark.parametrize("n,k", [(16, 4), (9, 1), (7, 7), (12, 5)])
def test_merge_tokens_reaches_the_count_and_keeps_the_size_weighted_sum(n, k):
    torch.manual_seed(n + k)
    x = torch.randn(3, n, 6)
    merged, sizes = merge_tokens(x, k)
    assert merged.shape == (3, k, 6) and sizes.shape == (3, k)
    assert_close(sizes.sum(1), torch.full((3,), float(n)))
    assert_close((merged * sizes[..., None]).sum(1), x.sum(1), rtol=1e-5, atol=1e-5)
    if k == n:
        assert_close(merged, x, **EXACT)


def test_attention_received_matches_hand_written_softmax():
    from zoo.layers.attention import Attention
    from zoo.layers.rotary import RotaryEmbedding

    torch.manual_seed(0)
    attention = Attention(16, 4, 2, qkv_bias=True)
    x = torch.randn(2, 6, 16)
    cos, sin = RotaryEmbedding(4, 10000.0)(torch.arange(6).expand(2, -1))
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]], dtype=torch.bool)[:, None, None, :]
    q = rearrange(attention.q_proj(x), "b l (h d) -> b h l d", h=4)
    k = rearrange(attention.k_proj(x), "b l (h d) -> b h l d", h=2).repeat_interleave(2, dim=1)

    def rotate(t):
        first, second = t.chunk(2, dim=-1)
        cos2, sin2 = torch.cat([cos, cos], -1)[:, None], torch.cat([sin, sin], -1)[:, None]
        return t * cos2 + torch.cat([-second, first], -1) * sin2

    probs = (rotate(q) @ rotate(k).transpose(-1, -2) / 2.0).masked_fill(~mask, -math.inf).softmax(-1)
    assert_close(attention_received(attention, x, mask, (cos, sin), query=-1), probs[:, :, -1].mean(1), **TOL)
    plain = (q @ k.transpose(-1, -2) / 2.0).softmax(-1).mean(dim=(1, 2))
    assert_close(attention_received(attention, x), plain, **TOL)
