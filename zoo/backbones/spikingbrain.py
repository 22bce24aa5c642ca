"""SpikingBrain-7B (arXiv 2509.05276): Qwen2.5-7B converted into an inter-layer hybrid of gated linear attention
(GLA) and sliding-window attention (SWA), and its W8ASpike variant (INT8 weights, spike-coded activations).

Layers listed in `attn_layers` are SWA, the others GLA; every block is pre-norm,
``h = x + attn(attn_norm(x)); out = h + mlp(mlp_norm(h))``.

* GLA: ``q = relu(W_q x + b_q)``, ``k = relu(W_k x + b_k)``, ``v = W_v x + b_v`` (v times the attention mask, for
  left padding), a low-rank gate ``g = logsigmoid(W_1 W_0 x + b_1) / 16``, k, v and g repeated across each group
  of query heads, ``S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t``, ``o_t = (q_t / sqrt(d)) S_t``, a per-head RMSNorm
  `g_norm` and `o_proj`; no rotary. The state is (heads, d, d) per layer, whatever the length.
* SWA: Qwen2 attention (q/k/v biases, rotary) over exactly `sliding_window` keys, the current token and the W - 1
  before it, in prefill and in decoding, as the official SDPA path and vLLM plugin do (the official flash-attn
  path sees W + 1 keys in prefill and W in decoding). Its cache keeps the last W - 1 keys and values.

Decoding runs in the shared loop (`zoo.backbones.generation`) with `SpikingBrainCache`, whose memory does not grow
with the generated length. Key names are the official release's (`model.embeddings`, `attn_norm`, `mlp_norm`,
`attn.gk_proj.{0,1}`, `attn.g_norm`); the W8ASpike checkpoint has one full-rank `attn.gk_proj` and a
`weight_quantizer.scales` buffer (out, in / 128, 1) on every projection.

W8ASpike, as the official code runs it: every projection but `down_proj` sees spike-coded inputs
(`zoo.layers.spike.spike_fake_quantize`) through weights rounded per 128-input-channel group; `down_proj` uses its
raw weight on its raw input; in SWA the rotated queries are spike-coded per (token, head) and the keys and values
(cached unquantised) are rounded to symmetric INT8 per (token, head) after the cache update.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from zoo.backbones.generation import CausalLM
from zoo.backbones.llama import check_activation, decoder_inputs, language_input, transformers_rope
from zoo.config import PositiveFloat, PositiveInt, ZooConfig
from zoo.errors import CheckpointError, ConfigError
from zoo.layers.attention import scaled_dot_product
from zoo.layers.linear_attention import gated_linear_attention, gated_linear_attention_step
from zoo.layers.mlp import SwiGLU
from zoo.layers.norm import RMSNorm
from zoo.layers.rotary import RotaryEmbedding, apply_rotary
from zoo.layers.spike import (
    WEIGHT_GROUP_SIZE, SpikeLinear, spike_fake_quantize, symmetric_int8_fake_quantize,
)
from zoo.registry import Converter, ModelEntry, PretrainedSource, register_family, register_model, rename_keys

# The gate's low-rank width and logit normaliser: constants of the release, not config fields.
GATE_LOW_RANK_DIM = 16
GATE_LOGIT_NORMALIZER = 16


@dataclasses.dataclass
class SpikingBrainConfig(ZooConfig):
    """The hybrid decoder. attn_layers: indices of the SWA layers (None: the odd ones, the official class
    default, which a config.json overrides); the others are GLA. w8aspike: the W8ASpike quantised variant
    (INT8 weights in groups of 128 input channels, spike-coded activations); every width must then be a
    multiple of 128."""

    vocab_size: PositiveInt = 152064
    hidden_size: PositiveInt = 3584
    intermediate_size: PositiveInt = 18944
    num_hidden_layers: PositiveInt = 28
    num_attention_heads: PositiveInt = 28
    num_key_value_heads: PositiveInt = 4
    attn_layers: tuple[int, ...] | None = None
    sliding_window: PositiveInt = 4096
    norm_eps: PositiveFloat = 1e-6
    rope_theta: PositiveFloat = 1000000.0
    max_position_embeddings: PositiveInt = 131072
    tie_word_embeddings: bool = False
    w8aspike: bool = False

    def validate(self) -> None:
        self.check_divisible("hidden_size", "num_attention_heads")
        self.check_divisible("num_attention_heads", "num_key_value_heads")
        if self.head_dim % 2:
            raise ConfigError(f"SpikingBrainConfig head size hidden_size / num_attention_heads must be even (rotary), "
                              f"got {self.head_dim}.")
        last = self.num_hidden_layers - 1
        wrong = [i for i in self.attn_layers or () if not 0 <= i <= last]
        if wrong:
            raise ConfigError(f"SpikingBrainConfig.attn_layers holds {wrong}, out of range for num_hidden_layers="
                              f"{self.num_hidden_layers}: SWA layer indices must be in 0..{last}.")
        if self.attn_layers is not None and len(set(self.attn_layers)) != len(self.attn_layers):
            raise ConfigError(f"SpikingBrainConfig.attn_layers lists a layer twice: {list(self.attn_layers)}.")
        if self.w8aspike:
            widths = {"hidden_size": self.hidden_size, "intermediate_size": self.intermediate_size}
            odd = {name: width for name, width in widths.items() if width % WEIGHT_GROUP_SIZE}
            if odd:
                raise ConfigError(
                    f"W8ASpike quantises weights in groups of {WEIGHT_GROUP_SIZE} input channels, so every width must "
                    f"be a multiple of {WEIGHT_GROUP_SIZE}; got {odd}. Use the bf16 variant (w8aspike=False) or "
                    f"widths that are multiples of {WEIGHT_GROUP_SIZE}."
                )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def swa_layers(self) -> tuple[int, ...]:
        """The SWA layer indices, sorted."""
        layers = range(1, self.num_hidden_layers, 2) if self.attn_layers is None else self.attn_layers
        return tuple(sorted(layers))


# ---------------------------------------------------------------------------------------------------
# Cache


class SpikingBrainCache:
    """What decoding keeps, whatever the length: per GLA layer its state (B, heads, d, d) in fp32, updated in place;
    per SWA layer the last `window - 1` keys and values (B, kv_heads, <= window - 1, d), which with the new token
    make the `window` keys it attends to."""

    def __init__(self, window: int):
        self.window = window
        self.states: dict[int, torch.Tensor] = {}
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}
        self.seen = 0

    @property
    def write_position(self) -> None:
        return None

    @write_position.setter
    def write_position(self, value: Any) -> None:
        raise ConfigError("SpikingBrain decodes with its own constant-memory cache, without torch.compile: "
                          "call generate with compile=False.")

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """The number of positions seen so far (those before the current forward)."""
        return self.seen

    def key_length(self, new_tokens: int) -> int:
        """The length of the attention mask a forward of `new_tokens` takes: every position seen, and the new ones."""
        return self.seen + new_tokens

    def cached_keys(self) -> int:
        """The number of keys each SWA layer holds before the current forward."""
        return min(self.seen, self.window - 1)

    def update(self, k: torch.Tensor, v: torch.Tensor, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The layer's cached keys and values followed by k, v (B, kv_heads, L, d); keeps the last window - 1."""
        if layer_idx in self.keys:
            k, v = torch.cat([self.keys[layer_idx], k], dim=2), torch.cat([self.values[layer_idx], v], dim=2)
        start = max(k.shape[2] - (self.window - 1), 0)
        keys, values = k[:, :, start:], v[:, :, start:]
        if k.shape[2] > self.window:  # after a prompt chunk: a view would keep the dropped keys' memory alive
            keys, values = keys.clone(), values.clone()
        self.keys[layer_idx], self.values[layer_idx] = keys, values
        return k, v

    def memory_bytes(self) -> int:
        """Bytes held by the states, keys and values."""
        tensors = [*self.states.values(), *self.keys.values(), *self.values.values()]
        return sum(t.numel() * t.element_size() for t in tensors)


