"""Reference implementations that `zoo bench MODEL --compare REFERENCE` runs side by side with zoo.

A `Reference` belongs to a family and is named by its package (`transformers`, `diffusers`, `timm`, the paper's
own package). `build(config)` returns the reference model built at the same config as zoo's model, with random
weights, and zoo's model holding the same tensors (through the family's converter, strictly; no copies where the
converter only renames). `call(reference_model, inputs)` runs the reference on the inputs zoo's model takes as
keyword arguments (the registry's InputSpec) and returns what zoo's forward returns, so outputs can be compared;
`generate(reference_model, inputs, n)` decodes n greedy tokens (generative models).

Every builder checks that the reference config it wrote converts back to zoo's config through the family's own
config converter, so a field one side cannot express is an error rather than a silently different model.

Register more with `register_reference(Reference(...))`.
"""

from __future__ import annotations

import dataclasses
import importlib
import sys
import types
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from zoo.config import ZooConfig
from zoo.errors import ConfigError, ZooError
from zoo.hub import load_weights
from zoo.registry import get_family


class MissingPackageError(ZooError, ImportError):
    """A reference implementation's package is not installed."""


@dataclasses.dataclass(frozen=True)
class Reference:
    name: str
    family: str
    package: str  # the module to import
    requirement: str  # what to pip install
    label: str  # the reference class, for reports
    build: Callable[[ZooConfig], tuple[nn.Module, nn.Module]]
    call: Callable[[nn.Module, dict[str, Any]], Any]
    generate: Callable[[nn.Module, dict[str, Any], int], torch.Tensor] | None = None
    importer: Callable[[], types.ModuleType] | None = None  # how to import it, when not import_module(package)

    def require(self) -> types.ModuleType:
        """Import the reference's package, or say how to install it."""
        try:
            return self.importer() if self.importer is not None else importlib.import_module(self.package)
        except ImportError as error:
            raise MissingPackageError(
                f"--compare {self.name} runs {self.label} from the '{self.package}' package, which is not installed "
                f"({error}); install it with `pip install {self.requirement}`."
            ) from error


REFERENCES: dict[str, dict[str, Reference]] = {}


def register_reference(reference: Reference) -> Reference:
    REFERENCES.setdefault(reference.family, {})[reference.name] = reference
    return reference


def references_for(family: str) -> dict[str, Reference]:
    return REFERENCES.get(family, {})


def get_reference(family: str, name: str) -> Reference:
    """The reference `name` of `family`; unknown names list the family's references."""
    available = references_for(family)
    if name not in available:
        listed = ", ".join(available) if available else "none yet"
        others = sorted({n for refs in REFERENCES.values() for n in refs} - set(available))
        hint = f" (other families compare against: {', '.join(others)})" if others else ""
        raise ConfigError(f"'{family}' models have no reference '{name}'. References for {family}: {listed}{hint}.")
    return available[name]


def adopt(reference: nn.Module, config: ZooConfig, family: str, converter: str) -> nn.Module:
    """Zoo's model of `family` at `config`, built on the meta device, holding `reference`'s tensors."""
    family_ = get_family(family)
    convert = family_.converter(converter)
    with torch.device("meta"):
        model = family_.model_cls(config)
    load_weights(model, convert.convert_state_dict(reference.state_dict(), config), convert)
    return model.eval()


def check_round_trip(config: ZooConfig, converted: ZooConfig, reference: str, ignore: tuple[str, ...] = ()) -> None:
    """Refuse a config the reference cannot express: its config, read back by zoo's converter, must equal ours."""
    ours = {k: v for k, v in _flatten(config.to_dict()).items() if k not in ignore}
    theirs = {k: v for k, v in _flatten(converted.to_dict()).items() if k not in ignore}
    differing = [f"{k}: zoo {ours[k]!r} vs {reference} {theirs.get(k)!r}" for k in ours if ours[k] != theirs.get(k)]
    if differing:
        raise ConfigError(f"{reference} cannot build this config: " + "; ".join(differing))


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict) and value and all(isinstance(k, str) for k in value):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = list(value) if isinstance(value, tuple) else value
    return flat


