"""Autoregressive generation with a KV cache for decoder models (language models and VLMs).

A model generates through this loop if its forward takes `(input_ids, attention_mask, position_ids, cache,
logits_to_keep, **prefill_inputs)` and returns logits (B, L, vocab). Prefill inputs (pixel values and the
like) are passed on the first step only. Positions follow transformers' generate: the cumulative count of
real tokens, so left-padded rows start at 0. A model whose layers keep other state than keys and values (a
linear-attention state, a sliding window) brings its own cache with `make_cache(max_length)` (see `new_cache`).
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from zoo.errors import ConfigError, InputError
from zoo.layers.attention import DynamicCache, StaticCache
from zoo.layers.mlp import project
from zoo.modeling import ZooModel

# With compile=True the static cache is rounded up to a multiple of this many positions, so that calls with
# similar lengths share one compiled decoding step.
COMPILED_CACHE_MULTIPLE = 256

# Inductor's decompose_mm_pass turns a one-row matmul on CPU (every projection of a one-token step, when no
# side exceeds 2048) into a multiply and a sum, which it fuses into one parallel reduction over the weight.
# Decoding reads every weight once per token; MKL's one-row GEMV reads it on one thread (20-26 GB/s on the 2-core
# EPYC of the benchmarks), the reduction on both (24-28 GB/s). The pass leaves CUDA matmuls and batches of several
# rows alone; wider projections (LM heads, MLPs, Phi-2's 2560-wide attention) do the same through
# `zoo.layers.mlp.project`.
_DECODE_COMPILE_OPTIONS = {"post_grad_fusion_options": {"decompose_mm_pass": {}}}

# The options of `generate`; transformers' options that it lacks are accepted at their default value only.
_GENERATE_OPTIONS = ("max_new_tokens", "do_sample", "temperature", "top_k", "top_p", "eos_token_id", "pad_token_id",
                    "cache", "compile", "generator")
_UNSUPPORTED = {"num_beams": (1, "beam search"), "num_return_sequences": (1, "several sequences per prompt"),
                "repetition_penalty": (1.0, "a repetition penalty"), "use_cache": (True, "decoding without a cache")}
# The inputs `generate` itself gives the model's forward.
_LOOP_INPUTS = {"input_ids", "attention_mask", "position_ids", "cache", "logits_to_keep"}


def check_generation_options(
    max_new_tokens: int = 32,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
) -> None:
    """Raise a ConfigError for a value transformers' GenerationConfig and logits warpers would refuse, and for
    top_p=0 (which they take as greedy decoding)."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    if not isinstance(do_sample, bool):
        raise ConfigError(f"do_sample must be True or False, got {do_sample!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 <= temperature < math.inf:
        raise ConfigError(f"temperature must be a finite number >= 0, got {temperature!r}")
    if do_sample and temperature == 0:
        raise ConfigError("temperature must be positive when sampling (do_sample=True), got 0; "
                          "for greedy decoding use do_sample=False")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0):
        raise ConfigError(f"top_k must be a non-negative integer (0 or None: no top-k filtering), got {top_k!r}")
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1):
        raise ConfigError(f"top_p must be in (0, 1] (1 or None: no nucleus filtering), got {top_p!r}; "
                          "for greedy decoding use do_sample=False")


def _prefill_inputs(model: nn.Module, extra: dict[str, Any]) -> dict[str, Any]:
    """The model inputs among `generate`'s extra keyword arguments; anything else is a ConfigError naming the
    supported options, unless it is a transformers option at its default value (then it is dropped)."""
    parameters = inspect.signature(model.forward).parameters
    if any(parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters.values()):
        return extra
    model_inputs = [name for name in parameters if name not in _LOOP_INPUTS]
    for name, value in extra.items():
        if name in model_inputs:
            continue
        if name not in _UNSUPPORTED:
            raise ConfigError(f"generate got an unknown option {name!r}; its options are "
                              f"{', '.join(_GENERATE_OPTIONS)}, and the model's inputs {', '.join(model_inputs)}")
        default, feature = _UNSUPPORTED[name]
        if value != default:
            raise ConfigError(f"{feature} ({name}={value!r}) is not supported: generate decodes greedily "
                              "(do_sample=False) or by sampling (do_sample=True with temperature, top_k, top_p)")
    return {name: value for name, value in extra.items() if name in model_inputs}


