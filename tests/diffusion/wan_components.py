"""Tiny random Wan components (as diffusers' own Wan tests build them) and the folders they are published in.

Nothing here downloads: the tokenizer is a small unigram vocabulary built in place of google/umt5-xxl's.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

TEXT_DIM = 32
# (diffusers substring, original-release substring): the inverse of diffusers' own original -> diffusers
# converter, so that a diffusers checkpoint can be written in the original release's layout.
_TO_ORIGINAL = [
    ("condition_embedder.time_embedder.linear_1.", "time_embedding.0."),
    ("condition_embedder.time_embedder.linear_2.", "time_embedding.2."),
    ("condition_embedder.text_embedder.linear_1.", "text_embedding.0."),
    ("condition_embedder.text_embedder.linear_2.", "text_embedding.2."),
    ("condition_embedder.time_proj.", "time_projection.1."),
    ("condition_embedder.image_embedder.norm1.", "img_emb.proj.0."),
    ("condition_embedder.image_embedder.ff.net.0.proj.", "img_emb.proj.1."),
    ("condition_embedder.image_embedder.ff.net.2.", "img_emb.proj.3."),
    ("condition_embedder.image_embedder.norm2.", "img_emb.proj.4."),
    (".attn1.", ".self_attn."),
    (".attn2.", ".cross_attn."),
    (".to_q.", ".q."),
    (".to_k.", ".k."),
    (".to_v.", ".v."),
    (".to_out.0.", ".o."),
    (".add_k_proj.", ".k_img."),
    (".add_v_proj.", ".v_img."),
    (".norm_added_k.", ".norm_k_img."),
    (".ffn.net.0.proj.", ".ffn.0."),
    (".ffn.net.2.", ".ffn.2."),
    (".norm2.", ".norm3."),
    ("proj_out.", "head.head."),
]


def tiny_transformer_config(kind: str = "t2v") -> dict:
    """A diffusers `WanTransformer3DModel` config: "t2v", "i2v" (Wan2.1 CLIP branch) or "ti2v" (48 channels)."""
    config = dict(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16, out_channels=16,
        text_dim=TEXT_DIM, freq_dim=256, ffn_dim=32, num_layers=2, rope_max_seq_len=32,
    )  # fmt: skip
    if kind == "i2v":
        config.update(in_channels=36, image_dim=8, added_kv_proj_dim=24)
    elif kind == "ti2v":
        config.update(in_channels=48, out_channels=48)
    return config


def randomized(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Weights far from their initial values (norm gains and biases too), so every one matters."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            parameter.copy_(noise * 0.2 if parameter.ndim > 1 else 1 + 0.5 * noise)
    return model.eval()


def diffusers_transformer(kind: str = "t2v", seed: int = 0, **overrides):
    from diffusers import WanTransformer3DModel

    return randomized(WanTransformer3DModel(**{**tiny_transformer_config(kind), **overrides}), seed)


def to_original_layout(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diffusers Wan state dict under the original release's key names."""
    renamed = {}
    for key, value in state_dict.items():
        for diffusers_name, original_name in _TO_ORIGINAL:
            key = key.replace(diffusers_name, original_name)
        key = re.sub(r"^blocks\.(\d+)\.scale_shift_table$", r"blocks.\1.modulation", key)
        renamed["head.modulation" if key == "scale_shift_table" else key] = value
    return renamed


def original_config(config: dict, model_type: str) -> dict:
    """The original release's config.json for a diffusers config."""
    return {
        "_class_name": "WanModel", "_diffusers_version": "0.30.0", "model_type": model_type,
        "dim": config["num_attention_heads"] * config["attention_head_dim"], "eps": 1e-06,
        "ffn_dim": config["ffn_dim"], "freq_dim": config["freq_dim"], "in_dim": config["in_channels"],
        "num_heads": config["num_attention_heads"], "num_layers": config["num_layers"],
        "out_dim": config["out_channels"], "text_len": 512, "text_dim": config["text_dim"],
    }  # fmt: skip


def tiny_tokenizer():
    """A T5 (unigram) tokenizer over a few words and single letters, standing in for umT5's."""
    from transformers import T5Tokenizer

    words = "a the cat dog dance monkey negative blurry video of in on and walks grass".split()
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [("▁" + word, -1.0 - i) for i, word in enumerate(words)]
    vocab += [(letter, -20.0) for letter in "abcdefghijklmnopqrstuvwxyz"]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def tiny_pipeline_components(kind: str = "t2v", scheduler: str = "unipc") -> dict:
    """Components of a diffusers Wan pipeline: "t2v", "i2v" (Wan2.1 with CLIP), "ti2v" (first-frame latent,
    per-token t) or "a14b" (two experts)."""
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel, UMT5Config, UMT5EncoderModel

    tokenizer = tiny_tokenizer()
    torch.manual_seed(0)
    text_encoder = UMT5EncoderModel(UMT5Config(
        vocab_size=len(tokenizer), d_model=TEXT_DIM, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, feed_forward_proj="gated-gelu",
    )).eval()  # fmt: skip
    torch.manual_seed(0)
    vae = AutoencoderKLWan(
        base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    ).eval()
    if scheduler == "unipc":  # as the published repos configure it
        scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    else:
        scheduler = FlowMatchEulerDiscreteScheduler(shift=7.0)
    transformer_kind = {"a14b": "t2v", "ti2v": "t2v"}.get(kind, kind)
    components = dict(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler,
        transformer=diffusers_transformer(transformer_kind, seed=1),
    )  # fmt: skip
    if kind == "i2v":
        torch.manual_seed(0)
        components["image_encoder"] = CLIPVisionModel(CLIPVisionConfig(
            hidden_size=8, num_hidden_layers=2, num_attention_heads=2, intermediate_size=16, image_size=32,
            patch_size=4,
        )).eval()  # fmt: skip
        components["image_processor"] = CLIPImageProcessor(crop_size=32, size=32)
    if kind == "a14b":
        components.update(transformer_2=diffusers_transformer("t2v", seed=2), boundary_ratio=0.875)
    if kind == "ti2v":
        components["expand_timesteps"] = True
    return components


def save_diffusers_pipeline(folder: Path, kind: str = "t2v", scheduler: str = "unipc") -> Path:
    """Write a tiny diffusers Wan pipeline in the Hub repo layout (model_index.json + component folders)."""
    from diffusers import WanImageToVideoPipeline, WanPipeline

    image_to_video = kind in ("i2v", "ti2v")
    pipeline_class = WanImageToVideoPipeline if image_to_video else WanPipeline
    pipeline_class(**tiny_pipeline_components(kind, scheduler)).save_pretrained(folder)
    return folder
