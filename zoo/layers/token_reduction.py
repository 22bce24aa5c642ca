"""Ways to hand fewer visual tokens to a language model.

Tokens of one image come as (B, N, D) in row-major grid order unless said otherwise. Each function returns what a
caller needs to keep masks and position ids in step with the tokens it keeps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from zoo.layers.rotary import apply_rotary


def pixel_shuffle_tokens(x: Tensor, scale_factor: int) -> Tensor:
    """Space-to-depth on a square grid of tokens, as in the SmolVLM / Idefics3 connector.

    (B, N, D) -> (B, N / r**2, D * r**2) with r = `scale_factor`. Output token (i, j) concatenates the r x r block
    of input tokens starting at (r*i, r*j): row offset outermost, then column offset, then channels.
    """
    if x.dim() != 3:
        raise ValueError(f"pixel_shuffle_tokens expects tokens of shape (B, N, D), got {tuple(x.shape)}")
    num_tokens = x.shape[1]
    side = math.isqrt(num_tokens)
    if side * side != num_tokens:
        raise ValueError(f"pixel_shuffle_tokens needs a square grid of tokens, got N={num_tokens} tokens")
    if side % scale_factor:
        raise ValueError(
            f"pixel_shuffle_tokens needs the grid side divisible by scale_factor={scale_factor}, "
            f"got a {side}x{side} grid"
        )
    return rearrange(x, "b (h a w c) d -> b (h w) (a c d)", a=scale_factor, c=scale_factor, w=side // scale_factor)


def downsample_token_grid(
    x: Tensor, grid_size: tuple[int, int], factor: int, mode: str = "avg"
) -> tuple[Tensor, tuple[int, int]]:
    """Shrinks an h x w grid of tokens (B, h*w, D) by `factor` on each side.

    `mode` is "avg" (average pooling over factor x factor blocks) or "bilinear" (`F.interpolate`, as Hulu-Med
    down-samples its encoder output by the merge size; equal to "avg" for factor 2). Returns the tokens
    (B, (h/factor) * (w/factor), D) and the new grid size.
    """
    height, width = grid_size
    if x.dim() != 3 or x.shape[1] != height * width:
        raise ValueError(
            f"downsample_token_grid expects tokens of shape (B, h*w={height * width}, D) for grid {grid_size}, "
            f"got {tuple(x.shape)}"
        )
    if height % factor or width % factor:
        raise ValueError(f"downsample_token_grid needs grid {grid_size} divisible by factor={factor}")
    new_size = (height // factor, width // factor)
    grid = rearrange(x, "b (h w) d -> b d h w", h=height)
    if mode == "avg":
        grid = F.avg_pool2d(grid, factor)
    elif mode == "bilinear":
        grid = F.interpolate(grid, size=new_size, mode="bilinear", align_corners=False)
    else:
        raise ValueError(f"downsample_token_grid mode must be 'avg' or 'bilinear', got {mode!r}")
    return rearrange(grid, "b d h w -> b (h w) d"), new_size


def frame_difference_mask(
    frames: Tensor, threshold: float = 0.1, min_tokens: int = 1, first_frame: str = "all"
) -> Tensor:
    """Which tokens of a clip survive Hulu-Med's (VideoLLaMA3's) pruning of tokens that did not change.

    `frames` (T, N, P) holds, for each frame, the P normalised pixel values under each of its N tokens (for Hulu-Med,
    `pixel_values.view(t, (h // m) * (w // m), -1)`). A token is kept when the mean absolute change of its pixels
    since the previous frame exceeds `threshold`, in the units of `frames` as in the original code (transformers'
    VideoLlama3 compares 255 times the change instead, so it keeps more). A frame keeping fewer than `min_tokens`
    tokens keeps its first `min_tokens`. `first_frame="all"` keeps the first frame whole (the evident intent);
    `first_frame="released"` does what Hulu-Med's released code does: it gives frame 0 the change `threshold + 1`
    and divides it by 255 like the others, so for thresholds above 1/254 frame 0 keeps only its first `min_tokens`.
    Returns a boolean mask (T, N).
    """
    if frames.dim() != 3:
        raise ValueError(f"frame_difference_mask expects frames of shape (T, N, P), got {tuple(frames.shape)}")
    frames = frames.float()
    change = (frames[1:] - frames[:-1]).abs().mean(dim=-1)
    if first_frame not in ("all", "released"):
        raise ValueError(f"frame_difference_mask first_frame must be 'all' or 'released', got {first_frame!r}")
    if first_frame == "released":  # the released arithmetic, rounding included: (change * 255) / 255
        change = change * 255 / 255
    first = torch.full((1, frames.shape[1]), (threshold + 1) / 255 if first_frame == "released" else math.inf,
                       device=frames.device)
    keep = torch.cat([first, change]) > threshold
    keep[keep.sum(dim=-1) < min_tokens, :min_tokens] = True
    return keep


@dataclass(frozen=True)
class TokenMerge:
    """Which of `num_tokens` output tokens each of N input tokens is merged into (see `bipartite_soft_matching`)."""

    assignment: Tensor  # (B, N) int64, output slot of each input token
    num_tokens: int

    def merge(self, x: Tensor, sizes: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Size-weighted average of the tokens sharing a slot.

        x (B, N, D) and `sizes` (B, N), the number of original tokens each stands for (ones if None), give
        (B, num_tokens, D) in the dtype of x and the merged sizes (B, num_tokens). Sums are taken in fp32.
        """
        if x.shape[:2] != self.assignment.shape:
            raise ValueError(
                f"TokenMerge.merge expects tokens of shape (B, N, D) with (B, N) = {tuple(self.assignment.shape)}, "
                f"got {tuple(x.shape)}"
            )
        sizes = torch.ones(x.shape[:2], device=x.device) if sizes is None else sizes.float()
        batch, _, dim = x.shape
        index = self.assignment.unsqueeze(-1).expand(-1, -1, dim)
        weighted = x.float() * sizes.unsqueeze(-1)
        totals = weighted.new_zeros(batch, self.num_tokens, dim).scatter_add(1, index, weighted)
        merged_sizes = sizes.new_zeros(batch, self.num_tokens).scatter_add(1, self.assignment, sizes)
        return (totals / merged_sizes.unsqueeze(-1)).to(x.dtype), merged_sizes

    def unmerge(self, merged: Tensor) -> Tensor:
        """Spreads merged tokens (B, num_tokens, D) back to (B, N, D): each input token gets its slot's value."""
        return merged.gather(1, self.assignment.unsqueeze(-1).expand(-1, -1, merged.shape[-1]))

    def after(self, earlier: TokenMerge) -> TokenMerge:
        """The merge from `earlier`'s inputs straight to this merge's outputs, to track sources over layers."""
        return TokenMerge(self.assignment.gather(1, earlier.assignment), self.num_tokens)


