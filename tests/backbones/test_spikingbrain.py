"""SpikingBrain's hybrid decoder against an oracle built here: SWA layers, MLPs and norms from transformers' Qwen2
pieces, GLA as a plain float64 recurrence; prompts longer than the window, left padding, cached decoding, loading
the official layout from a folder, and bad configs."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

import zoo
from zoo.backbones.spikingbrain import SpikingBrainCache, SpikingBrainConfig, SpikingBrainForCausalLM
from zoo.errors import CheckpointError, ConfigError

qwen2 = pytest.importorskip("transformers.models.qwen2.modeling_qwen2")
from transformers import Qwen2Config  # noqa: E402

VOCAB = 96
WINDOW = 5
# GLA and SWA in a pattern that is not the class default (odd indices), 6 query heads over 2 key/value heads.
CONFIG = SpikingBrainConfig(vocab_size=VOCAB, hidden_size=48, intermediate_size=80, num_hidden_layers=4,
                            num_attention_heads=6, num_key_value_heads=2, attn_layers=(0, 3), sliding_window=WINDOW,
                            norm_eps=1e-6, rope_theta=10000.0, max_position_embeddings=256)


def randomized(config: SpikingBrainConfig = CONFIG, seed: int = 0) -> SpikingBrainForCausalLM:
    """A model whose norms and biases are all off identity and zero, with peaked SWA attention."""
    torch.manual_seed(seed)
    model = SpikingBrainForCausalLM(config).eval()
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                param.add_(torch.randn(param.shape, generator=generator) * 0.2)
            elif name.endswith("weight") and param.ndim == 2:
                param.copy_(torch.randn(param.shape, generator=generator) * param.shape[1] ** -0.5)
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                param.mul_(2)
    return model


def _batch(length: int = 23, padding: int = 6, seed: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Two prompts, the second left-padded by `padding` tokens; both longer than the window."""
    input_ids = torch.randint(1, VOCAB, (2, length), generator=torch.Generator().manual_seed(seed))
    attention_mask = torch.ones_like(input_ids)
    input_ids[1, :padding], attention_mask[1, :padding] = 0, 0
    return input_ids, attention_mask


# ---------------------------------------------------------------------------------------------------
# The oracle


def _qwen2_config(config: SpikingBrainConfig) -> Qwen2Config:
    return Qwen2Config(vocab_size=config.vocab_size, hidden_size=config.hidden_size,
                       intermediate_size=config.intermediate_size, num_hidden_layers=1,
                       num_attention_heads=config.num_attention_heads, num_key_value_heads=config.num_key_value_heads,
                       rms_norm_eps=config.norm_eps, rope_parameters={"rope_type": "default",
                                                                      "rope_theta": config.rope_theta},
                       attn_implementation="eager")


def _copy(target: torch.nn.Module, source: torch.nn.Module) -> torch.nn.Module:
    target.load_state_dict({k: v for k, v in source.state_dict().items() if "weight_quantizer" not in k})
    return target.eval()


def _window_mask(length: int, attention_mask: torch.Tensor, window: int) -> torch.Tensor:
    """Additive (B, 1, L, L) mask: key j visible from query i iff i - window < j <= i and j is not padding."""
    i, j = torch.arange(length)[:, None], torch.arange(length)[None]
    visible = (j <= i) & (j > i - window) & attention_mask.bool()[:, None, None, :]
    return torch.zeros(visible.shape).masked_fill(~visible, torch.finfo(torch.float32).min)


def gla_recurrence(q, k, v, logits, attention_mask, heads: int, kv_heads: int, norm_weight, eps: float):
    """The GLA mixing in float64 from projections (B, L, heads * d) and (B, L, kv_heads * d): ReLU features, v masked,
    gate logsigmoid / 16, S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t, o_t = q_t S_t / sqrt(d), per-head RMSNorm."""
    batch, length = q.shape[:2]
    d = q.shape[-1] // heads
    q = torch.relu(q.double()).unflatten(-1, (heads, d))
    k = torch.relu(k.double()).unflatten(-1, (kv_heads, d))
    v = (v.double() * attention_mask[..., None].double()).unflatten(-1, (kv_heads, d))
    g = (F.logsigmoid(logits.double()) / 16).unflatten(-1, (kv_heads, d))
    group = heads // kv_heads
    outputs = torch.zeros(batch, length, heads, d, dtype=torch.float64)
    for b in range(batch):
        for h in range(heads):
            state = torch.zeros(d, d, dtype=torch.float64)
            for t in range(length):
                kv = h // group
                state = torch.exp(g[b, t, kv])[:, None] * state + torch.outer(k[b, t, kv], v[b, t, kv])
                outputs[b, t, h] = (q[b, t, h] * d ** -0.5) @ state
    normed = outputs * torch.rsqrt(outputs.pow(2).mean(-1, keepdim=True) + eps) * norm_weight.double()
    return normed.flatten(-2)


