"""Model card templates, one per family, rendered by zoo.hub at save/push time.

`<family>.md` is the body of the card (Jinja). Its metadata header is built by `zoo.hub.render_model_card` with
huggingface_hub's `ModelCardData`, from the registry and from `metadata(family, name)`: the family's Hub tags and
pipeline. The data the published weights were trained on comes from their registry source (a trained model's card names
its own data instead).
"""

from __future__ import annotations

from typing import Any

_FAMILIES: dict[str, dict[str, Any]] = {
    "lowformer": {"tags": ["image-classification", "backbone"], "pipeline_tag": "image-classification"},
    "wavemix": {"tags": ["backbone"]},
    "wan": {"tags": ["video-generation"]},
    "hummingbird": {"tags": ["video-generation"], "pipeline_tag": "text-to-video"},
    "zimage": {"tags": ["text-to-image"], "pipeline_tag": "text-to-image"},
    "llavamini": {"tags": ["image-text-to-text", "video-text-to-text"], "pipeline_tag": "image-text-to-text"},
    "hulumed": {"tags": ["medical", "image-text-to-text"], "pipeline_tag": "image-text-to-text"},
    "spikingbrain": {"tags": ["text-generation", "linear-attention"], "pipeline_tag": "text-generation"},
    "mlfsr": {"tags": ["light-field", "super-resolution", "mamba"], "pipeline_tag": "image-to-image"},
    "epit": {"tags": ["light-field", "super-resolution"], "pipeline_tag": "image-to-image"},
    "tinygpt_v": {"tags": ["image-text-to-text", "phi-2", "blip-2"], "pipeline_tag": "image-text-to-text"},
}


def metadata(family: str, name: str) -> dict[str, Any]:
    """The card metadata particular to `family` (model `name`): `tags` and `pipeline_tag` (both optional)."""
    if family == "wan":
        return {**_FAMILIES["wan"], "pipeline_tag": "image-to-video" if "-i2v-" in name else "text-to-video"}
    return _FAMILIES.get(family, {})