def select_next_token(
    logits: torch.Tensor,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The next token (B,) from last-position logits (B, vocab): argmax, or a sample after temperature,
    top-k and top-p (nucleus) filtering, applied in that order as transformers does."""
    if not do_sample:
        return logits.argmax(dim=-1)
    if temperature <= 0:
        raise ValueError(f"temperature must be positive when sampling, got {temperature}")
    logits = logits.float() / temperature
    if top_k is not None and top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=False)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop_sorted = cumulative <= 1 - top_p
        drop_sorted[..., -1] = False  # always keep the most likely token
        logits = logits.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(-1)


@torch.inference_mode()
def generate(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    max_new_tokens: int = 32,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int = 0,
    cache: str = "dynamic",
    compile: bool = False,
    generator: torch.Generator | None = None,
    **prefill_inputs: Any,
) -> torch.Tensor:
    """Prompt ids (B, L) followed by up to `max_new_tokens` new ones: (B, L + new).

    attention_mask: (B, L), 0 on left padding. eos_token_id: one or several stop tokens; a finished row
    is filled with `pad_token_id` until every row has finished. cache: "dynamic" (grows by concatenation)
    or "static" (pre-allocated for L + max_new_tokens positions: no allocation per token).
    compile: run each decoding step through `torch.compile` (needs cache="static"): the steps then have
    one fixed shape, attending over the whole cache with unwritten positions masked. The first call
    compiles for a minute or more on CPU; later calls with a cache of the same size reuse it.
    Beam search and other transformers options are not supported: an unknown option is a ConfigError.
    """
    check_generation_options(max_new_tokens, do_sample, temperature, top_k, top_p)
    prefill_inputs = _prefill_inputs(model, prefill_inputs)
    if cache not in ("dynamic", "static"):
        raise ConfigError(f"cache must be 'dynamic' or 'static', got {cache!r}")
    if compile and cache != "static":
        raise ConfigError(f"compile=True needs cache='static', got cache={cache!r}")
    if input_ids.ndim != 2:
        raise InputError(f"input_ids must be (B, L), got {tuple(input_ids.shape)}")
    batch_size, length = input_ids.shape
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if attention_mask.shape != input_ids.shape:
        raise InputError(f"attention_mask {tuple(attention_mask.shape)} must have the shape of input_ids "
                         f"{tuple(input_ids.shape)}")
    if batch_size == 0:
        raise InputError("input_ids holds no prompt (batch size 0)")
    empty = attention_mask.sum(-1).eq(0).nonzero().flatten().tolist()
    if empty:
        raise InputError(f"prompt {empty[0]} of the batch has no tokens: generate needs at least one token per prompt "
                         "(e.g. the chat-templated prompt, or the tokenizer's BOS token)")
    max_length = None
    if cache == "static":
        max_length = length + max_new_tokens
        if compile:
            max_length = math.ceil(max_length / COMPILED_CACHE_MULTIPLE) * COMPILED_CACHE_MULTIPLE
    kv_cache = new_cache(model, max_length)
    stop = torch.tensor([] if eos_token_id is None else
                        [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id),
                        device=input_ids.device, dtype=torch.long)

    position_ids = (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)
    logits = model(input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=kv_cache,
                   logits_to_keep=1, **prefill_inputs)[:, -1]
    decode_step = _decode_step
    if compile:
        decode_step = _compiled_decode_step()
        kv_cache.write_position = torch.tensor([length], device=input_ids.device)
        attention_mask = torch.cat([attention_mask, attention_mask.new_zeros(batch_size, max_length - length)], 1)
    finished = torch.zeros(batch_size, dtype=torch.bool, device=input_ids.device)
    new_tokens = []
    for step in range(max_new_tokens):
        token = select_next_token(logits, do_sample, temperature, top_k, top_p, generator)
        token = token.masked_fill(finished, pad_token_id)
        new_tokens.append(token)
        finished |= torch.isin(token, stop)
        if step == max_new_tokens - 1 or bool(finished.all()):
            break
        if compile:
            attention_mask.index_fill_(1, kv_cache.write_position, 1)
        else:
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones(batch_size, 1)], dim=1)
        position_ids = position_ids[:, -1:] + 1
        logits = decode_step(model, token[:, None], attention_mask, position_ids, kv_cache)
        if compile:
            kv_cache.write_position += 1
    return torch.cat([input_ids, torch.stack(new_tokens, dim=1)], dim=1)


def new_cache(model: nn.Module, max_length: int | None) -> Any:
    """The cache `generate` passes to every step: the model's own (`model.make_cache(max_length)`) where it has one,
    else a StaticCache of `max_length` positions, or a DynamicCache when `max_length` is None (cache="dynamic")."""
    if hasattr(model, "make_cache"):
        return model.make_cache(max_length)
    return DynamicCache() if max_length is None else StaticCache(max_length)


def lm_logits(lm_head: nn.Linear, hidden: torch.Tensor, logits_to_keep: int = 0) -> torch.Tensor:
    """The LM head's logits (B, L or k, vocab) of hidden states (B, L, D), for the last k = logits_to_keep
    positions only when it is positive (generation needs 1)."""
    hidden = hidden[:, -logits_to_keep:] if logits_to_keep else hidden
    return project(lm_head, hidden)


class CausalLM(ZooModel):
    """A decoder trunk and its LM head: forward(input_ids, ...) -> logits (B, L, vocab); `generate` decodes.

    A family sets `config_class`, `trunk_class` (built from the config; its forward takes input_ids, inputs_embeds,
    attention_mask, position_ids and cache and returns hidden states (B, L, hidden_size), and it holds
    `embed_tokens` and `layers`) and whether its head has a bias.
    """

    trunk_class: ClassVar[type[nn.Module]]
    lm_head_bias: ClassVar[bool] = False

    def __init__(self, config: Any):
        super().__init__(config)
        self.model = self.trunk_class(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=self.lm_head_bias)
        self.tie_weights()

    def tie_weights(self) -> None:
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def fsdp_units(self) -> list[nn.Module]:
        return list(self.model.layers)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: DynamicCache | StaticCache | None = None,
        logits_to_keep: int = 0,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """input_ids (B, L) or inputs_embeds (B, L, hidden_size); attention_mask (B, past + L) with 0 on padding,
        position_ids (B, L) and the KV cache as the trunk takes them. logits_to_keep=k > 0 computes logits for the
        last k positions only. Returns (B, L or k, vocab)."""
        hidden = self.model(input_ids, inputs_embeds, attention_mask, position_ids, cache)
        return lm_logits(self.lm_head, hidden, logits_to_keep)

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 **kwargs: Any) -> torch.Tensor:
        """Greedy or sampled decoding; see `zoo.backbones.generation.generate` for the options."""
        return generate(self, input_ids, attention_mask, **kwargs)


def _decode_step(model: nn.Module, token: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                 cache: DynamicCache | StaticCache) -> torch.Tensor:
    """Logits (B, vocab) after one new token (B, 1) per row."""
    return model(token, attention_mask=attention_mask, position_ids=position_ids, cache=cache, logits_to_keep=1)[:, -1]


@functools.cache
def _compiled_decode_step() -> Callable[..., torch.Tensor]:
    return torch.compile(_decode_step, fullgraph=True, dynamic=False, options=_DECODE_COMPILE_OPTIONS)