def gla_oracle(attn, x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The bf16 release's GLA layer: float64 projections (a low-rank gate) and `gla_recurrence`."""
    x = x.double()
    linear = lambda layer, t: F.linear(t, layer.weight.double(), None if layer.bias is None else layer.bias.double())
    logits = linear(attn.gk_proj[1], linear(attn.gk_proj[0], x))
    mixed = gla_recurrence(linear(attn.q_proj, x), linear(attn.k_proj, x), linear(attn.v_proj, x), logits,
                           attention_mask, attn.num_heads, attn.num_kv_heads, attn.g_norm.weight, attn.g_norm.eps)
    return linear(attn.o_proj, mixed).float()


def oracle_logits(model: SpikingBrainForCausalLM, input_ids: torch.Tensor,
                  attention_mask: torch.Tensor) -> torch.Tensor:
    """Logits from transformers' Qwen2 attention, MLP and RMSNorm and the float64 GLA recurrence, positions counted
    over the real tokens (left padding)."""
    config = model.config
    hf = _qwen2_config(config)
    rotary = qwen2.Qwen2RotaryEmbedding(hf)
    x = model.model.embeddings.weight[input_ids]
    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    cos_sin = rotary(x, positions)
    mask = _window_mask(input_ids.shape[1], attention_mask, config.sliding_window)
    norm = lambda source: _copy(qwen2.Qwen2RMSNorm(config.hidden_size, eps=config.norm_eps), source)
    for index, layer in enumerate(model.model.layers):
        h = norm(layer.attn_norm)(x)
        if index in config.swa_layers:
            h = _copy(qwen2.Qwen2Attention(hf, 0), layer.attn)(h, cos_sin, mask)[0]
        else:
            h = gla_oracle(layer.attn, h, attention_mask)
        x = x + h
        mlp = _copy(qwen2.Qwen2MLP(hf), torch.nn.ModuleDict({
            "gate_proj": layer.mlp.gate_proj, "up_proj": layer.mlp.up_proj, "down_proj": layer.mlp.down_proj}))
        x = x + mlp(norm(layer.mlp_norm)(x))
    return model.lm_head(norm(model.model.norm)(x))


# ---------------------------------------------------------------------------------------------------
# Tests


@torch.no_grad()
def test_logits_match_the_oracle_past_the_window_with_left_padding():
    model = randomized()
    input_ids, attention_mask = _batch()
    expected = oracle_logits(model, input_ids, attention_mask)
    logits = model(input_ids, attention_mask=attention_mask, position_ids=(attention_mask.cumsum(-1) - 1).clamp(min=0))
    real = attention_mask.bool()
    diff = (logits - expected)[real].abs().max().item()
    assert diff < 1e-4, diff
    # Without position ids (positions count the padding too, as the release's plain forward does): RoPE is
    # relative and SWA never sees the padding, so the real tokens' logits do not change.
    assert (model(input_ids, attention_mask=attention_mask) - expected)[real].abs().max() < 1e-4
    # The unpadded prompt gives the same logits as its padded copy's real tokens.
    unpadded = model(input_ids[1:, 6:])
    assert (unpadded[0] - expected[1, 6:]).abs().max() < 1e-4
    # The window matters: a window one key wider changes the logits.
    model_wide = SpikingBrainForCausalLM(CONFIG.replace(sliding_window=WINDOW + 1)).eval()
    model_wide.load_state_dict(model.state_dict())
    assert (model_wide(input_ids[:1]) - expected[:1]).abs().max() > 1e-3


@torch.no_grad()
def test_layer_pattern_follows_attn_layers():
    model = randomized()
    kinds = [type(layer.attn).__name__ for layer in model.model.layers]
    assert kinds == ["SlidingWindowAttention", "GatedLinearAttention", "GatedLinearAttention", "SlidingWindowAttention"]
    default = SpikingBrainConfig(num_hidden_layers=6, hidden_size=64, num_attention_heads=4, num_key_value_heads=2)
    assert default.swa_layers == (1, 3, 5)
    gla = model.model.layers[1].attn
    assert gla.gk_proj[0].weight.shape == (16, 48) and gla.gk_proj[1].weight.shape == (16, 16)
    assert gla.g_norm.weight.shape == (8,)


@torch.no_grad()
def test_chunked_prefill_through_the_cache_equals_one_pass():
    model = randomized()
    input_ids, attention_mask = _batch(length=21)
    expected = model(input_ids, attention_mask=attention_mask)
    cache = model.make_cache()
    parts = [model(input_ids[:, :8], attention_mask=attention_mask[:, :8], cache=cache),
             model(input_ids[:, 8:9], attention_mask=attention_mask[:, :9], cache=cache),
             model(input_ids[:, 9:], attention_mask=attention_mask, cache=cache)]
    real = attention_mask.bool()
    assert (torch.cat(parts, 1) - expected)[real].abs().max() < 1e-4
    assert all(keys.shape[2] == WINDOW - 1 for keys in cache.keys.values())


@torch.no_grad()
@pytest.mark.parametrize("length", [9, 3])  # a prompt longer, and one shorter, than the window
def test_greedy_generation_past_the_window_equals_full_recompute(length):
    model = randomized()
    input_ids, attention_mask = _batch(length=length, padding=length // 3)
    new = 3 * WINDOW
    generated = model.generate(input_ids, attention_mask, max_new_tokens=new)
    sequence, mask = input_ids, attention_mask
    for _ in range(new):
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = model(sequence, attention_mask=mask, position_ids=positions)[:, -1]
        sequence = torch.cat([sequence, logits.argmax(-1, keepdim=True)], 1)
        mask = torch.cat([mask, mask.new_ones(2, 1)], 1)
    assert torch.equal(generated, sequence)
    assert len(set(generated[0, length:].tolist())) > 2  # not a degenerate repetition
    assert torch.equal(model.generate(input_ids, attention_mask, max_new_tokens=new, cache="static"), generated)


@torch.no_grad()
def test_decoding_memory_does_not_grow_with_length():
    model = randomized()
    cache = model.make_cache()
    token = torch.randint(1, VOCAB, (1, 7))
    model(token, cache=cache)
    sizes = []
    for step in range(4 * WINDOW):
        model(token[:, :1], attention_mask=torch.ones(1, cache.seen + 1, dtype=torch.long), cache=cache)
        sizes.append(cache.memory_bytes())
    assert len(set(sizes)) == 1
    assert sorted(cache.states) == [1, 2] and sorted(cache.keys) == [0, 3]
    assert cache.states[1].shape == (1, 6, 8, 8) and cache.keys[0].shape == (1, 2, WINDOW - 1, 8)
    with pytest.raises(ConfigError, match="compile=False"):
        model.generate(token, max_new_tokens=2, cache="static", compile=True)


def _official_folder(model: SpikingBrainForCausalLM, folder, **extra) -> None:
    config = model.config
    values = {"architectures": ["GLAswaForCausalLM"], "model_type": "gla_swa", "attn_layers": list(config.swa_layers),
              "attn_mode": "chunk", "hidden_act": "swish", "hidden_size": config.hidden_size,
              "intermediate_size": config.intermediate_size, "num_hidden_layers": config.num_hidden_layers,
              "num_attention_heads": config.num_attention_heads, "num_key_value_heads": config.num_key_value_heads,
              "norm_eps": config.norm_eps, "rope_theta": config.rope_theta, "sliding_window": config.sliding_window,
              "max_position_embeddings": config.max_position_embeddings, "use_short_conv": False,
              "tie_word_embeddings": False, "vocab_size": config.vocab_size, "torch_dtype": "bfloat16", **extra}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(values))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "model.safetensors")


