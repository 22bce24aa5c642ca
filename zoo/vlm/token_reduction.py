"""Training-free visual token reduction, one interface for every VLM family.

`TokenReduction(method, budget, layer=None)` is passed as `token_reduction=` to a family's `forward` and `generate`:

    model.generate(**inputs, token_reduction=TokenReduction("attention", 0.25))

Methods acting before the LLM (per tile, image part or frame: each partition keeps its own share):
  "pool", "bilinear": the token grid resized to side round(side * sqrt(budget)) (adaptive average pooling or
      bilinear interpolation), before the connector; the kept count is that square.
  "attention": HiRED-style dropping; each partition keeps the round(budget * n) tokens that receive the most
      attention in the vision encoder's last layer.
  "merge": ToMe-style bipartite merging of each partition down to round(budget * n) size-weighted means.
  "frame_difference": for video, a token is kept when the mean absolute change of its pixels since the previous
      frame exceeds `threshold`; frame 0 whole and at least one token per frame (no budget).
Acting inside the LLM:
  "fastv": after decoder layer `layer`, only round(budget * n) of the n visual tokens of each prompt go on: those
      the last prompt token attends to most in layer `layer - 1` (averaged over heads). Earlier layers and their KV
      cache keep the whole sequence; later ones keep the pruned one, with the positions the tokens had.

Before the LLM, the dropped tokens' `<image>` placeholders leave the prompt (each row re-padded on its padded side)
and positions are renumbered without gaps; logits then cover the shortened sequence. `budget` is a fraction in
(0, 1] or a count (int >= 1) per partition; at least one token is always kept.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import weakref
from collections.abc import Iterator
from typing import Literal

from einops import rearrange

import torch
from torch import nn

from zoo.backbones.llama import decoder_inputs
from zoo.errors import InputError
from zoo.layers.attention import padding_mask
from zoo.layers.token_reduction import (
    attention_received, frame_difference_mask, keep_top_tokens, merge_tokens, pixel_shuffle_tokens, resize_token_grid,
    select_tokens_by_attention,
)

Method = Literal["pool", "bilinear", "attention", "merge", "frame_difference", "fastv"]
METHODS = ("pool", "bilinear", "attention", "merge", "frame_difference", "fastv")
BEFORE_LLM = ("pool", "bilinear", "attention", "merge", "frame_difference")


@dataclasses.dataclass(frozen=True)
class TokenReduction:
    """Which visual tokens a VLM keeps; see the module docstring for each method's rule."""

    method: Method
    budget: float | int = 1.0
    layer: int | None = None
    threshold: float = 0.1

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise InputError(f"token reduction method {self.method!r} is unknown; use one of {', '.join(METHODS)}")
        budget = self.budget
        if isinstance(budget, bool) or not isinstance(budget, (int, float)):
            raise InputError(f"token reduction budget must be a fraction in (0, 1] or a token count, got {budget!r}")
        if isinstance(budget, float) and not 0 < budget <= 1:
            raise InputError(f"token reduction budget {budget} is outside (0, 1]; pass the fraction of visual tokens "
                             "to keep (e.g. 0.25), or an int count of tokens")
        if isinstance(budget, int) and budget < 1:
            raise InputError(f"token reduction budget {budget} keeps no token; pass a count >= 1 or a fraction in "
                             "(0, 1]")
        if self.method == "frame_difference" and (budget != 1.0 or isinstance(budget, int)):
            raise InputError("frame_difference keeps the tokens that changed by more than `threshold`; it takes no "
                             "budget (leave budget at 1.0)")
        if not 0 < self.threshold < math.inf:
            raise InputError(f"token reduction threshold must be positive, got {self.threshold}")
        if self.method == "fastv":
            if isinstance(self.layer, bool) or not isinstance(self.layer, int) or self.layer < 1:
                raise InputError(f"fastv prunes after a decoder layer: pass layer=K >= 1 (e.g. 2), got {self.layer!r}")
        elif self.layer is not None:
            raise InputError(f"layer= applies to the in-LLM method 'fastv' only, not to {self.method!r}")

    @classmethod
    def parse(cls, spec: str) -> TokenReduction:
        """From text, as `zoo bench --token-reduction` takes it: METHOD[:BUDGET][:layer=K][:threshold=T], e.g.
        "attention:0.25", "merge:16" (a count), "fastv:0.5:layer=2", "frame_difference:threshold=0.05"."""
        method, *fields = spec.split(":")
        options: dict[str, object] = {}
        try:
            for field in fields:
                name, _, value = field.rpartition("=")
                if name == "layer":
                    options["layer"] = int(value)
                elif name == "threshold":
                    options["threshold"] = float(value)
                elif not name and "budget" not in options:
                    options["budget"] = float(value) if "." in value or "e" in value else int(value)
                else:
                    raise ValueError(field)
        except ValueError as error:
            raise InputError(f"token reduction {spec!r} cannot be read ({error}); write METHOD[:BUDGET][:layer=K]"
                             "[:threshold=T], e.g. attention:0.25 or fastv:0.5:layer=2") from None
        return cls(method, **options)

    def describe(self) -> str:
        """The spec `parse` reads back."""
        parts = [self.method] + ([str(self.budget)] if self.method != "frame_difference" else [])
        parts += [f"layer={self.layer}"] if self.layer is not None else []
        parts += [f"threshold={self.threshold}"] if self.method == "frame_difference" else []
        return ":".join(parts)

    def kept(self, num_tokens: int) -> int:
        """How many of a partition's `num_tokens` tokens survive ("attention", "merge", "fastv")."""
        if isinstance(self.budget, int):
            if self.budget > num_tokens:
                raise InputError(f"token reduction budget {self.budget} is larger than the {num_tokens} visual "
                                 "tokens it applies to; pass at most that many, or a fraction")
            return self.budget
        return max(1, min(num_tokens, round(self.budget * num_tokens)))

    def grid_side(self, side: int) -> int:
        """The side a square grid of `side` x `side` tokens is resized to ("pool", "bilinear")."""
        if isinstance(self.budget, int):
            return math.isqrt(self.kept(side * side))
        return max(1, round(side * math.sqrt(self.budget)))

    def grid_shape(self, height: int, width: int) -> tuple[int, int]:
        """The size an h x w grid of tokens is resized to ("pool", "bilinear"): each side scaled by sqrt(budget), a
        count budget taken as its fraction of h * w."""
        fraction = self.kept(height * width) / (height * width) if isinstance(self.budget, int) else self.budget
        return max(1, round(height * math.sqrt(fraction))), max(1, round(width * math.sqrt(fraction)))

    def grid_kept(self, height: int, width: int) -> int:
        """Tokens an h x w partition keeps under "pool", "bilinear", "attention" or "merge"."""
        if self.method in ("pool", "bilinear"):
            return math.prod(self.grid_shape(height, width))
        return self.kept(height * width)

    def check_family(self, family: str, supported: tuple[str, ...]) -> None:
        if self.method not in supported:
            raise InputError(f"token reduction {self.method!r} does not apply to {family}; it supports "
                             f"{', '.join(supported)}")