# ---------------------------------------------------------------------------------------------------
# Modules


def _linear(config: SpikingBrainConfig, in_features: int, out_features: int, bias: bool) -> nn.Linear:
    if config.w8aspike:
        return SpikeLinear(in_features, out_features, bias)
    return nn.Linear(in_features, out_features, bias)


def _repeat_heads(x: torch.Tensor, groups: int) -> torch.Tensor:
    return x.repeat_interleave(groups, dim=1) if groups > 1 else x


class GatedLinearAttention(nn.Module):
    """The GLA layer: (B, L, hidden) -> (B, L, hidden); see the module docstring."""

    def __init__(self, config: SpikingBrainConfig):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = (
            config.num_attention_heads, config.num_key_value_heads, config.head_dim)
        kv_dim = self.num_kv_heads * self.head_dim
        self.q_proj = _linear(config, config.hidden_size, config.hidden_size, True)
        self.k_proj = _linear(config, config.hidden_size, kv_dim, True)
        self.v_proj = _linear(config, config.hidden_size, kv_dim, True)
        if config.w8aspike:
            self.gk_proj = SpikeLinear(config.hidden_size, kv_dim, True)
        else:
            self.gk_proj = nn.Sequential(nn.Linear(config.hidden_size, GATE_LOW_RANK_DIM, bias=False),
                                         nn.Linear(GATE_LOW_RANK_DIM, kv_dim, bias=True))
        self.o_proj = _linear(config, config.hidden_size, config.hidden_size, False)
        self.g_norm = RMSNorm(self.head_dim, eps=config.norm_eps)

    def forward(self, x: torch.Tensor, token_mask: torch.Tensor | None, cache: SpikingBrainCache | None,
                layer_idx: int) -> torch.Tensor:
        """token_mask: (B, L) bool, False on padding (its values are zeroed), or None."""
        q, k, v = F.relu(self.q_proj(x)), F.relu(self.k_proj(x)), self.v_proj(x)
        if token_mask is not None:
            v = v * token_mask[..., None].to(v.dtype)
        gate = F.logsigmoid(self.gk_proj(x)) / GATE_LOGIT_NORMALIZER
        q = rearrange(q, "b l (h d) -> b h l d", d=self.head_dim)
        groups = self.num_heads // self.num_kv_heads
        k, v, gate = (_repeat_heads(rearrange(t, "b l (h d) -> b h l d", d=self.head_dim), groups)
                      for t in (k, v, gate))
        state = cache.states.get(layer_idx) if cache is not None else None
        if state is not None and x.shape[1] == 1:
            o = gated_linear_attention_step(q[:, :, 0], k[:, :, 0], v[:, :, 0], gate[:, :, 0], state)[:, :, None]
        else:
            o, final_state = gated_linear_attention(q, k, v, gate, initial_state=state,
                                                    output_final_state=cache is not None)
            if cache is not None:
                cache.states[layer_idx] = final_state
        return self.o_proj(rearrange(self.g_norm(o), "b h l d -> b l (h d)"))


