"""TinyGPT-V assembled from its three published parts, against an oracle composed of transformers' Blip2VisionModel,
Blip2QFormerModel and PhiForCausalLM(qk_layernorm=True) with an RMSNorm around each attention output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

import zoo
from tests.backbones.norms import randomize_biases, randomize_decoder, randomize_norms
from zoo.errors import InputError
from zoo.vlm.tinygpt_v import TinyGPTV

transformers = pytest.importorskip("transformers")

# Unusual widths: 5 vision heads of 8 channels on a 4x4 grid; a 3-layer Q-Former (cross-attention in layers 0 and
# 2) with 3 queries; a 36-wide projection; Phi heads of 20 channels (8 rotary); LoRA rank 6. (BLIP-2's vision
# config initialises weights with std 1e-10 by default, which would hide the image from the logits.)
VISION = dict(hidden_size=40, intermediate_size=72, num_hidden_layers=2, num_attention_heads=5, image_size=28,
              patch_size=7, layer_norm_eps=1e-6, initializer_range=0.02)
QFORMER = dict(hidden_size=24, num_hidden_layers=3, num_attention_heads=4, intermediate_size=40,
               encoder_hidden_size=40, cross_attention_frequency=2, layer_norm_eps=1e-12)
PHI = dict(vocab_size=200, hidden_size=60, intermediate_size=96, num_hidden_layers=2, num_attention_heads=3,
           num_key_value_heads=3, partial_rotary_factor=0.4, max_position_embeddings=128, pad_token_id=0,
           bos_token_id=2, eos_token_id=2)
QUERIES, PROJECTION, RANK, ALPHA = 3, 36, 6, 16
HEADS, HEAD_DIM = PHI["num_attention_heads"], PHI["hidden_size"] // PHI["num_attention_heads"]
STAGE_SIZE = {3: 28, 4: 42}  # stage 4 at 42 px: the 4x4 position grid interpolated to 6x6
IMAGE_TOKEN = PHI["vocab_size"] - 1


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class Parts:
    """The three published sources as the test writes them, and the tensors the oracle is built from."""

    def __init__(self, root: Path, stage: int = 3, peft_names: str = ".weight", fused_phi: bool = False):
        torch.manual_seed(0)
        self.vision = transformers.Blip2VisionModel(transformers.Blip2VisionConfig(**VISION)).eval()
        randomize_biases(randomize_norms(self.vision))
        with torch.no_grad():  # EVA has no key bias
            for layer in self.vision.encoder.layers:
                layer.self_attn.qkv.bias[VISION["hidden_size"]: 2 * VISION["hidden_size"]] = 0
        self.qformer = transformers.Blip2QFormerModel(transformers.Blip2QFormerConfig(**QFORMER)).eval()
        randomize_biases(randomize_norms(self.qformer), seed=2)
        with torch.no_grad():  # peaked attention, so that which image token is where weighs in the queries
            for name, param in self.qformer.named_parameters():
                if ".query.weight" in name or ".key.weight" in name:
                    param.mul_(8)
        self.query_tokens = torch.randn(1, QUERIES, QFORMER["hidden_size"], generator=_generator(3))
        self.phi = randomize_decoder(transformers.PhiForCausalLM(transformers.PhiConfig(**PHI))).eval()
        with torch.no_grad():  # logits of a few units, so that 1e-4 is a tight tolerance on every path into them
            self.phi.lm_head.weight.mul_(20)
        self.stage = self._stage_weights(peft_names)
        self.image_size = STAGE_SIZE[stage]
        self.arch = "minigpt4" if stage < 4 else "minigpt_v2"
        self.vision_dir, self.llm_dir = root / "blip2", root / "phi"
        self.stage_file = root / f"TinyGPT-V_for_Stage{stage}.pth"
        self._write_blip2(self.vision_dir)
        self._write_phi(self.llm_dir, fused_phi)
        torch.save({"model": {**self.stage, "Qformer.bert.embeddings.position_ids": torch.arange(512)[None]},
                    "optimizer": {"state": {0: {"exp_avg": torch.zeros(3)}}, "param_groups": [{"lr": 1e-4}]},
                    "config": {"model": {"arch": self.arch, "image_size": self.image_size, "lora_r": RANK,
                                         "lora_alpha": ALPHA, "prompt_template": "###Human: {} ###Assistant: "}},
                    "epoch": 3}, self.stage_file)

    @property
    def paths(self) -> dict[str, Path]:
        return {"vision": self.vision_dir, "llm": self.llm_dir, "stage": self.stage_file}

    def _stage_weights(self, suffix: str) -> dict[str, torch.Tensor]:
        g = _generator(4)
        hidden, prefix = PHI["hidden_size"], "llama_model.base_model.model.model."
        stage = {"llama_proj.weight": torch.randn(PROJECTION, QFORMER["hidden_size"], generator=g) * 0.2,
                 "llama_proj.bias": torch.randn(PROJECTION, generator=g) * 0.1,
                 "llama_proj2.weight": torch.randn(hidden, PROJECTION, generator=g) * 0.2,
                 "llama_proj2.bias": torch.randn(hidden, generator=g) * 0.1,
                 f"{prefix}final_layernorm.weight": 1 + 0.1 * torch.randn(hidden, generator=g)}
        for i in range(PHI["num_hidden_layers"]):
            layer = f"{prefix}layers.{i}."
            for module, outputs in (("query_key_value", 3 * hidden), ("dense", hidden)):
                stage[f"{layer}self_attn.{module}.lora_A{suffix}"] = torch.randn(RANK, hidden, generator=g) * 0.2
                stage[f"{layer}self_attn.{module}.lora_B{suffix}"] = torch.randn(outputs, RANK, generator=g) * 0.2
            for name, size in (("self_attn.q_layernorm", HEAD_DIM), ("self_attn.k_layernorm", HEAD_DIM),
                               ("post_layernorm", hidden), ("input_layernorm", hidden)):
                stage[f"{layer}{name}.weight"] = 1 + 0.1 * torch.randn(size, generator=g)
        return stage

    def _write_blip2(self, folder: Path) -> None:
        """A sharded Blip2ForConditionalGeneration-style folder: vision + Q-Former in one shard, a language model
        (which TinyGPT-V never reads) in another."""
        folder.mkdir(parents=True)
        config = {"model_type": "blip-2", "num_query_tokens": QUERIES, "vision_config": VISION,
                  "qformer_config": QFORMER, "text_config": {"model_type": "t5"}}
        (folder / "config.json").write_text(json.dumps(config))
        shards = {
            "model-00001-of-00002.safetensors": {
                **{f"vision_model.{k}": v.clone() for k, v in self.vision.state_dict().items()},
                **{f"qformer.{k}": v.clone() for k, v in self.qformer.state_dict().items()},
                "query_tokens": self.query_tokens.clone(),
                "language_projection.weight": torch.randn(8, QFORMER["hidden_size"]),
            },
            "model-00002-of-00002.safetensors": {"language_model.shared.weight": torch.randn(50, 8)},
        }
        for name, tensors in shards.items():
            save_file(tensors, folder / name)
        weight_map = {key: name for name, tensors in shards.items() for key in tensors}
        (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))

    def _write_phi(self, folder: Path, fused: bool) -> None:
        self.phi.save_pretrained(folder)
        if fused:  # transformers 4.36's layout: q/k/v fused per head (q, k, v of head 0, then head 1, ...)
            state = {k: v.clone() for k, v in self.phi.state_dict().items()}
            for i in range(PHI["num_hidden_layers"]):
                attn = f"model.layers.{i}.self_attn."
                for kind in ("weight", "bias"):
                    parts = [state.pop(f"{attn}{n}_proj.{kind}").unflatten(0, (HEADS, HEAD_DIM)) for n in "qkv"]
                    state[f"{attn}query_key_value.{kind}"] = torch.stack(parts, dim=1).flatten(0, 2)
            for file in folder.glob("*.safetensors"):
                file.unlink()
            save_file(state, folder / "model.safetensors")


class _AttentionRMSNorm(nn.Module):
    def __init__(self, attention: nn.Module, weight: torch.Tensor):
        super().__init__()
        self.attention = attention
        self.norm = transformers.models.llama.modeling_llama.LlamaRMSNorm(weight.numel(), eps=1e-6)
        self.norm.weight.data.copy_(weight)

    def forward(self, **kwargs):
        output, weights = self.attention(**kwargs)
        return self.norm(output), weights


class Oracle(nn.Module):
    """TinyGPT-V from transformers pieces, with the stage's deltas merged here independently."""

    def __init__(self, parts: Parts):
        super().__init__()
        vision_config = transformers.Blip2VisionConfig(**{**VISION, "image_size": parts.image_size})
        self.vision = transformers.Blip2VisionModel(vision_config).eval()
        state = parts.vision.state_dict()
        positions = state["embeddings.position_embedding"]
        if parts.image_size != VISION["image_size"]:  # bicubic, align_corners=False, float32, once
            old, new = VISION["image_size"] // 7, parts.image_size // 7
            grid = positions[0, 1:].reshape(old, old, -1).permute(2, 0, 1)[None].float()
            grid = F.interpolate(grid, size=(new, new), mode="bicubic", align_corners=False)
            positions = torch.cat([positions[0, :1], grid[0].permute(1, 2, 0).reshape(new * new, -1)])[None]
        self.vision.load_state_dict({**state, "embeddings.position_embedding": positions})
        self.qformer = parts.qformer
        self.query_tokens = parts.query_tokens
        stage = parts.stage
        self.proj = nn.Linear(QFORMER["hidden_size"], PROJECTION)
        self.proj2 = nn.Linear(PROJECTION, PHI["hidden_size"])
        self.proj.load_state_dict({"weight": stage["llama_proj.weight"], "bias": stage["llama_proj.bias"]})
        self.proj2.load_state_dict({"weight": stage["llama_proj2.weight"], "bias": stage["llama_proj2.bias"]})
        self.phi = transformers.PhiForCausalLM(transformers.PhiConfig(**PHI, qk_layernorm=True)).eval()
        self.phi.load_state_dict(self._merged_phi(parts), strict=True)
        prefix = "llama_model.base_model.model.model."
        for i, layer in enumerate(self.phi.model.layers):
            layer.self_attn = _AttentionRMSNorm(layer.self_attn, stage[f"{prefix}layers.{i}.post_layernorm.weight"])

    @staticmethod
    def _merged_phi(parts: Parts) -> dict[str, torch.Tensor]:
        base, stage = parts.phi.state_dict(), parts.stage
        prefix, scale = "llama_model.base_model.model.model.", ALPHA / RANK
        merged = {k: v.clone() for k, v in base.items()}
        for i in range(PHI["num_hidden_layers"]):
            attn, lora = f"model.layers.{i}.self_attn.", f"{prefix}layers.{i}.self_attn."
            fused = torch.cat([base[f"{attn}{n}_proj.weight"].view(HEADS, 1, HEAD_DIM, -1) for n in "qkv"], dim=1)
            fused = fused.reshape(3 * PHI["hidden_size"], -1)
            fused = fused + scale * stage[f"{lora}query_key_value.lora_B.weight"] @ stage[
                f"{lora}query_key_value.lora_A.weight"]
            for j, n in enumerate("qkv"):
                merged[f"{attn}{n}_proj.weight"] = fused.view(HEADS, 3, HEAD_DIM, -1)[:, j].reshape(-1, fused.shape[1])
            merged[f"{attn}dense.weight"] = base[f"{attn}dense.weight"] + scale * (
                stage[f"{lora}dense.lora_B.weight"] @ stage[f"{lora}dense.lora_A.weight"])
            for n in "qk":
                merged[f"{attn}{n}_layernorm.weight"] = stage[f"{lora}{n}_layernorm.weight"]
                merged[f"{attn}{n}_layernorm.bias"] = torch.zeros(HEAD_DIM)
            merged[f"model.layers.{i}.input_layernorm.weight"] = stage[f"{prefix}layers.{i}.input_layernorm.weight"]
        merged["model.final_layernorm.weight"] = stage[f"{prefix}final_layernorm.weight"]
        return merged

    def forward(self, input_ids, attention_mask, pixel_values):
        image = self.vision(pixel_values).last_hidden_state  # post_layernorm = ln_vision
        queries = self.qformer(query_embeds=self.query_tokens.expand(len(pixel_values), -1, -1),
                               encoder_hidden_states=image).last_hidden_state
        features = self.proj2(self.proj(queries))
        embeds = self.phi.model.embed_tokens(input_ids)
        embeds = embeds.masked_scatter((input_ids == IMAGE_TOKEN)[..., None], features)
        return self.phi(inputs_embeds=embeds, attention_mask=attention_mask).logits


