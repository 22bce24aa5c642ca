"""Hulu-Med (arXiv 2510.08668): a medical VLM for 2D images, videos and 3D volumes, built on VideoLLaMA3's design.

NaViT SigLIP (native resolution, 2D RoPE; `zoo.backbones.navit`) -> bilinear down-sampling by the merge size (1 for
images, 2 for videos and volumes) -> `mm_projector` (Linear, GELU, Linear) -> the features replace the `<image>`
tokens of the prompt -> a Qwen2.5 or Qwen3 decoder.

Token reduction ("medical-aware", as released): for a video or volume of t > 1 frames, a merged token is kept when the
mean absolute change of its normalised pixels since the previous frame exceeds 0.1, at least one per frame; the
pruned features and their `<image>` tokens leave the sequence and positions are renumbered without gaps. The
released code gives frame 0 a sentinel change that it divides by 255 too, so frame 0 keeps only its first token:
that is the default (`first_frame="released"`); `first_frame="all"` keeps frame 0 whole. The released code prunes
batches of one only; here each row of a batch is pruned and the rows re-padded. The training-free reductions of
`zoo.vlm.token_reduction` ("pool", "bilinear", "attention", "merge" per frame before the projector, in place of the
built-in rule; "fastv" in the decoder) come as `token_reduction=` to `forward` and `generate`.

Published layouts: the "HF-Version" (`model_type` hulumed_qwen2 / hulumed_qwen3, keys `model.vision_encoder.*`,
`model.mm_projector.readout.*`, `model.{embed_tokens,layers,norm}`, `lm_head`) and the original LLaVA-style upload
(the vision tower wrapped once more: `model.vision_encoder.vision_encoder.*`). The decoder (Qwen2 or Qwen3) is read
from the text fields, since the GitHub Qwen3 package still writes `hulumed_qwen2`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn

from zoo.backbones.generation import generate, lm_logits
from zoo.backbones.llama import LlamaLMConfig, LlamaModel
from zoo.backbones.navit import NaViTSiglip, NaViTSiglipConfig, navit_config_from_transformers
from zoo.backbones.qwen import qwen2_config_from_transformers, qwen3_config_from_transformers
from zoo.config import NonNegativeInt, PositiveFloat, PositiveInt, ZooConfig
from zoo.errors import CheckpointError, ConfigError, InputError
from zoo.layers.attention import DynamicCache, StaticCache
from zoo.layers.token_reduction import frame_difference_mask
from zoo.modeling import ZooModel
from zoo.vlm.token_reduction import (
    BEFORE_LLM, TokenReduction, as_reduction, captured_attention, decoder_forward, packed_attention_received,
    reduce_grid,
)
from zoo.registry import (
    Converter, InputSpec, ModelEntry, PretrainedSource, TensorSpec, register_family, register_model, rename_keys,
)

MODALS = ("image", "video", "text")
# the `token_reduction=` methods (frame-difference pruning is the built-in compression of the config instead)
REDUCTIONS = ("pool", "bilinear", "attention", "merge", "fastv")
IGNORE_INDEX = -100


@dataclasses.dataclass
class HuluMedConfig(ZooConfig):
    """`projector_depth`: the N of `mlpNx_gelu` (2 in every checkpoint). `compression_*`: the inter-frame pruning
    rule (threshold in CLIP-normalised pixel units, at least `compression_min_tokens` per frame, frame 0 as released
    or kept whole)."""

    vision: NaViTSiglipConfig = dataclasses.field(default_factory=NaViTSiglipConfig)
    text: LlamaLMConfig = dataclasses.field(default_factory=LlamaLMConfig)
    projector_depth: PositiveInt = 2
    image_token_index: NonNegativeInt = 151665
    pad_token_id: NonNegativeInt = 151643
    use_token_compression: bool = True
    compression_threshold: PositiveFloat = 0.1
    compression_min_tokens: PositiveInt = 1
    first_frame: Literal["released", "all"] = "released"

    def validate(self) -> None:
        for name in ("image_token_index", "pad_token_id"):
            if getattr(self, name) >= self.text.vocab_size:
                raise ConfigError(f"HuluMedConfig.{name} ({getattr(self, name)}) must be below the text vocab_size "
                                  f"({self.text.vocab_size}).")


@dataclasses.dataclass
class PreparedInputs:
    """A batch after token reduction: what the decoder sees (B, L') and which visual features fill its `<image>`s."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor | None
    labels: torch.Tensor | None
    visual_keep: torch.Tensor  # (sum of merged tokens of the non-text items,) bool
    pruned: bool  # whether tokens were removed here (positions are then renumbered)


class MlpGeluProjector(nn.Module):
    """`mlpNx_gelu`: Linear(vision, text), then N-1 times (GELU, Linear(text, text)); keys `readout.{0,2,...}`."""

    def __init__(self, in_features: int, out_features: int, depth: int = 2):
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(in_features, out_features)]
        for _ in range(depth - 1):
            layers += [nn.GELU(), nn.Linear(out_features, out_features)]
        self.readout = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.readout(x)


