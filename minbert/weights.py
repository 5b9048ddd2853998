"""Checkpoint files in the Hugging Face BERT layout: weights (read, renamed, written), config.json checks.

Checkpoints name tensors as Hugging Face's BertModel does (`encoder.layer.0.attention.self.query.weight`),
possibly with a `bert.` prefix and TensorFlow-era `gamma`/`beta` LayerNorm names. Our encoder fuses
query/key/value into one projection and names a few modules differently; this module translates
both ways, so any BERT checkpoint loads and what we save loads in `transformers` too.
"""

from __future__ import annotations

import json
import pickle
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from minbert.errors import CheckpointError
from minbert.plumbing.atomic import atomic_path, atomic_write_text

if TYPE_CHECKING:  # a type only: minbert.model imports this module
    from minbert.model import BertConfig

TOKENIZER_FILES = ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# Buffers some checkpoints carry; they are recomputed, never learned.
IGNORED_KEYS = re.compile(r"^embeddings\.position_ids$")
# Pretraining heads (MLM, next-sentence) live beside the encoder; the MLM stage reads them itself.
HEAD_PREFIX = "cls."
_QKV = ("query", "key", "value")
_RENAMES = (  # (Hugging Face pattern, our name), applied in order on load and reversed on save
    (r"^encoder\.layer\.(\d+)\.attention\.output\.", r"encoder.layer.\1.attention_output."),
    (r"^encoder\.layer\.(\d+)\.intermediate\.dense\.", r"encoder.layer.\1.intermediate."),
)
_LAYER = re.compile(r"^encoder\.layer\.(\d+)\.")
_SELF_ATTENTION = re.compile(r"^encoder\.layer\.(\d+)\.attention\.self\.(query|key|value)\.(weight|bias)$")
SIZES = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
         "max_position_embeddings", "type_vocab_size")
# (field, lowest allowed, first value not allowed)
RATES = (("hidden_dropout_prob", 0.0, 1.0), ("attention_probs_dropout_prob", 0.0, 1.0),
         ("initializer_range", 0.0, float("inf")), ("layer_norm_eps", 1e-30, 1.0))


def check_config_values(config: BertConfig) -> None:
    """Types and ranges of config.json's numbers (ValueError naming the field).

    A config.json with "hidden_size": "384" or a layer count of -1 should be named as such, not
    surface as an arithmetic error somewhere inside a layer.
    """
    for name in SIZES:
        value = getattr(config, name)
        if not _is_integer(value) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not _is_integer(config.pad_token_id) or not 0 <= config.pad_token_id < config.vocab_size:
        raise ValueError(f"pad_token_id must be an integer in 0..vocab_size-1, got {config.pad_token_id!r}")
    for name, low, high in RATES:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value < high:
            raise ValueError(f"{name} must be a number in [{low:g}, {high:g}), got {value!r}")


def _is_integer(value) -> bool:
    """An int from JSON, not a bool (which Python counts as one) nor a float such as 6.0."""
    return isinstance(value, int) and not isinstance(value, bool)


def find_weight_file(directory: Path) -> Path:
    """The checkpoint's weight file: safetensors preferred, else a PyTorch state dict."""
    for name in WEIGHT_FILES:
        if (directory / name).is_file():
            return directory / name
    raise CheckpointError(f"{directory}: no weight file found (expected one of {', '.join(WEIGHT_FILES)})")


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a .safetensors or .bin file, never unpickling anything but plain tensors."""
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(f"{path}: refused to load: the file holds pickled objects other than "
                              f"tensors, which could run code ({str(err).splitlines()[0]})") from err
    except (SafetensorError, RuntimeError, EOFError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: cannot read the weights; the file is truncated or corrupt ({err})") from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a flat dict of named tensors")
    return state


def split_checkpoint(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(encoder tensors under canonical Hugging Face names, pretraining-head tensors under `cls.`)."""
    encoder, heads = {}, {}
    for key, tensor in state.items():
        key = key.removeprefix("bert.")
        if key.endswith(".gamma"):
            key = key[: -len("gamma")] + "weight"
        elif key.endswith(".beta"):
            key = key[: -len("beta")] + "bias"
        if IGNORED_KEYS.match(key):
            continue
        (heads if key.startswith(HEAD_PREFIX) else encoder)[key] = tensor
    return encoder, heads


def check_sizes(config: BertConfig, state: dict[str, torch.Tensor], source: Path) -> None:
    """Refuse a config whose sizes disagree with the checkpoint's tensors (Hugging Face names).

    Checked without building anything, so that a config.json asking for 10¹² tokens or 10⁶ layers
    is an error naming the file rather than an allocation failure; every other shape is checked by
    `hf_to_minbert` against the built model.
    """
    layers = {int(match.group(1)) for key in state if (match := _LAYER.match(key))}
    # More layers in the file than asked for is left to hf_to_minbert, which names the stray key.
    if config.num_hidden_layers > len(layers):
        raise CheckpointError(f"{source}: holds {len(layers)} encoder layers, but config.json asks for "
                              f"num_hidden_layers {config.num_hidden_layers}")
    implied = {"embeddings.word_embeddings.weight": (config.vocab_size, config.hidden_size),
               "embeddings.position_embeddings.weight": (config.max_position_embeddings, config.hidden_size),
               "embeddings.token_type_embeddings.weight": (config.type_vocab_size, config.hidden_size),
               "encoder.layer.0.intermediate.dense.bias": (config.intermediate_size,)}
    for key, shape in implied.items():
        if key not in state:
            raise CheckpointError(f"{source}: missing key {key}")
        if tuple(state[key].shape) != shape:
            raise CheckpointError(f"{source}: key {key} has shape {tuple(state[key].shape)}, "
                                  f"but config.json implies {shape}")