def _batch(image_size: int):
    """Two right-padded prompts with one image each: 3 + queries + 5 tokens, and 2 + queries + 2."""
    g = _generator(5)
    text = torch.randint(3, IMAGE_TOKEN, (2, 8), generator=g)
    image = torch.full((QUERIES,), IMAGE_TOKEN)
    first = torch.cat([text[0, :3], image, text[0, 3:]])
    second = torch.cat([text[1, :2], image, text[1, 2:4]])
    pad = first.numel() - second.numel()
    input_ids = torch.stack([first, torch.cat([second, torch.zeros(pad, dtype=torch.long)])])
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, -pad:] = 0
    pixel_values = torch.randn(2, 3, image_size, image_size, generator=g)
    return dict(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values)


@pytest.mark.parametrize("stage", [3, 4])
def test_logits_match_transformers_pieces(stage, tmp_path):
    parts = Parts(tmp_path, stage)
    model = zoo.from_pretrained(parts.paths)
    assert isinstance(model, TinyGPTV)
    config = model.config
    assert (config.arch, config.vision.image_size, config.num_query_tokens, config.projection_size) == (
        parts.arch, STAGE_SIZE[stage], QUERIES, PROJECTION)
    assert config.text.rotary_dim == 8 and config.qformer.cross_attention_frequency == 2
    assert config.image_token_id == IMAGE_TOKEN and config.pad_token_id == PHI["eos_token_id"]
    oracle = Oracle(parts)
    inputs = _batch(STAGE_SIZE[stage])
    with torch.no_grad():
        expected = oracle(**inputs)
        logits = model(**inputs)
    real = inputs["attention_mask"].bool()
    diff = (logits - expected)[real].abs().max().item()
    assert diff < 1e-4, diff
    with torch.no_grad():  # the images weigh in the logits: a wrong vision weight would show
        other = oracle(**{**inputs, "pixel_values": torch.randn_like(inputs["pixel_values"])})
    assert (other - expected)[real].abs().max() > 2e-2  # 200 x the tolerance


