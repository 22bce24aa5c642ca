"""Hulu-Med parity with an oracle composed from transformers (VideoLlama3VisionModel, Qwen2/Qwen3ForCausalLM) and
the released token-reduction rule written out here; both published layouts; batches; generation."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

import zoo
from tests.backbones.norms import randomize_biases, randomize_decoder, randomize_norms
from tests.hub_server import populate_cache
from zoo.errors import CheckpointError, ConfigError, InputError
from zoo.vlm.hulumed import SO400M_NAVIT, HuluMed, hulumed_config_from_published

transformers = pytest.importorskip("transformers")

IMAGE = 299
VOCAB = 300
PATCH = 4
PATCH_DIM = 3 * PATCH * PATCH
VISION = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2, patch_size=PATCH,
              layer_norm_eps=1e-6)
TEXT = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, rms_norm_eps=1e-6, max_position_embeddings=512, tie_word_embeddings=False,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0})


class Oracle(torch.nn.Module):
    """transformers' VideoLLaMA3 vision tower, a Linear-GELU-Linear projector and a transformers Qwen decoder."""

    def __init__(self, decoder: str):
        super().__init__()
        torch.manual_seed(0)
        self.vision = randomize_biases(randomize_norms(
            transformers.VideoLlama3VisionModel(transformers.VideoLlama3VisionConfig(**VISION)).eval()))
        self.projector = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 64))
        if decoder == "qwen2":
            self.text_config = transformers.Qwen2Config(**TEXT)
            self.lm = transformers.Qwen2ForCausalLM(self.text_config)
        else:
            self.text_config = transformers.Qwen3Config(**TEXT, head_dim=24)
            self.lm = transformers.Qwen3ForCausalLM(self.text_config)
        randomize_decoder(self.lm.eval())

    def state_dict_published(self, original_layout: bool = False) -> dict[str, torch.Tensor]:
        prefix = "model.vision_encoder." + ("vision_encoder." if original_layout else "")
        tensors = {prefix + k: v for k, v in self.vision.state_dict().items()}
        tensors.update({f"model.mm_projector.readout.{k}": v for k, v in self.projector.state_dict().items()})
        tensors.update(self.lm.state_dict())
        return {k: v.clone().contiguous() for k, v in tensors.items()}

    def save(self, folder, model_type: str, original_layout: bool = False, **extra) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        config = self.text_config.to_dict()
        vision = self.vision.config.to_dict()
        vision["model_type"] = "hulumed_vision_encoder"
        config.update(model_type=model_type, architectures=["HulumedQwen2ForCausalLM"], vision_encoder=None,
                      vision_encoder_config=vision, mm_projector_type="mlp2x_gelu", use_token_compression=True,
                      image_token_index=IMAGE, **extra)
        (folder / "config.json").write_text(json.dumps(config))
        save_file(self.state_dict_published(original_layout), folder / "model.safetensors")

    @torch.no_grad()
    def logits(self, input_ids, pixel_values, grid_sizes, merge_sizes, modals, keep_first_frame=False):
        """The released pipeline for a batch of one, composed independently of zoo."""
        features = self.projector(self.vision(pixel_values, grid_sizes, merge_sizes).last_hidden_state)
        keep = []
        for patches, (t, h, w), m, modal in zip(pixel_values.split(grid_sizes.prod(1).tolist()), grid_sizes.tolist(),
                                                merge_sizes.tolist(), modals):
            n = (h // m) * (w // m)
            if modal == "image" or t == 1:
                keep.append(torch.ones(t * n, dtype=torch.bool))
                continue
            rows = patches.reshape(t, n, -1)
            change = torch.stack([(rows[i] - rows[i - 1]).abs().mean(-1) for i in range(1, t)])
            frame_keep = torch.cat([torch.full((1, n), keep_first_frame), change > 0.1])
            for frame in frame_keep:
                if not frame.any():
                    frame[0] = True
            keep.append(frame_keep.flatten())
        keep = torch.cat(keep)
        ids = input_ids[0]
        is_image = ids == IMAGE
        survives = torch.ones_like(ids, dtype=torch.bool)
        survives[is_image.nonzero()[:, 0]] = keep
        ids = ids[survives]
        embeds = self.lm.get_input_embeddings()(ids).clone()
        embeds[ids == IMAGE] = features[keep]
        return self.lm(inputs_embeds=embeds[None]).logits, ids[None]


def _images():
    """Two non-square images (merge 1): 4x6 and 6x2 patches."""
    generator = torch.Generator().manual_seed(3)
    grids = torch.tensor([[1, 4, 6], [1, 6, 2]])
    pixels = torch.randn(24 + 12, PATCH_DIM, generator=generator)
    text = torch.randint(0, IMAGE, (9,), generator=generator)
    ids = torch.cat([text[:3], torch.full((24,), IMAGE), text[3:5], torch.full((12,), IMAGE), text[5:]])
    return dict(input_ids=ids[None], pixel_values=pixels, grid_sizes=grids, merge_sizes=torch.tensor([1, 1]),
                modals=["image", "image"])


def _video():
    """4 frames of 4x4 patches (merge 2: 4 tokens of 4 patches each): frame 1 repeats frame 0, frame 2 changes
    tokens 1 and 3 (token 2 by a little, under the threshold), frame 3 changes every token."""
    generator = torch.Generator().manual_seed(4)
    frame = torch.randn(4, 4 * PATCH_DIM, generator=generator)  # (tokens, 2*2 patches * 48)
    second = frame.clone()
    third = second.clone()
    third[1] += torch.randn(4 * PATCH_DIM, generator=generator)
    third[3] += torch.randn(4 * PATCH_DIM, generator=generator)
    third[2] += 0.05 * torch.sign(torch.randn(4 * PATCH_DIM, generator=generator))
    fourth = third + torch.randn(4, 4 * PATCH_DIM, generator=generator)
    pixels = torch.stack([frame, second, third, fourth]).reshape(-1, PATCH_DIM)
    text = torch.randint(0, IMAGE, (6,), generator=generator)
    frames = [torch.full((4,), IMAGE) for _ in range(4)]
    ids = torch.cat([text[:2], frames[0], text[2:3], frames[1], text[3:4], frames[2], text[4:5], frames[3], text[5:]])
    return dict(input_ids=ids[None], pixel_values=pixels, grid_sizes=torch.tensor([[4, 4, 4]]),
                merge_sizes=torch.tensor([2]), modals=["video"])


@pytest.fixture(scope="module", params=["qwen2", "qwen3"])
def pair(request, tmp_path_factory):
    oracle = Oracle(request.param)
    folder = tmp_path_factory.mktemp(request.param)
    oracle.save(folder, "hulumed_qwen2")  # the GitHub Qwen3 package writes hulumed_qwen2 too
    return oracle, zoo.from_pretrained(folder), request.param


@pytest.mark.parametrize("make", [_images, _video], ids=["two-images", "video"])
def test_logits_match_the_oracle(pair, make):
    oracle, model, decoder = pair
    assert isinstance(model, HuluMed) and model.config.text.qk_norm == (decoder == "qwen3")
    inputs = make()
    expected, pruned_ids = oracle.logits(**inputs)
    with torch.no_grad():
        logits = model(**inputs)
    assert logits.shape == expected.shape
    assert (logits - expected).abs().max() < 1e-4
    if make is _video:
        # frame 0 keeps its first token (the released sentinel), frame 1 one (a repeat), frame 2 tokens 1 and 3,
        # frame 3 all
        assert pruned_ids.shape[1] == inputs["input_ids"].shape[1] - 16 + 1 + 1 + 2 + 4
        kept = model.visual_token_masks(inputs["pixel_values"], inputs["grid_sizes"], inputs["merge_sizes"], ["video"])
        assert kept[0].view(4, 4).tolist() == [[True, False, False, False], [True, False, False, False],
                                               [False, True, False, True], [True, True, True, True]]


def test_keep_first_frame_option_matches_the_intent(pair):
    oracle, model, _ = pair
    inputs = _video()
    expected, _ = oracle.logits(**inputs, keep_first_frame=True)
    model.config.first_frame = "all"
    try:
        with torch.no_grad():
            logits = model(**inputs)
    finally:
        model.config.first_frame = "released"
    assert logits.shape == expected.shape and logits.shape[1] == inputs["input_ids"].shape[1] - 16 + 4 + 1 + 2 + 4
    assert (logits - expected).abs().max() < 1e-4


def test_a_batch_of_several_prunes_each_row(pair):
    """An image prompt and a video prompt (left padded) in one batch give each prompt's logits alone."""
    _, model, _ = pair
    images, video = _images(), _video()
    long, short = images["input_ids"][0], video["input_ids"][0]
    pad = long.numel() - short.numel()
    input_ids = torch.stack([long, torch.cat([torch.zeros(pad, dtype=torch.long), short])])
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, :pad] = 0
    batch = dict(input_ids=input_ids, attention_mask=attention_mask,
                 pixel_values=torch.cat([images["pixel_values"], video["pixel_values"]]),
                 grid_sizes=torch.cat([images["grid_sizes"], video["grid_sizes"]]),
                 merge_sizes=torch.cat([images["merge_sizes"], video["merge_sizes"]]),
                 modals=images["modals"] + video["modals"])
    with torch.no_grad():
        logits = model(**batch)
        alone = [model(**images)[0], model(**video)[0]]
        prepared = model.prepare_inputs(input_ids, attention_mask, None, batch["pixel_values"], batch["grid_sizes"],
                                        batch["merge_sizes"], batch["modals"])
    assert logits.shape[1] == max(expected.shape[0] for expected in alone)
    for row, expected in enumerate(alone):  # left padded: each row's real tokens end the row
        assert (logits[row, -expected.shape[0]:] - expected).abs().max() < 1e-4
        assert int(prepared.attention_mask[row].sum()) == expected.shape[0]