# ---------------------------------------------------------------------------------------------------
# SmolVLM: transformers' SmolVLMForConditionalGeneration


def _smolvlm_build(config: Any) -> tuple[nn.Module, nn.Module]:
    import transformers

    from zoo.vlm.smolvlm import TRANSFORMERS

    vision, text = config.vision, config.text
    vision_config = {k: getattr(vision, k) for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                                      "num_attention_heads", "num_channels", "image_size",
                                                      "patch_size", "layer_norm_eps")}
    text_config = {k: getattr(text, k) for k in ("vocab_size", "hidden_size", "intermediate_size",
                                                  "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                                                  "head_dim", "rms_norm_eps", "max_position_embeddings",
                                                  "attention_bias", "mlp_bias")}
    if text_config["head_dim"] is None:
        text_config.pop("head_dim")
    if text.rope_scaling is not None:
        raise ConfigError("the SmolVLM transformers reference is built with default rotary embeddings; this config "
                          "has rope_scaling")
    text_config["rope_parameters"] = {"rope_type": "default", "rope_theta": text.rope_theta}
    reference_config = transformers.SmolVLMConfig(
        vision_config=vision_config,
        text_config=dict(model_type="llama", pad_token_id=config.pad_token_id, **text_config),
        scale_factor=config.scale_factor, image_token_id=config.image_token_id,
        tie_word_embeddings=config.tie_word_embeddings,
    )
    resolved = config.replace(text=text.replace(head_dim=text.resolved_head_dim))  # transformers fills it in
    check_round_trip(resolved, TRANSFORMERS.convert_config(reference_config.to_dict()), "transformers")
    reference = transformers.SmolVLMForConditionalGeneration(reference_config).eval()
    return reference, adopt(reference, config, "smolvlm", "transformers")


def _smolvlm_call(reference: nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
    return reference(**inputs).logits


def _smolvlm_generate(reference: nn.Module, inputs: dict[str, Any], new_tokens: int) -> torch.Tensor:
    pad = reference.config.text_config.pad_token_id or 0
    return reference.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                              pad_token_id=pad)


# ---------------------------------------------------------------------------------------------------
# Language models: transformers' LlamaForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM, PhiForCausalLM

_DECODER_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                   "num_key_value_heads", "max_position_embeddings", "tie_word_embeddings")


def _llama_values(config: Any) -> dict[str, Any]:
    """The transformers config values of a LlamaLMConfig (Llama, Qwen2, Qwen3 read the same names)."""
    values = {field: getattr(config, field) for field in _DECODER_FIELDS}
    rope = {"rope_type": "llama3", **config.rope_scaling} if config.rope_scaling else {"rope_type": "default"}
    values.update(head_dim=config.resolved_head_dim, rms_norm_eps=config.rms_norm_eps,
                  rope_parameters={**rope, "rope_theta": config.rope_theta})
    return values


def _llama_reference_values(family: str, config: Any) -> dict[str, Any]:
    values = _llama_values(config)
    if family != "qwen2":  # Qwen2's q/k/v biases are not an option; its converter sets qkv_bias
        values["attention_bias"] = config.attention_bias
    if family == "llama":
        values["mlp_bias"] = config.mlp_bias
    if family in ("qwen2", "qwen3") and config.sliding_window is not None:
        values.update(use_sliding_window=True, sliding_window=config.sliding_window,
                      max_window_layers=config.max_window_layers)
    return values


def _phi_reference_values(config: Any) -> dict[str, Any]:
    values = {field: getattr(config, field) for field in _DECODER_FIELDS}
    values.update(layer_norm_eps=config.layer_norm_eps, hidden_act=config.hidden_act, qk_layernorm=config.qk_layernorm,
                  rope_parameters={"rope_type": "default", "rope_theta": config.rope_theta,
                                   "partial_rotary_factor": config.partial_rotary_factor})
    return values