def test_lora_merge_equals_unmerged_lora_on_split_qkv(tmp_path):
    """The merged fused-qkv LoRA equals peft's unmerged LoRA on split q/k/v, whose B rows are the fused B's rows of
    q, k and v (read per head) and whose A is shared."""
    from peft import LoraConfig, inject_adapter_in_model

    parts = Parts(tmp_path)
    merged = zoo.from_pretrained(parts.paths).language_model
    unmerged = zoo.from_pretrained(parts.paths).language_model
    base = parts.phi.state_dict()
    with torch.no_grad():  # the LoRA-free weights, norms as merged
        for i in range(PHI["num_hidden_layers"]):
            attn = unmerged.model.layers[i].self_attn
            for name in "qkv":
                getattr(attn, f"{name}_proj").weight.copy_(base[f"model.layers.{i}.self_attn.{name}_proj.weight"])
            attn.o_proj.weight.copy_(base[f"model.layers.{i}.self_attn.dense.weight"])
    inject_adapter_in_model(LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=["q_proj", "k_proj", "v_proj",
                                                                                 "o_proj"]), unmerged)
    prefix = "llama_model.base_model.model.model.layers."
    with torch.no_grad():
        for i in range(PHI["num_hidden_layers"]):
            attn, lora = unmerged.model.layers[i].self_attn, f"{prefix}{i}.self_attn."
            b_fused = parts.stage[f"{lora}query_key_value.lora_B.weight"].view(HEADS, 3, HEAD_DIM, RANK)
            for j, name in enumerate("qkv"):
                layer = getattr(attn, f"{name}_proj")
                layer.lora_A["default"].weight.copy_(parts.stage[f"{lora}query_key_value.lora_A.weight"])
                layer.lora_B["default"].weight.copy_(b_fused[:, j].reshape(-1, RANK))
            attn.o_proj.lora_A["default"].weight.copy_(parts.stage[f"{lora}dense.lora_A.weight"])
            attn.o_proj.lora_B["default"].weight.copy_(parts.stage[f"{lora}dense.lora_B.weight"])
    input_ids = torch.randint(3, 190, (2, 9), generator=_generator(6))
    with torch.no_grad():
        difference = (merged(input_ids) - unmerged(input_ids)).abs().max()
        for name, parameter in unmerged.named_parameters():
            if "lora_B" in name:
                parameter.zero_()
        without_lora = (merged(input_ids) - unmerged(input_ids)).abs().max()
    assert difference < 1e-4 and without_lora > 1e-2  # the adapters weigh in the logits


