"""LLaVA-Mini (arXiv 2501.03895): one vision token per image, recovered by modality pre-fusion.

CLIP's patch features (576 for a 336 px image) are compressed to `compressor_size**2` tokens by one cross-attention
from learned queries (in CLIP's width, before the projector). One MLP projector maps both the compressed and the
full visual tokens to the LLM's width; `prefusion_layer_num` Llama decoder layers run over
`[full visual ; compressed ; text]` so that the text tokens absorb the image, and the LLM sees only the fused text
with the `<image>` placeholder (id -200) replaced by the fused compressed tokens.

High resolution (`resolution_ratio` N > 1): N x N crops and the full image go through CLIP, the compressor reads the
stitched (N g)^2 grid of the crops, and pre-fusion sees every crop token and the full image. Video: each frame is
compressed and pre-fused on its own; the LLM gets the frames' compressed tokens in order and the fused text averaged
over the frames. Module names follow the official release (`compressor`, `mm_projector`, `prefusion_layers`);
its checkpoints (`model_type` "llava_mini_llama") load by renaming only.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Literal

import torch
from einops import rearrange
from torch import nn

from zoo import hub
from zoo.backbones import clip
from zoo.backbones.clip import CLIPVisionConfig, CLIPVision, clip_vision_config_from_transformers
from zoo.backbones.generation import generate, lm_logits
from zoo.backbones.llama import LlamaConfig, LlamaDecoderLayer, LlamaModel, llama_config_from_transformers
from zoo.config import PositiveInt, ZooConfig
from zoo.errors import CheckpointError, ConfigError, HubError, InputError
from zoo.layers.attention import DynamicCache, StaticCache, padding_mask
from zoo.layers.token_reduction import QueryCompressor, attention_received
from zoo.modeling import ZooModel
from zoo.vlm.token_reduction import TokenReduction, as_reduction, captured_attention, reduce_partitions
from zoo.registry import (
    Converter, InputSpec, ModelEntry, PretrainedSource, TensorSpec, get_entry, list_models, register_family,
    register_model, rename_keys,
)

IMAGE_TOKEN_INDEX = -200
IGNORE_INDEX = -100
COMPRESSOR_HEADS = 8  # hard-coded in the official Resampler


@dataclasses.dataclass
class LlavaMiniConfig(ZooConfig):
    """vision: the CLIP tower; text: the Llama decoder (its config also builds the pre-fusion layers).

    vision_tower: the official `mm_vision_tower` (a Hub id or folder; its image processor config is read from there).
    compressor_size: c, giving c^2 vision tokens per image (frame). resolution_ratio: N, splitting an image into
    N x N crops plus the full image. tokenizer_model_max_length: the LLM sequence is cut to this many tokens.
    """

    vision: CLIPVisionConfig = dataclasses.field(default_factory=CLIPVisionConfig)
    text: LlamaConfig = dataclasses.field(default_factory=LlamaConfig)
    vision_tower: str = "openai/clip-vit-large-patch14-336"
    mm_vision_select_layer: int = -2
    mm_vision_select_feature: Literal["patch"] = "patch"
    mm_projector_type: Literal["mlp2x_gelu", "linear"] = "mlp2x_gelu"
    compressor_size: PositiveInt = 1
    prefusion_layer_num: PositiveInt = 4
    resolution_ratio: PositiveInt = 1
    image_aspect_ratio: Literal["square", "pad"] = "square"
    tokenizer_model_max_length: PositiveInt | None = None

    def validate(self) -> None:
        width = self.vision.hidden_size
        if width % COMPRESSOR_HEADS:
            raise ConfigError(f"LlavaMiniConfig: the vision width ({width}) must be divisible by the compressor's "
                              f"{COMPRESSOR_HEADS} heads.")
        if width % 4:
            raise ConfigError(f"LlavaMiniConfig: the vision width ({width}) must be divisible by 4 (the compressor's "
                              "2D sin-cos positions).")
        layers = self.vision.num_hidden_layers + 1
        if not -layers <= self.mm_vision_select_layer < layers:
            raise ConfigError(f"LlavaMiniConfig.mm_vision_select_layer ({self.mm_vision_select_layer}) must index one "
                              f"of the tower's {layers} hidden states (-{layers}..{layers - 1}).")

    @property
    def grid(self) -> int:
        """Side of CLIP's patch grid for one image (crop)."""
        return self.vision.image_size // self.vision.patch_size

    @property
    def num_parts(self) -> int:
        """Images given to CLIP per image or frame: N x N crops plus the full image (1 when N = 1)."""
        return 1 if self.resolution_ratio == 1 else self.resolution_ratio**2 + 1


