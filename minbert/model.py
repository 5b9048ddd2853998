"""The BERT encoder: config, embeddings, self-attention, transformer layer, pooler, loading.

Read top to bottom: `BertConfig` (config.json's fields), `Linear`, `BertEmbeddings`, multi-head
self-attention (`eager` is the textbook softmax(QKᵀ/√d + mask)·V, `sdpa` torch's fused kernel),
one post-norm transformer layer, the layer stack, the pooler, and `BertModel` with
`from_pretrained`. Checkpoint files (names, config.json checks) are minbert/weights.py's job,
dropout minbert/dropout.py's, the word-embedding lookup's gradient minbert/lookup.py's, skipping
pad tokens minbert/packing.py's.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from minbert.errors import CheckpointError
from minbert.dropout import Dropout, dropout
from minbert.hub import resolve_checkpoint_dir
from minbert.lookup import Embedding
from minbert.packing import Packing
from minbert.weights import (check_config_values, check_sizes, copy_tokenizer_files, find_weight_file, hf_to_minbert,
                             minbert_to_hf, read_config_json, read_tensors, save_checkpoint, split_checkpoint)

ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu")
ATTENTION_IMPLEMENTATIONS = ("sdpa", "eager")


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
        check_config_values(self)
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
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in read_config_json(Path(path)).items() if k in known}
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


class Linear(nn.Linear):
    """nn.Linear that, under autocast with autograd off (evaluation), keeps its bf16 weight copy.

    Autocast casts every weight again in each autocast region, one per evaluation batch. The copy
    is reused while the weight is the same tensor at the same version (an optimiser step or a
    loaded state dict bumps it). With autograd on, autocast's own per-step cache does this job.
    """

    _cast: tuple | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        device_type = x.device.type
        if torch.is_grad_enabled() or not torch.is_autocast_enabled(device_type):
            return super().forward(x)
        dtype = torch.get_autocast_dtype(device_type)
        key = (dtype, self.weight.data_ptr(), self.weight._version,
               None if self.bias is None else (self.bias.data_ptr(), self.bias._version))
        if self._cast is None or self._cast[0] != key:
            bias = None if self.bias is None else self.bias.to(dtype)
            self._cast = (key, self.weight.to(dtype), bias)
        _, weight, bias = self._cast
        with torch.autocast(device_type, enabled=False):
            return F.linear(x.to(dtype), weight, bias)


def activation(name: str):
    """The feed-forward non-linearity named in config.json."""
    if name == "gelu":
        return F.gelu  # the exact erf form, as BERT's "gelu"
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return lambda x: F.gelu(x, approximate="tanh")
    if name == "relu":
        return F.relu
    raise ValueError(f"unknown activation {name!r}")


class BertEmbeddings(nn.Module):
    """Maps token ids (and segment ids) to the input vectors of the first transformer layer."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.word_embeddings = Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)
        self.max_positions = config.max_position_embeddings

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        length = input_ids.shape[1]
        if length > self.max_positions:
            raise ValueError(f"sequence length {length} exceeds the model's {self.max_positions} positions; "
                             "truncate the input (the tokenizer's max_length does)")
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        positions = torch.arange(length, device=input_ids.device)
        embeddings = (self.word_embeddings(input_ids)
                      + self.token_type_embeddings(token_type_ids)
                      + self.position_embeddings(positions))
        return self.dropout(self.LayerNorm(embeddings))


