"""Local smoothness on dev: SMART's ℓ_s(f(x + δ), f(x)) at a radius ε, δ from a multi-step ℓ∞ attack."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from minbert.plumbing.machine import autocast, to_device
from minbert.plumbing.progress import show_progress
from multitask.batching import EncodedTask, sorted_batches
from multitask.model import MultitaskBert
from multitask.tasks import Task
from smart.adversarial import adversarial_perturbation
from smart.divergences import divergence
from smart.noise import keep_mask

EPS_GRID: tuple[float, ...] = (1e-3, 1e-2, 1e-1)


@dataclass(frozen=True)
class Attack:
    """The ascent: `steps` projected steps of η = step_ratio·ε along g/‖g‖∞ from δ₀ ~ N(0, (sigma_ratio·ε)²).

    Measured against training's attack (one step of η = 100·ε, which puts nearly every coordinate
    on the surface of the ball), on the packaged encoder with fresh and with scaled heads:
    - η = ε/2, the usual PGD choice for sign steps, is far weaker than training's single step: the
      step moves coordinate i by η·|g_i|/‖g‖∞, so coordinates with small gradients stay near 0;
    - η = 100·ε jumps to a corner of the ball at every step, picked by the current signs alone;
      at small ε, where f is nearly linear in δ, that is the best there is, but at ε = 0.1 the
      later steps cannot refine the first and it ends barely above training's step;
    - η = 20·ε takes every coordinate whose gradient is at least 1/20 of the largest to the surface
      in one step, and a later step can still turn one back: it beat training's step on every task at every ε of EPS_GRID (by a little at
      1e-3 and 1e-2, where every large step finds nearly the same corner, and clearly at 0.1).
    """

    steps: int = 5
    step_ratio: float = 20.0
    sigma_ratio: float = 1.0


def smoothness(model: MultitaskBert, dataset: EncodedTask, eps: float, attack: Attack = Attack(),
               device: torch.device = torch.device("cpu"), precision: str = "fp32", batch_size: int = 32,
               seed: int = 0) -> float:
    """Mean over the dataset's examples of ℓ_s(f(x + δ), f(x)) in eval mode (dropout off).

    δ is added to `model.embed`'s output and never to pads; the ascent runs in fp32 whatever the
    precision (ascent_in_fp32), the final perturbed pass in `precision`. A pair is taken in the
    order read, as training's SMART term takes it, even for a model that predicts both orders.
    δ₀ is drawn from a generator seeded by (seed, batch number) inside a forked RNG, so the value
    is reproducible and the caller's random state is left as it was.
    """
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    batches = sorted_batches(dataset.lengths(), batch_size)
    devices = [device] if device.type == "cuda" else []
    try:
        for number, indices in enumerate(tqdm(batches, desc=f"smooth {dataset.name} ε={eps:g}", leave=False,
                                              disable=not show_progress())):
            batch = to_device(dataset.batch(indices), device)
            with torch.random.fork_rng(devices=devices), autocast(device, precision):
                torch.manual_seed(seed * 1_000_003 + number)
                total += _batch_term(model, dataset.task, batch, eps, attack) * len(indices)
            count += len(indices)
    finally:
        model.train(was_training)
    return total / count


def _batch_term(model: MultitaskBert, task: Task, batch: dict[str, torch.Tensor], eps: float, attack: Attack) -> float:
    with torch.no_grad():
        embeddings, mask = model.embed(task, batch)
        clean = model.predict_from_embeddings(task, embeddings, mask)

    def fn(perturbed: torch.Tensor) -> torch.Tensor:
        return model.predict_from_embeddings(task, perturbed, mask)

    delta = adversarial_perturbation(fn, embeddings, clean, task.kind, eps=eps, sigma=attack.sigma_ratio * eps,
                                     step_size=attack.step_ratio * eps, steps=attack.steps,
                                     keep=keep_mask(embeddings, mask), ascent_in_fp32=True)
    with torch.no_grad():
        return divergence(task.kind, fn(embeddings + delta), clean).item()