@dataclasses.dataclass
class MultimodalInputs:
    """What the LLM receives: embeddings (B, n, D), attention mask (B, n), positions (B, n), labels (B, n) or None."""

    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    labels: torch.Tensor | None = None


def build_projector(kind: str, in_features: int, out_features: int) -> nn.Module:
    """The official `mm_projector` (keys `.0` and `.2` for mlp2x_gelu)."""
    if kind == "linear":
        return nn.Linear(in_features, out_features)
    return nn.Sequential(nn.Linear(in_features, out_features), nn.GELU(), nn.Linear(out_features, out_features))


class LlavaMini(ZooModel):
    """forward(input_ids, attention_mask, images) -> logits (B, n, vocab) over the LLM's sequence (n: the prompt
    lengths after the placeholder became c^2 tokens, or T c^2 for a video, right-padded as the official code does).

    images: (B, 1, 3, S, S) one image per prompt, (B, N^2 + 1, 3, S, S) high resolution (crops in raster order, then
    the full image), (B, T, P, 3, S, S) a video of T frames (P parts per frame).
    """

    config_class = LlavaMiniConfig
    # The release detaches the text embeddings it pre-fuses, so a prompt with an image trains them nowhere.
    no_gradient_from_forward = ("language_model.embed_tokens.weight",)

    def __init__(self, config: LlavaMiniConfig):
        super().__init__(config)
        width = config.vision.hidden_size
        # Frozen as in the release (its last layer and post-LN are never used with select layer -2).
        self.vision_tower = CLIPVision(config.vision).requires_grad_(False)
        self.compressor = QueryCompressor(config.compressor_size, width, COMPRESSOR_HEADS)
        self.mm_projector = build_projector(config.mm_projector_type, width, config.text.hidden_size)
        self.prefusion_layers = nn.ModuleList(
            LlamaDecoderLayer(config.text, index) for index in range(config.prefusion_layer_num)
        )
        self.language_model = LlamaModel(config.text)
        self.lm_head = nn.Linear(config.text.hidden_size, config.text.vocab_size, bias=False)

    def fsdp_units(self) -> list[nn.Module]:
        return [*self.vision_tower.encoder.layers, *self.prefusion_layers, *self.language_model.layers]

    # --- vision side ------------------------------------------------------------------------------------------

    def _check_images(self, images: torch.Tensor, batch_size: int) -> torch.Tensor:
        """Images as (B, T, P, 3, S, S) (T = 1 for an image), after checking them against the config."""
        if images.ndim == 5:
            images = images[:, None]
        if images.ndim != 6:
            raise InputError(f"images must be (B, P, 3, H, W) for images or (B, T, P, 3, H, W) for a video, got "
                             f"{tuple(images.shape)}")
        b, frames, parts, channels, height, width = images.shape
        size, expected_parts = self.config.vision.image_size, self.config.num_parts
        if b != batch_size:
            raise InputError(f"got images for {b} prompts but {batch_size} prompts; pass one image (or video) per "
                             "prompt, or images=None for text only")
        if frames == 0:
            raise InputError("the video has no frames; pass at least one frame (a video shorter than one second still "
                             "needs one: sample its first frame)")
        if parts != expected_parts:
            raise InputError(f"each image must come as {expected_parts} part(s) (resolution_ratio "
                             f"{self.config.resolution_ratio}: N x N crops then the full image), got {parts}; build "
                             "the images with the LLaVA-Mini processor")
        if (channels, height, width) != (self.config.vision.num_channels, size, size):
            raise InputError(f"images must be {self.config.vision.num_channels} x {size} x {size} for the CLIP tower, "
                             f"got {channels} x {height} x {width}; resize them with the LLaVA-Mini processor")
        return images

    def encode_images(self, images: torch.Tensor, input_ids: torch.Tensor, labels: torch.Tensor | None = None,
                      token_reduction: TokenReduction | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One image (or frame) per prompt, (B, P, 3, S, S), with the prompts' ids (B, L) -> the pre-fused compressed
        tokens (B, c^2, D) and the pre-fused text (B, L, D) (raw embeddings where the text is masked).

        token_reduction (before the LLM) reduces each part's patch tokens that pre-fusion reads, ranking them by the
        class token's attention for "attention"; the compressor still reads them all."""
        config = self.config
        batch_size, parts = images.shape[:2]
        grid = config.grid
        layers = self.vision_tower.encoder.layers
        last_attention = layers[config.mm_vision_select_layer % (len(layers) + 1) - 1].self_attn
        ranked = token_reduction is not None and token_reduction.method == "attention"
        with captured_attention(last_attention, ranked) as captured:
            features = self.vision_tower.select_features(images.flatten(0, 1), config.mm_vision_select_layer,
                                                         config.mm_vision_select_feature)
        scores = attention_received(last_attention, captured["x"], query=0)[:, 1:] if ranked else None
        features = rearrange(features, "(b p) n d -> b p n d", b=batch_size)
        if parts == 1:
            full = features[:, 0]
            compressed = self.compressor(full, key_grid=(grid, grid))
            visual = self.mm_projector(self._reduce(full, token_reduction, scores))
        else:
            n = config.resolution_ratio
            crops = rearrange(features[:, :-1], "b (i j) (h w) d -> b (i h j w) d", i=n, h=grid)
            compressed = self.compressor(crops, key_grid=(n * grid, n * grid))
            if scores is not None:
                scores = rearrange(scores, "(b p) n -> b p n", b=batch_size)
                crop_scores = rearrange(scores[:, :-1], "b (i j) (h w) -> b (i h j w)", i=n, h=grid)
                scores = (crop_scores, scores[:, -1])
            visual = self.mm_projector(torch.cat([
                self._reduce(crops, token_reduction, None if scores is None else scores[0]),
                self._reduce(features[:, -1], token_reduction, None if scores is None else scores[1]),
            ], dim=1))
        compressed = self.mm_projector(compressed)

        text = self.language_model.embed_tokens(input_ids.clamp(min=0)).detach()
        prefusion_ids = input_ids if labels is None else input_ids * (labels == IGNORE_INDEX)
        text_masked = prefusion_ids <= 0  # the placeholder, padding (id 0) and, in training, the answer
        x = torch.cat([visual, compressed, text.to(visual.dtype)], dim=1)
        valid = torch.cat([text_masked.new_ones(batch_size, x.shape[1] - text.shape[1]), ~text_masked], dim=1)
        position_ids = (valid.long().cumsum(-1) - 1).masked_fill(~valid, 1)
        rotary = self.language_model.rotary(position_ids)
        mask = padding_mask(valid)
        for index, layer in enumerate(self.prefusion_layers):
            x = layer(x, rotary, mask, None, index)
        length, queries = text.shape[1], compressed.shape[1]
        fused_text = torch.where(text_masked[..., None], text.to(x.dtype), x[:, -length:])
        return x[:, -length - queries:-length], fused_text

    @staticmethod
    def _check_reduction(token_reduction: TokenReduction | None) -> TokenReduction | None:
        token_reduction = as_reduction(token_reduction)
        if token_reduction is not None and token_reduction.method == "fastv":
            raise InputError("token reduction 'fastv' does not apply to LLaVA-Mini: its LLM sees one compressed "
                             "token per image (c^2); reduce the tokens pre-fusion reads (pool, bilinear, attention, "
                             "merge) instead")
        if token_reduction is not None:
            token_reduction.check_family("LLaVA-Mini", ("pool", "bilinear", "attention", "merge"))
        return token_reduction

    @staticmethod
    def _reduce(tokens: torch.Tensor, token_reduction: TokenReduction | None,
                scores: torch.Tensor | None) -> torch.Tensor:
        """One partition per row (B, side**2, D) (an image, or the stitched crops) -> (B, kept, D)."""
        if token_reduction is None:
            return tokens
        return reduce_partitions(tokens, token_reduction, scores=scores).view(tokens.shape[0], -1, tokens.shape[-1])

    def prepare_inputs_embeds(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        images: torch.Tensor,
        labels: torch.Tensor | None = None,
        padding_side: Literal["right", "left"] = "right",
        token_reduction: TokenReduction | None = None,
    ) -> MultimodalInputs:
        """The LLM's inputs for prompts (B, L) holding at most one placeholder -200 each: the pre-fused text without
        its padding (attention_mask 0), the placeholder replaced by the image's (or video's) tokens, re-padded on
        `padding_side` with positions 0..n-1. `labels` (B, L) follow the same way (the vision tokens get -100).
        token_reduction: see `encode_images` and `zoo.vlm.token_reduction` (before the LLM only)."""
        token_reduction = self._check_reduction(token_reduction)
        if input_ids.ndim != 2:
            raise InputError(f"input_ids must be (B, L), got {tuple(input_ids.shape)}")
        if input_ids.shape[0] == 0:
            raise InputError("the batch is empty: pass at least one prompt with its image")
        images = self._check_images(images, input_ids.shape[0])
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if attention_mask.shape != input_ids.shape:
            raise InputError(f"attention_mask {tuple(attention_mask.shape)} must have the shape of input_ids "
                             f"{tuple(input_ids.shape)}")
        keep = attention_mask.bool()
        counts = ((input_ids == IMAGE_TOKEN_INDEX) & keep).sum(-1).tolist()
        bad = [(row, count) for row, count in enumerate(counts) if count > 1]
        if bad:
            raise InputError(f"prompt {bad[0][0]} holds {bad[0][1]} image placeholders (-200); LLaVA-Mini takes one "
                             "image or video per prompt: keep one <image> in each prompt")

        frames = images.shape[1]
        if frames == 1:
            vision_tokens, text = self.encode_images(images[:, 0], input_ids, labels, token_reduction)
        else:
            outputs = [self.encode_images(images[:, t], input_ids, labels, token_reduction) for t in range(frames)]
            vision_tokens = torch.cat([tokens for tokens, _ in outputs], dim=1)
            text = (sum(fused.float() for _, fused in outputs) / frames).to(outputs[0][1].dtype)

        rows, row_labels = [], []
        for row in range(input_ids.shape[0]):
            ids, embeds = input_ids[row][keep[row]], text[row][keep[row]]
            row_label = (labels[row][keep[row]] if labels is not None
                         else torch.full_like(ids, IGNORE_INDEX))
            at = (ids == IMAGE_TOKEN_INDEX).nonzero().flatten().tolist()
            if at:
                i = at[0]
                tokens = vision_tokens[row]
                embeds = torch.cat([embeds[:i], tokens, embeds[i + 1:]])
                row_label = torch.cat([row_label[:i], row_label.new_full((tokens.shape[0],), IGNORE_INDEX),
                                       row_label[i + 1:]])
            limit = self.config.tokenizer_model_max_length
            rows.append(embeds[:limit])
            row_labels.append(row_label[:limit])

        length = max(row.shape[0] for row in rows)
        batch_size, width = len(rows), text.shape[-1]
        embeds = text.new_zeros(batch_size, length, width)
        mask = attention_mask.new_zeros(batch_size, length)
        positions = torch.zeros(batch_size, length, dtype=torch.long, device=input_ids.device)
        padded_labels = input_ids.new_full((batch_size, length), IGNORE_INDEX)
        for row, (row_embeds, row_label) in enumerate(zip(rows, row_labels)):
            n = row_embeds.shape[0]
            span = slice(0, n) if padding_side == "right" else slice(length - n, length)
            embeds[row, span] = row_embeds
            mask[row, span] = 1
            positions[row, span] = torch.arange(n, device=input_ids.device)
            padded_labels[row, span] = row_label
        return MultimodalInputs(embeds, mask, positions, padded_labels if labels is not None else None)

    # --- forward and generation -------------------------------------------------------------------------------

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        images: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: DynamicCache | StaticCache | None = None,
        logits_to_keep: int = 0,
        inputs_embeds: torch.Tensor | None = None,
        token_reduction: TokenReduction | None = None,
    ) -> torch.Tensor:
        """Logits (B, n or k, vocab). With `images`, the multimodal sequence of `prepare_inputs_embeds` (n tokens,
        right-padded; its attention mask and positions replace the given ones); without, the plain LLM on
        `input_ids` or `inputs_embeds`, as are one-token decoding steps. logits_to_keep=k > 0: the last k only.
        token_reduction: of the visual tokens pre-fusion reads (see `encode_images`)."""
        token_reduction = self._check_reduction(token_reduction)
        if inputs_embeds is None:
            if input_ids is None:
                raise InputError("pass input_ids (B, L), or inputs_embeds (B, L, hidden_size)")
            if images is not None and input_ids.shape[1] != 1:
                prepared = self.prepare_inputs_embeds(input_ids, attention_mask, images,
                                                      token_reduction=token_reduction)
                inputs_embeds, attention_mask = prepared.inputs_embeds, prepared.attention_mask
                position_ids, input_ids = prepared.position_ids, None
            elif bool((input_ids < 0).any()):
                raise InputError("input_ids hold an image placeholder (-200) but no images were given; pass images=")
        else:
            input_ids = None
        hidden = self.language_model(input_ids, inputs_embeds, attention_mask, position_ids, cache)
        return lm_logits(self.lm_head, hidden, logits_to_keep)

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 images: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        """Prompt ids (B, L) followed by the new tokens (B, L + new); see `zoo.backbones.generation.generate` for the
        options. The multimodal prefix is built once (left-padded) and decoding continues from its cache.
        token_reduction: see `encode_images`."""
        token_reduction = self._check_reduction(kwargs.pop("token_reduction", None))
        if images is None:
            return generate(self, input_ids, attention_mask, **kwargs)
        with torch.inference_mode():
            prepared = self.prepare_inputs_embeds(input_ids, attention_mask, images, padding_side="left",
                                                  token_reduction=token_reduction)
        stand_in = torch.zeros_like(prepared.attention_mask, dtype=torch.long)
        output = generate(self, stand_in, prepared.attention_mask, inputs_embeds=prepared.inputs_embeds, **kwargs)
        return torch.cat([input_ids, output[:, stand_in.shape[1]:]], dim=1)