def test_batched_generation_equals_one_prompt_at_a_time(pair):
    _, model, _ = pair
    images, video = _images(), _video()
    long, short = images["input_ids"][0], video["input_ids"][0]
    pad = long.numel() - short.numel()
    input_ids = torch.stack([long, torch.cat([torch.zeros(pad, dtype=torch.long), short])])
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, :pad] = 0
    together = model.generate(input_ids, attention_mask,
                              pixel_values=torch.cat([images["pixel_values"], video["pixel_values"]]),
                              grid_sizes=torch.cat([images["grid_sizes"], video["grid_sizes"]]),
                              merge_sizes=torch.tensor([1, 1, 2]), modals=["image", "image", "video"],
                              max_new_tokens=5)
    alone = [model.generate(**images, max_new_tokens=5)[0], model.generate(**video, max_new_tokens=5)[0]]
    assert together.tolist() == [tokens.tolist() for tokens in alone]


def test_generate_follows_the_oracle_greedily(pair):
    oracle, model, _ = pair
    inputs = _video()
    new = model.generate(**inputs, max_new_tokens=4)
    # the oracle decodes without a cache: append each argmax and run the whole pipeline again
    tokens, sequence = [], inputs["input_ids"]
    for _ in range(4):
        logits, _ = oracle.logits(sequence, inputs["pixel_values"], inputs["grid_sizes"], inputs["merge_sizes"],
                                  inputs["modals"])
        token = logits[0, -1].argmax()
        tokens.append(int(token))
        sequence = torch.cat([sequence, token.view(1, 1)], dim=1)
    assert new.tolist() == [tokens]


