"""Seeded text noise: character typos in, or deletion of, a given share of each sentence's words."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from multitask.data import Example
from multitask.robustness.typos import random_typo
from multitask.robustness.words import Sentence, texts, with_texts

NOISE_KINDS: tuple[str, ...] = ("typo", "delete")


def edit_count(rate: float, words: int, draw: float) -> int:
    """How many of a sentence's `words` to edit at `rate`: rate·words rounded down or up at random.

    Rounded up with probability equal to the fractional part (`draw` is uniform in [0, 1)), so the
    expected count is exactly rate·words. Rounding each sentence to the nearest count, with at least
    one edit, would make 5% and 10% the same single edit in every sentence of under 15 words
    (most Quora and STS sentences) and would edit far more than the rate says; with the same
    `draw` for both rates a sentence never gets fewer edits at the higher rate.
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate must be a share of words in [0, 1], got {rate!r}")
    return math.floor(rate * words + draw)


def perturb_sentence(text: str, rate: float, kind: str, key: str) -> str:
    """`text` with typos in (kind 'typo') or deletions of (kind 'delete') about rate·words words.

    Deterministic in (text, rate, kind, key): the random choices are seeded from `key` (a string,
    which `random.Random` hashes with SHA-512, so neither PYTHONHASHSEED nor the platform changes
    them). Punctuation-only tokens are neither words nor ever touched; typos go only to words of
    at least MIN_TYPO_LENGTH letters or digits, and deletion always leaves one word. The words
    picked at a rate are a subset of those picked at any higher rate, each with the same typo.
    """
    if kind not in NOISE_KINDS:
        raise ValueError(f"unknown noise {kind!r}; expected one of {', '.join(NOISE_KINDS)}")
    sentence = Sentence(text)
    rng = random.Random(f"{key}|{kind}")
    eligible = sentence.editable_words() if kind == "typo" else list(range(len(sentence.words)))
    # Drawn before anything depends on the rate, so every rate sees the same order and draw.
    order = rng.sample(eligible, len(eligible))
    draw = rng.random()
    count = edit_count(rate, len(sentence.words), draw)
    if kind == "delete":
        chosen = order[:min(count, len(sentence.words) - 1)]
        return sentence.text(deleted=set(chosen))
    chosen = order[:count]
    return sentence.text(replaced={n: random_typo(sentence.core(n), random.Random(f"{key}|typo|{n}"))
                                   for n in chosen})


def perturb_examples(task: str, examples: Sequence[Example], rate: float, kind: str, seed: int) -> list[Example]:
    """Every sentence of every example perturbed (both sentences of a pair), seeded by (seed, task, id, side)."""
    return [with_texts(example, [perturb_sentence(text, rate, kind, f"{seed}|{task}|{example.id}|{side}")
                                 for side, text in enumerate(texts(example))])
            for example in examples]
