"""SmolVLM and SmolVLM2 (Idefics3 architecture): SigLIP tiles -> pixel shuffle -> linear -> SmolLM2 decoder.

Every tile of an image (the crops and the global view) goes through the SigLIP encoder; pixel shuffle trades
tokens for width (r^2 fewer tokens per tile), one linear layer maps them to the decoder's width, and they
replace the `<image>` tokens of the prompt in order. SmolVLM2's video frames are just more tiles.
Both published formats (transformers `model_type` "idefics3" and "smolvlm") hold the same weights.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from zoo.backbones.generation import generate, lm_logits
from zoo.backbones.llama import LlamaConfig, LlamaModel, llama_config_from_transformers
from zoo.backbones.siglip import SiglipVisionConfig, SiglipVisionTransformer, siglip_config_from_transformers
from zoo.config import NonNegativeInt, PositiveInt, ZooConfig
from zoo.errors import ConfigError
from zoo.layers.attention import DynamicCache, StaticCache
from zoo.layers.token_reduction import attention_received, pixel_shuffle_tokens
from zoo.modeling import ZooModel
from zoo.vlm.token_reduction import (
    BEFORE_LLM, TokenReduction, as_reduction, captured_attention, decoder_forward, frame_difference_keep,
    partition_counts, placeholder_drop_mask, reduce_partitions, shorten_prompt, token_pixels,
)
from zoo.registry import (
    Converter, InputSpec, ModelEntry, PretrainedSource, TensorSpec, register_family, register_model, rename_keys,
)


@dataclasses.dataclass
class SmolVLMConfig(ZooConfig):
    vision: SiglipVisionConfig = dataclasses.field(default_factory=SiglipVisionConfig)
    text: LlamaConfig = dataclasses.field(default_factory=LlamaConfig)
    scale_factor: PositiveInt = 4
    image_token_id: NonNegativeInt = 49190
    pad_token_id: NonNegativeInt = 2
    tie_word_embeddings: bool = False

    def validate(self) -> None:
        side = self.vision.patches_per_side
        if side % self.scale_factor:
            raise ConfigError(f"SmolVLMConfig.scale_factor ({self.scale_factor}) must divide the {side}x{side} patch "
                              f"grid of a tile (vision image_size // patch_size).")
        for name in ("image_token_id", "pad_token_id"):
            if getattr(self, name) >= self.text.vocab_size:
                raise ConfigError(f"SmolVLMConfig.{name} ({getattr(self, name)}) must be below the text "
                                  f"vocab_size ({self.text.vocab_size}).")

    @property
    def image_seq_len(self) -> int:
        """`<image>` tokens per tile: (image_size / patch)^2 / scale_factor^2."""
        return self.vision.patches_per_side**2 // self.scale_factor**2


class SmolVLM(ZooModel):
    """forward(input_ids, pixel_values, ...) -> logits (B, L, vocab); `generate` decodes with a KV cache."""

    config_class = SmolVLMConfig

    def __init__(self, config: SmolVLMConfig):
        super().__init__(config)
        self.vision_model = SiglipVisionTransformer(config.vision)
        self.connector = nn.Linear(config.vision.hidden_size * config.scale_factor**2, config.text.hidden_size,
                                   bias=False)
        self.text_model = LlamaModel(config.text)
        self.lm_head = nn.Linear(config.text.hidden_size, config.text.vocab_size, bias=False)
        self.tie_weights()

    def tie_weights(self) -> None:
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.text_model.embed_tokens.weight

    def fsdp_units(self) -> list[nn.Module]:
        return [*self.vision_model.encoder.layers, *self.text_model.layers]

    def image_features(self, pixel_values: torch.Tensor, pixel_attention_mask: torch.Tensor | None,
                       token_reduction: TokenReduction | None = None) -> torch.Tensor:
        """Tiles (B, N, 3, S, S) with pixel masks (B, N, S, S) -> features (tiles * image_seq_len, hidden), or the
        `token_reduction_counts` of each tile with a reduction before the LLM.

        All-zero tiles are batch padding and are skipped (unless no tile is real, when the first is kept).
        """
        tiles, real = self._real_tiles(pixel_values)
        p = self.config.vision.patch_size
        if pixel_attention_mask is None:
            patch_mask = None
        else:
            pixel_mask = pixel_attention_mask.flatten(0, 1)[real].bool()
            patch_mask = pixel_mask.unfold(1, p, p).unfold(2, p, p).any(dim=(-1, -2))
        reduce = token_reduction is not None and token_reduction.method in BEFORE_LLM
        last_attention = self.vision_model.encoder.layers[-1].self_attn
        with captured_attention(last_attention, reduce and token_reduction.method == "attention") as captured:
            tokens = self.vision_model(tiles, patch_mask)
        if not reduce:
            return self.connector(pixel_shuffle_tokens(tokens, self.config.scale_factor)).flatten(0, 1)
        scores = attention_received(last_attention, captured["x"], captured["attn_mask"]) if captured else None
        frame_keep = self._frame_keep(pixel_values, token_reduction)
        return self.connector(reduce_partitions(tokens, token_reduction, self.config.scale_factor, scores, frame_keep))

    def _real_tiles(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if pixel_values.ndim != 5:
            raise ValueError(f"pixel_values must be (B, num_tiles, 3, H, W), got {tuple(pixel_values.shape)}")
        tiles = pixel_values.flatten(0, 1)
        real = tiles.flatten(1).ne(0).any(dim=1)
        real[:1] |= ~real.any()  # a slice: an empty batch has no tile 0
        return tiles[real], real

    def _frame_keep(self, pixel_values: torch.Tensor, token_reduction: TokenReduction) -> torch.Tensor | None:
        """frame_difference: the surviving tokens (tiles, image_seq_len) of the real tiles, each prompt's tiles being
        the frames of its video."""
        if token_reduction.method != "frame_difference":
            return None
        tiles, real = self._real_tiles(pixel_values)
        grid = self.config.vision.patches_per_side // self.config.scale_factor
        frames_per_prompt = real.view(pixel_values.shape[:2]).sum(dim=1)
        frames = frames_per_prompt[frames_per_prompt > 0].tolist()
        return frame_difference_keep(token_pixels(tiles.float(), grid), frames, token_reduction.threshold)

    def token_reduction_counts(self, pixel_values: torch.Tensor, token_reduction: TokenReduction) -> list[int]:
        """How many `<image>` tokens each real tile keeps under a reduction before the LLM (from the pixels only)."""
        grid = self.config.vision.patches_per_side // self.config.scale_factor
        return partition_counts(token_reduction, int(self._real_tiles(pixel_values)[1].sum()), grid,
                                self._frame_keep(pixel_values, token_reduction))

    def _reduce_prompt(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, pixel_values: torch.Tensor,
                       token_reduction: TokenReduction) -> tuple[torch.Tensor, torch.Tensor | None, bool]:
        """The prompt without the `<image>` tokens a reduction before the LLM drops (each tile keeps its first ones);
        a prompt already reduced passes unchanged. Returns ids, mask and whether it was shortened."""
        counts = self.token_reduction_counts(pixel_values, token_reduction)
        is_image = input_ids == self.config.image_token_id
        if int(is_image.sum()) != len(counts) * self.config.image_seq_len or sum(counts) == int(is_image.sum()):
            return input_ids, attention_mask, False
        drop = placeholder_drop_mask(is_image, [self.config.image_seq_len] * len(counts), counts)
        return (*shorten_prompt(input_ids, attention_mask, drop, self.config.pad_token_id), True)

    def forward(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        pixel_attention_mask: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: DynamicCache | StaticCache | None = None,
        logits_to_keep: int = 0,
        token_reduction: TokenReduction | None = None,
    ) -> torch.Tensor:
        """input_ids (B, L) with `image_seq_len` `<image>` tokens per tile; pixel_values (B, N, 3, S, S).

        attention_mask (B, past + L), position_ids (B, L), cache: as in LlamaModel. logits_to_keep=k > 0
        computes logits for the last k positions only (generation needs 1). token_reduction: see
        `zoo.vlm.token_reduction` (the logits then cover the shortened sequence). Returns (B, L or k, vocab).
        """
        token_reduction = as_reduction(token_reduction)
        if token_reduction is not None and pixel_values is not None and token_reduction.method in BEFORE_LLM:
            input_ids, attention_mask, shortened = self._reduce_prompt(input_ids, attention_mask, pixel_values,
                                                                       token_reduction)
            if shortened:
                position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        embeds = self.text_model.embed_tokens(input_ids)
        is_image = input_ids == self.config.image_token_id
        if pixel_values is not None:
            features = self.image_features(pixel_values, pixel_attention_mask, token_reduction).to(embeds.dtype)
            if int(is_image.sum()) != features.shape[0]:
                raise ValueError(
                    f"the prompt has {int(is_image.sum())} <image> tokens but the images give {features.shape[0]} "
                    f"features ({self.config.image_seq_len} per tile); build prompts with the SmolVLM processor"
                )
            embeds = embeds.masked_scatter(is_image[..., None], features)
        fastv = token_reduction if token_reduction is not None and token_reduction.method == "fastv" else None
        hidden, _ = decoder_forward(self.text_model, embeds, attention_mask, position_ids, cache, fastv, is_image)
        return lm_logits(self.lm_head, hidden, logits_to_keep)

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        """Greedy or sampled decoding; see `zoo.backbones.generation.generate` for the options.

        Pass `pixel_values` / `pixel_attention_mask` from the processor as keyword arguments, and optionally
        `token_reduction` (a `zoo.vlm.TokenReduction`); the prompt comes back whole, followed by the new tokens.
        """
        kwargs.setdefault("pad_token_id", self.config.pad_token_id)
        reduction = as_reduction(kwargs.get("token_reduction"), kwargs)
        if reduction is None or reduction.method not in BEFORE_LLM or kwargs.get("pixel_values") is None:
            return generate(self, input_ids, attention_mask, **kwargs)
        short_ids, short_mask, _ = self._reduce_prompt(input_ids, attention_mask, kwargs["pixel_values"], reduction)
        output = generate(self, short_ids, short_mask, **kwargs)
        return torch.cat([input_ids, output[:, short_ids.shape[1]:]], dim=1)


# ---------------------------------------------------------------------------------------------------
# Published format: transformers (Idefics3ForConditionalGeneration and SmolVLMForConditionalGeneration)

_TRANSFORMERS_RENAMES = (
    (r"^model\.", ""),
    (r"^vision_model\.(.*)\.self_attn\.out_proj\.", r"vision_model.\1.self_attn.o_proj."),
    (r"^connector\.modality_projection\.proj\.", "connector."),
)


def _from_transformers_state_dict(state_dict: dict[str, torch.Tensor], config: SmolVLMConfig) -> dict[str, torch.Tensor]:
    converted = rename_keys(state_dict, _TRANSFORMERS_RENAMES)
    if config.tie_word_embeddings and "lm_head.weight" not in converted:
        converted["lm_head.weight"] = converted["text_model.embed_tokens.weight"]
    return converted


def _from_transformers_config(values: dict[str, Any]) -> SmolVLMConfig:
    """transformers' Idefics3Config / SmolVLMConfig dict, with its defaults for the fields Hub configs omit."""
    text = values.get("text_config") or {}
    pad_token_id = text.get("pad_token_id")
    return SmolVLMConfig(
        vision=siglip_config_from_transformers(values.get("vision_config") or {}),
        text=llama_config_from_transformers(text),
        scale_factor=values.get("scale_factor", 2),
        image_token_id=values.get("image_token_id", 128257),
        pad_token_id=2 if pad_token_id is None else pad_token_id,
        tie_word_embeddings=values.get("tie_word_embeddings", False),
    )


