"""Command line of multitask_classifier.py: train on SST, Quora and STS (and optionally CFIMDB) together, write course predictions."""

from __future__ import annotations

import argparse
import dataclasses
import gc
import logging
import sys
import time
from pathlib import Path

import torch

from minbert import BertModel, CheckpointError, load_tokenizer
from minbert.config import BertConfig
from minbert.flags import (DefaultsHelpFormatter, OneLineErrorParser, integer, non_negative, non_negative_int,
                           positive, positive_int, probability, seed)
from minbert.memory import release_free_memory
from minbert.paths import resolve_checkpoint_dir
from minbert.precision import PRECISION_HELP, PRECISIONS, resolve_precision
from multitask.batching import encode_task
from multitask.checkpoint import load_checkpoint, save_checkpoint
from multitask.data import DataError
from multitask.distributed import (DistributedError, dump_final_state, global_batch_size, make_trainer,
                                   reseed_ranks_after_resume, start, stop)
from multitask.evaluate import predict
from multitask.model import PAIR_ENCODINGS, POOLINGS, MultitaskBert
from multitask.predictions import prediction_path, write_predictions
from multitask.regularizers import DROPOUT_MODES, RegularizerSettings, Regularizers, mean_teacher
from multitask.resume import STATE_DIR, RunState, position, run_fingerprint
from multitask.runtime import DeviceError, is_main_process, seed_everything
from multitask.schedule import SCHEDULES
from multitask.tasks import COURSE_TASKS, SPLITS, TASKS, parse_task_names
from multitask.train import TrainingAborted, TrainSettings, format_epoch
from smart import MeanTeacher

DATA = Path(__file__).resolve().parent.parent / "data"
DEFAULT_LR = {"pretrain": 1e-3, "finetune": 5e-5}
R = RegularizerSettings  # the regularisers' defaults live there
# Room for [CLS] a [SEP] b [SEP] with a word piece or two of each sentence.
MIN_LENGTH = 8

