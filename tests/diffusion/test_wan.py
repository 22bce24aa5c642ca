"""The Wan DiT: parity with diffusers' WanTransformer3DModel, both published checkpoint formats, the registry."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from torch.testing import assert_close

import zoo
from tests.diffusion.wan_components import (
    TEXT_DIM,
    diffusers_transformer,
    original_config,
    save_diffusers_pipeline,
    tiny_transformer_config,
    to_original_layout,
)
from tests.hub_server import populate_cache
from zoo.diffusion.wan import DIFFUSERS, ORIGINAL, WanConfig
from zoo.registry import get_entry

PARITY = dict(rtol=0, atol=1e-5)
# The tiny models as zoo.create overrides of a registered config.
TINY_OVERRIDES = dict(dim=24, num_heads=2, ffn_dim=32, num_layers=2, text_dim=TEXT_DIM)


def _inputs(config: dict, batch_size: int = 2, per_token: bool = False, seed: int = 0) -> dict:
    """Latents of 3 frames of 6 x 8, 512 text tokens (diffusers' I2V processor assumes 512), t in [0, 1000)."""
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch_size, config["in_channels"], 3, 6, 8, generator=generator)
    num_tokens = 3 * 3 * 4
    inputs = {
        "hidden_states": latents,
        "timestep": torch.rand(batch_size, *((num_tokens,) if per_token else ()), generator=generator) * 1000,
        "encoder_hidden_states": torch.randn(batch_size, 512, config["text_dim"], generator=generator),
    }
    if config.get("image_dim"):
        inputs["encoder_hidden_states_image"] = torch.randn(batch_size, 5, config["image_dim"], generator=generator)
    return inputs


@pytest.mark.parametrize(
    "kind, per_token", [("t2v", False), ("i2v", False), ("ti2v", True)], ids=["t2v", "i2v-image", "per-token-t"]
)
def test_matches_diffusers_after_save_pretrained(kind, per_token, tmp_path):
    reference = diffusers_transformer(kind)
    reference.save_pretrained(tmp_path)
    model = zoo.from_pretrained(tmp_path)
    assert model.family == "wan" and model.config.image_dim == reference.config.image_dim
    inputs = _inputs(tiny_transformer_config(kind), per_token=per_token)
    with torch.no_grad():
        expected = reference(**inputs).sample
        assert_close(model(**inputs), expected, **PARITY)


