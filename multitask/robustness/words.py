"""Sentences as words between kept separators, and the text fields of a task example."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from multitask.data import Example, PairExample, SentenceExample

# Shorter words are left alone by character edits: a typo in "is" or "a" makes another word
# (or nothing), not a misspelling a reader would still recognise.
MIN_TYPO_LENGTH = 3

# Whitespace runs are kept as separators so that a sentence with nothing edited is unchanged
# byte for byte (SST rows, for one, start with a space).
_SPLIT = re.compile(r"(\s+)")


@dataclass(frozen=True)
class Token:
    """A whitespace-delimited token: leading punctuation, the core (alphanumeric to alphanumeric), trailing."""

    prefix: str
    core: str
    suffix: str

    @property
    def is_word(self) -> bool:
        """Punctuation-only tokens (",", "--", "...") are no word: they are never deleted or edited."""
        return bool(self.core)

    @property
    def editable(self) -> bool:
        return sum(c.isalnum() for c in self.core) >= MIN_TYPO_LENGTH

    def with_core(self, core: str) -> str:
        return self.prefix + core + self.suffix


def split_token(text: str) -> Token:
    """'(movie),' → Token('(', 'movie', '),'); a token without letters or digits is all prefix."""
    alnum = [i for i, c in enumerate(text) if c.isalnum()]
    if not alnum:
        return Token(text, "", "")
    return Token(text[:alnum[0]], text[alnum[0]:alnum[-1] + 1], text[alnum[-1] + 1:])


class Sentence:
    """A sentence as its pieces; words are addressed by their position among the words."""

    def __init__(self, text: str) -> None:
        self.pieces = _SPLIT.split(text)
        # Odd positions of re.split with a capturing group are the separators.
        self.tokens = {i: split_token(p) for i, p in enumerate(self.pieces) if i % 2 == 0 and p}
        self.words = [i for i, token in self.tokens.items() if token.is_word]

    def editable_words(self) -> list[int]:
        """Word numbers (0-based positions in `words`) long enough for a character edit."""
        return [n for n, i in enumerate(self.words) if self.tokens[i].editable]

    def core(self, word: int) -> str:
        return self.tokens[self.words[word]].core

    def text(self, replaced: dict[int, str] | None = None, deleted: set[int] | frozenset[int] = frozenset()) -> str:
        """The sentence with word cores replaced and words deleted (by word number).

        A deleted word takes the separator before it along (or after it, for the first piece), so
        no double spaces appear; its punctuation goes with it, since it is part of the token.
        """
        pieces = list(self.pieces)
        for number, piece in (replaced or {}).items():
            index = self.words[number]
            pieces[index] = self.tokens[index].with_core(piece)
        removed: set[int] = set()
        for index in sorted(self.words[n] for n in deleted):
            removed.add(index)
            before = index - 1
            removed.add(before if before > 0 and before not in removed else index + 1)
        return "".join(piece for i, piece in enumerate(pieces) if i not in removed)


def texts(example: Example) -> tuple[str, ...]:
    """The example's sentences: one, or the two of a pair."""
    if isinstance(example, PairExample):
        return example.text_a, example.text_b
    return (example.text,)


def with_texts(example: Example, new: tuple[str, ...] | list[str]) -> Example:
    """A copy of the example with its sentences replaced (same id and label)."""
    if isinstance(example, PairExample):
        text_a, text_b = new
        return dataclasses.replace(example, text_a=text_a, text_b=text_b)
    if isinstance(example, SentenceExample):
        (text,) = new
        return dataclasses.replace(example, text=text)
    raise TypeError(f"expected a SentenceExample or PairExample, got {type(example).__name__}")