def test_fused_phi_layout_and_new_peft_names_load_the_same_model(tmp_path):
    reference = zoo.from_pretrained(Parts(tmp_path / "a").paths)
    other = zoo.from_pretrained(Parts(tmp_path / "b", peft_names=".default.weight", fused_phi=True).paths)
    for key, tensor in reference.state_dict().items():
        assert torch.equal(other.state_dict()[key], tensor), key


def test_save_pretrained_reloads_bit_identically(tmp_path):
    parts = Parts(tmp_path, stage=4)
    model = zoo.from_pretrained(parts.paths)
    folder = model.save_pretrained(tmp_path / "saved")
    again = zoo.from_pretrained(folder)
    assert again.config == model.config
    state = model.state_dict()
    assert again.state_dict().keys() == state.keys()
    for key, tensor in again.state_dict().items():
        assert torch.equal(tensor, state[key]), key
    inputs = _batch(STAGE_SIZE[4])
    with torch.no_grad():
        assert torch.equal(again(**inputs), model(**inputs))


def test_positions_follow_the_official_phi_and_generation_handles_left_padding(tmp_path):
    """Without position_ids a row's positions are 0..L-1 whatever its mask; generate counts real tokens, so a
    left-padded prompt decodes as it does alone."""
    model = zoo.from_pretrained(Parts(tmp_path).paths)
    inputs = _batch(28)
    alone = {k: v[1:] for k, v in inputs.items()}
    length = int(alone["attention_mask"].sum())
    alone = {"input_ids": alone["input_ids"][:, :length], "pixel_values": alone["pixel_values"]}
    left = torch.cat([inputs["input_ids"][1, length:], inputs["input_ids"][1, :length]])[None]
    mask = torch.cat([torch.zeros(inputs["input_ids"].shape[1] - length), torch.ones(length)]).long()[None]
    expected = model.generate(**alone, max_new_tokens=6)[:, length:]
    padded = model.generate(torch.cat([inputs["input_ids"][:1], left]), torch.cat([inputs["attention_mask"][:1], mask]),
                            pixel_values=inputs["pixel_values"], max_new_tokens=6)
    assert torch.equal(padded[1:, inputs["input_ids"].shape[1]:], expected)


