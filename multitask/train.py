"""The multitask training loop: task-scheduled steps, AdamW with warm-up/decay, dev evaluation per epoch."""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from minbert.optimizer import AdamW, warmup_linear_decay
from multitask.batching import BucketBatchSampler, EncodedTask
from multitask.evaluate import overall, predict, score
from multitask.model import MultitaskBert, task_loss
from multitask.runtime import autocast, show_progress, to_device
from multitask.schedule import task_order

log = logging.getLogger(__name__)


class TrainingAborted(RuntimeError):
    """Training stopped because too many steps produced non-finite losses."""


@dataclass
class TrainSettings:
    """Optimisation settings of one run (defaults are the finetune recipe measured in the README)."""

    epochs: int = 4
    lr: float = 5e-5
    head_lr: float | None = None  # None: the heads train at `lr` like the encoder
    batch_size: int = 32
    eval_batch_size: int = 128
    grad_accum: int = 1
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    schedule: str = "round_robin"
    seed: int = 0
    max_bad_steps: int = 20


# A regulariser adds named loss terms for one step: (model, task, batch, embeddings, mask, output) -> terms.
Regularizer = Callable[[MultitaskBert, str, dict, torch.Tensor, torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]


@dataclass
class EpochRecord:
    epoch: int
    dev_scores: dict[str, float]
    dev_mean: float
    train_losses: dict[str, float]
    train_seconds: float
    train_examples: int
    skipped_steps: int
    extra: dict = field(default_factory=dict)

    def as_json(self) -> dict:
        return {"epoch": self.epoch, **{f"dev_{k}": v for k, v in self.dev_scores.items()}, "dev_mean": self.dev_mean,
                **{f"loss_{k}": v for k, v in self.train_losses.items()}, "train_seconds": self.train_seconds,
                "train_examples": self.train_examples, "skipped_steps": self.skipped_steps, **self.extra}


def build_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, head_lr: float | None = None) -> AdamW:
    """AdamW over the trainable parameters; biases and LayerNorm weights are not decayed.

    Parameters under `heads.` may take their own learning rate: a head starts from random
    weights, and at the encoder's small rate it learns so slowly that the encoder bends its
    features to fit it instead (the feature distortion of Kumar et al. 2022).
    """
    groups: dict[tuple[bool, bool], list] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            decayed = not (param.ndim < 2 or "LayerNorm" in name)
            is_head = head_lr is not None and name.startswith("heads.")
            groups.setdefault((decayed, is_head), []).append(param)
    return AdamW([{"params": params, "weight_decay": weight_decay if decayed else 0.0,
                   "lr": head_lr if is_head else lr}
                  for (decayed, is_head), params in sorted(groups.items(), key=lambda kv: (not kv[0][0], kv[0][1]))],
                 lr=lr)


