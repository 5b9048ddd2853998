"""Seeded text noise and typos: edit counts follow the rate, same text every time, punctuation untouched."""

from __future__ import annotations

import random
import string

import pytest

from multitask.data import PairExample, SentenceExample
from multitask.robustness.noise import edit_count, perturb_examples, perturb_sentence
from multitask.robustness.typos import EDITS, KEYBOARD_NEIGHBOURS, candidate_typos, edit, random_typo
from multitask.robustness.words import Sentence, split_token

SST_LIKE = " It 's a lovely film with lovely performances by Buy and Accorsi , which is probably for the best ."
QUORA_LIKE = "What are the best places to visit in India during monsoon season?"


def words(text: str) -> list[str]:
    return text.split()


def changed_words(before: str, after: str) -> int:
    a, b = words(before), words(after)
    assert len(a) == len(b)
    return sum(x != y for x, y in zip(a, b))


# ------------------------------------------------------------------------------------------ words

def test_tokens_keep_punctuation_outside_the_core():
    token = split_token("(movie),")
    assert (token.prefix, token.core, token.suffix) == ("(", "movie", "),")
    assert not split_token("--").is_word and not split_token("...").is_word
    assert split_token("'s").core == "s" and not split_token("'s").editable


def test_unedited_sentence_is_unchanged_byte_for_byte():
    assert Sentence(SST_LIKE).text() == SST_LIKE
    assert Sentence("  two  spaces\tand a tab ").text() == "  two  spaces\tand a tab "


def test_deleting_words_leaves_single_separators():
    sentence = Sentence("alpha beta gamma delta")
    assert sentence.text(deleted={0}) == "beta gamma delta"
    assert sentence.text(deleted={0, 1}) == "gamma delta"
    assert sentence.text(deleted={1, 3}) == "alpha gamma"
    assert sentence.text(deleted={3}) == "alpha beta gamma"


# ------------------------------------------------------------------------------------------ typos

def test_keyboard_neighbours_are_symmetric_and_adjacent():
    assert set(KEYBOARD_NEIGHBOURS["g"]) == set("tyfhvb")
    assert set(KEYBOARD_NEIGHBOURS["q"]) == set("12wa")
    for key, near in KEYBOARD_NEIGHBOURS.items():
        assert key not in near
        assert all(key in KEYBOARD_NEIGHBOURS[other] for other in near), key


@pytest.mark.parametrize("kind", EDITS)
def test_each_edit_changes_the_word_as_its_kind_says(kind):
    for seed in range(50):
        word = random.Random(seed).choice(["movie", "Accorsi", "performances", "best", "India"])
        edited = edit(word, kind, random.Random(seed))
        assert edited is not None and edited != word
        if kind == "swap":
            moved = [i for i, (a, b) in enumerate(zip(word, edited)) if a != b]
            assert sorted(edited) == sorted(word) and len(moved) == 2 and moved[1] == moved[0] + 1
        elif kind == "insert":
            assert len(edited) == len(word) + 1 and edited[0] == word[0] and edited[-1] == word[-1]
        elif kind == "delete":
            assert len(edited) == len(word) - 1
        else:
            diff = [(a, b) for a, b in zip(word, edited) if a != b]
            assert len(edited) == len(word) and len(diff) == 1
            assert diff[0][1].lower() in KEYBOARD_NEIGHBOURS[diff[0][0].lower()]


def test_swap_refuses_a_word_of_one_repeated_letter():
    assert edit("ooo", "swap", random.Random(0)) is None
    assert random_typo("ooo", random.Random(0)) != "ooo"


def test_one_candidate_per_edit_kind_the_word_admits():
    for seed in range(20):
        found = candidate_typos("lovely", random.Random(seed))
        assert len(found) == len(EDITS) and len(set(found)) == len(found) and "lovely" not in found
        assert len(candidate_typos("oooh", random.Random(seed))) == len(EDITS)
        assert len(candidate_typos("ooo", random.Random(seed))) == len(EDITS) - 1  # no swap changes it


# ------------------------------------------------------------------------------------------ counts

