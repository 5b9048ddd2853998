"""One run of the grid: its command, its subprocess and log, and the done marker that lets a rerun skip it."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable

from minbert.plumbing.atomic import atomic_write_text
from minbert.plumbing.machine import machine_description
from minbert.plumbing.progress import newest_progress
from multitask.ablation.grid import REPO, Configuration, GridError, GridSettings, report_paths, run_dir
from multitask.predictions import prediction_path
from multitask.tasks import PREDICTED_SPLITS, TASKS

CLASSIFIER = REPO / "multitask_classifier.py"
DONE = "done.json"
# Written when training finished and only the measures remain: a grid killed while measuring resumes
# with the measures instead of training the run again (the classifier has removed its resume state).
TRAINED = "trained.json"
# How the runner calls measure_checkpoint: fp32 whatever the run trained in, so that runs of one
# seed measured on machines where --precision auto differs still pair up. 500 examples of each dev
# set (the attack on all of them), the smoothness ascent on 200 of them: on the whole dev
# sets the measures would cost more than training the low-resource grid (results/README.md).
# "examples" names how they are chosen (multitask.data.hashed_order), for the run signature: measures
# taken on the files' first rows, as before, are not reused.
ROBUSTNESS = {"precision": "fp32", "dev_limit": 500, "attack_limit": 500, "smooth_limit": 200,
              "examples": "a sample fixed by the hash of task and id"}


@dataclass
class RunResult:
    """One configuration and seed: its best-epoch dev scores, or why it failed."""

    config: str
    seed: int
    status: str  # "done" or "failed"
    run_dir: str
    best_epoch: int | None = None
    dev: dict[str, float] = field(default_factory=dict)  # task -> dev score, in training order
    dev_mean: float | None = None
    train_seconds: float | None = None  # training loops of all epochs, without dev evaluation
    wall_seconds: float | None = None  # the whole subprocess: loading, training, evaluation, predictions
    reused: bool = False  # finished by an earlier invocation, not run again
    error: str | None = None
    machine: str | None = None  # where it trained: times compare only between runs on one machine
    code: str | None = None  # the checkout's commit that trained it: a grid's runs must share one
    signature: dict | None = None  # run_signature: what a later invocation must match to reuse this run
    # The best epoch's mean training loss terms (`loss_sst`, `loss_sst_adversarial`, ...) and each
    # regulariser term's ratio to its task's loss (`ratio_sst_adversarial`): how large the terms were.
    terms: dict[str, float] = field(default_factory=dict)
    dev_curve: list[float] = field(default_factory=list)  # dev mean after each epoch, for the budget pilot
    # With the grid's --robustness: multitask.robustness.measure_checkpoint of the best checkpoint.
    robustness: dict[str, float] = field(default_factory=dict)

    def as_json(self) -> dict:
        return asdict(self)

    def value(self, key: str) -> float | None:
        """`dev_<task>` (that task's dev score), `dev_mean` or `train_seconds`; None when absent."""
        if key.startswith("dev_") and key != "dev_mean":
            return self.dev.get(key[len("dev_"):])
        return getattr(self, key)


def build_command(settings: GridSettings, config: Configuration, seed: int, mlm_dir: Path | None) -> list[str]:
    """The multitask_classifier.py command line of one run."""
    directory = run_dir(settings, config.name, seed)
    # --resume: a run killed with the grid continues from its last saved state when the grid is rerun.
    command = [settings.python, str(CLASSIFIER), "--option", "finetune", "--epochs", str(settings.epochs),
               "--seed", str(seed), "--out_dir", str(directory), "--resume", "--precision", settings.precision]
    if settings.train_limit is not None:
        command += ["--train_limit", str(settings.train_limit)]
    if settings.train_fraction is not None:
        command += ["--train_fraction", str(settings.train_fraction)]
    if settings.dev_limit is not None:
        command += ["--dev_limit", str(settings.dev_limit)]
    if settings.last_epoch_only:
        command += ["--eval_every", str(settings.epochs)]
    if settings.keep_checkpoints:
        # The classifier removes a finished run's resume state unless told to keep it.
        command.append("--keep_resume")
    if settings.skip_predictions:
        command.append("--skip_predictions")
    else:
        for task in TASKS:
            for split in PREDICTED_SPLITS:
                command += [f"--{task}_{split}_out", str(prediction_path(directory / "predictions", task, split))]
    command += [*config.flags, *settings.extra_args]
    if config.uses_mlm:
        # Last, so that a --pretrained among the extra flags still leaves these rows on the MLM encoder.
        command += ["--pretrained", str(mlm_dir)]
    return command


def code_version(repo: Path = REPO) -> str | None:
    """The checkout's commit, with "+changes" when tracked code differs from it; None outside git.

    Changes under results/ do not count: a running grid rewrites its own reports there.
    """
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()

    try:
        commit = git("rev-parse", "--short=12", "HEAD")
        changed = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results")
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("+changes" if changed else "")


def run_signature(settings: GridSettings, config: Configuration, seed: int, mlm_signature: dict | None) -> dict:
    """What makes a finished run reusable: a run with another budget or encoder is run again."""
    signature = {"config": config.name, "flags": list(config.flags), "seed": seed, "epochs": settings.epochs,
                 "train_limit": settings.train_limit, "dev_limit": settings.dev_limit,
                 "skip_predictions": settings.skip_predictions, "extra_args": list(settings.extra_args),
                 "precision": settings.precision, "mlm": mlm_signature if config.uses_mlm else None}
    # Only when set, so that the records of grids from before these settings still match.
    if settings.train_fraction is not None:
        signature["train_fraction"] = settings.train_fraction
    if settings.last_epoch_only:
        signature["eval_every"] = settings.epochs
    if settings.robustness:
        # A run finished without the measures cannot get them later (its checkpoint is gone): it reruns.
        signature["robustness"] = dict(ROBUSTNESS)
    return json.loads(json.dumps(signature))  # the form it has when read back from done.json


def read_metrics(path: Path) -> list[dict]:
    """The epoch records of a metrics.jsonl; a line cut short by a crash is left out."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def complete(records: list[dict], epochs: int) -> bool:
    return [record.get("epoch") for record in records] == list(range(1, epochs + 1))


def finished_marker(directory: Path, signature: dict, epochs: int) -> dict | None:
    """The done marker of a finished run with this signature, or None if the run must (re)run."""
    try:
        done = json.loads((directory / DONE).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if done.get("signature") != signature or not complete(read_metrics(directory / "metrics.jsonl"), epochs):
        return None
    return done


def result_from_metrics(config: str, seed: int, directory: Path, records: list[dict], done: dict,
                        reused: bool) -> RunResult:
    """The result of a finished run from its epoch records and its done marker."""
    scored = [record for record in records if record.get("dev_mean") is not None]
    best = max(scored, key=lambda record: record["dev_mean"])
    wall = done.get("wall_seconds")
    return RunResult(config, seed, "done", str(directory), best_epoch=best["epoch"],
                     dev={key[len("dev_"):]: value for key, value in best.items()
                          if key.startswith("dev_") and key != "dev_mean"},
                     dev_mean=best["dev_mean"],
                     train_seconds=round(sum(record.get("train_seconds", 0.0) for record in records), 1),
                     wall_seconds=None if wall is None else round(wall, 1), reused=reused,
                     machine=done.get("machine"), code=done.get("code"), signature=done.get("signature"),
                     terms={key: value for key, value in best.items() if key.startswith(("loss_", "ratio_"))},
                     # Only a run scored after every epoch has a curve (the pilot's runs).
                     dev_curve=[record["dev_mean"] for record in scored] if len(scored) == len(records) else [],
                     robustness=done.get("robustness", {}))


def last_error_line(log_path: Path) -> str:
    """The line that says why a subprocess failed: our CLI's `error: ...`, else the traceback's last line."""
    try:
        lines = [line.strip() for line in log_path.read_text(encoding="utf-8", errors="replace").splitlines()]
    except FileNotFoundError:
        return ""
    lines = [line for line in lines if line]
    errors = [line for line in lines if line.startswith("error:")]
    line = errors[-1] if errors else (lines[-1] if lines else "")
    return line[:300]


def run_logged(command: list[str], log_path: Path, say: Callable[[str], None] | None = None, tag: str = "",
               every: float = 60.0) -> int:
    """Run a command with its output (and the command line, for rerunning by hand) in `log_path`.

    While it runs, every `every` seconds `say` gets `<tag>: <position and ETA>` from the newest
    progress line in the log, when there is a new one: the grid's own output then shows a long
    run moving (less often than the run's log does, which is enough for a grid).
    """
    with open(log_path, "w", encoding="utf-8") as log:
        log.write("$ " + " ".join(command) + "\n")
        log.flush()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        relayed = None
        try:
            while True:
                try:
                    return process.wait(timeout=every)
                except subprocess.TimeoutExpired:
                    line = newest_progress(log_path) if say is not None else None
                    if line is not None and line != relayed:
                        say(f"{tag}: {line}")
                        relayed = line
        except BaseException:
            # As subprocess.run does: an interrupted grid leaves no run behind.
            process.kill()
            process.wait()
            raise


def recorded_result(settings: GridSettings, config: str, seed: int, signature: dict) -> RunResult | None:
    """This run as the grid's JSON report records it, if it finished there with the same signature.

    The report is committed while run directories are not: on a fresh clone or another machine,
    the grid resumes from the runs the report holds instead of training them again.
    """
    path = report_paths(settings.out_dir)["json"]
    try:
        runs = json.loads(path.read_text(encoding="utf-8"))["runs"]
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise GridError(f"{path}: not a grid report ({error}); move it away to run the grid without it") from None
    for record in runs:
        if (record.get("config"), record.get("seed"), record.get("status"), record.get("signature")) == \
                (config, seed, "done", signature):
            known = {field.name for field in fields(RunResult)} - {"reused"}
            return RunResult(**{key: value for key, value in record.items() if key in known}, reused=True)
    return None


def finished_result(settings: GridSettings, config: Configuration, seed: int,
                    mlm_signature: dict | None) -> RunResult | None:
    """This run's result if an earlier invocation finished it with the same signature, else None.

    Where its directory exists, its done marker decides (delete the marker to train the run again);
    where it does not (a fresh clone, another machine), the grid's report does.
    """
    directory = run_dir(settings, config.name, seed)
    signature = run_signature(settings, config, seed, mlm_signature)
    if not directory.exists():
        return recorded_result(settings, config.name, seed, signature)
    done = finished_marker(directory, signature, settings.epochs)
    if done is None:
        return None
    return result_from_metrics(config.name, seed, directory, read_metrics(directory / "metrics.jsonl"),
                               done, reused=True)


def dev_files(command: list[str]) -> dict[str, Path]:
    """The dev file of each task a run's classifier command trains, as the classifier resolves them."""
    from multitask.settings import build_parser, settings_from  # imports torch, as the measures do anyway

    settings = settings_from(build_parser().parse_args(command[2:]))
    return {task: settings.data_file(task, "dev") for task in settings.run.tasks}


def check_robustness_module() -> None:
    """Refuse a grid with --robustness before its first run when the measures cannot be imported: each run
    would otherwise train to the end and then fail."""
    try:
        from multitask.robustness import measure_checkpoint  # noqa: F401
    except ImportError as error:
        raise GridError(f"--robustness: cannot import multitask.robustness.measure_checkpoint ({error}); use a "
                        "checkout that has it, or drop --robustness") from None


def robustness_limits(dev_limit: int | None) -> dict[str, int]:
    """ROBUSTNESS's example counts per task, under the grid's own --dev_limit where that is smaller."""
    return {key: ROBUSTNESS[key] if dev_limit is None else min(ROBUSTNESS[key], dev_limit)
            for key in ("dev_limit", "attack_limit", "smooth_limit")}


def measure_robustness(settings: GridSettings, command: list[str], directory: Path, seed: int) -> dict[str, float]:
    """multitask.robustness.measure_checkpoint on a finished run's best checkpoint, with the run's seed
    (the same perturbations for every configuration at that seed), on robustness_limits' examples."""
    from multitask.robustness import measure_checkpoint  # imported only when asked for

    measures = measure_checkpoint(directory / "best", dev_files(command), seed=seed, device="cpu",
                                  precision=ROBUSTNESS["precision"], **robustness_limits(settings.dev_limit))
    return {key: float(value) for key, value in measures.items()}


def trained_marker(directory: Path, signature: dict, epochs: int) -> dict | None:
    """The marker of a run whose training finished with this signature and whose checkpoint is still there
    to measure, or None if it must train."""
    try:
        trained = json.loads((directory / TRAINED).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    if trained.get("signature") != signature or not (directory / "best").is_dir() \
            or not complete(read_metrics(directory / "metrics.jsonl"), epochs):
        return None
    return trained


def train(settings: GridSettings, command: list[str], directory: Path, signature: dict,
          say: Callable[[str], None], tag: str) -> tuple[float, str | None]:
    """Run the classifier (log in `train.log`), or find that an earlier invocation trained this run: its wall
    time, and why it failed (None: it did not)."""
    trained = trained_marker(directory, signature, settings.epochs)
    if trained is not None:
        say(f"{tag}: trained by an earlier invocation in {trained['wall_seconds']:.0f} s; not trained again")
        return trained["wall_seconds"], None
    (directory / TRAINED).unlink(missing_ok=True)
    log_path = directory / "train.log"
    say(f"{tag}: running, log in {log_path}")
    started = time.perf_counter()
    returncode = run_logged(command, log_path, say, tag)
    wall = time.perf_counter() - started
    records = read_metrics(directory / "metrics.jsonl")
    if returncode == 0 and complete(records, settings.epochs):
        atomic_write_text(directory / TRAINED, json.dumps({"signature": signature, "wall_seconds": round(wall, 1)}))
        return wall, None
    if returncode != 0:
        reason = last_error_line(log_path) or f"exit code {returncode}"
    else:
        reason = f"metrics.jsonl has {len(records)} of {settings.epochs} epochs"
    return wall, reason


def run_one(settings: GridSettings, config: Configuration, seed: int, mlm_dir: Path | None,
            mlm_signature: dict | None, say: Callable[[str], None], tag: str) -> RunResult:
    directory = run_dir(settings, config.name, seed)
    signature = run_signature(settings, config, seed, mlm_signature)
    result = finished_result(settings, config, seed, mlm_signature)
    if result is not None:
        say(f"{tag}: already finished (dev mean {result.dev_mean:.3f}), not run again")
        return result

    directory.mkdir(parents=True, exist_ok=True)
    # A marker from another budget must not survive a run that then fails.
    (directory / DONE).unlink(missing_ok=True)
    command = build_command(settings, config, seed, mlm_dir)
    wall, failure = train(settings, command, directory, signature, say, tag)
    if failure is not None:
        log_path = directory / "train.log"
        say(f"{tag}: FAILED after {wall:.0f} s: {failure} (see {log_path})")
        return RunResult(config.name, seed, "failed", str(directory), wall_seconds=round(wall, 1),
                         error=f"{failure} (log: {log_path})")
    robustness = {}
    if settings.robustness:
        # Before the checkpoint is removed below: it is the only copy of the trained weights.
        say(f"{tag}: measuring robustness of {directory / 'best'}")
        try:
            robustness = measure_robustness(settings, command, directory, seed)
        except Exception as error:  # any failure of the measures fails this run, not the grid
            reason = f"robustness measures: {type(error).__name__}: {error}"[:300]
            say(f"{tag}: FAILED after {wall:.0f} s: {reason} (the checkpoint is kept in {directory / 'best'})")
            return RunResult(config.name, seed, "failed", str(directory), wall_seconds=round(wall, 1), error=reason)
    if not settings.keep_checkpoints:
        # An encoder copy per run adds up over a grid; the scores and predictions are what an
        # ablation keeps. (The classifier itself removes the finished run's resume state.)
        shutil.rmtree(directory / "best", ignore_errors=True)
    done = {"signature": signature, "command": command, "wall_seconds": round(wall, 1),
            "machine": machine_description(), "code": code_version(),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if settings.robustness:
        done["robustness"] = robustness
    atomic_write_text(directory / DONE, json.dumps(done, indent=2))
    (directory / TRAINED).unlink(missing_ok=True)  # the done marker says it all now
    result = result_from_metrics(config.name, seed, directory, read_metrics(directory / "metrics.jsonl"), done,
                                 reused=False)
    say(f"{tag}: done in {wall:.0f} s, dev mean {result.dev_mean:.3f}")
    return result
