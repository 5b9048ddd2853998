"""Where a training step of the main job spends its time: torch.profiler over the CLI's own step.

    python scripts/profile_step.py                       # 8 profiled steps after 3 warm-up steps
    python scripts/profile_step.py --smart --steps 4     # the same with SMART's terms
    python scripts/profile_step.py --json results/profile_step.json

The step is the one `Trainer` takes: a bucketed batch of real training examples of each task in
turn (packed real tokens), `StepLoss` with the run's regularisers, backward, gradient clipping, the
project's AdamW with its schedule, and the weight-average update, under the precision `auto` picks.
The table lists the operators by self CPU time, with their share of the profiled total.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from minbert import BertModel, load_tokenizer  # noqa: E402
from minbert.optimizer import warmup_linear_decay  # noqa: E402
from minbert.plumbing.atomic import atomic_write_text  # noqa: E402
from minbert.plumbing.machine import autocast, machine_description, resolve_precision  # noqa: E402
from multitask.batching import BucketBatchSampler, encode_task  # noqa: E402
from multitask.model import MultitaskBert  # noqa: E402
from multitask.regularizers import RegularizerSettings, Regularizers, new_weight_average  # noqa: E402
from multitask.tasks import COURSE_TASKS, DATA_DIR, TASKS  # noqa: E402
from multitask.train import StepLoss, build_optimizer  # noqa: E402

CPU = torch.device("cpu")


def step_batches(batch_size: int, count: int) -> list[tuple[str, dict[str, torch.Tensor]]]:
    """`count` training batches as an epoch serves them: the tasks in turn, each batch bucketed by length."""
    tokenizer = load_tokenizer()
    queues = {}
    for name in COURSE_TASKS:
        spec = TASKS[name]
        dataset = encode_task(spec.read(spec.file(DATA_DIR, "train")).examples[:2000], tokenizer, spec, "cross", 128)
        indices = BucketBatchSampler(dataset.lengths(), batch_size, seed=0).batches_for(0)
        queues[name] = [dataset.batch(batch) for batch in indices]
    return [(COURSE_TASKS[i % 3], queues[COURSE_TASKS[i % 3]][i // 3]) for i in range(count)]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=8, help="profiled steps")
    p.add_argument("--warmup", type=int, default=3, help="steps before profiling starts")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--smart", action="store_true", help="SMART's adversarial and Bregman terms at their defaults")
    p.add_argument("--rows", type=int, default=25, help="operators listed")
    p.add_argument("--json", type=Path, default=None, help="also write the table here")
    args = p.parse_args(argv)
    precision = resolve_precision("auto", CPU)
    torch.manual_seed(0)
    model = MultitaskBert(BertModel.from_pretrained(None, unpad_inputs=True), COURSE_TASKS).train()
    average = new_weight_average(model, None)
    settings = RegularizerSettings(smart=args.smart)
    loss_terms = StepLoss(model, Regularizers(settings, average) if settings.any else None)
    optimizer = build_optimizer(model, 5e-5, 0.01)
    total = args.warmup + args.steps
    scheduler = warmup_linear_decay(optimizer, 1, 10 * total)
    batches = step_batches(args.batch_size, total)

    def step(number: int, task: str, batch: dict[str, torch.Tensor]) -> None:
        with autocast(CPU, precision):
            loss = sum(loss_terms(TASKS[task], batch).values())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        average.update(number, 10 * total)

    for number, (task, batch) in enumerate(batches[: args.warmup]):
        step(number, task, batch)
    started = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for number, (task, batch) in enumerate(batches[args.warmup:], start=args.warmup):
            step(number, task, batch)
    seconds = (time.perf_counter() - started) / args.steps
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    whole = sum(e.self_cpu_time_total for e in events)
    rows = [{"op": e.key, "self_ms_per_step": e.self_cpu_time_total / 1e3 / args.steps,
             "share": e.self_cpu_time_total / whole, "calls_per_step": e.count / args.steps}
            for e in events[: args.rows]]
    machine = machine_description()
    print(f"{machine}; {precision}, {torch.get_num_threads()} threads, "
          f"{'SMART' if args.smart else 'plain'} step, batch "
          f"{args.batch_size}: {seconds:.3f} s per step (under the profiler)")
    print(f"{'operator':<40} {'ms/step':>8} {'share':>6} {'calls':>6}")
    for r in rows:
        print(f"{r['op'][:40]:<40} {r['self_ms_per_step']:>8.1f} {r['share']:>6.1%} {r['calls_per_step']:>6.0f}")
    if args.json:
        record = {"command": " ".join(["python", "scripts/profile_step.py", *(argv or sys.argv[1:])]),
                  "date": time.strftime("%Y-%m-%d"), "machine": machine, "precision": precision,
                  "threads": torch.get_num_threads(),
                  "seconds_per_step": seconds, "rows": rows}
        atomic_write_text(args.json, json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