def as_reduction(value: TokenReduction | None, generate_options: dict | None = None) -> TokenReduction | None:
    """`value` checked to be a TokenReduction or None (and, for fastv, that `generate` is not asked to compile)."""
    if value is not None and not isinstance(value, TokenReduction):
        raise InputError(f"token_reduction must be a zoo.vlm.TokenReduction, got {type(value).__name__}")
    if value is not None and value.method == "fastv" and (generate_options or {}).get("compile"):
        raise InputError("fastv token reduction cannot decode with compile=True (its layers cache different "
                         "lengths); generate without compile")
    return value


# ---------------------------------------------------------------------------------------------------
# Reduction of partitions (tiles, image crops, frames) before the LLM


@contextlib.contextmanager
def captured_attention(attention: nn.Module, wanted: bool = True) -> Iterator[dict[str, torch.Tensor | None]]:
    """While open, records the input `x`, `attn_mask`, `rotary` and `cu_seqlens` of each call of an Attention module
    (the last call wins)."""
    record: dict[str, torch.Tensor | None] = {}
    if not wanted:
        yield record
        return

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        record["x"] = args[0] if args else kwargs["x"]
        record["attn_mask"] = kwargs.get("attn_mask")
        record["rotary"] = kwargs.get("rotary")
        record["cu_seqlens"] = kwargs.get("cu_seqlens")

    handle = attention.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield record
    finally:
        handle.remove()


def token_pixels(images: torch.Tensor, grid: int) -> torch.Tensor:
    """The pixels under each token of a `grid` x `grid` grid: images (T, C, S, S) -> (T, grid**2, C * (S/grid)**2)."""
    return rearrange(images, "t c (g1 h) (g2 w) -> t (g1 g2) (c h w)", g1=grid, g2=grid)


def frame_difference_keep(pixels: torch.Tensor, groups: list[int], threshold: float) -> torch.Tensor:
    """Which tokens survive frame-difference pruning: pixels (T, n, P) of T frames, the consecutive runs of `groups`
    frames being separate videos (each starting whole) -> (T, n) bool, at least one token per frame."""
    return torch.cat([frame_difference_mask(part, threshold, min_tokens=1, first_frame="all")
                      for part in pixels.split(groups)])


