"""The training loop: one code path for every task, on one CPU or GPU and under `accelerate launch` (DDP; FSDP2
applied by the loop itself, see `train.distributed`; DeepSpeed through accelerate's plugin, untested).

    from train import TrainConfig, fit
    result = fit(TrainConfig("lowformer-tiny", task="classification", max_steps=200, output_dir="runs/lf"))

The loss of an optimizer step is the exact mean over every item of the global batch: micro-batches (gradient
accumulation) and processes are weighted by their item counts, so 1 process with batch 2b and 2 processes with
batch b follow the same curve. Gradients are synchronised once per step (no_sync on the other micro-batches).
Everything that decides the next step (weights, optimizer, scheduler, grad scaler, EMA, generator states and the
data position) is in each checkpoint, so a resumed run ends bit-identical (on CPU) to an uninterrupted one, with the
same metrics.jsonl records (bar wall-clock times).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zoo.errors import CheckpointError, ConfigError, InputError, ZooError

from . import checkpoint as ckpt
from . import distributed
from .config import TrainConfig
from .curves import append_jsonl, plot_curves, read_jsonl, write_jsonl
from .data import EncodedDataset, StreamSampler
from .push import HubPusher, PushResult
from .tasks import LossTerm, ModelSource, Task, get_task, to_device

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
ENGINE_DIR = "engine"  # sharded weights and optimizer: torch.distributed.checkpoint (FSDP), accelerate (DeepSpeed)
CURVE_FILE = "training_curve.png"
CONFIG_FILE = "train_config.yaml"
MODEL_DIR = "model"
LOGS_DIR = "logs"  # where trackers that write files (tensorboard) put them
TRACKER_PROJECT = "zoo"


@dataclasses.dataclass
class TrainResult:
    """What a run produced. `model` is the deployed model (EMA weights with EMA, LoRA merged with LoRA), `metrics`
    the final evaluation, `history` the metrics.jsonl records, `push` the final push (None without push_to_hub)."""

    config: TrainConfig
    output_dir: Path
    model_dir: Path
    checkpoint: Path | None
    step: int
    model: nn.Module
    task: Task
    metrics: dict[str, float]
    history: list[dict[str, Any]]
    curve: Path
    resumed_from: Path | None = None
    push: PushResult | None = None
    push_failures: list[PushResult] = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    @property
    def losses(self) -> list[float]:
        return [r["loss"] for r in self.history if "loss" in r and "eval" not in r]


class LogWindow:
    """Sums of the per-step metrics since the last metrics.jsonl record. Checkpoints carry it, so the first record
    after a resume averages the same steps as the uninterrupted run's."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, float] = {}
        self.steps = 0
        self.started = time.perf_counter()

    def add(self, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
        self.steps += 1

    def means(self) -> dict[str, float]:
        return {key: value / self.steps for key, value in self.sums.items()}

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started

    def state_dict(self) -> dict[str, Any]:
        return {"sums": dict(self.sums), "steps": self.steps, "seconds": self.seconds}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sums, self.steps = dict(state["sums"]), state["steps"]
        self.started = time.perf_counter() - state["seconds"]


@dataclasses.dataclass
class StepInfo:
    """Passed to callbacks after every optimizer step."""

    step: int
    loss: float
    trainer: Trainer


def lr_lambda(config: TrainConfig) -> Callable[[int], float]:
    """Linear warmup over `warmup_steps`, then cosine / linear decay to `min_lr_ratio` at `max_steps`, or constant."""
    warmup, total, floor = config.warmup_steps, config.max_steps, config.min_lr_ratio

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if config.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        decay = 0.5 * (1 + math.cos(math.pi * progress)) if config.schedule == "cosine" else 1 - progress
        return floor + (1 - floor) * decay

    return factor


class Trainer:
    """Builds everything a run needs from a TrainConfig (checking the task, the data and the model fit before any
    training step) and runs it with `fit()`.

    `extra_losses` add LossTerms to the task's loss (besides `config.extra_losses`); `callbacks` are called with a
    `StepInfo` after every optimizer step; `task` replaces the task built from `config.task` (a configured Task
    instance, e.g. a DiffusionTask with a real VAE).
    """

    def __init__(self, config: TrainConfig, extra_losses: Sequence[LossTerm] = (),
                 callbacks: Sequence[Callable[[StepInfo], None]] = (), task: Task | None = None):
        config.validate()
        self.config = config
        self.callbacks = list(callbacks)
        self.output_dir = Path(config.output_dir).expanduser()
        self.accelerator = self._make_accelerator()
        from accelerate.utils import set_seed

        set_seed(config.seed)  # Python, NumPy and torch: the model's initialisation is the seed's
        self.task = task if task is not None else get_task(
            config.task, extra_losses=[*config.extra_losses, *extra_losses], **config.task_options
        )
        if task is not None:
            self.task.extra_losses.extend(extra_losses)
        self.resume_from = self._find_resume_checkpoint()
        self.source, entry_config = self._resolve_model_source()
        self.train_data, self.eval_data = self._load_data(entry_config)
        self.model = self._build_model()
        self.model_class = type(self.model)  # FSDP replaces the class of the module it shards
        self.task.setup(self.model, self.train_data, self.source)
        self._dry_run()
        self._apply_training_options()

    # -- set-up -----------------------------------------------------------------------------------------

    def _make_accelerator(self):
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration

        if self.config.mixed_precision == "fp16" and not torch.cuda.is_available():
            raise ConfigError("mixed_precision fp16 needs a CUDA GPU; use bf16 or no on CPU.")
        _check_trackers_installed(self.config.report_to)
        # Processes started by `accelerate launch --multi_gpu` / torchrun on a machine without an accelerator train
        # on CPU with gloo (accelerate only does that when told cpu=True).
        launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
        cpu_only = not (torch.cuda.is_available() or _has_other_accelerator())
        if not launched:
            _forget_accelerator_settings(self.config.mixed_precision)
        if launched and cpu_only and os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
            raise ConfigError("DeepSpeed does not run on CPU processes through accelerate (it would ignore it and "
                              "train with DDP); shard with FSDP instead: accelerate launch --config_file "
                              "train/configs/fsdp.yaml ...")
        self.fsdp = distributed.fsdp_settings() if launched else None
        if self.fsdp is not None and self.config.mixed_precision == "fp16":
            raise ConfigError("mixed_precision fp16 is not supported under FSDP (it needs a sharded grad scaler); "
                              "use bf16.")
        with distributed.accelerate_without_fsdp() if self.fsdp is not None else contextlib.nullcontext():
            return Accelerator(mixed_precision=self.config.mixed_precision, cpu=launched and cpu_only,
                               kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False)],
                               log_with=list(self.config.report_to) or None,
                               project_config=ProjectConfiguration(project_dir=str(self.output_dir),
                                                                   logging_dir=str(self.output_dir / LOGS_DIR)))

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def _find_resume_checkpoint(self) -> Path | None:
        existing = ckpt.list_checkpoints(self.output_dir)
        if not self.config.resume:
            if existing:
                raise ConfigError(
                    f"{self.output_dir} already holds checkpoints ({existing[-1][1].name}); pass --resume to continue "
                    f"that run, or choose another --output-dir."
                )
            return None
        found, broken = None, []
        for _, folder in reversed(existing):  # the newest one that reads back whole
            try:
                saved, self._resume_state = ckpt.load_resume_state(folder)
            except CheckpointError as error:
                broken.append(f"{folder.name}: {str(error).rstrip('.')}")
                continue
            found = folder
            break
        if broken and found is None:
            raise CheckpointError(
                f"Cannot resume: no checkpoint in {self.output_dir} can be used; {'; '.join(broken)}. Delete those "
                f"checkpoint folders and run again to train from step 0, or start a new run in another --output-dir."
            )
        if broken:
            logger.warning("--resume: skipping %s; resuming from %s", "; ".join(broken), found.name)
        if found is None:
            logger.warning("--resume: no checkpoint in %s; starting from step 0", self.output_dir)
            return None
        self._resumed_metrics = saved.get("metrics") or {}  # the evaluation at its step, if there was one
        mismatches = self.config.resume_mismatches(saved.get("config", {}))
        if mismatches:
            raise ConfigError(
                f"Cannot resume from {found}: these settings differ from the run that wrote it, so the result would "
                f"not be that run's: {'; '.join(mismatches)}. Use another --output-dir for a new run."
            )
        if bool(saved.get("sharded", False)) != self.sharded:
            kinds = ("sharded (FSDP / DeepSpeed)", "unsharded")
            saved_kind, this_kind = (kinds if saved.get("sharded") else kinds[::-1])
            raise ConfigError(f"{found} was written by a {saved_kind} run and this run is {this_kind}; resume it "
                              f"with the same accelerate launch settings.")
        if saved.get("num_processes", 1) != self.accelerator.num_processes:
            raise ConfigError(
                f"{found} was written by {saved.get('num_processes', 1)} process(es), this run has "
                f"{self.accelerator.num_processes}: the global batch and the data stream would change. Resume with "
                f"the same number of processes."
            )
        return found

    def _resolve_model_source(self) -> tuple[ModelSource, Any]:
        from zoo.hub import folder_config
        from zoo.registry import get_entry, get_family

        name = self.config.model
        folder = Path(name).expanduser()
        if folder.is_dir():
            values, _ = folder_config(folder)
            family_name = values.get("zoo_family")
            if family_name is None:
                raise ConfigError(f"{folder} is not a zoo model folder (no zoo_family in config.json); convert it with "
                                  f"`zoo convert` first.")
            family = get_family(family_name)
            self.task.check_entry(None, family.name)
            config = family.config_cls.from_dict({k: v for k, v in values.items() if not k.startswith("zoo_")})
            return ModelSource(name, None, folder, None, pretrained=True), config
        if self.config.pretrained and self.config.model_options:
            raise ConfigError("model_options change the architecture, so they cannot apply to pretrained weights.")
        entry = get_entry(name)
        self.task.check_entry(entry, entry.family)
        hub_id = entry.source(None).hub_id if self.config.pretrained else None
        return ModelSource(name, entry, None, hub_id, pretrained=self.config.pretrained), \
            entry.config.replace(**self.config.model_options)

    def _load_data(self, entry_config: Any):
        from torch.utils.data import Subset

        from zoo.data import load_dataset

        name = self.config.data or self.task.default_data
        options = {**self.task.data_defaults(self.source.entry, entry_config), **self.config.data_options}
        options.setdefault("eval_samples", self.config.eval_samples)
        options.pop("cache", None)  # the loop's in-memory cache of encoded samples, not a dataset option
        train = load_dataset(name, self.task.data_kind, "train", seed=self.config.seed, **options)
        if len(train) == 0:
            raise InputError(f"Dataset '{name}' is empty.")
        evaluation = load_dataset(name, self.task.data_kind, "eval", seed=self.config.seed, **options)
        if evaluation is not None and len(evaluation) > self.config.eval_samples:
            evaluation = Subset(evaluation, range(self.config.eval_samples))
        return train, evaluation

    def _build_model(self) -> nn.Module:
        import zoo

        source = self.source
        if source.folder is not None:
            model = zoo.from_pretrained(source.folder, dtype=torch.float32)
        else:
            overrides = {**self.task.model_overrides(source.entry, self.train_data, source.pretrained),
                         **self.config.model_options}
            model = zoo.create(source.name, pretrained=source.pretrained, **overrides)
        return model.float().train()

    def _dry_run(self) -> None:
        """One forward on two samples before training, so a model that does not fit the task or the data fails
        with a clear message before any step (generator states are restored: the run is unchanged)."""
        rng = torch.get_rng_state()
        was_training = self.model.training
        self.model.eval()
        try:
            count = min(2, len(self.train_data))
            samples = [{**self.task.encode(self.train_data[i]), "sample_id": i} for i in range(count)]
            with torch.no_grad():
                self.task.loss(self.model, self.task.collate(samples))
        except ZooError:
            raise
        except Exception as error:  # the model's own error, reworded with what was being tried
            raise ConfigError(
                f"'{self.source.name}' cannot be trained with task '{self.task.name}' on "
                f"'{self.config.data or self.task.default_data}': {type(error).__name__}: {error}"
            ) from error
        finally:
            torch.set_rng_state(rng)
            self.model.train(was_training)

    @property
    def sharded(self) -> bool:
        """Under FSDP or DeepSpeed the weights and optimizer are sharded: checkpoints hold the sharded state, and
        evaluation and export use weights gathered on the main process."""
        from accelerate.utils import DistributedType

        return self.fsdp is not None or self.accelerator.distributed_type == DistributedType.DEEPSPEED

    def _apply_training_options(self) -> None:
        from .lora import apply_lora, freeze_all_but

        config = self.config
        if self.sharded and (config.lora_rank or config.ema_decay is not None):
            raise ConfigError("LoRA and EMA are not supported under FSDP / DeepSpeed yet; use DDP for them.")
        if config.lora_rank:
            apply_lora(self.model, config.lora_rank, config.lora_alpha, config.lora_dropout, config.lora_targets,
                       config.trainable)
        elif config.trainable:
            freeze_all_but(self.model, config.trainable)
        if config.gradient_checkpointing:
            if hasattr(self.model, "set_grad_checkpointing"):
                self.model.set_grad_checkpointing(True)
            elif hasattr(self.model, "gradient_checkpointing_enable"):
                self.model.gradient_checkpointing_enable()
            else:
                raise ConfigError(f"{type(self.model).__name__} does not support gradient checkpointing "
                                  f"(it has no set_grad_checkpointing).")
        self.ema = None
        if config.ema_decay is not None:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            self.ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(config.ema_decay),
                                     use_buffers=True)
        if config.compile:
            self.model.compile()  # in place: the state dict keys do not change

    # -- the run ----------------------------------------------------------------------------------------

    def fit(self) -> TrainResult:
        """Train, evaluate, save and push; the experiment trackers of `report_to` get every metrics record."""
        hyperparameters = {key: value if isinstance(value, (bool, int, float, str)) else json.dumps(value)
                           for key, value in self.config.to_dict().items() if value is not None}
        self.accelerator.init_trackers(TRACKER_PROJECT, config=hyperparameters)
        try:
            return self._train()
        finally:  # what end_training does, without ending the process group (a script may train again)
            for tracker in self.accelerator.trackers:
                tracker.finish()

    def _train(self) -> TrainResult:
        from accelerate.utils import DistributedType

        config, accelerator, task = self.config, self.accelerator, self.task
        started = time.perf_counter()
        model = self.model
        if self.fsdp is not None:  # before the optimizer: sharding replaces the parameters
            model = distributed.shard_model(model, accelerator.device, self.fsdp, config.mixed_precision)
        for module in task.trainable_modules():
            module.to(accelerator.device)
        parameters = [p for m in (model, *task.trainable_modules()) for p in m.parameters() if p.requires_grad]
        decay = [p for p in parameters if p.ndim >= 2]
        no_decay = [p for p in parameters if p.ndim < 2]
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=config.lr, betas=config.betas,
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config))
        start_step = 0
        if self.resume_from is not None:
            start_step = self._load_checkpoint(self.resume_from, model, optimizer, scheduler)
        if self.ema is not None:
            self.ema.to(accelerator.device)
        if accelerator.distributed_type == DistributedType.DEEPSPEED:  # no data loader goes through prepare
            accelerator.state.deepspeed_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = config.batch_size
        if self.fsdp is None:
            model, optimizer = accelerator.prepare(model, optimizer)
        self.prepared_model = model
        if self.resume_from is not None and self.sharded:  # the sharded weights and optimizer
            if self.fsdp is not None:
                distributed.load_sharded(self.resume_from / ENGINE_DIR, model, optimizer)
            else:
                accelerator.load_state(str(self.resume_from / ENGINE_DIR))
        if self.resume_from is not None and accelerator.scaler is not None and self._resume_state["scaler"]:
            accelerator.scaler.load_state_dict(self._resume_state["scaler"])
        self.window = LogWindow()
        if self.resume_from is not None and self._resume_state.get("log_window"):
            self.window.load_state_dict(self._resume_state["log_window"])
        self._resume_state = None  # loaded: free the optimizer state

        pusher = HubPusher(config.push_to_hub, config.hub_private, config.hub_retries) \
            if config.push_to_hub and self.is_main else None
        self.output_dir.mkdir(parents=True, exist_ok=True)
        metrics_path = self.output_dir / METRICS_FILE
        if self.is_main:
            ckpt.remove_incomplete(self.output_dir)
            # the log as it was when the checkpoint was written: later records are written again, none twice
            history = read_jsonl(self.resume_from / METRICS_FILE) if self.resume_from is not None else []
            write_jsonl(metrics_path, history)
            config.to_yaml(self.output_dir / CONFIG_FILE)
        else:
            history = []
        if config.eval_every and start_step == 0:
            self._evaluate(0, history, metrics_path)  # the starting point of the evaluation curve

        accumulation = config.gradient_accumulation_steps
        sampler = StreamSampler(len(self.train_data), config.batch_size, config.seed, accelerator.num_processes,
                                accelerator.process_index, start=start_step * accumulation)
        loader = torch.utils.data.DataLoader(
            EncodedDataset(self.train_data, task.encode, cache=bool(config.data_options.get("cache", False))),
            batch_sampler=sampler, collate_fn=task.collate, num_workers=config.num_workers,
        )
        batches = iter(loader)
        progress = self._progress_bar(start_step)
        global_batch = config.batch_size * accelerator.num_processes * accumulation
        window = self.window
        last_checkpoint = self.resume_from
        final_metrics: dict[str, float] = {}
        step = start_step
        model.train()
        while step < config.max_steps:
            micro_batches = [to_device(next(batches), accelerator.device) for _ in range(accumulation)]
            counts = [task.num_items(batch) for batch in micro_batches]
            total_items = float(accelerator.reduce(torch.tensor(float(sum(counts)), device=accelerator.device),
                                                   "sum"))
            loss_sum = torch.zeros((), device=accelerator.device)
            step_metrics: dict[str, float] = {}
            for index, (batch, count) in enumerate(zip(micro_batches, counts)):
                sync = index == accumulation - 1
                with contextlib.nullcontext() if sync else self._no_sync(model):
                    output = task.loss(model, batch)
                    weight = count * accelerator.num_processes / max(total_items, 1.0)
                    accelerator.backward(output.loss * weight)
                loss_sum += output.loss.detach().float() * count
                for key, value in output.metrics.items():
                    step_metrics[key] = step_metrics.get(key, 0.0) + value * count / max(sum(counts), 1)
            grad_norm = None
            if config.max_grad_norm is not None and self.fsdp is not None:
                grad_norm = distributed.clip_grad_norm_(parameters, config.max_grad_norm)
            elif config.max_grad_norm is not None:
                grad_norm = accelerator.clip_grad_norm_(parameters, config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if self.ema is not None:
                self.ema.update_parameters(accelerator.unwrap_model(model))
            step += 1

            step_loss = float(accelerator.reduce(loss_sum, "sum")) / max(total_items, 1.0)
            if not math.isfinite(step_loss):
                raise ZooError(f"The loss became {step_loss} at step {step}; lower --lr or enable clipping "
                               f"(max_grad_norm). The last checkpoint is {last_checkpoint or 'none'}.")
            window.add({"loss": step_loss, **({} if grad_norm is None else {"grad_norm": float(grad_norm)}),
                        **step_metrics})
            samples_per_second = global_batch * window.steps / window.seconds
            if progress is not None:
                progress.set_postfix(loss=f"{step_loss:.4f}", samples_s=f"{samples_per_second:.1f}", refresh=False)
                progress.update(1)

            if step % config.log_every == 0 or step == config.max_steps:
                record = {"step": step, **window.means(), "lr": scheduler.get_last_lr()[0],
                          "samples_per_second": samples_per_second,
                          "epoch": step * global_batch / len(self.train_data), "time": time.time()}
                if self.is_main:
                    self._record(record, history, metrics_path)
                window.reset()
            if config.eval_every and step % config.eval_every == 0 and step != config.max_steps:
                self._evaluate(step, history, metrics_path)
            if config.save_every and step % config.save_every == 0 or step == config.max_steps:
                if step == config.max_steps:
                    final_metrics = self._evaluate(step, history, metrics_path)
                last_checkpoint = self._save_checkpoint(step, model, optimizer, scheduler, history, pusher)
            for callback in self.callbacks:
                callback(StepInfo(step, step_loss, self))
        if progress is not None:
            progress.close()
        if start_step >= config.max_steps:  # resumed a finished run: nothing to train
            final_metrics = self._resumed_metrics or self._evaluate(step, history, metrics_path)

        model_dir = self.output_dir / MODEL_DIR
        curve = self.output_dir / CURVE_FILE
        push_result = None
        deployed = None
        if self.is_main:
            if last_checkpoint is not None and last_checkpoint.name == ckpt.checkpoint_path(self.output_dir, step).name:
                _link_model_files(last_checkpoint, model_dir)  # the final checkpoint holds the model and the curve
            else:
                self._plot(history)
                self._export(self.deployable_model(), model_dir, final_metrics, step)
            if self.sharded:
                import zoo

                deployed = zoo.from_pretrained(model_dir)  # the gathered weights
        if not self.sharded:
            deployed = self.deployable_model()
        if pusher is not None:  # the main process's
            pusher.wait()
            push_result = pusher.push(model_dir, f"End of training: step {step}")
        accelerator.wait_for_everyone()
        return TrainResult(
            config, self.output_dir, model_dir, last_checkpoint, step, deployed, task, final_metrics, history, curve,
            resumed_from=self.resume_from, push=push_result, push_failures=pusher.failures if pusher else [],
            seconds=time.perf_counter() - started,
        )

    def _progress_bar(self, start_step: int):
        if not (self.config.progress and self.is_main):
            return None
        from tqdm.auto import tqdm

        return tqdm(total=self.config.max_steps, initial=start_step, desc=f"train {self.task.name}", unit="step",
                    file=sys.stderr, dynamic_ncols=True, mininterval=0.1 if sys.stderr.isatty() else 15.0)

    def _evaluate(self, step: int, history: list[dict], metrics_path: Path) -> dict[str, float]:
        metrics: dict[str, float] = {}
        full_weights = None
        if self.sharded and self.eval_data is not None:  # gather the shards (every process takes part)
            full_weights = self.gather_weights()
        if self.is_main and self.eval_data is not None:
            if full_weights is not None:
                model = self.deployable_model(full_weights).to(self.accelerator.device)
            else:
                model = self.ema.module if self.ema is not None else self.accelerator.unwrap_model(self.model)
            was_training = model.training
            model.eval()
            metrics = self.task.evaluate(model, self.eval_data, device=self.accelerator.device)
            model.train(was_training)
            self._record({"step": step, "eval": metrics, "time": time.time()}, history, metrics_path)
        self.accelerator.wait_for_everyone()
        return metrics

    def _record(self, record: dict[str, Any], history: list[dict], metrics_path: Path) -> None:
        """Add a metrics record (main process) to the history, metrics.jsonl and the experiment trackers, which get
        `train/NAME` and `eval/NAME` values (the names of transformers' Trainer)."""
        history.append(record)
        append_jsonl(metrics_path, record)
        if "eval" in record:
            values = {f"eval/{key}": value for key, value in record["eval"].items()}
        else:
            values = {f"train/{key}": value for key, value in record.items() if key not in ("step", "time")}
        self.accelerator.log(values, step=record["step"])

    # -- checkpoints ------------------------------------------------------------------------------------

    def gather_weights(self) -> dict[str, torch.Tensor]:
        """The trained model's full state dict on the main process, gathered from the shards of a sharded run (every
        process must call it; the others get an empty or partial dict)."""
        if self.fsdp is not None:
            return distributed.gather_weights(self.prepared_model)
        return self.accelerator.get_state_dict(self.prepared_model)

    def _no_sync(self, model: nn.Module):
        return distributed.no_gradient_sync(model) if self.fsdp is not None else self.accelerator.no_sync(model)

    def deployable_model(self, full_weights: dict[str, torch.Tensor] | None = None) -> nn.Module:
        """The model to save and serve: the EMA weights with EMA, LoRA merged into the weights with LoRA; under FSDP /
        DeepSpeed a fresh copy holding the gathered `full_weights`."""
        from .lora import has_lora, merged_copy

        if full_weights is not None:
            from zoo.hub import load_weights

            with torch.device("meta"):
                fresh = self.model_class(self.model.config)
            fresh = load_weights(fresh, {k: v.detach().cpu() for k, v in full_weights.items()})
            fresh.zoo_name, fresh.zoo_tag = self.model.zoo_name, self.model.zoo_tag
            if hasattr(fresh, "pretrained_cfg"):
                fresh.pretrained_cfg = self.model.pretrained_cfg
            return fresh
        model = self.ema.module if self.ema is not None else self.accelerator.unwrap_model(self.model)
        if has_lora(model):
            model = merged_copy(model)
        return model

    def _training_weights(self) -> dict[str, torch.Tensor] | None:
        """The trained module's state dict when the deployed weights differ from it (EMA, LoRA)."""
        if self.ema is None and not self.config.lora_rank:
            return None
        return self.gather_weights()

    def _card_data(self, metrics: dict[str, float], step: int) -> dict[str, Any]:
        config = self.config
        settings = {
            "task": config.task, "data": config.data or self.task.default_data, "steps": step,
            "global batch": config.batch_size * self.accelerator.num_processes * config.gradient_accumulation_steps,
            "learning rate": f"{config.lr:g} ({config.schedule}, {config.warmup_steps} warmup steps)",
            "precision": config.mixed_precision, "seed": config.seed,
        }
        if config.ema_decay:
            settings["EMA decay"] = config.ema_decay
        if config.lora_rank:
            settings["LoRA"] = f"rank {config.lora_rank} on {', '.join(config.lora_targets)} (merged)"
        if self.source.name:
            settings["started from"] = self.source.name + (" (published weights)" if self.source.pretrained else "")
        rows = "\n".join(f"| {key} | {value} |" for key, value in settings.items())
        losses = [r["loss"] for r in read_jsonl(self.output_dir / METRICS_FILE) if "loss" in r and "eval" not in r]
        loss_line = (f"Training loss: {losses[0]:.4g} at the first log, {losses[-1]:.4g} at the last.\n\n"
                     if losses else "")
        training = (
            f"Trained with `zoo train` (the full config is in `{CONFIG_FILE}`).\n\n"
            f"| Setting | Value |\n|---|---|\n{rows}\n\n{loss_line}"
            f"![Training curve]({CURVE_FILE})"
        )
        return {"results": {k: round(v, 4) for k, v in metrics.items()}, "training": training,
                "datasets": [config.data or self.task.default_data]}

    def _export(self, model: nn.Module, folder: Path, metrics: dict[str, float], step: int) -> None:
        import shutil

        from .lora import adapter_state_dict, has_lora

        model.save_pretrained(folder, card_data=self._card_data(metrics, step))
        self.task.save_extras(folder)
        trained = self.accelerator.unwrap_model(self.model)
        if has_lora(trained):
            from zoo.hub import save_safetensors

            adapter = {k: v.detach().contiguous() for k, v in adapter_state_dict(trained).items()}
            save_safetensors(adapter, folder / "adapter_model.safetensors")
        for name in (METRICS_FILE, CURVE_FILE):
            if (self.output_dir / name).is_file():
                shutil.copyfile(self.output_dir / name, folder / name)
        self.config.to_yaml(folder / CONFIG_FILE)

    def _plot(self, history: list[dict[str, Any]]) -> Path:
        return plot_curves(history, self.output_dir / CURVE_FILE, title=f"{self.source.name} · {self.task.name}")

    def _save_checkpoint(self, step, model, optimizer, scheduler, history, pusher) -> Path:
        accelerator = self.accelerator
        tmp = ckpt.begin(self.output_dir, step) if self.is_main else ckpt.temporary_path(self.output_dir, step)
        accelerator.wait_for_everyone()
        ckpt.save_torch(ckpt.rng_state(), tmp / f"rng_state_{accelerator.process_index}.pt")
        training_weights = self._training_weights()
        full_weights = None
        if self.sharded:  # collective: every process takes part
            full_weights = self.gather_weights()
            if self.fsdp is not None:
                distributed.save_sharded(tmp / ENGINE_DIR, model, optimizer)
            else:
                accelerator.save_state(str(tmp / ENGINE_DIR))
        accelerator.wait_for_everyone()
        final = ckpt.checkpoint_path(self.output_dir, step)
        if self.is_main:
            metrics = next((r["eval"] for r in reversed(history) if "eval" in r and r["step"] == step), {})
            self._plot(history)
            self._export(self.deployable_model(full_weights), tmp, metrics, step)
            if training_weights is not None:
                from zoo.hub import _unshared, save_safetensors

                save_safetensors(_unshared(training_weights), tmp / ckpt.TRAINING_WEIGHTS)
            state = {
                "step": step,
                "optimizer": None if self.sharded else optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": accelerator.scaler.state_dict() if accelerator.scaler is not None else None,
                "ema_n_averaged": self.ema.n_averaged.cpu() if self.ema is not None else None,
                "log_window": self.window.state_dict(),
            }
            ckpt.save_torch(state, tmp / ckpt.TRAINING_STATE)
            ckpt.write_state_file(tmp, {
                "step": step, "num_processes": accelerator.num_processes, "sharded": self.sharded,
                "config": self.config.to_dict(),
                "metrics": metrics, "loss": next((r["loss"] for r in reversed(history) if "loss" in r), None),
            })
            final = ckpt.commit(tmp, self.config.keep_last)
            if pusher is not None and self.config.push_every_save:
                pusher.push_in_background(final, f"Checkpoint at step {step}", exclude=_is_training_file)
        accelerator.wait_for_everyone()
        return final

    def _load_checkpoint(self, folder: Path, model, optimizer, scheduler) -> int:
        from zoo.hub import load_state_dict

        state = self._resume_state
        if not self.sharded:  # sharded runs load their weights and optimizer after prepare (accelerate)
            weights_file = folder / ckpt.TRAINING_WEIGHTS
            trained = load_state_dict(weights_file if weights_file.is_file() else folder)
            model.load_state_dict(trained, strict=True)
            optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None:
            self.ema.module.load_state_dict(load_state_dict(folder), strict=True)
            self.ema.n_averaged.copy_(state["ema_n_averaged"])
        rng_file = folder / f"rng_state_{self.accelerator.process_index}.pt"
        ckpt.set_rng_state(ckpt.load_torch(rng_file))
        return int(state["step"])


def _forget_accelerator_settings(mixed_precision: str) -> None:
    """accelerate keeps one state per process and refuses a second Accelerator with another precision; a single
    process that runs several trainings (a notebook, the tests) starts each from a clean state."""
    from accelerate.state import AcceleratorState, GradientState

    current = AcceleratorState._shared_state.get("_mixed_precision")
    if current is not None and str(current) != mixed_precision:
        AcceleratorState._reset_state()
        GradientState._reset_state()


def _check_trackers_installed(names: Sequence[str]) -> None:
    from accelerate.tracking import get_available_trackers
    from accelerate.utils import LoggerType

    installed = {str(tracker) for tracker in get_available_trackers()}
    for name in names:
        if name in LoggerType.list() and name != "all" and name not in installed:
            package = name.replace("_", "-")
            raise ConfigError(f"--report-to {name} needs the {package} package: pip install {package}")


def _has_other_accelerator() -> bool:
    for name in ("mps", "xpu", "npu", "mlu", "musa", "hpu"):
        backend = getattr(torch, name, None) or getattr(torch.backends, name, None)
        if backend is not None and getattr(backend, "is_available", lambda: False)():
            return True
    return False


def _is_training_file(relative: Path) -> bool:
    """Files of a checkpoint that only resuming needs (not the model a user loads or the Hub gets)."""
    return relative.name in (ckpt.TRAINING_STATE, ckpt.TRAINING_WEIGHTS, ckpt.STATE_FILE) \
        or relative.name.startswith("rng_state_") or relative.parts[0] == ENGINE_DIR


def _link_model_files(checkpoint: Path, model_dir: Path) -> None:
    """Fill `model_dir` with the model files of a checkpoint (hard links where possible), without its training
    state; `model_dir` is replaced as a whole."""
    import shutil

    tmp = model_dir.with_name(model_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    ckpt.link_tree(checkpoint, tmp, exclude=_is_training_file)
    if model_dir.exists():
        shutil.rmtree(model_dir)
    os.replace(tmp, model_dir)


def fit(config: TrainConfig, **kwargs: Any) -> TrainResult:
    """Build a Trainer for `config` and run it (see Trainer for the keyword arguments)."""
    return Trainer(config, **kwargs).fit()