class SlidingWindowAttention(nn.Module):
    """Qwen2 attention over the last `sliding_window` keys: (B, L, hidden) -> (B, L, hidden)."""

    def __init__(self, config: SpikingBrainConfig):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = (
            config.num_attention_heads, config.num_key_value_heads, config.head_dim)
        self.window = config.sliding_window
        self.spiking = config.w8aspike
        kv_dim = self.num_kv_heads * self.head_dim
        self.q_proj = _linear(config, config.hidden_size, config.hidden_size, True)
        self.k_proj = _linear(config, config.hidden_size, kv_dim, True)
        self.v_proj = _linear(config, config.hidden_size, kv_dim, True)
        self.o_proj = _linear(config, config.hidden_size, config.hidden_size, False)

    def forward(self, x: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor], key_mask: torch.Tensor | None,
                cache: SpikingBrainCache | None, layer_idx: int) -> torch.Tensor:
        """key_mask: (B, 1, 1, keys) bool over the cached keys and the new ones, False on padding, or None."""
        q, k, v = (rearrange(proj(x), "b l (h d) -> b h l d", d=self.head_dim)
                   for proj in (self.q_proj, self.k_proj, self.v_proj))
        q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        if cache is not None:
            k, v = cache.update(k, v, layer_idx)
        if self.spiking:
            q = spike_fake_quantize(q)
            k, v = symmetric_int8_fake_quantize(k), symmetric_int8_fake_quantize(v)
        out = scaled_dot_product(q, k, v, attn_mask=key_mask, is_causal=True, window=self.window)
        return self.o_proj(rearrange(out, "b h l d -> b l (h d)"))