def partition_counts(reduction: TokenReduction, num_partitions: int, grid: int,
                     frame_keep: torch.Tensor | None = None) -> list[int]:
    """Tokens each of `num_partitions` partitions of grid x grid LLM tokens keeps under a before-LLM `reduction`."""
    if reduction.method == "frame_difference":
        return frame_keep.sum(dim=1).tolist()
    if reduction.method in ("pool", "bilinear"):
        return [reduction.grid_side(grid) ** 2] * num_partitions
    return [reduction.kept(grid * grid)] * num_partitions


def reduce_partitions(
    tokens: torch.Tensor,
    reduction: TokenReduction,
    scale_factor: int = 1,
    scores: torch.Tensor | None = None,
    frame_keep: torch.Tensor | None = None,
) -> torch.Tensor:
    """The tokens a connector receives from T partitions of encoder tokens (T, side**2, D) on a square grid, after
    pixel shuffle by `scale_factor` and `reduction`: (sum of kept tokens, D * scale_factor**2) in partition order.

    "attention" needs `scores` (T, side**2), the attention each encoder token receives; a shuffled token scores the
    sum of its r x r tokens. "frame_difference" needs `frame_keep` (T, (side/r)**2) from `frame_difference_keep`.
    """
    side = math.isqrt(tokens.shape[1])
    grid = side // scale_factor
    if reduction.method in ("pool", "bilinear"):
        new = reduction.grid_side(grid) * scale_factor
        mode = "avg" if reduction.method == "pool" else "bilinear"
        tokens = resize_token_grid(tokens, (side, side), (new, new), mode)
        return pixel_shuffle_tokens(tokens, scale_factor).flatten(0, 1)
    shuffled = pixel_shuffle_tokens(tokens, scale_factor)
    if reduction.method == "frame_difference":
        return shuffled[frame_keep]
    k = reduction.kept(grid * grid)
    if reduction.method == "attention":
        scores = pixel_shuffle_tokens(scores[..., None], scale_factor).sum(dim=-1)
        return keep_top_tokens(shuffled, scores, k)[0].flatten(0, 1)
    return merge_tokens(shuffled, k)[0].flatten(0, 1)


def reduce_grid(tokens: torch.Tensor, grid: tuple[int, int], reduction: TokenReduction,
                scores: torch.Tensor | None = None) -> torch.Tensor:
    """T partitions of tokens (T, h*w, D) on an h x w grid (row-major) -> (T, reduction.grid_kept(h, w), D) under
    "pool", "bilinear", "attention" (needs `scores` (T, h*w), the attention each token receives) or "merge"."""
    if reduction.method in ("pool", "bilinear"):
        return resize_token_grid(tokens, grid, reduction.grid_shape(*grid),
                                 "avg" if reduction.method == "pool" else "bilinear")
    k = reduction.grid_kept(*grid)
    if reduction.method == "attention":
        return keep_top_tokens(tokens, scores, k)[0]
    if reduction.method == "merge":
        return merge_tokens(tokens, k)[0]
    raise InputError(f"token reduction {reduction.method!r} does not act on a token grid")


def packed_attention_received(attention: nn.Module, record: dict, lengths: list[int]) -> torch.Tensor:
    """The attention each token receives (mean over heads and queries) in an encoder layer that ran on sequences of
    `lengths` packed along L of a batch of one (NaViT), from what `captured_attention` recorded: (sum of lengths,)."""
    x, rotary = record["x"], record["rotary"]
    rotary_parts = [None] * len(lengths) if rotary is None else zip(*(t.split(lengths) for t in rotary))
    scores = [attention_received(attention, part, None, part_rotary)[0]
              for part, part_rotary in zip(x.split(lengths, dim=1), rotary_parts)]
    return torch.cat([x.new_zeros(0, dtype=torch.float32), *scores])


# ---------------------------------------------------------------------------------------------------
# Prompts after reduction before the LLM


