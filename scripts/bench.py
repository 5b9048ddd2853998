"""Speed benchmark, side by side in one run: our encoder vs transformers.BertModel in fp32 and bf16, and SMART/R3F/R-Drop vs plain.

Every contender runs on the same weights and the same batches, interleaved, and the median of
`--reps` timed repetitions after warm-up is reported, so machine noise hits all alike. bf16 is
autocast (fp32 weights) for both implementations.

    python scripts/bench.py                    # the full table
    python scripts/bench.py --quick            # fewer lengths and repetitions, to check it runs
    python scripts/bench.py --json results/bench.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from unittest import mock

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import minbert.dropout  # noqa: E402
import minbert.lookup  # noqa: E402
import minbert.model  # noqa: E402
from minbert import BertModel, load_tokenizer  # noqa: E402
from minbert.hub import default_checkpoint_dir  # noqa: E402
from minbert.optimizer import AdamW  # noqa: E402
from minbert.plumbing.machine import autocast, machine_description, resolve_precision  # noqa: E402
from multitask.batching import compare_padding, encode_task  # noqa: E402
from multitask.model import MultitaskBert  # noqa: E402
from multitask.regularizers import RegularizerSettings, Regularizers, new_weight_average  # noqa: E402
from multitask.tasks import CFIMDB, DATA_DIR, PARA, SST, STS  # noqa: E402
from multitask.throughput import matmul_peak  # noqa: E402
from multitask.train import StepLoss  # noqa: E402

BATCH = 32
# SMART with T = 1 and the teacher: clean fwd+bwd (3F), noisy fwd (F), backward to δ only (≈F: no
# weight gradients), adversarial fwd+bwd (3F), teacher fwd (F) = 9F against plain's 3F; the fp32
# ascent adds the clean forward its objective is taken against (F, in fp32). R3F and R-Drop: a
# second fwd+bwd, 6F.
FLOP_RATIO = {"plain": 1.0, "plain+ema": 1.0, "plain-torch-dropout": 1.0, "plain-torch-lookup": 1.0,
              "smart": 10 / 3, "smart-redrawn-masks": 10 / 3, "smart-compute-ascent": 9 / 3, "r3f": 6 / 3,
              "rdrop": 6 / 3}
CPU = torch.device("cpu")


def realistic_batch(tokenizer, length: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """32 real inputs (SST sentences, CFIMDB reviews, Quora and STS pairs) padded to `length`, ~25% of positions padding.

    Lengths are drawn uniformly from [length/2, length] (mean 3/4 of the grid) and the longest
    sets the padded width, as in a batch of real sentences of mixed length.
    """
    texts = [e.text for e in SST.read(SST.file(DATA_DIR, "train")).examples]
    texts += [e.text for e in CFIMDB.read(CFIMDB.file(DATA_DIR, "train")).examples]  # reviews: the long inputs
    pairs = [(e.text_a, e.text_b) for e in PARA.read(PARA.file(DATA_DIR, "train")).examples[:6000]]
    pairs += [(e.text_a, e.text_b) for e in STS.read(STS.file(DATA_DIR, "train")).examples]
    ids, types = tokenizer.encode_lists(texts, max_length=length)
    pair_ids, pair_types = tokenizer.encode_lists([a for a, _ in pairs], [b for _, b in pairs], max_length=length)
    pool = list(zip(ids + pair_ids, types + pair_types))
    lengths = np.array([len(x) for x, _ in pool])
    rng = np.random.default_rng(seed)
    chosen = []
    for target in np.linspace(length // 2, length, BATCH).round().astype(int):
        candidates = np.flatnonzero(lengths >= target)
        # A longer example cut to the target length keeps the content real.
        i = rng.choice(candidates)
        chosen.append((pool[i][0][:target - 1] + [tokenizer.sep_id], pool[i][1][:target]))
    return tokenizer.pad([c[0] for c in chosen], [c[1] for c in chosen])


def forward_flops(config, attention_mask: torch.Tensor) -> float:
    """Model FLOPs of one forward pass on the real tokens: dense layers plus attention scores."""
    h, inter, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    real = attention_mask.sum(1).double()
    dense_per_token = 2 * (4 * h * h + 2 * h * inter)
    attention = 4 * h * (real ** 2).sum()
    return float(layers * (dense_per_token * real.sum() + attention))


class Contender:
    """One implementation at one precision: a model, a linear head on its pooled output, an optimiser."""

    def __init__(self, name: str, model: torch.nn.Module, optimizer_class, precision: str) -> None:
        torch.manual_seed(0)
        self.name, self.model, self.precision = f"{name}-{precision}", model, precision
        self.head = torch.nn.Linear(model.config.hidden_size, 5)
        params = list(model.parameters()) + list(self.head.parameters())
        self.optimizer = optimizer_class(params, lr=5e-5, weight_decay=0.01)

    def pooled(self, batch) -> torch.Tensor:
        out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         token_type_ids=batch["token_type_ids"])
        return out["pooler_output"] if isinstance(out, dict) else out.pooler_output

    def train_step(self, batch, labels) -> None:
        self.model.train()
        with autocast(CPU, self.precision):
            logits = self.head(self.pooled(batch))
        F.cross_entropy(logits.float(), labels).backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    @torch.no_grad()
    def infer(self, batch) -> None:
        self.model.eval()
        with autocast(CPU, self.precision):
            self.head(self.pooled(batch))


def make_contender(impl: str) -> Contender:
    """`minbert-<precision>` (packed real tokens, our AdamW) or `hf-<sdpa|eager>-<precision>` (transformers.BertModel)."""
    name, precision = impl.rsplit("-", 1)
    if name == "minbert":
        return Contender(name, BertModel.from_pretrained(unpad_inputs=True), AdamW, precision)
    import transformers
    attention = name.removeprefix("hf-")
    model = transformers.BertModel.from_pretrained(str(default_checkpoint_dir()), attn_implementation=attention)
    return Contender(name, model, torch.optim.AdamW, precision)


def interleaved(functions: dict[str, callable], reps: int, warmup: int = 2) -> dict[str, float]:
    """Median seconds per call of each function, calls interleaved round by round."""
    for _ in range(warmup):
        for fn in functions.values():
            fn()
    times = {name: [] for name in functions}
    for _ in range(reps):
        for name, fn in functions.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def encoder_impls(include_eager: bool) -> list[str]:
    names = ("minbert", "hf-sdpa", "hf-eager")[: 3 if include_eager else 2]
    return [f"{name}-{precision}" for precision in ("fp32", "bf16") for name in names]


def encoder_table(tokenizer, lengths, reps, include_eager, peaks: dict[str, float]) -> list[dict]:
    rows = []
    models = [make_contender(impl) for impl in encoder_impls(include_eager)]
    for length in lengths:
        batch = realistic_batch(tokenizer, length)
        labels = torch.randint(0, 5, (BATCH,), generator=torch.Generator().manual_seed(0))
        flops = forward_flops(models[0].model.config, batch["attention_mask"])
        padding = 1 - batch["attention_mask"].float().mean().item()
        for mode in ("train", "infer"):
            if mode == "train":
                fns = {c.name: (lambda c=c: c.train_step(batch, labels)) for c in models}
            else:
                fns = {c.name: (lambda c=c: c.infer(batch)) for c in models}
            seconds = interleaved(fns, reps)
            work = 3 * flops if mode == "train" else flops
            for c in models:
                s = seconds[c.name]
                rows.append({"length": length, "mode": mode, "impl": c.name, "precision": c.precision,
                             "seconds": s, "sentences_per_s": BATCH / s,
                             # against transformers at the same precision, and against our own fp32
                             "speedup_vs_hf_sdpa": seconds[f"hf-sdpa-{c.precision}"] / s,
                             "speedup_vs_own_fp32": seconds[c.name.replace(c.precision, "fp32")] / s,
                             "fraction_of_peak": work / s / 1e9 / peaks[c.precision], "padding": padding})
    return rows


# Each regularised method as (regulariser settings or None, whether a weight average is kept
# beside it). SMART's Bregman teacher is itself the weight average, as in training.
REGULARISED = {"plain": (None, False), "plain+ema": (None, True), "plain-torch-dropout": (None, False),
               "plain-torch-lookup": (None, False),
               "smart": (RegularizerSettings(smart=True), False),
               "smart-redrawn-masks": (RegularizerSettings(smart=True), False),
               # The ascent in the run's precision instead of fp32 (--smart_ascent_precision compute).
               "smart-compute-ascent": (RegularizerSettings(smart=True, smart_ascent_precision="compute"), False),
               "r3f": (RegularizerSettings(r3f=True), False),
               "rdrop": (RegularizerSettings(rdrop=True), False)}
# The regularised steps run at the precision training picks on this machine.
STEP_PRECISION = resolve_precision("auto", CPU)


@contextmanager
def torch_dropout() -> Iterator[None]:
    """torch's own CPU dropout masks instead of minbert's 16-bit ones."""
    def torch_masks(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
        return F.dropout(x, p, training=training)

    # The dropout modules call minbert.dropout's name, attention minbert.model's.
    with mock.patch.object(minbert.dropout, "dropout", torch_masks), mock.patch.object(minbert.model, "dropout",
                                                                                          torch_masks):
        yield


def torch_lookup() -> AbstractContextManager:
    """torch's embedding backward (a fresh zero gradient table every step) instead of minbert/lookup.py's."""
    return mock.patch.object(minbert.lookup.Embedding, "forward", torch.nn.Embedding.forward)


def redrawn_masks() -> AbstractContextManager:
    """Replayed passes draw their masks again from the restored generator state instead of taking the recorded ones."""
    return mock.patch.object(minbert.dropout, "_next_mask", minbert.dropout.drop_mask)


# The A/B rows: each undoes one change of the step, so its cost reads against plain (or SMART).
UNDONE = {"plain-torch-dropout": torch_dropout, "plain-torch-lookup": torch_lookup,
          "smart-redrawn-masks": redrawn_masks}


def regularised_batch(tokenizer, length: int) -> dict[str, torch.Tensor]:
    batch = realistic_batch(tokenizer, length, seed=1)
    batch["labels"] = torch.randint(0, 5, (BATCH,), generator=torch.Generator().manual_seed(0))
    return batch


def regularised_step(method: str, batch: dict[str, torch.Tensor]):
    """One multitask training step (SST head) of a method, as a closure: forward, terms, backward, update."""
    settings, keeps_average = REGULARISED[method]
    torch.manual_seed(0)
    model = MultitaskBert(BertModel.from_pretrained(unpad_inputs=True), ("sst",))
    average = new_weight_average(model, None) if keeps_average or (settings and settings.needs_average) else None
    regs = Regularizers(settings, average) if settings else None
    optimizer = AdamW(model.parameters(), lr=5e-5)
    loss_terms = StepLoss(model, regs)

    def step():
        model.train()
        with autocast(CPU, STEP_PRECISION), UNDONE.get(method, nullcontext)():
            loss = sum(loss_terms(SST, batch).values())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if average is not None:
            average.update(0, 100)
    return step


def regulariser_table(tokenizer, length: int, reps: int) -> list[dict]:
    """Plain fine-tuning (with and without the weight average) vs SMART, R3F and R-Drop, on one SST batch."""
    batch = regularised_batch(tokenizer, length)
    seconds = interleaved({method: regularised_step(method, batch) for method in REGULARISED}, reps)
    return [{"method": name, "length": length, "seconds": s, "ratio_to_plain": s / seconds["plain"],
             "ratio_to_plain_ema": s / seconds["plain+ema"], "flop_ratio": FLOP_RATIO[name],
             "ratio_over_flop_ratio": s / seconds["plain"] / FLOP_RATIO[name]}
            for name, s in seconds.items()]


def padding_table(tokenizer) -> list[dict]:
    rows = []
    for spec in (SST, PARA, STS):
        dataset = encode_task(spec.read(spec.file(DATA_DIR, "train")).examples, tokenizer, spec)
        report = compare_padding(dataset, BATCH)
        rows.append({"task": spec.name, "bucketed": report.bucketed, "random": report.random})
    return rows


def memory_probe(impl: str, length: int) -> None:
    """Child process: RSS (MiB) before and at the peak of three training steps of one contender
    (an encoder implementation or a regularised method), as JSON."""
    tokenizer = load_tokenizer()
    if impl in REGULARISED:
        train_step = regularised_step(impl, regularised_batch(tokenizer, length))
    else:
        batch, contender = realistic_batch(tokenizer, length), make_contender(impl)
        labels = torch.zeros(BATCH, dtype=torch.long)

        def train_step():
            contender.train_step(batch, labels)
    before = status_mib("VmRSS")
    # Reset the kernel's high-water mark so loading the data and model does not count as the peak.
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    for _ in range(3):
        train_step()
    peak = status_mib("VmHWM")
    print(json.dumps({"rss_before_mib": before, "peak_rss_mib": peak}))


def status_mib(field: str) -> float:
    """A memory figure of this process from /proc/self/status, in MiB."""
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def memory_table(impls, length: int) -> list[dict]:
    rows = []
    for impl in impls:
        out = subprocess.run([sys.executable, __file__, "--memory-probe", impl, str(length)],
                             capture_output=True, text=True, check=True)
        rows.append({"impl": impl, "length": length, **json.loads(out.stdout.strip().splitlines()[-1])})
    return rows


def print_report(report: dict) -> None:
    peaks = report["matmul_peak_gflops"]
    print(f"\nmachine: {report['machine']}; torch {report['torch']}, {report['threads']} threads; "
          f"matmul peak fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} GFLOP/s")
    print(f"\nencoder, batch {BATCH} of real inputs (~25% padding); median seconds per call; bf16 = autocast")
    print(f"{'len':>4} {'mode':>5} {'impl':>14} {'seconds':>8} {'sent/s':>7} {'vs hf-sdpa':>10} {'vs own fp32':>11} "
          f"{'of peak':>8}")
    for r in report["encoder"]:
        print(f"{r['length']:>4} {r['mode']:>5} {r['impl']:>14} {r['seconds']:>8.3f} {r['sentences_per_s']:>7.1f} "
              f"{r['speedup_vs_hf_sdpa']:>9.2f}x {r['speedup_vs_own_fp32']:>10.2f}x {r['fraction_of_peak']:>8.0%}")
    print("\npeak RSS over 3 training steps, one process per implementation (model and data loaded before)")
    for r in report["memory"]:
        print(f"  {r['impl']:>14} len {r['length']}: peak {r['peak_rss_mib']:.0f} MiB, "
              f"{r['peak_rss_mib'] - r['rss_before_mib']:.0f} MiB above the loaded model")
    print("\npadding share of computed tokens over one epoch, batch 32")
    for r in report["padding"]:
        print(f"  {r['task']:>5}: bucketed {r['bucketed']:.1%}   random batches {r['random']:.1%}")
    print(f"\nregularised fine-tuning step (multitask model, SST head, {report['step_precision']}), median seconds; "
          "peak RSS over 3 steps")
    print(f"{'method':>20} {'seconds':>8} {'x plain':>8} {'x plain+ema':>11} {'FLOP ratio':>10} {'measured/FLOP':>13} "
          f"{'peak MiB':>8} {'above plain':>11}")
    peaks = {r["impl"]: r["peak_rss_mib"] for r in report["regulariser_memory"]}
    for r in report["regularisers"]:
        print(f"{r['method']:>20} {r['seconds']:>8.3f} {r['ratio_to_plain']:>7.2f}x {r['ratio_to_plain_ema']:>10.2f}x "
              f"{r['flop_ratio']:>9.1f}x {r['ratio_over_flop_ratio']:>13.2f} {peaks[r['method']]:>8.0f} "
              f"{peaks[r['method']] - peaks['plain']:>+11.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--no-eager", action="store_true", help="skip transformers' eager attention")
    parser.add_argument("--quick", action="store_true", help="length 32 only, 3 repetitions")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--memory-probe", nargs=2, metavar=("IMPL", "LENGTH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_probe:
        memory_probe(args.memory_probe[0], int(args.memory_probe[1]))
        return
    if args.quick:
        args.lengths, args.reps = [32], 3
    import logging
    logging.getLogger("transformers").setLevel(logging.ERROR)
    tokenizer = load_tokenizer()
    peaks = {precision: matmul_peak(CPU, precision, seconds=2.0) / 1e9 for precision in ("fp32", "bf16")}
    impls = encoder_impls(not args.no_eager)
    regularised_length = 64 if 64 in args.lengths else args.lengths[0]
    report = {"machine": f"{machine_description()}, {torch.get_num_threads()} threads",
              "date": time.strftime("%Y-%m-%d"), "command": " ".join(["python", "scripts/bench.py", *sys.argv[1:]]),
              "torch": torch.__version__, "threads": torch.get_num_threads(), "matmul_peak_gflops": peaks,
              "step_precision": STEP_PRECISION,
              "encoder": encoder_table(tokenizer, args.lengths, args.reps, not args.no_eager, peaks),
              "memory": memory_table(impls, max(args.lengths)),
              "padding": padding_table(tokenizer),
              "regularisers": regulariser_table(tokenizer, regularised_length, args.reps),
              "regulariser_memory": memory_table(list(REGULARISED), regularised_length)}
    print_report(report)
    if args.json:
        from minbert.plumbing.atomic import atomic_write_text
        atomic_write_text(args.json, json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
