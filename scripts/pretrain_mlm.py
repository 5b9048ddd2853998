"""Domain-adaptive MLM pretraining (Gururangan et al. 2020) on the course's training text, before fine-tuning.

    python scripts/pretrain_mlm.py --out_dir runs/mlm
    python multitask_classifier.py --option finetune --pretrained runs/mlm

The corpus is every sentence of the SST, Quora and STS training files and the CFIMDB training
reviews (plus any --corpus FILE, one document per line), deduplicated; a seeded 5% of it is
held out to measure the MLM loss. Dev and test files are never read. <out_dir> ends up as a
Hugging Face BERT directory with the MLM head as cls.predictions.*, written in one swap.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from minbert import CheckpointError, load_tokenizer  # noqa: E402
from minbert.corpus import dedupe, split_held_out, tokenise_and_pack  # noqa: E402
from minbert.hub import resolve_checkpoint_dir  # noqa: E402
from minbert.masking import MaskingVocab  # noqa: E402
from minbert.mlm import BertForMaskedLM  # noqa: E402
from minbert.mlm_training import MLMSettings, MLMTrainer, MLMTrainingAborted  # noqa: E402
from minbert.plumbing.atomic import atomic_write_text, replaced_directory  # noqa: E402
from minbert.plumbing.flags import (DefaultsHelpFormatter, OneLineErrorParser, add_flags,  # noqa: E402
                                    from_flags, integer, number, seed)
from minbert.plumbing.machine import (DeviceError, allow_tf32, pick_device, precision_choice,  # noqa: E402
                                      seed_everything)
from minbert.plumbing.progress import DEFAULT_INTERVAL, show_progress  # noqa: E402
from multitask.corpus import pretraining_texts, training_files  # noqa: E402
from multitask.data import DataError  # noqa: E402
from multitask.model import ModelSettings  # noqa: E402
from multitask.settings import RunSettings  # noqa: E402
from multitask.tasks import DATA_DIR  # noqa: E402

METRICS_FILE = "mlm_metrics.jsonl"
RUN_FILE = "pretrain_run.json"

log = logging.getLogger("pretrain_mlm")


class HelpFormatter(argparse.RawDescriptionHelpFormatter, DefaultsHelpFormatter):
    """Keeps the usage examples' line breaks and shows every flag's default."""


def build_parser() -> argparse.ArgumentParser:
    p = OneLineErrorParser(description=__doc__, formatter_class=HelpFormatter)
    add_flags(p, ModelSettings, only=("pretrained",))  # the encoder to start from
    p.add_argument("--out_dir", type=Path, default=Path("runs/mlm"), help="where the adapted model goes")
    p.add_argument("--data_dir", type=Path, default=DATA_DIR, help="directory of the course CSV files")
    p.add_argument("--corpus", type=Path, action="append", default=[],
                   help="extra text, one document per line (repeatable)")
    p.add_argument("--held_out", type=number(0.0, 1.0, low_open=True, high_open=True), default=0.05, help="fraction of documents held out for evaluation")
    p.add_argument("--split_seed", type=seed, default=0,
                   help="seed of the held-out split (kept apart from --seed so runs share one held-out set)")
    p.add_argument("--max_length", type=integer(8), default=128, help="tokens per packed row, [CLS] included")
    add_flags(p, RunSettings, only=("device",))
    # The optimisation flags come from MLMSettings, where their defaults are written.
    add_flags(p.add_mutually_exclusive_group(), MLMSettings, only=("max_steps", "epochs"))
    add_flags(p, MLMSettings, exclude=("max_steps", "epochs"))
    return p


def report(line: str) -> None:
    """Print above the bar, if any, and flush: redirected to a file, stdout would hold the line back."""
    tqdm.write(line)
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> list[dict]:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return run(args)
    except (CheckpointError, DataError, DeviceError, MLMTrainingAborted, FileNotFoundError, ValueError) as err:
        sys.exit(f"error: {err}")


def run(args: argparse.Namespace) -> list[dict]:
    started = time.perf_counter()
    device = pick_device(args.device)
    settings = from_flags(MLMSettings, args)
    settings.precision, why = precision_choice(settings.precision, device)
    allow_tf32(device)
    log.info("precision: %s (%s)", settings.precision, why)
    seed_everything(settings.seed)
    # A Hub id is resolved once: the tokenizer, the model and the saved copy read the same snapshot.
    source = None if args.pretrained is None else resolve_checkpoint_dir(args.pretrained)
    tokenizer = load_tokenizer(source)
    texts = pretraining_texts(args.data_dir, args.corpus)
    documents = dedupe(texts)
    train_docs, held_docs = split_held_out(documents, args.held_out, args.split_seed)
    train = tokenise_and_pack(train_docs, tokenizer, args.max_length)
    held_out = tokenise_and_pack(held_docs, tokenizer, args.max_length)
    log.info("corpus: %d texts from %s, %d after removing duplicates; %d train / %d held-out documents",
             len(texts), ", ".join(str(p) for _, p in training_files(args.data_dir)) + "".join(
                 f", {p}" for p in args.corpus), len(documents), len(train_docs), len(held_docs))
    log.info("packed into rows of %d: train %d rows (%d tokens, %.2f%% padding), held-out %d rows "
             "(%d tokens, %.2f%% padding)", args.max_length, len(train), train.tokens,
             100 * train.padding_fraction, len(held_out), held_out.tokens, 100 * held_out.padding_fraction)

    # Packed rows have padding only in the very last row, so skipping pad positions saves
    # nothing measurable here; it is on so that last row costs no more than its real tokens.
    model = BertForMaskedLM.from_pretrained(source, unpad_inputs=True)
    if args.max_length > model.config.max_position_embeddings:
        raise ValueError(f"--max_length {args.max_length} exceeds the model's "
                         f"{model.config.max_position_embeddings} positions")
    if model.head_from_checkpoint:
        log.info("MLM head loaded from the checkpoint's cls.predictions tensors")
    else:
        log.info("the checkpoint has no MLM head (cls.predictions.*): it starts from BERT's initialisation")
    trainer = MLMTrainer(model, MaskingVocab.from_tokenizer(tokenizer), train, held_out, settings, device)
    log.info("%d updates of %d rows (%.2f passes over the training rows)", trainer.total, settings.batch_size,
             trainer.total * settings.batch_size / len(train))

    metrics = args.out_dir / METRICS_FILE
    # A bar at a terminal; in a log file (or under CI) a progress line now and then instead.
    drawn = show_progress()
    history = trainer.train(metrics, progress=(lambda total: tqdm(total=total, desc="mlm")) if drawn else None,
                            report=report, progress_lines=None if drawn else DEFAULT_INTERVAL)
    with replaced_directory(args.out_dir) as staging:
        model.save_pretrained(staging, tokenizer_from=source)
        os.replace(metrics, staging / METRICS_FILE)
        run_record = {"settings": {**vars(args), "precision": settings.precision},
                      "total_steps": trainer.total, "head_from_checkpoint": model.head_from_checkpoint,
                      "corpus": {"texts": len(texts), "documents": len(documents), "train_documents": len(train_docs),
                                 "held_out_documents": len(held_docs), "train_rows": len(train),
                                 "train_tokens": train.tokens, "held_out_rows": len(held_out),
                                 "held_out_tokens": held_out.tokens, "train_padding": train.padding_fraction},
                      "first_eval": history[0], "last_eval": history[-1]}
        atomic_write_text(staging / RUN_FILE, json.dumps(run_record, indent=2, default=str) + "\n")
    first, last = history[0]["eval_loss"], history[-1]["eval_loss"]
    print(f"held-out MLM loss {first:.4f} -> {last:.4f} (perplexity {history[0]['eval_perplexity']:.2f} -> "
          f"{history[-1]['eval_perplexity']:.2f}) in {(time.perf_counter() - started) / 60:.1f} min; "
          f"saved {args.out_dir}", flush=True)
    return history


if __name__ == "__main__":
    main()