def shorten_prompt(
    input_ids: torch.Tensor, attention_mask: torch.Tensor | None, drop: torch.Tensor, pad_token_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids (B, L) without the tokens where `drop` (B, L) is True, each row re-padded (left if the batch was
    left-padded, else right) to the longest: (B, L') ids and attention mask."""
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    keep = ~drop & attention_mask.bool()
    lengths = keep.sum(dim=1)
    length = int(lengths.max())
    left = bool((attention_mask[:, 0] == 0).any())
    new_ids = input_ids.new_full((input_ids.shape[0], length), pad_token_id)
    new_mask = attention_mask.new_zeros(new_ids.shape)
    for row, (selected, n) in enumerate(zip(keep, lengths.tolist())):
        span = slice(length - n, length) if left else slice(0, n)
        new_ids[row, span] = input_ids[row, selected]
        new_mask[row, span] = 1
    return new_ids, new_mask


def placeholder_drop_mask(is_image: torch.Tensor, full: list[int], kept: list[int]) -> torch.Tensor:
    """Which `<image>` placeholders (True in is_image (B, L)) to drop: the placeholders come in partitions of
    `full[i]` tokens, in order over the batch, and partition i keeps its first `kept[i]`."""
    keep = torch.cat([torch.arange(n, device=is_image.device) < k for n, k in zip(full, kept)]) if full \
        else is_image.new_zeros(0)
    drop = torch.zeros_like(is_image)
    drop[is_image] = ~keep
    return drop


def kv_cache_bytes(cache: object) -> int:
    """Bytes of the keys and values a DynamicCache or StaticCache holds (a static cache: its written positions)."""
    total = 0
    for layer, keys in cache.keys.items():
        length = cache.get_seq_length(layer) if hasattr(cache, "lengths") else keys.shape[-2]
        for tensor in (keys, cache.values[layer]):
            total += tensor[..., :length, :].nelement() * tensor.element_size()
    return total


# ---------------------------------------------------------------------------------------------------
# FastV inside a Llama-style decoder (zoo.backbones.llama.LlamaModel, or Phi's PhiModel built like it)


@dataclasses.dataclass
class _Pruned:
    layer: int
    prefill_length: int
    kept_mask: torch.Tensor  # (B, L') the kept prompt positions of layers >= layer, False on padding


# the pruning each KV cache's later layers were written with, so decoding steps read them consistently
_PRUNED_CACHES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def pruned_layers(cache: object | None) -> _Pruned | None:
    return None if cache is None else _PRUNED_CACHES.get(cache)


def decoder_forward(
    model: nn.Module,
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor | None,
    position_ids: torch.Tensor | None,
    cache: object | None,
    reduction: TokenReduction | None,
    visual: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """LlamaModel.forward with FastV pruning: hidden states (B, L or L', D) and the kept prompt positions (B, L')
    in the input (None when nothing was pruned). `visual` (B, L) marks the candidate tokens.

    A prefill (reduction given) ranks the candidates by the attention the last token pays them in layer K - 1,
    keeps `reduction.kept(n)` of each row's n and runs layers K.. on the kept tokens at their original positions.
    A decoding step on a cache written that way uses the full mask in layers < K and the pruned one after.
    """
    state = pruned_layers(cache)
    if reduction is None and state is None:
        return model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
                     cache=cache), None
    if getattr(cache, "write_position", None) is not None:
        raise InputError("fastv token reduction cannot decode with compile=True; generate without compile")
    layers = model.layers
    x, position_ids, attn_mask = decoder_inputs(model.embed_tokens, None, inputs_embeds, attention_mask,
                                                position_ids, cache)
    rotary = model.rotary(position_ids)
    selection = None
    if state is None:
        if reduction.layer >= len(layers):
            raise InputError(f"fastv layer={reduction.layer} must be below the decoder's {len(layers)} layers")
        if cache is not None and cache.get_seq_length() != 0:
            raise InputError("fastv prunes the prompt in one prefill; pass an empty cache")
        layer = reduction.layer
        batch, length = x.shape[:2]
        mask = torch.ones(batch, length, dtype=torch.bool, device=x.device) if attention_mask is None \
            else attention_mask.bool()[:, -length:]
        candidates = visual & mask
        budget = torch.tensor([reduction.kept(int(n)) if n else 0 for n in candidates.sum(1).tolist()],
                              device=x.device)
        late_mask = attn_mask
    else:
        layer = state.layer
        full = attention_mask if attention_mask is not None else \
            torch.ones(x.shape[0], cache.key_length(x.shape[1]), dtype=torch.long, device=x.device)
        late = torch.cat([state.kept_mask.to(full.dtype), full[:, state.prefill_length:]], dim=1)
        late_mask = None if bool(late.all()) else padding_mask(late)
    previous_input = None  # the normalised input of layer K - 1, whose attention ranks the tokens
    for index, block in enumerate(layers):
        if index == layer and state is None:
            scores = attention_received(layers[index - 1].self_attn, previous_input, attn_mask, rotary, query=-1)
            selection = select_tokens_by_attention(scores, candidates, budget, mask)
            x = selection.gather(x)
            rotary = tuple(selection.gather(t) for t in rotary)
            late_mask = None if bool(selection.attention_mask.all()) else padding_mask(selection.attention_mask)
            if cache is not None:
                _PRUNED_CACHES[cache] = _Pruned(layer, length, selection.attention_mask)
        if index == layer - 1 and state is None:
            previous_input = block.input_layernorm(x)
        x = block(x, rotary, attn_mask if index < layer else late_mask, cache, index)
    return model.norm(x), None if selection is None else selection.indices