class HybridBlock(nn.Module):
    """Pre-norm block around a GLA or SWA layer and a SwiGLU MLP."""

    def __init__(self, config: SpikingBrainConfig, index: int):
        super().__init__()
        self.is_swa = index in config.swa_layers
        self.attn_norm = RMSNorm(config.hidden_size, eps=config.norm_eps)
        self.attn = SlidingWindowAttention(config) if self.is_swa else GatedLinearAttention(config)
        self.mlp_norm = RMSNorm(config.hidden_size, eps=config.norm_eps)
        self.mlp = SwiGLU(config.hidden_size, config.intermediate_size)
        if config.w8aspike:
            self.mlp.gate_proj = SpikeLinear(config.hidden_size, config.intermediate_size, False)
            self.mlp.up_proj = SpikeLinear(config.hidden_size, config.intermediate_size, False)
            self.mlp.down_proj = SpikeLinear(config.intermediate_size, config.hidden_size, False,
                                             spike_input=False, quantize_weight=False)

    def forward(self, x: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor], token_mask: torch.Tensor | None,
                key_mask: torch.Tensor | None, cache: SpikingBrainCache | None, layer_idx: int) -> torch.Tensor:
        h = self.attn_norm(x)
        if self.is_swa:
            h = self.attn(h, rotary, key_mask, cache, layer_idx)
        else:
            h = self.attn(h, token_mask, cache, layer_idx)
        x = x + h
        return x + self.mlp(self.mlp_norm(x))


class SpikingBrainModel(nn.Module):
    """Token embeddings, hybrid blocks and the final norm; returns hidden states (B, L, hidden_size)."""

    def __init__(self, config: SpikingBrainConfig):
        super().__init__()
        self.config = config
        self.embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(HybridBlock(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, eps=config.norm_eps)
        self.rotary = RotaryEmbedding(config.head_dim, config.rope_theta)

    @property
    def embed_tokens(self) -> nn.Embedding:
        """The token embeddings under the name the shared decoder code uses."""
        return self.embeddings

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: SpikingBrainCache | None = None,
    ) -> torch.Tensor:
        """input_ids (B, L) or inputs_embeds (B, L, hidden_size); attention_mask (B, past + L) of 1 and 0 (left
        padding), covering the positions seen before too; position_ids (B, L), default past + arange(L)."""
        if cache is not None and not isinstance(cache, SpikingBrainCache):
            raise ConfigError(f"SpikingBrain takes a SpikingBrainCache (model.make_cache()), got "
                              f"{type(cache).__name__}")
        x, position_ids, mask = decoder_inputs(self.embeddings, input_ids, inputs_embeds, attention_mask,
                                               position_ids, cache)
        length = x.shape[1]
        token_mask = key_mask = None
        if mask is not None:
            keys = length + (cache.cached_keys() if cache is not None else 0)
            token_mask, key_mask = mask[:, 0, 0, -length:], mask[..., -keys:]
        rotary = self.rotary(position_ids)
        for index, layer in enumerate(self.layers):
            x = layer(x, rotary, token_mask, key_mask, cache, index)
        if cache is not None:
            cache.seen += length
        return self.norm(x)


