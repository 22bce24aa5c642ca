"""Attention: a functional core with interchangeable backends, mask builders, KV caches and the module.

Conventions used throughout:

* q is (B, Hq, Lq, D); k and v are (B, Hkv, Lk, D) with Hq a multiple of Hkv (grouped-query
  attention: query head h reads key/value head h // (Hq // Hkv)).
* Masks are boolean, True = attend, broadcastable to (B, Hq, Lq, Lk).
* Causal and sliding-window masks align the queries with the *last* Lq keys (query i sits at
  position i + Lk - Lq), so a decode step with a KV cache needs no special casing. This is
  flash-attn's and transformers' convention; SDPA's own `is_causal` aligns them with the first keys,
  so it is only used natively when Lq == Lk.
* A query that can see no key returns zeros, never NaN, in every backend.
"""

from __future__ import annotations

import functools
import importlib.util
from types import ModuleType

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from zoo.layers.mlp import project
from zoo.layers.norm import qk_norm as build_qk_norm
from zoo.layers.rotary import apply_rotary

BACKENDS = ("auto", "sdpa", "flash", "reference")


# ----------------------------------------------------------------------------------------------------
# Masks


def causal_mask(q_len: int, k_len: int | None = None, *, device: torch.device | None = None) -> torch.Tensor:
    """(q_len, k_len) mask: key j is visible from query i iff j <= i + k_len - q_len."""
    k_len = q_len if k_len is None else k_len
    query_pos = torch.arange(k_len - q_len, k_len, device=device)[:, None]
    return torch.arange(k_len, device=device) <= query_pos


def sliding_window_mask(
    q_len: int, k_len: int | None = None, *, window: int, device: torch.device | None = None
) -> torch.Tensor:
    """(q_len, k_len) causal mask limited to the last `window` keys, the query's own included.

    Key j is visible from query i iff i - window < j <= i (positions as in `causal_mask`): transformers'
    `sliding_window` convention. flash-attn's window_size=(w, 0) shows w + 1 keys, i.e. window = w + 1
    (SpikingBrain's HF code calls flash-attn with (4096, 0), which is window=4097 here).
    """
    if window < 1:
        raise ValueError(f"window must be a positive number of keys, got {window}")
    k_len = q_len if k_len is None else k_len
    query_pos = torch.arange(k_len - q_len, k_len, device=device)[:, None]
    key_pos = torch.arange(k_len, device=device)
    return (key_pos <= query_pos) & (key_pos > query_pos - window)