def _causal_lm_build(family: str, class_name: str) -> Callable[[Any], tuple[nn.Module, nn.Module]]:
    """The builder of transformers' `class_name` at a zoo config of `family` (checked to round-trip)."""

    def build(config: Any) -> tuple[nn.Module, nn.Module]:
        import transformers

        values = _phi_reference_values(config) if family == "phi" else _llama_reference_values(family, config)
        model_cls = getattr(transformers, class_name)
        reference_config = model_cls.config_class(**values, bos_token_id=None, eos_token_id=None, pad_token_id=None)
        resolved = config if family == "phi" else config.replace(head_dim=config.resolved_head_dim)
        convert = get_family(family).converter("transformers").convert_config
        check_round_trip(resolved, convert(reference_config.to_dict()), "transformers")
        reference = model_cls(reference_config).eval()
        return reference, adopt(reference, config, family, "transformers")

    return build


def _causal_lm_call(reference: nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
    return reference(**inputs).logits


def _causal_lm_generate(reference: nn.Module, inputs: dict[str, Any], new_tokens: int) -> torch.Tensor:
    """n greedy tokens from transformers' generate with its defaults (a dynamic cache); no stop token."""
    return reference.generate(**inputs, max_new_tokens=new_tokens, do_sample=False, pad_token_id=0)


# ---------------------------------------------------------------------------------------------------
# Wan: diffusers' WanTransformer3DModel


def _wan_build(config: Any) -> tuple[nn.Module, nn.Module]:
    from diffusers import WanTransformer3DModel

    from zoo.diffusion.wan import DIFFUSERS

    if config.dim % config.num_heads:
        raise ConfigError(f"dim {config.dim} is not divisible by num_heads {config.num_heads}")
    reference = WanTransformer3DModel(
        patch_size=tuple(config.patch_size), num_attention_heads=config.num_heads,
        attention_head_dim=config.dim // config.num_heads, in_channels=config.in_channels,
        out_channels=config.out_channels, text_dim=config.text_dim, freq_dim=config.freq_dim, ffn_dim=config.ffn_dim,
        num_layers=config.num_layers, cross_attn_norm=config.cross_attn_norm, qk_norm="rms_norm_across_heads",
        eps=config.eps, image_dim=config.image_dim,
        added_kv_proj_dim=config.dim if config.image_dim is not None else None,
    ).eval()
    check_round_trip(config, DIFFUSERS.convert_config(dict(reference.config)), "diffusers")
    return reference, adopt(reference, config, "wan", "diffusers")


def _wan_call(reference: nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
    return reference(**inputs, return_dict=False)[0]


# ---------------------------------------------------------------------------------------------------
# Z-Image: diffusers' ZImageTransformer2DModel


def _zimage_build(config: Any) -> tuple[nn.Module, nn.Module]:
    from diffusers import ZImageTransformer2DModel

    from zoo.diffusion.zimage import DIFFUSERS

    reference = ZImageTransformer2DModel(
        all_patch_size=(config.patch_size,), all_f_patch_size=(config.frame_patch_size,),
        in_channels=config.in_channels, dim=config.dim, n_layers=config.num_layers,
        n_refiner_layers=config.num_refiner_layers, n_heads=config.num_heads, n_kv_heads=config.num_heads,
        norm_eps=config.norm_eps, qk_norm=config.qk_norm, cap_feat_dim=config.caption_dim,
        rope_theta=config.rope_theta, t_scale=config.t_scale, axes_dims=list(config.axes_dims),
        axes_lens=list(config.axes_lens),
    ).eval()
    with torch.no_grad():
        for parameter in reference.parameters():
            parameter.normal_(0.0, 0.02)  # its pad tokens start uninitialised
    check_round_trip(config, DIFFUSERS.convert_config(dict(reference.config)), "diffusers", ignore=("fp16_clamp",))
    return reference, adopt(reference, config, "zimage", "diffusers")


def _zimage_call(reference: nn.Module, inputs: dict[str, Any]) -> Any:
    return reference(inputs["x"], inputs["t"], inputs["cap_feats"], return_dict=False)[0]


# ---------------------------------------------------------------------------------------------------
# LowFormer: timm's lowformer_*


def _lowformer_build(config: Any) -> tuple[nn.Module, nn.Module]:
    import timm

    from zoo.backbones.lowformer import TIMM, VARIANTS, _timm_architecture

    architecture = next((_timm_architecture(v) for v, c in VARIANTS.items()
                         if c.replace(num_classes=config.num_classes, in_chans=config.in_chans,
                                      drop_rate=config.drop_rate, drop_path_rate=config.drop_path_rate) == config),
                        "lowformer_b0")  # fmt: skip
    model_args = {
        "width_list": list(config.widths), "depth_list": list(config.depths), "head_widths": tuple(config.head_widths),
        "expand_ratio": config.expand_ratio, "stem_expand_ratio": config.stem_expand_ratio,
        "downsample_expand_ratios": (config.downsample_expand_ratio,) * 4, "attn": config.attention,
        "attn_mlp": config.mlp, "attn_mlp_ratio": config.mlp_ratio, "in_chans": config.in_chans,
        "drop_rate": config.drop_rate, "drop_path_rate": config.drop_path_rate,
    }
    converted = TIMM.convert_config({"architecture": architecture, "num_classes": config.num_classes,
                                     "model_args": model_args})
    check_round_trip(config, converted, "timm")
    reference = timm.create_model(architecture, num_classes=config.num_classes, **model_args).eval()
    return reference, adopt(reference, config, "lowformer", "timm")


def _image_call(reference: nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
    return reference(inputs["pixel_values"])


# ---------------------------------------------------------------------------------------------------
# UNIT: timm's VisionTransformer (vit_huge_patch14_224 for unit-600m) at UNIT's widths and stored position grid


def _unit_build(config: Any) -> tuple[nn.Module, nn.Module]:
    """timm's ViT doing UNIT's work at the stored position grid: its patch conv (bias zero) is UNIT's Linear embedder,
    its positions (added to the patches only: no_embed_class) UNIT's stored grid, its class + register tokens
    UNIT's; one class token, as timm has."""
    from timm.models.vision_transformer import VisionTransformer

    if config.num_cls_tokens != 1:
        raise ConfigError(f"timm's ViT has one class token; this UNIT config has {config.num_cls_tokens}.")
    reference = VisionTransformer(
        img_size=config.grid * config.patch_size, patch_size=config.patch_size, in_chans=config.in_chans,
        embed_dim=config.embed_dim, depth=config.depth, num_heads=config.num_heads, mlp_ratio=config.mlp_ratio,
        qkv_bias=config.qkv_bias, init_values=config.init_values, class_token=True, no_embed_class=True,
        reg_tokens=config.num_registers, global_pool=config.global_pool, num_classes=config.num_classes,
    ).eval()
    torch.nn.init.zeros_(reference.patch_embed.proj.bias)
    state = reference.state_dict()
    prefix = [state["cls_token"][0]] + ([state["reg_token"][0]] if config.num_registers else [])
    converted = {
        **{k: v for k, v in state.items() if k.startswith(("blocks.", "norm.", "fc_norm.", "head."))},
        "input_conditioner.norm_mean": torch.tensor((0.48145466, 0.4578275, 0.40821073)).view(3, 1, 1),
        "input_conditioner.norm_std": torch.tensor((0.26862954, 0.26130258, 0.27577711)).view(3, 1, 1),
        "patch_generator.embedder.weight": state["patch_embed.proj.weight"].flatten(1),
        "patch_generator.pos_embed": state["pos_embed"],
        "patch_generator.cls_token.token": torch.cat(prefix),
    }
    family = get_family("unit")
    with torch.device("meta"):
        model = family.model_cls(config)
    load_weights(model, converted, family.converter("zoo"))
    return reference, model.eval()


def _unit_call(reference: nn.Module, inputs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """CLIP-normalised pixels through timm's ViT; (class token, spatial tokens), as UNIT returns them."""
    pixels = inputs["pixel_values"]
    mean = pixels.new_tensor((0.48145466, 0.4578275, 0.40821073)).view(3, 1, 1)
    std = pixels.new_tensor((0.26862954, 0.26130258, 0.27577711)).view(3, 1, 1)
    tokens = reference.forward_features((pixels - mean) / std)
    return tokens[:, 0], tokens[:, reference.num_prefix_tokens:]


# ---------------------------------------------------------------------------------------------------
# WaveMix: the authors' pip package `wavemix`


def import_wavemix_classification() -> types.ModuleType:
    """`wavemix.classification`. wavemix 0.2.4 imports `hamming` from numpy.lib.function_base, which numpy 2
    removed; it never uses it, so a stand-in module provides it."""
    import numpy

    if "numpy.lib.function_base" not in sys.modules:
        try:
            importlib.import_module("numpy.lib.function_base")
        except ImportError:
            shim = types.ModuleType("numpy.lib.function_base")
            shim.hamming = numpy.hamming
            sys.modules["numpy.lib.function_base"] = shim
    return importlib.import_module("wavemix.classification")


def _wavemix_build(config: Any) -> tuple[nn.Module, nn.Module]:
    if config.segmentation_widths or config.in_chans != 3 or not 1 <= config.levels <= 4:
        raise ConfigError("the wavemix package's WaveMix classifies RGB images with 1 to 4 levels; this config has "
                          f"levels={config.levels}, in_chans={config.in_chans}, "
                          f"segmentation_widths={config.segmentation_widths}")
    classification = import_wavemix_classification()
    reference = classification.WaveMix(
        num_classes=config.num_classes, depth=config.depth, mult=config.mlp_ratio, ff_channel=config.ff_dim,
        final_dim=config.dim, dropout=config.dropout, level=config.levels,
        initial_conv="pachify" if config.stem == "patchify" else "strided", patch_size=config.patch_size,
        stride=config.stem_stride,
    ).eval()
    return reference, adopt(reference, config, "wavemix", "original")


for _reference in (
    Reference("transformers", "smolvlm", "transformers", "transformers", "transformers SmolVLMForConditionalGeneration",
              _smolvlm_build, _smolvlm_call, _smolvlm_generate),
    *(Reference("transformers", family, "transformers", "transformers", f"transformers {class_name}",
                _causal_lm_build(family, class_name), _causal_lm_call, _causal_lm_generate)
      for family, class_name in (("llama", "LlamaForCausalLM"), ("qwen2", "Qwen2ForCausalLM"),
                                 ("qwen3", "Qwen3ForCausalLM"), ("phi", "PhiForCausalLM"))),
    Reference("diffusers", "wan", "diffusers", "diffusers", "diffusers WanTransformer3DModel", _wan_build, _wan_call),
    Reference("diffusers", "zimage", "diffusers", "diffusers", "diffusers ZImageTransformer2DModel", _zimage_build,
              _zimage_call),
    Reference("timm", "lowformer", "timm", "timm", "timm lowformer", _lowformer_build, _image_call),
    Reference("timm", "unit", "timm", "timm", "timm VisionTransformer (vit_huge_patch14_224 at UNIT's config)",
              _unit_build, _unit_call),
    Reference("wavemix", "wavemix", "wavemix", "wavemix", "the authors' wavemix package (WaveMix)", _wavemix_build,
              _image_call, importer=import_wavemix_classification),
):
    register_reference(_reference)


__all__ = ["REFERENCES", "MissingPackageError", "Reference", "adopt", "check_round_trip", "get_reference",
           "import_wavemix_classification", "references_for", "register_reference"]
