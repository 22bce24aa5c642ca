"""TinyGPT-V (arXiv 2312.16862): BLIP-2's EVA ViT-g and Q-Former in front of a modified Phi-2.

Image (B, 3, S, S) -> EVA ViT-g -> `ln_vision` (the ViT's post_layernorm) -> Q-Former over the learned query
tokens -> `llama_proj` -> `llama_proj2` (two Linears, no nonlinearity between) -> one embedding per query token,
placed where the prompt holds `image_token_id` -> Phi-2 with TinyGPT-V's per-head q/k LayerNorm, an RMSNorm on
the attention branch and LoRA (merged at load time) on `query_key_value` and `dense`.

The release publishes only deltas: a stage `.pth` (Tyrannosaurus/TinyGPT-V) holding the projections, the LoRA
A/B and the retrained norm weights. `TinyGPTV.from_parts` assembles the model from its three sources once:
BLIP-2's vision tower, Q-Former and query tokens (read through the safetensors index of
`Salesforce/blip2-flan-t5-xxl`, only the shards that hold them), Phi-2 in transformers' layout
(`microsoft/phi-2`), and the stage file (read with `weights_only=True`). Stage 4 (MiniGPT-v2 arch) runs at
448 px: EVA's position embeddings are interpolated once, at load time, in float32.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from zoo import hub
from zoo.backbones.eva import EvaVisionConfig, EvaVisionTransformer, eva_config_from_transformers
from zoo.backbones.eva import eva_state_dict_from_transformers
from zoo.backbones.generation import generate, lm_logits
from zoo.backbones.phi import PhiConfig, PhiForCausalLM, phi_config_from_transformers
from zoo.backbones.phi import TRANSFORMERS as PHI_TRANSFORMERS
from zoo.backbones.qformer import QFormer, QFormerConfig, qformer_config_from_transformers
from zoo.backbones.qformer import qformer_state_dict_from_transformers
from zoo.config import NonNegativeInt, PositiveInt, ZooConfig
from zoo.errors import CheckpointError, ConfigError, InputError, shorten
from zoo.layers.attention import DynamicCache, StaticCache
from zoo.modeling import ZooModel
from zoo.registry import InputSpec, ModelEntry, PretrainedSource, TensorSpec, register_family, register_model
from zoo.vlm.token_reduction import TokenReduction, as_reduction, decoder_forward

ARCH_IMAGE_SIZE = {"minigpt4": 224, "minigpt_v2": 448}


@dataclasses.dataclass
class TinyGPTVConfig(ZooConfig):
    """`arch`: the stage's MiniGPT arch, minigpt4 (stages 1-3, 224 px) or minigpt_v2 (stage 4, 448 px); it picks
    the prompt template. `projection_size`: the width between llama_proj and llama_proj2 (4096 published)."""

    vision: EvaVisionConfig = dataclasses.field(
        default_factory=lambda: EvaVisionConfig(image_size=448, post_layernorm=True))
    qformer: QFormerConfig = dataclasses.field(default_factory=QFormerConfig)
    text: PhiConfig = dataclasses.field(
        default_factory=lambda: PhiConfig(qk_layernorm=True, attention_rms_norm=True))
    num_query_tokens: PositiveInt = 32
    projection_size: PositiveInt = 4096
    arch: Literal["minigpt4", "minigpt_v2"] = "minigpt_v2"
    image_token_id: NonNegativeInt = 51199
    pad_token_id: NonNegativeInt = 50256

    def validate(self) -> None:
        if self.vision.hidden_size != self.qformer.encoder_hidden_size:
            raise ConfigError(f"TinyGPTVConfig: the Q-Former attends to {self.qformer.encoder_hidden_size}-wide "
                              f"image tokens but the vision tower makes {self.vision.hidden_size}.")
        if not self.vision.post_layernorm:
            raise ConfigError("TinyGPTVConfig.vision.post_layernorm must be True (it is BLIP-2's ln_vision).")
        for name in ("image_token_id", "pad_token_id"):
            if getattr(self, name) >= self.text.vocab_size:
                raise ConfigError(f"TinyGPTVConfig.{name} ({getattr(self, name)}) must be below the text "
                                  f"vocab_size ({self.text.vocab_size}).")


class TinyGPTV(ZooModel):
    """forward(input_ids, attention_mask, pixel_values) -> logits (B, L, vocab); `generate` decodes."""

    config_class = TinyGPTVConfig
    part_names = ("vision", "llm", "stage")

    def __init__(self, config: TinyGPTVConfig):
        super().__init__(config)
        self.vision_model = EvaVisionTransformer(config.vision)
        self.query_tokens = nn.Parameter(torch.zeros(1, config.num_query_tokens, config.qformer.hidden_size))
        self.qformer = QFormer(config.qformer)
        self.llama_proj = nn.Linear(config.qformer.hidden_size, config.projection_size)
        self.llama_proj2 = nn.Linear(config.projection_size, config.text.hidden_size)
        self.language_model = PhiForCausalLM(config.text)

    def fsdp_units(self) -> list[nn.Module]:
        """The ViT's and Phi's blocks; the small Q-Former is sharded with the rest of the model."""
        return [*self.vision_model.encoder.layers, *self.language_model.model.layers]

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Images (N, 3, S, S) -> projected query embeddings (N, num_query_tokens, text hidden_size)."""
        image_embeds = self.vision_model(pixel_values)
        queries = self.query_tokens.expand(image_embeds.shape[0], -1, -1)
        return self.llama_proj2(self.llama_proj(self.qformer(queries, image_embeds)))

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: DynamicCache | StaticCache | None = None,
        logits_to_keep: int = 0,
        image_embeds: torch.Tensor | None = None,
        token_reduction: TokenReduction | None = None,
    ) -> torch.Tensor:
        """input_ids (B, L) holding `num_query_tokens` image tokens per image, in order; pixel_values (N, 3, S, S),
        or instead image_embeds (N, num_query_tokens, hidden) from `image_features` (an image encoded once).

        Positions default to 0..L-1 whatever the mask, as the official Phi: pad batches on the right (generate
        passes positions that count real tokens, so left-padded prompts decode correctly). Returns (B, L or
        logits_to_keep, vocab). token_reduction: "fastv" only (see `zoo.vlm.token_reduction`): the query tokens
        are pruned inside Phi after layer K; the methods acting before the LLM need a grid of image tokens, which
        the Q-Former's learned queries are not.
        """
        token_reduction = as_reduction(token_reduction)
        if token_reduction is not None:
            token_reduction.check_family("TinyGPT-V (its LLM sees the Q-Former's query tokens, not a grid)",
                                         ("fastv",))
        embeds = self.language_model.model.embed_tokens(input_ids)
        if pixel_values is not None or image_embeds is not None:  # the prompt (decoding steps pass no images)
            if image_embeds is None:
                image_embeds = self.image_features(pixel_values.to(self.llama_proj.weight.dtype))
            is_image = input_ids == self.config.image_token_id
            count, images = int(is_image.sum()), image_embeds.shape[0]
            if count != images * self.config.num_query_tokens:
                raise InputError(
                    f"the prompt has {count} image tokens but {images} image(s) need {self.config.num_query_tokens} "
                    "each; build prompts with TinyGPTVProcessor (it expands <ImageHere>)"
                )
            embeds = embeds.masked_scatter(is_image[..., None], image_embeds.to(embeds.dtype))
        is_image = input_ids == self.config.image_token_id
        hidden, _ = decoder_forward(self.language_model.model, embeds, attention_mask, position_ids, cache,
                                    token_reduction, is_image)
        return lm_logits(self.language_model.lm_head, hidden, logits_to_keep)

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 **kwargs: Any) -> torch.Tensor:
        """Greedy or sampled decoding (see `zoo.backbones.generation.generate`); pass `pixel_values` by keyword,
        and optionally `token_reduction` (fastv)."""
        as_reduction(kwargs.get("token_reduction"), kwargs)
        kwargs.setdefault("pad_token_id", self.config.pad_token_id)
        return generate(self, input_ids, attention_mask, **kwargs)

    @classmethod
    def fetch_parts(cls, parts: Mapping[str, str | Path]) -> dict[str, Path]:
        """Local paths of the parts; a Hub part is downloaded first: of BLIP-2 only the shards that hold its vision
        tower, Q-Former and query tokens; of Phi-2 its configs, tokenizer and weights; of the stage repo its file."""
        if set(parts) != set(cls.part_names):
            raise ConfigError(f"TinyGPT-V is assembled from the parts {', '.join(cls.part_names)}; got "
                              f"{', '.join(sorted(parts))}.")
        paths = {name: Path(value).expanduser() for name, value in parts.items()}
        if _is_hub_ref(parts["stage"], 3):
            repo, _, name = str(parts["stage"]).rpartition("/")
            paths["stage"] = hub.download(repo, allow_patterns=[name]) / name
        if _is_hub_ref(parts["vision"], 2):
            paths["vision"] = hub.download_selected(str(parts["vision"]), _is_blip2_part)
        if _is_hub_ref(parts["llm"], 2):
            paths["llm"] = hub.download(str(parts["llm"]), allow_patterns=["*.json", "*.txt", "*.safetensors"])
        return paths

    @classmethod
    def from_parts(cls, parts: Mapping[str, str | Path], dtype: torch.dtype | None = None,
                   **overrides: Any) -> TinyGPTV:
        """The merged model from its three published sources: `vision` (a BLIP-2 transformers folder or Hub repo),
        `llm` (a Phi-2 transformers folder or Hub repo) and `stage` (a stage .pth file, or `owner/repo/file.pth` on
        the Hub). `overrides` change config fields of the assembled config. In eval mode."""
        paths = cls.fetch_parts(parts)
        stage, stage_config = read_stage(paths["stage"])
        blip2_config, blip2_weights = _read_blip2(paths["vision"])
        phi_config, phi_weights = _read_phi(paths["llm"])
        config = assemble_config(blip2_config, phi_config, stage_config, stage).replace(**overrides)
        state_dict = merge_state_dicts(blip2_weights, phi_weights, stage, stage_config, config)
        source_dtype = dtype or hub._dominant_dtype(phi_weights)
        with torch.device("meta"):
            model = cls(config)
        hub.load_weights(model, state_dict, None, dtype=source_dtype)
        return model.eval()