def test_original_layout_loads_strictly(tmp_path):
    oracle = Oracle("qwen2")
    oracle.save(tmp_path, "hulumed_qwen2", original_layout=True)
    model = zoo.from_pretrained(tmp_path)
    inputs = _images()
    expected, _ = oracle.logits(**inputs)
    with torch.no_grad():
        assert (model(**inputs) - expected).abs().max() < 1e-4


def test_original_config_without_vision_config_means_the_published_encoder():
    config = hulumed_config_from_published({"model_type": "hulumed_qwen3", "vision_encoder": "ZJU-AI4H/SigLip-NaViT",
                                            "image_token_index": 151669, "hidden_size": 64,
                                            "num_attention_heads": 4, "num_key_value_heads": 2})
    assert config.vision == SO400M_NAVIT and config.text.qk_norm and config.image_token_index == 151669


def test_mismatched_decoder_and_config_is_a_clear_error(tmp_path):
    oracle = Oracle("qwen3")
    oracle.save(tmp_path, "hulumed_qwen2")
    config = json.loads((tmp_path / "config.json").read_text())
    for key in ("head_dim", "attention_bias"):
        config.pop(key)
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="Qwen3 decoder .* config.json describes Qwen2"):
        zoo.from_pretrained(tmp_path)


def test_unsupported_projector_and_missing_image_token_are_config_errors():
    with pytest.raises(ConfigError, match="mm_projector_type 'linear'"):
        hulumed_config_from_published({"model_type": "hulumed_qwen2", "mm_projector_type": "linear",
                                       "image_token_index": 5})
    with pytest.raises(ConfigError, match="image_token_index is -1"):
        hulumed_config_from_published({"model_type": "hulumed_qwen2"})


