"""All robustness measures of one model (or saved checkpoint) on dev sets, as one flat dict of named values."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch

from minbert import CheckpointError, load_tokenizer
from minbert.plumbing.machine import RESOLVED_PRECISIONS
from minbert.tokenizer import BertTokenizer
from multitask.batching import encode_task
from multitask.checkpoint import RUN_FILE, load_checkpoint
from multitask.data import Example, hashed_order
from multitask.model import MultitaskBert
from multitask.robustness.attack import word_attack
from multitask.robustness.calibration import classifier_ece
from multitask.robustness.noise import NOISE_KINDS, perturb_examples
from multitask.robustness.scoring import ModelScorer, labels_of, metric, metric_of_outputs
from multitask.robustness.smoothness import EPS_GRID, Attack, smoothness
from multitask.tasks import TASKS

MEASURED_TASKS: tuple[str, ...] = ("sst", "para", "sts")
# Attack success and calibration need classes; STS is a regression.
CLASSIFIED_TASKS: tuple[str, ...] = ("sst", "para")
NOISE_PERCENTS: tuple[int, ...] = (5, 10)


def eps_name(eps: float) -> str:
    """1e-3 → '1e-3', the spelling of the measure names."""
    mantissa, exponent = f"{eps:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def measure_names(task: str) -> list[str]:
    """The keys `measure_model` returns for a task, in the order it fills them."""
    names = [f"smooth_{task}_eps{eps_name(e)}" for e in EPS_GRID]
    names += [f"clean_{task}"] + [f"{kind}{p}_{task}" for kind in NOISE_KINDS for p in NOISE_PERCENTS]
    if task in CLASSIFIED_TASKS:
        names += [f"attack_acc_{task}", f"attack_success_{task}", f"attack_examples_{task}", f"ece_{task}"]
    return names


def measure_model(model: MultitaskBert, tokenizer: BertTokenizer, dev_examples: Mapping[str, Sequence[Example]], *,
                  seed: int = 0, device: str | torch.device = "cpu", precision: str = "fp32", max_length: int = 128,
                  dev_limit: int | None = None, attack_limit: int | None = 500, smooth_limit: int | None = None,
                  attack: Attack = Attack(), batch_size: int = 32,
                  progress: Callable[[str], None] | None = None) -> dict[str, float]:
    """Flat measure name → value for each task of `dev_examples` (among sst, para, sts), in eval mode.

    `dev_limit`: N examples of each dev set for every measure; `attack_limit`: N of those for the word
    attack (None: all); `smooth_limit`: N of them for the smoothness ascent (None: all), the most
    expensive part. Each is a prefix of `hashed_order`: a uniform sample, the same for every model.
    `clean_<task>` is the dev metric on the unperturbed examples the noise measures perturb.
    `progress` receives a line as each part starts.
    """
    tasks = _check_tasks(model, dev_examples)
    if precision not in RESOLVED_PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(RESOLVED_PRECISIONS)}, got {precision!r}")
    report = progress or (lambda message: None)
    device = torch.device(device)
    model.to(device)
    scorer = ModelScorer(model, tokenizer, max_length, device, precision, batch_size)
    results: dict[str, float] = {}
    for task in tasks:
        examples = hashed_order(task, dev_examples[task])[:dev_limit]
        if not examples:
            raise ValueError(f"{task}: no dev examples to measure")
        smoothed = examples[:smooth_limit]
        dataset = encode_task(smoothed, tokenizer, TASKS[task], model.pair_encoding, max_length)
        for eps in EPS_GRID:
            report(f"{task}: smoothness at ε = {eps:g} ({len(smoothed)} examples, {attack.steps} ascent steps)")
            results[f"smooth_{task}_eps{eps_name(eps)}"] = smoothness(model, dataset, eps, attack, device, precision,
                                                                      batch_size, seed)
        # One forward pass for both measures of the unperturbed examples: clean_ and ece_.
        clean_outputs = scorer.outputs(task, examples)
        results[f"clean_{task}"] = metric_of_outputs(task, clean_outputs, examples)
        for kind in NOISE_KINDS:
            for percent in NOISE_PERCENTS:
                report(f"{task}: dev metric with {kind} noise on {percent}% of words")
                noisy = perturb_examples(task, examples, percent / 100, kind, seed)
                results[f"{kind}{percent}_{task}"] = metric(scorer, task, noisy)
        if task in CLASSIFIED_TASKS:
            attacked = examples[:attack_limit]
            outcome = word_attack(scorer, task, attacked, seed, progress=report)
            results[f"attack_acc_{task}"] = outcome.accuracy
            results[f"attack_success_{task}"] = outcome.success_rate
            results[f"attack_examples_{task}"] = float(outcome.examples)
            report(f"{task}: calibration")
            results[f"ece_{task}"] = classifier_ece(TASKS[task].kind, clean_outputs, labels_of(task, examples))
    return results


def _check_tasks(model: MultitaskBert, dev_examples: Mapping[str, Sequence[Example]]) -> list[str]:
    unknown = [t for t in dev_examples if t not in MEASURED_TASKS]
    if unknown:
        raise ValueError(f"no robustness measures for task(s) {unknown}; choose from {', '.join(MEASURED_TASKS)}")
    headless = [t for t in dev_examples if t not in model.tasks]
    if headless:
        raise ValueError(f"dev sets given for {headless}, but the model has heads for {list(model.tasks)} only")
    return [t for t in MEASURED_TASKS if t in dev_examples]


def measure_checkpoint(checkpoint: Path, dev_files: dict[str, Path], *, seed: int = 0, device: str = "cpu",
                       precision: str = "fp32", dev_limit: int | None = None, attack_limit: int | None = 500,
                       smooth_limit: int | None = None,
                       progress: Callable[[str], None] | None = None) -> dict[str, float]:
    """Flat measure name -> value for the checkpoint's tasks (among sst, para, sts).

    `checkpoint` is a directory written by `multitask.checkpoint.save_checkpoint` (`<out_dir>/best`),
    tokenizer files included; `dev_files` maps each task to measure to its labelled dev CSV.
    Inputs are truncated to the run's own --max_length.
    """
    checkpoint = Path(checkpoint)
    model, record = load_checkpoint(checkpoint, unpad_inputs=True)
    try:
        max_length = int(record["settings"]["max_length"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{checkpoint / RUN_FILE}: no usable settings.max_length ({err!r}); "
                              "was it written by multitask_classifier.py?") from err
    tokenizer = load_tokenizer(checkpoint)
    _check_tasks(model, dev_files)
    dev_examples = {task: TASKS[task].read(path).examples for task, path in dev_files.items()}
    return measure_model(model, tokenizer, dev_examples, seed=seed, device=device, precision=precision,
                         max_length=max_length, dev_limit=dev_limit, attack_limit=attack_limit,
                         smooth_limit=smooth_limit, progress=progress)