# ---------------------------------------------------------------------------------------------------
# Published format: the official release (LlavaMiniLlamaForCausalLM, model_type "llava_mini_llama")

_OFFICIAL_RENAMES = (
    (r"^model\.(embed_tokens|layers|norm)\.", r"language_model.\1."),
    (r"^model\.(compressor|mm_projector|prefusion_layers)\.", r"\1."),
)
_TOWER_PREFIX = "model.vision_tower.vision_tower."


def _tower_folder(tower: str) -> Path:
    """The local folder of `mm_vision_tower` (a folder, or a Hub id downloaded with its configs)."""
    local = Path(tower).expanduser()
    if local.is_dir():
        return local
    if tower.count("/") != 1 or tower.startswith((".", "/", "~")):
        raise CheckpointError(f"mm_vision_tower '{tower}' is neither an existing folder nor a Hub repo id; point it "
                              "at the CLIP vision tower (e.g. openai/clip-vit-large-patch14-336) in config.json.")
    return hub.download(tower, allow_patterns=["*.json"])


def _registered_tower(tower: str) -> CLIPVisionConfig | None:
    """The config of a registered CLIP tower published as `tower` (a Hub id), if any."""
    for name in list_models("*"):
        entry = get_entry(name)
        if entry.family == "clip-vision" and any(source.hub_id == tower for source in entry.sources):
            return entry.config
    return None