def test_edit_count_rounds_down_or_up_with_the_fraction():
    assert edit_count(0.1, 20, 0.99) == 2
    assert edit_count(0.1, 15, 0.49) == 1 and edit_count(0.1, 15, 0.5) == 2
    assert edit_count(0.05, 10, 0.49) == 0 and edit_count(0.05, 10, 0.5) == 1
    assert edit_count(0.0, 10, 0.999) == 0
    with pytest.raises(ValueError, match="rate"):
        edit_count(5, 10, 0.5)


@pytest.mark.parametrize("rate", [0.05, 0.1, 0.3])
def test_typo_counts_follow_the_rate(rate):
    text = " ".join(["word"] * 37)  # every word editable; 37 words make rate·37 fractional
    counts = [changed_words(text, perturb_sentence(text, rate, "typo", f"k{i}")) for i in range(400)]
    expected = rate * 37
    assert set(counts) == {int(expected), int(expected) + 1}
    assert abs(sum(counts) / len(counts) - expected) < 0.1


@pytest.mark.parametrize("rate", [0.05, 0.1])
def test_deletion_counts_follow_the_rate(rate):
    text = " ".join(f"w{i}" for i in range(33))
    counts = [33 - len(words(perturb_sentence(text, rate, "delete", f"k{i}"))) for i in range(400)]
    assert set(counts) == {int(rate * 33), int(rate * 33) + 1}
    assert abs(sum(counts) / len(counts) - rate * 33) < 0.1


def test_deletion_keeps_one_word():
    assert words(perturb_sentence("hello", 1.0, "delete", "k")) == ["hello"]
    assert len(words(perturb_sentence("hello there world", 1.0, "delete", "k"))) == 1


def test_punctuation_and_short_words_are_never_touched():
    text = "a , b ; to ... of -- is ! ? ( )"
    for i in range(50):
        assert perturb_sentence(text, 1.0, "typo", f"k{i}") == text
    mixed = "the movie , which is a bit long , works !"
    for i in range(50):
        out = perturb_sentence(mixed, 0.5, "delete", f"k{i}")
        assert [t for t in words(out) if not any(c.isalnum() for c in t)] == [",", ",", "!"]


def test_higher_rate_edits_a_superset_with_the_same_typos():
    for i in range(50):
        low, high = (words(perturb_sentence(SST_LIKE, r, "typo", f"k{i}")) for r in (0.05, 0.3))
        original = words(SST_LIKE)
        assert all(lo == orig or lo == hi for lo, hi, orig in zip(low, high, original))


def test_same_text_for_same_seed_task_and_id_and_different_otherwise():
    example = PairExample("id7", SST_LIKE, QUORA_LIKE, 1)
    first = perturb_examples("para", [example], 0.3, "typo", seed=3)
    assert first == perturb_examples("para", [example], 0.3, "typo", seed=3)
    others = [perturb_examples("para", [example], 0.3, "typo", seed=4),
              perturb_examples("sts", [example], 0.3, "typo", seed=3),
              perturb_examples("para", [PairExample("id8", SST_LIKE, QUORA_LIKE, 1)], 0.3, "typo", seed=3)]
    assert all(other != first for other in others)
    # Both sentences of a pair are perturbed, label and id kept.
    (noisy,) = first
    assert noisy.text_a != SST_LIKE and noisy.text_b != QUORA_LIKE
    assert (noisy.id, noisy.label) == ("id7", 1)


def test_single_sentence_examples_keep_their_type():
    (noisy,) = perturb_examples("sst", [SentenceExample("s1", SST_LIKE, 3)], 0.2, "delete", seed=0)
    assert isinstance(noisy, SentenceExample) and noisy.label == 3 and len(words(noisy.text)) < len(words(SST_LIKE))


def test_typos_stay_printable_letters_and_digits():
    allowed = set(string.ascii_letters + string.digits + string.punctuation + " ")
    for i in range(100):
        assert set(perturb_sentence(SST_LIKE, 0.3, "typo", f"k{i}")) <= allowed