TRANSFORMERS = Converter(
    "transformers",
    convert_state_dict=_from_transformers_state_dict,
    convert_config=_from_transformers_config,
    matches_config=lambda values: values.get("model_type") in ("idefics3", "smolvlm"),
    matches_keys=lambda keys: any(k.startswith("model.text_model.") for k in keys),
)


def run_smolvlm(name: str, args: Any) -> None:
    """`zoo run smolvlm-* --prompt TEXT [--image PATH ...] [--video PATH]`: print the model's answer."""
    from zoo.errors import InputError
    from zoo.factory import create, from_pretrained
    from zoo.registry import split_name
    from zoo.vlm.smolvlm_processing import SmolVLMProcessor

    if not args.prompt:
        raise InputError("zoo run needs --prompt for a vision-language model")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.checkpoint:
        source, revision = args.checkpoint, None
        model = from_pretrained(source, family="smolvlm", dtype=args.dtype or "auto", device=device)
    else:
        entry, tag = split_name(name)
        source, revision = entry.source(tag).hub_id, entry.source(tag).revision
        model = create(name, pretrained=True, dtype=args.dtype, device=device)
    context = model.config.text.max_position_embeddings
    if args.max_new_tokens >= context:
        raise InputError(f"--max-new-tokens {args.max_new_tokens} leaves no room for the prompt in the model's "
                         f"{context}-token context; ask for fewer")
    processor = SmolVLMProcessor.from_pretrained(
        source, revision=revision, image_seq_len=model.config.image_seq_len,
        max_image_size=model.config.vision.image_size,
    )
    content = [{"type": "image"} for _ in args.image] + ([{"type": "video"}] if args.video else [])
    content.append({"type": "text", "text": args.prompt})
    prompt = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    inputs = processor(text=prompt, images=args.image or None, videos=args.video,
                       max_length=context - args.max_new_tokens)
    inputs = {key: value.to(device) for key, value in inputs.items()}
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(model.lm_head.weight.dtype)
    tokenizer = processor.tokenizer
    stop = {tokenizer.convert_tokens_to_ids("<end_of_utterance>"), tokenizer.eos_token_id} - {None}
    output = model.generate(**inputs, max_new_tokens=args.max_new_tokens, eos_token_id=sorted(stop), cache="static")
    print(processor.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip())


