"""NaViT SigLIP parity with transformers' VideoLlama3VisionModel on a packed batch, and its input checks."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import zoo
from tests.backbones.norms import randomize_biases, randomize_norms
from tests.hub_server import populate_cache
from zoo.backbones.navit import NaViTSiglip, navit_config_from_transformers, navit_position_ids, patchify

transformers = pytest.importorskip("transformers")

# 5 heads of 8 channels (2 rotary frequencies per axis), patches of 4 pixels.
VISION = dict(hidden_size=40, intermediate_size=56, num_hidden_layers=2, num_attention_heads=5, patch_size=4,
              layer_norm_eps=1e-5, rope_parameters={"rope_type": "axial", "rope_theta": 500.0})


def _reference():
    torch.manual_seed(0)
    model = transformers.VideoLlama3VisionModel(transformers.VideoLlama3VisionConfig(**VISION)).eval()
    return randomize_biases(randomize_norms(model))


def _packed():
    """A 24x40 image and a 32x16 image (merge 1) and a 3-frame 16x24 video (merge 2), in one packed call."""
    generator = torch.Generator().manual_seed(2)
    items = [(torch.randn(1, 3, 24, 40, generator=generator), 1), (torch.randn(1, 3, 32, 16, generator=generator), 1),
             (torch.randn(3, 3, 16, 24, generator=generator), 2)]
    patches, grids = zip(*(patchify(frames, 4, merge) for frames, merge in items))
    return dict(pixel_values=torch.cat(patches), grid_thw=torch.tensor(grids),
                merge_sizes=torch.tensor([merge for _, merge in items]))


def test_packed_images_and_video_match_transformers(tmp_path):
    reference = _reference()
    reference.save_pretrained(tmp_path)
    model = zoo.from_pretrained(tmp_path)
    assert isinstance(model, NaViTSiglip) and model.config.rope_theta == 500.0
    inputs = _packed()
    with torch.no_grad():
        expected = reference(**inputs).last_hidden_state
        output = model(**inputs)
        alone = model(**{k: v[-1:] for k, v in inputs.items() if k != "pixel_values"},
                      pixel_values=inputs["pixel_values"][-3 * 24:])
    assert output.shape == (6 * 10 + 8 * 4 + 3 * 2 * 3, 40) == expected.shape
    assert (output - expected).abs().max() < 1e-4
    # frames attend only within themselves: the video alone gives the same tokens as in the packed call
    assert (output[-18:] - alone).abs().max() < 1e-5


def test_registered_source_loads_through_the_hub_cache(tmp_path, hf_cache, offline):
    reference = _reference()
    reference.save_pretrained(tmp_path / "ckpt")
    populate_cache(hf_cache, "ZJU-AI4H/SigLip-NaViT", tmp_path / "ckpt")
    shape = {k: v for k, v in VISION.items() if k != "rope_parameters"}
    model = zoo.create("siglip-navit", pretrained=True, rope_theta=500.0, **shape)
    inputs = _packed()
    with torch.no_grad():
        assert (model(**inputs) - reference(**inputs).last_hidden_state).abs().max() < 1e-4


def test_position_ids_follow_merge_blocks():
    ids = navit_position_ids(torch.tensor([[2, 2, 4]]), torch.tensor([2]))
    block_order = [[0, 0], [0, 1], [1, 0], [1, 1], [0, 2], [0, 3], [1, 2], [1, 3]]
    assert ids.tolist() == block_order * 2


def test_config_reader_applies_transformers_defaults_and_reads_rope():
    ours = navit_config_from_transformers({"model_type": "video_llama_3_vision"})
    theirs = transformers.VideoLlama3VisionConfig()
    for field in dataclasses.fields(ours):
        if field.name != "rope_theta":
            assert getattr(ours, field.name) == getattr(theirs, field.name), field.name
    assert ours.rope_theta == theirs.rope_parameters["rope_theta"]
    assert navit_config_from_transformers({"vision_config": {"rope_theta": 100.0}}).rope_theta == 100.0
    with pytest.raises(zoo.ConfigError, match=r"rope_type 'default' is not supported; supported: axial"):
        navit_config_from_transformers({"rope_parameters": {"rope_type": "default"}})
    with pytest.raises(zoo.ConfigError, match=r"hidden_act must be one of 'gelu_pytorch_tanh', 'gelu', 'quick_gelu'"):
        navit_config_from_transformers({"hidden_act": "relu"})


def test_bad_inputs_say_what_to_do():
    model = zoo.create("siglip-navit-tiny")
    with pytest.raises(zoo.InputError, match=r"image size 24x18 is not divisible by the patch size 4"):
        patchify(torch.randn(1, 3, 24, 18), 4)
    with pytest.raises(zoo.InputError, match=r"not divisible by the patch size 4 times the merge size 2"):
        patchify(torch.randn(2, 3, 24, 20), 4, merge_size=2)
    with pytest.raises(zoo.InputError, match=r"pixel_values must be patches \(total, 3\*4\*4 = 48\)"):
        model(torch.randn(6, 75), torch.tensor([[1, 2, 3]]), torch.tensor([1]))
    with pytest.raises(zoo.InputError, match=r"grid_thw describes 6 patches, but pixel_values holds 5"):
        model(torch.randn(5, 48), torch.tensor([[1, 2, 3]]), torch.tensor([1]))
    with pytest.raises(zoo.InputError, match=r"must divide by its merge size"):
        model(torch.randn(6, 48), torch.tensor([[1, 2, 3]]), torch.tensor([2]))