log = logging.getLogger("multitask")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineErrorParser(prog="multitask_classifier.py", description=__doc__, formatter_class=DefaultsHelpFormatter)
    p.add_argument("--option", choices=("pretrain", "finetune"), default="pretrain",
                   help="pretrain: train the heads on a frozen encoder; finetune: train everything")
    p.add_argument("--epochs", type=positive_int, default=TrainSettings.epochs)
    p.add_argument("--lr", type=positive, default=None,
                   help=f"learning rate (default {DEFAULT_LR['pretrain']} for pretrain, {DEFAULT_LR['finetune']} for finetune)")
    p.add_argument("--head_lr", type=positive, default=None,
                   help="learning rate of the task heads (default: the same as --lr)")
    p.add_argument("--batch_size", type=positive_int, default=32, help="examples per step in each process")
    p.add_argument("--global_batch_size", type=positive_int, default=None,
                   help="examples per step over all torchrun processes, split evenly between them "
                        "(default: --batch_size × processes)")
    p.add_argument("--hidden_dropout_prob", type=probability, default=0.1)
    p.add_argument("--seed", type=seed, default=11711)
    p.add_argument("--use_gpu", action="store_true", help="train on CUDA (same as --device cuda)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--precision", choices=PRECISIONS, default="auto", help=PRECISION_HELP)
    for name, task in TASKS.items():
        for split in SPLITS:
            p.add_argument(f"--{name}_{split}", type=Path, default=task.file(DATA, split))
    for name in TASKS:
        for split in ("dev", "test"):
            p.add_argument(f"--{name}_{split}_out", type=Path, default=prediction_path("predictions", name, split))
    p.add_argument("--pretrained", type=Path, default=None,
                   help="Hugging Face style BERT directory (default: the packaged all-MiniLM-L6-v2)")
    p.add_argument("--tasks", default=",".join(COURSE_TASKS),
                   help=f"comma-separated tasks to train, from {','.join(TASKS)} (cfimdb: the course's binary "
                        "movie-review sentiment, an optional fourth task)")
    p.add_argument("--train_limit", type=positive_int, default=None, help="at most N training examples per task")
    p.add_argument("--max_length", type=integer(MIN_LENGTH), default=128,
                   help="tokens per (joint) input, longer ones truncated")
    p.add_argument("--pooling", choices=POOLINGS, default="mean",
                   help="sentence vector: mean of the last layer over real tokens, or the [CLS] pooler output")
    p.add_argument("--pair_encoding", choices=PAIR_ENCODINGS, default="cross")
    p.add_argument("--schedule", choices=SCHEDULES, default="round_robin")
    p.add_argument("--no_pair_swap", action="store_true",
                   help="keep each pair's sentences in the order read; by default a training pair is shown "
                        "in a random order and a pair's prediction averages both orders")
    p.add_argument("--grad_accum", type=positive_int, default=1)
    p.add_argument("--weight_decay", type=non_negative, default=0.01)
    p.add_argument("--eval_batch_size", type=positive_int, default=128)
    p.add_argument("--max_bad_steps", type=non_negative_int, default=20, help="abort after this many non-finite losses")
    p.add_argument("--no_ema", action="store_true",
                   help="score and keep the trained weights themselves, not their moving average (see README)")
    reg = p.add_argument_group(
        "regularisers (each off unless its switch is given; a *_tasks flag narrows a switched-on term "
        "to some tasks' steps; all need --option finetune)")
    reg.add_argument("--smart", action="store_true",
                     help="SMART: the adversarial smoothness term and the Bregman proximal point (mean teacher)")
    reg.add_argument("--no_adversarial", action="store_true", help="with --smart: drop the adversarial term")
    reg.add_argument("--no_bregman", action="store_true", help="with --smart: drop the mean-teacher term")
    reg.add_argument("--smart_lambda", type=non_negative, default=R.smart_lambda,
                     help="weight λ_s of the adversarial term")
    reg.add_argument("--smart_eps", type=positive, default=R.smart_eps,
                     help="ℓ∞ radius ε of δ, added after the embedding LayerNorm (entries of order 1); "
                          "the paper's setting is 1e-5")
    reg.add_argument("--smart_sigma", type=non_negative, default=R.smart_sigma,
                     help="std σ of δ's starting noise (the paper's setting: 1e-5)")
    reg.add_argument("--smart_step_size", type=positive, default=R.smart_step_size,
                     help="ascent step η (the paper's setting: 1e-3)")
    reg.add_argument("--smart_steps", type=positive_int, default=R.smart_steps, help="ascent steps T")
    reg.add_argument("--smart_dropout", choices=DROPOUT_MODES, default=R.smart_dropout,
                     help="dropout masks of the perturbed passes of --smart and --r3f: shared with the clean "
                          "pass (the function the paper's formula compares at x and x+δ), or independent "
                          "(fresh masks per pass, as the mt-dnn code)")
    reg.add_argument("--bregman_mu", type=non_negative, default=R.bregman_mu, help="weight μ of the mean-teacher term")
    reg.add_argument("--bregman_beta", type=probability, default=None,
                     help="constant momentum β of the mean teacher, which is also the weight average "
                          "(default: 0.99 for the first 10%% of updates, then 0.999, capped at "
                          "1 - 4/updates in runs under 4,000 updates)")
    reg.add_argument("--smart_tasks", default=None,
                     help="comma-separated tasks whose steps get the --smart terms (default: every task)")
    reg.add_argument("--r3f", action="store_true",
                     help="R3F: the smoothness term at random δ, no ascent step (not with SMART's adversarial term)")
    reg.add_argument("--r3f_tasks", default=None,
                     help="comma-separated tasks whose steps get the --r3f term (default: every task)")
    reg.add_argument("--r3f_noise", choices=("normal", "uniform"), default=R.r3f_noise)
    reg.add_argument("--r3f_eps", type=positive, default=R.r3f_eps,
                     help="noise scale: std (normal) or half-width (uniform), same place as --smart_eps")
    reg.add_argument("--r3f_lambda", type=non_negative, default=R.r3f_lambda, help="weight of the R3F term")
    reg.add_argument("--rdrop", action="store_true",
                     help="R-Drop: the divergence between two forward passes with independent dropout masks")
    reg.add_argument("--rdrop_alpha", type=non_negative, default=R.rdrop_alpha, help="weight α of the R-Drop term")
    reg.add_argument("--rdrop_tasks", default=None,
                     help="comma-separated tasks whose steps get the --rdrop term (default: every task)")
    p.add_argument("--out_dir", type=Path, default=Path("runs/multitask"),
                   help="metrics.jsonl and the best checkpoint (<out_dir>/best) go here")
    p.add_argument("--checkpoint", type=Path, default=None, help="checkpoint for --predict_only (default <out_dir>/best)")
    p.add_argument("--predict_only", action="store_true", help="write predictions from --checkpoint without training")
    p.add_argument("--resume", action="store_true",
                   help="continue the run saved in <out_dir>/resume exactly where it stopped (fresh if none)")
    p.add_argument("--save_every", type=non_negative_int, default=200,
                   help="save the state for --resume every N optimiser updates (0: only at epoch ends)")
    # For quick checks and ablation smoke runs, where scoring the full dev sets and writing test
    # predictions would take longer than the training itself.
    p.add_argument("--dev_limit", type=positive_int, default=None,
                   help="score each epoch on at most N dev examples per task (prediction files stay complete)")
    p.add_argument("--skip_predictions", action="store_true", help="train and evaluate, write no prediction files")
    return p


