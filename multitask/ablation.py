"""The ablation grid: named training configurations, each run per seed as its own subprocess, resumable."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from minbert.atomic import atomic_write_text
from minbert.progress import newest_progress
from multitask.resume import STATE_DIR
from multitask.tasks import TASKS

REPO = Path(__file__).resolve().parent.parent
CLASSIFIER = REPO / "multitask_classifier.py"
MLM_SCRIPT = REPO / "scripts" / "pretrain_mlm.py"
DONE = "done.json"
# A lone count N in --seeds means the course's seed first, then 1..N-1: the first run of any grid
# is then the same run as the README's default command.
COURSE_SEED = 11711


@dataclass(frozen=True)
class Configuration:
    """One row of the grid: the flags added to plain fine-tuning, and whether it starts from the MLM encoder."""

    name: str
    flags: tuple[str, ...]
    uses_mlm: bool = False

    def describe(self) -> str:
        flags = ["--option finetune", *self.flags] + (["--pretrained <MLM encoder>"] if self.uses_mlm else [])
        return " ".join(flags)


GRID: dict[str, Configuration] = {c.name: c for c in (
    Configuration("baseline", ()),
    Configuration("rdrop", ("--rdrop",)),
    Configuration("r3f", ("--r3f",)),
    Configuration("adversarial", ("--smart", "--no_bregman")),
    Configuration("bregman", ("--smart", "--no_adversarial")),
    Configuration("smart", ("--smart",)),
    Configuration("smart-independent", ("--smart", "--smart_dropout", "independent")),
    Configuration("mlm", (), uses_mlm=True),
    Configuration("mlm+smart", ("--smart",), uses_mlm=True),
)}

# The runner sets these per run; letting them through after `--` would make runs of one grid
# differ in budget, or write into each other's directories.
RUNNER_FLAGS = ("--epochs", "--seed", "--out_dir", "--train_limit", "--dev_limit", "--skip_predictions", "--precision",
                "--option", "--predict_only", "--checkpoint",
                *(f"--{task}_{split}_out" for task in TASKS for split in ("dev", "test")))


class GridError(ValueError):
    """The grid cannot start: unknown configuration, malformed seeds, or a flag the runner owns."""


@dataclass
class GridSettings:
    """Everything that defines a grid: which runs, their shared budget, and where they go."""

    out_dir: Path
    configs: list[str]
    seeds: list[int]
    epochs: int
    train_limit: int | None = None
    dev_limit: int | None = None
    skip_predictions: bool = False
    extra_args: list[str] = field(default_factory=list)
    mlm_dir: Path | None = None
    mlm_steps: int = 300  # the default of scripts/pretrain_mlm.py
    mlm_script: Path = MLM_SCRIPT
    keep_checkpoints: bool = False
    precision: str = "auto"  # passed to every run and to the MLM stage
    python: str = sys.executable

    def budget(self) -> dict:
        """The settings every run shares, as stated above the results table."""
        return {"epochs": self.epochs, "train_limit": self.train_limit, "dev_limit": self.dev_limit,
                "seeds": self.seeds, "extra_args": self.extra_args, "predictions": not self.skip_predictions,
                "mlm_dir": None if self.mlm_dir is None else str(self.mlm_dir),
                "mlm_steps": self.mlm_steps if self.mlm_dir is None and self.uses_mlm else None}

    @property
    def uses_mlm(self) -> bool:
        return any(GRID[name].uses_mlm for name in self.configs)


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

    def as_json(self) -> dict:
        return asdict(self)

    def value(self, key: str) -> float | None:
        """`dev_<task>` (that task's dev score), `dev_mean` or `train_seconds`; None when absent."""
        if key.startswith("dev_") and key != "dev_mean":
            return self.dev.get(key[len("dev_"):])
        return getattr(self, key)


def parse_configs(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in GRID]
    if not names or unknown:
        raise GridError(f"--configs: unknown configuration(s) {unknown or text!r}; choose from {','.join(GRID)}")
    return list(dict.fromkeys(names))


def parse_seeds(text: str) -> list[int]:
    """`3` is a count (11711, 1, 2); `11711,1,2` a list; `42,` the single seed 42."""
    parts = [part.strip() for part in text.split(",")]
    try:
        if len(parts) == 1:
            count = int(parts[0])
            if count < 1:
                raise ValueError
            return [COURSE_SEED, *range(1, count)]
        seeds = [int(part) for part in parts if part]
    except ValueError:
        raise GridError(f"--seeds {text!r}: give a count (3) or a comma list (11711,1,2; '42,' for the "
                        "single seed 42)") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise GridError(f"--seeds {text!r}: the list is empty or repeats a seed")
    return seeds


def check_extra_args(extra: list[str]) -> None:
    if not extra:
        return
    from multitask.settings import build_parser  # imports torch: only when there are flags to check

    known = [flag for flag in build_parser()._option_string_actions if flag.startswith("--")]
    for arg in extra:
        name = arg.split("=", 1)[0]
        if not name.startswith("--") or name in known and name not in RUNNER_FLAGS:
            continue
        # argparse takes an unambiguous prefix for the full flag (--epoch is --epochs): resolve it the same way.
        matches = [name] if name in known else [flag for flag in known if flag.startswith(name)]
        if len(matches) == 1 and matches[0] in RUNNER_FLAGS:
            raise GridError(f"training flag {arg!r} after `--` is set by the ablation runner itself; use the "
                            "runner's own --epochs/--seeds/--train_limit/--dev_limit/--out_dir instead")


def run_dir(settings: GridSettings, config: str, seed: int) -> Path:
    return settings.out_dir / config / f"seed{seed}"


def build_command(settings: GridSettings, config: Configuration, seed: int, mlm_dir: Path | None) -> list[str]:
    """The multitask_classifier.py command line of one run."""
    directory = run_dir(settings, config.name, seed)
    # --resume: a run killed with the grid continues from its last saved state when the grid is rerun.
    command = [settings.python, str(CLASSIFIER), "--option", "finetune", "--epochs", str(settings.epochs),
               "--seed", str(seed), "--out_dir", str(directory), "--resume", "--precision", settings.precision]
    if settings.train_limit is not None:
        command += ["--train_limit", str(settings.train_limit)]
    if settings.dev_limit is not None:
        command += ["--dev_limit", str(settings.dev_limit)]
    if settings.skip_predictions:
        command.append("--skip_predictions")
    else:
        for task in TASKS:
            for split in ("dev", "test"):
                command += [f"--{task}_{split}_out", str(directory / "predictions" / f"{task}-{split}-output.csv")]
    command += [*config.flags, *settings.extra_args]
    if config.uses_mlm:
        # Last, so that a --pretrained among the extra flags still leaves these rows on the MLM encoder.
        command += ["--pretrained", str(mlm_dir)]
    return command


def run_signature(settings: GridSettings, config: Configuration, seed: int, mlm_signature: dict | None) -> dict:
    """What makes a finished run reusable: a run with another budget or encoder is run again."""
    signature = {"config": config.name, "flags": list(config.flags), "seed": seed, "epochs": settings.epochs,
                 "train_limit": settings.train_limit, "dev_limit": settings.dev_limit,
                 "skip_predictions": settings.skip_predictions, "extra_args": list(settings.extra_args),
                 "precision": settings.precision, "mlm": mlm_signature if config.uses_mlm else None}
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


def result_from_metrics(config: str, seed: int, directory: Path, records: list[dict], wall: float | None,
                        reused: bool) -> RunResult:
    best = max(records, key=lambda record: record["dev_mean"])
    return RunResult(config, seed, "done", str(directory), best_epoch=best["epoch"],
                     dev={key[len("dev_"):]: value for key, value in best.items()
                          if key.startswith("dev_") and key != "dev_mean"},
                     dev_mean=best["dev_mean"],
                     train_seconds=round(sum(record.get("train_seconds", 0.0) for record in records), 1),
                     wall_seconds=None if wall is None else round(wall, 1), reused=reused)


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


def finished_result(settings: GridSettings, config: Configuration, seed: int,
                    mlm_signature: dict | None) -> RunResult | None:
    """The result of this run if an earlier invocation finished it with the same signature, else None."""
    directory = run_dir(settings, config.name, seed)
    done = finished_marker(directory, run_signature(settings, config, seed, mlm_signature), settings.epochs)
    if done is None:
        return None
    return result_from_metrics(config.name, seed, directory, read_metrics(directory / "metrics.jsonl"),
                               done.get("wall_seconds"), reused=True)


def finished_results(settings: GridSettings) -> list[RunResult]:
    """Every run of the grid that has finished, in run order; nothing is run (for `--report_only`)."""
    signature = mlm_encoder_signature(settings) if settings.uses_mlm else None
    results = (finished_result(settings, GRID[name], seed, signature)
               for seed in settings.seeds for name in settings.configs)
    return [result for result in results if result is not None]


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
    log_path = directory / "train.log"
    say(f"{tag}: running, log in {log_path}")
    started = time.perf_counter()
    returncode = run_logged(command, log_path, say, tag)
    wall = time.perf_counter() - started
    records = read_metrics(directory / "metrics.jsonl")
    if returncode != 0 or not complete(records, settings.epochs):
        reason = last_error_line(log_path) or f"exit code {returncode}"
        if returncode == 0:
            reason = f"metrics.jsonl has {len(records)} of {settings.epochs} epochs"
        say(f"{tag}: FAILED after {wall:.0f} s: {reason} (see {log_path})")
        return RunResult(config.name, seed, "failed", str(directory), wall_seconds=round(wall, 1),
                         error=f"{reason} (log: {log_path})")
    if not settings.keep_checkpoints:
        # An encoder copy per run (90 MB for MiniLM, 440 MB for BERT-base) adds up over a grid;
        # the scores and predictions are what an ablation keeps. The resume state (optimiser
        # moments, teacher) is larger still and of no use once the run is finished.
        shutil.rmtree(directory / "best", ignore_errors=True)
        shutil.rmtree(directory / STATE_DIR, ignore_errors=True)
    atomic_write_text(directory / DONE, json.dumps({"signature": signature, "command": command,
                                                    "wall_seconds": round(wall, 1),
                                                    "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}, indent=2))
    result = result_from_metrics(config.name, seed, directory, records, wall, reused=False)
    say(f"{tag}: done in {wall:.0f} s, dev mean {result.dev_mean:.3f}")
    return result


def checkpoint_problem(directory: Path) -> str | None:
    """Why `directory` is not a Hugging Face style BERT directory that --pretrained can load, or None."""
    if not directory.is_dir():
        return "not a directory"
    missing = [name for name in ("config.json", "vocab.txt") if not (directory / name).is_file()]
    if not any((directory / name).is_file() for name in ("model.safetensors", "pytorch_model.bin")):
        missing.append("model.safetensors (or pytorch_model.bin)")
    return f"missing {', '.join(missing)}" if missing else None


def mlm_encoder_signature(settings: GridSettings) -> dict:
    """What identifies the encoder of the mlm rows: the directory given, or how the runner pretrains it."""
    if settings.mlm_dir is not None:
        return {"mlm_dir": str(settings.mlm_dir.resolve())}
    # One encoder for every seed: the ablation asks what MLM pretraining adds, not how it varies.
    return {"max_steps": settings.mlm_steps, "seed": settings.seeds[0], "precision": settings.precision}


def prepare_mlm_encoder(settings: GridSettings,
                        say: Callable[[str], None]) -> tuple[Path | None, dict | None, str | None]:
    """(encoder directory, its signature, error): --mlm_dir as given, else one pretrained once per grid."""
    signature = mlm_encoder_signature(settings)
    if settings.mlm_dir is not None:
        problem = checkpoint_problem(settings.mlm_dir)
        if problem:
            return None, None, f"--mlm_dir {settings.mlm_dir}: {problem}"
        return settings.mlm_dir, signature, None

    target = settings.out_dir / "mlm_encoder"
    marker = settings.out_dir / "mlm_encoder.done.json"
    try:
        reusable = json.loads(marker.read_text(encoding="utf-8")).get("signature") == signature
    except (FileNotFoundError, json.JSONDecodeError):
        reusable = False
    if reusable and checkpoint_problem(target) is None:
        say(f"MLM encoder: {target} already pretrained ({settings.mlm_steps} steps), reused")
        return target, signature, None
    if not settings.mlm_script.is_file():
        return None, None, (f"{settings.mlm_script} not found, so no MLM encoder can be pretrained: pass "
                            "--mlm_dir DIR (a Hugging Face style BERT directory pretrained with MLM) or add "
                            "the MLM pretraining script")
    marker.unlink(missing_ok=True)
    command = [settings.python, str(settings.mlm_script), "--out_dir", str(target),
               "--max_steps", str(settings.mlm_steps), "--seed", str(settings.seeds[0]),
               "--precision", settings.precision]
    log_path = settings.out_dir / "mlm_encoder.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    say(f"MLM encoder: pretraining {settings.mlm_steps} steps into {target}, log in {log_path}")
    started = time.perf_counter()
    returncode = run_logged(command, log_path, say, "MLM encoder")
    if returncode != 0:
        return None, None, (f"MLM pretraining failed (exit code {returncode}): {last_error_line(log_path)} "
                            f"(log: {log_path})")
    problem = checkpoint_problem(target)
    if problem:
        return None, None, f"{settings.mlm_script} finished but {target} is unusable: {problem} (log: {log_path})"
    atomic_write_text(marker, json.dumps({"signature": signature, "command": command,
                                          "wall_seconds": round(time.perf_counter() - started, 1)}, indent=2))
    say(f"MLM encoder: ready in {time.perf_counter() - started:.0f} s")
    return target, signature, None


def run_grid(settings: GridSettings, say: Callable[[str], None] = print) -> list[RunResult]:
    """Run every configuration for every seed (seed by seed, so a partial grid still compares all configs)."""
    configs = [GRID[name] for name in settings.configs]
    mlm_dir = mlm_signature = mlm_error = None
    if settings.uses_mlm:
        mlm_dir, mlm_signature, mlm_error = prepare_mlm_encoder(settings, say)
        if mlm_error:
            say(f"MLM encoder: {mlm_error}; the mlm configurations fail, the others still run")
    plan = [(config, seed) for seed in settings.seeds for config in configs]
    results = []
    for number, (config, seed) in enumerate(plan, start=1):
        tag = f"[{number}/{len(plan)}] {config.name} seed {seed}"
        if config.uses_mlm and mlm_error:
            results.append(RunResult(config.name, seed, "failed", str(run_dir(settings, config.name, seed)),
                                     error=mlm_error))
            say(f"{tag}: FAILED: no MLM encoder")
            continue
        results.append(run_one(settings, config, seed, mlm_dir, mlm_signature, say, tag))
    return results
