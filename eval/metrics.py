"""Evaluation metrics: classification top-k, PSNR/SSIM/LPIPS, Fréchet distance, CLIP score, VQA exact match and ANLS.

Where torchmetrics has the metric, it computes it (top-k accuracy, PSNR, SSIM, the Fréchet distance of feature
sets, edit distances); this module fixes the conventions around it:

- Images are float tensors (B, C, H, W) in [0, `data_range`] (1.0 by default). PSNR and SSIM are per image
  (B,); average them over a dataset yourself (`.mean()`), as BasicSR does.
- `y_channel=True` converts RGB to the luma Y of ITU-R BT.601 in its "studio swing" form, as MATLAB's
  `rgb2ycbcr` and BasicSR / MLFSR's `rgb2ycbcr(y_only=True)` compute it: for R, G, B in [0, 1],
  Y = (16 + 65.481 R + 128.553 G + 24.966 B) / 255, in [16/255, 235/255]; PSNR and SSIM are then computed on Y
  with the same data range. `crop_border=k` drops k pixels on every side first (BasicSR's `crop_border`; for
  super-resolution it is usually the scale). Unlike BasicSR, images are not rounded to 8 bits first: round them
  yourself (`(x * 255).round() / 255`) to reproduce numbers computed on saved PNGs.
- SSIM: Gaussian window 11 x 11 with sigma 1.5, K1 = 0.01, K2 = 0.03, over the window positions that fit
  inside the image, averaged over pixels and channels (Wang et al. 2004; BasicSR's `calculate_ssim`).
- Fréchet distance: ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) between Gaussians fitted to two feature
  sets (FID when the features are InceptionV3 pool features; any extractor works: pass its features).
- CLIP score: max(100 cos(image, text), 0) averaged over pairs (Hessel et al. 2021, torchmetrics' scale); the
  features come from a CLIP model you supply, or from `load_clip` (downloads only when asked).
- VQA exact match: a match against any reference answer after the normalisation of the VQA evaluation script
  (lower case, punctuation removed, number words as digits, articles dropped, contractions restored). It is our
  own reading of those rules, not a copy of the script: apostrophes are dropped rather than spaced, so "can't"
  and "cant" agree.
- ANLS (DocVQA): per question max over references of 1 - NL(pred, ref) when NL < 0.5 else 0, with NL the
  Levenshtein distance over the longer length, on stripped, lower-cased strings.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from zoo.errors import ConfigError, InputError, ZooError

# ---------------------------------------------------------------------------------------------------
# classification


def topk_accuracy(logits: Tensor, labels: Tensor, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Top-k accuracy (fractions in [0, 1]) of logits (N, num_classes) for integer labels (N,), as {"top1": ..}.

    A k above the class count is left out (every label is in the top k of 3 classes).
    """
    from torchmetrics.functional.classification import multiclass_accuracy

    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise InputError(f"top-k accuracy takes logits (N, C) and labels (N,), got {tuple(logits.shape)} and "
                         f"{tuple(labels.shape)}")
    classes = logits.shape[1]
    return {
        f"top{k}": float(multiclass_accuracy(logits.float(), labels.long(), num_classes=classes, top_k=k,
                                             average="micro"))
        for k in ks if k <= classes
    }


# ---------------------------------------------------------------------------------------------------
# image quality


def rgb_to_y(images: Tensor, data_range: float = 1.0) -> Tensor:
    """Luma Y (B, 1, H, W) of RGB images (B, 3, H, W) in [0, data_range]: ITU-R BT.601 studio swing, as MATLAB's
    rgb2ycbcr and BasicSR compute it (Y = 16 + 65.481 R + 128.553 G + 24.966 B for R, G, B in [0, 1], over 255)."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise InputError(f"the Y channel needs RGB images (B, 3, H, W), got {tuple(images.shape)}")
    weights = images.new_tensor([65.481, 128.553, 24.966]).view(1, 3, 1, 1)
    unit = images / data_range
    return ((unit * weights).sum(1, keepdim=True) + 16.0) / 255.0 * data_range


def _prepare(prediction: Tensor, target: Tensor, crop_border: int, y_channel: bool, data_range: float):
    if prediction.shape != target.shape:
        raise InputError(f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ in shape")
    if prediction.ndim == 3:
        prediction, target = prediction[None], target[None]
    if prediction.ndim != 4:
        raise InputError(f"images must be (B, C, H, W) or (C, H, W), got {tuple(prediction.shape)}")
    prediction, target = prediction.double(), target.double()
    if crop_border:
        if 2 * crop_border >= min(prediction.shape[-2:]):
            raise InputError(f"crop_border {crop_border} leaves nothing of {tuple(prediction.shape[-2:])} images")
        prediction = prediction[..., crop_border:-crop_border, crop_border:-crop_border]
        target = target[..., crop_border:-crop_border, crop_border:-crop_border]
    if y_channel:
        prediction, target = rgb_to_y(prediction, data_range), rgb_to_y(target, data_range)
    return prediction, target


def psnr(prediction: Tensor, target: Tensor, data_range: float = 1.0, crop_border: int = 0,
         y_channel: bool = False) -> Tensor:
    """PSNR in dB per image (B,): 10 log10(data_range^2 / MSE); identical images give +inf."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    prediction, target = _prepare(prediction, target, crop_border, y_channel, data_range)
    return peak_signal_noise_ratio(prediction, target, data_range=data_range, reduction="none",
                                   dim=(1, 2, 3)).float()


