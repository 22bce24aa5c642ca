"""`zoo train hulu-med-* --task vlm-sft`: supervised fine-tuning of Hulu-Med on image, video and volume questions.

The release has no training code (its GitHub issues #12, #20, #25, #29 ask for it). Each sample is a one-turn
conversation, the user's visual (an image, a video file or a 3D volume: NIfTI file or DICOM folder) and question,
then the assistant's answer; the Hulu-Med processor renders it with the chat template and the loss is the next-token
cross-entropy on the answer and its `<|im_end|>` only. Token reduction is active as at inference: the pruned
`<image>` tokens leave the sequence (and the labels with them) before the decoder runs, each row of a batch on its
own. JSONL lines: {"image" | "video" | "volume": path, "question": ..., "answer": ...}, paths relative to the file.

`VLMSFTTask` hands Hulu-Med models to this class when it sees their family (see `train.tasks.VLM_SFT_RECIPES`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from zoo.errors import ConfigError, InputError

from .tasks import IGNORE_INDEX, ModelSource, VLMSFTTask, _dtype_of, _has_tokenizer, _sample_ids

MEDIA = ("image", "video", "volume")
_BLOCK_TYPE = {"image": "image", "video": "video", "volume": "3d"}


class HuluMedSFTTask(VLMSFTTask):
    """vlm-sft for Hulu-Med (see the module docstring). Options as VLMSFTTask's: `processor` (a folder or Hub repo
    holding a Hulu-Med processor; default: the model's own, or zoo's byte tokenizer for a new model) and
    `max_new_tokens` for evaluation."""

    def data_defaults(self, entry: Any, config: Any) -> dict[str, Any]:
        return {"image_size": 8 * config.vision.patch_size}

    def model_overrides(self, entry: Any, dataset: Any, pretrained: bool) -> dict[str, Any]:
        if entry is None or pretrained or self.processor is not None or self.processor_source is not None:
            return {}
        from zoo.vlm.hulumed_processing import build_tokenizer

        tokenizer = build_tokenizer()
        return {"image_token_index": tokenizer.convert_tokens_to_ids("<image>"), "pad_token_id": tokenizer.pad_token_id}

    def setup(self, model: nn.Module, dataset: Any, source: ModelSource) -> None:
        from zoo.vlm.hulumed_processing import HuluMedProcessor, build_tokenizer

        config = model.config
        if self.processor is None:
            origin = self.processor_source
            if origin is None and source.folder is not None and _has_tokenizer(source.folder):
                origin = str(source.folder)
            if origin is None and source.hub_id is not None:
                origin = source.hub_id
            if origin is not None:
                self.processor = HuluMedProcessor.from_pretrained(origin)
            else:  # a new model: small budgets, so that a few CPU steps run in seconds
                self.processor = HuluMedProcessor(build_tokenizer(), patch_size=config.vision.patch_size, min_tokens=4,
                                                  max_tokens=256, max_frames=8, num_slices=8)
        tokenizer = self.processor.tokenizer
        if len(tokenizer) > config.text.vocab_size:
            raise ConfigError(f"The tokenizer has {len(tokenizer)} tokens but '{source.name}' has a vocabulary of "
                              f"{config.text.vocab_size}; build the model with a vocab_size of {len(tokenizer)} or more.")
        if self.processor.image_token_id != config.image_token_index:
            raise ConfigError(f"The tokenizer's <image> token is {self.processor.image_token_id} but '{source.name}' "
                              f"expects image_token_index={config.image_token_index}.")
        if self.processor.patch_size != config.vision.patch_size:
            raise ConfigError(f"The processor cuts {self.processor.patch_size}-px patches but '{source.name}''s "
                              f"encoder takes {config.vision.patch_size}-px ones.")
        end = tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.stop_ids = sorted({i for i in (end, tokenizer.eos_token_id) if i is not None and i >= 0})

    def _conversation(self, sample: dict[str, Any], answer: str | None) -> list[dict]:
        media = [key for key in MEDIA if key in sample]
        if len(media) != 1 or "question" not in sample:
            raise InputError(f"a Hulu-Med vlm-sft sample needs one of 'image', 'video', 'volume', and 'question' "
                             f"(and 'answer' to train); it has {sorted(sample)}")
        kind = _BLOCK_TYPE[media[0]]
        visual = sample[media[0]]
        if kind == "image" and isinstance(visual, torch.Tensor):
            visual = visual.permute(1, 2, 0).numpy()  # (3, H, W) uint8 -> (H, W, 3)
        conversation = [{"role": "user", "content": [{"type": kind, kind: visual},
                                                     {"type": "text", "text": str(sample["question"])}]}]
        if answer is not None:
            conversation.append({"role": "assistant", "content": answer})
        return conversation

    def encode(self, sample: dict[str, Any]) -> dict[str, Any]:
        """Token ids of the conversation, labels (-100 but on the answer), and the visual's patches."""
        if self.processor is None:
            raise ConfigError("call setup(model, ...) before encoding samples")
        if "answer" not in sample:
            raise InputError(f"a vlm-sft sample needs an 'answer'; it has {sorted(sample)}")
        inputs = self.processor(conversation=self._conversation(sample, str(sample["answer"])), return_labels=True)
        return {"input_ids": inputs["input_ids"][0], "labels": inputs["labels"][0],
                "pixel_values": inputs["pixel_values"], "grid_sizes": inputs["grid_sizes"],
                "merge_sizes": inputs["merge_sizes"], "modals": inputs["modals"]}

    def collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        """Right-padded ids, labels and attention mask; the visual items of all samples packed in order."""
        pad = self.processor.tokenizer.pad_token_id or 0
        length = max(len(sample["input_ids"]) for sample in samples)
        input_ids = torch.full((len(samples), length), pad, dtype=torch.long)
        labels = torch.full_like(input_ids, IGNORE_INDEX)
        attention_mask = torch.zeros_like(input_ids)
        for row, sample in enumerate(samples):
            n = len(sample["input_ids"])
            input_ids[row, :n], labels[row, :n], attention_mask[row, :n] = sample["input_ids"], sample["labels"], 1
        return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask,
                "pixel_values": torch.cat([s["pixel_values"] for s in samples]),
                "grid_sizes": torch.cat([s["grid_sizes"] for s in samples]),
                "merge_sizes": torch.cat([s["merge_sizes"] for s in samples]),
                "modals": [modal for s in samples for modal in s["modals"]], "sample_ids": _sample_ids(samples)}

    def forward(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        """Logits of the pruned sequence; `batch["labels"]` is replaced by the labels pruned the same way."""
        visuals = {"pixel_values": batch["pixel_values"].to(_dtype_of(model)), "grid_sizes": batch["grid_sizes"],
                   "merge_sizes": batch["merge_sizes"], "modals": batch["modals"]}
        unwrapped = getattr(model, "module", model)
        prepared = unwrapped.prepare_inputs(batch["input_ids"], batch["attention_mask"], batch["labels"], **visuals)
        batch["labels"] = prepared.labels
        return model(prepared.input_ids, prepared.attention_mask, **visuals)

    @torch.no_grad()
    def answer_samples(self, model: nn.Module, samples: list[dict[str, Any]],
                       max_new_tokens: int | None = None) -> list[str]:
        """Greedy answers (reasoning stripped) to each sample's question about its visual, one prompt at a time."""
        device = next(model.parameters()).device
        answers = []
        for sample in samples:
            inputs = self.processor(conversation=self._conversation(sample, None))
            inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
            inputs["pixel_values"] = inputs["pixel_values"].to(_dtype_of(model))
            new = model.generate(**inputs, max_new_tokens=max_new_tokens or self.max_new_tokens,
                                 eos_token_id=self.stop_ids, **self.generate_options())
            answers.append(self.processor.decode(new[0]))
        return answers

    def answer(self, model: nn.Module, images: list[Any], questions: list[str],
               max_new_tokens: int | None = None) -> list[str]:
        """Greedy answers to one question per image (as `zoo eval` asks them)."""
        samples = [{"image": image, "question": question} for image, question in zip(images, questions)]
        return self.answer_samples(model, samples, max_new_tokens)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, dataset: Any, batch_size: int = 64, device: Any = None) -> dict[str, float]:
        """Exact match of greedy answers, overall and per question type ("exact_match/<type>")."""
        was_training = model.training
        model.eval()
        correct: dict[str, int] = {}
        total: dict[str, int] = {}
        samples = [dataset[i] for i in range(len(dataset))]
        for sample, answer in zip(samples, self.answer_samples(model, samples)):
            for key in ("all", sample.get("type")):
                if key is not None:
                    total[key] = total.get(key, 0) + 1
                    correct[key] = correct.get(key, 0) + (answer == str(sample["answer"]).strip())
        model.train(was_training)
        metrics = {"exact_match": correct.get("all", 0) / max(total.get("all", 0), 1)}
        metrics.update({f"exact_match/{key}": correct[key] / total[key] for key in sorted(total) if key != "all"})
        return metrics
