"""How much memory one training step of the main job takes on top of the run's standing state (Linux).

    python scripts/step_memory.py                 # plain and SMART steps on the 32 longest Quora pairs
    python scripts/step_memory.py --task sst --reps 5

The step is `StepLoss` (plain, or SMART's adversarial and Bregman terms at their defaults) under
the precision `auto` picks, then backward. Before each step the heap's free pages go back to the
OS and the kernel's high-water mark of the resident set is reset (/proc/self/clear_refs), so
"step peak" is the most the step added to the resident set: its activations, gradients and
transients, with no freed memory of earlier steps to reuse. A run's peak RSS is its standing state
plus this, plus the freed memory its heap holds on to (results/README.md, "Peak memory of training").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from minbert import BertModel, load_tokenizer  # noqa: E402
from minbert.plumbing.heap import release_free_memory, resident_bytes  # noqa: E402
from minbert.plumbing.machine import autocast, machine_description, resolve_precision  # noqa: E402
from multitask.batching import encode_task  # noqa: E402
from multitask.model import MultitaskBert  # noqa: E402
from multitask.regularizers import RegularizerSettings, Regularizers, new_weight_average  # noqa: E402
from multitask.tasks import COURSE_TASKS, DATA_DIR, TASKS  # noqa: E402
from multitask.train import StepLoss  # noqa: E402

CPU = torch.device("cpu")
GIB = 2**30
HIGH_WATER = Path("/proc/self/status")
RESET_HIGH_WATER = Path("/proc/self/clear_refs")


def high_water_bytes() -> int:
    """The kernel's peak resident set of this process since the last reset (VmHWM)."""
    for line in HIGH_WATER.read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{HIGH_WATER} has no VmHWM line")


def start_measuring() -> int:
    """Return the heap's free pages, reset the high-water mark; the resident set now."""
    release_free_memory()
    RESET_HIGH_WATER.write_text("5")
    return resident_bytes()


def longest_batch(task: str, size: int, examples: int) -> dict[str, torch.Tensor]:
    """The `size` longest of the first `examples` training rows of `task`, as one batch."""
    spec = TASKS[task]
    dataset = encode_task(spec.read(spec.file(DATA_DIR, "train")).examples[:examples], load_tokenizer(), spec,
                          "cross", 128)
    lengths = dataset.lengths()
    return dataset.batch(sorted(range(len(lengths)), key=lambda i: -lengths[i])[:size])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=COURSE_TASKS, default="para")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--examples", type=int, default=3000, help="training rows the longest batch is taken from")
    p.add_argument("--reps", type=int, default=3, help="steps measured per mode")
    args = p.parse_args(argv)
    if not RESET_HIGH_WATER.exists() or resident_bytes() is None:
        p.error(f"needs Linux's {RESET_HIGH_WATER} and /proc/self/statm")
    precision = resolve_precision("auto", CPU)
    torch.manual_seed(0)
    model = MultitaskBert(BertModel.from_pretrained(None, unpad_inputs=True), COURSE_TASKS).train()
    batch = longest_batch(args.task, args.batch_size, args.examples)
    tokens = int(batch["attention_mask"].sum()) if "attention_mask" in batch else None
    print(f"{machine_description()}; {precision}, {torch.get_num_threads()} threads; {args.task}, "
          f"the {args.batch_size} longest of {args.examples} training rows"
          + (f" ({tokens} real tokens)" if tokens is not None else ""))
    print(f"{'step':<7} {'standing':>9} {'step peak':>10} {'after forward':>14}")
    for mode in ("plain", "smart"):
        settings = RegularizerSettings(smart=mode == "smart")
        loss_terms = StepLoss(model, Regularizers(settings, new_weight_average(model, None)) if settings.any else None)
        for _ in range(args.reps):
            standing = start_measuring()
            with autocast(CPU, precision):
                loss = sum(loss_terms(TASKS[args.task], batch).values())
            after_forward = high_water_bytes()
            loss.backward()
            peak = high_water_bytes()
            model.zero_grad(set_to_none=True)
            del loss
            print(f"{mode:<7} {standing / GIB:>7.2f} G {(peak - standing) / GIB:>+8.2f} G "
                  f"{(after_forward - standing) / GIB:>+12.2f} G")


if __name__ == "__main__":
    main()