_SSIM_WINDOW = 11  # torchmetrics' Gaussian window for sigma 1.5: int(3.5 * 1.5 + 0.5) * 2 + 1


def ssim(prediction: Tensor, target: Tensor, data_range: float = 1.0, crop_border: int = 0,
         y_channel: bool = False) -> Tensor:
    """SSIM per image (B,), Gaussian 11 x 11 window (sigma 1.5) over the positions inside the image; 1 for
    identical images. Images must be at least 11 x 11 after the crop."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    prediction, target = _prepare(prediction, target, crop_border, y_channel, data_range)
    if min(prediction.shape[-2:]) < _SSIM_WINDOW:
        raise InputError(f"SSIM's 11 x 11 window needs images of at least 11 x 11, got {tuple(prediction.shape[-2:])}")
    # torchmetrics reflect-pads the images and averages the SSIM map over every pixel; the map's positions at least
    # `half` pixels from the edges are those whose window lies inside the image, which are what BasicSR averages.
    _, ssim_map = structural_similarity_index_measure(prediction, target, data_range=data_range, reduction="none",
                                                      return_full_image=True)
    half = _SSIM_WINDOW // 2
    return ssim_map[..., half:-half, half:-half].flatten(1).mean(1).float()


_LPIPS: dict[str, nn.Module] = {}


def lpips(prediction: Tensor, target: Tensor, net: str = "alex") -> Tensor:
    """LPIPS distance per image (B,) of RGB images in [0, 1] (scaled to [-1, 1], as the `lpips` package expects),
    with the `lpips` package's v0.1 linear heads on torchvision's `net` features (alex, vgg or squeeze). Needs
    `pip install mmzoo[lpips]` and torchvision's ImageNet weights of `net` already in the torch hub cache (zoo
    downloads nothing here); a ZooError says which is missing."""
    if net not in _LPIPS:
        try:
            import lpips as lpips_package
            from torchvision import models
        except ImportError as error:
            raise ZooError("LPIPS needs the lpips package: pip install mmzoo[lpips]") from error
        weights = {"alex": models.AlexNet_Weights, "vgg": models.VGG16_Weights,
                   "squeeze": models.SqueezeNet1_1_Weights}[net].IMAGENET1K_V1
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
        if not cached.is_file():
            raise ZooError(f"LPIPS needs torchvision's {net} weights at {cached} (from {weights.url}); zoo does not "
                           "download them")
        _LPIPS[net] = lpips_package.LPIPS(net=net, verbose=False).eval()
    model = _LPIPS[net].to(prediction.device)
    with torch.no_grad():
        return model(prediction.float() * 2 - 1, target.float() * 2 - 1).flatten().float()


def light_field_psnr_ssim(prediction: Tensor, target: Tensor, angular_resolution: int,
                          data_range: float = 1.0) -> tuple[Tensor, Tensor]:
    """PSNR and SSIM per light field (B,) as BasicLFSR computes them: on each view of Y mosaics (B, 1, U*H, V*W),
    then averaged over the views. SSIM is skimage's `structural_similarity(gaussian_weights=True)`: our SSIM with
    the sample covariance (window variances times N / (N - 1), N = 121), i.e. K2 scaled by sqrt((N - 1) / N)."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    a = angular_resolution
    if prediction.shape != target.shape or prediction.ndim != 4 or prediction.shape[1] != 1 or \
            prediction.shape[-1] % a or prediction.shape[-2] % a:
        raise InputError(f"light-field metrics take two Y mosaics (B, 1, {a}*H, {a}*W) of one shape, got "
                         f"{tuple(prediction.shape)} and {tuple(target.shape)}")
    views = [
        prediction.double().unflatten(-2, (a, -1)).unflatten(-1, (a, -1)).permute(0, 2, 4, 1, 3, 5).flatten(0, 2)
        for prediction in (prediction, target)
    ]
    count = _SSIM_WINDOW**2
    view_psnr = psnr(*views, data_range=data_range).view(-1, a * a)
    if min(views[0].shape[-2:]) < _SSIM_WINDOW:
        raise InputError(f"SSIM's 11 x 11 window needs views of at least 11 x 11, got {tuple(views[0].shape[-2:])}")
    _, ssim_map = structural_similarity_index_measure(*views, data_range=data_range, reduction="none",
                                                      k2=0.03 * ((count - 1) / count) ** 0.5, return_full_image=True)
    half = _SSIM_WINDOW // 2
    view_ssim = ssim_map[..., half:-half, half:-half].flatten(1).mean(1).float().view(-1, a * a)
    return view_psnr.mean(1), view_ssim.mean(1)


