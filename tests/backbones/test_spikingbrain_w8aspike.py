"""SpikingBrain's W8ASpike variant against an independent fake-quant + spike-coding reference written here from the
official formulas; its checkpoint layout; the spike-train encoders and spike statistics."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

import zoo
from tests.backbones.test_spikingbrain import gla_recurrence
from zoo.backbones.spikingbrain import SpikingBrainConfig, SpikingBrainForCausalLM
from zoo.errors import CheckpointError, ConfigError, InputError
from zoo.layers.spike import SpikeLinear, decode_spikes, encode_spikes, spike_stats, spike_steps

VOCAB = 96
CONFIG = SpikingBrainConfig(vocab_size=VOCAB, hidden_size=256, intermediate_size=384, num_hidden_layers=3,
                            num_attention_heads=4, num_key_value_heads=2, attn_layers=(1,), sliding_window=6,
                            rope_theta=10000.0, max_position_embeddings=256, w8aspike=True)


def quantised(config: SpikingBrainConfig = CONFIG, seed: int = 0) -> SpikingBrainForCausalLM:
    """Random weights, norms and biases, with INT8 scales calibrated as amax / 127 of each 128-channel group (times a
    random factor in [1, 1.5), so that the grid is not the weights' own)."""
    torch.manual_seed(seed)
    model = SpikingBrainForCausalLM(config).eval()
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                param.add_(torch.randn(param.shape, generator=generator) * 0.2)
            elif param.ndim == 2:
                param.copy_(torch.randn(param.shape, generator=generator) * param.shape[1] ** -0.5)
        for module in model.modules():
            if isinstance(module, SpikeLinear):
                amax = module.weight.unflatten(1, (-1, 128)).abs().amax(-1, keepdim=True)
                factor = 1 + 0.5 * torch.rand(amax.shape, generator=generator)
                module.weight_quantizer.scales.copy_(amax / 127 * factor)
    return model


# ---------------------------------------------------------------------------------------------------
# The reference: the official W8ASpike computations, written out on the state dict


def ref_spikes(x: torch.Tensor) -> torch.Tensor:
    """Adaptive-threshold spike coding per last-dim row: V_th = clamp(mean|x| / 3, 1e-5, 1e4),
    x -> round(x / V_th) V_th."""
    vth = torch.clamp(torch.mean(torch.abs(x), dim=-1, keepdim=True) / 3.0, min=1e-5, max=1e4)
    return torch.round(x / vth) * vth


def ref_int8(x: torch.Tensor) -> torch.Tensor:
    """Symmetric 8-bit rounding per last-dim row: scale = clamp(amax / 127, 1e-5, 1e4), levels -128..127."""
    scale = torch.clamp(torch.amax(torch.abs(x), dim=-1, keepdim=True) / 127, min=1e-5, max=1e4)
    return torch.clamp(torch.round(x / scale), -128, 127) * scale


def ref_weight(weight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    out, inp = weight.shape
    groups = weight.reshape(out, inp // 128, 128)
    return (torch.round(groups / scales) * scales).reshape(out, inp)


def ref_linear(sd: dict, prefix: str, x: torch.Tensor, spike: bool = True, quantise: bool = True) -> torch.Tensor:
    weight = sd[prefix + ".weight"]
    if quantise:
        weight = ref_weight(weight, sd[prefix + ".weight_quantizer.scales"])
    return F.linear(ref_spikes(x) if spike else x, weight, sd.get(prefix + ".bias"))


def ref_rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return weight * (x * torch.rsqrt(torch.mean(x * x, dim=-1, keepdim=True) + eps))


def ref_swa(sd: dict, prefix: str, x: torch.Tensor, attention_mask: torch.Tensor, config) -> torch.Tensor:
    batch, length, _ = x.shape
    heads, kv_heads, d = config.num_attention_heads, config.num_key_value_heads, config.head_dim
    q = ref_linear(sd, prefix + ".q_proj", x).view(batch, length, heads, d)
    k = ref_linear(sd, prefix + ".k_proj", x).view(batch, length, kv_heads, d)
    v = ref_linear(sd, prefix + ".v_proj", x).view(batch, length, kv_heads, d)
    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0).float()
    inv_freq = 1.0 / config.rope_theta ** (torch.arange(0, d, 2).float() / d)
    angles = torch.cat([positions[..., None] * inv_freq] * 2, -1)[:, :, None]  # (B, L, 1, d)
    rotate = lambda t: torch.cat([-t[..., d // 2:], t[..., : d // 2]], -1)
    q = q * angles.cos() + rotate(q) * angles.sin()
    k = k * angles.cos() + rotate(k) * angles.sin()
    q, k, v = ref_spikes(q), ref_int8(k), ref_int8(v)  # per (token, head)
    k, v = (t.repeat_interleave(heads // kv_heads, dim=2) for t in (k, v))
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) * d ** -0.5
    i, j = torch.arange(length)[:, None], torch.arange(length)[None]
    visible = (j <= i) & (j > i - config.sliding_window) & attention_mask.bool()[:, None, None, :]
    weights = torch.softmax(scores.masked_fill(~visible, -torch.inf), -1).nan_to_num(0.0)
    out = torch.einsum("bhqk,bkhd->bqhd", weights, v).reshape(batch, length, heads * d)
    return ref_linear(sd, prefix + ".o_proj", out, spike=True)


def ref_gla(sd: dict, prefix: str, x: torch.Tensor, attention_mask: torch.Tensor, config) -> torch.Tensor:
    """Spike-coded inputs through fake-quantised q/k/v/gate weights, the float64 GLA recurrence, a spike-coded
    o_proj."""
    q, k, v, logits = (ref_linear(sd, f"{prefix}.{name}", x) for name in ("q_proj", "k_proj", "v_proj", "gk_proj"))
    mixed = gla_recurrence(q, k, v, logits, attention_mask, config.num_attention_heads, config.num_key_value_heads,
                           sd[prefix + ".g_norm.weight"], config.norm_eps).float()
    return ref_linear(sd, prefix + ".o_proj", mixed)


@torch.no_grad()
def reference_logits(model: SpikingBrainForCausalLM, input_ids: torch.Tensor, attention_mask: torch.Tensor):
    config, sd = model.config, model.state_dict()
    x = sd["model.embeddings.weight"][input_ids]
    for index in range(config.num_hidden_layers):
        prefix = f"model.layers.{index}"
        h = ref_rms(x, sd[prefix + ".attn_norm.weight"], config.norm_eps)
        mix = ref_swa if index in config.swa_layers else ref_gla
        x = x + mix(sd, prefix + ".attn", h, attention_mask, config)
        h = ref_rms(x, sd[prefix + ".mlp_norm.weight"], config.norm_eps)
        gated = F.silu(ref_linear(sd, prefix + ".mlp.gate_proj", h)) * ref_linear(sd, prefix + ".mlp.up_proj", h)
        x = x + ref_linear(sd, prefix + ".mlp.down_proj", gated, spike=False, quantise=False)
    return F.linear(ref_rms(x, sd["model.norm.weight"], config.norm_eps), sd["lm_head.weight"])


def _batch(length: int = 15, padding: int = 4):
    input_ids = torch.randint(1, VOCAB, (2, length), generator=torch.Generator().manual_seed(3))
    attention_mask = torch.ones_like(input_ids)
    input_ids[1, :padding], attention_mask[1, :padding] = 0, 0
    return input_ids, attention_mask


# ---------------------------------------------------------------------------------------------------
# Tests


@torch.no_grad()
def test_w8aspike_forward_matches_the_reference():
    model = quantised()
    input_ids, attention_mask = _batch()
    expected = reference_logits(model, input_ids, attention_mask)
    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids, attention_mask=attention_mask, position_ids=positions)
    real = attention_mask.bool()
    assert (logits - expected)[real].abs().max() < 1e-4
    assert (model(input_ids[:1]) - expected[:1]).abs().max() < 1e-4
    # Quantisation and spiking matter: the same weights without them give other logits.
    for module in model.modules():
        if isinstance(module, SpikeLinear):
            module.spike_input = module.quantize_weight = False
    model.model.layers[1].attn.spiking = False
    assert (model(input_ids, attention_mask=attention_mask, position_ids=positions) - expected)[real].abs().max() > 1e-2


@torch.no_grad()
def test_w8aspike_decoding_quantises_the_cached_keys_as_the_prefill_does():
    model = quantised()
    input_ids, attention_mask = _batch(length=9, padding=2)
    generated = model.generate(input_ids, attention_mask, max_new_tokens=8)
    sequence, mask = input_ids, attention_mask
    for _ in range(8):
        logits = model(sequence, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0))[:, -1]
        sequence = torch.cat([sequence, logits.argmax(-1, keepdim=True)], 1)
        mask = torch.cat([mask, mask.new_ones(2, 1)], 1)
    assert torch.equal(generated, sequence)


def test_w8aspike_checkpoint_layout_and_loading(tmp_path):
    model = quantised()
    state = model.state_dict()
    assert state["model.layers.0.attn.gk_proj.weight"].shape == (128, 256)  # one full-rank gate
    assert "model.layers.0.attn.gk_proj.0.weight" not in state
    for name in ("attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.o_proj", "attn.gk_proj", "mlp.gate_proj",
                 "mlp.up_proj", "mlp.down_proj"):
        weight = state[f"model.layers.0.{name}.weight"]
        scales = state[f"model.layers.0.{name}.weight_quantizer.scales"]
        assert scales.shape == (weight.shape[0], weight.shape[1] // 128, 1)
    assert not model.model.layers[0].mlp.down_proj.spike_input
    assert not model.model.layers[0].mlp.down_proj.quantize_weight
    folder = tmp_path / "w8aspike"
    folder.mkdir()
    values = {"model_type": "gla_swa", "attn_layers": [1], "hidden_size": 256, "intermediate_size": 384,
              "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2, "sliding_window": 6,
              "rope_theta": 10000.0, "vocab_size": VOCAB, "max_position_embeddings": 256}
    (folder / "config.json").write_text(json.dumps(values))
    save_file({k: v.contiguous() for k, v in state.items()}, folder / "model.safetensors")
    overrides = {k: v for k, v in CONFIG.to_dict().items() if k != "w8aspike"}
    loaded = zoo.create("spikingbrain-7b.w8aspike", checkpoint_path=folder, **overrides)
    assert loaded.config.w8aspike
    input_ids, _ = _batch()
    assert torch.equal(loaded(input_ids), model(input_ids))
    with pytest.raises(CheckpointError, match=r"W8ASpike.*spikingbrain-7b\.w8aspike"):
        zoo.from_pretrained(folder)  # its config.json is the bf16 one's
    loaded.save_pretrained(tmp_path / "saved")  # zoo's own format records w8aspike
    assert torch.equal(zoo.from_pretrained(tmp_path / "saved")(input_ids), model(input_ids))
    with pytest.raises(ConfigError, match="groups of 128"):
        zoo.create("spikingbrain-7b.w8aspike", checkpoint_path=folder, **{**overrides, "hidden_size": 192})


# ---------------------------------------------------------------------------------------------------
# Spike trains and statistics


@pytest.mark.parametrize("coding", ["binary", "ternary", "bitwise", "twos_complement"])
def test_spike_trains_reconstruct_their_counts(coding):
    generator = torch.Generator().manual_seed(0)
    counts = torch.randint(-40, 41, (3, 5, 7), generator=generator)
    if coding == "binary":
        counts = counts.abs()
    train = encode_spikes(counts, coding)
    assert torch.equal(decode_spikes(train, coding), counts)
    assert set(train.unique().tolist()) <= ({0.0, 1.0} if coding in ("binary", "twos_complement") else {-1.0, 0.0, 1.0})
    largest = int(counts.abs().max())
    expected_steps = {"binary": largest, "ternary": largest, "bitwise": math.ceil(math.log2(largest + 1)),
                      "twos_complement": math.ceil(math.log2(largest + 1)) + 1}[coding]
    assert train.shape == (expected_steps, 3, 5, 7) == (spike_steps(counts, coding), 3, 5, 7)
    longer = encode_spikes(counts.float(), coding, steps=expected_steps + 2)
    assert torch.equal(decode_spikes(longer, coding), counts)


def test_spike_trains_follow_the_papers_examples():
    counts = torch.tensor([5, -5, 0])
    assert encode_spikes(counts, "bitwise").T.tolist() == [[1, 0, 1], [-1, 0, -1], [0, 0, 0]]
    assert encode_spikes(torch.tensor([5, -5]), "twos_complement").T.tolist() == [[0, 1, 0, 1], [1, 0, 1, 1]]
    assert encode_spikes(torch.tensor([3, -2]), "ternary").T.tolist() == [[1, 1, 1], [-1, -1, 0]]
    assert encode_spikes(torch.tensor([2, 0]), "binary").T.tolist() == [[1, 1], [0, 0]]
    with pytest.raises(InputError, match="integer"):
        encode_spikes(torch.tensor([0.5]), "bitwise")
    with pytest.raises(InputError, match="non-negative"):
        encode_spikes(torch.tensor([-1]), "binary")
    with pytest.raises(InputError, match="need 3 steps"):
        encode_spikes(torch.tensor([5]), "bitwise", steps=2)
    with pytest.raises(InputError, match="coding"):
        encode_spikes(torch.tensor([5]), "unary")


def test_spike_stats_counts_what_the_layers_see():
    layer = SpikeLinear(128, 4, bias=False)
    x = torch.tensor([3.0, 0.0, -3.0, 6.0] * 32)[None]  # mean |x| = 3, V_th = 1: counts 3, 0, -3, 6
    stats = spike_stats(layer, x)
    assert stats["zero_share"] == 0.25 and stats["spikes_per_channel"] == 3.0 and stats["small_share"] == 1.0
    assert stats["max_count"] == 6 and stats["layers"] == 1 and stats["values"] == 128
    assert stats["bitwise_sparsity"] == 0.5  # 3 bits each: 011, 000, 011, 110
    model = quantised()
    stats = spike_stats(model, {"input_ids": _batch()[0]})
    # GLA: q, k, v, gk, o; SWA: q, k, v, o; MLP: gate, up (not down): layers 0, 1, 2 = 7 + 6 + 7 calls
    assert stats["layers"] == 20 and stats["values"] == 20 * 30 * 256  # every input is 256 wide, 2 x 15 tokens
    assert 0 < stats["zero_share"] < 1 and stats["spikes_per_channel"] > 0
    with pytest.raises(InputError, match="no spike-coded layer"):
        spike_stats(torch.nn.Linear(4, 4), torch.ones(1, 4))
