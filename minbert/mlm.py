"""The masked-language-model head (decoder tied to the word embeddings) and BERT with it on top."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from minbert.errors import CheckpointError
from minbert.hub import resolve_checkpoint_dir
from minbert.masking import IGNORE_INDEX
from minbert.model import BertConfig, BertModel, activation
from minbert.weights import find_weight_file, read_tensors, split_checkpoint

log = logging.getLogger(__name__)

# Our head's parameter names and their names in a Hugging Face BertForMaskedLM checkpoint.
HEAD_NAMES = {
    "dense.weight": "cls.predictions.transform.dense.weight",
    "dense.bias": "cls.predictions.transform.dense.bias",
    "LayerNorm.weight": "cls.predictions.transform.LayerNorm.weight",
    "LayerNorm.bias": "cls.predictions.transform.LayerNorm.bias",
    "bias": "cls.predictions.bias",
}
# Hugging Face ties this one to cls.predictions.bias; older checkpoints store only it.
_DECODER_BIAS = "cls.predictions.decoder.bias"
_DECODER_WEIGHT = "cls.predictions.decoder.weight"


class MLMHead(nn.Module):
    """dense + activation + LayerNorm, then logits over the vocabulary from the word embeddings.

    The decoder is the embedding matrix itself (same storage, not a copy), as in BERT: an update
    from either the input or the output side moves both, and the head adds only H² + 3H + V
    parameters.
    """

    def __init__(self, config: BertConfig, word_embeddings: nn.Embedding) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.act = activation(config.hidden_act)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.decoder.weight = word_embeddings.weight
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.reset_parameters(config.initializer_range)

    def reset_parameters(self, std: float) -> None:
        """BERT's initialisation for a head the checkpoint does not have (the tied decoder is left alone)."""
        nn.init.normal_(self.dense.weight, mean=0.0, std=std)
        nn.init.zeros_(self.dense.bias)
        nn.init.ones_(self.LayerNorm.weight)
        nn.init.zeros_(self.LayerNorm.bias)
        nn.init.zeros_(self.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.LayerNorm(self.act(self.dense(hidden)))) + self.bias

    def hf_tensors(self) -> dict[str, torch.Tensor]:
        """The head's own tensors under Hugging Face names (the tied decoder is the word embeddings)."""
        state = self.state_dict()
        return {hf: state[ours] for ours, hf in HEAD_NAMES.items()}

    def load_hf_tensors(self, heads: dict[str, torch.Tensor], source: Path) -> bool:
        """Copy `cls.predictions.*` tensors in; False when the checkpoint has no MLM head at all."""
        heads = dict(heads)
        if HEAD_NAMES["bias"] not in heads and _DECODER_BIAS in heads:
            heads[HEAD_NAMES["bias"]] = heads[_DECODER_BIAS]
        present = [hf for hf in HEAD_NAMES.values() if hf in heads]
        if not present:
            return False
        state = self.state_dict()
        for ours, hf in HEAD_NAMES.items():
            if hf not in heads:
                raise CheckpointError(f"{source}: has an incomplete MLM head: {present[0]} is there but "
                                      f"{hf} is missing; remove the cls.predictions tensors to start a fresh head")
            if heads[hf].shape != state[ours].shape:
                raise CheckpointError(f"{source}: key {hf} has shape {tuple(heads[hf].shape)}, but config.json "
                                      f"implies {tuple(state[ours].shape)}")
        with torch.no_grad():
            for ours, hf in HEAD_NAMES.items():
                state[ours].copy_(heads[hf])
        decoder = heads.get(_DECODER_WEIGHT)
        if decoder is not None and not torch.equal(decoder, self.decoder.weight.detach()):
            # An untied checkpoint: we keep BERT's tying, so its separate output matrix is not used.
            log.warning("%s: %s differs from the word embeddings; the decoder stays tied to the embeddings",
                        source, _DECODER_WEIGHT)
        return True


class BertForMaskedLM(nn.Module):
    """A BertModel with an MLM head; loads and saves in the layout of transformers' BertForMaskedLM."""

    def __init__(self, encoder: BertModel) -> None:
        super().__init__()
        self.encoder = encoder
        self.config = encoder.config
        self.head = MLMHead(encoder.config, encoder.embeddings.word_embeddings)
        # Set by from_pretrained: whether the head came from the checkpoint or was initialised.
        self.head_from_checkpoint = False

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, T, V] at every position (for inspection and comparison; training uses `masked_logits`)."""
        return self.head(self.encoder(input_ids, attention_mask, token_type_ids)["last_hidden_state"])

    def masked_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits [N, V], targets [N]) at the N labelled positions only.

        The vocabulary projection costs about half as much as the whole 6-layer encoder when
        applied at every position; restricted to the 15% that carry a loss it is a small extra.
        """
        hidden = self.encoder(input_ids, attention_mask)["last_hidden_state"]
        where = labels != IGNORE_INDEX
        return self.head(hidden[where]), labels[where]

    def loss(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over the labelled positions."""
        logits, targets = self.masked_logits(input_ids, attention_mask, labels)
        # In fp32 whatever the compute precision: a bf16 log-softmax over 30k words loses the loss.
        return F.cross_entropy(logits.float(), targets)

    @classmethod
    def from_pretrained(cls, path: str | Path | None = None, **config_overrides) -> "BertForMaskedLM":
        """Encoder and, when the checkpoint has `cls.predictions.*` tensors, the MLM head from `path`."""
        directory = resolve_checkpoint_dir(path)
        model = cls(BertModel.from_pretrained(directory, **config_overrides))
        weight_file = find_weight_file(directory)
        _, heads = split_checkpoint(read_tensors(weight_file))
        model.head_from_checkpoint = model.head.load_hf_tensors(heads, weight_file)
        return model

    def save_pretrained(self, directory: str | Path, tokenizer_from: str | Path | None = None) -> None:
        """Encoder in the Hugging Face layout with the head as `cls.predictions.*` beside it."""
        self.encoder.save_pretrained(directory, tokenizer_from=tokenizer_from, extra_tensors=self.head.hf_tensors())
