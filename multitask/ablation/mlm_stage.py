"""The encoder of the grid's mlm rows: the directory given with --mlm_dir, or one pretrained once per grid."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

from minbert.plumbing.atomic import atomic_write_text
from multitask.ablation.grid import GridSettings
from multitask.ablation.single_run import last_error_line, run_logged


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