# ---------------------------------------------------------------------------------------------------
# Published format: BLIP-2 (transformers) + Phi-2 (transformers) + the stage .pth of the release

BLIP2_PREFIXES = ("vision_model.", "qformer.", "query_tokens")
STAGE_LLM_PREFIX = "llama_model.base_model.model."
_IGNORED_STAGE_KEYS = {"Qformer.bert.embeddings.position_ids"}  # a buffer saved with the trainable weights
_STAGE_LORA = re.compile(r"model\.layers\.(\d+)\.self_attn\.(query_key_value|dense)\.lora_([AB])(?:\.default)?\.weight")
_STAGE_NORMS = {  # stage key (after the PEFT prefix) -> zoo key (after `language_model.`)
    r"model\.layers\.(\d+)\.self_attn\.q_layernorm\.weight": r"model.layers.\1.self_attn.q_norm.weight",
    r"model\.layers\.(\d+)\.self_attn\.k_layernorm\.weight": r"model.layers.\1.self_attn.k_norm.weight",
    r"model\.layers\.(\d+)\.post_layernorm\.weight": r"model.layers.\1.post_layernorm.weight",
    r"model\.layers\.(\d+)\.input_layernorm\.weight": r"model.layers.\1.input_layernorm.weight",
    r"model\.final_layernorm\.weight": "model.final_layernorm.weight",
}
_STAGE_EXPECTED = ("a TinyGPT-V stage checkpoint (Tyrannosaurus/TinyGPT-V's TinyGPT-V_for_Stage{1,2,3,4}.pth) holds "
                   "llama_proj, llama_proj2 and, under llama_model.base_model.model., Phi-2's LoRA A/B on "
                   "query_key_value and dense and its q/k/post/input/final norm weights")
