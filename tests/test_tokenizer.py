"""The tokenizer against transformers.BertTokenizerFast built from the same vocabulary."""

from __future__ import annotations

import pytest
import torch
import transformers

from minbert import load_tokenizer
from tests.conftest import read_column


@pytest.fixture(scope="module")
def ours():
    return load_tokenizer()


@pytest.fixture(scope="module")
def reference(checkpoint_dir):
    return transformers.BertTokenizerFast(str(checkpoint_dir / "vocab.txt"), do_lower_case=True)


def test_every_sst_dev_sentence_matches(ours, reference, data_dir):
    sentences = read_column(data_dir / "ids-sst-dev.csv", "sentence")
    assert len(sentences) == 1101
    ids, types = ours.encode_lists(sentences, max_length=128)
    expected = reference(sentences, truncation=True, max_length=128)
    assert ids == expected["input_ids"]
    assert types == expected["token_type_ids"]


def test_quora_pairs_match_including_token_types_and_truncation(ours, reference, data_dir):
    pairs = read_column(data_dir / "quora-train.csv", "sentence1", "sentence2", limit=500)
    first, second = [a for a, _ in pairs], [b for _, b in pairs]
    for max_length in (128, 24):  # 24 forces longest-first truncation on many pairs
        ids, types = ours.encode_lists(first, second, max_length=max_length)
        expected = reference(first, second, truncation="longest_first", max_length=max_length)
        assert ids == expected["input_ids"]
        assert types == expected["token_type_ids"]
    assert max(len(x) for x in ids) == 24


def test_padded_batch_layout(ours):
    batch = ours(["a b c", "d"], ["e", "f g"], max_length=16)
    assert set(batch) == {"input_ids", "token_type_ids", "attention_mask"}
    assert all(t.dtype == torch.long for t in batch.values())
    assert batch["input_ids"][1].tolist()[-1] == ours.pad_id
    assert batch["input_ids"][0].tolist()[0] == ours.cls_id
    assert batch["token_type_ids"][0].tolist() == [0, 0, 0, 0, 0, 1, 1]
    assert batch["attention_mask"].sum(1).tolist() == [7, 6]


def test_accents_are_stripped_and_text_lowercased(ours, reference):
    text = "Café Déjà-vu NAÏVE"
    assert ours.tokenize(text) == reference.tokenize(text)
    assert ours(text)["input_ids"][0].tolist() == reference(text)["input_ids"]
