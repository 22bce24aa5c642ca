"""LLaVA-Mini's two training stages as `zoo train` configs on vlm-sft, with llava-mini-tiny on shapes-vqa."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

import zoo
from train.config import TrainConfig
from train.loop import fit
from zoo.vlm.llavamini_processing import LlavaMiniProcessor

CONFIGS = Path(__file__).resolve().parents[2] / "train" / "configs"
QUICK = dict(max_steps=6, batch_size=4, eval_samples=4, log_every=1, progress=False,
             data_options={"num_samples": 16, "cache": True}, lr=5e-3)


def _changed(before: dict, after: dict) -> set[str]:
    return {key.split(".")[0] for key, value in after.items() if not torch.equal(value, before[key])}


def test_stage1_then_stage2(tmp_path):
    torch.manual_seed(0)
    base = zoo.create("llava-mini-tiny").state_dict()  # what stage 1 starts from (the run's seed is 0 too)
    stage1 = TrainConfig.from_yaml(CONFIGS / "llavamini-stage1.yaml", output_dir=str(tmp_path / "s1"), **QUICK,
                                   task_options={"trainable": ["compressor.", "mm_projector.", "prefusion_layers."],
                                                 "max_new_tokens": 4})
    first = fit(stage1)
    after1 = zoo.from_pretrained(first.model_dir).state_dict()
    assert _changed(base, after1) == {"compressor", "mm_projector", "prefusion_layers"}  # the LLM stayed frozen
    assert first.losses[-1] < first.losses[0], first.losses
    assert set(first.metrics) >= {"exact_match", "exact_match/color"}

    stage2 = TrainConfig.from_yaml(CONFIGS / "llavamini-stage2.yaml", model=str(first.model_dir),
                                   output_dir=str(tmp_path / "s2"), **QUICK, task_options={"max_new_tokens": 4})
    second = fit(stage2)
    after2 = zoo.from_pretrained(second.model_dir).state_dict()
    # everything trains but the frozen tower and the detached text embeddings
    assert _changed(after1, after2) == {"compressor", "mm_projector", "prefusion_layers", "language_model", "lm_head"}
    assert torch.equal(after1["language_model.embed_tokens.weight"], after2["language_model.embed_tokens.weight"])
    assert second.losses[-1] < first.losses[0], (first.losses, second.losses)
    # the trained folder carries its tokenizer and CLIP settings: the processor reads them back
    processor = LlavaMiniProcessor.for_model(zoo.from_pretrained(second.model_dir).config, second.model_dir)
    assert processor.crop_size == 32 and "<|eot_id|>" in processor.tokenizer.get_vocab()


def test_lora_on_the_decoder_mlps(tmp_path):
    """The LoRA variant of stage 2: adapters on the LLM's and pre-fusion's MLPs only, the tower left alone."""
    config = TrainConfig.from_yaml(CONFIGS / "llavamini-stage2.yaml", model="llava-mini-tiny",
                                   output_dir=str(tmp_path / "lora"), **{**QUICK, "max_steps": 2},
                                   lora_rank=4, lora_targets=["gate_proj", "up_proj", "down_proj"],
                                   task_options={"max_new_tokens": 2})
    result = fit(config)
    adapters = load_file(result.model_dir / "adapter_model.safetensors")
    assert adapters and {key.split(".")[0] for key in adapters} == {"language_model", "prefusion_layers"}