class Trainer:
    """Trains a MultitaskBert on several tasks at once and evaluates it on their dev sets each epoch."""

    def __init__(self, model: MultitaskBert, train_sets: dict[str, EncodedTask], dev_sets: dict[str, EncodedTask],
                 settings: TrainSettings, device: torch.device, out_dir: Path,
                 on_new_best: Callable[[MultitaskBert, EpochRecord], None] | None = None,
                 regularizer: Regularizer | None = None, after_update: Callable[[int, int], None] | None = None) -> None:
        self.model = model.to(device)
        self.train_sets, self.dev_sets = train_sets, dev_sets
        self.settings, self.device, self.out_dir = settings, device, Path(out_dir)
        self.on_new_best, self.regularizer, self.after_update = on_new_best, regularizer, after_update
        self.samplers = {name: BucketBatchSampler(ds.lengths(), settings.batch_size, seed=settings.seed)
                         for name, ds in train_sets.items()}
        self.steps_per_epoch = sum(len(s) for s in self.samplers.values())
        # Every epoch ends with an update, so a partial accumulation group counts as one.
        self.total_updates = settings.epochs * math.ceil(self.steps_per_epoch / settings.grad_accum)
        self.optimizer = build_optimizer(model, settings.lr, settings.weight_decay, settings.head_lr)
        self.scheduler = warmup_linear_decay(self.optimizer, int(settings.warmup_ratio * self.total_updates),
                                             self.total_updates)
        self.updates = 0
        self.bad_steps = 0
        self.best_mean = -math.inf

    def train(self) -> list[EpochRecord]:
        history = []
        metrics_file = self.out_dir / "metrics.jsonl"
        self.out_dir.mkdir(parents=True, exist_ok=True)
        metrics_file.write_text("")
        for epoch in range(self.settings.epochs):
            record = self.train_epoch(epoch)
            history.append(record)
            with open(metrics_file, "a", encoding="utf-8") as f:
                f.write(json.dumps(record.as_json()) + "\n")
            print(format_epoch(record), flush=True)
            if record.dev_mean > self.best_mean:
                self.best_mean = record.dev_mean
                if self.on_new_best is not None:
                    self.on_new_best(self.model, record)
        return history

    def epoch_plan(self, epoch: int) -> list[tuple[str, list[int]]]:
        """(task, batch indices) for every step of an epoch; tasks that run dry start a new pass."""
        rng = np.random.default_rng([self.settings.seed, epoch, 1])
        per_task = {name: len(s) for name, s in self.samplers.items()}
        order = task_order(self.settings.schedule, per_task, rng, epoch, self.settings.epochs)
        queues = {name: [] for name in per_task}
        passes = {name: 0 for name in per_task}
        plan = []
        for task in order:
            if not queues[task]:
                # Each extra pass over a small task gets its own shuffle, still reproducible.
                queues[task] = self.samplers[task].batches_for(epoch * 1000 + passes[task])
                passes[task] += 1
            plan.append((task, queues[task].pop()))
        return plan

    def train_epoch(self, epoch: int) -> EpochRecord:
        self.model.train()
        plan = self.epoch_plan(epoch)
        sums = {name: 0.0 for name in self.train_sets}
        counts = {name: 0 for name in self.train_sets}
        examples, start, skipped_before = 0, time.perf_counter(), self.bad_steps
        bar = tqdm(plan, desc=f"epoch {epoch + 1}/{self.settings.epochs}", disable=not show_progress())
        for step, (task, indices) in enumerate(bar):
            batch = to_device(self.train_sets[task].batch(indices), self.device)
            terms = self.step_terms(task, batch)
            loss = sum(terms.values())
            if not torch.isfinite(loss):
                self.skip_step(task, terms)
                continue
            (loss / self.settings.grad_accum).backward()
            for name, value in terms.items():
                key = task if name == "task" else f"{task}_{name}"
                sums[key] = sums.get(key, 0.0) + value.item()
                counts[key] = counts.get(key, 0) + 1
            examples += len(indices)
            if (step + 1) % self.settings.grad_accum == 0 or step + 1 == len(plan):
                self.update()
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        seconds = time.perf_counter() - start
        dev_scores = self.evaluate()
        return EpochRecord(epoch + 1, dev_scores, overall(dev_scores),
                           {k: sums[k] / counts[k] for k in sums if counts.get(k)}, round(seconds, 1), examples,
                           self.bad_steps - skipped_before, {"lr": self.scheduler.get_last_lr()[0]})

    def step_terms(self, task: str, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The loss terms of one batch: the task loss and whatever the regulariser adds."""
        with autocast(self.device):
            embeddings, mask = self.model.embed(task, batch)
            output = self.model.predict_from_embeddings(task, embeddings, mask)
            terms = {"task": task_loss(task, output, batch["labels"])}
            if self.regularizer is not None:
                terms.update(self.regularizer(self.model, task, batch, embeddings, mask, output))
        return terms

    def update(self) -> None:
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, self.settings.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.updates += 1
        if self.after_update is not None:
            self.after_update(self.updates, self.total_updates)

    def skip_step(self, task: str, terms: dict[str, torch.Tensor]) -> None:
        """Drop a step whose loss is not finite, so it never reaches the weights; give up after too many.

        Nothing was backpropagated for it, so gradients of earlier batches in the same
        accumulation group are kept.
        """
        self.bad_steps += 1
        values = {k: float(v) for k, v in terms.items()}
        log.warning("skipped a %s step with a non-finite loss %s (%d skipped so far)", task, values, self.bad_steps)
        if self.bad_steps > self.settings.max_bad_steps:
            raise TrainingAborted(f"{self.bad_steps} steps had non-finite losses (limit --max_bad_steps "
                                  f"{self.settings.max_bad_steps}); lower --lr or check the data")

    def evaluate(self) -> dict[str, float]:
        return {name: score(name, predict(self.model, ds, self.settings.eval_batch_size, self.device), ds.labels)
                for name, ds in self.dev_sets.items()}


def format_epoch(record: EpochRecord) -> str:
    scores = "  ".join(f"{task} {value:.3f}" for task, value in record.dev_scores.items())
    return (f"epoch {record.epoch}: dev {scores}  mean {record.dev_mean:.3f}  "
            f"({record.train_examples} examples in {record.train_seconds:.0f}s)")