def test_per_token_timesteps_equal_to_one_timestep_match_the_shared_embedding():
    model = zoo.create("wan-tiny").eval()
    inputs = _inputs({"in_channels": 16, "text_dim": 32}, batch_size=1)
    per_token = {**inputs, "timestep": inputs["timestep"].expand(1, 36)}
    with torch.no_grad():
        assert_close(model(**per_token), model(**inputs), rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind, model_type", [("t2v", "t2v"), ("i2v", "i2v"), ("ti2v", "ti2v")])
def test_original_release_layout_loads_and_matches(kind, model_type, tmp_path):
    """A checkpoint in the original release's layout (config.json + diffusion_pytorch_model.safetensors)."""
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    overrides = {"image_dim": 1280, "added_kv_proj_dim": 24} if kind == "i2v" else {}  # the original's CLIP width
    reference = diffusers_transformer(kind, **overrides)
    state_dict = reference.state_dict()
    original = to_original_layout(state_dict)
    assert "blocks.0.norm3.weight" in original and "blocks.0.norm2.weight" not in original  # the swapped name
    # diffusers' own converter takes our fixture back to its names: the fixture is the original layout.
    roundtrip = convert_wan_transformer_to_diffusers(dict(original))
    assert roundtrip.keys() == state_dict.keys() and all(torch.equal(roundtrip[k], state_dict[k]) for k in roundtrip)

    save_file(original, tmp_path / "diffusion_pytorch_model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps(original_config(dict(reference.config), model_type)))
    model = zoo.from_pretrained(tmp_path)
    inputs = _inputs(dict(reference.config), per_token=kind == "ti2v")
    with torch.no_grad():
        assert_close(model(**inputs), reference(**inputs).sample, **PARITY)


def test_bare_checkpoints_are_recognised_by_their_keys(tmp_path):
    reference = diffusers_transformer("t2v")
    inputs = _inputs(tiny_transformer_config("t2v"))
    with torch.no_grad():
        expected = reference(**inputs).sample
    single_file = {f"model.diffusion_model.{k}": v for k, v in to_original_layout(reference.state_dict()).items()}
    for name, state_dict in [("diffusers.safetensors", reference.state_dict()), ("comfy.safetensors", single_file)]:
        save_file(state_dict, tmp_path / name)
        model = zoo.create("wan2.1-t2v-1.3b", checkpoint_path=tmp_path / name, **TINY_OVERRIDES)
        with torch.no_grad():
            assert_close(model(**inputs), expected, **PARITY)


def test_registered_sources_load_from_the_cache_offline(tmp_path, hf_cache, offline):
    """`zoo.create(name.tag, pretrained=True)` and `zoo.from_pretrained(repo)` on both published layouts."""
    pipeline = save_diffusers_pipeline(tmp_path / "diffusers", kind="a14b")
    populate_cache(hf_cache, "Wan-AI/Wan2.2-T2V-A14B-Diffusers", pipeline)
    release = tmp_path / "original"
    for expert, subfolder in (("transformer", "high_noise_model"), ("transformer_2", "low_noise_model")):
        weights = to_original_layout(zoo.hub.load_state_dict(pipeline / expert))
        (release / subfolder).mkdir(parents=True)
        save_file(weights, release / subfolder / "diffusion_pytorch_model.safetensors")
    (release / "Wan2.1_VAE.pth").write_bytes(b"not a weight file of the denoiser")
    populate_cache(hf_cache, "Wan-AI/Wan2.2-T2V-A14B", release)

    inputs = _inputs(tiny_transformer_config("t2v"))
    outputs = {}
    for tag in ("diffusers", "diffusers-low", "original", "original-low"):
        model = zoo.create(f"wan2.2-t2v-a14b.{tag}", pretrained=True, **TINY_OVERRIDES)
        with torch.no_grad():
            outputs[tag] = model(**inputs)
    assert_close(outputs["original"], outputs["diffusers"], rtol=0, atol=0)
    assert_close(outputs["original-low"], outputs["diffusers-low"], rtol=0, atol=0)
    assert not torch.allclose(outputs["diffusers"], outputs["diffusers-low"])  # two different experts

    high_noise = zoo.from_pretrained("Wan-AI/Wan2.2-T2V-A14B-Diffusers")  # the pipeline repo: transformer/
    with torch.no_grad():
        assert_close(high_noise(**inputs), outputs["diffusers"], rtol=0, atol=0)


# The published config.json files (diffusers repos' transformer/ and the original releases').
_DIFFUSERS_14B = dict(num_attention_heads=40, attention_head_dim=128, ffn_dim=13824, num_layers=40)
PUBLISHED_DIFFUSERS_CONFIGS = {
    "wan2.1-t2v-1.3b": dict(num_attention_heads=12, attention_head_dim=128, ffn_dim=8960, num_layers=30),
    "wan2.1-t2v-14b": _DIFFUSERS_14B,
    "wan2.1-i2v-14b-480p": dict(_DIFFUSERS_14B, in_channels=36, image_dim=1280, added_kv_proj_dim=5120),
    "wan2.1-i2v-14b-720p": dict(_DIFFUSERS_14B, in_channels=36, image_dim=1280, added_kv_proj_dim=5120),
    "wan2.2-ti2v-5b": dict(num_attention_heads=24, attention_head_dim=128, ffn_dim=14336, num_layers=30,
                           in_channels=48, out_channels=48),
    "wan2.2-t2v-a14b": _DIFFUSERS_14B,
    "wan2.2-i2v-a14b": dict(_DIFFUSERS_14B, in_channels=36),
}  # fmt: skip
_ORIGINAL_14B = dict(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40)
PUBLISHED_ORIGINAL_CONFIGS = {
    "wan2.1-t2v-1.3b": dict(model_type="t2v", dim=1536, ffn_dim=8960, num_heads=12, num_layers=30),
    "wan2.1-t2v-14b": dict(_ORIGINAL_14B, model_type="t2v"),
    "wan2.1-i2v-14b-480p": dict(_ORIGINAL_14B, model_type="i2v", in_dim=36),
    "wan2.1-i2v-14b-720p": dict(_ORIGINAL_14B, model_type="i2v", in_dim=36),
    "wan2.2-ti2v-5b": dict(model_type="ti2v", dim=3072, ffn_dim=14336, num_heads=24, num_layers=30, in_dim=48,
                           out_dim=48),
    "wan2.2-t2v-a14b": dict(_ORIGINAL_14B, model_type="t2v"),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(PUBLISHED_DIFFUSERS_CONFIGS))
def test_published_diffusers_config_reads_as_the_registered_config(name):
    values = {"_class_name": "WanTransformer3DModel", "patch_size": [1, 2, 2], "in_channels": 16,
              "out_channels": 16, "text_dim": 4096, "freq_dim": 256, "eps": 1e-06, "cross_attn_norm": True,
              "qk_norm": "rms_norm_across_heads", "rope_max_seq_len": 1024, "image_dim": None,
              "added_kv_proj_dim": None, **PUBLISHED_DIFFUSERS_CONFIGS[name]}  # fmt: skip
    assert DIFFUSERS.matches_config(values)
    assert DIFFUSERS.convert_config(values) == get_entry(name).config


@pytest.mark.parametrize("name", sorted(PUBLISHED_ORIGINAL_CONFIGS))
def test_published_original_config_reads_as_the_registered_config(name):
    values = {"_class_name": "WanModel", "_diffusers_version": "0.30.0", "eps": 1e-06, "freq_dim": 256,
              "in_dim": 16, "out_dim": 16, "text_len": 512, **PUBLISHED_ORIGINAL_CONFIGS[name]}  # fmt: skip
    assert ORIGINAL.matches_config(values)
    assert ORIGINAL.convert_config(values) == get_entry(name).config


def test_registry_names_sizes_and_tags():
    names = zoo.list_models("wan*")
    assert names == sorted([
        "wan-tiny", "wan2.1-i2v-14b-480p", "wan2.1-i2v-14b-720p", "wan2.1-t2v-1.3b", "wan2.1-t2v-14b",
        "wan2.2-i2v-a14b", "wan2.2-t2v-a14b", "wan2.2-ti2v-5b",
    ])  # fmt: skip
    # The research notes' counts (diffusers' class on the meta device): 1.419B, 14.288B, 16.395B, ~14.3B, 5.000B.
    assert {name: round(zoo.model_info(name)["params"] / 1e9, 3) for name in names if name != "wan-tiny"} == {
        "wan2.1-t2v-1.3b": 1.419, "wan2.1-t2v-14b": 14.288, "wan2.1-i2v-14b-480p": 16.395,
        "wan2.1-i2v-14b-720p": 16.395, "wan2.2-ti2v-5b": 5.0, "wan2.2-t2v-a14b": 14.288, "wan2.2-i2v-a14b": 14.289,
    }  # fmt: skip
    assert get_entry("wan2.2-i2v-a14b").tags == ["diffusers", "diffusers-low", "original", "original-low"]
    low = get_entry("wan2.2-i2v-a14b").source("original-low")
    assert (low.hub_id, low.subfolder) == ("Wan-AI/Wan2.2-I2V-A14B", "low_noise_model")
    assert get_entry("wan2.1-i2v-14b-720p").source().hub_id == "Wan-AI/Wan2.1-I2V-14B-720P-Diffusers"


def test_unsupported_configs_and_bad_inputs_say_what_is_expected():
    with pytest.raises(zoo.ConfigError, match="FLF2V"):
        DIFFUSERS.convert_config({"pos_embed_seq_len": 514, "image_dim": 1280})
    with pytest.raises(zoo.ConfigError, match="model_type 'vace'"):
        ORIGINAL.convert_config({"model_type": "vace", "dim": 1536, "ffn_dim": 8960, "num_heads": 12, "num_layers": 30})
    model = zoo.create("wan-tiny")
    inputs = _inputs({"in_channels": 16, "text_dim": 32})
    with pytest.raises(ValueError, match=r"divisible by the patch \(1, 2, 2\)"):
        model(**{**inputs, "hidden_states": inputs["hidden_states"][..., :5]})
    with pytest.raises(ValueError, match=r"encoder_hidden_states must be \(B, S, 32\) text features"):
        model(**{**inputs, "encoder_hidden_states": torch.randn(2, 8, 4096)})
    with pytest.raises(ValueError, match=r"timestep must have shape \(2,\) or \(2, 36\)"):
        model(**{**inputs, "timestep": torch.rand(2, 35)})
    with pytest.raises(ValueError, match="has no CLIP image branch"):
        model(**inputs, encoder_hidden_states_image=torch.randn(2, 5, 32))
    image_model = zoo.create("wan-tiny", in_channels=36, image_dim=8)
    with pytest.raises(ValueError, match=r"pass encoder_hidden_states_image"):
        image_model(**{**inputs, "hidden_states": torch.randn(2, 36, 3, 6, 8)})


def test_config_rotary_split():
    assert WanConfig().rotary_dims == (44, 42, 42)
    assert WanConfig(dim=3072, num_heads=24).rotary_dims == (44, 42, 42)