# ---------------------------------------------------------------------------------------------------
# Fréchet distance


class _Features(nn.Module):
    """Lets torchmetrics' FID accumulate features that were already extracted."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: Tensor) -> Tensor:
        return features


def frechet_distance(features_a: Tensor, features_b: Tensor) -> float:
    """Fréchet distance between Gaussians fitted (mean, unbiased covariance, in float64) to two feature sets
    (N, D) and (M, D); N, M >= 2. FID is this distance on InceptionV3 pool features."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    if features_a.ndim != 2 or features_b.ndim != 2 or features_a.shape[1] != features_b.shape[1]:
        raise InputError(f"Fréchet distance takes two feature sets (N, D) and (M, D), got "
                         f"{tuple(features_a.shape)} and {tuple(features_b.shape)}")
    if len(features_a) < 2 or len(features_b) < 2:
        raise InputError("Fréchet distance needs at least two samples in each set")
    metric = FrechetInceptionDistance(feature=_Features(features_a.shape[1])).double()
    metric.update(features_a.double(), real=True)
    metric.update(features_b.double(), real=False)
    return float(metric.compute())


def frechet_distance_from_stats(mu_a: Tensor, sigma_a: Tensor, mu_b: Tensor, sigma_b: Tensor) -> float:
    """Fréchet distance between N(mu_a, sigma_a) and N(mu_b, sigma_b) (e.g. published FID reference statistics).

    Tr((S_a S_b)^(1/2)) is the sum of the square roots of the eigenvalues of S_a S_b, which are real and
    non-negative for covariance matrices (S_a S_b is similar to S_a^(1/2) S_b S_a^(1/2)).
    """
    mu_a, mu_b, sigma_a, sigma_b = (t.double() for t in (mu_a, mu_b, sigma_a, sigma_b))
    eigenvalues = torch.linalg.eigvals(sigma_a @ sigma_b).real.clamp_min(0)
    distance = (mu_a - mu_b).square().sum() + sigma_a.trace() + sigma_b.trace() - 2 * eigenvalues.sqrt().sum()
    return float(distance)


# ---------------------------------------------------------------------------------------------------
# CLIP score


def clip_score(image_features: Tensor, text_features: Tensor) -> float:
    """CLIP score of paired features (N, D): the mean over pairs of max(100 cos(image_i, text_i), 0)."""
    if image_features.shape != text_features.shape or image_features.ndim != 2:
        raise InputError(f"CLIP score takes paired features (N, D), got {tuple(image_features.shape)} and "
                         f"{tuple(text_features.shape)}")
    cosine = torch.nn.functional.cosine_similarity(image_features.double(), text_features.double(), dim=-1)
    return float((100 * cosine).clamp_min(0).mean())


class ClipFeatures:
    """Image and text features from a transformers CLIP model and its processor (`load_clip` builds one)."""

    def __init__(self, model: nn.Module, processor: Any):
        self.model = model.eval()
        self.processor = processor

    @torch.no_grad()
    def images(self, images: Sequence[Any]) -> Tensor:
        """Features (N, D) of images (PIL images, or uint8 / float tensors (3, H, W) as the processor takes)."""
        inputs = self.processor(images=list(images), return_tensors="pt")
        return _as_features(self.model.get_image_features(pixel_values=inputs["pixel_values"]))

    @torch.no_grad()
    def texts(self, texts: Sequence[str]) -> Tensor:
        inputs = self.processor(text=list(texts), return_tensors="pt", padding=True, truncation=True)
        return _as_features(self.model.get_text_features(input_ids=inputs["input_ids"],
                                                         attention_mask=inputs["attention_mask"]))

    def score(self, images: Sequence[Any], texts: Sequence[str]) -> float:
        return clip_score(self.images(images), self.texts(texts))