def test_image_token_count_must_match_the_visuals(pair):
    _, model, _ = pair
    inputs = _images()
    inputs["input_ids"] = inputs["input_ids"][:, 1:-4]
    inputs["input_ids"] = torch.cat([inputs["input_ids"][:, :5], inputs["input_ids"][:, 6:]], dim=1)
    with pytest.raises(InputError, match=r"35 <image> tokens but the 2 visual items give 36 features"):
        model(**inputs)
    with pytest.raises(InputError, match="no pixel_values"):
        model(_images()["input_ids"])
    with pytest.raises(InputError, match=r"describe 36 patches but pixel_values is \(35, 48\)"):
        model(**{**_images(), "pixel_values": _images()["pixel_values"][1:]})
    with pytest.raises(InputError, match="modals must name each"):
        model(**{**_images(), "modals": ["image", "volume"]})


def test_published_sizes_match_the_hub_size_labels():
    """Parameter counts of each registered size on the meta device, against the Hub's rounded size label."""
    labels = {"hulu-med-4b": 5, "hulu-med-7b": 8, "hulu-med-14b": 15, "hulu-med-32b": 33}
    for name, billions in labels.items():
        params = zoo.model_info(name)["params"]
        assert round(params / 1e9) == billions, (name, params)
    assert zoo.model_info("hulu-med-7b")["params"] == 8_044_744_944


def test_published_repo_loads_through_the_hub_cache(tmp_path, hf_cache, offline):
    """`zoo.from_pretrained("ZJU-AI4H/Hulu-Med-14B")` and `zoo.create("hulu-med-14b", pretrained=True)` (at a tiny
    shape) read the HF-Version layout from the offline cache, as from the Hub."""
    oracle = Oracle("qwen3")
    oracle.save(tmp_path / "ckpt", "hulumed_qwen3")
    populate_cache(hf_cache, "ZJU-AI4H/Hulu-Med-14B", tmp_path / "ckpt")
    inputs = _video()
    expected, _ = oracle.logits(**inputs)
    loaded = zoo.from_pretrained("ZJU-AI4H/Hulu-Med-14B")
    vision = {k: v for k, v in VISION.items()}
    text = {k: v for k, v in TEXT.items() if k not in ("rope_parameters",)}
    created = zoo.create("hulu-med-14b", pretrained=True, image_token_index=IMAGE, pad_token_id=0, vision=vision,
                         text={**text, "head_dim": 24, "rope_theta": 10000.0, "qk_norm": True})
    with torch.no_grad():
        for model in (loaded, created):
            assert (model(**inputs) - expected).abs().max() < 1e-4
