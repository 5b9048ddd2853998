"""Masked-language-model inputs: BERT's 15% token selection and its 80/10/10 replacement rule."""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from minbert.tokenizer import BertTokenizer

IGNORE_INDEX = -100  # label of positions that are not predicted (cross_entropy's default ignore_index)
# Vocabulary entries such as [unused17] or [MASK]: never drawn as random replacements, because the
# model has never seen them in real text and they would teach it nothing.
_BRACKETED = re.compile(r"^\[[^\]]+\]$")


@dataclass(frozen=True)
class MaskingVocab:
    """What masking needs to know about the vocabulary."""

    mask_id: int
    special_ids: torch.Tensor      # [S] ids that are never selected ([CLS], [SEP], [PAD], ...)
    replacement_ids: torch.Tensor  # [R] ids a selected token may be swapped for in the 10% random case
    continuation: torch.Tensor     # [V] bool, True for WordPiece continuation pieces ("##ing")

    @classmethod
    def from_tokenizer(cls, tokenizer: BertTokenizer) -> "MaskingVocab":
        size = max(tokenizer.vocab.values()) + 1
        continuation = torch.zeros(size, dtype=torch.bool)
        replacements = []
        for token, index in tokenizer.vocab.items():
            continuation[index] = token.startswith("##")
            if index not in tokenizer.special_ids and not _BRACKETED.match(token):
                replacements.append(index)
        return cls(mask_id=tokenizer.mask_id,
                   special_ids=torch.tensor(sorted(tokenizer.special_ids), dtype=torch.long),
                   replacement_ids=torch.tensor(sorted(replacements), dtype=torch.long),
                   continuation=continuation)


def word_starts(input_ids: torch.Tensor, selectable: torch.Tensor, vocab: MaskingVocab) -> torch.Tensor:
    """[B, T] bool: True where a word begins, a word being a token plus the `##` pieces after it.

    A `##` piece whose left neighbour is a special token (or the row start) starts a word of its
    own: packing may cut a word at a sequence boundary, and its tail must still be maskable.
    """
    previous = torch.zeros_like(selectable)
    previous[:, 1:] = selectable[:, :-1]
    return selectable & ~(vocab.continuation[input_ids] & previous)


def mask_tokens(input_ids: torch.Tensor, vocab: MaskingVocab, generator: torch.Generator,
                probability: float = 0.15, whole_word: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(masked inputs, labels) for a [B, T] batch of token ids; labels are -100 where not selected.

    Each non-special token is selected with `probability` (with `whole_word`, each word is, and
    all its pieces follow it). A selected token becomes [MASK] with probability 0.8, a random
    ordinary token with 0.1, and stays itself with 0.1 (Devlin et al. 2019, §3.1). Selection is
    per token rather than an exact count per row, so the fraction is 15% in expectation over the
    corpus, which is what the loss averages over anyway.
    """
    selectable = ~torch.isin(input_ids, vocab.special_ids)
    if whole_word:
        starts = word_starts(input_ids, selectable, vocab)
        # Index of the word each token belongs to; non-selectable tokens get a harmless index
        # (they are never selected below).
        word = (torch.cumsum(starts.reshape(-1), 0) - 1).clamp(min=0).view_as(input_ids)
        words = int(starts.sum())
        # Draw per word, then spread the draws to the pieces: a word is selected and replaced as one.
        select_draw = torch.rand(max(words, 1), generator=generator)[word]
        action_draw = torch.rand(max(words, 1), generator=generator)[word]
    else:
        select_draw = torch.rand(input_ids.shape, generator=generator)
        action_draw = torch.rand(input_ids.shape, generator=generator)
    selected = selectable & (select_draw < probability)
    random_tokens = vocab.replacement_ids[
        torch.randint(len(vocab.replacement_ids), input_ids.shape, generator=generator)]

    inputs = input_ids.clone()
    inputs[selected & (action_draw < 0.8)] = vocab.mask_id
    swap = selected & (action_draw >= 0.8) & (action_draw < 0.9)
    inputs[swap] = random_tokens[swap]
    labels = torch.where(selected, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    return inputs, labels