def bipartite_soft_matching(metric: Tensor, r: int, num_protected: int = 0) -> TokenMerge:
    """ToMe's bipartite soft matching: which tokens to merge to remove `r` of them.

    `metric` (B, N, C) is what similarity is measured on, e.g. the attention keys averaged over heads. Tokens at
    even positions are matched to their most cosine-similar token at an odd position, and the `r` best-matched ones
    are merged into their match. The first `num_protected` tokens (CLS, distillation or register tokens) are neither
    merged nor merged into. `r` is lowered to what that allows. The surviving tokens keep their relative order.
    """
    if metric.dim() != 3:
        raise ValueError(f"bipartite_soft_matching expects a metric of shape (B, N, C), got {tuple(metric.shape)}")
    batch, num_tokens, _ = metric.shape
    num_even, num_odd = (num_tokens + 1) // 2, num_tokens // 2
    protected_even, protected_odd = (num_protected + 1) // 2, num_protected // 2
    r = max(0, min(r, num_even - protected_even)) if num_odd > protected_odd else 0
    if r == 0:
        return TokenMerge(torch.arange(num_tokens, device=metric.device).expand(batch, -1), num_tokens)

    with torch.no_grad():
        metric = F.normalize(metric.float(), dim=-1)
        scores = metric[:, ::2] @ metric[:, 1::2].transpose(1, 2)
        scores[:, :protected_even] = -math.inf
        scores[:, :, :protected_odd] = -math.inf
        best_score, best_match = scores.max(dim=-1)
        merged_even = best_score.argsort(dim=-1, descending=True, stable=True)[:, :r]
        src = 2 * merged_even
        dst = 2 * best_match.gather(1, merged_even) + 1

        survives = torch.ones(batch, num_tokens, dtype=torch.bool, device=metric.device).scatter(1, src, False)
        slot = survives.cumsum(dim=1) - 1
        assignment = slot.scatter(1, src, slot.gather(1, dst))
    return TokenMerge(assignment, num_tokens - r)


