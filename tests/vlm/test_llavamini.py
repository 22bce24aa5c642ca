"""LLaVA-Mini parity with an oracle composed from transformers' CLIPVisionModel, LlamaDecoderLayer and
LlamaForCausalLM and torch's MultiheadAttention, following the official algorithm step by step; loading of the
official checkpoint layout; bad input."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

import zoo
from tests.backbones.norms import randomize_biases, randomize_decoder, randomize_norms
from tests.hub_server import populate_cache
from zoo.errors import CheckpointError, HubError, InputError
from zoo.layers.attention import DynamicCache
from zoo.registry import get_entry
from zoo.vlm.llavamini import LlavaMini, tower_config

transformers = pytest.importorskip("transformers")
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding  # noqa: E402

VOCAB, IMAGE, PATCH, WIDTH = 300, 32, 8, 32  # a 4 x 4 patch grid per image
PREFUSION, COMPRESSOR = 2, 2


class Reference(nn.Module):
    """The official LLaVA-Mini forward, written from its algorithm with transformers / torch modules."""

    def __init__(self, resolution_ratio: int = 1):
        super().__init__()
        torch.manual_seed(0)
        self.resolution_ratio = resolution_ratio
        self.clip_config = transformers.CLIPVisionConfig(
            hidden_size=WIDTH, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4, image_size=IMAGE,
            patch_size=PATCH,
        )
        self.clip = randomize_norms(transformers.CLIPVisionModel(self.clip_config).eval())
        self.llama_config = transformers.LlamaConfig(
            vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, rms_norm_eps=1e-5, max_position_embeddings=512, tie_word_embeddings=False,
            rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                             "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
        )
        self.llm = randomize_decoder(transformers.LlamaForCausalLM(self.llama_config).eval())
        self.prefusion = nn.ModuleList(LlamaDecoderLayer(self.llama_config, i) for i in range(PREFUSION))
        self.prefusion.apply(self.llm._init_weights)
        randomize_decoder(self.prefusion)
        self.rotary = LlamaRotaryEmbedding(self.llama_config)
        queries = COMPRESSOR**2
        self.query = nn.Parameter(torch.randn(queries, WIDTH))
        self.pos_embed = nn.Parameter(torch.randn(queries, WIDTH))  # deliberately not the sin-cos table
        self.ln_q, self.ln_kv = nn.LayerNorm(WIDTH), nn.LayerNorm(WIDTH)
        self.attn = nn.MultiheadAttention(WIDTH, 8, batch_first=True)
        self.projector = nn.Sequential(nn.Linear(WIDTH, 64), nn.GELU(), nn.Linear(64, 64))
        randomize_norms(self)
        randomize_biases(self, seed=2)  # CLIP's, the projector's and the compressor's biases, norms' included
        self.eval()

    def official_state_dict(self) -> dict[str, torch.Tensor]:
        state = dict(self.llm.state_dict())
        state.update({f"model.prefusion_layers.{k}": v for k, v in self.prefusion.state_dict().items()})
        state.update({f"model.mm_projector.{k}": v for k, v in self.projector.state_dict().items()})
        compressor = {"query": self.query, "pos_embed": self.pos_embed}
        compressor.update({f"ln_q.{k}": v for k, v in self.ln_q.state_dict().items()})
        compressor.update({f"ln_kv.{k}": v for k, v in self.ln_kv.state_dict().items()})
        compressor.update({f"attn.{k}": v for k, v in self.attn.state_dict().items()})
        state.update({f"model.compressor.{k}": v for k, v in compressor.items()})
        state.update({f"model.vision_tower.vision_tower.{k}": v for k, v in self.clip.state_dict().items()})
        return {k: v.detach().clone().contiguous() for k, v in state.items()}

    def save_official(self, folder, with_tower: bool = True):
        """The release's layout: a LlavaMiniConfig config.json (transformers 4.43 spelling), sharded safetensors with
        the official keys, the tower in its own folder named by mm_vision_tower."""
        tower = folder / "tower"
        self.clip.save_pretrained(tower)
        ckpt = folder / "ckpt"
        ckpt.mkdir()
        config = {
            "architectures": ["LlavaMiniLlamaForCausalLM"], "model_type": "llava_mini_llama",
            "vocab_size": VOCAB, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5, "hidden_act": "silu",
            "max_position_embeddings": 512, "rope_theta": 500000.0, "tie_word_embeddings": False,
            "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                             "original_max_position_embeddings": 16},
            "mm_vision_tower": str(tower), "mm_hidden_size": WIDTH, "mm_projector_type": "mlp2x_gelu",
            "mm_vision_select_layer": -2, "mm_vision_select_feature": "patch", "mm_patch_merge_type": "flat",
            "compressor_size": COMPRESSOR, "prefusion_layer_num": PREFUSION,
            "resolution_ratio": self.resolution_ratio, "image_aspect_ratio": "pad", "torch_dtype": "float32",
        }
        (ckpt / "config.json").write_text(json.dumps(config))
        state = self.official_state_dict()
        if not with_tower:
            state = {k: v for k, v in state.items() if not k.startswith("model.vision_tower.")}
        keys = sorted(state)
        shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
        for name, names in shards.items():
            save_file({k: state[k] for k in names}, ckpt / name)
        index = {"metadata": {}, "weight_map": {k: name for name, names in shards.items() for k in names}}
        (ckpt / "model.safetensors.index.json").write_text(json.dumps(index))
        return ckpt

    # -- the official forward, step by step
    def compress(self, features: torch.Tensor) -> torch.Tensor:
        side, src = int(features.shape[1] ** 0.5), COMPRESSOR
        key_pos = self.pos_embed
        if side != src:
            grid = self.pos_embed.float().reshape(1, src, src, -1).permute(0, 3, 1, 2)
            key_pos = F.interpolate(grid, size=(side, side), mode="bicubic", align_corners=False)
            key_pos = key_pos.permute(0, 2, 3, 1).flatten(0, 2)
        kv = self.ln_kv(features)
        q = (self.ln_q(self.query) + self.pos_embed).unsqueeze(0).expand(features.shape[0], -1, -1)
        return self.attn(q, kv + key_pos.unsqueeze(0), kv)[0]

    def encode(self, images, input_ids, labels=None):
        bsz, parts = images.shape[:2]
        hidden = self.clip(images.flatten(0, 1), output_hidden_states=True).hidden_states[-2][:, 1:]
        spa, d = hidden.shape[1:]
        g = int(spa**0.5)
        if parts == 1:
            compressed = self.projector(self.compress(hidden))
            visual = self.projector(hidden)
        else:
            hidden = hidden.view(bsz, parts, spa, d)
            n = int((parts - 1) ** 0.5)
            hd = hidden[:, :n * n].view(bsz, n, n, g, g, d).transpose(2, 3).reshape(bsz, n * g * n * g, d)
            compressed = self.projector(self.compress(hd))
            full = self.projector(hidden[:, -1])
            hd_all = self.projector(hidden[:, :-1]).view(bsz, n, n, g, g, -1).transpose(2, 3).reshape(bsz, -1, 64)
            visual = torch.cat([hd_all, full], 1)
        text = self.llm.model.embed_tokens(input_ids.clamp(min=0))
        ids = input_ids * (labels == -100).int() if labels is not None else input_ids
        pad = ids <= 0
        x = torch.cat([visual, compressed, text], 1)
        mask = torch.cat([torch.zeros(bsz, visual.shape[1] + compressed.shape[1], dtype=torch.bool), pad], 1)
        length = x.shape[1]
        allowed = torch.ones(length, length, dtype=torch.bool).tril()[None] & ~mask[:, None, :]
        mask4d = torch.zeros(bsz, 1, length, length).masked_fill(~allowed[:, None], torch.finfo(torch.float32).min)
        position_ids = (~mask).long().cumsum(-1) - 1
        position_ids.masked_fill_(mask, 1)
        rotary = self.rotary(x, position_ids)
        for layer in self.prefusion:
            x = layer(x, attention_mask=mask4d, position_ids=position_ids, position_embeddings=rotary)
        L, C = input_ids.shape[1], compressed.shape[1]
        fused = x[:, -L:] * (~pad).unsqueeze(-1).int() + text * pad.unsqueeze(-1)
        return x[:, -L - C:-L], fused

    def embeds(self, input_ids, attention_mask, images, labels=None):
        if images.ndim == 6:
            frames = [self.encode(images[:, t], input_ids, labels) for t in range(images.shape[1])]
            vision = torch.cat([f[0] for f in frames], 1)
            text = sum(f[1].float() for f in frames) / len(frames)
        else:
            vision, text = self.encode(images, input_ids, labels)
        rows = []
        for b in range(input_ids.shape[0]):
            keep = attention_mask[b].bool()
            ids, feats = input_ids[b][keep], text[b][keep]
            where = torch.where(ids == -200)[0].tolist()
            pieces, start = [], 0
            for i in where:
                pieces += [feats[start:i], vision[b]]
                start = i + 1
            rows.append(torch.cat(pieces + [feats[start:]]))
        n = max(len(r) for r in rows)
        embeds = torch.zeros(len(rows), n, rows[0].shape[-1])
        mask = torch.zeros(len(rows), n, dtype=torch.long)
        positions = torch.zeros(len(rows), n, dtype=torch.long)
        for b, r in enumerate(rows):
            embeds[b, :len(r)], mask[b, :len(r)], positions[b, :len(r)] = r, 1, torch.arange(len(r))
        return embeds, mask, positions

    def forward(self, input_ids, attention_mask, images):
        embeds, mask, positions = self.embeds(input_ids, attention_mask, images)
        return self.llm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).logits, mask

    def greedy(self, input_ids, images, steps):
        """Greedy tokens, each from a full recomputation without cache, and the last-position logits of each step."""
        embeds, mask, positions = self.embeds(input_ids, torch.ones_like(input_ids), images)
        tokens, step_logits = [], []
        for _ in range(steps):
            logits = self.llm(inputs_embeds=embeds, position_ids=torch.arange(embeds.shape[1])[None]).logits
            token = logits[0, -1].argmax()
            tokens.append(int(token))
            step_logits.append(logits[0, -1])
            embeds = torch.cat([embeds, self.llm.model.embed_tokens(token)[None, None]], 1)
        return tokens, torch.stack(step_logits)


@pytest.fixture(scope="module")
def reference():
    return Reference()


@pytest.fixture(scope="module")
def loaded(reference, tmp_path_factory):
    return zoo.from_pretrained(reference.save_official(tmp_path_factory.mktemp("llavamini")))


def _prompts():
    """Two prompts, the placeholder mid-prompt; the second is shorter and right-padded (id 0, mask 0)."""
    generator = torch.Generator().manual_seed(2)
    text = torch.randint(1, VOCAB, (2, 9), generator=generator)
    first = torch.cat([text[0, :4], torch.tensor([-200]), text[0, 4:]])
    second = torch.cat([text[1, :2], torch.tensor([-200]), text[1, 2:6], torch.zeros(3, dtype=torch.long)])
    attention_mask = torch.ones(2, 10, dtype=torch.long)
    attention_mask[1, 7:] = 0
    return torch.stack([first, second]), attention_mask


def _images(*shape):
    return torch.randn(*shape, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(3))


def _check(model, reference, input_ids, attention_mask, images):
    with torch.no_grad():
        expected, mask = reference(input_ids, attention_mask, images)
        got = model(input_ids, attention_mask=attention_mask, images=images)
    assert got.shape == expected.shape
    diff = (got - expected).abs().max().item()
    assert diff < 1e-4, diff
    return mask


def test_loads_official_layout(loaded, reference):
    assert isinstance(loaded, LlavaMini)
    config = loaded.config
    assert (config.compressor_size, config.prefusion_layer_num, config.image_aspect_ratio) == (2, 2, "pad")
    assert config.vision.image_size == IMAGE and config.text.rope_scaling["original_max_position_embeddings"] == 16
    # the tower's weights come from the checkpoint: they differ from the tower folder's after a change here
    assert torch.equal(loaded.compressor.pos_embed, reference.pos_embed)


def test_image_batch_matches_reference(loaded, reference):
    input_ids, attention_mask = _prompts()
    mask = _check(loaded, reference, input_ids, attention_mask, _images(2, 1))
    assert mask[1].sum() == 6 + COMPRESSOR**2 and mask[0].all()  # re-padded on the right


def test_video_matches_reference(loaded, reference):
    input_ids, attention_mask = _prompts()
    _check(loaded, reference, input_ids[:1], attention_mask[:1], _images(1, 3, 1))


def test_prompt_without_placeholder_is_prefused(loaded, reference):
    input_ids, attention_mask = _prompts()
    input_ids = input_ids.clone()
    input_ids[0, 4] = 5  # row 0 loses its placeholder: its image still fuses into the text, but is not inserted
    _check(loaded, reference, input_ids, attention_mask, _images(2, 1))


def test_training_labels_hide_the_answer_from_prefusion(loaded, reference):
    input_ids, attention_mask = _prompts()
    labels = torch.full_like(input_ids, -100)
    labels[0, 7:] = input_ids[0, 7:]
    images = _images(2, 1)
    with torch.no_grad():
        prepared = loaded.prepare_inputs_embeds(input_ids, attention_mask, images, labels=labels)
        expected, _, _ = reference.embeds(input_ids, attention_mask, images, labels=labels)
    assert (prepared.inputs_embeds - expected).abs().max() < 1e-4
    shift = COMPRESSOR**2 - 1
    assert torch.equal(prepared.labels[0, 7 + shift:], input_ids[0, 7:])
    assert (prepared.labels[0, :7 + shift] == -100).all()


def test_high_resolution_matches_reference(tmp_path):
    reference = Reference(resolution_ratio=2)
    model = zoo.from_pretrained(reference.save_official(tmp_path))
    assert model.config.num_parts == 5
    input_ids, attention_mask = _prompts()
    _check(model, reference, input_ids, attention_mask, _images(2, 5))
    _check(model, reference, input_ids[:1], attention_mask[:1], _images(1, 2, 5))  # a 2-frame high-resolution video


def test_greedy_generation_matches_reference(loaded, reference):
    input_ids, _ = _prompts()
    images = _images(1, 1)
    with torch.no_grad():
        expected, expected_logits = reference.greedy(input_ids[:1], images, 20)
    output = loaded.generate(input_ids[:1], images=images, max_new_tokens=20)
    assert output[0, :10].tolist() == input_ids[0].tolist()
    assert output[0, 10:].tolist() == expected
    # the cached decoding steps (plain embeddings after the fused prefix) give the recomputed logits
    with torch.no_grad():
        prepared = loaded.prepare_inputs_embeds(input_ids[:1], None, images)
        cache, n = DynamicCache(), prepared.inputs_embeds.shape[1]
        logits = [loaded(inputs_embeds=prepared.inputs_embeds, position_ids=prepared.position_ids, cache=cache)[0, -1]]
        for step, token in enumerate(expected[:-1]):
            logits.append(loaded(torch.tensor([[token]]), position_ids=torch.tensor([[n + step]]), cache=cache)[0, -1])
    assert (torch.stack(logits) - expected_logits).abs().max() < 1e-4
    # a left-padded static-cache batch decodes each row as alone
    batch = loaded.generate(*_prompts(), images=_images(2, 1), max_new_tokens=8, cache="static")
    alone = loaded.generate(input_ids[1:, :7], images=_images(2, 1)[1:], max_new_tokens=8)
    assert batch[1, 10:].tolist() == alone[0, 7:].tolist()


def test_tower_from_its_folder_when_the_checkpoint_lacks_it(reference, tmp_path):
    model = zoo.from_pretrained(reference.save_official(tmp_path, with_tower=False))
    input_ids, attention_mask = _prompts()
    _check(model, reference, input_ids, attention_mask, _images(2, 1))


def test_save_and_reload(loaded, tmp_path):
    loaded.save_pretrained(tmp_path)
    again = zoo.from_pretrained(tmp_path)
    for (name, a), (_, b) in zip(loaded.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name


def test_bad_input(loaded):
    input_ids, attention_mask = _prompts()
    images = _images(2, 1)
    two = input_ids.clone()
    two[0, 1] = -200
    with pytest.raises(InputError, match="2 image placeholders"):
        loaded(two, attention_mask=attention_mask, images=images)
    with pytest.raises(InputError, match="images for 1 prompts but 2"):
        loaded(input_ids, attention_mask=attention_mask, images=images[:1])
    with pytest.raises(InputError, match="no images were given"):
        loaded(input_ids, attention_mask=attention_mask)
    with pytest.raises(InputError, match="video has no frames"):
        loaded(input_ids, attention_mask=attention_mask, images=_images(2, 0, 1))
    with pytest.raises(InputError, match="3 x 32 x 32 for the CLIP tower"):
        loaded(input_ids, attention_mask=attention_mask, images=torch.randn(2, 1, 3, 48, 48))
    with pytest.raises(InputError, match="part"):
        loaded(input_ids, attention_mask=attention_mask, images=_images(2, 5))


def test_missing_tower_is_a_clear_error(reference, tmp_path):
    folder = reference.save_official(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["mm_vision_tower"] = "./nowhere"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="mm_vision_tower"):
        zoo.from_pretrained(folder)


def test_registry_sizes():
    info = zoo.model_info("llava-mini-llama3.1-8b")
    assert info["license"] == "gpl-3.0"
    with torch.device("meta"):
        model = zoo.create("llava-mini-llama3.1-8b")
    counts = {name: sum(p.numel() for p in getattr(model, name).parameters())
              for name in ("vision_tower", "compressor", "mm_projector", "prefusion_layers", "language_model")}
    assert counts["vision_tower"] == 303_507_456  # CLIP ViT-L/336
    assert counts["prefusion_layers"] == 4 * 218_112_000  # four Llama-3.1-8B layers
    assert counts["compressor"] == 2 * 1024 + 4 * 1024 + 4 * 1024 * 1024 + 4 * 1024  # query, pos, 2 LNs, MHA


def test_from_the_hub_cache_offline(reference, tmp_path, hf_cache, offline):
    """The release's layout as Hub repos: the checkpoint names its tower by repo id, both read from the cache."""
    folder = reference.save_official(tmp_path)
    populate_cache(hf_cache, "zoo-test/clip-tower", tmp_path / "tower")
    config = json.loads((folder / "config.json").read_text())
    config["mm_vision_tower"] = "zoo-test/clip-tower"
    (folder / "config.json").write_text(json.dumps(config))
    populate_cache(hf_cache, "zoo-test/llava-mini", folder)
    model = zoo.from_pretrained("zoo-test/llava-mini")
    assert model.config.vision_tower == "zoo-test/clip-tower"
    input_ids, attention_mask = _prompts()
    _check(model, reference, input_ids, attention_mask, _images(2, 1))


def test_registered_tower_config_when_the_hub_is_out_of_reach(offline):
    assert tower_config("openai/clip-vit-large-patch14-336") == get_entry("clip-vit-l-336").config
    with pytest.raises(HubError):
        tower_config("zoo-test/not-cached")
