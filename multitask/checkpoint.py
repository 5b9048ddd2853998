"""Saving and loading a multitask model: encoder in the Hugging Face layout, heads, run settings."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from minbert import BertModel, CheckpointError
from minbert.plumbing.atomic import atomic_write_text, replaced_directory
from minbert.weights import read_tensors, save_tensors
from multitask.model import MultitaskBert

RUN_FILE = "run.json"
HEADS_FILE = "heads.safetensors"


def head_tensors(model: MultitaskBert) -> dict[str, torch.Tensor]:
    """The heads' tensors under `<task>.<name>` keys (views of the live parameters)."""
    return {f"{task}.{name}": tensor for task, head in model.heads.items()
            for name, tensor in head.state_dict().items()}


def save_checkpoint(model: MultitaskBert, directory: str | Path, settings: dict, scores: dict,
                    tokenizer_from: str | Path | None) -> None:
    """Write the model to `directory`, replacing what was there only once everything is written.

    The encoder goes in the Hugging Face layout, so `--pretrained DIR` (or transformers) loads it.
    """
    # A crash leaves either the old checkpoint or the new one under the real name, never a
    # half-written one (see replaced_directory).
    with replaced_directory(directory) as staging:
        model.encoder.save_pretrained(staging, tokenizer_from=tokenizer_from)
        save_tensors(head_tensors(model), staging / HEADS_FILE)
        run = {"tasks": list(model.tasks), "pooling": model.pooling, "pair_encoding": model.pair_encoding,
               "symmetric_pairs": model.symmetric_pairs, "settings": settings, "dev_scores": scores}
        atomic_write_text(staging / RUN_FILE, json.dumps(run, indent=2, default=str) + "\n")


def load_checkpoint(directory: str | Path, **encoder_overrides) -> tuple[MultitaskBert, dict]:
    """The model saved by `save_checkpoint` and its run record."""
    directory = Path(directory)
    run_file = directory / RUN_FILE
    if not run_file.is_file():
        raise CheckpointError(f"{run_file}: not found; is {directory} a multitask checkpoint "
                              "(written by multitask_classifier.py)?")
    try:
        run = json.loads(run_file.read_text(encoding="utf-8"))
        tasks, pooling, pair_encoding = tuple(run["tasks"]), run["pooling"], run["pair_encoding"]
        # Checkpoints from before the option predicted pairs in the order read.
        symmetric_pairs = bool(run.get("symmetric_pairs", False))
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise CheckpointError(f"{run_file}: unreadable run record ({err!r})") from err
    encoder = BertModel.from_pretrained(directory, **encoder_overrides)
    model = MultitaskBert(encoder, tasks, pooling=pooling, pair_encoding=pair_encoding,
                          symmetric_pairs=symmetric_pairs)
    heads = read_tensors(directory / HEADS_FILE)
    expected = head_tensors(model)
    if set(heads) != set(expected):
        raise CheckpointError(f"{directory / HEADS_FILE}: holds heads {sorted(heads)}, expected {sorted(expected)}")
    for key, tensor in heads.items():
        if tensor.shape != expected[key].shape:
            raise CheckpointError(f"{directory / HEADS_FILE}: {key} has shape {tuple(tensor.shape)}, "
                                  f"expected {tuple(expected[key].shape)}")
    with torch.no_grad():
        for key, tensor in heads.items():
            expected[key].copy_(tensor)
    return model, run