def test_image_token_count_must_match_the_images(tmp_path):
    model = zoo.create("tinygpt-v-tiny")
    inputs = zoo.registry.get_entry("tinygpt-v-tiny").default_input.make(model.config, 2)
    with pytest.raises(InputError, match="has 8 image tokens but 1 image"):
        model(inputs["input_ids"], pixel_values=inputs["pixel_values"][:1])


def test_published_config_param_count(tmp_path):
    """The stage-4 model at the published sizes: transformers' vision tower at 448 px and Q-Former, the query tokens,
    two projections and Phi-2 with TinyGPT-V's norms."""
    entry = zoo.registry.get_entry("tinygpt-v")
    config = entry.config
    with torch.device("meta"):
        vision = transformers.Blip2VisionModel(transformers.Blip2VisionConfig(image_size=448))
        qformer = transformers.Blip2QFormerModel(transformers.Blip2QFormerConfig())
        phi = transformers.PhiForCausalLM(transformers.PhiConfig(
            hidden_size=2560, intermediate_size=10240, num_hidden_layers=32, num_attention_heads=32,
            vocab_size=51200, qk_layernorm=True))
    count = sum(p.numel() for p in vision.parameters()) - 39 * 1408  # EVA's key bias is zero, not a parameter
    count += sum(p.numel() for p in qformer.parameters())  # query-only: transformers builds no text path either
    count += sum(p.numel() for p in phi.parameters()) + 32 * 2560  # + each layer's attention RMSNorm
    count += 32 * 768 + (768 * 4096 + 4096) + (4096 * 2560 + 2560)
    assert count == entry.expected_params == zoo.model_info("tinygpt-v")["params"]
    assert config.text.qk_layernorm and config.text.attention_rms_norm and config.vision.num_hidden_layers == 39


