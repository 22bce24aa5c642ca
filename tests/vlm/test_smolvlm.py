"""SmolVLM parity with transformers (Idefics3 and SmolVLM classes), loading, and generation."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters
from torch._inductor import config as inductor_config

import zoo
from tests.hub_server import populate_cache
from zoo.errors import ConfigError, InputError
from zoo.vlm.smolvlm import SmolVLM

transformers = pytest.importorskip("transformers")

IMAGE_TOKEN = 299
VOCAB = 300
TILE = 64
SEQ = 4  # (64 / 16)^2 / 2^2 tokens per tile


def _reference_config(model_type: str, tie: bool = False):
    vision = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                  image_size=TILE, patch_size=16)
    text = dict(model_type="llama", vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-5,
                max_position_embeddings=512, rope_parameters={"rope_type": "default", "rope_theta": 1e5},
                pad_token_id=0, tie_word_embeddings=tie)
    config_cls = transformers.SmolVLMConfig if model_type == "smolvlm" else transformers.Idefics3Config
    return config_cls(vision_config=vision, text_config=text, scale_factor=2, image_token_id=IMAGE_TOKEN,
                      tie_word_embeddings=tie)


def _reference(model_type: str, tie: bool = False):
    torch.manual_seed(0)
    config = _reference_config(model_type, tie)
    model_cls = (transformers.SmolVLMForConditionalGeneration if model_type == "smolvlm"
                 else transformers.Idefics3ForConditionalGeneration)
    model = model_cls(config).eval()
    with torch.no_grad():  # randomise the norms too, so a missed or swapped norm shows
        for name, param in model.named_parameters():
            if "norm" in name:
                param.add_(torch.randn_like(param) * 0.1)
    return model


def _batch():
    """Two prompts: 3 tiles; left padding + 2 tiles (one partly masked) + 1 all-zero padding tile."""
    generator = torch.Generator().manual_seed(1)
    pixel_values = torch.randn(2, 3, 3, TILE, TILE, generator=generator)
    pixel_mask = torch.ones(2, 3, TILE, TILE, dtype=torch.long)
    pixel_mask[1, 1, 48:, :] = 0
    pixel_mask[1, 1, :, 32:] = 0
    pixel_values[1, 1] *= pixel_mask[1, 1]
    pixel_values[1, 2] = 0
    pixel_mask[1, 2] = 0

    def prompt(tiles: int, text: torch.Tensor) -> torch.Tensor:
        return torch.cat([text[:3], torch.full((tiles * SEQ,), IMAGE_TOKEN), text[3:]])

    text = torch.randint(1, IMAGE_TOKEN, (2, 7), generator=generator)
    first, second = prompt(3, text[0]), prompt(2, text[1])
    pad = first.numel() - second.numel()
    input_ids = torch.stack([first, torch.cat([torch.zeros(pad, dtype=torch.long), second])])
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, :pad] = 0
    return dict(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values,
                pixel_attention_mask=pixel_mask)


@pytest.mark.parametrize("model_type", ["smolvlm", "idefics3"])
def test_logits_match_transformers(model_type, tmp_path):
    reference = _reference(model_type)
    reference.save_pretrained(tmp_path)
    model = zoo.from_pretrained(tmp_path)
    assert isinstance(model, SmolVLM) and model.config.image_seq_len == SEQ
    inputs = _batch()
    with torch.no_grad():
        expected = reference(**inputs).logits
        logits = model(**inputs)
    real = inputs["attention_mask"].bool()
    diff = (logits - expected)[real].abs().max().item()
    assert diff < 1e-4, diff


def test_tied_embeddings_load_and_match(tmp_path):
    reference = _reference("smolvlm", tie=True)
    reference.save_pretrained(tmp_path)
    model = zoo.from_pretrained(tmp_path)
    assert model.lm_head.weight is model.text_model.embed_tokens.weight
    inputs = _batch()
    with torch.no_grad():
        assert (model(**inputs) - reference(**inputs).logits)[inputs["attention_mask"].bool()].abs().max() < 1e-4


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_greedy_generation_matches_transformers(cache, tmp_path):
    reference = _reference("smolvlm")
    reference.save_pretrained(tmp_path)
    model = zoo.from_pretrained(tmp_path)
    inputs = _batch()
    expected = reference.generate(**inputs, max_new_tokens=24, do_sample=False, pad_token_id=0)
    generated = model.generate(**inputs, max_new_tokens=24, cache=cache)
    assert generated.shape == expected.shape == (2, inputs["input_ids"].shape[1] + 24)
    assert torch.equal(generated, expected)


def test_compiled_decoding_matches_transformers_and_compiles_once(tmp_path):
    reference = _reference("smolvlm")
    reference.save_pretrained(tmp_path)
    model = zoo.from_pretrained(tmp_path)
    inputs = _batch()
    expected = reference.generate(**inputs, max_new_tokens=24, do_sample=False, pad_token_id=0)
    assert torch.equal(model.generate(**inputs, max_new_tokens=24, cache="static", compile=True), expected)
    fewer = inputs["input_ids"].shape[1] + 10
    with torch.compiler.set_stance("fail_on_recompile"):  # the same cache size reuses the compiled step
        assert torch.equal(model.generate(**inputs, max_new_tokens=10, cache="static", compile=True), expected[:, :fewer])
    with pytest.raises(ValueError, match="compile=True needs cache='static'"):
        model.generate(**inputs, max_new_tokens=2, compile=True)


def test_compiled_single_prompt_decoding_reduces_its_matmuls(tmp_path):
    """With one row per step inductor turns the projections into fused reductions (the fast CPU path)."""
    reference = _reference("smolvlm")
    reference.save_pretrained(tmp_path)
    model = zoo.from_pretrained(tmp_path)
    inputs = {name: value[:1] for name, value in _batch().items()}  # the unpadded prompt
    expected = reference.generate(**inputs, max_new_tokens=20, do_sample=False, pad_token_id=0)
    counters.clear()
    with inductor_config.patch(fx_graph_cache=False):  # a cached graph would skip the passes counted here
        assert torch.equal(model.generate(**inputs, max_new_tokens=20, cache="static", compile=True), expected)
    assert counters["inductor"]["decompose_mm"] > 0


def test_stop_tokens_and_sampling_are_seeded(tmp_path):
    model = zoo.create("smolvlm-tiny").eval()
    inputs = zoo.registry.get_entry("smolvlm-tiny").default_input.make(model.config, 2, torch.Generator().manual_seed(0))
    length = inputs["input_ids"].shape[1]
    greedy = model.generate(**inputs, max_new_tokens=6)[:, length:]
    stop = int(greedy[0, 0])
    stopped = model.generate(**inputs, max_new_tokens=6, eos_token_id=[stop], pad_token_id=7)[:, length:]
    assert stopped[0, 0] == stop and (stopped[0, 1:] == 7).all()  # a finished row is padded
    row = greedy[1].tolist()
    until_stop = row[: row.index(stop) + 1] if stop in row else row
    assert stopped[1, : len(until_stop)].tolist() == until_stop
    assert stopped.shape[1] == (len(until_stop) if stop in row else 6)  # ends once every row has stopped
    first = model.generate(**inputs, max_new_tokens=6, do_sample=True, top_k=20, top_p=0.9, temperature=0.8,
                           generator=torch.Generator().manual_seed(3))
    again = model.generate(**inputs, max_new_tokens=6, do_sample=True, top_k=20, top_p=0.9, temperature=0.8,
                           generator=torch.Generator().manual_seed(3))
    assert torch.equal(first, again)


def test_sharded_bf16_checkpoint_through_the_cache(tmp_path, hf_cache, offline):
    reference = _reference("smolvlm").to(torch.bfloat16)
    reference.save_pretrained(tmp_path / "ckpt", max_shard_size="100KB")
    assert len(list((tmp_path / "ckpt").glob("model-*.safetensors"))) > 1
    populate_cache(hf_cache, "HuggingFaceTB/SmolVLM-Tiny-Test", tmp_path / "ckpt")
    model = zoo.from_pretrained("HuggingFaceTB/SmolVLM-Tiny-Test")
    assert model.lm_head.weight.dtype == torch.bfloat16
    inputs = _batch()
    with torch.no_grad():
        diff = (model(**inputs).float() - reference(**inputs).logits.float())[inputs["attention_mask"].bool()]
    assert diff.abs().max() < 0.1  # bf16 end to end; fp32 parity is tested above


def test_image_token_mismatch_is_a_clear_error():
    model = zoo.create("smolvlm-tiny")
    inputs = zoo.registry.get_entry("smolvlm-tiny").default_input.make(model.config, 1)
    ids = inputs["input_ids"]
    inputs["input_ids"] = torch.cat([ids[:, :4], ids[:, 6:]], dim=1)  # drop 2 of the 4 <image> tokens
    with pytest.raises(ValueError, match="has 2 <image> tokens but the images give 4 features"):
        model(**inputs)


@pytest.mark.parametrize("options, message", [
    (dict(num_beams=4), r"beam search \(num_beams=4\) is not supported: generate decodes greedily"),
    (dict(num_return_sequences=2), r"several sequences per prompt \(num_return_sequences=2\) is not supported"),
    (dict(repetition_penalty=1.2), "a repetition penalty"),
    (dict(max_length=40), "unknown option 'max_length'; its options are max_new_tokens, .*model's inputs pixel_values"),
    (dict(max_new_tokens=0), "max_new_tokens must be a positive integer, got 0"),
    (dict(max_new_tokens=-2), "max_new_tokens must be a positive integer, got -2"),
    (dict(max_new_tokens=2.5), "max_new_tokens must be a positive integer, got 2.5"),
    (dict(do_sample=True, top_p=0.0), r"top_p must be in \(0, 1\]"),
    (dict(do_sample=True, top_p=1.5), r"top_p must be in \(0, 1\]"),
    (dict(top_p=float("nan")), r"top_p must be in \(0, 1\]"),
    (dict(do_sample=True, top_k=-1), "top_k must be a non-negative integer"),
    (dict(do_sample=True, top_k=2.5), "top_k must be a non-negative integer"),
    (dict(do_sample=True, temperature=0.0), "temperature must be positive when sampling"),
    (dict(temperature=-0.5), "temperature must be a finite number >= 0"),
    (dict(do_sample="yes"), "do_sample must be True or False"),
    (dict(cache="paged"), "cache must be 'dynamic' or 'static'"),
])
def test_generation_options_are_checked(options, message):
    model = zoo.create("smolvlm-tiny").eval()
    inputs = zoo.registry.get_entry("smolvlm-tiny").default_input.make(model.config, 1)
    with pytest.raises(ConfigError, match=message):
        model.generate(**{"max_new_tokens": 2, **inputs, **options})


def test_generation_accepts_transformers_defaults_and_refuses_empty_prompts():
    model = zoo.create("smolvlm-tiny").eval()
    inputs = zoo.registry.get_entry("smolvlm-tiny").default_input.make(model.config, 2)
    greedy = model.generate(**inputs, max_new_tokens=3)
    same = model.generate(**inputs, max_new_tokens=3, num_beams=1, num_return_sequences=1, use_cache=True,
                          temperature=0.0, top_k=0, top_p=1.0)  # greedy: sampling settings are ignored
    assert torch.equal(greedy, same)
    with pytest.raises(InputError, match="prompt 0 of the batch has no tokens"):
        model.generate(torch.zeros(1, 0, dtype=torch.long), max_new_tokens=2)
    padded = torch.tensor([[1, 1, 1], [0, 0, 0]])
    with pytest.raises(InputError, match="prompt 1 of the batch has no tokens"):
        model.generate(torch.full((2, 3), 5), attention_mask=padded, max_new_tokens=2)
    with pytest.raises(InputError, match="no prompt"):
        model.generate(torch.zeros(0, 3, dtype=torch.long), max_new_tokens=2)
    with pytest.raises(InputError, match="attention_mask .* must have the shape of input_ids"):
        model.generate(torch.full((1, 3), 5), attention_mask=torch.ones(1, 2, dtype=torch.long), max_new_tokens=2)


def test_published_configs_match_transformers_param_counts():
    for name in ("smolvlm-256m", "smolvlm-2.2b"):
        entry = zoo.registry.get_entry(name)
        with torch.device("meta"):
            reference = transformers.SmolVLMForConditionalGeneration(_published_reference_config(entry.config))
        assert sum(p.numel() for p in reference.parameters()) == entry.expected_params


def _published_reference_config(config):
    vision = {k: getattr(config.vision, k) for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                                      "num_attention_heads", "image_size", "patch_size")}
    text = {k: getattr(config.text, k) for k in ("vocab_size", "hidden_size", "intermediate_size",
                                                  "num_hidden_layers", "num_attention_heads", "num_key_value_heads")}
    return transformers.SmolVLMConfig(vision_config=vision, text_config=dict(model_type="llama", **text),
                                      scale_factor=config.scale_factor, image_token_id=config.image_token_id)
