"""multitask_classifier.py: multitask fine-tuning of minbert on SST, Quora and STS (see `--help`).

The course's entry point. `main` checks the flags, `train_and_predict` reads the data, builds the
model, its weight average and regularisers, trains them (multitask/train.py) and writes the best
checkpoint's prediction files (multitask/submission.py).
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import sys
import time
from pathlib import Path

import torch

from minbert import BertModel, CheckpointError, load_tokenizer
from minbert.hub import is_hub_id, resolve_checkpoint_dir
from minbert.model import BertConfig
from minbert.plumbing.flags import FlagError
from minbert.plumbing.heap import release_free_memory
from minbert.plumbing.machine import DeviceError, allow_tf32, precision_choice, resolve_precision, seed_everything
from minbert.plumbing.progress import is_main_process
from multitask.batching import EncodedTask, encode_task
from multitask.checkpoint import load_checkpoint, save_checkpoint
from multitask.data import DataError, Example, limited, training_subset
from multitask.distributed import (DistEnv, DistributedError, dump_final_state, global_batch_size, load_agreed_state,
                                   make_trainer, reseed_ranks_after_resume, start, stop)
from multitask.mask_check import check_dropout_replay, shares_dropout_masks
from multitask.model import MIN_LENGTH, ModelSettings, MultitaskBert
from multitask.regularizers import Regularizers, check_regularizer_flags, describe, new_weight_average
from multitask.resume import STATE_DIR, RunState, position, run_fingerprint
from multitask.run_lock import RunLockError, hold_output_locks
from multitask.settings import Settings, build_parser, settings_from
from multitask.submission import predict_from_checkpoint, write_all_predictions
from multitask.tasks import LABELLED_SPLITS, PREDICTED_SPLITS, SPLITS, TASKS
from multitask.throughput import PEAK_SIZE, matmul_peak
from multitask.records import format_epoch
from multitask.train import DEFAULT_LR, ESTIMATE_AFTER_STEPS, Trainer, TrainingAborted, TrainSettings
from smart import WeightAverage

log = logging.getLogger("multitask")


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    try:
        settings = settings_from(parser.parse_args(argv))
        # Before anything is read, loaded or written: a typo must not cost a saved run.
        check_settings(settings)
    except FlagError as err:
        parser.error(str(err))
    # Under torchrun the other ranks would only repeat rank 0's progress lines.
    logging.basicConfig(level=logging.INFO if is_main_process() else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        env, device = start(settings.run.device, settings.run.use_gpu)
        # Before anything is read or written: a second run on the same outputs stops here, in one line.
        with hold_output_locks(settings, env):
            train_and_predict(settings, env, device)
    except (DataError, CheckpointError, TrainingAborted, DeviceError, DistributedError, RunLockError) as err:
        sys.exit(f"error: {err}")
    finally:
        stop()


def check_settings(settings: Settings) -> None:
    """What argparse's per-flag ranges cannot see: the flags' combinations and the paths they name."""
    run, model = settings.run, settings.model
    if run.predict_only:
        if not run.best_dir.is_dir():
            raise FlagError(f"--checkpoint: {run.best_dir} is not a directory; --predict_only needs a checkpoint "
                            "written by a training run (<out_dir>/best)")
        splits = PREDICTED_SPLITS
    else:
        check_regularizer_flags(settings.regularizers, run)
        splits = LABELLED_SPLITS if run.skip_predictions else SPLITS
    for task in run.tasks:
        for split in splits:
            path = settings.data_file(task, split)
            if not path.is_file():
                raise FlagError(f"--{task}_{split}: {path} is not a file; expected the course's {task} {split} file")
    # A Hub id is fetched (or found in the cache) by the model load, which names what went wrong.
    if model.pretrained is not None and not model.pretrained.is_dir() and not is_hub_id(model.pretrained):
        raise FlagError(f"--pretrained: {model.pretrained} is not a directory; expected a Hugging Face style "
                        "BERT directory (config.json, model.safetensors, vocab.txt) or a Hub model id such as "
                        "bert-base-uncased")
    if run.out_dir.exists() and not run.out_dir.is_dir():
        raise FlagError(f"--out_dir: {run.out_dir} exists and is not a directory")
    # (--predict_only takes the checkpoint's own --max_length.)
    positions = None if run.predict_only else max_positions(model.pretrained)
    if positions is not None and model.max_length > positions:
        raise FlagError(f"--max_length: expected an integer from {MIN_LENGTH} to {positions} (the model's "
                        f"max_position_embeddings), got {model.max_length}")


def local_checkpoint(pretrained: Path | None) -> Path | None:
    """--pretrained as a local directory: a Hub id becomes its snapshot in the Hugging Face cache.

    Resolved once per run, so the tokenizer, the encoder and every saved checkpoint read the same
    snapshot, and no later step of the run needs the network.
    """
    if pretrained is None or not is_hub_id(pretrained):
        return pretrained
    directory = resolve_checkpoint_dir(pretrained)
    log.info("--pretrained %s: the Hugging Face Hub snapshot in %s", pretrained, directory)
    return directory


def max_positions(pretrained: Path | None) -> int | None:
    """The longest input the encoder has position embeddings for (None: its config cannot be read yet).

    An unreadable config is left to the model load, which names the file and the problem.
    """
    try:
        return BertConfig.from_json_file(resolve_checkpoint_dir(pretrained) / "config.json").max_position_embeddings
    except CheckpointError:
        return None


def train_and_predict(settings: Settings, env: DistEnv, device: torch.device) -> None:
    """Train as the settings say (or only predict), keep the best checkpoint, write the prediction files."""
    # Ampere and later: fp32 work (fp32 runs, and what autocast keeps in fp32) in TF32.
    allow_tf32(device)
    # The same seed on every rank: identical data, epoch plan and model initialisation.
    seed_everything(settings.train.seed)
    if settings.run.predict_only:
        if env.is_main:
            predict_from_checkpoint(settings, device)
        return
    train = resolved_train_settings(settings, device, env.world_size)
    model_settings = dataclasses.replace(settings.model, pretrained=local_checkpoint(settings.model.pretrained))
    tokenizer = load_tokenizer(model_settings.pretrained)
    started = time.perf_counter()
    train_sets, dev_sets = encoded_datasets(settings, model_settings, tokenizer)
    # Checked before the model loads, so a mismatched state is refused early; after the data is
    # read, so that a missing or broken data file is reported as such.
    run_state, saved = open_run_state(settings, train, device, env)
    model, average, regularizers = build_model(settings, model_settings, train, device)
    trainer = build_trainer(settings, train, env, device, model, average, regularizers, run_state,
                            (train_sets, dev_sets), tokenizer_from=model_settings.pretrained)
    if saved is not None:
        # Every process reads the same state; under torchrun the RNG states saved are rank 0's.
        run_state.restore(saved, trainer, average)
        reseed_ranks_after_resume(env, train.seed, trainer.updates)
        log.info("resuming the run in %s at %s", settings.run.out_dir, position(trainer))
    elif run_state.exists() and env.is_main:
        # Without --resume a run starts over; an older state left here would later resume the wrong run.
        log.info("starting a fresh run: discarding the saved state in %s (--resume continues it)",
                 run_state.directory)
        run_state.clear()
    env.barrier()
    history = trainer.train()
    dump_final_state(model, average, env)
    if not env.is_main:
        return
    best = max((r for r in history if r.dev_mean is not None), key=lambda r: r.dev_mean)
    print(f"best {format_epoch(best)}; trained in {(time.perf_counter() - started) / 60:.1f} min", flush=True)
    if not settings.run.skip_predictions:
        kept_dev = trainer.best_dev_predictions
        # The predictions come from the saved best checkpoint. Free the training state first (weights,
        # their average, AdamW's moments, cached bf16 copies): held beside the reloaded model, it set
        # the run's peak memory (results/README.md, "Peak memory of training").
        trainer = model = average = regularizers = saved = None
        gc.collect()
        release_free_memory()
        best_model, _ = load_checkpoint(settings.run.best_dir, unpad_inputs=True)
        write_all_predictions(best_model, tokenizer, settings, device, model_settings.max_length, train.precision,
                              kept_dev)
    if not settings.run.keep_resume:
        # The state (weights, their average, AdamW's moments) is several times the model and of
        # no use once the run has finished.
        run_state.remove()
        log.info("removed the resume state %s (--keep_resume keeps it)", run_state.directory)


def encoded_datasets(settings: Settings, model_settings: ModelSettings,
                     tokenizer) -> tuple[dict[str, EncodedTask], dict[str, EncodedTask]]:
    """Each trained task's training rows and dev set, tokenised: (train sets, dev sets) by task name."""
    train_sets, dev_sets = {}, {}
    for task in settings.run.tasks:
        spec = TASKS[task]
        examples = training_examples(settings, task)
        dev = limited(task, spec.read(settings.data_file(task, "dev")).examples, settings.run.dev_limit)
        encoding = (tokenizer, spec, model_settings.pair_encoding, model_settings.max_length)
        train_sets[task], dev_sets[task] = encode_task(examples, *encoding), encode_task(dev, *encoding)
    log.info("data: %s", ", ".join(f"{t} train {len(train_sets[t])} dev {len(dev_sets[t])}"
                                   for t in settings.run.tasks))
    return train_sets, dev_sets