@torch.no_grad()
def test_loads_the_official_layout_from_a_folder(tmp_path):
    model = randomized()
    keys = set(model.state_dict())
    assert {"model.embeddings.weight", "model.layers.1.attn_norm.weight", "model.layers.1.attn.gk_proj.0.weight",
            "model.layers.1.attn.gk_proj.1.bias", "model.layers.1.attn.g_norm.weight",
            "model.layers.0.attn.q_proj.bias", "model.layers.0.mlp_norm.weight", "model.layers.0.mlp.down_proj.weight",
            "model.norm.weight", "lm_head.weight"} <= keys
    _official_folder(model, tmp_path / "official")
    loaded = zoo.from_pretrained(tmp_path / "official", dtype="float32")
    assert loaded.config.swa_layers == (0, 3)  # read from the file, not the class default
    input_ids, attention_mask = _batch()
    expected = model(input_ids, attention_mask=attention_mask)
    assert torch.equal(loaded(input_ids, attention_mask=attention_mask), expected)
    with pytest.raises(ConfigError, match="use_short_conv"):
        _official_folder(model, tmp_path / "conv", use_short_conv=True)
        zoo.from_pretrained(tmp_path / "conv")
    created = zoo.create("spikingbrain-tiny", checkpoint_path=tmp_path / "official", **{
        k: v for k, v in model.config.to_dict().items() if k != "w8aspike"})
    assert torch.equal(created(input_ids), model(input_ids))