class BertSelfAttention(nn.Module):
    """Self-attention over a padded batch; `additive_mask` is 0 on real keys, very negative on pads."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_size = config.head_size
        # One [3H, H] matmul instead of three [H, H] ones; the rows are query, key, value in order.
        self.qkv = Linear(config.hidden_size, 3 * config.hidden_size)
        self.dropout_prob = config.attention_probs_dropout_prob
        self.implementation = config.attn_implementation

    def forward(self, hidden: torch.Tensor, additive_mask: torch.Tensor,
                packing: Packing | None = None) -> torch.Tensor:
        """hidden is [B, T, H], or the packed [N, H] real tokens when `packing` is given."""
        qkv = self.qkv(hidden)
        if packing is not None:
            qkv = packing.to_grid(qkv)  # attention mixes positions: back to a padded grid
        batch, length, width = qkv.shape[0], qkv.shape[1], qkv.shape[2] // 3
        # [B, T, 3, heads, d] -> three tensors of [B, heads, T, d]
        q, k, v = qkv.view(batch, length, 3, self.num_heads, self.head_size).permute(2, 0, 3, 1, 4)
        dropout_p = self.dropout_prob if self.training else 0.0
        # On the CPU, torch's fused kernel has no dropout: with dropout it falls back to a generic
        # path that upcasts bf16 softmax to fp32, slower and larger than the explicit computation
        # (measured in results/README.md).
        if self.implementation == "eager" or (dropout_p > 0 and q.device.type == "cpu"):
            context = eager_attention(q, k, v, additive_mask, dropout_p)
        else:
            context = F.scaled_dot_product_attention(q, k, v, attn_mask=additive_mask, dropout_p=dropout_p)
        context = context.transpose(1, 2).reshape(batch, length, width)
        return context if packing is None else packing.from_grid(context)


def eager_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, additive_mask: torch.Tensor,
                    dropout_p: float) -> torch.Tensor:
    """softmax(QKᵀ/√d + mask)·V with dropout on the attention probabilities."""
    # Scaling q ([B, h, T, d]) rather than the scores ([B, h, T, T]) is the same product, cheaper.
    scores = (q * (1.0 / math.sqrt(q.shape[-1]))) @ k.transpose(-1, -2)
    # In the scores' dtype: an fp32 mask would promote bf16 scores (under autocast) to fp32.
    scores = scores + additive_mask.to(scores.dtype)
    probs = torch.softmax(scores, dim=-1)
    probs = dropout(probs, dropout_p, training=dropout_p > 0)
    return probs @ v


def additive_attention_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B, T] mask of 1 (real) / 0 (pad) to a [B, 1, 1, T] bias added to attention scores."""
    # The dtype's most negative finite value, not -inf: a row of all pads then stays finite.
    blocked = (1.0 - attention_mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min
    return blocked


class AddNorm(nn.Module):
    """LayerNorm(residual + dropout(dense(x))): the sub-layer output of a post-norm transformer."""

    def __init__(self, in_size: int, config: BertConfig) -> None:
        super().__init__()
        self.dense = Linear(in_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(residual + self.dropout(self.dense(x)))


class BertLayer(nn.Module):
    """Self-attention then a position-wise feed-forward block, each wrapped in add & norm."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.attention = BertSelfAttention(config)
        self.attention_output = AddNorm(config.hidden_size, config)
        self.intermediate = Linear(config.hidden_size, config.intermediate_size)
        self.act = activation(config.hidden_act)
        self.output = AddNorm(config.intermediate_size, config)

    def forward(self, hidden: torch.Tensor, additive_mask: torch.Tensor,
                packing: Packing | None = None) -> torch.Tensor:
        attended = self.attention_output(self.attention(hidden, additive_mask, packing), hidden)
        return self.output(self.act(self.intermediate(attended)), attended)


class BertEncoderStack(nn.Module):
    """The transformer layers applied in order."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, hidden: torch.Tensor, additive_mask: torch.Tensor,
                packing: Packing | None = None) -> torch.Tensor:
        for layer in self.layer:
            hidden = layer(hidden, additive_mask, packing)
        return hidden


class BertPooler(nn.Module):
    """tanh(dense(h[CLS])): the sentence vector BERT was pretrained to use."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(hidden[:, 0]))


class BertModel(nn.Module):
    """A BERT encoder. `forward(ids, mask, types)` is exactly `encode(embed(ids, types), mask)`.

    The split lets a caller work on input embeddings (e.g. perturb them for SMART) between the two.
    """

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoderStack(config)
        self.pooler = BertPooler(config)
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        """BERT's initialisation: N(0, 0.02) weights, zero biases, identity LayerNorm."""
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
        if isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def embed(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Input embeddings [B, T, H] after LayerNorm and dropout."""
        return self.embeddings(input_ids, token_type_ids)

    def encode(self, embeddings: torch.Tensor, attention_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Run the layers and pooler on input embeddings; mask is [B, T] with 1 on real tokens.

        With `config.unpad_inputs` the layers compute only real tokens and `last_hidden_state` is
        0 at pad positions (padded computation gives meaningless values there instead).
        """
        if attention_mask is None:
            attention_mask = torch.ones(embeddings.shape[:2], dtype=torch.long, device=embeddings.device)
        device_type = embeddings.device.type
        if torch.is_autocast_enabled(device_type):
            # The residual stream in the autocast dtype too: otherwise every residual add promotes
            # to fp32 and every linear layer casts its input back down.
            embeddings = embeddings.to(torch.get_autocast_dtype(device_type))
        packing = Packing.from_mask(attention_mask) if self.config.unpad_inputs else None
        if packing is None:
            hidden = self.encoder(embeddings, additive_attention_mask(attention_mask, embeddings.dtype))
        else:
            additive_mask = additive_attention_mask(packing.grid_mask(), embeddings.dtype)
            hidden = packing.unpack(self.encoder(packing.pack(embeddings), additive_mask, packing))
        return {"last_hidden_state": hidden, "pooler_output": self.pooler(hidden)}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        return self.encode(self.embed(input_ids, token_type_ids), attention_mask)

    @classmethod
    def from_pretrained(cls, path: str | Path | None = None, **config_overrides) -> "BertModel":
        """Load a Hugging Face style directory or Hub model id (None: the packaged all-MiniLM-L6-v2).

        `config_overrides` change settings that do not affect the weights' shapes, e.g.
        `hidden_dropout_prob=0.2` or `attn_implementation="eager"`.
        """
        directory = resolve_checkpoint_dir(path)
        config = BertConfig.from_json_file(directory / "config.json", **config_overrides)
        weight_file = find_weight_file(directory)
        encoder_state, _heads = split_checkpoint(read_tensors(weight_file))
        # Before the model is built: a config asking for absurd sizes must fail here, not in an allocation.
        check_sizes(config, encoder_state, weight_file)
        model = cls(config)
        state = hf_to_minbert(encoder_state, model.state_dict(), weight_file)
        model.load_state_dict(state, strict=True)
        return model

    def save_pretrained(self, directory: str | Path, tokenizer_from: str | Path | None = None,
                        extra_tensors: dict[str, torch.Tensor] | None = None) -> None:
        """Write config.json + model.safetensors (Hugging Face names) and the tokenizer files.

        `tokenizer_from` is the checkpoint directory whose vocabulary this model uses (None: the
        packaged default); `extra_tensors` (e.g. an MLM head under `cls.`) are stored alongside.
        """
        directory = Path(directory)
        save_checkpoint(directory, {**minbert_to_hf(self.state_dict()), **(extra_tensors or {})}, self.config.to_dict())
        copy_tokenizer_files(resolve_checkpoint_dir(tokenizer_from), directory)
