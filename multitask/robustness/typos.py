"""Character-level typos of one word: swap, insert, delete, QWERTY-neighbour substitution."""

from __future__ import annotations

import random
import string

EDITS: tuple[str, ...] = ("swap", "insert", "delete", "substitute")

_ROWS = ("1234567890", "qwertyuiop", "asdfghjkl", "zxcvbnm")


# Each row of a QWERTY keyboard sits about half a key to the right of the row above, so key j of
# a row touches keys j and j+1 of the row above and keys j−1 and j of the row below.
def _neighbour_map() -> dict[str, str]:
    neighbours: dict[str, set[str]] = {}
    for r, row in enumerate(_ROWS):
        for j, key in enumerate(row):
            near = {row[k] for k in (j - 1, j + 1) if 0 <= k < len(row)}
            if r > 0:
                above = _ROWS[r - 1]
                near |= {above[k] for k in (j, j + 1) if 0 <= k < len(above)}
            if r + 1 < len(_ROWS):
                below = _ROWS[r + 1]
                near |= {below[k] for k in (j - 1, j) if 0 <= k < len(below)}
            neighbours[key] = near
    return {key: "".join(sorted(near)) for key, near in neighbours.items()}


# 'g' → 'bfhrtvy': the keys a finger slips to when aiming at g.
KEYBOARD_NEIGHBOURS: dict[str, str] = _neighbour_map()


def _alnum_positions(word: str) -> list[int]:
    return [i for i, c in enumerate(word) if c.isalnum()]


def _match_case(original: str, replacement: str) -> str:
    return replacement.upper() if original.isupper() else replacement


def swap(word: str, rng: random.Random) -> str | None:
    """Two adjacent letters exchanged; only pairs that differ, so the word really changes."""
    pairs = [i for i in range(len(word) - 1)
             if word[i].isalnum() and word[i + 1].isalnum() and word[i].lower() != word[i + 1].lower()]
    if not pairs:
        return None
    i = rng.choice(pairs)
    return word[:i] + word[i + 1] + word[i] + word[i + 2:]


def insert(word: str, rng: random.Random) -> str:
    """A letter typed twice or a neighbouring key caught on the way: a neighbour of the letter
    before the gap, inserted inside the word (first and last letters stay where they are)."""
    i = rng.randrange(1, len(word))
    after = word[i - 1]
    choices = KEYBOARD_NEIGHBOURS.get(after.lower(), string.ascii_lowercase)
    return word[:i] + _match_case(after, rng.choice(choices)) + word[i:]


def delete(word: str, rng: random.Random) -> str | None:
    """One letter or digit dropped."""
    positions = _alnum_positions(word)
    if len(positions) < 2:
        return None
    i = rng.choice(positions)
    return word[:i] + word[i + 1:]


def substitute(word: str, rng: random.Random) -> str | None:
    """One letter or digit replaced by a key next to it on a QWERTY keyboard."""
    positions = [i for i in _alnum_positions(word) if word[i].lower() in KEYBOARD_NEIGHBOURS]
    if not positions:
        return None
    i = rng.choice(positions)
    return word[:i] + _match_case(word[i], rng.choice(KEYBOARD_NEIGHBOURS[word[i].lower()])) + word[i + 1:]


_BY_NAME = {"swap": swap, "insert": insert, "delete": delete, "substitute": substitute}


def edit(word: str, kind: str, rng: random.Random) -> str | None:
    """The word with one edit of this kind, or None when the word admits none (e.g. 'ooo' for swap)."""
    if kind not in _BY_NAME:
        raise ValueError(f"unknown edit {kind!r}; expected one of {', '.join(EDITS)}")
    if len(word) < 2:
        return None
    return _BY_NAME[kind](word, rng)


def random_typo(word: str, rng: random.Random) -> str:
    """One edit of a kind drawn at random among those the word admits (insert always does)."""
    kinds = list(EDITS)
    rng.shuffle(kinds)
    for kind in kinds:
        edited = edit(word, kind, rng)
        if edited is not None and edited != word:
            return edited
    raise AssertionError(f"no edit changed {word!r}")  # insert always lengthens a word of ≥ 2 characters


def candidate_typos(word: str, rng: random.Random) -> list[str]:
    """One candidate per edit kind the word admits, distinct and different from the word, in EDITS order."""
    out: list[str] = []
    for kind in EDITS:
        edited = edit(word, kind, rng)
        if edited is not None and edited != word and edited not in out:
            out.append(edited)
    return out
