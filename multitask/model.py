"""The shared encoder with one head per task, split so SMART can work on input embeddings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from minbert import BertModel
from minbert.dropout import Dropout
from minbert.plumbing.flags import flag, integer, probability
from multitask.tasks import COURSE_TASKS, TASKS, Task

POOLINGS = ("cls", "mean")
PAIR_ENCODINGS = ("cross", "bi")
# Room for [CLS] a [SEP] b [SEP] with a word piece or two of each sentence.
MIN_LENGTH = 8


@dataclass
class ModelSettings:
    """The encoder to start from and how the heads read it; each default here is the command line's."""

    pretrained: Path | None = flag(None, "Hugging Face style BERT directory, or a Hugging Face Hub model id such as "
                                         "bert-base-uncased (downloaded once into the Hugging Face cache; "
                                         "HF_HUB_OFFLINE=1 uses the cache only) (default: the packaged "
                                         "all-MiniLM-L6-v2)", type=Path)
    hidden_dropout_prob: float = flag(0.1, "dropout in the encoder and before each head", type=probability)
    max_length: int = flag(128, "tokens per (joint) input, longer ones truncated", type=integer(MIN_LENGTH))
    pooling: str = flag("mean", "sentence vector: mean of the last layer over real tokens, or the [CLS] pooler "
                                "output", choices=POOLINGS)
    pair_encoding: str = flag("cross", "pairs as one input [CLS] a [SEP] b [SEP] (cross), or each sentence alone "
                                       "with features [u, v, |u-v|, u*v] (bi)", choices=PAIR_ENCODINGS)


class MultitaskBert(nn.Module):
    """One BERT encoder, one linear head per task.

    Pairs are encoded jointly (`cross`: [CLS] a [SEP] b [SEP]) or separately (`bi`: features
    [u, v, |u−v|, u⊙v]). For `bi` the two sides are stacked along the batch, so a task's input
    is always one embeddings tensor and one mask — the single function SMART perturbs.
    With `symmetric_pairs`, evaluation averages a pair's outputs over (a, b) and (b, a).
    """

    def __init__(self, encoder: BertModel, tasks: tuple[str, ...] = COURSE_TASKS, pooling: str = "mean",
                 pair_encoding: str = "cross", head_dropout: float = 0.1, symmetric_pairs: bool = False) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling {pooling!r} is not one of {POOLINGS}")
        if pair_encoding not in PAIR_ENCODINGS:
            raise ValueError(f"pair_encoding {pair_encoding!r} is not one of {PAIR_ENCODINGS}")
        unknown = [t for t in tasks if t not in TASKS]
        if unknown:
            raise ValueError(f"unknown task(s) {unknown}; choose from {tuple(TASKS)}")
        self.encoder = encoder
        self.tasks = tuple(tasks)
        self.pooling = pooling
        self.pair_encoding = pair_encoding
        # Read by evaluation (multitask.evaluate): predict a pair as the mean over both sentence orders.
        self.symmetric_pairs = symmetric_pairs
        self.dropout = Dropout(head_dropout)
        hidden = encoder.config.hidden_size
        self.heads = nn.ModuleDict()
        for task in self.tasks:
            spec = TASKS[task]
            features = 4 * hidden if spec.is_pair and pair_encoding == "bi" else hidden
            self.heads[task] = nn.Linear(features, spec.outputs)
            nn.init.normal_(self.heads[task].weight, std=encoder.config.initializer_range)
            nn.init.zeros_(self.heads[task].bias)

    def is_bi(self, task: Task) -> bool:
        return task.is_pair and self.pair_encoding == "bi"

    def embed(self, task: Task, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(input embeddings, attention mask) for a batch of `task`; for `bi` the two sides stacked."""
        ids, types, mask = batch["input_ids"], batch["token_type_ids"], batch["attention_mask"]
        if self.is_bi(task):
            pad_id = self.encoder.config.pad_token_id
            ids = _stack_padded(ids, batch["input_ids_b"], pad_id)
            types = _stack_padded(types, batch["token_type_ids_b"], 0)
            mask = _stack_padded(mask, batch["attention_mask_b"], 0)
        return self.encoder.embed(ids, types), mask

    def predict_from_embeddings(self, task: Task, embeddings: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Task output from input embeddings: [B, classes] logits (multiclass), else [B] (a logit or a score)."""
        out = self.encoder.encode(embeddings, mask)
        features = self.pool(out, mask)
        if self.is_bi(task):
            u, v = features.chunk(2)
            features = torch.cat([u, v, (u - v).abs(), u * v], dim=-1)
        # fp32 whatever the compute precision: losses and SMART's divergences are taken in fp32.
        logits = self.heads[task.name](self.dropout(features)).float()
        # Single-output heads return [B], never [B, 1]: a [B, 1] vs [B] loss would broadcast to [B, B].
        return logits.squeeze(-1) if task.outputs == 1 else logits

    def pool(self, encoder_out: dict[str, torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        if self.pooling == "cls":
            return encoder_out["pooler_output"]
        hidden = encoder_out["last_hidden_state"].float()  # pooled in fp32 whatever the compute precision
        weights = mask.to(hidden.dtype).unsqueeze(-1)
        summed = (hidden * weights).sum(1)
        return summed / weights.sum(1).clamp(min=1.0)

    def forward(self, task: Task, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.predict_from_embeddings(task, *self.embed(task, batch))


def _stack_padded(a: torch.Tensor, b: torch.Tensor, value: int) -> torch.Tensor:
    """Concatenate two [B, T] integer tensors along the batch, right-padding the shorter with `value`."""
    length = max(a.shape[1], b.shape[1])
    return torch.cat([F.pad(a, (0, length - a.shape[1]), value=value),
                      F.pad(b, (0, length - b.shape[1]), value=value)])