register_family("smolvlm", SmolVLM, [TRANSFORMERS], runner=run_smolvlm)


# ---------------------------------------------------------------------------------------------------
# Registry


def _example_inputs(config: SmolVLMConfig, batch_size: int, generator: torch.Generator | None) -> dict[str, Any]:
    """One tile per sample: 4 text tokens, the tile's <image> tokens, 4 text tokens."""
    size = config.vision.image_size
    image_tokens = torch.full((batch_size, config.image_seq_len), config.image_token_id)
    text = torch.randint(0, min(config.image_token_id, config.text.vocab_size), (batch_size, 8), generator=generator)
    return {
        "input_ids": torch.cat([text[:, :4], image_tokens, text[:, 4:]], dim=1),
        "pixel_values": torch.randn(batch_size, 1, 3, size, size, generator=generator),
    }


def _input_spec(config: SmolVLMConfig) -> InputSpec:
    size = config.vision.image_size
    return InputSpec(
        {"input_ids": TensorSpec((config.image_seq_len + 8,), torch.long, high=config.text.vocab_size),
         "pixel_values": TensorSpec((1, 3, size, size))},
        factory=_example_inputs,
    )


_PAPER = "2504.05299"
_VISION_512 = SiglipVisionConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                                 image_size=512, patch_size=16)
_VISION_384 = SiglipVisionConfig(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                                 image_size=384, patch_size=14)
_TEXT_135M = LlamaConfig(vocab_size=49280, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, rope_theta=100000.0,
                         max_position_embeddings=8192)