def hf_to_minbert(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor],
                  source: Path) -> dict[str, torch.Tensor]:
    """Translate Hugging Face encoder names to ours, checking every key and shape against `expected`."""
    converted: dict[str, torch.Tensor] = {}
    parts: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        match = _SELF_ATTENTION.match(key)
        if match:
            layer, which, kind = match.groups()
            parts.setdefault((layer, kind), {})[which] = tensor
            continue
        for pattern, replacement in _RENAMES:
            key = re.sub(pattern, replacement, key)
        converted[key] = tensor
    for (layer, kind), pieces in parts.items():
        absent = [w for w in _QKV if w not in pieces]
        if absent:
            raise CheckpointError(f"{source}: missing key encoder.layer.{layer}.attention.self.{absent[0]}.{kind}")
        converted[f"encoder.layer.{layer}.attention.qkv.{kind}"] = torch.cat([pieces[w] for w in _QKV])

    unexpected = sorted(set(converted) - set(expected))
    if unexpected:
        raise CheckpointError(f"{source}: unexpected key {minbert_to_hf_name(unexpected[0])} "
                              f"({len(unexpected)} in all); is this a BERT encoder checkpoint matching config.json?")
    missing = sorted(set(expected) - set(converted))
    if missing:
        raise CheckpointError(f"{source}: missing key {minbert_to_hf_name(missing[0])} ({len(missing)} in all)")
    for key in sorted(converted):
        tensor = converted[key]
        if tensor.shape != expected[key].shape:
            raise CheckpointError(f"{source}: key {minbert_to_hf_name(key)} has shape {tuple(tensor.shape)}, "
                                  f"but config.json implies {tuple(expected[key].shape)}")
    return converted


def minbert_to_hf_name(key: str) -> str:
    """The Hugging Face name of one of our keys (the fused projection is reported as its query part)."""
    key = re.sub(r"^encoder\.layer\.(\d+)\.attention\.qkv\.", r"encoder.layer.\1.attention.self.query.", key)
    key = re.sub(r"^encoder\.layer\.(\d+)\.attention_output\.", r"encoder.layer.\1.attention.output.", key)
    return re.sub(r"^encoder\.layer\.(\d+)\.intermediate\.", r"encoder.layer.\1.intermediate.dense.", key)


def minbert_to_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our encoder state dict under Hugging Face names, with the fused projection split again."""
    converted = {}
    for key, tensor in state.items():
        match = re.match(r"^encoder\.layer\.(\d+)\.attention\.qkv\.(weight|bias)$", key)
        if match:
            layer, kind = match.groups()
            for which, piece in zip(_QKV, tensor.chunk(3)):
                converted[f"encoder.layer.{layer}.attention.self.{which}.{kind}"] = piece
        else:
            converted[minbert_to_hf_name(key)] = tensor
    return converted


def save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Write tensors to a .safetensors file atomically (copies, so tied or sliced tensors are fine)."""
    plain = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(plain, str(tmp), metadata={"format": "pt"})


def read_config_json(path: Path) -> dict:
    """config.json as a dict, refused unless it describes a BERT encoder with absolute positions."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: config.json not found in the checkpoint directory")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: not a valid JSON config ({err})") from err
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    model_type = raw.get("model_type", "bert")
    if model_type != "bert":
        raise CheckpointError(f"{path}: model_type is {model_type!r}; only BERT checkpoints load here")
    embedding_type = raw.get("position_embedding_type", "absolute")
    if embedding_type != "absolute":
        raise CheckpointError(f"{path}: position_embedding_type {embedding_type!r} is not supported "
                  "(only 'absolute')")
    return raw


def save_checkpoint(directory: Path, tensors: dict[str, torch.Tensor], config: dict) -> None:
    """model.safetensors and config.json into `directory` (created), each written atomically."""
    directory.mkdir(parents=True, exist_ok=True)
    save_tensors(tensors, directory / "model.safetensors")
    atomic_write_text(directory / "config.json", json.dumps(config, indent=2) + "\n")


def copy_tokenizer_files(source: Path, directory: Path) -> None:
    """The vocabulary files of the checkpoint in `source`, copied beside weights saved in `directory`."""
    if source.resolve() != directory.resolve():
        for name in TOKENIZER_FILES:
            if (source / name).is_file():
                shutil.copyfile(source / name, directory / name)