class SpikingBrainForCausalLM(CausalLM):
    """SpikingBrain-7B and its W8ASpike variant with the LM head; `generate` decodes in constant memory."""

    config_class = SpikingBrainConfig
    trunk_class = SpikingBrainModel

    def make_cache(self, max_length: int | None = None) -> SpikingBrainCache:
        """A fresh constant-memory cache (`max_length` is not needed: nothing grows with the length)."""
        return SpikingBrainCache(self.config.sliding_window)


# ---------------------------------------------------------------------------------------------------
# Converters


def config_from_official(values: dict[str, Any], w8aspike: bool = False) -> SpikingBrainConfig:
    """An official `gla_swa` config.json as a SpikingBrainConfig (the GLAswaConfig defaults for omitted fields)."""
    check_activation(values, "swish", supported=("swish", "silu"))
    if values.get("use_short_conv", False):
        raise ConfigError("This SpikingBrain config has use_short_conv=true; the released models have none and zoo "
                          "does not build the short convolutions.")
    rope = transformers_rope(values, supported=("default",))
    layers = values.get("num_hidden_layers", 28)
    return SpikingBrainConfig(
        vocab_size=values.get("vocab_size", 152064),
        hidden_size=values.get("hidden_size", 3584),
        intermediate_size=values.get("intermediate_size", 18944),
        num_hidden_layers=layers,
        num_attention_heads=values.get("num_attention_heads", 28),
        num_key_value_heads=values.get("num_key_value_heads") or values.get("num_attention_heads", 28),
        attn_layers=tuple(values.get("attn_layers", range(1, layers, 2))),
        sliding_window=values.get("sliding_window", 4096),
        norm_eps=values.get("norm_eps", 1e-6),
        rope_theta=float(values.get("rope_theta", rope.get("rope_theta", 1000000.0))),
        max_position_embeddings=values.get("max_position_embeddings", 131072),
        tie_word_embeddings=values.get("tie_word_embeddings", False),
        w8aspike=w8aspike,
    )


def _is_w8aspike(keys) -> bool:
    return any(key.endswith("weight_quantizer.scales") for key in keys)


def _convert_official(state_dict: dict[str, torch.Tensor], config: SpikingBrainConfig) -> dict[str, torch.Tensor]:
    if _is_w8aspike(state_dict) != config.w8aspike:
        kind = "a W8ASpike" if config.w8aspike else "a bf16"
        found = "W8ASpike (it has weight_quantizer.scales)" if _is_w8aspike(state_dict) else "bf16"
        raise CheckpointError(
            f"The checkpoint is {found}, but the model is {kind} SpikingBrain. Load W8ASpike weights with "
            f"zoo.create('spikingbrain-7b.w8aspike', checkpoint_path=FOLDER) (or w8aspike=True), bf16 ones "
            f"with zoo.from_pretrained(FOLDER)."
        )
    if config.tie_word_embeddings and "lm_head.weight" not in state_dict:
        state_dict = {**state_dict, "lm_head.weight": state_dict["model.embeddings.weight"]}
    return state_dict


OFFICIAL = Converter(
    "official",
    convert_state_dict=_convert_official,
    convert_config=config_from_official,
    matches_config=lambda values: values.get("model_type") == "gla_swa",
    matches_keys=lambda keys: "model.embeddings.weight" in keys,
)