_TEXT_360M = LlamaConfig(vocab_size=49280, hidden_size=960, intermediate_size=2560, num_hidden_layers=32,
                         num_attention_heads=15, num_key_value_heads=5, rope_theta=100000.0,
                         max_position_embeddings=8192)
_TEXT_1_7B = LlamaConfig(vocab_size=49155, hidden_size=2048, intermediate_size=8192, num_hidden_layers=24,
                         num_attention_heads=32, num_key_value_heads=32, rope_theta=273768.0,
                         max_position_embeddings=16384)


def _sources(*repos: tuple[str, str]) -> tuple[PretrainedSource, ...]:
    return tuple(PretrainedSource(f"HuggingFaceTB/{repo}", tag=tag, format="transformers", license="apache-2.0")
                 for tag, repo in repos)


def _register(name: str, config: SmolVLMConfig, sources: tuple[PretrainedSource, ...], description: str,
              expected_params: int | None = None) -> None:
    register_model(ModelEntry(
        name, "smolvlm", "vlm", config, sources=sources, paper=_PAPER, description=description,
        default_input=_input_spec(config), expected_params=expected_params,
    ))


_register(
    "smolvlm-256m", SmolVLMConfig(vision=_VISION_512, text=_TEXT_135M, scale_factor=4, image_token_id=49190),
    _sources(("instruct", "SmolVLM-256M-Instruct"), ("base", "SmolVLM-256M-Base")),
    "SmolVLM 256M: SigLIP-B/16 at 512 px, 64 tokens per tile, SmolLM2-135M.", 256_484_928,
)
_register(
    "smolvlm-500m", SmolVLMConfig(vision=_VISION_512, text=_TEXT_360M, scale_factor=4, image_token_id=49190),
    _sources(("instruct", "SmolVLM-500M-Instruct"), ("base", "SmolVLM-500M-Base")),
    "SmolVLM 500M: SigLIP-B/16 at 512 px, 64 tokens per tile, SmolLM2-360M.", 507_482_304,
)
_register(
    "smolvlm-2.2b", SmolVLMConfig(vision=_VISION_384, text=_TEXT_1_7B, scale_factor=3, image_token_id=49153),
    _sources(("instruct", "SmolVLM-Instruct"), ("base", "SmolVLM-Base"), ("synthetic", "SmolVLM-Synthetic")),
    "SmolVLM 2.2B: SigLIP-SO400M/14 at 384 px, 81 tokens per tile, SmolLM2-1.7B.", 2_246_272_880,
)
_register(
    "smolvlm2-256m", SmolVLMConfig(vision=_VISION_512, text=_TEXT_135M, scale_factor=4, image_token_id=49190),
    _sources(("video-instruct", "SmolVLM2-256M-Video-Instruct")),
    "SmolVLM2 256M for images and video (frames as tiles): SigLIP-B/16, SmolLM2-135M.", 256_484_928,
)
_register(
    "smolvlm2-500m", SmolVLMConfig(vision=_VISION_512, text=_TEXT_360M, scale_factor=4, image_token_id=49190),
    _sources(("video-instruct", "SmolVLM2-500M-Video-Instruct")),
    "SmolVLM2 500M for images and video: SigLIP-B/16, SmolLM2-360M.", 507_482_304,
)
_register(
    "smolvlm2-2.2b",
    SmolVLMConfig(vision=_VISION_384, text=dataclasses.replace(_TEXT_1_7B, vocab_size=49280, rope_theta=130000.0,
                                                                max_position_embeddings=8192),
                  scale_factor=3, image_token_id=49190),
    _sources(("instruct", "SmolVLM2-2.2B-Instruct")),
    "SmolVLM2 2.2B for images and video: SigLIP-SO400M/14, SmolLM2-1.7B.", 2_246_784_880,
)
_register(
    "smolvlm-tiny",
    SmolVLMConfig(
        vision=SiglipVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                  image_size=64, patch_size=8),
        text=LlamaConfig(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, rope_theta=100000.0,
                         max_position_embeddings=2048),
        # <image> and the padding token of zoo's procedural byte tokenizer (build_byte_tokenizer)
        scale_factor=4, image_token_id=298, pad_token_id=2,
    ),
    (), "A 2-layer SmolVLM for tests and the quickstart: 8 px patches, 4 tokens per 64 px tile (one per quadrant), "
        "token ids of zoo's procedural byte tokenizer.",
)
