"""The MLM pretraining loop: dynamic masking, AdamW with warm-up and linear decay, held-out evaluation."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Protocol

import torch
import torch.nn.functional as F

from minbert.corpus import PackedSequences
from minbert.masking import IGNORE_INDEX, MaskingVocab, mask_tokens
from minbert.mlm import BertForMaskedLM
from minbert.optimizer import AdamW, warmup_linear_decay
from minbert.plumbing.flags import COURSE_SEED, flag, non_negative, number, positive, positive_int
from minbert.plumbing.flags import seed as seed_type
from minbert.plumbing.loop import JsonlWriter, NonFiniteGuard, TooManyBadSteps, parameter_groups, step_through_scaler
from minbert.plumbing.machine import PRECISION_HELP, PRECISIONS, autocast, grad_scaler
from minbert.plumbing.progress import ProgressReporter

log = logging.getLogger(__name__)


class MLMTrainingAborted(TooManyBadSteps):
    """Too many MLM steps produced a non-finite loss."""


class ProgressBar(Protocol):
    """The part of tqdm the loop uses; minbert does not depend on tqdm, the caller passes one in."""

    def update(self, n: int = 1) -> object: ...
    def set_postfix(self, **values: object) -> object: ...
    def close(self) -> object: ...


@dataclass
class MLMSettings:
    """Optimisation and evaluation settings of one MLM run."""

    # 300 updates of 32 x 128 tokens: about one pass over the course corpus.
    max_steps: int = flag(300, "updates to run", type=positive_int)
    epochs: float | None = flag(None, "passes over the training rows, instead of --max_steps", type=positive)
    batch_size: int = flag(32, "packed rows per update", type=positive_int)
    eval_batch_size: int = flag(64, "rows per held-out forward pass", type=positive_int)
    lr: float = flag(1e-4, "peak learning rate", type=positive)
    weight_decay: float = flag(0.01, "AdamW decoupled decay (not on biases, LayerNorm)", type=non_negative)
    warmup_ratio: float = flag(0.06, "share of the updates spent warming up", type=number(0.0, 1.0, high_open=True))
    max_grad_norm: float = 1.0
    mask_probability: float = flag(0.15, "share of tokens selected for prediction",
                                   type=number(0.0, 1.0, low_open=True, high_open=True))
    whole_word_mask: bool = flag(False, "select whole words (a token and its ## pieces)")
    eval_every: int = flag(50, "evaluate on the held-out rows every N updates", type=positive_int)
    seed: int = flag(COURSE_SEED, "head initialisation, batch order and training masks", type=seed_type)
    # Evaluation always draws its masks from this seed, so every evaluation scores the same task.
    eval_mask_seed: int = 1234
    max_bad_steps: int = 20
    # "auto" is resolved by the caller (minbert.plumbing.machine.resolve_precision) before training.
    precision: str = flag("auto", PRECISION_HELP, choices=PRECISIONS)

    def __post_init__(self) -> None:
        for name in ("max_steps", "batch_size", "eval_batch_size", "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.epochs is not None and self.epochs <= 0:
            raise ValueError(f"epochs must be positive, got {self.epochs}")
        if not 0.0 < self.mask_probability < 1.0:
            raise ValueError(f"mask_probability must be in (0, 1), got {self.mask_probability}")

    def total_steps(self, rows: int) -> int:
        if self.epochs is None:
            return self.max_steps
        return max(1, math.ceil(self.epochs * math.ceil(rows / self.batch_size)))


class MLMTrainer:
    """Trains a BertForMaskedLM on packed rows, masking each batch afresh (dynamic masking, as RoBERTa)."""

    def __init__(self, model: BertForMaskedLM, vocab: MaskingVocab, train: PackedSequences,
                 held_out: PackedSequences, settings: MLMSettings, device: torch.device | str = "cpu") -> None:
        if len(train) == 0 or len(held_out) == 0:
            raise ValueError(f"need training and held-out rows, got {len(train)} and {len(held_out)}")
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.vocab, self.train_rows, self.held_out, self.settings = vocab, train, held_out, settings
        self.total = settings.total_steps(len(train))
        # BERT's recipe: matrices are decayed, biases and LayerNorm weights are not.
        self.optimizer = AdamW(parameter_groups(model, settings.lr, settings.weight_decay), lr=settings.lr)
        self.scheduler = warmup_linear_decay(self.optimizer, int(settings.warmup_ratio * self.total), self.total)
        self.generator = torch.Generator().manual_seed(settings.seed)
        # fp16 only (None otherwise): loss scaling, and updates with overflowed gradients skipped.
        self.scaler = grad_scaler(self.device, settings.precision)
        self.scaler_skips = 0
        self.step = 0
        self.guard = NonFiniteGuard(settings.max_bad_steps, MLMTrainingAborted, logger=log)

    @property
    def bad_steps(self) -> int:
        return self.guard.count

    def batches(self) -> Iterator[torch.Tensor]:
        """Row indices of each training batch, reshuffled every pass, for as long as asked."""
        while True:
            order = torch.randperm(len(self.train_rows), generator=self.generator)
            yield from order.split(self.settings.batch_size)

    def masked(self, rows: PackedSequences, index: torch.Tensor, generator: torch.Generator,
               whole_word: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        inputs, labels = mask_tokens(rows.input_ids[index], self.vocab, generator,
                                     self.settings.mask_probability, whole_word)
        return inputs.to(self.device), rows.attention_mask[index].to(self.device), labels.to(self.device)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Held-out MLM loss (mean over masked tokens), perplexity and masked-token accuracy.

        Always token-level masking with the fixed seed, also for --whole_word_mask runs: every
        evaluation, of this run or another, then scores the very same masked tokens.
        """
        was_training = self.model.training
        self.model.eval()
        generator = torch.Generator().manual_seed(self.settings.eval_mask_seed)
        total_loss, correct, count = 0.0, 0, 0
        for index in torch.arange(len(self.held_out)).split(self.settings.eval_batch_size):
            with autocast(self.device, self.settings.precision):
                logits, targets = self.model.masked_logits(*self.masked(self.held_out, index, generator, False))
            logits = logits.float()
            total_loss += F.cross_entropy(logits, targets, reduction="sum").item()
            correct += int((logits.argmax(-1) == targets).sum())
            count += targets.numel()
        self.model.train(was_training)
        loss = total_loss / max(1, count)
        return {"eval_loss": loss, "eval_perplexity": math.exp(min(loss, 700.0)),
                "eval_accuracy": correct / max(1, count), "eval_masked_tokens": count}

    def train(self, metrics_path: str | Path | None = None,
              progress: Callable[[int], ProgressBar] | None = None,
              report: Callable[[str], None] = print, progress_lines: float | None = None) -> list[dict]:
        """Run `total` updates with an evaluation at step 0, every `eval_every` steps and at the end.

        Each evaluation becomes a JSON line in `metrics_path` (truncated first) and a line passed
        to `report`. `progress` makes a bar for the updates; `progress_lines`, for output where no
        bar is drawn, is the least number of seconds between two progress lines, also passed to
        `report` (None: no such lines).
        """
        metrics = JsonlWriter(metrics_path) if metrics_path is not None else None
        if metrics is not None:
            metrics.rewrite()
        history: list[dict] = []
        losses: list[float] = []
        train_seconds = 0.0

        def record() -> None:
            entry = {"step": self.step, "epoch": round(self.step * self.settings.batch_size / len(self.train_rows), 3),
                     "lr": self.optimizer.param_groups[0]["lr"],
                     "train_loss": sum(losses) / len(losses) if losses else None,
                     **self.evaluate(), "train_seconds": round(train_seconds, 1), "skipped_steps": self.bad_steps,
                     **({} if self.scaler is None else {"scaler_skipped_steps": self.scaler_skips})}
            losses.clear()
            history.append(entry)
            if metrics is not None:
                metrics.append(entry)
            report(format_record(entry))

        record()
        self.model.train()
        bar = progress(self.total) if progress is not None else None
        # Its clock includes the evaluations, so its time left does too.
        lines = ProgressReporter(self.total, self.step, emit=report, interval=progress_lines) \
            if progress_lines is not None else None
        batches = self.batches()
        while self.step < self.total:
            started = time.perf_counter()
            index = next(batches)
            loss = self.train_step(index)
            train_seconds += time.perf_counter() - started
            if loss is None:
                continue
            losses.append(loss)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
            if lines is not None:
                lines.add(len(index), {"train loss": loss})
                lines.advance(self.step)
            if self.step % self.settings.eval_every == 0 or self.step == self.total:
                record()
        if bar is not None:
            bar.close()
        return history

    def train_step(self, index: torch.Tensor) -> float | None:
        """One update on the given rows; None when the batch gave no update (nothing masked, or a bad loss)."""
        inputs, mask, labels = self.masked(self.train_rows, index, self.generator,
                                            self.settings.whole_word_mask)
        if not bool((labels != IGNORE_INDEX).any()):
            return None  # only possible with tiny rows: no position was drawn
        with autocast(self.device, self.settings.precision):
            loss = self.model.loss(inputs, mask, labels)
        if not torch.isfinite(loss):
            self.guard.skip("step", {"loss": loss})
            return None
        if self.scaler is None:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.settings.max_grad_norm)
            self.optimizer.step()
        else:
            self.scaled_update(loss)
        # Also after an update the scaler skipped, as in torch's AMP recipe: the schedule follows the plan.
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return loss.item()

    def scaled_update(self, loss: torch.Tensor) -> None:
        """fp16: backward on the scaled loss, clip the unscaled gradients, step unless they overflowed."""
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.settings.max_grad_norm)
        self.scaler_skips += step_through_scaler(self.scaler, self.optimizer, self.step + 1, self.scaler_skips, log)


def format_record(entry: dict) -> str:
    train = f"train loss {entry['train_loss']:.4f}  " if entry["train_loss"] is not None else ""
    return (f"step {entry['step']}: {train}held-out loss {entry['eval_loss']:.4f}  "
            f"perplexity {entry['eval_perplexity']:.2f}  accuracy {entry['eval_accuracy']:.4f}  "
            f"({entry['eval_masked_tokens']} masked tokens, {entry['train_seconds']:.0f}s training)")
