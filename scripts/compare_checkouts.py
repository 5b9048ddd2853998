"""The bf16 training step of our encoder in two checkouts of this repository, timed in turn on one machine.

    git worktree add --detach ../before cee9d58
    python scripts/compare_checkouts.py ../before .            # before, after, before, after
    python scripts/compare_checkouts.py ../before . --rounds 3 --lengths 64

Each round runs every checkout in a process of its own (its own code imported), which times
`scripts/bench.py`'s training step of `minbert-bf16` (forward, cross-entropy head, backward, AdamW)
on the same real batches: the median of `--reps` steps after warm-up, per length. The table gives
the median over rounds and the speed-up of the last checkout over the first. Nothing else should
run meanwhile.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

# Run inside the checkout under test: only what its scripts/bench.py has offered since the step
# benchmark began (make_contender, realistic_batch, BATCH).
PROBE = """
import json, statistics, sys, time
sys.path[:0] = [{root!r}, {root!r} + "/scripts"]
import torch
import bench
from minbert import load_tokenizer
tokenizer = load_tokenizer()
contender = bench.make_contender("minbert-bf16")
labels = torch.zeros(bench.BATCH, dtype=torch.long)
seconds = {{}}
for length in {lengths!r}:
    batch = bench.realistic_batch(tokenizer, length)
    for _ in range(3):
        contender.train_step(batch, labels)
    times = []
    for _ in range({reps}):
        start = time.perf_counter()
        contender.train_step(batch, labels)
        times.append(time.perf_counter() - start)
    seconds[length] = statistics.median(times)
print(json.dumps(seconds))
"""


def time_checkout(root: Path, lengths: list[int], reps: int) -> dict[int, float]:
    code = PROBE.format(root=str(root.resolve()), lengths=lengths, reps=reps)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{root}: the step probe failed:\n{out.stderr.strip()[-2000:]}")
    return {int(k): v for k, v in json.loads(out.stdout.strip().splitlines()[-1]).items()}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkouts", type=Path, nargs="+", help="repository checkouts, the reference first")
    p.add_argument("--lengths", type=int, nargs="+", default=[32, 64, 128])
    p.add_argument("--reps", type=int, default=10, help="timed steps per length and round")
    p.add_argument("--rounds", type=int, default=2, help="times each checkout is run, alternating")
    args = p.parse_args(argv)
    for root in args.checkouts:
        if not (root / "scripts" / "bench.py").is_file():
            raise SystemExit(f"{root}: not a checkout of this repository (no scripts/bench.py)")
    runs: dict[Path, list[dict[int, float]]] = {root: [] for root in args.checkouts}
    for round_number in range(1, args.rounds + 1):
        for root in args.checkouts:
            started = time.perf_counter()
            runs[root].append(time_checkout(root, args.lengths, args.reps))
            print(f"round {round_number}/{args.rounds}, {root}: {time.perf_counter() - started:.0f} s", flush=True)
    reference = args.checkouts[0]
    print(f"\nmedian seconds per bf16 training step over {args.rounds} rounds (batch of 32, ~25% padding)")
    print(f"{'checkout':<30}" + "".join(f"{'len ' + str(n):>10}" for n in args.lengths)
          + "".join(f"{'x len ' + str(n):>10}" for n in args.lengths))
    for root in args.checkouts:
        medians = [statistics.median(run[n] for run in runs[root]) for n in args.lengths]
        base = [statistics.median(run[n] for run in runs[reference]) for n in args.lengths]
        print(f"{str(root)[-30:]:<30}" + "".join(f"{m:>10.3f}" for m in medians)
              + "".join(f"{b / m:>9.2f}x" for b, m in zip(base, medians)))


if __name__ == "__main__":
    main()