def tower_config(tower: str) -> CLIPVisionConfig:
    """The CLIPVisionConfig named by `mm_vision_tower`: read from its folder or Hub repo; a registered tower's config
    when the Hub cannot be reached."""
    try:
        folder = _tower_folder(tower)
    except HubError:
        known = _registered_tower(tower)
        if known is None:
            raise
        return known
    path = folder / "config.json"
    if not path.is_file():
        raise CheckpointError(f"mm_vision_tower '{tower}' has no config.json; it must be a CLIP vision tower folder "
                              "or Hub repo.")
    return clip_vision_config_from_transformers(json.loads(path.read_text()))


def _from_official_config(values: dict[str, Any]) -> LlavaMiniConfig:
    if "mm_vision_tower" not in values:
        raise CheckpointError("config.json has no mm_vision_tower: a LLaVA-Mini checkpoint names its CLIP tower there.")
    if "unpad" in values.get("mm_patch_merge_type", "flat"):
        raise ConfigError(f"mm_patch_merge_type '{values['mm_patch_merge_type']}' (LLaVA-NeXT's image_newline) is not "
                          "part of LLaVA-Mini; zoo reads 'flat' checkpoints.")
    vision = tower_config(values["mm_vision_tower"])
    mm_hidden = values.get("mm_hidden_size", vision.hidden_size)
    if mm_hidden != vision.hidden_size:
        raise ConfigError(f"config.json says mm_hidden_size {mm_hidden} but the tower '{values['mm_vision_tower']}' is "
                          f"{vision.hidden_size} wide.")
    return LlavaMiniConfig(
        vision=vision,
        text=llama_config_from_transformers(values),
        vision_tower=values["mm_vision_tower"],
        mm_vision_select_layer=values.get("mm_vision_select_layer", -2),
        mm_vision_select_feature=values.get("mm_vision_select_feature", "patch"),
        mm_projector_type=values.get("mm_projector_type", "linear"),
        compressor_size=values.get("compressor_size", 2),
        prefusion_layer_num=values.get("prefusion_layer_num", 4),
        resolution_ratio=values.get("resolution_ratio", 1),
        image_aspect_ratio=values.get("image_aspect_ratio", "square"),
        tokenizer_model_max_length=values.get("tokenizer_model_max_length"),
    )