class FlagError(ValueError):
    """The command line asks for something impossible or contradictory; the message names the flag."""


def parse_tasks(text: str, flag: str = "--tasks") -> tuple[str, ...]:
    try:
        return parse_task_names(text)
    except ValueError as err:
        raise FlagError(f"{flag}: {err}") from None


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        # Before anything is read, loaded or written: a typo must not cost a saved run.
        check_args(args)
    except FlagError as err:
        parser.error(str(err))
    # Under torchrun the other ranks would only repeat rank 0's progress lines.
    logging.basicConfig(level=logging.INFO if is_main_process() else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        run(args)
    except (DataError, CheckpointError, TrainingAborted, DeviceError, DistributedError) as err:
        sys.exit(f"error: {err}")
    finally:
        stop()


def check_args(args: argparse.Namespace) -> None:
    """What argparse's per-flag ranges cannot see: the flags' combinations and the paths they name."""
    tasks = parse_tasks(args.tasks)
    if args.predict_only:
        checkpoint = args.checkpoint or args.out_dir / "best"
        if not checkpoint.is_dir():
            raise FlagError(f"--checkpoint: {checkpoint} is not a directory; --predict_only needs a checkpoint "
                            "written by a training run (<out_dir>/best)")
        splits = ("dev", "test")
    else:
        check_regularizer_flags(args, tasks)
        splits = ("train", "dev") if args.skip_predictions else ("train", "dev", "test")
    for task in tasks:
        for split in splits:
            path = getattr(args, f"{task}_{split}")
            if not path.is_file():
                raise FlagError(f"--{task}_{split}: {path} is not a file; expected the course's {task} {split} file")
    if args.pretrained is not None and not args.pretrained.is_dir():
        raise FlagError(f"--pretrained: {args.pretrained} is not a directory; expected a Hugging Face style "
                        "BERT directory (config.json, model.safetensors, vocab.txt)")
    if args.out_dir.exists() and not args.out_dir.is_dir():
        raise FlagError(f"--out_dir: {args.out_dir} exists and is not a directory")
    # (--predict_only takes the checkpoint's own --max_length.)
    positions = None if args.predict_only else max_positions(args.pretrained)
    if positions is not None and args.max_length > positions:
        raise FlagError(f"--max_length: expected an integer from {MIN_LENGTH} to {positions} (the model's "
                        f"max_position_embeddings), got {args.max_length}")


def max_positions(pretrained: Path | None) -> int | None:
    """The longest input the encoder has position embeddings for (None: its config cannot be read yet).

    An unreadable config is left to the model load, which names the file and the problem.
    """
    try:
        return BertConfig.from_json_file(resolve_checkpoint_dir(pretrained) / "config.json").max_position_embeddings
    except CheckpointError:
        return None


def run(args: argparse.Namespace) -> None:
    tasks = parse_tasks(args.tasks)
    env, device = start(args.device, args.use_gpu)
    # The same seed on every rank: identical data, epoch plan and model initialisation.
    seed_everything(args.seed)
    checkpoint = args.checkpoint or args.out_dir / "best"
    if args.predict_only:
        if not env.is_main:
            return
        model, record = load_checkpoint(checkpoint, unpad_inputs=True)
        tasks = tuple(t for t in tasks if t in model.tasks)
        write_all_predictions(model, load_tokenizer(checkpoint), tasks, args, device,
                              record["settings"]["max_length"], resolve_precision(args.precision, device))
        return

    precision = resolve_precision(args.precision, device)
    tokenizer = load_tokenizer(args.pretrained)
    started = time.perf_counter()
    train_sets, dev_sets = {}, {}
    for task in tasks:
        spec = TASKS[task]
        train = spec.read(getattr(args, f"{task}_train")).examples[: args.train_limit]
        dev = spec.read(getattr(args, f"{task}_dev")).examples[: args.dev_limit]
        train_sets[task] = encode_task(train, tokenizer, spec, args.pair_encoding, args.max_length)
        dev_sets[task] = encode_task(dev, tokenizer, spec, args.pair_encoding, args.max_length)
    log.info("data: %s", ", ".join(f"{t} train {len(train_sets[t])} dev {len(dev_sets[t])}" for t in tasks))
    lr = DEFAULT_LR[args.option] if args.lr is None else args.lr
    # Checked before the model loads, so a mismatched state is refused early; after the data is
    # read, so that a missing or broken data file is reported as such.
    run_state, saved = open_run_state(args, tasks, device, lr, precision)

    # Pad positions never reach a head (mean pooling masks them), so the layers may skip them.
    encoder = BertModel.from_pretrained(args.pretrained, hidden_dropout_prob=args.hidden_dropout_prob,
                                        unpad_inputs=True)
    model = MultitaskBert(encoder, tasks, pooling=args.pooling, pair_encoding=args.pair_encoding,
                          head_dropout=args.hidden_dropout_prob, symmetric_pairs=not args.no_pair_swap)
    if args.option == "pretrain":
        encoder.requires_grad_(False)
    model.to(device)
    regularizers = build_regularizers(model, args)
    settings = TrainSettings(epochs=args.epochs, lr=lr, head_lr=args.head_lr,
                             batch_size=global_batch_size(args.batch_size, args.global_batch_size, env.world_size),
                             eval_batch_size=args.eval_batch_size, grad_accum=args.grad_accum,
                             weight_decay=args.weight_decay, schedule=args.schedule,
                             swap_pairs=not args.no_pair_swap, seed=args.seed,
                             max_bad_steps=args.max_bad_steps, precision=precision)
    log.info("precision: %s%s", precision, " autocast (weights and optimiser state fp32)" if precision == "bf16" else "")
    log.info("regularisers: %s", describe(regularizers.settings if regularizers else None, tasks))
    record_settings = {**{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                       **dataclasses.asdict(settings), "world_size": env.world_size}

    def keep_best(best_model: MultitaskBert, record) -> None:
        if env.is_main:
            save_checkpoint(best_model, checkpoint, record_settings, record.as_json(), tokenizer_from=args.pretrained)
            log.info("new best dev mean %.4f: saved %s", record.dev_mean, checkpoint)
        env.barrier()

    teacher = averaged_model(model, regularizers, args)

    def save_state(trainer) -> None:
        if env.is_main:
            run_state.save(trainer, teacher)
        env.barrier()

    trainer = make_trainer(env, model, train_sets, dev_sets, settings, device, args.out_dir, on_new_best=keep_best,
                           regularizer=regularizers, teacher=teacher, evaluate_teacher=not args.no_ema,
                           on_checkpoint=save_state, save_every=args.save_every)
    if saved is not None:
        # Every process reads the same state; under torchrun the RNG states saved are rank 0's.
        run_state.restore(saved, trainer, teacher)
        reseed_ranks_after_resume(env, args.seed, trainer.updates)
        log.info("resuming the run in %s at %s", args.out_dir, position(trainer))
    elif run_state.exists() and env.is_main:
        # Without --resume a run starts over; an older state left here would later resume the wrong run.
        log.info("starting a fresh run: discarding the saved state in %s (--resume continues it)",
                 run_state.directory)
        run_state.clear()
    env.barrier()
    history = trainer.train()
    dump_final_state(model, teacher, env)
    if not env.is_main:
        return
    best = max(history, key=lambda r: r.dev_mean)
    print(f"best {format_epoch(best)}; trained in {(time.perf_counter() - started) / 60:.1f} min", flush=True)
    if args.skip_predictions:
        return
    # The predictions come from the saved best checkpoint. Free the training state first (weights,
    # their average, AdamW's moments, cached bf16 copies): held beside the reloaded model, it set
    # the run's peak memory (results/README.md, "Peak memory of training").
    # (Rebound, not deleted: save_state above still closes over `teacher`.)
    trainer = model = encoder = teacher = regularizers = saved = None
    gc.collect()
    release_free_memory()
    model, _ = load_checkpoint(checkpoint, unpad_inputs=True)
    write_all_predictions(model, tokenizer, tasks, args, device, args.max_length, precision)


def open_run_state(args: argparse.Namespace, tasks: tuple[str, ...], device: torch.device,
                   lr: float, precision: str) -> tuple[RunState, dict | None]:
    """The run's `<out_dir>/resume` state, and with --resume what it saved (None: nothing to resume)."""
    data_files = {f"{task}_{split}": getattr(args, f"{task}_{split}") for task in tasks for split in ("train", "dev")}
    run_state = RunState(args.out_dir / STATE_DIR, run_fingerprint({**vars(args), "lr": lr, "precision": precision}, device,
                                                                    data_files))
    saved = run_state.load() if args.resume else None
    if args.resume and saved is None:
        log.info("--resume: no saved state in %s; starting a fresh run", run_state.directory)
    return run_state, saved


REGULARIZER_SWITCHES = {"--smart_tasks": "smart", "--r3f_tasks": "r3f", "--rdrop_tasks": "rdrop"}


def check_regularizer_flags(args: argparse.Namespace, tasks: tuple[str, ...]) -> None:
    """The flag rules of the regularisers (see --help): contradictions are errors naming both flags."""
    for flag, switch in REGULARIZER_SWITCHES.items():
        named = getattr(args, flag[2:])
        if named is None:
            continue
        if not getattr(args, switch):
            raise FlagError(f"{flag} narrows --{switch} to some tasks, but --{switch} is not on; "
                            f"add --{switch}, or drop {flag}")
        untrained = [t for t in parse_tasks(named, flag) if t not in tasks]
        if untrained:
            raise FlagError(f"{flag}: {','.join(untrained)} not among the trained --tasks "
                            f"{','.join(tasks)}")
    for part in ("--no_adversarial", "--no_bregman"):
        if getattr(args, part[2:]) and not args.smart:
            raise FlagError(f"{part} switches off a part of --smart, which is not on; add --smart")
    if args.no_adversarial and args.no_bregman:
        raise FlagError("--no_adversarial with --no_bregman leaves nothing of --smart; drop --smart")
    if args.smart and not args.no_adversarial and args.r3f:
        raise FlagError("--smart and --r3f both add a smoothness term at a perturbed δ (adversarial "
                        "and random); choose one, or use --smart --no_adversarial --r3f for R3F with the "
                        "mean teacher")
    switched = [f"--{name}" for name in ("smart", "r3f", "rdrop") if getattr(args, name)]
    if switched and args.option != "finetune":
        raise FlagError(f"{' '.join(switched)} regularise fine-tuning, but --option {args.option} "
                        "freezes the encoder; add --option finetune")


def regularizer_settings(args: argparse.Namespace) -> RegularizerSettings:
    """What the (checked) flags switch on, with each term's weight and task list."""
    def task_list(flag_value: str | None) -> tuple[str, ...] | None:
        return None if flag_value is None else parse_tasks(flag_value)

    return RegularizerSettings(
        adversarial=args.smart and not args.no_adversarial, bregman=args.smart and not args.no_bregman,
        r3f=args.r3f, rdrop=args.rdrop, smart_tasks=task_list(args.smart_tasks),
        r3f_tasks=task_list(args.r3f_tasks), rdrop_tasks=task_list(args.rdrop_tasks),
        **{k: getattr(args, k) for k in (
            "smart_lambda", "smart_eps", "smart_sigma", "smart_step_size", "smart_steps", "smart_dropout",
            "bregman_mu", "bregman_beta", "r3f_noise", "r3f_eps", "r3f_lambda", "rdrop_alpha")})


def build_regularizers(model: MultitaskBert, args: argparse.Namespace) -> Regularizers | None:
    """The regularisers the flags ask for (checked by `check_regularizer_flags`), or None for plain fine-tuning."""
    settings = regularizer_settings(args)
    return Regularizers(model, settings) if settings.any else None


def describe(settings: RegularizerSettings | None, tasks: tuple[str, ...]) -> str:
    """Which terms run on which tasks' steps, for the log."""
    if settings is None:
        return "none (task losses only)"

    def on(named: tuple[str, ...] | None) -> str:
        return ",".join(t for t in tasks if named is None or t in named)

    parts = []
    if settings.adversarial and settings.smart_lambda:
        parts.append(f"SMART adversarial (ε {settings.smart_eps:g}, {settings.smart_dropout} dropout masks) "
                     f"on {on(settings.smart_tasks)}")
    if settings.bregman and settings.bregman_mu:
        parts.append(f"Bregman mean teacher (μ {settings.bregman_mu:g}) on {on(settings.smart_tasks)}")
    if settings.r3f and settings.r3f_lambda:
        parts.append(f"R3F ({settings.r3f_noise}, ε {settings.r3f_eps:g}, {settings.smart_dropout} dropout masks) "
                     f"on {on(settings.r3f_tasks)}")
    if settings.rdrop and settings.rdrop_alpha:
        parts.append(f"R-Drop (α {settings.rdrop_alpha:g}) on {on(settings.rdrop_tasks)}")
    return "; ".join(parts)


def averaged_model(model: MultitaskBert, regularizers: Regularizers | None,
                   args: argparse.Namespace) -> MeanTeacher | None:
    """The moving average of the weights: SMART's Bregman teacher when it runs, else one of its own.

    It is what gets scored and kept unless --no_ema; with --no_ema only the Bregman term uses it.
    """
    if regularizers is not None and regularizers.teacher is not None:
        return regularizers.teacher
    return None if args.no_ema else mean_teacher(model, args.bregman_beta)


def write_all_predictions(model: MultitaskBert, tokenizer, tasks: tuple[str, ...], args: argparse.Namespace,
                          device: torch.device, max_length: int, precision: str) -> None:
    """Dev and test prediction files for each task, in the course's format and input order."""
    model.to(device)
    for task in tasks:
        spec = TASKS[task]
        for split in ("dev", "test"):
            # Read without labels: a dev row whose label is unusable still gets its prediction line.
            examples = spec.read(getattr(args, f"{task}_{split}"), labelled=False).examples
            dataset = encode_task(examples, tokenizer, spec, model.pair_encoding, max_length)
            values = predict(model, dataset, args.eval_batch_size, device, precision)
            path = write_predictions(getattr(args, f"{task}_{split}_out"), task, dataset.ids, values.tolist())
            log.info("wrote %s (%d rows)", path, len(dataset))
