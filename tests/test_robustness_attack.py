"""The word attack on stand-in models whose answers hang on the spelling of known words."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest
import torch

from multitask.data import Example, PairExample, SentenceExample
from multitask.robustness.attack import word_attack
from multitask.robustness.words import texts


class KeywordModel:
    """Predicts `positive` (class 3 for sst, 1 for para) while at least one keyword is spelled right.

    The margin is (keywords spelled right) − 0.5, so every misspelt keyword lowers the probability
    and the answer flips only when all are misspelt. Counts its calls, to check the batching.
    """

    def __init__(self, keywords: Sequence[str], constant: bool = False) -> None:
        self.keywords = set(keywords)
        self.constant = constant
        self.calls = 0
        self.scored = 0

    def margin(self, example: Example) -> float:
        if self.constant:
            return 1.0
        found = sum(word.strip(".,?!").lower() in self.keywords for text in texts(example) for word in text.split())
        return found - 0.5

    def outputs(self, task: str, examples: Sequence[Example]) -> torch.Tensor:
        self.calls += 1
        self.scored += len(examples)
        margins = torch.tensor([self.margin(e) for e in examples], dtype=torch.float32)
        if task == "para":
            return margins
        logits = torch.full((len(examples), 5), -5.0)
        logits[:, 1] = 0.0
        logits[:, 3] = margins
        return logits


SENTENCES = ["the plot was thin but the acting was lovely overall .",
             "a lovely , warm and quiet film about nothing much",
             "honest work : lovely music and steady pacing"]


def sst(sentences=SENTENCES, label: int = 3) -> list[Example]:
    return [SentenceExample(f"s{i}", text, label) for i, text in enumerate(sentences)]


def test_one_keyword_is_misspelt_in_one_round_and_the_answer_flips():
    model = KeywordModel(["lovely"])
    result = word_attack(model, "sst", sst())
    assert result.success_rate == 1.0 and result.accuracy == 0.0 and result.examples == 3
    for record, original in zip(result.records, SENTENCES):
        assert record.correct and record.flipped and record.edits == 1
        changed = [(a, b) for a, b in zip(original.split(), record.adversarial.text.split()) if a != b]
        assert len(changed) == 1 and changed[0][0] == "lovely", changed
    # Clean pass, the ranking (every editable word emptied), one round of typos: the ranking put
    # the keyword first, and all examples went through each step as one batch.
    assert model.calls == 3


def test_two_keywords_across_both_sentences_of_a_pair_take_two_edits():
    model = KeywordModel(["lovely", "fine"])
    pairs = [PairExample("p0", "is this a lovely day to go out ?", "what makes weather fine here ?", 1),
             PairExample("p1", "how fine is the tuning of violins ?", "why do lovely cats purr so loudly ?", 1)]
    result = word_attack(model, "para", pairs)
    assert result.success_rate == 1.0 and result.accuracy == 0.0
    for record, pair in zip(result.records, pairs):
        assert record.flipped and record.edits == 2
        assert record.adversarial.text_a != pair.text_a and record.adversarial.text_b != pair.text_b
    assert model.calls == 4  # clean, ranking, two rounds


def test_at_most_two_edits_per_example():
    model = KeywordModel(["lovely", "quiet", "warm"])
    result = word_attack(model, "sst", sst(["a lovely , warm and quiet film about nothing much"]))
    (record,) = result.records
    assert record.correct and not record.flipped and record.edits == 2
    assert result.success_rate == 0.0 and result.accuracy == 1.0
    assert model.margin(record.adversarial) == 0.5  # two of the three keywords misspelt


def test_a_model_that_cannot_be_flipped():
    model = KeywordModel([], constant=True)
    result = word_attack(model, "para", [PairExample("p", "what is a word ?", "which words are words ?", 1)])
    assert result.success_rate == 0.0 and result.accuracy == 1.0
    assert result.records[0].edits == 0  # no typo lowered the probability, so none was kept


def test_examples_the_model_gets_wrong_are_not_attacked_but_count_against_accuracy():
    model = KeywordModel(["lovely"])
    examples = sst() + [SentenceExample("wrong", "a lovely film", 0)]
    result = word_attack(model, "sst", examples)
    assert [r.correct for r in result.records] == [True, True, True, False]
    assert result.success_rate == 1.0 and result.accuracy == 0.0
    assert result.records[3].adversarial is None and result.records[3].edits == 0
    nothing_right = word_attack(model, "sst", [SentenceExample("w", "a lovely film", 0)])
    assert math.isnan(nothing_right.success_rate) and nothing_right.accuracy == 0.0


def test_same_seed_same_adversarial_text():
    first = word_attack(KeywordModel(["lovely"]), "sst", sst(), seed=5)
    again = word_attack(KeywordModel(["lovely"]), "sst", sst(), seed=5)
    assert [r.adversarial for r in first.records] == [r.adversarial for r in again.records]


@pytest.mark.parametrize("task", ["sst", "para"])
def test_result_reports_the_number_of_examples_right_or_wrong(task):
    if task == "sst":
        examples = sst() + [SentenceExample("wrong", "a lovely film", 0)]
    else:
        examples = [PairExample("p", "a lovely day", "a day", 1), PairExample("w", "a lovely day", "a day", 0)]
    assert word_attack(KeywordModel(["lovely"]), task, examples).examples == len(examples)