def _from_official_state_dict(state_dict: dict[str, torch.Tensor], config: LlavaMiniConfig) -> dict[str, torch.Tensor]:
    """Official keys -> ours. The tower comes from the checkpoint when it holds one (the published one does), else
    from `config.vision_tower` (as the official loader always does)."""
    tower = {key[len(_TOWER_PREFIX):]: value for key, value in state_dict.items() if key.startswith(_TOWER_PREFIX)}
    rest = {key: value for key, value in state_dict.items()
            if not key.startswith(_TOWER_PREFIX) and not key.endswith("rotary_emb.inv_freq")}
    if not tower:
        tower = hub.load_state_dict(_tower_weights(config.vision_tower))
    converted = rename_keys(rest, _OFFICIAL_RENAMES)
    vision = clip.TRANSFORMERS.convert_state_dict(tower, config.vision)
    converted.update({f"vision_tower.{key}": value for key, value in vision.items()})
    return converted


def _tower_weights(tower: str) -> Path:
    local = Path(tower).expanduser()
    if local.is_dir():
        return local
    return hub.download(tower, allow_patterns=["*.json", "*.safetensors"])


OFFICIAL = Converter(
    "official",
    convert_state_dict=_from_official_state_dict,
    convert_config=_from_official_config,
    matches_config=lambda values: values.get("model_type") == "llava_mini_llama",
    matches_keys=lambda keys: any(key.startswith("model.compressor.") for key in keys),
)