class HuluMed(ZooModel):
    """forward(input_ids, attention_mask, pixel_values, grid_sizes, merge_sizes, modals) -> logits (B, L', vocab),
    L' the length after token reduction; `generate` decodes on the shared loop."""

    config_class = HuluMedConfig

    def __init__(self, config: HuluMedConfig):
        super().__init__(config)
        self.vision_encoder = NaViTSiglip(config.vision)
        self.mm_projector = MlpGeluProjector(config.vision.hidden_size, config.text.hidden_size, config.projector_depth)
        self.model = LlamaModel(config.text)
        self.lm_head = nn.Linear(config.text.hidden_size, config.text.vocab_size, bias=False)
        self.tie_weights()

    def tie_weights(self) -> None:
        if self.config.text.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def fsdp_units(self) -> list[nn.Module]:
        return [*self.vision_encoder.encoder.layers, *self.model.layers]

    # -- visual tokens -------------------------------------------------------------------------------------------

    def _check_visuals(self, grid_sizes: torch.Tensor | None, merge_sizes: torch.Tensor | None,
                       modals: Sequence[str] | None) -> list[str]:
        """The modality of each visual item; None: 'image' at merge size 1, 'video' otherwise."""
        if grid_sizes is None or merge_sizes is None:
            raise InputError("pixel_values need grid_sizes (n, 3) and merge_sizes (n,), as the Hulu-Med processor "
                             "returns them")
        if modals is None:
            return ["image" if int(m) == 1 else "video" for m in merge_sizes.tolist()]
        modals = [modals] if isinstance(modals, str) else list(modals)
        if len(modals) != grid_sizes.shape[0] or any(modal not in MODALS for modal in modals):
            raise InputError(f"modals must name each of the {grid_sizes.shape[0]} visual items 'image', 'video' or "
                             f"'text', got {modals}")
        return modals

    def visual_token_masks(self, pixel_values: torch.Tensor, grid_sizes: torch.Tensor, merge_sizes: torch.Tensor,
                           modals: Sequence[str] | None = None,
                           token_reduction: TokenReduction | None = None) -> list[torch.Tensor]:
        """Per visual item, which of its merged tokens survive token reduction: (t * h/m * w/m,) bool (all True for
        images and single frames; empty for 'text' items, whose features the released code drops). A reduction
        before the LLM (`token_reduction`, not "fastv") replaces the built-in compression: each frame keeps its first
        `token_reduction.grid_kept(h/m, w/m)` placeholders."""
        modals = self._check_visuals(grid_sizes, merge_sizes, modals)
        patches_per_item = grid_sizes.prod(dim=1).tolist()
        if pixel_values.ndim != 2 or sum(patches_per_item) != pixel_values.shape[0]:
            raise InputError(f"grid_sizes {grid_sizes.tolist()} describe {sum(patches_per_item)} patches but "
                             f"pixel_values is {tuple(pixel_values.shape)}; pass the processor's outputs together")
        masks = []
        items = pixel_values.split(patches_per_item)
        for patches, (t, h, w), m, modal in zip(items, grid_sizes.tolist(), merge_sizes.tolist(), modals):
            tokens_per_frame = (h // m) * (w // m)
            if modal == "text":
                masks.append(torch.zeros(0, dtype=torch.bool, device=pixel_values.device))
            elif token_reduction is not None:
                kept = token_reduction.grid_kept(h // m, w // m)
                masks.append((torch.arange(tokens_per_frame, device=pixel_values.device) < kept).repeat(t))
            elif modal == "image" or t == 1:
                masks.append(torch.ones(t * tokens_per_frame, dtype=torch.bool, device=pixel_values.device))
            else:
                frames = patches.reshape(t, tokens_per_frame, -1)
                masks.append(frame_difference_mask(frames, self.config.compression_threshold,
                                                   self.config.compression_min_tokens,
                                                   self.config.first_frame).flatten())
        return masks

    def prepare_inputs(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        grid_sizes: torch.Tensor | None = None,
        merge_sizes: torch.Tensor | None = None,
        modals: Sequence[str] | None = None,
        token_reduction: TokenReduction | None = None,
    ) -> PreparedInputs:
        """Token reduction on the sequence: the pruned `<image>` tokens leave input_ids, attention_mask and labels
        (rows re-padded to the longest, on the side they were padded on). Prompts already pruned (their `<image>`
        count equals the surviving tokens) pass unchanged. Depends on the pixels only, not on the encoder.
        `token_reduction`: a reduction before the LLM, in place of the built-in compression."""
        if input_ids.ndim != 2:
            raise InputError(f"input_ids must be (B, L), got {tuple(input_ids.shape)}")
        is_image = input_ids == self.config.image_token_index
        num_image_tokens = int(is_image.sum())
        if pixel_values is None:
            if num_image_tokens:
                raise InputError(f"the prompt has {num_image_tokens} <image> tokens but no pixel_values were given; "
                                 "build inputs with the Hulu-Med processor")
            return PreparedInputs(input_ids, attention_mask, labels, torch.zeros(0, dtype=torch.bool), False)
        masks = self.visual_token_masks(pixel_values, grid_sizes, merge_sizes, modals, token_reduction)
        keep = torch.cat([torch.zeros(0, dtype=torch.bool, device=pixel_values.device), *masks])
        total, kept = keep.numel(), int(keep.sum())
        if not self.config.use_token_compression and token_reduction is None:
            keep = torch.ones_like(keep)
            kept = total
        if num_image_tokens == kept:
            return PreparedInputs(input_ids, attention_mask, labels, keep, False)
        if num_image_tokens != total:
            after = f" ({kept} after token reduction)" if kept != total else ""
            raise InputError(
                f"the prompt has {num_image_tokens} <image> tokens but the {len(masks)} visual items give {total} "
                f"features{after}; write one <image> per image or video frame in the prompt and expand it with the "
                "Hulu-Med processor"
            )
        row_keep = ~is_image
        row_keep[is_image] = keep.to(row_keep.device)
        lengths = row_keep.sum(dim=1)
        length = int(lengths.max())
        left = attention_mask is not None and bool((attention_mask[:, 0] == 0).any())
        new_ids = input_ids.new_full((input_ids.shape[0], length), self.config.pad_token_id)
        new_mask = input_ids.new_zeros(new_ids.shape) if attention_mask is not None or len(set(lengths.tolist())) > 1 \
            else None
        new_labels = None if labels is None else labels.new_full(new_ids.shape, IGNORE_INDEX)
        for row, (selected, n) in enumerate(zip(row_keep, lengths.tolist())):
            span = slice(length - n, length) if left else slice(0, n)
            new_ids[row, span] = input_ids[row, selected]
            if new_mask is not None:
                new_mask[row, span] = 1 if attention_mask is None else attention_mask[row, selected]
            if new_labels is not None:
                new_labels[row, span] = labels[row, selected]
        return PreparedInputs(new_ids, new_mask, new_labels, keep, True)

    def visual_features(self, pixel_values: torch.Tensor, grid_sizes: torch.Tensor, merge_sizes: torch.Tensor,
                        modals: Sequence[str] | None = None,
                        token_reduction: TokenReduction | None = None) -> torch.Tensor:
        """Projected features (sum of merged tokens of the non-text items, text hidden) before the built-in token
        compression. A `token_reduction` before the LLM acts on each frame's grid of merged tokens, before the
        projector: (sum over frames of `token_reduction.grid_kept(h/m, w/m)`, text hidden)."""
        modals = self._check_visuals(grid_sizes, merge_sizes, modals)
        dtype = self.vision_encoder.embeddings.patch_embedding.proj.weight.dtype
        last_attention = self.vision_encoder.encoder.layers[-1].self_attn
        wanted = token_reduction is not None and token_reduction.method == "attention"
        with captured_attention(last_attention, wanted) as captured:
            tokens = self.vision_encoder(pixel_values.to(dtype), grid_sizes, merge_sizes)
        counts = (grid_sizes.prod(dim=1) // merge_sizes**2).tolist()
        if token_reduction is None:
            features = self.mm_projector(tokens)
            parts = [part for part, modal in zip(features.split(counts), modals) if modal != "text"]
            return torch.cat([features[:0], *parts])
        scores = None
        if wanted:  # per frame over its patches (merge-block order), a merged token scoring its m x m patches' sum
            lengths = (grid_sizes[:, 1] * grid_sizes[:, 2]).repeat_interleave(grid_sizes[:, 0]).tolist()
            scores = packed_attention_received(last_attention, captured, lengths)
            scores = torch.cat([part.view(-1, m * m).sum(dim=1) for part, m in
                                zip(scores.split(grid_sizes.prod(dim=1).tolist()), merge_sizes.tolist())])
        score_parts = [None] * len(counts) if scores is None else scores.split(counts)
        parts = []
        for item, item_scores, (t, h, w), m, modal in zip(tokens.split(counts), score_parts, grid_sizes.tolist(),
                                                          merge_sizes.tolist(), modals):
            if modal == "text":
                continue
            grid = (h // m, w // m)
            item_scores = None if item_scores is None else item_scores.view(t, -1)
            parts.append(reduce_grid(item.view(t, grid[0] * grid[1], -1), grid, token_reduction, item_scores)
                         .flatten(0, 1))
        return self.mm_projector(torch.cat([tokens[:0], *parts]))

    # -- forward and generation ------------------------------------------------------------------------------------

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        grid_sizes: torch.Tensor | None = None,
        merge_sizes: torch.Tensor | None = None,
        modals: Sequence[str] | None = None,
        position_ids: torch.Tensor | None = None,
        cache: DynamicCache | StaticCache | None = None,
        logits_to_keep: int = 0,
        token_reduction: TokenReduction | None = None,
    ) -> torch.Tensor:
        """input_ids (B, L) with one `<image>` per merged token; pixel_values (total patches, 3*14*14) in merge-block
        order with grid_sizes (n, 3) = (t, h, w) in patches, merge_sizes (n,) and modals (n,) as the processor gives
        them. Returns logits (B, L', vocab) over the sequence after token reduction (see `prepare_inputs`, which
        also gives the matching labels). position_ids, cache, logits_to_keep: as in LlamaModel / generation.
        token_reduction: see `zoo.vlm.token_reduction`: "pool", "bilinear", "attention" and "merge" act on each
        frame's grid of merged tokens before the projector, in place of the built-in compression; "fastv" prunes
        the `<image>` tokens inside the decoder. The logits then cover the shortened sequence."""
        token_reduction, before = self._reductions(token_reduction)
        prepared = self.prepare_inputs(input_ids, attention_mask, None, pixel_values, grid_sizes, merge_sizes, modals,
                                       before)
        input_ids, attention_mask = prepared.input_ids, prepared.attention_mask
        embeds = self.model.embed_tokens(input_ids)
        if pixel_values is not None:
            features = self.visual_features(pixel_values, grid_sizes, merge_sizes, modals, before)
            if before is None:
                features = features[prepared.visual_keep.to(features.device)]
            features = features.to(embeds.dtype)
            is_image = (input_ids == self.config.image_token_index)[..., None]
            embeds = embeds.masked_scatter(is_image, features)
        if prepared.pruned:
            position_ids = None if attention_mask is None else (attention_mask.cumsum(-1) - 1).clamp(min=0)
        is_image = input_ids == self.config.image_token_index
        fastv = token_reduction if before is None else None
        hidden, _ = decoder_forward(self.model, embeds, attention_mask, position_ids, cache, fastv, is_image)
        return lm_logits(self.lm_head, hidden, logits_to_keep)

    @staticmethod
    def _reductions(token_reduction: Any) -> tuple[TokenReduction | None, TokenReduction | None]:
        """The checked reduction, and the same if it acts before the LLM (else None)."""
        token_reduction = as_reduction(token_reduction)
        if token_reduction is None:
            return None, None
        token_reduction.check_family("Hulu-Med", REDUCTIONS)
        return token_reduction, token_reduction if token_reduction.method in BEFORE_LLM else None

    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        grid_sizes: torch.Tensor | None = None,
        merge_sizes: torch.Tensor | None = None,
        modals: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """The new tokens (B, new) only, as the original's generate returns them (the prompt is pruned first);
        options as in `zoo.backbones.generation.generate`. Left-pad batches of several prompts."""
        as_reduction(kwargs.get("token_reduction"), kwargs)
        _, before = self._reductions(kwargs.get("token_reduction"))
        prepared = self.prepare_inputs(input_ids, attention_mask, None, pixel_values, grid_sizes, merge_sizes, modals,
                                       before)
        if pixel_values is not None:
            kwargs.update(pixel_values=pixel_values, grid_sizes=grid_sizes, merge_sizes=merge_sizes, modals=modals)
        kwargs.setdefault("pad_token_id", self.config.pad_token_id)
        output = generate(self, prepared.input_ids, prepared.attention_mask, **kwargs)
        return output[:, prepared.input_ids.shape[1]:]


# ---------------------------------------------------------------------------------------------------
# Published formats: the HF-Version (main on the Hub) and the original LLaVA-style upload

# the published ZJU-AI4H/SigLip-NaViT encoder, for original-format configs that name it instead of holding its config
SO400M_NAVIT = NaViTSiglipConfig(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
                                 num_attention_heads=16, patch_size=14)

_RENAMES = (
    (r"^model\.vision_encoder\.(vision_encoder\.)?", "vision_encoder."),
    (r"^(vision_encoder\..*)\.self_attn\.out_proj\.", r"\1.self_attn.o_proj."),
    (r"^vision_encoder\.embeddings\.patch_embedding\.", "vision_encoder.embeddings.patch_embedding.proj."),
    (r"^model\.mm_projector\.", "mm_projector."),
)


def is_qwen3(values: dict[str, Any]) -> bool:
    """Whether a Hulu-Med config's decoder is Qwen3: its model_type or architectures say so, or its text fields are
    Qwen3Config's (`head_dim`, `attention_bias`, which Qwen2Config lacks); the GitHub Qwen3 package still writes
    model_type hulumed_qwen2."""
    names = [values.get("model_type") or "", *(values.get("architectures") or [])]
    return any("qwen3" in name.lower() for name in names) or "head_dim" in values or "attention_bias" in values


def _projector_depth(values: dict[str, Any]) -> int:
    kind = values.get("mm_projector_type", "mlp2x_gelu")
    match = re.fullmatch(r"mlp(\d+)x_gelu", kind)
    if match is None:
        raise ConfigError(f"mm_projector_type '{kind}' is not supported; every Hulu-Med checkpoint uses mlp2x_gelu "
                          "(zoo reads mlpNx_gelu).")
    return int(match.group(1))


def hulumed_config_from_published(values: dict[str, Any]) -> HuluMedConfig:
    """A Hulu-Med config.json (HF-Version or original) as a HuluMedConfig."""
    text_values = {k: v for k, v in values.items() if k not in ("vision_encoder_config", "vision_encoder")}
    text = (qwen3_config_from_transformers if is_qwen3(values) else qwen2_config_from_transformers)(text_values)
    vision_values = values.get("vision_encoder_config")
    vision = navit_config_from_transformers(vision_values) if vision_values else SO400M_NAVIT
    image_token = values.get("image_token_index", -1)
    if image_token is None or image_token < 0:
        raise ConfigError(f"the config's image_token_index is {image_token}; Hulu-Med checkpoints set it to the "
                          "<image> token's id (see added_tokens.json) — set it in config.json.")
    pad = next((value for value in (values.get("pad_token_id"), values.get("eos_token_id"), 0) if value is not None))
    return HuluMedConfig(
        vision=vision, text=text, projector_depth=_projector_depth(values), image_token_index=image_token,
        pad_token_id=pad[0] if isinstance(pad, list) else pad,
        use_token_compression=values.get("use_token_compression", True),
    )


def _from_published_state_dict(state_dict: dict[str, torch.Tensor], config: HuluMedConfig) -> dict[str, torch.Tensor]:
    has_qk_norm = any(key.endswith("self_attn.q_norm.weight") for key in state_dict if key.startswith("model.layers"))
    if has_qk_norm != config.text.qk_norm:
        found, built = ("Qwen3", "Qwen2") if has_qk_norm else ("Qwen2", "Qwen3")
        raise CheckpointError(f"the weights hold a {found} decoder (q/k norms {'present' if has_qk_norm else 'absent'})"
                              f" but config.json describes {built}; fix model_type / the text fields of config.json.")
    converted = rename_keys(state_dict, _RENAMES)
    if config.text.tie_word_embeddings and "lm_head.weight" not in converted:
        converted["lm_head.weight"] = converted["model.embed_tokens.weight"]
    return converted


PUBLISHED = Converter(
    "hulumed",
    convert_state_dict=_from_published_state_dict,
    convert_config=hulumed_config_from_published,
    matches_config=lambda values: values.get("model_type") in ("hulumed_qwen2", "hulumed_qwen3"),
    matches_keys=lambda keys: any(k.startswith("model.mm_projector.readout.") for k in keys),
)

register_family("hulumed", HuluMed, [PUBLISHED], runner="zoo.vlm.hulumed_processing:run_hulumed")


# ---------------------------------------------------------------------------------------------------
# Registry


def _example_inputs(config: HuluMedConfig, batch_size: int, generator: torch.Generator | None) -> dict[str, Any]:
    """Per sample a 2x3-merged-token image (merge 1): 4 text tokens, its 6 <image> tokens, 4 text tokens."""
    patch = config.vision.num_channels * config.vision.patch_size**2
    grid = torch.tensor([[1, 2, 3]] * batch_size, dtype=torch.long).view(-1, 3)
    text = torch.randint(0, min(config.image_token_index, config.text.vocab_size), (batch_size, 8),
                         generator=generator)
    image = torch.full((batch_size, 6), config.image_token_index)
    return {
        "input_ids": torch.cat([text[:, :4], image, text[:, 4:]], dim=1),
        "pixel_values": torch.randn(6 * batch_size, patch, generator=generator),
        "grid_sizes": grid,
        "merge_sizes": torch.ones(batch_size, dtype=torch.long),
        "modals": ["image"] * batch_size,
    }


def _input_spec(config: HuluMedConfig) -> InputSpec:
    patch = config.vision.num_channels * config.vision.patch_size**2
    return InputSpec({"input_ids": TensorSpec((14,), torch.long, high=config.text.vocab_size),
                      "pixel_values": TensorSpec((6, patch))}, factory=_example_inputs)


_PAPER = "2510.08668"


def _qwen25(**fields: Any) -> LlamaLMConfig:
    return LlamaLMConfig(vocab_size=152064, rms_norm_eps=1e-6, rope_theta=1000000.0, max_position_embeddings=32768,
                         qkv_bias=True, **fields)


def _qwen3(**fields: Any) -> LlamaLMConfig:
    return LlamaLMConfig(vocab_size=151936, head_dim=128, rms_norm_eps=1e-6, rope_theta=1000000.0,
                         max_position_embeddings=40960, qk_norm=True, **fields)


def _register(name: str, repo: str, text: LlamaLMConfig, description: str) -> None:
    config = HuluMedConfig(vision=SO400M_NAVIT, text=text)
    register_model(ModelEntry(
        name, "hulumed", "vlm", config, paper=_PAPER, description=description, default_input=_input_spec(config),
        sources=(PretrainedSource(repo, format="hulumed", license="apache-2.0"),),
    ))


_register("hulu-med-4b", "ZJU-AI4H/Hulu-Med-4B",
          _qwen3(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
                 num_key_value_heads=8),
          "Hulu-Med 4B: SigLIP-so400m NaViT, mlp2x_gelu projector, Qwen3-4B decoder (untied head).")
_register("hulu-med-7b", "ZJU-AI4H/Hulu-Med-7B",
          _qwen25(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                  num_key_value_heads=4),
          "Hulu-Med 7B: SigLIP-so400m NaViT, mlp2x_gelu projector, Qwen2.5-7B decoder.")
_register("hulu-med-14b", "ZJU-AI4H/Hulu-Med-14B",
          _qwen3(hidden_size=5120, intermediate_size=17408, num_hidden_layers=40, num_attention_heads=40,
                 num_key_value_heads=8),
          "Hulu-Med 14B: SigLIP-so400m NaViT, mlp2x_gelu projector, Qwen3-14B decoder.")
_register("hulu-med-32b", "ZJU-AI4H/Hulu-Med-32B",
          _qwen25(hidden_size=5120, intermediate_size=27648, num_hidden_layers=64, num_attention_heads=40,
                  num_key_value_heads=8),
          "Hulu-Med 32B: SigLIP-so400m NaViT, mlp2x_gelu projector, Qwen2.5-32B decoder.")

_TINY = HuluMedConfig(
    vision=NaViTSiglipConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                             patch_size=4),
    text=LlamaLMConfig(vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-6,
                       rope_theta=1000000.0, max_position_embeddings=4096, qkv_bias=True),
    # <image> and the padding token of zoo's procedural Hulu-Med byte tokenizer (hulumed_processing.build_tokenizer)
    image_token_index=261, pad_token_id=0,
)
register_model(ModelEntry(
    "hulu-med-tiny", "hulumed", "vlm", _TINY, paper=_PAPER, default_input=_input_spec(_TINY),
    description="A 2-layer Hulu-Med (4-px patches, Qwen2.5-style decoder) for tests and demos, with the token ids of "
                "zoo's procedural byte tokenizer.",
))
