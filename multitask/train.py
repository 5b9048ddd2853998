"""The multitask training loop: task-scheduled steps, AdamW with warm-up/decay, dev evaluation per epoch.

One default training step, through 13 files: multitask_classifier.py builds the `Trainer`, whose
`train_epoch` (here) takes the step's rows from the epoch plan and `run_step` pads them
(`EncodedTask.batch`, multitask/batching.py) and moves them (minbert/plumbing/machine.py, which
also gives the step's autocast); `StepLoss.forward` (here) runs `MultitaskBert`
(multitask/model.py) on the encoder (minbert/model.py: its word-embedding lookup in
minbert/lookup.py, its dropout in minbert/dropout.py, pads skipped with minbert/packing.py) and
takes `Task.loss` (multitask/tasks.py); `update` (here) steps AdamW and its schedule
(minbert/optimizer.py), moves the weight average (smart/weight_average.py) and returns freed heap
memory to the OS when it piles up (minbert/plumbing/heap.py). Regularisers add their terms in
`StepLoss` (multitask/regularizers.py, on smart/).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from minbert.dropout import DropoutReplay
from minbert.optimizer import AdamW, warmup_linear_decay
from minbert.plumbing.flags import COURSE_SEED, flag, non_negative, non_negative_int, positive, positive_int
from minbert.plumbing.flags import seed as seed_type
from minbert.plumbing.loop import JsonlWriter, NonFiniteGuard, TooManyBadSteps, parameter_groups, step_through_scaler
from minbert.plumbing.heap import HeapTrimmer
from minbert.plumbing.machine import PRECISION_HELP, PRECISIONS, RESOLVED_PRECISIONS, autocast, grad_scaler, to_device
from minbert.plumbing.progress import DEFAULT_INTERVAL, ProgressReporter, format_duration, show_progress
from multitask.batching import BucketBatchSampler, EncodedTask
from multitask.evaluate import overall, predict
from multitask.model import MultitaskBert
from multitask.records import EpochProgress, EpochRecord, format_epoch
from multitask.regularizers import Regularizers
from multitask.schedule import SCHEDULES, epoch_plan
from multitask.tasks import Task
from multitask.throughput import epoch_throughput
from smart import WeightAverage

log = logging.getLogger(__name__)


# Steps timed before the run's length is estimated in the log: past the first steps' one-off
# costs, early enough to be useful.
ESTIMATE_AFTER_STEPS = 20
# --lr by --option: heads alone on a frozen encoder take a larger step than a whole model.
DEFAULT_LR = {"pretrain": 1e-3, "finetune": 5e-5}


class TrainingAborted(TooManyBadSteps):
    """Fine-tuning stopped because too many steps produced non-finite losses."""


@dataclass
class TrainSettings:
    """Optimisation settings of one run; each default here is the command line's (`flag` fields).

    `lr` None and `precision` "auto" are resolved by the caller (multitask_classifier.py) before a
    Trainer sees them.
    """

    epochs: int = flag(4, "passes over the training data", type=positive_int)
    lr: float | None = flag(None, f"learning rate (default: {DEFAULT_LR['pretrain']:g} with --option pretrain, "
                                  f"{DEFAULT_LR['finetune']:g} with --option finetune)", type=positive)
    head_lr: float | None = flag(None, "learning rate of the task heads (default: --lr)", type=positive)
    batch_size: int = flag(32, "examples per step in each process", type=positive_int)
    global_batch_size: int | None = flag(
        None, "examples per step over all torchrun processes, split evenly between them "
              "(default: --batch_size × processes)", type=positive_int)
    eval_batch_size: int = flag(128, "examples per batch when scoring dev and writing predictions", type=positive_int)
    eval_every: int = flag(1, "score dev after every N-th epoch and after the last; the kept checkpoint is the best "
                              "scored epoch (N = --epochs: only the last, a fixed budget)", type=positive_int)
    grad_accum: int = flag(1, "steps whose gradients are summed into one update", type=positive_int)
    weight_decay: float = flag(0.01, "AdamW weight decay (not on biases and LayerNorm weights)", type=non_negative)
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    schedule: str = flag("round_robin", "order of the tasks' batches within an epoch", choices=SCHEDULES)
    swap_pairs: bool = flag(True, "keep each pair's sentences in the order read; by default a training pair is "
                                  "shown in a random order and a pair's prediction averages both orders",
                            name="--no_pair_swap", negated=True)
    seed: int = flag(COURSE_SEED, "seed of everything random: data order, heads, dropout", type=seed_type)
    max_bad_steps: int = flag(20, "abort after this many non-finite losses", type=non_negative_int)
    precision: str = flag("auto", PRECISION_HELP, choices=PRECISIONS)


class StepLoss(nn.Module):
    """One training step's loss, term by term: the task loss, then each regulariser term that runs.

    The step goes through `embed`/`predict_from_embeddings` rather than the model's `forward`, so
    SMART can perturb the embeddings in between. Wrapping the whole step in one module's `forward`
    is what lets DistributedDataParallel see every parameter the step uses (multitask/distributed.py).
    """

    def __init__(self, model: MultitaskBert, regularizers: Regularizers | None = None) -> None:
        super().__init__()
        self.model = model
        self.regularizers = regularizers

    def forward(self, task: Task, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        r = self.regularizers
        # Taken before the step's first dropout mask is drawn: the Bregman term's teacher pass replays
        # all of the student's masks, the embedding dropout's included.
        step_masks = DropoutReplay(batch["input_ids"].device) if r is not None and r.runs("bregman", task) else None
        embeddings, mask = self.model.embed(task, batch)
        # Taken before the clean pass draws its dropout masks, so the perturbed passes can replay them.
        masks = DropoutReplay(embeddings.device) if r is not None and r.shares_masks(task) else None

        def model_fn(inputs: torch.Tensor) -> torch.Tensor:
            return self.model.predict_from_embeddings(task, inputs, mask)

        f = model_fn if masks is None else masks.wrap(model_fn)
        delta = None
        if r is not None and r.ascends_first(task, masks, embeddings):
            # The ascent's fp32 target pass draws the masks here (the same draws the clean pass would
            # make: it comes first), and the clean pass replays them.
            delta = r.adversarial_delta(self.model, model_fn, f, embeddings, task, mask)
            output = f(embeddings)
        else:
            output = model_fn(embeddings)
        terms = {"task": task.loss(output, batch["labels"])}
        if r is None:
            return terms
        # The order is fixed: each term draws random numbers (noise, dropout masks) in turn.
        if r.runs("adversarial", task):
            terms["adversarial"] = r.adversarial(f, embeddings, output, task, mask, delta)
        if r.runs("r3f", task):
            terms["r3f"] = r.r3f(f, embeddings, output, task, mask)
        if r.runs("rdrop", task):
            terms.update(r.rdrop(self.model, task, batch, output))
        if step_masks is not None:
            terms["bregman"] = r.bregman(task, batch, output, step_masks)
        return terms


def build_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, head_lr: float | None = None) -> AdamW:
    """AdamW over the trainable parameters; biases and LayerNorm weights are not decayed.

    Parameters under `heads.` may take their own learning rate: a head starts from random
    weights, and at the encoder's small rate it learns so slowly that the encoder bends its
    features to fit it instead (the feature distortion of Kumar et al. 2022).
    """
    return AdamW(parameter_groups(model, lr, weight_decay, None if head_lr is None else ("heads.", head_lr)), lr=lr)


class Trainer:
    """Trains a MultitaskBert on several tasks at once and evaluates it on their dev sets each epoch.

    `average`, if given, is moved towards the model after every update (an exponential moving
    average of the weights; SMART's Bregman term uses the same one). With `score_average` it is
    the average that is scored on dev and handed to `on_new_best`. `on_new_best` is called in
    every process of a distributed run; it decides who writes.
    """

    # Whether this process writes metrics and prints; ParallelTrainer sets it for rank 0 only.
    is_main = True

    def __init__(self, model: MultitaskBert, train_sets: dict[str, EncodedTask], dev_sets: dict[str, EncodedTask],
                 settings: TrainSettings, device: torch.device, out_dir: Path,
                 on_new_best: Callable[[MultitaskBert, EpochRecord], None] | None = None,
                 regularizers: Regularizers | None = None, average: WeightAverage | None = None,
                 score_average: bool = False, on_save_state: Callable[[Trainer], None] | None = None,
                 save_every: int = 0, progress_interval: float = DEFAULT_INTERVAL) -> None:
        """`on_save_state(trainer)` is called every `save_every` updates (0: never mid-epoch) and after
        each epoch, at a point where the run can be continued exactly from `state_dict()`.
        `progress_interval`: the least number of seconds between two progress lines, which replace
        the bar when it is not drawn (output to a log file, CI)."""
        if settings.lr is None or settings.precision not in RESOLVED_PRECISIONS:
            raise ValueError(f"resolve lr ({settings.lr}) and precision ({settings.precision!r}) before training: "
                             "multitask_classifier.resolved_train_settings does")
        self.model = model.to(device)
        self.train_sets, self.dev_sets = train_sets, dev_sets
        self.settings, self.device, self.out_dir = settings, device, Path(out_dir)
        self.on_new_best, self.regularizers, self.average = on_new_best, regularizers, average
        if score_average and average is None:
            raise ValueError("score_average needs a weight average")
        # The model that is scored and kept: the weight average when there is one to evaluate.
        self.eval_model: MultitaskBert = average.model if score_average else self.model
        self.on_save_state, self.save_every = on_save_state, save_every
        self.progress_interval = progress_interval
        self.loss_terms: nn.Module = StepLoss(self.model, regularizers)
        self.samplers = {name: BucketBatchSampler(ds.lengths(), settings.batch_size, seed=settings.seed)
                         for name, ds in train_sets.items()}
        self.token_counts = {name: np.sum(ds.side_lengths(), axis=0) for name, ds in train_sets.items()}
        # FLOP/s of a torch.mm on this device in this precision, measured by the caller; with it each
        # epoch reports its model FLOPs on real tokens as a share of the machine's peak.
        self.matmul_peak: float | None = None
        self.steps_per_epoch = sum(len(s) for s in self.samplers.values())
        # Every epoch ends with an update, so a partial accumulation group counts as one.
        self.total_updates = settings.epochs * math.ceil(self.steps_per_epoch / settings.grad_accum)
        self.optimizer = build_optimizer(model, settings.lr, settings.weight_decay, settings.head_lr)
        self.scheduler = warmup_linear_decay(self.optimizer, int(settings.warmup_ratio * self.total_updates),
                                             self.total_updates)
        # fp16 only: scales the loss so small gradients survive, skips updates whose gradients overflowed.
        self.scaler = grad_scaler(device, settings.precision)
        self.scaler_skips = 0
        self.updates = 0
        # Returns the heap's freed pages to the OS when they pile up (packed batches fragment it).
        self.heap = HeapTrimmer()
        self.guard = NonFiniteGuard(settings.max_bad_steps, TrainingAborted, "--max_bad_steps", log)
        self.best_mean = -math.inf
        self.history: list[EpochRecord] = []
        self.progress: EpochProgress | None = None  # None: at the start of epoch len(history)
        self.last_dev_predictions: dict[str, torch.Tensor] = {}
        self.estimated = False  # whether this process has logged its estimate of the run's length
        # The kept epoch's dev predictions by id, when this process scored it (not kept by --resume):
        # the prediction files reuse them instead of scoring dev a second time.
        self.best_dev_predictions: dict[str, dict[str, int | float]] = {}

    @property
    def bad_steps(self) -> int:
        return self.guard.count

    @bad_steps.setter
    def bad_steps(self, count: int) -> None:
        self.guard.count = count

    def train(self) -> list[EpochRecord]:
        """Train the remaining epochs (all of them, unless `load_state_dict` restored a partial run)."""
        metrics = JsonlWriter(self.out_dir / "metrics.jsonl")
        # A resumed run keeps exactly the lines of the epochs its state has finished: one written
        # after the last saved state is dropped here and written again when its epoch is redone.
        if self.is_main:
            metrics.rewrite(r.as_json() for r in self.history)
        for epoch in range(len(self.history), self.settings.epochs):
            record = self.train_epoch(epoch)
            self.history.append(record)
            if self.is_main:
                metrics.append(record.as_json())
                print(format_epoch(record), flush=True)
            if record.dev_mean is not None and record.dev_mean > self.best_mean:
                self.best_mean = record.dev_mean
                self.best_dev_predictions = {name: dict(zip(self.dev_sets[name].ids, values.tolist()))
                                             for name, values in self.last_dev_predictions.items()}
                if self.on_new_best is not None:
                    self.on_new_best(self.eval_model, record)
            self.progress = None
            self.save_state()
        return self.history

    def save_state(self) -> None:
        if self.on_save_state is not None:
            self.on_save_state(self)

    def state_dict(self) -> dict:
        """Where training stands, as plain values and tensors: counters, history, optimiser, schedule.

        Model weights, the weight average and RNG states are not here; `multitask.resume` saves those.
        """
        state = {"updates": self.updates, "bad_steps": self.bad_steps, "best_mean": self.best_mean,
                 "history": [dataclasses.asdict(r) for r in self.history],
                 "progress": None if self.progress is None else dataclasses.asdict(self.progress),
                 "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}
        if self.scaler is not None:
            # The scale the run has settled on and its growth counter: a resumed run goes on from them.
            state.update(scaler=self.scaler.state_dict(), scaler_skips=self.scaler_skips)
        return state

    def load_state_dict(self, state: dict) -> None:
        self.updates, self.bad_steps, self.best_mean = state["updates"], state["bad_steps"], state["best_mean"]
        self.history = [EpochRecord(**r) for r in state["history"]]
        self.progress = None if state["progress"] is None else EpochProgress(**state["progress"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None:
            self.scaler.load_state_dict(state["scaler"])
            self.scaler_skips = state["scaler_skips"]

    def epoch_plan(self, epoch: int) -> list[tuple[str, list[int], list[bool]]]:
        """(task, batch indices, swap flags) for every step of an epoch (multitask/schedule.py)."""
        swappable = {name: self.settings.swap_pairs and ds.pair_encoding is not None
                     for name, ds in self.train_sets.items()}
        return epoch_plan(self.samplers, swappable, self.settings.schedule, self.settings.seed, epoch,
                          self.settings.epochs)

    def train_epoch(self, epoch: int) -> EpochRecord:
        """Run the epoch's plan from `self.progress` (its start unless resumed), then evaluate on dev."""
        self.model.train()
        plan = self.epoch_plan(epoch)
        if self.progress is None or self.progress.epoch != epoch:
            self.progress = EpochProgress(epoch, sums={name: 0.0 for name in self.train_sets},
                                          counts={name: 0 for name in self.train_sets},
                                          bad_steps_before=self.bad_steps, scaler_skips_before=self.scaler_skips)
        progress = self.progress
        start = time.perf_counter() - progress.seconds
        drawn = show_progress()
        bar = tqdm(total=len(plan), initial=progress.step, desc=f"epoch {epoch + 1}/{self.settings.epochs}",
                   disable=not drawn)
        # Without a bar (output to a log file, CI), lines instead. Counted in steps of this epoch
        # from where this process starts it: updates per epoch vary with skipped steps, and the
        # dev evaluation between epochs would distort a time left for the whole run.
        lines = None if drawn or not self.is_main else ProgressReporter(
            len(plan), progress.step, emit=log.info, interval=self.progress_interval, eta_of="epoch")
        first_step, resumed_at = progress.step, time.perf_counter()
        for step in range(progress.step, len(plan)):
            task, indices, swapped = plan[step]
            bar.update()
            terms, reported = self.run_step(task, indices, swapped)
            loss = sum(terms.values())
            # Decided on the reported terms, which every process of a distributed run shares, so
            # all of them skip the same steps.
            reported_loss = sum(reported.values())
            if not torch.isfinite(reported_loss):
                self.skip_step(task, reported)
                continue
            self.backward(loss / self.settings.grad_accum)
            values = {(task if name == "task" else f"{task}_{name}"): value.item()
                      for name, value in reported.items()}
            for key, value in values.items():
                progress.sums[key] = progress.sums.get(key, 0.0) + value
                progress.counts[key] = progress.counts.get(key, 0) + 1
            progress.examples += len(indices)
            progress.tokens += int(self.token_counts[task][indices].sum())
            if (step + 1) % self.settings.grad_accum == 0 or step + 1 == len(plan):
                self.update()
                # Only between updates is there no half-accumulated gradient to carry over. The
                # epoch's last update is followed by the end-of-epoch checkpoint anyway.
                if self.save_every and self.updates % self.save_every == 0 and step + 1 < len(plan):
                    progress.step, progress.seconds = step + 1, time.perf_counter() - start
                    self.save_state()
            bar.set_postfix(loss=f"{reported_loss.item():.3f}", refresh=False)
            if step + 1 - first_step == ESTIMATE_AFTER_STEPS and not self.estimated and self.is_main:
                self.log_estimate(epoch, len(plan) - step - 1, (time.perf_counter() - resumed_at) / ESTIMATE_AFTER_STEPS)
            if lines is not None:
                lines.add(len(indices), {f"{key} loss": value for key, value in values.items()})
                lines.advance(step + 1, f"epoch {epoch + 1}/{self.settings.epochs}, "
                                        f"update {self.updates}/{self.total_updates}")
        bar.close()
        progress.step, progress.seconds = len(plan), time.perf_counter() - start
        dev_scores = self.evaluate() if self.scores_epoch(epoch) else {}
        self.heap.release_now()
        sums, counts = progress.sums, progress.counts
        return EpochRecord(epoch + 1, dev_scores, overall(dev_scores) if dev_scores else None,
                           {k: sums[k] / counts[k] for k in sums if counts.get(k)}, round(progress.seconds, 1),
                           progress.examples, self.bad_steps - progress.bad_steps_before,
                           {"lr": self.scheduler.get_last_lr()[0],
                            **({} if self.scaler is None
                               else {"scaler_skipped_steps": self.scaler_skips - progress.scaler_skips_before}),
                            **epoch_throughput(self.model.encoder.config, progress.tokens, progress.seconds,
                                               self.matmul_peak)})

    def scores_epoch(self, epoch: int) -> bool:
        """Whether dev is scored after `epoch` (from 0): every --eval_every-th epoch, and the last."""
        return (epoch + 1) % self.settings.eval_every == 0 or epoch + 1 == self.settings.epochs

    def log_estimate(self, epoch: int, steps_left_in_epoch: int, seconds_per_step: float) -> None:
        """Once per process: how long the rest of the training loop should take at the pace so far."""
        self.estimated = True
        left = steps_left_in_epoch + (self.settings.epochs - epoch - 1) * self.steps_per_epoch
        log.info("estimated time to the end of training: about %s (%d steps at %.2f s, from the first %d; dev "
                 "scoring after each epoch comes on top)", format_duration(left * seconds_per_step), left,
                 seconds_per_step, ESTIMATE_AFTER_STEPS)

    def run_step(self, task: str, indices: list[int],
                 swapped: list[bool]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(terms to backpropagate, terms to report) for the batch at these dataset positions.

        In one process they are the same; ParallelTrainer computes this process's share of the
        batch and reports the terms of the whole batch.
        """
        dataset = self.train_sets[task]
        terms = self.step_terms(dataset.task, to_device(dataset.batch(indices, swapped), self.device))
        return terms, terms

    def step_terms(self, task: Task, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The loss terms of one batch: the task loss and whatever the regulariser adds."""
        # One autocast region for the whole step: the bf16 copies of the weights are made once
        # and shared by every pass a regulariser adds.
        with autocast(self.device, self.settings.precision):
            return self.loss_terms(task, batch)

    def backward(self, loss: torch.Tensor) -> None:
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def update(self) -> None:
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        if self.scaler is not None:
            # Clip the true gradients, not the scaled ones.
            self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(params, self.settings.max_grad_norm)
        if self.scaler is None:
            self.optimizer.step()
        else:
            self.scaled_step()
        # Also after an update the scaler skipped (as in torch's AMP recipe): the schedule, the
        # update count and the weight average follow the plan of updates, not the updates applied.
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.updates += 1
        if self.average is not None:
            self.average.update(self.updates - 1, self.total_updates)
        self.heap.after_update()

    def scaled_step(self) -> None:
        """fp16: the optimiser step through the scaler, counting the steps it skipped."""
        self.scaler_skips += step_through_scaler(self.scaler, self.optimizer, self.updates + 1, self.scaler_skips, log)

    def skip_step(self, task: str, terms: dict[str, torch.Tensor]) -> None:
        """Drop a step whose loss is not finite (nothing was backpropagated: the accumulation group's
        earlier gradients are kept); give up after too many."""
        self.guard.skip(f"{task} step", terms)

    def evaluate(self) -> dict[str, float]:
        """Each dev set's score; the predictions scored stay in `last_dev_predictions`."""
        self.last_dev_predictions = self.dev_predictions()
        return {name: self.dev_sets[name].task.score(values, self.dev_sets[name].labels)
                for name, values in self.last_dev_predictions.items()}

    def dev_predictions(self) -> dict[str, torch.Tensor]:
        return {name: predict(self.eval_model, ds, self.settings.eval_batch_size, self.device, self.settings.precision)
                for name, ds in self.dev_sets.items()}