register_family("llavamini", LlavaMini, [OFFICIAL], runner="zoo.vlm.llavamini_processing:run")


# ---------------------------------------------------------------------------------------------------
# Registry


def _example_inputs(config: LlavaMiniConfig, batch_size: int, generator: torch.Generator | None) -> dict[str, Any]:
    """4 text tokens, the image placeholder, 4 text tokens; one image per prompt."""
    size = config.vision.image_size
    text = torch.randint(1, config.text.vocab_size, (batch_size, 8), generator=generator)
    placeholder = torch.full((batch_size, 1), IMAGE_TOKEN_INDEX)
    return {
        "input_ids": torch.cat([text[:, :4], placeholder, text[:, 4:]], dim=1),
        "images": torch.randn(batch_size, config.num_parts, 3, size, size, generator=generator),
    }


def _input_spec(config: LlavaMiniConfig) -> InputSpec:
    size = config.vision.image_size
    return InputSpec(
        {"input_ids": TensorSpec((9,), torch.long, high=config.text.vocab_size),
         "images": TensorSpec((config.num_parts, 3, size, size))},
        factory=_example_inputs,
    )


_LLAMA_3_1_8B = LlamaConfig(
    vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
    num_key_value_heads=8, rms_norm_eps=1e-5, rope_theta=500000.0, max_position_embeddings=131072,
    rope_scaling={"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 8192},
)
_CLIP_L_336 = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                               image_size=336, patch_size=14)

