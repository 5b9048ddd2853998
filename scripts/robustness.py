"""Robustness of a saved multitask checkpoint on the dev sets: smoothness, text noise, a typo attack, calibration.

    python scripts/robustness.py --checkpoint runs/multitask/best
    python scripts/robustness.py --checkpoint runs/multitask/best --dev_limit 200 --attack_limit 100 --json rob.json

What each regulariser promises beyond accuracy (DESIGN.md, SMART): ℓ_s(f(x + δ), f(x)) at
ε = 1e-3, 1e-2, 1e-1 with δ from a 5-step attack on the input embeddings; the dev metric with
seeded typos in, or deletions of, 5% and 10% of words; accuracy under a model-aware typo attack
(≤ 2 edited words, SST and Quora); expected calibration error (SST, Quora). Everything in eval
mode on the dev sets; the same seed gives every checkpoint the same noisy text.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from minbert import CheckpointError  # noqa: E402
from minbert.plumbing.atomic import atomic_write_text  # noqa: E402
from minbert.plumbing.flags import OneLineErrorParser, add_flags, integer  # noqa: E402
from minbert.plumbing.machine import DeviceError, pick_device, resolve_precision  # noqa: E402
from multitask.checkpoint import RUN_FILE  # noqa: E402
from multitask.data import DataError  # noqa: E402
from multitask.robustness import measure_checkpoint  # noqa: E402
from multitask.robustness.measure import MEASURED_TASKS  # noqa: E402
from multitask.robustness.report import format_table, legend  # noqa: E402
from multitask.settings import RunSettings  # noqa: E402
from multitask.tasks import DATA_DIR, TASKS  # noqa: E402
from multitask.train import TrainSettings  # noqa: E402


def attack_limit(text: str) -> int | None:
    """A positive count, or 'all'."""
    return None if text == "all" else integer(1)(text)


def build_parser() -> argparse.ArgumentParser:
    p = OneLineErrorParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True,
                   help="a multitask checkpoint directory (<out_dir>/best of multitask_classifier.py)")
    p.add_argument("--data_dir", type=Path, default=DATA_DIR,
                   help="where the course's dev files are (default: the repository's data/)")
    p.add_argument("--dev_limit", type=integer(1), default=None,
                   help="N examples of each dev set, a sample fixed by their ids (default: all)")
    p.add_argument("--attack_limit", type=attack_limit, default=500,
                   help="N of those for the typo attack, or 'all' (default: 500)")
    p.add_argument("--smooth_limit", type=integer(1), default=None,
                   help="N of those for the smoothness ascent, the slowest measure (default: all)")
    p.add_argument("--seed", type=int, default=0, help="seeds the text noise, the typos and δ₀")
    add_flags(p, RunSettings, only=("device",))
    add_flags(p, TrainSettings, only=("precision",))
    # Measured in fp32 on the CPU unless asked: the measures compare models, so every one is taken alike.
    p.set_defaults(device="cpu", precision="fp32")
    p.add_argument("--json", type=Path, default=None, help="also write the measures here")
    return p


def dev_files(checkpoint: Path, data_dir: Path) -> dict[str, Path]:
    """The dev file of each task the checkpoint has a head for (among sst, para, sts)."""
    try:
        tasks = json.loads((checkpoint / RUN_FILE).read_text(encoding="utf-8"))["tasks"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{checkpoint / RUN_FILE}: cannot read the checkpoint's tasks ({err!r}); is "
                              f"{checkpoint} a multitask checkpoint written by multitask_classifier.py?") from err
    files = {task: TASKS[task].file(data_dir, "dev") for task in MEASURED_TASKS if task in tasks}
    for task, path in files.items():
        if not path.is_file():
            raise DataError(f"{path}: {task} dev file not found; point --data_dir at the course's data files")
    return files


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = build_parser().parse_args(argv)
    if not args.checkpoint.is_dir():
        sys.exit(f"error: --checkpoint {args.checkpoint}: not a directory; expected a multitask checkpoint "
                 "(<out_dir>/best, written by multitask_classifier.py)")
    started = time.perf_counter()

    def progress(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.0f}s] {message}", file=sys.stderr, flush=True)

    try:
        device = pick_device(args.device)
        args.precision = resolve_precision(args.precision, device)
        files = dev_files(args.checkpoint, args.data_dir)
        measures = measure_checkpoint(args.checkpoint, files, seed=args.seed, device=device,
                                      precision=args.precision, dev_limit=args.dev_limit,
                                      attack_limit=args.attack_limit, smooth_limit=args.smooth_limit,
                                      progress=progress)
    except (CheckpointError, DataError, DeviceError) as err:
        sys.exit(f"error: {err}")
    print(f"{args.checkpoint}: dev sets from {args.data_dir}, seed {args.seed}, "
          f"{'all' if args.dev_limit is None else args.dev_limit} dev examples per task, {args.precision}")
    print(format_table(measures))
    print(legend(list(files)))
    print(f"({time.perf_counter() - started:.0f}s)")
    if args.json is not None:
        record = {"checkpoint": str(args.checkpoint), "dev_files": {t: str(p) for t, p in files.items()},
                  "seed": args.seed, "dev_limit": args.dev_limit, "attack_limit": args.attack_limit,
                  "smooth_limit": args.smooth_limit,
                  "precision": args.precision, "measures": measures}
        # NaN (an attack success with no right answer to attack) is written as NaN, which Python's json reads.
        atomic_write_text(args.json, json.dumps(record, indent=2) + "\n")
    return measures


if __name__ == "__main__":
    main()