def build_model(settings: Settings, model_settings: ModelSettings, train: TrainSettings,
                device: torch.device) -> tuple[MultitaskBert, WeightAverage | None, Regularizers | None]:
    """The pretrained encoder with the tasks' heads, the run's weight average and its regularisers."""
    # Pad positions never reach a head (mean pooling masks them), so the layers may skip them.
    encoder = BertModel.from_pretrained(model_settings.pretrained,
                                        hidden_dropout_prob=model_settings.hidden_dropout_prob, unpad_inputs=True)
    model = MultitaskBert(encoder, settings.run.tasks, pooling=model_settings.pooling,
                          pair_encoding=model_settings.pair_encoding, head_dropout=model_settings.hidden_dropout_prob,
                          symmetric_pairs=train.swap_pairs)
    if settings.run.option == "pretrain":
        encoder.requires_grad_(False)
    model.to(device)
    # One weight average for the run: what is scored and kept, and SMART's Bregman target.
    average = weight_average(model, settings)
    regularizers = Regularizers(settings.regularizers, average) if settings.regularizers.any else None
    if shares_dropout_masks(settings.regularizers):
        # On the device and precision the run trains with, before any update: cheap, and leaves the RNG as it was.
        check_dropout_replay(model, device, train.precision)
    return model, average, regularizers