def _oracle_greedy(oracle: Oracle, input_ids: torch.Tensor, pixel_values: torch.Tensor, steps: int) -> list[int]:
    """Greedy tokens of one unpadded prompt, the whole sequence recomputed at every step (no cache)."""
    tokens = input_ids.tolist()
    with torch.no_grad():
        for _ in range(steps):
            ids = torch.tensor([tokens])
            tokens.append(int(oracle(ids, torch.ones_like(ids), pixel_values[None])[0, -1].argmax()))
    return tokens[input_ids.numel():]


@pytest.mark.parametrize("cache, compile", [("dynamic", False), ("static", False),
                                            pytest.param("static", True, marks=pytest.mark.slow)])  # compiles ~1 min
def test_greedy_generation_matches_the_oracle(cache, compile, tmp_path):
    """A left-padded batch decodes as the oracle decodes each prompt alone (compiled: one fixed-shape step)."""
    parts = Parts(tmp_path, stage=4)
    model, oracle = zoo.from_pretrained(parts.paths), Oracle(parts)
    inputs = _batch(STAGE_SIZE[4])
    lengths = inputs["attention_mask"].sum(1).tolist()
    width = max(lengths)
    input_ids = torch.zeros(2, width, dtype=torch.long)
    mask = torch.zeros(2, width, dtype=torch.long)
    for row, length in enumerate(lengths):
        input_ids[row, width - length:], mask[row, width - length:] = inputs["input_ids"][row, :length], 1
    output = model.generate(input_ids, mask, pixel_values=inputs["pixel_values"], max_new_tokens=8, cache=cache,
                            compile=compile)
    for row, length in enumerate(lengths):
        expected = _oracle_greedy(oracle, inputs["input_ids"][row, :length], inputs["pixel_values"][row], 8)
        assert output[row, width:].tolist() == expected


def test_precomputed_image_embeds_give_the_same_logits():
    model = zoo.create("tinygpt-v-tiny").eval()
    inputs = zoo.registry.get_entry("tinygpt-v-tiny").default_input.make(model.config, 2)
    with torch.no_grad():
        features = model.image_features(inputs["pixel_values"])
        assert features.shape == (2, 4, 80)
        assert torch.equal(model(inputs["input_ids"], image_embeds=features), model(**inputs))