class QueryCompressor(nn.Module):
    """Compresses a grid of tokens to `grid_size**2` tokens with one cross-attention from learned queries.

    This is LLaVA-Mini's compressor (the Qwen-VL resampler without its output norm and projection). The queries
    carry a fixed 2D sin-cos position embedding; the keys carry the same embedding resized bicubically to their
    grid. Takes (B, N, kv_dim) tokens of an h x w grid and returns (B, grid_size**2, embed_dim).
    """

    def __init__(
        self, grid_size: int, embed_dim: int, num_heads: int, kv_dim: int | None = None, norm_eps: float = 1e-5
    ):
        super().__init__()
        self.grid_size = grid_size
        self.query = nn.Parameter(torch.empty(grid_size**2, embed_dim))
        self.pos_embed = nn.Parameter(_sincos_pos_embed_2d(embed_dim, grid_size), requires_grad=False)
        if kv_dim is None or kv_dim == embed_dim:
            self.kv_proj = nn.Identity()
        else:
            self.kv_proj = nn.Linear(kv_dim, embed_dim, bias=False)
        self.ln_q = nn.LayerNorm(embed_dim, eps=norm_eps)
        self.ln_kv = nn.LayerNorm(embed_dim, eps=norm_eps)
        self.attn = nn.MultiheadAttention(embed_dim, num_heads, batch_first=True)
        nn.init.normal_(self.query, std=0.02)

    def forward(self, x: Tensor, key_grid: tuple[int, int] | None = None) -> Tensor:
        """`key_grid` is the (h, w) grid of the N input tokens; None means a square grid."""
        if x.dim() != 3:
            raise ValueError(f"QueryCompressor expects tokens of shape (B, N, kv_dim), got {tuple(x.shape)}")
        batch, num_keys, _ = x.shape
        if key_grid is None:
            side = math.isqrt(num_keys)
            if side * side != num_keys:
                raise ValueError(f"QueryCompressor got N={num_keys} tokens, not a square grid; pass key_grid=(h, w)")
            key_grid = (side, side)
        elif key_grid[0] * key_grid[1] != num_keys:
            raise ValueError(f"QueryCompressor got N={num_keys} tokens for key_grid={key_grid}")

        keys_values = self.ln_kv(self.kv_proj(x))
        queries = self.ln_q(self.query) + self.pos_embed
        out, _ = self.attn(
            queries.unsqueeze(0).expand(batch, -1, -1),
            keys_values + self._key_pos_embed(key_grid).to(keys_values.dtype),
            keys_values,
            need_weights=False,
        )
        return out

    def _key_pos_embed(self, key_grid: tuple[int, int]) -> Tensor:
        if key_grid == (self.grid_size, self.grid_size):
            return self.pos_embed
        grid = rearrange(self.pos_embed.float(), "(h w) d -> 1 d h w", h=self.grid_size)
        grid = F.interpolate(grid, size=key_grid, mode="bicubic", align_corners=False)
        return rearrange(grid, "1 d h w -> (h w) d")


def _sincos_pos_embed_2d(embed_dim: int, grid_size: int) -> Tensor:
    """MAE's fixed 2D sin-cos embedding (grid_size**2, embed_dim): column-index half first, then row-index half."""
    if embed_dim % 4:
        raise ValueError(f"a 2D sin-cos position embedding needs embed_dim divisible by 4, got {embed_dim}")
    quarter = embed_dim // 4
    frequencies = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    coordinates = torch.arange(grid_size, dtype=torch.float64)
    rows, cols = torch.meshgrid(coordinates, coordinates, indexing="ij")
    halves = []
    for coordinate in (cols, rows):
        angles = coordinate.reshape(-1, 1) * frequencies
        halves += [angles.sin(), angles.cos()]
    return torch.cat(halves, dim=1).float()