def _as_features(output: Any) -> Tensor:
    # transformers 5 returns a model output whose pooled projection is `pooler_output`; 4.x a tensor
    return output if isinstance(output, Tensor) else output.pooler_output


def load_clip(name_or_path: str | Path, download: bool = False) -> ClipFeatures:
    """A CLIP feature extractor from a local folder, or from a Hub repo (e.g. openai/clip-vit-large-patch14)
    through zoo.hub when `download=True` (nothing is downloaded otherwise)."""
    import transformers

    folder = Path(name_or_path).expanduser()
    if not folder.is_dir():
        if not download:
            raise ConfigError(f"{name_or_path} is not a local folder; pass download=True (`--download`) to fetch "
                              f"it from the Hub.")
        from zoo import hub

        folder = hub.download(str(name_or_path), allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model"])
    model = transformers.CLIPModel.from_pretrained(folder)
    processor = transformers.CLIPProcessor.from_pretrained(folder)
    return ClipFeatures(model, processor)


# ---------------------------------------------------------------------------------------------------
# VQA exact match and ANLS

_NUMBERS = {w: str(i) for i, w in enumerate(
    ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve"])}
_ARTICLES = {"a", "an", "the"}
_CONTRACTIONS = {
    "arent": "aren't", "cant": "can't", "couldnt": "couldn't", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hasnt": "hasn't", "havent": "haven't", "isnt": "isn't", "shouldnt": "shouldn't",
    "wasnt": "wasn't", "werent": "weren't", "wont": "won't", "wouldnt": "wouldn't", "youre": "you're",
    "thats": "that's", "whats": "what's", "wheres": "where's", "hes": "he's", "shes": "she's", "its": "it's",
}
_PUNCTUATION = re.compile(r"[;/\[\]\"{}()=+\\_\-><@`,?!*#%^&$~|:']")


def normalize_answer(answer: str) -> str:
    """A VQA answer as the VQA evaluation compares it: lower case, periods kept only inside numbers, other
    punctuation removed (a comma between digits is dropped, elsewhere it becomes a space), number words as
    digits, articles dropped, contractions restored, whitespace collapsed."""
    text = answer.lower().replace("\n", " ").replace("\t", " ").strip()
    text = re.sub(r"(?<=\d),(?=\d)", "", text)
    text = re.sub(r"(?<!\d)\.(?!\d)", "", text)
    text = _PUNCTUATION.sub(lambda m: "" if m.group() == "'" else " ", text)
    words = [_NUMBERS.get(w, w) for w in text.split()]
    words = [_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES]
    return " ".join(words)


def _references(reference: str | Sequence[str]) -> list[str]:
    return [reference] if isinstance(reference, str) else list(reference)


def vqa_exact_match(predictions: Sequence[str], references: Sequence[str | Sequence[str]]) -> float:
    """Fraction of predictions equal, after `normalize_answer`, to one of their reference answers."""
    _check_pairs(predictions, references)
    hits = [normalize_answer(p) in {normalize_answer(r) for r in _references(refs)}
            for p, refs in zip(predictions, references)]
    return sum(hits) / max(len(hits), 1)


def anls(predictions: Sequence[str], references: Sequence[str | Sequence[str]], threshold: float = 0.5) -> float:
    """Average normalised Levenshtein similarity (DocVQA): per question the best over its references of
    1 - d(p, r) / max(|p|, |r|) when that normalised distance is below `threshold`, else 0."""
    from torchmetrics.functional.text import edit_distance

    _check_pairs(predictions, references)
    scores = []
    for prediction, refs in zip(predictions, references):
        p = " ".join(prediction.strip().lower().split())
        best = 0.0
        for reference in _references(refs):
            r = " ".join(reference.strip().lower().split())
            longest = max(len(p), len(r))
            distance = 0.0 if longest == 0 else float(edit_distance([p], [r])) / longest
            best = max(best, 1.0 - distance if distance < threshold else 0.0)
        scores.append(best)
    return sum(scores) / max(len(scores), 1)


def _check_pairs(predictions: Sequence[str], references: Sequence[Any]) -> None:
    if len(predictions) != len(references):
        raise InputError(f"{len(predictions)} predictions but {len(references)} references")


__all__ = [
    "ClipFeatures", "anls", "clip_score", "frechet_distance", "frechet_distance_from_stats", "load_clip",
    "lpips", "normalize_answer", "psnr", "rgb_to_y", "ssim", "topk_accuracy", "vqa_exact_match",
]