_PHI_LAYOUT = ("TinyGPT-V needs Phi-2 in transformers' layout (config model_type 'phi'; keys model.layers.N.self_attn."
               "q_proj/k_proj/v_proj/dense, or transformers 4.36's fused query_key_value), as microsoft/phi-2 "
               "publishes it now")


def _is_hub_ref(value: str | Path, parts: int) -> bool:
    text = str(value)
    local = Path(text).expanduser().exists() or text.startswith((".", "/", "~"))
    return not local and text.count("/") == parts - 1


def _is_blip2_part(key: str) -> bool:
    return key.startswith(BLIP2_PREFIXES)


def read_stage(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The `model` tensors and the `config.model` settings of a stage checkpoint, read with `weights_only=True` and
    memory-mapped (the optimizer state is never copied)."""
    if not path.is_file():
        raise CheckpointError(f"TinyGPT-V stage checkpoint {path} is not a file; pass the .pth file itself.")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # a legacy (non-zip) pickle cannot be memory-mapped
        checkpoint = None
    except Exception as error:  # weights_only refuses pickled objects: never fall back to unsafe loading
        raise CheckpointError(f"{path} could not be read safely with torch.load(weights_only=True) ({error}); "
                              f"{_STAGE_EXPECTED}.") from error
    if checkpoint is None:
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise CheckpointError(f"{path} could not be read safely ({error}); {_STAGE_EXPECTED}.") from error
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("model"), dict):
        raise CheckpointError(f"{path} has no 'model' dict of tensors; {_STAGE_EXPECTED}.")
    settings = checkpoint.get("config", {}).get("model") if isinstance(checkpoint.get("config"), dict) else None
    if not isinstance(settings, dict) or settings.get("arch") not in ARCH_IMAGE_SIZE:
        raise CheckpointError(f"{path} has no config.model.arch of minigpt4 or minigpt_v2; {_STAGE_EXPECTED}.")
    return dict(checkpoint["model"]), settings


def _read_blip2(folder: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """BLIP-2's config.json and its vision_model.*, qformer.* and query_tokens tensors (only those are read)."""
    if not folder.is_dir():
        raise CheckpointError(f"TinyGPT-V's vision part {folder} is not a folder; pass a BLIP-2 checkpoint "
                              "folder in transformers' format (Salesforce/blip2-flan-t5-xxl).")
    tensors = hub.load_selected_tensors(folder, _is_blip2_part)
    config, _ = hub.folder_config(folder, ("config.json",))
    if config.get("model_type") != "blip-2" or "query_tokens" not in tensors:
        raise CheckpointError(f"{folder} is not a BLIP-2 checkpoint in transformers' format (model_type "
                              f"{config.get('model_type')!r}); TinyGPT-V's vision part is Salesforce/blip2-flan-t5-xxl "
                              "or a folder like it.")
    return config, tensors


def _read_phi(folder: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Phi-2's config.json and all its tensors; the old phi-msft layout is refused naming the one expected."""
    if not folder.is_dir():
        raise CheckpointError(f"TinyGPT-V's llm part {folder} is not a folder; pass a Phi-2 checkpoint folder.")
    tensors = hub.load_state_dict(folder)
    config, _ = hub.folder_config(folder, ("config.json",))
    msft = [key for key in tensors if ".mixer." in key or key.startswith("transformer.")]
    if config.get("model_type") != "phi" or msft:
        found = f"model_type {config.get('model_type')!r}" + (f", keys like {msft[0]}" if msft else "")
        raise CheckpointError(f"{folder} holds Phi in another layout ({found}; the old phi-msft format has "
                              f"layers.N.mixer.*). {_PHI_LAYOUT}: download microsoft/phi-2 at its current revision.")
    return config, tensors


def assemble_config(blip2: dict[str, Any], phi: dict[str, Any], settings: dict[str, Any],
                    stage: dict[str, torch.Tensor]) -> TinyGPTVConfig:
    """The model's config from BLIP-2's and Phi's config.json (transformers' defaults for omitted fields), the
    stage's config.model (arch, image_size) and its weight shapes (projection width)."""
    arch = settings["arch"]
    if "llama_proj.weight" not in stage or "llama_proj2.weight" not in stage:
        raise CheckpointError(f"The stage checkpoint has no llama_proj/llama_proj2 weights; {_STAGE_EXPECTED}.")
    qformer = qformer_config_from_transformers(blip2)
    text = phi_config_from_transformers(phi).replace(qk_layernorm=True, attention_rms_norm=True)
    text_vocab = text.vocab_size
    return TinyGPTVConfig(
        vision=eva_config_from_transformers(blip2, image_size=int(settings.get("image_size") or ARCH_IMAGE_SIZE[arch])),
        qformer=qformer,
        text=text,
        num_query_tokens=blip2.get("num_query_tokens", 32),
        projection_size=stage["llama_proj.weight"].shape[0],
        arch=arch,
        image_token_id=text_vocab - 1,  # an embedding row past the tokenizer's ids: replaced by image features
        pad_token_id=phi.get("pad_token_id") or phi.get("eos_token_id", 50256),
    )


def merge_state_dicts(blip2: dict[str, torch.Tensor], phi: dict[str, torch.Tensor], stage: dict[str, torch.Tensor],
                      settings: dict[str, Any], config: TinyGPTVConfig) -> dict[str, torch.Tensor]:
    """One state dict in zoo's keys: BLIP-2's vision tower (positions resized to the stage's image size), Q-Former
    and query tokens; Phi-2 with q/k/v split; the stage's projections, norm weights (replacing Phi's; q/k LayerNorm
    biases stay zero, the other biases Phi's) and LoRA merged as W += lora_alpha / lora_r * B @ A, computed in
    float32 in the fused, per-head interleaved query_key_value coordinates."""
    state_dict = {f"vision_model.{k}": v for k, v in eva_state_dict_from_transformers(blip2, config.vision).items()}
    qformer = qformer_state_dict_from_transformers(blip2, config.qformer)
    state_dict.update({f"qformer.{k}": v for k, v in qformer.items()})
    state_dict["query_tokens"] = blip2["query_tokens"]
    language = PHI_TRANSFORMERS.convert_state_dict(phi, config.text)
    text = config.text
    for index in range(text.num_hidden_layers):  # TinyGPT-V's new norms at their initial values
        layer = f"model.layers.{index}."
        for name in ("q_norm", "k_norm"):
            language.setdefault(f"{layer}self_attn.{name}.weight", torch.ones(text.head_dim))
            language.setdefault(f"{layer}self_attn.{name}.bias", torch.zeros(text.head_dim))
        language.setdefault(f"{layer}post_layernorm.weight", torch.ones(text.hidden_size))
    _apply_stage(language, stage, settings, config)
    state_dict.update({f"language_model.{k}": v for k, v in language.items()})
    state_dict.update({k: stage[k] for k in ("llama_proj.weight", "llama_proj.bias", "llama_proj2.weight",
                                             "llama_proj2.bias") if k in stage})
    return state_dict


def _apply_stage(language: dict[str, torch.Tensor], stage: dict[str, torch.Tensor], settings: dict[str, Any],
                 config: TinyGPTVConfig) -> None:
    """The stage's norm weights and merged LoRA written into Phi's converted state dict, in place."""
    rank, alpha = int(settings.get("lora_r", 64)), float(settings.get("lora_alpha", 16))
    lora: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    unknown = []
    for key, value in stage.items():
        if key in _IGNORED_STAGE_KEYS or key.startswith(("llama_proj.", "llama_proj2.")):
            continue
        rest = key.removeprefix(STAGE_LLM_PREFIX)
        match = _STAGE_LORA.fullmatch(rest) if rest != key else None
        if match is not None:
            lora.setdefault((match[1], match[2]), {})[match[3]] = value
            continue
        target = next((re.sub(p, r, rest) for p, r in _STAGE_NORMS.items() if re.fullmatch(p, rest)), None)
        if rest == key or target is None or target not in language:
            unknown.append(key)
            continue
        if value.shape != language[target].shape:
            raise CheckpointError(f"{key} has shape {tuple(value.shape)} but the Phi model's {target} has "
                                  f"{tuple(language[target].shape)}; the stage file belongs to another model size.")
        language[target] = value
    if unknown:
        raise CheckpointError(f"The stage checkpoint holds {len(unknown)} key(s) TinyGPT-V does not have: "
                              f"{shorten(sorted(unknown), 6)}. It is not a TinyGPT-V stage file: {_STAGE_EXPECTED}.")
    for (layer, module), pair in sorted(lora.items()):
        if set(pair) != {"A", "B"}:
            raise CheckpointError(f"The stage checkpoint has lora_{''.join(pair)} but not both lora_A and lora_B for "
                                  f"layer {layer}'s {module}.")
        delta = _lora_delta(pair["A"], pair["B"], rank, alpha, f"layer {layer}'s {module}")
        prefix = f"model.layers.{layer}.self_attn."
        if module == "dense":
            targets = {f"{prefix}o_proj.weight": delta}
        else:
            heads = config.text.num_attention_heads
            if delta.shape[0] % (3 * heads):
                raise CheckpointError(f"layer {layer}'s query_key_value LoRA has {delta.shape[0]} outputs, not 3 per "
                                      f"head of {heads} heads.")
            per_head = delta.unflatten(0, (heads, 3, -1))  # the fused layout: head by head, q, k, v within a head
            targets = {f"{prefix}{name}_proj.weight": per_head[:, i].flatten(0, 1) for i, name in enumerate("qkv")}
        for target, update in targets.items():
            if target not in language or language[target].shape != update.shape:
                shape = tuple(language[target].shape) if target in language else "none"
                raise CheckpointError(f"layer {layer}'s {module} LoRA gives a {tuple(update.shape)} update but the Phi "
                                      f"model's {target} is {shape}; the stage file belongs to another model size.")
            language[target] = (language[target].float() + update).to(language[target].dtype)


def _lora_delta(a: torch.Tensor, b: torch.Tensor, rank: int, alpha: float, where: str) -> torch.Tensor:
    """alpha / rank * B @ A in float32, checking that both have the stage's rank."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[0] != rank or b.shape[1] != rank:
        raise CheckpointError(f"{where}'s LoRA has A {tuple(a.shape)} and B {tuple(b.shape)}, not rank {rank} as the "
                              "stage's config.model.lora_r says.")
    return (alpha / rank) * (b.float() @ a.float())


register_family("tinygpt_v", TinyGPTV, runner="zoo.vlm.tinygpt_v_processing:run")


# ---------------------------------------------------------------------------------------------------
# Registry


def _example_inputs(config: TinyGPTVConfig, batch_size: int, generator: torch.Generator | None) -> dict[str, Any]:
    """One image per sample: 4 text tokens, its query tokens, 4 text tokens."""
    size = config.vision.image_size
    text = torch.randint(0, min(config.image_token_id, config.pad_token_id), (batch_size, 8), generator=generator)
    image = torch.full((batch_size, config.num_query_tokens), config.image_token_id)
    return {"input_ids": torch.cat([text[:, :4], image, text[:, 4:]], dim=1),
            "pixel_values": torch.randn(batch_size, 3, size, size, generator=generator)}


def _input_spec(config: TinyGPTVConfig) -> InputSpec:
    size = config.vision.image_size
    return InputSpec({"input_ids": TensorSpec((config.num_query_tokens + 8,), torch.long, high=config.text.vocab_size),
                      "pixel_values": TensorSpec((3, size, size))}, factory=_example_inputs)


BLIP2_REPO = "Salesforce/blip2-flan-t5-xxl"
PHI_REPO = "microsoft/phi-2"
STAGE_REPO = "Tyrannosaurus/TinyGPT-V"


def _stage_source(stage: int) -> PretrainedSource:
    file = f"TinyGPT-V_for_Stage{stage}.pth"
    return PretrainedSource(
        STAGE_REPO, tag=f"stage{stage}", files=(file,), format="zoo", license="bsd-3-clause",
        parts={"vision": BLIP2_REPO, "llm": PHI_REPO, "stage": f"{STAGE_REPO}/{file}"},
        notes=f"Assembled from {BLIP2_REPO} (vision tower, Q-Former, query tokens; MIT/BSD-3), {PHI_REPO} (MIT) "
              f"and the stage-{stage} deltas {file} (BSD-3).",
    )


def _register(name: str, config: TinyGPTVConfig, sources: tuple[PretrainedSource, ...], description: str,
              expected_params: int | None = None) -> None:
    register_model(ModelEntry(name, "tinygpt_v", "vlm", config, sources=sources, paper="2312.16862",
                              description=description, default_input=_input_spec(config),
                              expected_params=expected_params))


_register(
    "tinygpt-v", TinyGPTVConfig(), tuple(_stage_source(stage) for stage in (4, 3, 2, 1)),
    "TinyGPT-V stage 4 (MiniGPT-v2 arch, 448 px): EVA ViT-g (39 layers) + BLIP-2 Q-Former (32 queries) + two "
    "projections + Phi-2 with q/k LayerNorm, attention RMSNorm and merged LoRA. Tags stage1-3 load the 224 px "
    "minigpt4 checkpoints.", 3_885_555_072,
)
_register(
    "tinygpt-v-tiny",
    TinyGPTVConfig(
        vision=EvaVisionConfig(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                               image_size=56, patch_size=14, post_layernorm=True),
        qformer=QFormerConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                              encoder_hidden_size=48),
        text=PhiConfig(vocab_size=320, hidden_size=80, intermediate_size=160, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=2048,
                       qk_layernorm=True, attention_rms_norm=True),
        # <image> and the padding token of zoo's procedural byte tokenizer (build_byte_tokenizer)
        num_query_tokens=4, projection_size=96, image_token_id=298, pad_token_id=2, arch="minigpt4",
    ),
    (), "A 2-layer TinyGPT-V for tests and training demos: 56 px images, 4 query tokens, token ids of zoo's "
        "procedural byte tokenizer.",
)