@dataclass(frozen=True)
class TokenSelection:
    """Tokens kept by `select_tokens_by_attention`; shorter rows are padded on the left with dropped tokens."""

    indices: Tensor  # (B, L') position in the input of each kept token, in order
    attention_mask: Tensor  # (B, L') bool, False on padding
    position_ids: Tensor  # (B, L') position ids the kept tokens had in the input

    def gather(self, x: Tensor) -> Tensor:
        """Picks the kept entries of a per-token tensor (B, L, ...) -> (B, L', ...)."""
        index = self.indices.view(*self.indices.shape, *([1] * (x.dim() - 2)))
        return x.gather(1, index.expand(-1, -1, *x.shape[2:]))


def select_tokens_by_attention(
    attention: Tensor,
    candidates: Tensor,
    budget: int | Tensor,
    attention_mask: Tensor | None = None,
    position_ids: Tensor | None = None,
) -> TokenSelection:
    """FastV-style pruning: keeps the `budget` candidate tokens that receive the most attention, and every other token.

    `budget` is one count for every row or a (B,) tensor of counts, one per row.
    `attention` is attention probabilities (B, heads, Lq, L), averaged over heads and queries (pass
    `attention[:, :, -1:]` to rank by the last query only), or per-token scores (B, L). `candidates` (B, L) marks the
    tokens that may be dropped, e.g. image tokens. Padding in `attention_mask` (B, L) is never a candidate and stays
    padding. Kept tokens stay in their input order and keep their `position_ids` (default 0..L-1); renumber them
    with `selection.attention_mask.cumsum(-1) - 1` if the model wants contiguous positions. Rows keeping fewer tokens
    than the longest are padded on the left, so each row's last token stays last.
    """
    if attention.dim() == 4:
        scores = attention.mean(dim=(1, 2), dtype=torch.float32)
    elif attention.dim() == 2:
        scores = attention.float()
    else:
        raise ValueError(
            f"select_tokens_by_attention expects attention (B, heads, Lq, L) or scores (B, L), "
            f"got {tuple(attention.shape)}"
        )
    if candidates.shape != scores.shape:
        raise ValueError(
            f"select_tokens_by_attention expects candidates of shape (B, L) = {tuple(scores.shape)}, "
            f"got {tuple(candidates.shape)}"
        )
    batch, length = scores.shape
    valid = torch.ones_like(candidates, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    candidates = candidates.bool() & valid
    if position_ids is None:
        position_ids = torch.arange(length, device=scores.device).expand(batch, -1)

    budget = torch.as_tensor(budget, device=scores.device).expand(batch)
    largest = max(0, min(int(budget.max()), length)) if batch else 0
    order = scores.masked_fill(~candidates, -math.inf).topk(largest, dim=-1).indices
    # top-k may reach non-candidates in rows with fewer than `budget` candidates; those are kept anyway
    in_budget = torch.arange(largest, device=scores.device) < budget.unsqueeze(1)
    keep = (~candidates).scatter(1, order, in_budget) | ~candidates
    num_kept = keep.sum(dim=1)
    kept_length = int(num_kept.max())
    dropped_first = keep.to(torch.int8).argsort(dim=1, stable=True)
    indices = dropped_first[:, length - kept_length :]
    in_row = torch.arange(kept_length, device=scores.device) >= (kept_length - num_kept).unsqueeze(1)
    return TokenSelection(
        indices=indices,
        attention_mask=in_row & valid.gather(1, indices),
        position_ids=position_ids.gather(1, indices),
    )


def attention_received(
    attention: nn.Module,
    x: Tensor,
    attn_mask: Tensor | None = None,
    rotary: tuple[Tensor, Tensor] | None = None,
    query: int | None = None,
) -> Tensor:
    """How much attention each token receives in one `zoo.layers.attention.Attention` layer: (B, L) in fp32.

    x (B, L, dim) is the layer's input (after its pre-norm); attn_mask (bool, broadcastable to (B, 1, Lq, L)) and
    rotary as the layer takes them. The softmax probabilities are averaged over heads and over every query, or taken
    from the one query at index `query` (e.g. -1: the last token, which in a causal model sees every key).
    Bidirectional attention only when `query` is None (the vision encoders').
    """
    q = attention.q_norm(attention.q_proj(x if query is None else x[:, query:][:, :1]))
    k = attention.k_norm(attention.k_proj(x))
    q, k = (rearrange(t, "b l (h d) -> b h l d", d=attention.head_dim) for t in (q, k))
    if rotary is not None:
        cos, sin = rotary
        q_rotary = (cos, sin) if query is None else (cos[:, query:][:, :1], sin[:, query:][:, :1])
        q = apply_rotary(q, *q_rotary, interleaved=attention.rotary_interleaved)
        k = apply_rotary(k, *rotary, interleaved=attention.rotary_interleaved)
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    scores = torch.einsum("bhqd,bhkd->bhqk", q.float(), k.float()) * attention.head_dim**-0.5
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask[..., -1:, :] if query is not None else ~attn_mask, -math.inf)
    return scores.softmax(dim=-1).nan_to_num(0.0).mean(dim=(1, 2))


