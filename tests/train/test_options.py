"""Training options: LoRA through peft (VLM and DiT; merged for export, adapters saved), bf16 autocast on CPU,
the warmup + cosine schedule, gradient checkpointing where a model supports it, and torch.compile (slow)."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file

import zoo
from train import TrainConfig, fit
from train.loop import lr_lambda


def run(tmp_path, model, task, steps, **settings):
    settings.setdefault("progress", False)
    settings.setdefault("eval_samples", 8)
    return fit(TrainConfig(model, task=task, max_steps=steps, output_dir=str(tmp_path / "run"), **settings))


@pytest.mark.parametrize("model, task, data", [
    ("smolvlm-tiny", "vlm-sft", {"num_samples": 32}),
    ("wan-tiny", "diffusion", {"num_samples": 32}),
])
def test_lora_trains_adapters_only_and_exports_merged(tmp_path, model, task, data):
    torch.manual_seed(0)
    base = zoo.create(model)  # what the run starts from (same seed)
    result = run(tmp_path, model, task, 6, batch_size=4, lr=1e-2, lora_rank=4, seed=0, data_options=data)
    exported = zoo.from_pretrained(result.model_dir)
    assert exported.state_dict().keys() == base.state_dict().keys()  # merged: plain keys, loads as the family
    changed = [k for k, v in exported.state_dict().items() if not torch.equal(v, base.state_dict()[k])]
    assert changed and all(any(t in k for t in ("q_proj", "k_proj", "v_proj", "o_proj")) for k in changed), changed
    adapters = load_file(result.model_dir / "adapter_model.safetensors")
    assert adapters and all("lora_" in key for key in adapters)
    trained = load_file(result.checkpoint / "training_weights.safetensors")
    assert any("lora_A" in key for key in trained)
    assert "LoRA" in (result.model_dir / "README.md").read_text()


def test_bf16_autocast_on_cpu(tmp_path):
    result = run(tmp_path, "smolvlm-tiny", "vlm-sft", 3, batch_size=4, mixed_precision="bf16",
                 data_options={"num_samples": 16})
    assert all(math.isfinite(loss) for loss in result.losses)
    assert next(result.model.parameters()).dtype == torch.float32  # master weights stay in float32


def test_warmup_then_cosine():
    config = TrainConfig("lowformer-tiny", task="classification", max_steps=110, warmup_steps=10, min_lr_ratio=0.1)
    factor = lr_lambda(config)
    assert factor(0) == pytest.approx(1 / 11) and factor(9) == pytest.approx(10 / 11)
    assert factor(10) == pytest.approx(1.0) and factor(60) == pytest.approx(0.55) and factor(110) == pytest.approx(0.1)
    constant = lr_lambda(config.replace(schedule="constant"))
    assert constant(5) < 1 and constant(100) == 1


def test_gradient_checkpointing_where_supported(tmp_path, monkeypatch):
    from zoo.backbones.lowformer import LowFormer

    calls = []
    monkeypatch.setattr(LowFormer, "set_grad_checkpointing", lambda self, enable=True: calls.append(enable),
                        raising=False)
    run(tmp_path, "lowformer-tiny", "classification", 1, batch_size=2, gradient_checkpointing=True,
        data_options={"num_samples": 4, "image_size": 32})
    assert calls == [True]


@pytest.mark.slow
def test_torch_compile(tmp_path):
    result = run(tmp_path, "lowformer-tiny", "classification", 3, batch_size=4, compile=True,
                 data_options={"num_samples": 8, "image_size": 32})
    assert "_orig_mod" not in next(iter(result.model.state_dict()))
    assert zoo.from_pretrained(result.model_dir) is not None