def padding_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, 1, 1, L) key mask from a (B, L) attention_mask of 1 (token) and 0 (padding)."""
    if attention_mask.ndim != 2:
        raise ValueError(f"expected attention_mask of shape (B, L), got {tuple(attention_mask.shape)}")
    return attention_mask.bool()[:, None, None, :]


def block_mask(segment_ids: torch.Tensor, key_segment_ids: torch.Tensor | None = None) -> torch.Tensor:
    """(B, 1, Lq, Lk) mask (or (1, Lq, Lk) for unbatched ids) letting each token see only its own segment.

    segment_ids is (B, Lq) or (Lq,): e.g. the frame index of each token (per-frame attention) or the
    sequence index of each token in a packed batch. key_segment_ids defaults to segment_ids.
    """
    key_segment_ids = segment_ids if key_segment_ids is None else key_segment_ids
    return (segment_ids[..., :, None] == key_segment_ids[..., None, :]).unsqueeze(-3)


def segment_ids_from_cu_seqlens(cu_seqlens: torch.Tensor) -> torch.Tensor:
    """(total,) segment index of every token of a packed batch delimited by cu_seqlens (n + 1,)."""
    positions = torch.arange(int(cu_seqlens[-1]), device=cu_seqlens.device, dtype=cu_seqlens.dtype)
    return torch.searchsorted(cu_seqlens[1:], positions, right=True)


def _and(mask: torch.Tensor | None, other: torch.Tensor | None) -> torch.Tensor | None:
    if mask is None or other is None:
        return other if mask is None else mask
    return mask & other


def _position_mask(
    q_len: int, k_len: int, is_causal: bool, window: int | None, device: torch.device
) -> torch.Tensor | None:
    if window is not None:
        return sliding_window_mask(q_len, k_len, window=window, device=device)
    if is_causal and q_len > 1:  # a single query at the end sees every key
        return causal_mask(q_len, k_len, device=device)
    return None


# ----------------------------------------------------------------------------------------------------
# Backends


@functools.cache
def _flash_attn() -> ModuleType | None:
    try:
        import flash_attn
    except ImportError:
        return None
    return flash_attn


# A constant, as torch.compile cannot trace the import (find_spec does not import; `_flash_attn` does when used).
_FLASH_ATTN_INSTALLED = importlib.util.find_spec("flash_attn") is not None


def _flash_unsupported(q: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None) -> str | None:
    """Why flash-attn cannot run these inputs, or None if it can."""
    if not _FLASH_ATTN_INSTALLED:
        return "flash-attn is not installed"
    if not q.is_cuda:
        return f"flash-attn needs CUDA tensors, got {q.device}"
    if q.dtype not in (torch.float16, torch.bfloat16):
        return f"flash-attn needs float16 or bfloat16, got {q.dtype}"
    if q.shape[-1] > 256 or v.shape[-1] != q.shape[-1]:
        return f"flash-attn needs equal q/k/v head dims of at most 256, got {q.shape[-1]} and {v.shape[-1]}"
    if attn_mask is not None:
        return "flash-attn takes no attn_mask (use cu_seqlens for packed sequences)"
    return None


def _flash(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    is_causal: bool,
    scale: float | None,
    window: int | None,
    cu_seqlens: torch.Tensor | None,
) -> torch.Tensor:
    flash_attn = _flash_attn()
    window_size = (-1, -1) if window is None else (window - 1, 0)
    causal = is_causal or window is not None
    if cu_seqlens is None:
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # flash-attn takes (B, L, H, D)
        out = flash_attn.flash_attn_func(q, k, v, softmax_scale=scale, causal=causal, window_size=window_size)
        return out.transpose(1, 2)
    q, k, v = (t[0].transpose(0, 1) for t in (q, k, v))  # packed (total, H, D)
    cu_seqlens = cu_seqlens.to(torch.int32)
    max_len = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
    out = flash_attn.flash_attn_varlen_func(
        q, k, v, cu_seqlens, cu_seqlens, max_len, max_len,
        softmax_scale=scale, causal=causal, window_size=window_size,
    )  # fmt: skip
    return out.transpose(0, 1)[None]


def _sdpa_segments(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor, is_causal: bool,
                   scale: float | None) -> torch.Tensor:
    """SDPA of each sequence packed along L (a batch of one) on its own, without the (L, L) block mask: one call
    over the sequences as a batch when their lengths are equal (NaViT's frames, a packed batch of equal images)."""
    lengths = cu_seqlens.diff().tolist()
    if len(set(lengths)) == 1:
        q, k, v = (rearrange(t, "1 h (n l) d -> n h l d", n=len(lengths)) for t in (q, k, v))
        return rearrange(_sdpa(q, k, v, None, is_causal, scale, None), "n h l d -> 1 h (n l) d")
    parts = zip(*(t.split(lengths, dim=2) for t in (q, k, v)))
    return torch.cat([_sdpa(*part, None, is_causal, scale, None) for part in parts], dim=2)


def _sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None,
    is_causal: bool,
    scale: float | None,
    window: int | None,
) -> torch.Tensor:
    q_len, k_len = q.shape[-2], k.shape[-2]
    native_causal = is_causal and window is None and attn_mask is None and q_len == k_len
    if not native_causal:
        attn_mask = _and(attn_mask, _position_mask(q_len, k_len, is_causal, window, q.device))
    out = F.scaled_dot_product_attention(
        q, k, v, attn_mask=attn_mask, is_causal=native_causal, scale=scale, enable_gqa=q.shape[1] != k.shape[1]
    )
    if attn_mask is None:
        return out
    # cuDNN's kernel leaves rows that see no key non-zero (finite); the other kernels give 0.
    return out.masked_fill(~attn_mask.any(dim=-1, keepdim=True), 0.0)


