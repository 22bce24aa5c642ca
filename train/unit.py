"""UNIT's training framework (arXiv 2409.04095): the encoder learns to read text while a frozen copy of its starting
weights anchors its image features. Neither decoder nor the training code is released; this follows the paper.

    unit-pretrain   intra-scale pretraining: natural images at their usual resolution (paper: 448), documents at
                    4x the pixels (896)
    unit-finetune   inter-scale finetuning: the scales exchanged, high-resolution images (896) and low-resolution
                    documents (448)

Both train, besides the encoder (`zoo.backbones.unit.UnitEncoder`), two decoders used only in training:

- a language decoder, OPT (transformers' `OPTForCausalLM`; OPT-125M's widths by default) reading the encoder's tokens
  through a linear projection as a prefix, trained with next-token cross-entropy on the text in the image (OCR for
  documents, the caption for natural images): L_lan = -sum_t log P(y_t | y_<t, z);
- a vision decoder, a two-layer MLP (by default added to its input and starting at zero: zoo's choice) mapping the
  encoder's spatial tokens on natural images to the features of the frozen original encoder:
  L_vis = (1 - cos) + mu * L1, averaged over tokens.

The loss is `language_weight * L_lan + vision_weight * L_vis` (vision_weight 0: no vision decoder, the ablation that
forgets). Text is tokenised by characters (OPT's BPE vocabulary needs a download). Evaluation: OCR exact match and
character error rate of greedy decoding on documents, and feature retention, the mean cosine between the trained
and the original encoder's spatial tokens on natural images. The decoders and the frozen copy are saved next to
the encoder (`unit_training/`), so `zoo eval` scores a saved model and `unit-finetune` continues a pretraining run.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from zoo.errors import ConfigError
from zoo.registry import ModelEntry

from .tasks import IGNORE_INDEX, TASKS, LossTerm, ModelSource, Task, _sample_ids

EXTRAS_DIR = "unit_training"
# OPT-125M (facebook/opt-125m): the paper's language decoder.
OPT_125M = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "ffn_dim": 3072}


class CharTokenizer:
    """Characters -> ids: 0 pad, 1 begin, 2 end, then `alphabet`; characters outside it are dropped."""

    PAD, BOS, EOS = 0, 1, 2

    def __init__(self, alphabet: str = " abcdefghijklmnopqrstuvwxyz0123456789.,;:!?'-()"):
        self.alphabet = alphabet
        self.ids = {char: index + 3 for index, char in enumerate(alphabet)}

    def __len__(self) -> int:
        return len(self.alphabet) + 3

    def encode(self, text: str, max_length: int) -> list[int]:
        """BOS, the characters (at most max_length - 2), EOS."""
        ids = [self.ids[char] for char in text.lower() if char in self.ids][: max_length - 2]
        return [self.BOS, *ids, self.EOS]

    def decode(self, ids: Sequence[int]) -> str:
        chars = []
        for index in ids:
            if index == self.EOS:
                break
            if index >= 3:
                chars.append(self.alphabet[index - 3])
        return "".join(chars)


class LanguageDecoder(nn.Module):
    """Encoder tokens (B, N, D) projected to OPT's width and prefixed to the text: next-token logits of the text."""

    def __init__(self, encoder_dim: int, vocab_size: int, max_positions: int, hidden_size: int = 768,
                 num_hidden_layers: int = 12, num_attention_heads: int = 12, ffn_dim: int = 3072):
        super().__init__()
        from transformers import OPTConfig, OPTForCausalLM

        config = OPTConfig(
            vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_hidden_layers,
            num_attention_heads=num_attention_heads, ffn_dim=ffn_dim, max_position_embeddings=max_positions,
            word_embed_proj_dim=hidden_size, dropout=0.0, attention_dropout=0.0, pad_token_id=CharTokenizer.PAD,
            bos_token_id=CharTokenizer.BOS, eos_token_id=CharTokenizer.EOS,
        )
        self.projection = nn.Linear(encoder_dim, hidden_size)
        self.opt = OPTForCausalLM(config)

    def forward(self, visual: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """visual (B, N, D), text ids (B, T) with mask (B, T) -> logits (B, T, vocab) at the text positions."""
        prefix = self.projection(visual)
        embeds = torch.cat((prefix, self.opt.get_input_embeddings()(text)), dim=1)
        mask = torch.cat((text_mask.new_ones(prefix.shape[:2]), text_mask), dim=1)
        logits = self.opt(inputs_embeds=embeds, attention_mask=mask).logits
        return logits[:, prefix.shape[1]:]

    @torch.no_grad()
    def generate(self, visual: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        """Greedy ids (B, max_new_tokens) after BOS; rows that ended keep emitting EOS."""
        text = torch.full((visual.shape[0], 1), CharTokenizer.BOS, dtype=torch.long, device=visual.device)
        done = torch.zeros(visual.shape[0], dtype=torch.bool, device=visual.device)
        for _ in range(max_new_tokens):
            logits = self(visual, text, torch.ones_like(text))[:, -1]
            token = torch.where(done, CharTokenizer.EOS, logits.argmax(-1))
            text = torch.cat((text, token[:, None]), dim=1)
            done |= token == CharTokenizer.EOS
            if done.all():
                break
        return text[:, 1:]


class VisionDecoder(nn.Module):
    """A couple of MLP layers: the encoder's spatial tokens (B, N, D) -> the original encoder's features (B, N, D').

    With `residual` (D' = D) the MLP is added to its input and starts at zero, so the decoder starts as the identity
    and the reconstruction loss starts at 0 for the starting encoder: what it then penalises is the encoder's drift
    that the MLP cannot undo.
    """

    def __init__(self, dim: int, target_dim: int, hidden: int | None = None, residual: bool = True):
        super().__init__()
        if residual and dim != target_dim:
            raise ConfigError(f"a residual vision decoder maps {dim} features to {dim}, not {target_dim}.")
        hidden = hidden or 4 * dim
        self.residual = residual
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, target_dim)
        if residual:
            nn.init.zeros_(self.fc2.weight)
            nn.init.zeros_(self.fc2.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        out = self.fc2(self.act(self.fc1(tokens)))
        return tokens + out if self.residual else out


def feature_loss(prediction: torch.Tensor, target: torch.Tensor, mu: float) -> tuple[torch.Tensor, torch.Tensor,
                                                                                      torch.Tensor]:
    """UNIT's feature reconstruction: (1 - cosine) + mu * L1 per token, averaged; returns (loss, cosine term, L1)."""
    cosine = 1 - F.cosine_similarity(prediction.float(), target.float(), dim=-1).mean()
    l1 = (prediction.float() - target.float()).abs().mean()
    return cosine + mu * l1, cosine, l1


class UnitTask(Task):
    """UNIT's training of an encoder (see the module docstring); `image_size`/`document_size` are the stage's
    resolutions, the decoders' widths are OPT-125M's unless given."""

    name = "unit-pretrain"
    data_kind = "captions"
    default_data = "unit-mix"
    model_tasks = ("backbone",)
    eval_metric = "ocr_exact_match"
    stage_sizes = (448, 896)  # (natural images, documents)

    def __init__(self, extra_losses: Sequence[LossTerm | dict] = (), image_size: int | None = None,
                 document_size: int | None = None, language_weight: float = 1.0, vision_weight: float = 1.0,
                 mu: float = 1.0, max_text_length: int = 96, decoder: dict[str, int] | None = None,
                 vision_hidden: int | None = None, vision_residual: bool = True):
        super().__init__(extra_losses)
        self.image_size = image_size or self.stage_sizes[0]
        self.document_size = document_size or self.stage_sizes[1]
        if min(language_weight, vision_weight, mu) < 0 or language_weight == 0:
            raise ConfigError(f"Task '{self.name}' needs language_weight > 0 and vision_weight, mu >= 0; got "
                              f"{language_weight}, {vision_weight}, {mu}.")
        self.language_weight, self.vision_weight, self.mu = float(language_weight), float(vision_weight), float(mu)
        self.max_text_length = max_text_length
        unknown = set(decoder or {}) - set(OPT_125M)
        if unknown:
            raise ConfigError(f"decoder options {sorted(unknown)} are not OPT widths; use {', '.join(OPT_125M)}.")
        self.decoder_options = {**OPT_125M, **(decoder or {})}
        self.vision_hidden = vision_hidden
        self.vision_residual = bool(vision_residual)
        self.tokenizer = CharTokenizer()
        self.language_decoder: LanguageDecoder | None = None
        self.vision_decoder: VisionDecoder | None = None
        self.teacher: nn.Module | None = None

    # -- set-up ---------------------------------------------------------------------------------------

    def data_defaults(self, entry: ModelEntry | None, config: Any) -> dict[str, Any]:
        return {"image_size": self.image_size, "document_size": self.document_size}

    def setup(self, model: nn.Module, dataset: Any, source: ModelSource) -> None:
        from zoo.backbones.unit import UnitEncoder

        if not isinstance(model, UnitEncoder):
            raise ConfigError(f"Task '{self.name}' trains UNIT encoders (unit-*); '{source.name}' is a "
                              f"{type(model).__name__}.")
        patch = model.config.patch_size
        if self.image_size % patch or self.document_size % patch:
            raise ConfigError(f"image_size {self.image_size} and document_size {self.document_size} must be "
                              f"multiples of the patch size {patch}.")
        extras = source.folder / EXTRAS_DIR if source.folder is not None else None
        if extras is not None and extras.is_dir():
            self._load_extras(extras, model)
        else:
            self._build_extras(model)

    def _build_extras(self, model: nn.Module) -> None:
        dim = model.config.embed_dim
        tokens = model.config.num_prefix_tokens + (self.document_size // model.config.patch_size) ** 2
        positions = max(tokens, (self.image_size // model.config.patch_size) ** 2 + model.config.num_prefix_tokens)
        self.language_decoder = LanguageDecoder(dim, len(self.tokenizer), positions + self.max_text_length,
                                                **self.decoder_options)
        self.vision_decoder = (VisionDecoder(dim, dim, self.vision_hidden, self.vision_residual)
                               if self.vision_weight > 0 else None)
        self.teacher = copy.deepcopy(model).eval().requires_grad_(False)

    def _extras_config(self) -> dict[str, Any]:
        return {"decoder": self.decoder_options, "vision_hidden": self.vision_hidden,
                "vision_residual": self.vision_residual,
                "max_positions": self.language_decoder.opt.config.max_position_embeddings,
                "alphabet": self.tokenizer.alphabet, "vision_decoder": self.vision_decoder is not None}

    def save_extras(self, folder: Any) -> None:
        from zoo.hub import save_safetensors

        extras = Path(folder) / EXTRAS_DIR
        extras.mkdir(parents=True, exist_ok=True)
        (extras / "config.json").write_text(json.dumps(self._extras_config(), indent=2))
        modules = {"language_decoder": self.language_decoder, "vision_decoder": self.vision_decoder,
                   "teacher": self.teacher}
        for name, module in modules.items():
            if module is not None:
                state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}  # OPT ties its head
                save_safetensors(state, extras / f"{name}.safetensors")

    def _load_extras(self, extras: Path, model: nn.Module) -> None:
        from zoo.hub import load_state_dict

        saved = json.loads((extras / "config.json").read_text())
        self.tokenizer = CharTokenizer(saved["alphabet"])
        self.decoder_options = saved["decoder"]
        self.vision_hidden, self.vision_residual = saved["vision_hidden"], saved["vision_residual"]
        dim = model.config.embed_dim
        self.language_decoder = LanguageDecoder(dim, len(self.tokenizer), saved["max_positions"], **saved["decoder"])
        self.language_decoder.load_state_dict(load_state_dict(extras / "language_decoder.safetensors"))
        self.vision_decoder = None
        if self.vision_weight > 0:
            self.vision_decoder = VisionDecoder(dim, dim, self.vision_hidden, self.vision_residual)
            if saved["vision_decoder"]:
                self.vision_decoder.load_state_dict(load_state_dict(extras / "vision_decoder.safetensors"))
        self.teacher = copy.deepcopy(model)
        self.teacher.load_state_dict(load_state_dict(extras / "teacher.safetensors"))
        self.teacher.eval().requires_grad_(False)

    def trainable_modules(self) -> list[nn.Module]:
        return [m for m in (self.language_decoder, self.vision_decoder) if m is not None]

    # -- data ------------------------------------------------------------------------------------------

    def encode(self, sample: dict[str, Any]) -> dict[str, Any]:
        source = sample.get("source", "document")
        size = self.document_size if source == "document" else self.image_size
        image = sample["image"].float()[None] / 255
        if image.shape[-2:] != (size, size):
            image = F.interpolate(image, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        ids = self.tokenizer.encode(sample["caption"], self.max_text_length)
        return {"pixels": image[0].clamp(0, 1), "ids": ids, "source": source, "caption": sample["caption"]}

    def collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        batch: dict[str, Any] = {"sample_ids": _sample_ids(samples)}
        for source in ("document", "image"):
            group = [sample for sample in samples if sample["source"] == source]
            if not group:
                continue
            length = max(len(sample["ids"]) for sample in group)
            ids = torch.full((len(group), length), CharTokenizer.PAD, dtype=torch.long)
            for row, sample in enumerate(group):
                ids[row, : len(sample["ids"])] = torch.tensor(sample["ids"])
            batch[source] = {"pixels": torch.stack([sample["pixels"] for sample in group]), "ids": ids,
                             "captions": [sample["caption"] for sample in group]}
        return batch

    # -- loss ------------------------------------------------------------------------------------------

    def _place(self, device: torch.device) -> None:
        for module in (self.language_decoder, self.vision_decoder, self.teacher):
            if module is not None and next(module.parameters()).device != device:
                module.to(device)

    def forward(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, Any]:
        self._place(next(model.parameters()).device)
        outputs: dict[str, Any] = {}
        for source in ("document", "image"):
            if source not in batch:
                continue
            group = batch[source]
            tokens = model.forward_features(group["pixels"])
            ids = group["ids"]
            mask = (ids != CharTokenizer.PAD).long()
            outputs[source] = {"logits": self.language_decoder(tokens, ids[:, :-1], mask[:, :-1]),
                               "targets": ids[:, 1:].masked_fill(mask[:, 1:] == 0, IGNORE_INDEX)}
            if source == "image" and self.vision_decoder is not None:
                with torch.no_grad():
                    original = self.teacher.forward_features(group["pixels"])
                skip = model.config.num_prefix_tokens
                outputs[source]["reconstruction"] = self.vision_decoder(tokens[:, skip:])
                outputs[source]["original"] = original[:, skip:]
        return outputs

    def criterion(self, outputs: dict[str, Any], batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        logits = torch.cat([o["logits"].flatten(0, 1) for o in outputs.values()]).float()
        targets = torch.cat([o["targets"].flatten() for o in outputs.values()])
        language = F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX)
        loss, metrics = self.language_weight * language, {"language_loss": float(language.detach())}
        image = outputs.get("image", {})
        if "reconstruction" in image:
            vision, cosine, l1 = feature_loss(image["reconstruction"], image["original"], self.mu)
            loss = loss + self.vision_weight * vision
            metrics.update(vision_loss=float(vision.detach()), vision_cosine_loss=float(cosine.detach()),
                           vision_l1=float(l1.detach()))
        return loss, metrics

    # -- evaluation ------------------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, model: nn.Module, dataset: Any, batch_size: int = 32, device: Any = None) -> dict[str, float]:
        """OCR exact match and character error rate (greedy decoding, documents), feature retention (mean cosine of
        the trained and the original encoder's spatial tokens, natural images), and the language loss."""
        from torchmetrics.functional.text import char_error_rate

        predictions, references, retention, losses = [], [], [], []
        skip = model.config.num_prefix_tokens
        for batch in self.batches(dataset, batch_size, device):
            self._place(next(model.parameters()).device)
            losses.append(float(self.criterion(self.forward(model, batch), batch)[1]["language_loss"]))
            if "document" in batch:
                tokens = model.forward_features(batch["document"]["pixels"])
                ids = self.language_decoder.generate(tokens, self.max_text_length - 1)
                predictions += [self.tokenizer.decode(row) for row in ids.tolist()]
                references += batch["document"]["captions"]
            if "image" in batch:
                pixels = batch["image"]["pixels"]
                ours = model.forward_features(pixels)[:, skip:]
                original = self.teacher.forward_features(pixels)[:, skip:]
                retention.append(F.cosine_similarity(ours.float(), original.float(), dim=-1).mean(-1))
        metrics = {"language_loss": sum(losses) / max(len(losses), 1)}
        if references:
            metrics["ocr_exact_match"] = sum(p == r for p, r in zip(predictions, references)) / len(references)
            metrics["ocr_cer"] = float(char_error_rate(predictions, references))
        if retention:
            metrics["feature_retention"] = float(torch.cat(retention).mean())
        return metrics


class UnitFinetuneTask(UnitTask):
    """Inter-scale finetuning: high-resolution natural images, low-resolution documents."""

    name = "unit-finetune"
    stage_sizes = (896, 448)


TASKS.update({task.name: task for task in (UnitTask, UnitFinetuneTask)})


def pretrain_on_shapes(model: nn.Module, steps: int = 300, batch_size: int = 32, lr: float = 2e-3,
                       image_size: int = 32, seed: int = 0) -> float:
    """Train `model` (a UNIT encoder) with a linear probe on its class token on the embedded shapes classification
    task: the image-pretrained starting point UNIT assumes. Returns the probe's accuracy on 256 eval images."""
    from zoo.data import ShapesClassification

    torch.manual_seed(seed)
    train = ShapesClassification(steps * batch_size, image_size, seed, "train")
    held_out = ShapesClassification(256, image_size, seed, "eval")
    probe = nn.Linear(model.config.embed_dim, train.num_classes)
    optimizer = torch.optim.AdamW([*model.parameters(), *probe.parameters()], lr=lr, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=steps, pct_start=0.1)
    model.train()
    for step in range(steps):
        items = [train[step * batch_size + i] for i in range(batch_size)]
        pixels = torch.stack([item["image"] for item in items]).float() / 255
        labels = torch.tensor([item["label"] for item in items])
        loss = F.cross_entropy(probe(model(pixels)[0]), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    model.eval()
    with torch.no_grad():
        pixels = torch.stack([item["image"] for item in held_out]).float() / 255
        labels = torch.tensor([item["label"] for item in held_out])
        return float((probe(model(pixels)[0]).argmax(-1) == labels).float().mean())