def resize_token_grid(x: Tensor, grid_size: tuple[int, int], new_size: tuple[int, int], mode: str = "avg") -> Tensor:
    """An h x w grid of tokens (B, h*w, D) resized to `new_size`: "avg" (adaptive average pooling, the regions of
    `F.adaptive_avg_pool2d`) or "bilinear" (`F.interpolate`, no antialiasing, half-pixel centres). -> (B, h'*w', D)."""
    height, width = grid_size
    if x.dim() != 3 or x.shape[1] != height * width:
        raise ValueError(f"resize_token_grid expects tokens of shape (B, h*w={height * width}, D) for grid "
                         f"{grid_size}, got {tuple(x.shape)}")
    if tuple(new_size) == (height, width):
        return x
    grid = rearrange(x, "b (h w) d -> b d h w", h=height)
    if mode == "avg":
        grid = F.adaptive_avg_pool2d(grid.float(), new_size).to(x.dtype)
    elif mode == "bilinear":
        grid = F.interpolate(grid, size=tuple(new_size), mode="bilinear", align_corners=False)
    else:
        raise ValueError(f"resize_token_grid mode must be 'avg' or 'bilinear', got {mode!r}")
    return rearrange(grid, "b d h w -> b (h w) d")


def keep_top_tokens(x: Tensor, scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """HiRED-style dropping: the `k` tokens of each row with the highest scores, in their input order.

    x (B, N, D), scores (B, N) -> tokens (B, k, D) and their indices (B, k), ascending. Ties go to the earlier token.
    """
    if x.dim() != 3 or scores.shape != x.shape[:2]:
        raise ValueError(f"keep_top_tokens expects tokens (B, N, D) and scores (B, N), got {tuple(x.shape)} and "
                         f"{tuple(scores.shape)}")
    if not 0 < k <= x.shape[1]:
        raise ValueError(f"keep_top_tokens keeps 1..N={x.shape[1]} tokens, got k={k}")
    order = scores.float().argsort(dim=-1, descending=True, stable=True)[:, :k]
    indices = order.sort(dim=-1).values
    return x.gather(1, indices.unsqueeze(-1).expand(-1, -1, x.shape[-1])), indices


def merge_tokens(x: Tensor, k: int, metric: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """ToMe-style merging of each row of x (B, N, D) down to `k` tokens by rounds of `bipartite_soft_matching`
    (one round removes at most half), size-weighted so a merged token is the mean of the tokens it stands for.

    `metric` (B, N, C) is what similarity is measured on (default: x). Returns (B, k, D) and the sizes (B, k).
    """
    if x.dim() != 3:
        raise ValueError(f"merge_tokens expects tokens of shape (B, N, D), got {tuple(x.shape)}")
    if not 0 < k <= x.shape[1]:
        raise ValueError(f"merge_tokens keeps 1..N={x.shape[1]} tokens, got k={k}")
    sizes = None
    while x.shape[1] > k:
        merge = bipartite_soft_matching(x if metric is None else metric, x.shape[1] - k)
        if metric is not None:
            metric, _ = merge.merge(metric, sizes)
        x, sizes = merge.merge(x, sizes)
    return x, torch.ones(x.shape[:2], device=x.device) if sizes is None else sizes