def convert_from_qwen2(
    qwen: nn.Module,
    attn_layers: tuple[int, ...] | None = None,
    sliding_window: int = 4096,
    seed: int = 0,
) -> SpikingBrainForCausalLM:
    """The paper's conversion: a SpikingBrain model from a Qwen2 decoder (zoo's Qwen2ForCausalLM, e.g. from
    `zoo.from_pretrained` of a transformers Qwen2 folder), to be trained on (the `language` task of `zoo train`).

    Embeddings, q/k/v/o, MLPs, norms and the LM head are transferred; in the GLA layers (those not in `attn_layers`,
    default the odd ones) the gate projections are initialised new (Xavier-uniform with gain 2^-2.5 and a zero bias,
    as the release initialises them) and `g_norm` to ones. Returns the model in training mode.
    """
    config = getattr(qwen, "config", None)
    needed = {"qkv_bias": True, "qk_norm": False, "attention_bias": False, "mlp_bias": False, "rope_scaling": None}
    if config is None or not hasattr(config, "qkv_bias") or any(getattr(config, k) != v for k, v in needed.items()):
        raise ConfigError("convert_from_qwen2 takes a Qwen2 / Qwen2.5 decoder (q/k/v biases, no q/k norm, no rope "
                          f"scaling), got {type(qwen).__name__}.")
    if config.resolved_head_dim * config.num_attention_heads != config.hidden_size:
        raise ConfigError(f"SpikingBrain needs head_dim = hidden_size / num_attention_heads; this Qwen2 has head_dim "
                          f"{config.resolved_head_dim} for {config.hidden_size} / {config.num_attention_heads}.")
    target = SpikingBrainConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers, num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads, attn_layers=attn_layers, sliding_window=sliding_window,
        norm_eps=config.rms_norm_eps, rope_theta=config.rope_theta,
        max_position_embeddings=config.max_position_embeddings,
        tie_word_embeddings=config.tie_word_embeddings,
    )
    rules = ((r"^model\.embed_tokens\.", "model.embeddings."), (r"\.self_attn\.", ".attn."),
             (r"\.input_layernorm\.", ".attn_norm."), (r"\.post_attention_layernorm\.", ".mlp_norm."))
    state_dict = rename_keys(qwen.state_dict(), rules)
    model = SpikingBrainForCausalLM(target)
    generator = torch.Generator().manual_seed(seed)
    for index, layer in enumerate(model.model.layers):
        if layer.is_swa:
            continue
        for name, tensor in layer.attn.named_parameters():
            if name.startswith("gk_proj"):
                fan_out, fan_in = tensor.shape if tensor.ndim == 2 else (1, 1)
                bound = 2 ** -2.5 * (6 / (fan_in + fan_out)) ** 0.5
                new = (torch.rand(tensor.shape, generator=generator) * 2 - 1) * bound if tensor.ndim == 2 else \
                    torch.zeros(tensor.shape)
            elif name.startswith("g_norm"):
                new = torch.ones(tensor.shape)
            else:
                continue
            state_dict[f"model.layers.{index}.attn.{name}"] = new.to(tensor.dtype)
    if target.tie_word_embeddings:
        state_dict.setdefault("lm_head.weight", state_dict["model.embeddings.weight"])
    model.load_state_dict(state_dict)
    return model.to(next(qwen.parameters()).dtype).train()


# ---------------------------------------------------------------------------------------------------
# zoo run


def load_folder(name: str, folder: str | Path, dtype: Any = None, device: Any = None) -> SpikingBrainForCausalLM:
    """A SpikingBrain checkpoint folder, official or zoo-saved, as the model `name` (`name.tag`) says: its config
    from the folder's config.json plus the tag's overrides (W8ASpike's, whose config.json is the bf16 one's)."""
    from zoo.factory import create, from_pretrained
    from zoo.hub import folder_config
    from zoo.registry import split_name

    entry, tag = split_name(name)
    values, _ = folder_config(Path(folder))
    if "zoo_family" in values:
        return from_pretrained(folder, family="spikingbrain", dtype=dtype or "auto", device=device)
    overrides = entry.source(tag).config_overrides if entry.sources else {}
    config = config_from_official(values, **overrides)
    return create(name, checkpoint_path=folder, dtype=dtype, device=device, **config.to_dict())


