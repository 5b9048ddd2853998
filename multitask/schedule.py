"""Which task each training step draws its batch from: round robin, proportional or annealed."""

from __future__ import annotations

import numpy as np

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
