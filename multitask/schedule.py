"""An epoch's plan: which task each training step draws its batch from (round robin, proportional, annealed), and which rows."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # a type only
    from multitask.batching import BucketBatchSampler

SCHEDULES = ("proportional", "round_robin", "annealed", "sqrt")


def task_order(schedule: str, batches_per_task: dict[str, int], rng: np.random.Generator,
               epoch: int = 0, epochs: int = 1) -> list[str]:
    """The task of every step of one epoch; an epoch has as many steps as all tasks have batches.

    - proportional: each task's batches exactly once, shuffled together (sampling ∝ size);
    - round_robin: tasks take turns, so each gets an equal share of steps (small tasks repeat);
    - annealed: draw with probability ∝ size^α, α falling linearly from 1 to 0.5 over training
      (Stickland & Murray 2019), so small tasks gain weight as training goes on;
    - sqrt: shares ∝ √size throughout (temperature-2 sampling), dealt out evenly rather than drawn,
      so tasks alternate as in round robin but a large task gets more of the steps.
    """
    tasks = list(batches_per_task)
    total = sum(batches_per_task.values())
    if schedule == "proportional":
        order = np.repeat(np.arange(len(tasks)), [batches_per_task[t] for t in tasks])
        rng.shuffle(order)
        return [tasks[i] for i in order]
    if schedule == "round_robin":
        return [tasks[i % len(tasks)] for i in range(total)]
    if schedule == "annealed":
        sizes = np.array([batches_per_task[t] for t in tasks], dtype=np.float64)
        order = []
        for step in range(total):
            progress = (epoch * total + step) / max(1, epochs * total - 1)
            alpha = 1.0 - 0.5 * progress
            weights = sizes ** alpha
            order.append(tasks[rng.choice(len(tasks), p=weights / weights.sum())])
        return order
    if schedule == "sqrt":
        return _interleave(tasks, np.sqrt([batches_per_task[t] for t in tasks]), total)
    raise ValueError(f"unknown schedule {schedule!r}; choose from {SCHEDULES}")


def _interleave(tasks: list[str], weights: np.ndarray, steps: int) -> list[str]:
    """`steps` tasks with shares ∝ weights, spread evenly: each step goes to the task furthest
    behind its share (smooth weighted round robin), so no task waits long between its turns."""
    shares = np.asarray(weights, dtype=np.float64) / np.sum(weights)
    credit = np.zeros(len(tasks))
    order = []
    for _ in range(steps):
        credit += shares
        chosen = int(np.argmax(credit))  # ties go to the earlier task, so the order is deterministic
        credit[chosen] -= 1.0
        order.append(tasks[chosen])
    return order


def epoch_plan(samplers: dict[str, BucketBatchSampler], swappable: dict[str, bool], schedule: str, seed: int,
               epoch: int, epochs: int) -> list[tuple[str, list[int], list[bool]]]:
    """(task, batch indices, swap flags) for every step of an epoch; tasks that run dry start a new pass.

    A pair of a `swappable` task is flagged for the other sentence order with probability ½: the
    relations are symmetric, so this doubles the distinct inputs at no cost.
    """
    rng = np.random.default_rng([seed, epoch, 1])
    swap_rng = np.random.default_rng([seed, epoch, 2])
    per_task = {name: len(s) for name, s in samplers.items()}
    order = task_order(schedule, per_task, rng, epoch, epochs)
    queues = {name: [] for name in per_task}
    passes = {name: 0 for name in per_task}
    plan = []
    for task in order:
        if not queues[task]:
            # Each extra pass over a small task gets its own shuffle, still reproducible.
            queues[task] = samplers[task].batches_for(epoch * 1000 + passes[task])
            passes[task] += 1
        indices = queues[task].pop()
        plan.append((task, indices, (swap_rng.random(len(indices)) < 0.5).tolist() if swappable[task]
                     else [False] * len(indices)))
    return plan
