"""Predicting a whole dataset in input order, and the course's dev metrics."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from minbert.plumbing.machine import autocast, to_device
from minbert.plumbing.progress import show_progress
from multitask.batching import EncodedTask, restore_order, sorted_batches
from multitask.model import MultitaskBert
from multitask.tasks import TASKS


@torch.no_grad()
def predict(model: MultitaskBert, dataset: EncodedTask, batch_size: int, device: torch.device,
            precision: str = "fp32") -> torch.Tensor:
    """Final predictions in dataset order: class ids, 0/1 or clamped scores (`Task.predictions`)."""
    return dataset.task.predictions(raw_outputs(model, dataset, batch_size, device, precision))


@torch.no_grad()
def raw_outputs(model: MultitaskBert, dataset: EncodedTask, batch_size: int, device: torch.device,
                precision: str = "fp32") -> torch.Tensor:
    """Head outputs (logits or scores) for every example, in dataset order."""
    outputs, order = batch_outputs(model, dataset, sorted_batches(dataset.lengths(), batch_size), device, precision)
    return restore_order(torch.cat(order), torch.cat(outputs))


@torch.no_grad()
def batch_outputs(model: MultitaskBert, dataset: EncodedTask, batches: list[list[int]],
                  device: torch.device, precision: str = "fp32") -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(head outputs, dataset positions) of each of these batches, on the CPU, in eval mode.

    Split from `raw_outputs` so that processes of a distributed run can each compute a share of
    the same batches and gather them: identical batches give identical outputs. A model with
    `symmetric_pairs` scores each pair in both sentence orders and averages the two outputs.
    """
    was_training = model.training
    model.eval()
    both_orders = model.symmetric_pairs and dataset.pair_encoding is not None
    outputs, order = [], []
    for indices in tqdm(batches, desc=f"eval {dataset.name}", leave=False, disable=not show_progress()):
        batch = to_device(dataset.batch(indices), device)
        with autocast(device, precision):
            output = model(dataset.task, batch).float()
            if both_orders:
                swapped = to_device(dataset.batch(indices, swapped=True), device)
                output = (output + model(dataset.task, swapped).float()) / 2
        outputs.append(output.cpu())
        order.append(batch["index"].cpu())
    model.train(was_training)
    return outputs, order


def overall(scores: dict[str, float]) -> float:
    """Mean of the task scores, each mapped into [0, 1] (Pearson r as (r + 1) / 2)."""
    values = [TASKS[task].unit_score(s) for task, s in scores.items()]
    return sum(values) / len(values)
