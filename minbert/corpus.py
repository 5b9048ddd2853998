"""MLM pretraining text: plain-text documents, deduplication, a held-out split, packing into full sequences."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from minbert.tokenizer import BertTokenizer


def read_documents(path: str | Path) -> list[str]:
    """One document per line of a UTF-8 text file; blank lines are skipped."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: corpus file not found") from None
    except UnicodeDecodeError as err:
        line = err.object.count(b"\n", 0, err.start) + 1
        raise ValueError(f"{path}: line {line} is not valid UTF-8; re-save the file as UTF-8") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def dedupe(texts: Iterable[str]) -> list[str]:
    """Texts in first-seen order, each kept once; blank ones dropped.

    Two texts count as the same when they differ only in case or whitespace: the uncased
    tokenizer turns them into the same tokens, and a duplicate would leak a training
    sentence into the held-out set.
    """
    seen: set[str] = set()
    kept = []
    for text in texts:
        text = text.strip()
        key = " ".join(text.split()).casefold()
        if key and key not in seen:
            seen.add(key)
            kept.append(text)
    return kept


def split_held_out(documents: Sequence[str], fraction: float = 0.05,
                   seed: int = 0) -> tuple[list[str], list[str]]:
    """(training documents, held-out documents): a seeded random `fraction` is held out, order kept."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"held-out fraction {fraction} must be in (0, 1)")
    count = len(documents)
    held = max(1, round(fraction * count)) if count >= 2 else 0
    chosen = np.zeros(count, dtype=bool)
    chosen[np.random.default_rng(seed).permutation(count)[:held]] = True
    return ([d for d, c in zip(documents, chosen) if not c], [d for d, c in zip(documents, chosen) if c])


@dataclass(frozen=True)
class PackedSequences:
    """[N, L] token ids, each row `[CLS]` + a slice of the concatenated documents, and its mask."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def tokens(self) -> int:
        return int(self.attention_mask.sum())

    @property
    def padding_fraction(self) -> float:
        """Share of the N·L positions that are padding (only the last row has any)."""
        return 1.0 - self.tokens / max(1, self.attention_mask.numel())


def pack(documents: Sequence[Sequence[int]], max_length: int, cls_id: int, sep_id: int,
         pad_id: int) -> PackedSequences:
    """Concatenate tokenised documents, each closed by [SEP], and cut the stream into rows of `max_length`.

    Every row starts with [CLS] and is full except the last, so almost no compute goes to
    padding (batches of single sentences would be more than half padding at length 128). A
    document may run on from one row into the next: cutting at row edges throws nothing away,
    and long reviews are learnt from in full instead of being truncated.
    """
    if max_length < 2:
        raise ValueError(f"max_length {max_length} leaves no room after [CLS]")
    stream = [token for document in documents for token in (*document, sep_id)]
    body = max_length - 1
    rows = -(-len(stream) // body)
    flat = torch.full((rows * body,), pad_id, dtype=torch.long)
    flat[:len(stream)] = torch.tensor(stream, dtype=torch.long)
    input_ids = torch.cat([torch.full((rows, 1), cls_id, dtype=torch.long), flat.view(rows, body)], dim=1)
    # The mask comes from positions, not from comparing with pad_id, so a document is never cut short.
    attention_mask = torch.zeros(rows * body, dtype=torch.long)
    attention_mask[:len(stream)] = 1
    attention_mask = torch.cat([torch.ones((rows, 1), dtype=torch.long), attention_mask.view(rows, body)], dim=1)
    return PackedSequences(input_ids, attention_mask)


def tokenise_and_pack(documents: Sequence[str], tokenizer: BertTokenizer, max_length: int) -> PackedSequences:
    """Tokenise documents (no truncation) and pack them into rows of `max_length`."""
    ids = tokenizer.encode_documents(documents)
    return pack([d for d in ids if d], max_length, tokenizer.cls_id, tokenizer.sep_id, tokenizer.pad_id)