def build_trainer(settings: Settings, train: TrainSettings, env: DistEnv, device: torch.device, model: MultitaskBert,
                  average: WeightAverage | None, regularizers: Regularizers | None, run_state: RunState,
                  datasets: tuple[dict[str, EncodedTask], dict[str, EncodedTask]],
                  tokenizer_from: Path | None) -> Trainer:
    """The trainer, wired to keep the best checkpoint and save the resume state; says what it will do."""
    run = settings.run
    record_settings = {**{k: str(v) if isinstance(v, Path) else v for k, v in settings.flags.items()},
                       **dataclasses.asdict(train), "world_size": env.world_size}

    def keep_best(best_model: MultitaskBert, record) -> None:
        if env.is_main:
            save_checkpoint(best_model, run.best_dir, record_settings, record.as_json(),
                            tokenizer_from=tokenizer_from)
            log.info("new best dev mean %.4f: saved %s", record.dev_mean, run.best_dir)
        env.barrier()

    def save_state(trainer: Trainer) -> None:
        if env.is_main:
            run_state.save(trainer, average)
        env.barrier()

    trainer = make_trainer(env, model, *datasets, train, device, run.out_dir, on_new_best=keep_best,
                           regularizers=regularizers, average=average, score_average=run.average_weights,
                           on_save_state=save_state, save_every=run.save_every)
    trainer.matmul_peak = matmul_peak(device, train.precision)
    if env.is_main:
        for line in banner(settings, train, trainer, device):
            log.info("%s", line)
    return trainer