def test_bad_configs_say_what_to_do():
    with pytest.raises(ConfigError, match=r"attn_layers holds \[4\].*0\.\.3"):
        CONFIG.replace(attn_layers=(1, 4))
    with pytest.raises(ConfigError, match=r"attn_layers holds \[-1\]"):
        zoo.create("spikingbrain-tiny", attn_layers=(-1,))
    with pytest.raises(ConfigError, match="divisible"):
        CONFIG.replace(num_attention_heads=5)
    with pytest.raises(ConfigError, match="multiple of 128"):
        CONFIG.replace(w8aspike=True)
    with pytest.raises(ConfigError, match="SpikingBrainCache"):
        from zoo.layers.attention import DynamicCache

        randomized()(torch.ones(1, 3, dtype=torch.long), cache=DynamicCache())


def test_published_size_and_sources():
    info = zoo.model_info("spikingbrain-7b")
    # Qwen2.5-7B's 7,615,616,512 plus, in each of the 14 GLA layers, the gate (3584 x 16, 16 x 512 + 512) and g_norm.
    assert info["params"] == 7_615_616_512 + 14 * (3584 * 16 + 16 * 512 + 512 + 128)
    assert [s["tag"] for s in info["sources"]] == ["base", "sft-reasoning", "w8aspike"]
    entry = zoo.registry.get_entry("spikingbrain-7b")
    assert {s.host for s in entry.sources} == {"modelscope"}
    assert entry.source("w8aspike").config_overrides == {"w8aspike": True}
    assert not any(name.startswith("spikingbrain-7b-vl") for name in zoo.list_models("spikingbrain*"))
    with torch.device("meta"):
        quantised = SpikingBrainForCausalLM(entry.config.replace(w8aspike=True))
    assert quantised.model.layers[0].attn.gk_proj.weight.shape == (512, 3584)
    assert quantised.model.layers[0].attn.q_proj.weight_quantizer.scales.shape == (3584, 28, 1)


def test_cache_is_bounded_by_the_window():
    cache = SpikingBrainCache(window=4)
    k = torch.randn(1, 2, 10, 8)
    keys, _ = cache.update(k, k, 0)
    assert keys.shape[2] == 10 and cache.keys[0].shape[2] == 3
    keys, _ = cache.update(k[:, :, :1], k[:, :, :1], 0)
    assert keys.shape[2] == 4 and torch.equal(keys[:, :, :3], k[:, :, 7:])
    long = torch.randn(1, 2, 1000, 8)
    cache.update(long, long, 1)  # a long prompt: only the window's keys stay in memory, not a view of all 1000
    assert cache.keys[1].untyped_storage().nbytes() == 2 * 3 * 8 * 4
    for length in range(1, 8):  # fewer keys than the window keeps: all of them stay
        cache = SpikingBrainCache(window=6)
        cache.update(k[:, :, :length], k[:, :, :length], 0)
        assert torch.equal(cache.keys[0], k[:, :, max(length - 5, 0):length])


def test_save_pretrained_round_trips_with_its_card(tmp_path):
    model = randomized()
    model.save_pretrained(tmp_path / "saved")
    card = (tmp_path / "saved" / "README.md").read_text()
    assert "sliding-window attention" in card and "arXiv:2509.05276" in card
    loaded = zoo.from_pretrained(tmp_path / "saved")
    input_ids, attention_mask = _batch()
    expected = model(input_ids, attention_mask=attention_mask)
    assert torch.equal(loaded(input_ids, attention_mask=attention_mask), expected)
