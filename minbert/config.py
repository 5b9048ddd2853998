"""The encoder's hyper-parameters, read from and written to a Hugging Face style config.json."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from minbert.errors import CheckpointError

ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu")
ATTENTION_IMPLEMENTATIONS = ("sdpa", "eager")
SIZES = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
         "max_position_embeddings", "type_vocab_size")
# (field, lowest allowed, first value not allowed)
RATES = (("hidden_dropout_prob", 0.0, 1.0), ("attention_probs_dropout_prob", 0.0, 1.0),
         ("initializer_range", 0.0, float("inf")), ("layer_norm_eps", 1e-30, 1.0))


@dataclass
class BertConfig:
    """Shape and regularisation of a BERT encoder; field names follow config.json."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    # Not part of the checkpoint's meaning: "sdpa" (fused kernel) or "eager" (the plain math).
    attn_implementation: str = "sdpa"
    # Also run-time only: skip pad positions in the position-wise layers (see minbert.packing).
    unpad_inputs: bool = False

    def __post_init__(self) -> None:
        # Types and ranges first: a config.json with "hidden_size": "384" or a layer count of -1
        # should be named as such, not surface as an arithmetic error somewhere inside a layer.
        for name in SIZES:
            value = getattr(self, name)
            if not _is_integer(value) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not _is_integer(self.pad_token_id) or not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(f"pad_token_id must be an integer in 0..vocab_size-1, got {self.pad_token_id!r}")
        for name, low, high in RATES:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value < high:
                raise ValueError(f"{name} must be a number in [{low:g}, {high:g}), got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of "
                             f"num_attention_heads {self.num_attention_heads}")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act {self.hidden_act!r} is not supported; use one of {ACTIVATIONS}")
        if self.attn_implementation not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(f"attn_implementation {self.attn_implementation!r} is not one of "
                             f"{ATTENTION_IMPLEMENTATIONS}")

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_json_file(cls, path: str | Path, **overrides) -> "BertConfig":
        """Read config.json, keeping the fields this encoder uses; `overrides` win over the file."""
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
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in raw.items() if k in known}
        values.update(overrides)
        try:
            return cls(**values)
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"{path}: {err}") from err

    def to_dict(self) -> dict:
        """The config.json content, readable by Hugging Face `transformers` as a BertModel config."""
        values = dataclasses.asdict(self)
        values.pop("attn_implementation")
        values.pop("unpad_inputs")
        return {"architectures": ["BertModel"], "model_type": "bert",
                "position_embedding_type": "absolute", **values}


def _is_integer(value) -> bool:
    """An int from JSON, not a bool (which Python counts as one) nor a float such as 6.0."""
    return isinstance(value, int) and not isinstance(value, bool)
