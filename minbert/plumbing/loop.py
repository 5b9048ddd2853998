"""Pieces both training loops share: AdamW parameter groups, the non-finite step guard, the JSONL metrics file."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Iterable, Mapping

import torch

from minbert.optimizer import is_decayed
from minbert.plumbing.atomic import atomic_write_text

log = logging.getLogger(__name__)


def parameter_groups(model: torch.nn.Module, lr: float, weight_decay: float,
                     prefix_lr: tuple[str, float] | None = None) -> list[dict]:
    """AdamW groups over the trainable parameters: decayed ones first, then biases and LayerNorm weights.

    With `prefix_lr = (prefix, rate)`, parameters whose name starts with `prefix` form groups of
    their own at that rate, each after the group of the same decay at `lr`. Groups that would be
    empty are left out. The order of the groups and of the parameters in them (named_parameters
    order) fixes the layout of the optimiser state, so saved states depend on it: keep it stable.
    """
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    # named_parameters lists a tied matrix (the MLM decoder and the word embeddings) once, so it
    # is updated once.
    for name, param in model.named_parameters():
        if param.requires_grad:
            own_rate = prefix_lr is not None and name.startswith(prefix_lr[0])
            groups.setdefault((is_decayed(name, param), own_rate), []).append(param)
    return [{"params": params, "weight_decay": weight_decay if decayed else 0.0,
             "lr": prefix_lr[1] if own_rate else lr}
            for (decayed, own_rate), params in sorted(groups.items(), key=lambda kv: (not kv[0][0], kv[0][1]))]


class TooManyBadSteps(RuntimeError):
    """Training stopped because too many steps produced non-finite losses."""


class NonFiniteGuard:
    """Counts steps dropped for a non-finite loss, logs each with its values, and gives up after too many.

    The caller decides that a step is bad and must not apply it; the guard keeps the count (part
    of a run's saved state, hence a plain attribute) and raises `error` once it exceeds `limit`.
    """

    def __init__(self, limit: int, error: type[TooManyBadSteps] = TooManyBadSteps,
                 limit_flag: str | None = None, logger: logging.Logger = log) -> None:
        """`limit_flag` names the command-line option that sets `limit`, so the message can point to it."""
        self.limit, self.error, self.limit_flag, self.logger = limit, error, limit_flag, logger
        self.count = 0

    def skip(self, what: str, values: Mapping[str, float | torch.Tensor]) -> None:
        """Record one dropped step (`what`: e.g. "sst step"); raise `error` if that is one too many."""
        self.count += 1
        values = {name: float(value.detach()) if isinstance(value, torch.Tensor) else float(value)
                  for name, value in values.items()}
        self.logger.warning("skipped a %s with a non-finite loss %s (%d skipped so far)", what, values, self.count)
        if self.count > self.limit:
            limit = f"{self.limit_flag} {self.limit}" if self.limit_flag else str(self.limit)
            raise self.error(f"{self.count} steps had non-finite losses (limit {limit}); "
                             "lower --lr or check the data")


class JsonlWriter:
    """A metrics file of one JSON object per line: rewritten whole, then appended to record by record.

    A crash during an append can leave a last line cut short; readers skip a line that does not
    parse, and the next `rewrite` (a resumed run) replaces the file with complete lines only.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def rewrite(self, records: Iterable[dict] = ()) -> None:
        """Replace the file with exactly these records (none: an empty file), atomically."""
        atomic_write_text(self.path, "".join(json.dumps(record) + "\n" for record in records))

    def append(self, record: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


def step_through_scaler(scaler: torch.amp.GradScaler, optimizer: torch.optim.Optimizer, update: int,
                        skipped_before: int, log: logging.Logger) -> bool:
    """fp16: the optimiser step through the scaler, which skips it when a gradient is inf or NaN; True if it did.

    The scaler lowers its scale after every such skip and only then, so a lower scale is how a skip
    shows. Skips are expected while the scale settles at the start, rare afterwards; each is logged.
    """
    scale = scaler.get_scale()
    scaler.step(optimizer)
    scaler.update()
    skipped = scaler.get_scale() < scale
    if skipped:
        log.info("fp16: update %d skipped, its gradients overflowed; loss scale %g -> %g (%d skipped so far)",
                 update, scale, scaler.get_scale(), skipped_before + 1)
    return skipped