def _reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None,
    is_causal: bool,
    scale: float | None,
    window: int | None,
) -> torch.Tensor:
    """softmax(q k^T * scale, masked) v, spelled out in float32: the oracle the fast paths are tested against."""
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = torch.einsum("bhqd,bhkd->bhqk", q.float(), k.float()) * scale
    mask = _and(attn_mask, _position_mask(q.shape[-2], k.shape[-2], is_causal, window, q.device))
    if mask is not None:
        sees_a_key = mask.any(dim=-1, keepdim=True)
        # Rows with no visible key get finite scores (so no NaN in forward or backward), then weight 0.
        scores = scores.masked_fill(~mask, float("-inf")).masked_fill(~sees_a_key, 0.0)
        weights = scores.softmax(dim=-1) * sees_a_key
    else:
        weights = scores.softmax(dim=-1)
    return torch.einsum("bhqk,bhkd->bhqd", weights, v.float()).to(q.dtype)


def _check_inputs(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None,
    window: int | None,
    cu_seqlens: torch.Tensor | None,
    backend: str,
) -> None:
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(
            "expected q (B, Hq, Lq, D), k (B, Hkv, Lk, D), v (B, Hkv, Lk, Dv), got "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    (b, hq, q_len, d), (bk, hkv, k_len, dk) = q.shape, k.shape
    if bk != b or v.shape[:3] != k.shape[:3] or dk != d or hq % hkv:
        raise ValueError(
            f"expected q (B, Hq, Lq, D), k (B, Hkv, Lk, D), v (B, Hkv, Lk, Dv) with Hq a multiple of Hkv, got "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k and v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if attn_mask is not None:
        if attn_mask.dtype != torch.bool:
            raise TypeError(f"attn_mask must be a boolean mask (True = attend), got {attn_mask.dtype}")
        expected = (b, hq, q_len, k_len)
        try:
            fits = torch.broadcast_shapes(attn_mask.shape, expected) == expected
        except RuntimeError:
            fits = False
        if not fits:
            raise ValueError(
                f"attn_mask of shape {tuple(attn_mask.shape)} does not broadcast to (B, Hq, Lq, Lk) = {expected}"
            )
    if window is not None and window < 1:
        raise ValueError(f"window must be a positive number of keys, got {window}")
    if cu_seqlens is not None and (cu_seqlens.ndim != 1 or b != 1 or q_len != k_len or int(cu_seqlens[-1]) != q_len):
        raise ValueError(
            f"packed attention expects q, k, v of shape (1, H, total, D) and cu_seqlens (n + 1,) ending at total, "
            f"got q {tuple(q.shape)}, k {tuple(k.shape)}, cu_seqlens {tuple(cu_seqlens.shape)}"
        )
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def scaled_dot_product(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    attn_mask: torch.Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    window: int | None = None,
    cu_seqlens: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Scaled dot-product attention of q (B, Hq, Lq, D) over k, v (B, Hkv, Lk, D); returns (B, Hq, Lq, Dv).

    attn_mask: boolean, True = attend, broadcastable to (B, Hq, Lq, Lk).
    is_causal: queries see keys up to their own position (aligned with the last keys, see module doc).
    scale: defaults to D ** -0.5.
    window: sliding-window size in keys, implies causal (see `sliding_window_mask`).
    cu_seqlens: (n + 1,) offsets of n sequences packed along L of a batch of one; tokens attend only
        within their sequence (flash-attn varlen on CUDA, a block mask otherwise).
    backend: "sdpa" (F.scaled_dot_product_attention), "flash" (flash-attn), "reference" (explicit fp32),
        or "auto": flash-attn when it is installed and can run these inputs (CUDA, fp16/bf16, no
        attn_mask), SDPA otherwise.
    """
    _check_inputs(q, k, v, attn_mask, window, cu_seqlens, backend)
    if backend == "auto":
        backend = "sdpa" if _flash_unsupported(q, v, attn_mask) else "flash"
    if backend == "flash":
        if reason := _flash_unsupported(q, v, attn_mask):
            raise ValueError(f"backend='flash' cannot run: {reason}")
        return _flash(q, k, v, is_causal, scale, window, cu_seqlens)
    if cu_seqlens is not None and backend == "sdpa" and attn_mask is None and window is None \
            and q.shape[-2] == k.shape[-2] and q.shape[-2] > 0:
        return _sdpa_segments(q, k, v, cu_seqlens, is_causal, scale)
    if cu_seqlens is not None:
        attn_mask = _and(attn_mask, block_mask(segment_ids_from_cu_seqlens(cu_seqlens)))
    attend = _reference if backend == "reference" else _sdpa
    return attend(q, k, v, attn_mask, is_causal, scale, window)


# ----------------------------------------------------------------------------------------------------
# KV caches


class DynamicCache:
    """Keys and values of every layer, grown by concatenation; simple and unbounded."""

    def __init__(self):
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}

    def update(self, k: torch.Tensor, v: torch.Tensor, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Append k, v (B, Hkv, L, D) to the layer's cache; return all its keys and values so far."""
        if layer_idx in self.keys:
            k = torch.cat((self.keys[layer_idx], k), dim=-2)
            v = torch.cat((self.values[layer_idx], v), dim=-2)
        self.keys[layer_idx], self.values[layer_idx] = k, v
        return k, v

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """The number of cached positions of a layer."""
        return self.keys[layer_idx].shape[-2] if layer_idx in self.keys else 0

    def key_length(self, new_tokens: int) -> int:
        """The number of keys attention sees once `new_tokens` more positions are written."""
        return self.get_seq_length() + new_tokens


class StaticCache:
    """Keys and values in buffers of max_length positions, allocated once per layer at its first update.

    Each update writes in place after the positions already cached and returns a view of the filled
    prefix, so decoding token by token allocates no new cache memory.

    For compiled decoding, set `write_position` to a (1,) long tensor: every update then writes its one
    new position there and returns the whole buffers, so each step has the same shapes and no Python
    number changes between steps (the caller advances `write_position` in place). Attention masks must
    then cover all max_length positions, with 0 where nothing is written yet.
    """

    def __init__(self, max_length: int):
        self.max_length = max_length
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}
        self.lengths: dict[int, int] = {}
        self.write_position: torch.Tensor | None = None

    def update(self, k: torch.Tensor, v: torch.Tensor, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, Hkv, L, D) after the layer's cached positions; return the filled (B, Hkv, :end, D),
        or with `write_position` set, write the one position there and return the whole buffers."""
        if self.write_position is not None:
            if layer_idx not in self.keys or k.shape[-2] != 1:
                raise ValueError(
                    "a static cache with write_position set takes one new position per update into buffers "
                    f"filled before (by a prefill), got k of shape {tuple(k.shape)} for layer {layer_idx}"
                )
            self.keys[layer_idx].index_copy_(2, self.write_position, k)
            self.values[layer_idx].index_copy_(2, self.write_position, v)
            return self.keys[layer_idx], self.values[layer_idx]
        if layer_idx not in self.keys:
            self.keys[layer_idx] = k.new_zeros(*k.shape[:2], self.max_length, k.shape[3])
            self.values[layer_idx] = v.new_zeros(*v.shape[:2], self.max_length, v.shape[3])
            self.lengths[layer_idx] = 0
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        start = self.lengths[layer_idx]
        end = start + k.shape[-2]
        if end > self.max_length or k.shape[:2] != keys.shape[:2] or k.shape[-1] != keys.shape[-1]:
            raise ValueError(
                f"cannot write k of shape {tuple(k.shape)} at position {start} of a static cache of shape "
                f"{tuple(keys.shape)} (B, Hkv, max_length, D)"
            )
        keys[:, :, start:end] = k
        values[:, :, start:end] = v
        self.lengths[layer_idx] = end
        return keys[:, :, :end], values[:, :, :end]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """The number of cached positions of a layer (with `write_position` set: the positions before it)."""
        if self.write_position is not None:
            return int(self.write_position)
        return self.lengths.get(layer_idx, 0)

    def key_length(self, new_tokens: int) -> int:
        """The number of keys attention sees once `new_tokens` more positions are written."""
        return self.max_length if self.write_position is not None else self.get_seq_length() + new_tokens


# ----------------------------------------------------------------------------------------------------
# Module


class Attention(nn.Module):
    """Multi-head self- or cross-attention with grouped-query heads, optional q/k norm, rotary positions
    and KV cache.

    dim: width of x. num_kv_heads < num_heads gives grouped-query attention. head_dim defaults to
    dim // num_heads. context_dim: width of the cross-attention context (defaults to dim).
    qk_norm: None, "rms", "rms_across_heads" or "layer" (see `zoo.layers.norm.qk_norm`); applied to the
    projections before rotary positions. rotary_interleaved: pair layout of the rotary tables (see
    `zoo.layers.rotary.apply_rotary`). sliding_window: see `sliding_window_mask`.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        num_kv_heads: int | None = None,
        head_dim: int | None = None,
        *,
        context_dim: int | None = None,
        qkv_bias: bool = False,
        out_bias: bool = False,
        qk_norm: str | None = None,
        norm_eps: float = 1e-6,
        rotary_interleaved: bool = False,
        sliding_window: int | None = None,
        backend: str = "auto",
    ):
        super().__init__()
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if num_heads % num_kv_heads:
            raise ValueError(f"num_heads ({num_heads}) must be a multiple of num_kv_heads ({num_kv_heads})")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim or dim // num_heads
        self.rotary_interleaved = rotary_interleaved
        self.sliding_window = sliding_window
        self.backend = backend
        context_dim = context_dim or dim

        self.q_proj = nn.Linear(dim, num_heads * self.head_dim, bias=qkv_bias)
        self.k_proj = nn.Linear(context_dim, num_kv_heads * self.head_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(context_dim, num_kv_heads * self.head_dim, bias=qkv_bias)
        self.q_norm = build_qk_norm(qk_norm, num_heads, self.head_dim, norm_eps)
        self.k_norm = build_qk_norm(qk_norm, num_kv_heads, self.head_dim, norm_eps)
        self.o_proj = nn.Linear(num_heads * self.head_dim, dim, bias=out_bias)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: DynamicCache | StaticCache | None = None,
        layer_idx: int | None = None,
        cu_seqlens: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (B, L, dim), context (B, S, context_dim) for cross-attention; returns (B, L, dim).

        attn_mask: boolean, True = attend, broadcastable to (B, H, L, keys) where keys counts the cached
            positions too. rotary: (cos, sin) of x's positions from RotaryEmbedding (self-attention).
        cache, layer_idx: a KV cache and this layer's index in it (self-attention).
        cu_seqlens: offsets of sequences packed along L of a batch of one (see `scaled_dot_product`).
        """
        if context is not None and (rotary is not None or cache is not None):
            raise ValueError("rotary positions and the KV cache apply to self-attention, but a context was given")
        if cache is not None and layer_idx is None:
            raise ValueError("a KV cache needs the layer_idx of this attention layer")
        if self.sliding_window is not None and getattr(cache, "write_position", None) is not None:
            raise ValueError("sliding-window attention cannot decode into a static cache with write_position set "
                             "(its window is counted from the last key); decode without compile")
        kv_input = x if context is None else context

        q = self.q_norm(project(self.q_proj, x))
        k = self.k_norm(project(self.k_proj, kv_input))
        v = project(self.v_proj, kv_input)
        q, k, v = (rearrange(t, "b l (h d) -> b h l d", d=self.head_dim) for t in (q, k, v))

        if rotary is not None:
            q = apply_rotary(q, *rotary, interleaved=self.rotary_interleaved)
            k = apply_rotary(k, *rotary, interleaved=self.rotary_interleaved)
        if cache is not None:
            k, v = cache.update(k, v, layer_idx)

        out = scaled_dot_product(
            q, k, v,
            attn_mask=attn_mask, is_causal=is_causal, window=self.sliding_window, cu_seqlens=cu_seqlens,
            backend=self.backend,
        )  # fmt: skip
        return project(self.o_proj, rearrange(out, "b h l d -> b l (h d)"))

    def extra_repr(self) -> str:
        window = f", sliding_window={self.sliding_window}" if self.sliding_window is not None else ""
        return (
            f"num_heads={self.num_heads}, num_kv_heads={self.num_kv_heads}, head_dim={self.head_dim}, "
            f"rotary_interleaved={self.rotary_interleaved}{window}, backend={self.backend!r}"
        )