register_model(ModelEntry(
    "llava-mini-llama3.1-8b", "llavamini", "vlm",
    LlavaMiniConfig(vision=_CLIP_L_336, text=_LLAMA_3_1_8B, compressor_size=1, prefusion_layer_num=4,
                    tokenizer_model_max_length=4096),
    sources=(PretrainedSource("ICTNLP/llava-mini-llama-3.1-8b", format="official", license="gpl-3.0"),),
    paper="2501.03895",
    description="LLaVA-Mini: CLIP ViT-L/336, one vision token per image (query compression) after 4 pre-fusion "
                "layers, Llama-3.1-8B-Instruct; images, high resolution and video.",
    default_input=_input_spec(LlavaMiniConfig(vision=_CLIP_L_336, text=_LLAMA_3_1_8B)),
    expected_params=9_231_400_960,  # Llama-3.1-8B + 4 of its layers + CLIP-L/336 + projector + compressor
))

_TINY = LlavaMiniConfig(
    vision=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                            image_size=32, patch_size=8),
    text=LlamaConfig(vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, rope_theta=500000.0, max_position_embeddings=2048,
                     rope_scaling={"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                   "original_max_position_embeddings": 64}),
    vision_tower="", compressor_size=2, prefusion_layer_num=2,
)
register_model(ModelEntry(
    "llava-mini-tiny", "llavamini", "vlm", _TINY,
    description="A small random LLaVA-Mini for tests and demos: 4x4 CLIP patches compressed to 4 tokens, 2 pre-fusion "
                "and 2 LLM layers (Llama 3.1-style rope scaling).",
    default_input=_input_spec(_TINY),
))