def training_examples(settings: Settings, task: str) -> list[Example]:
    """The task's training rows this run learns from: --train_fraction's subset of the file, then --train_limit."""
    examples = TASKS[task].read(settings.data_file(task, "train")).examples
    if settings.run.train_fraction is not None:
        examples = training_subset(examples, settings.run.train_fraction, settings.train.seed, task)
    return limited(task, examples, settings.run.train_limit)


def resolved_train_settings(settings: Settings, device: torch.device, world_size: int) -> TrainSettings:
    """The optimisation settings with what the flags leave open decided: lr, global batch, precision."""
    train = settings.train
    return dataclasses.replace(
        train, lr=DEFAULT_LR[settings.run.option] if train.lr is None else train.lr,
        batch_size=global_batch_size(train.batch_size, train.global_batch_size, world_size),
        precision=resolve_precision(train.precision, device))


def open_run_state(settings: Settings, train: TrainSettings, device: torch.device,
                   env: DistEnv = DistEnv()) -> tuple[RunState, dict | None]:
    """The run's `<out_dir>/resume` state, and with --resume what it saved (None: nothing to resume).

    Under torchrun every rank must see the same saved state, or all of them refuse (load_agreed_state).
    """
    data_files = {f"{task}_{split}": settings.data_file(task, split)
                  for task in settings.run.tasks for split in LABELLED_SPLITS}
    flags = {**settings.flags, "lr": train.lr, "precision": train.precision}
    run_state = RunState(settings.run.out_dir / STATE_DIR, run_fingerprint(flags, device, data_files))
    saved = load_agreed_state(env, run_state) if settings.run.resume else None
    if settings.run.resume and saved is None:
        log.info("--resume: no saved state in %s; starting a fresh run", run_state.directory)
    return run_state, saved


def weight_average(model: MultitaskBert, settings: Settings) -> WeightAverage | None:
    """The run's one moving average of the weights, or None when nothing uses it.

    It is scored and kept unless --no_ema, and it is the target of SMART's Bregman term.
    """
    if settings.run.average_weights or settings.regularizers.needs_average:
        return new_weight_average(model, settings.regularizers.bregman_beta)
    return None


def banner(settings: Settings, train: TrainSettings, trainer, device: torch.device) -> list[str]:
    """What this run will do, said before it starts: a person reading the log should not have to guess."""
    run, model = settings.run, settings.model
    encoder = model.pretrained or "the packaged all-MiniLM-L6-v2"
    mode = ("fine-tuning the whole model" if run.option == "finetune"
            else "training the heads on a frozen encoder (--option pretrain)")
    averaged = "the weight average" if run.average_weights else "the trained weights (--no_ema)"
    return [f"run: {mode}; encoder {encoder}; tasks {','.join(run.tasks)}",
            f"precision: {train.precision} on {device.type} ({precision_choice(settings.train.precision, device)[1]})"
            f"{'; weights and optimiser state fp32' if train.precision != 'fp32' else ''}",
            f"regularisers: {describe(settings.regularizers, run.tasks)}",
            f"scored and kept each epoch: {averaged}",
            f"plan: {train.epochs} epoch(s) of {trainer.steps_per_epoch} steps, {trainer.total_updates} updates, "
            f"lr {train.lr:g}, batch {train.batch_size}; time: estimated after {ESTIMATE_AFTER_STEPS} steps",
            f"matmul peak: {trainer.matmul_peak / 1e9:.0f} GFLOP/s (torch.mm {PEAK_SIZE}², {train.precision}, measured "
            "now); each epoch reports its model FLOPs on real tokens as a share of it"]


if __name__ == "__main__":
    main()
