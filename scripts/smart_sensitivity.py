"""How large SMART's adversarial term and R3F's noise term are, per task, as the radius ε grows.

    python scripts/smart_sensitivity.py                          # packaged MiniLM, fresh heads
    python scripts/smart_sensitivity.py --checkpoint runs/multitask/best --json results/sens.json

In training mode (dropout on) with shared dropout masks, as a training step computes them, for
each task, precision (fp32, bf16 autocast) and ε of a log grid: the mean adversarial term
ℓ_s(f(x + δ*), f(x)) with δ* from the ascent step, the R3F term ℓ_s(f(x + δ), f(x)) with random δ,
and two references that do not depend on ε: the δ = 0 floor with shared masks (0 when the masks
are really shared and f is deterministic) and the value with independent masks at δ = 0 (the
dropout disagreement R-Drop measures). δ is added after the embedding LayerNorm, where entries
are of order 1. The ascent step η and starting noise σ scale with ε (--step_ratio, --sigma_ratio;
their defaults are the training defaults, η = 100·ε and σ = ε), and the ascent runs in fp32 as in
training (--ascent_precision).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from minbert import BertModel, load_tokenizer  # noqa: E402
from minbert.dropout import DropoutReplay  # noqa: E402
from minbert.plumbing.atomic import atomic_write_text  # noqa: E402
from minbert.plumbing.machine import autocast  # noqa: E402
from multitask.batching import EncodedTask, encode_task  # noqa: E402
from multitask.checkpoint import load_checkpoint  # noqa: E402
from multitask.model import MultitaskBert  # noqa: E402
from multitask.regularizers import STEP_PER_EPS  # noqa: E402
from multitask.tasks import COURSE_TASKS, DATA_DIR, TASKS  # noqa: E402
from smart import divergence, r3f_loss, smoothness_loss  # noqa: E402

EPS_GRID = (1e-5, 1e-4, 1e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)


def batch_terms(model: MultitaskBert, task: str, batch: dict[str, torch.Tensor], eps_grid: tuple[float, ...],
                step_ratio: float, sigma_ratio: float, seed: int, ascent_in_fp32: bool = True) -> dict:
    """Every term for one batch, each from the same dropout masks (the stream is reseeded first)."""
    spec = TASKS[task]
    kind = spec.kind
    torch.manual_seed(seed)
    embeddings, mask = model.embed(spec, batch)
    masks = DropoutReplay(embeddings.device)
    clean = model.predict_from_embeddings(spec, embeddings, mask)

    def fn(perturbed: torch.Tensor) -> torch.Tensor:
        return model.predict_from_embeddings(spec, perturbed, mask)

    shared = masks.wrap(fn)
    result = {"floor_shared": divergence(kind, shared(embeddings), clean).item(),
              "floor_independent": divergence(kind, fn(embeddings), clean).item(),
              "adversarial": [], "r3f": []}
    for eps in eps_grid:
        result["adversarial"].append(smoothness_loss(shared, embeddings, clean, kind, eps=eps,
                                                     sigma=eps * sigma_ratio, step_size=eps * step_ratio,
                                                     steps=1, mask=mask, ascent_in_fp32=ascent_in_fp32).item())
        result["r3f"].append(r3f_loss(shared, embeddings, clean, kind, eps=eps, mask=mask).item())
    return result


def measure(model: MultitaskBert, datasets: dict[str, EncodedTask], eps_grid: tuple[float, ...],
            precision: str, batch_size: int = 16, step_ratio: float = STEP_PER_EPS, sigma_ratio: float = 1.0,
            seed: int = 0, ascent_in_fp32: bool = True) -> dict[str, dict]:
    """Per task: mean of each term over the batches, in training mode, at this precision."""
    model.train()
    device = next(model.parameters()).device
    out = {}
    for task, dataset in datasets.items():
        sums: dict = {}
        batches = [list(range(i, min(i + batch_size, len(dataset)))) for i in range(0, len(dataset), batch_size)]
        for number, indices in enumerate(batches):
            batch = {k: v.to(device) for k, v in dataset.batch(indices).items()}
            with torch.no_grad(), autocast(device, precision):
                terms = batch_terms(model, task, batch, eps_grid, step_ratio, sigma_ratio, seed + number,
                                    ascent_in_fp32)
            for key, value in terms.items():
                if isinstance(value, list):
                    sums[key] = [a + b for a, b in zip(sums.get(key, [0.0] * len(value)), value)]
                else:
                    sums[key] = sums.get(key, 0.0) + value
        out[task] = {key: [v / len(batches) for v in value] if isinstance(value, list) else value / len(batches)
                     for key, value in sums.items()}
    return out


def format_table(results: dict, eps_grid: tuple[float, ...]) -> str:
    header = "| precision | task | term | " + " | ".join(f"ε={e:g}" for e in eps_grid) + " | δ=0 shared | δ=0 independent |"
    lines = [header, "|" + "---|" * (len(eps_grid) + 5)]
    for precision, per_task in results.items():
        for task, terms in per_task.items():
            for term in ("adversarial", "r3f"):
                values = " | ".join(f"{v:.2e}" for v in terms[term])
                lines.append(f"| {precision} | {task} | {term} | {values} | {terms['floor_shared']:.1e} | "
                             f"{terms['floor_independent']:.2e} |")
    return "\n".join(lines)


def load_model(checkpoint: Path | None, seed: int) -> tuple[MultitaskBert, Path | None]:
    """A checkpoint's model, or the packaged encoder with freshly initialised heads."""
    if checkpoint is not None:
        model, _ = load_checkpoint(checkpoint, unpad_inputs=True)
        return model, checkpoint
    torch.manual_seed(seed)
    return MultitaskBert(BertModel.from_pretrained(None, unpad_inputs=True), COURSE_TASKS), None


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="a multitask checkpoint directory (default: the packaged MiniLM with fresh heads)")
    p.add_argument("--examples", type=int, default=64, help="training examples per task")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--eps", default=",".join(f"{e:g}" for e in EPS_GRID), help="comma-separated radii")
    p.add_argument("--step_ratio", type=float, default=STEP_PER_EPS, help="ascent step η as a multiple of ε")
    p.add_argument("--sigma_ratio", type=float, default=1.0, help="starting noise σ as a multiple of ε")
    p.add_argument("--ascent_precision", choices=("fp32", "compute"), default="fp32",
                   help="the ascent's precision under bf16 (--smart_ascent_precision)")
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args(argv)
    eps_grid = tuple(float(e) for e in args.eps.split(","))
    model, checkpoint = load_model(args.checkpoint, args.seed)
    tokenizer = load_tokenizer(checkpoint)
    datasets = {}
    for task in model.tasks:
        spec = TASKS[task]
        examples = spec.read(spec.file(DATA_DIR, "train")).examples[: args.examples]
        datasets[task] = encode_task(examples, tokenizer, spec, model.pair_encoding, 128)
    started = time.perf_counter()
    results = {precision: measure(model, datasets, eps_grid, precision, args.batch_size, args.step_ratio,
                                  args.sigma_ratio, args.seed, args.ascent_precision == "fp32")
               for precision in args.precisions.split(",")}
    print(format_table(results, eps_grid))
    print(f"({time.perf_counter() - started:.0f}s; {args.examples} training examples per task, training mode, "
          f"η = {args.step_ratio:g}·ε, σ = {args.sigma_ratio:g}·ε, ascent in {args.ascent_precision})")
    if args.json is not None:
        record = {"command": " ".join(["python", "scripts/smart_sensitivity.py", *(argv or sys.argv[1:])]),
                  "date": time.strftime("%Y-%m-%d"), "checkpoint": str(checkpoint) if checkpoint else "packaged",
                  "eps": list(eps_grid), "step_ratio": args.step_ratio, "sigma_ratio": args.sigma_ratio,
                  "ascent_precision": args.ascent_precision,
                  "examples": args.examples, "results": results}
        atomic_write_text(args.json, json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