@torch.inference_mode()
def run(name: str, args: Any) -> None:
    """`zoo run spikingbrain-7b[.tag] --prompt TEXT [--checkpoint DIR]`: print the greedy continuation of the prompt,
    with the tokenizer of the checkpoint folder (without --checkpoint: the published one, from ModelScope)."""
    from transformers import AutoTokenizer

    from zoo.errors import InputError
    from zoo.factory import fetch_source
    from zoo.registry import split_name

    if not args.prompt:
        raise InputError("zoo run needs --prompt TEXT for a language model")
    entry, tag = split_name(name)
    folder = Path(args.checkpoint) if args.checkpoint else fetch_source(entry.source(tag))
    if not any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json")):
        raise InputError(f"{folder} has no tokenizer (tokenizer.json / vocab.json): zoo run reads the tokenizer from "
                         "the checkpoint folder; copy the release's tokenizer files there.")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = load_folder(name, folder, dtype=args.dtype, device=device)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    input_ids = torch.tensor([tokenizer.encode(args.prompt)], device=device)
    if input_ids.shape[1] == 0:
        raise InputError("--prompt encodes to no tokens")
    output = model.generate(input_ids, max_new_tokens=args.max_new_tokens, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id or 0)
    new = output[0, input_ids.shape[1]:].tolist()
    if tokenizer.eos_token_id in new:
        new = new[: new.index(tokenizer.eos_token_id)]
    print(tokenizer.decode(new, skip_special_tokens=True))


# ---------------------------------------------------------------------------------------------------
# Registry


register_family("spikingbrain", SpikingBrainForCausalLM, [OFFICIAL], runner="zoo.backbones.spikingbrain:run")

_7B = SpikingBrainConfig(attn_layers=tuple(range(1, 28, 2)))
_MODELSCOPE_NOTE = ("Hosted on ModelScope, not the Hugging Face Hub: zoo downloads it with the `modelscope` package "
                    "(pip install mmzoo[modelscope]), or give a local folder.")
register_model(ModelEntry(
    "spikingbrain-7b", "spikingbrain", "language", _7B,
    sources=(
        PretrainedSource("Panyuqi/V1-7B-base", tag="base", format="official", license="apache-2.0",
                         host="modelscope", notes=_MODELSCOPE_NOTE),
        PretrainedSource("Panyuqi/V1-7B-sft-s3-reasoning", tag="sft-reasoning", format="official",
                         license="apache-2.0", host="modelscope", notes=_MODELSCOPE_NOTE),
        PretrainedSource("Abel2076/SpikingBrain-7B-W8ASpike", tag="w8aspike", format="official",
                         license="apache-2.0", host="modelscope", config_overrides={"w8aspike": True},
                         notes=_MODELSCOPE_NOTE),
    ),
    paper="2509.05276",
    description="SpikingBrain-7B: Qwen2.5-7B converted to a 1:1 inter-layer hybrid of gated linear attention and "
                "4096-key sliding-window attention (28 layers, 28 query and 4 key/value heads); constant-memory "
                "decoding. The w8aspike tag is its INT8-weight, spike-coded-activation variant.",
    default_input=language_input(_7B),
    expected_params=7_616_542_976,
))
_TINY = SpikingBrainConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                           num_attention_heads=4, num_key_value_heads=2, attn_layers=(1, 3), sliding_window=16,
                           max_position_embeddings=1024)
register_model(ModelEntry(
    "spikingbrain-tiny", "spikingbrain", "language", _TINY, default_input=language_input(_TINY),
    description="A 4-layer SpikingBrain (GLA, SWA, GLA, SWA; a 16-key window) for tests and demos.",
))
