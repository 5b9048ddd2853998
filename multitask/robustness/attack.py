"""A model-aware typo attack (TextBugger / DeepWordBug style): edit the words the prediction leans on most."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from multitask.data import Example
from multitask.robustness.scoring import Scorer, class_probabilities, labels_of
from multitask.robustness.typos import candidate_typos
from multitask.robustness.words import Sentence, texts, with_texts
from multitask.tasks import TASKS

MAX_EDITS = 2

Slot = tuple[int, int]  # (sentence of the example, word number in it)


@dataclass
class AttackRecord:
    """One attacked example: was it right before, did the attack flip it, with how many edited words."""

    correct: bool
    flipped: bool = False
    edits: int = 0
    adversarial: Example | None = None  # the final text (None for examples the model got wrong)


@dataclass
class AttackResult:
    records: list[AttackRecord]

    @property
    def examples(self) -> int:
        return len(self.records)

    @property
    def accuracy(self) -> float:
        """Share of all examples still predicted right after the attack (wrong ones count as lost)."""
        return sum(r.correct and not r.flipped for r in self.records) / len(self.records)

    @property
    def success_rate(self) -> float:
        """Flipped / originally correct; NaN when the model got no example right (nothing to attack)."""
        correct = sum(r.correct for r in self.records)
        return sum(r.flipped for r in self.records) / correct if correct else float("nan")


@dataclass
class _State:
    """An example under attack: its sentences, the edits kept so far and the words still to try."""

    example: Example
    sentences: list[Sentence]
    target: int  # the class predicted (and right) before the attack
    probability: float  # of `target`, with the edits kept so far
    ranked: list[Slot] = field(default_factory=list)
    edits: dict[Slot, str] = field(default_factory=dict)
    next_word: int = 0
    flipped: bool = False

    def text(self, extra: dict[Slot, str] | None = None, blank: Slot | None = None) -> Example:
        """The example with the kept edits, `extra` edits, and the word at `blank` emptied."""
        edits = {**self.edits, **(extra or {})}
        if blank is not None:
            edits[blank] = ""
        return with_texts(self.example, [sentence.text({n: core for (s, n), core in edits.items() if s == side})
                                         for side, sentence in enumerate(self.sentences)])


def word_attack(scorer: Scorer, task: str, examples: Sequence[Example], seed: int = 0, max_edits: int = MAX_EDITS,
                progress: Callable[[str], None] | None = None) -> AttackResult:
    """Attack each example the model gets right, all examples in lockstep so every model call is one batch.

    1. Rank the example's editable words (both sentences of a pair) by how much emptying the word
       lowers the probability of the predicted class; ties keep text order.
    2. Down that ranking, score every candidate typo of the word (one per edit kind, positions
       seeded by (seed, task, id, sentence, word)): a candidate that flips the prediction wins (the
       one leaving the least probability on the old class, if several), else the one that lowers
       that probability most is kept, if it lowers it at all (a word no typo hurts costs nothing).
    3. Stop at the first flip, after `max_edits` kept edits, or when the ranking is exhausted.
    """
    kind = TASKS[task].kind
    report = progress or (lambda message: None)
    report(f"attack {task}: {len(examples)} examples")
    probabilities = class_probabilities(kind, scorer.outputs(task, examples))
    predicted = probabilities.argmax(dim=-1)
    correct = (predicted == labels_of(task, examples)).tolist()
    records = [AttackRecord(correct=c) for c in correct]
    states = {i: _State(e, [Sentence(t) for t in texts(e)], int(predicted[i]), float(probabilities[i, predicted[i]]))
              for i, e in enumerate(examples) if correct[i]}
    _rank_words(scorer, task, kind, states)
    rounds = 0
    while active := [i for i, s in states.items()
                     if not s.flipped and len(s.edits) < max_edits and s.next_word < len(s.ranked)]:
        rounds += 1
        report(f"attack {task}: round {rounds}, {len(active)} examples still standing")
        _edit_round(scorer, task, kind, {i: states[i] for i in active}, seed)
    for i, state in states.items():
        records[i].flipped, records[i].edits, records[i].adversarial = state.flipped, len(state.edits), state.text()
    return AttackResult(records)


def _rank_words(scorer: Scorer, task: str, kind: str, states: dict[int, _State]) -> None:
    slots = {i: [(side, n) for side, sentence in enumerate(s.sentences) for n in sentence.editable_words()]
             for i, s in states.items()}
    # The core alone is emptied, so "film," is ranked as "film" and its comma stays.
    variants = [(i, slot) for i in states for slot in slots[i]]
    if not variants:
        return
    probabilities = class_probabilities(kind, scorer.outputs(task, [states[i].text(blank=slot) for i, slot in variants]))
    drop: dict[int, list[tuple[float, int, Slot]]] = {i: [] for i in states}
    for row, (i, slot) in enumerate(variants):
        state = states[i]
        drop[i].append((state.probability - float(probabilities[row, state.target]), len(drop[i]), slot))
    for i, state in states.items():
        state.ranked = [slot for _, _, slot in sorted(drop[i], key=lambda d: (-d[0], d[1]))]


def _edit_round(scorer: Scorer, task: str, kind: str, states: dict[int, _State], seed: int) -> None:
    candidates: list[tuple[int, Slot, str]] = []
    for i, state in states.items():
        side, n = slot = state.ranked[state.next_word]
        state.next_word += 1
        rng = random.Random(f"{seed}|{task}|{state.example.id}|{side}|{n}")
        candidates += [(i, slot, typo) for typo in candidate_typos(state.sentences[side].core(n), rng)]
    if not candidates:
        return
    probabilities = class_probabilities(
        kind, scorer.outputs(task, [states[i].text({slot: typo}) for i, slot, typo in candidates]))
    best: dict[int, tuple[bool, float, Slot, str]] = {}
    for row, (i, slot, typo) in enumerate(candidates):
        state = states[i]
        flips = int(probabilities[row].argmax()) != state.target
        left = float(probabilities[row, state.target])
        # Flipping beats not flipping; then less probability left on the old class is better.
        if i not in best or (flips, -left) > (best[i][0], -best[i][1]):
            best[i] = (flips, left, slot, typo)
    for i, (flips, left, slot, typo) in best.items():
        state = states[i]
        if flips or left < state.probability:
            state.edits[slot] = typo
            state.probability, state.flipped = left, flips
