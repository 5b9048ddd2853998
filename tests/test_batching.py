"""Tests for pre-tokenized datasets, the length-bucketed sampler, collation and eval order."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from multitask.batching import (BucketBatchSampler, EncodedTask, bucketed_batches, collate,
                                compare_padding, encode_task, padding_fraction, random_batches,
                                restore_order, sorted_batches)
from multitask.data import PairExample, SentenceExample
from multitask.tasks import PARA, SST, STS

DATA = Path(__file__).resolve().parent.parent / "data"


@pytest.fixture(scope="module")
def tokenizer():
    from minbert.tokenizer import load_tokenizer
    return load_tokenizer()


@pytest.fixture(scope="module")
def sst_train(tokenizer) -> EncodedTask:
    return encode_task(SST.read(DATA / "ids-sst-train.csv"), tokenizer, SST)


PAIRS = [PairExample("p0", "A man is playing a guitar.", "A person plays music.", 4.2),
         PairExample("p1", "Dogs run.", "Cats sleep on the warm sofa all afternoon.", 0.4),
         PairExample("p2", "Hello there", "", 1.0)]


def assert_epoch_covers_each_index_once(batches: list[list[int]], n: int) -> None:
    flat = [i for batch in batches for i in batch]
    assert sorted(flat) == list(range(n))


# --- sampler -----------------------------------------------------------------------------

@pytest.mark.parametrize("n, batch_size, chunk_batches", [(1000, 32, 5), (64, 32, 50), (7, 3, 2), (1, 4, 50)])
def test_bucketed_epoch_covers_every_index_exactly_once(n: int, batch_size: int, chunk_batches: int) -> None:
    lengths = np.random.default_rng(1).integers(3, 90, size=n)
    for seed in range(3):
        batches = bucketed_batches(lengths, batch_size, np.random.default_rng(seed), chunk_batches)
        assert_epoch_covers_each_index_once(batches, n)
        sizes = Counter(len(b) for b in batches)
        assert sizes[batch_size] == n // batch_size and len(batches) == -(-n // batch_size)


def test_sampler_is_deterministic_per_seed_and_epoch(sst_train: EncodedTask) -> None:
    lengths = sst_train.lengths()
    a = BucketBatchSampler(lengths, 32, seed=7)
    b = BucketBatchSampler(lengths, 32, seed=7)
    epoch0, epoch1 = list(a), list(a)  # each iteration is one epoch
    assert epoch0 == list(b) and epoch1 == list(b)
    assert epoch0 != epoch1
    assert epoch0 != BucketBatchSampler(lengths, 32, seed=8).batches_for(0)
    b.set_epoch(1)
    assert list(b) == epoch1 and b.epoch == 2
    assert len(a) == len(epoch0) == 267
    assert_epoch_covers_each_index_once(epoch1, len(sst_train))


def test_drop_last_drops_only_the_short_batch() -> None:
    sampler = BucketBatchSampler(np.arange(100), 32, drop_last=True)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 3 and all(len(b) == 32 for b in batches)


def test_batches_within_a_chunk_have_similar_lengths() -> None:
    lengths = np.random.default_rng(0).integers(1, 200, size=3200)
    batches = bucketed_batches(lengths, 32, np.random.default_rng(0), chunk_batches=100)
    spreads = [lengths[b].max() - lengths[b].min() for b in batches]
    assert np.median(spreads) <= 3


def test_bucketing_removes_most_padding_on_sst(sst_train: EncodedTask) -> None:
    report = compare_padding(sst_train, batch_size=32, seed=0)
    assert report.bucketed < 0.15
    assert report.random > 0.40 and report.random > 4 * report.bucketed
    assert report.num_batches == 267


def test_padding_fraction_arithmetic() -> None:
    lengths = [np.array([2, 4, 4, 1])]
    # Batch [0, 1]: 2 x 4 computed, 6 real. Batch [2, 3]: 2 x 4 computed, 5 real.
    assert padding_fraction(lengths, [[0, 1], [2, 3]]) == pytest.approx(1 - 11 / 16)
    assert padding_fraction(lengths, [[1, 2], [0], [3]]) == 0.0


def test_random_batches_cover_every_index() -> None:
    assert_epoch_covers_each_index_once(random_batches(101, 10, np.random.default_rng(3)), 101)


# --- collate and encodings ---------------------------------------------------------------------

def test_collate_pads_to_the_longest_in_batch(sst_train: EncodedTask, tokenizer) -> None:
    indices = [5, 17, 300, 8000]
    batch = sst_train.batch(indices)
    lengths = [len(sst_train.input_ids[i]) for i in indices]
    assert set(batch) == {"input_ids", "token_type_ids", "attention_mask", "labels", "index"}
    assert batch["input_ids"].shape == (4, max(lengths))
    assert batch["attention_mask"].sum(1).tolist() == lengths
    assert (batch["input_ids"][batch["attention_mask"] == 0] == tokenizer.pad_id).all()
    assert (batch["token_type_ids"] == 0).all()
    assert batch["labels"].dtype == torch.long and batch["labels"].tolist() == sst_train.labels[indices].tolist()
    assert batch["index"].tolist() == indices
    assert batch["input_ids"][0, 0].item() == tokenizer.cls_id


def test_label_dtypes_follow_the_task_kind(tokenizer) -> None:
    assert encode_task(PAIRS, tokenizer, STS).labels.dtype == torch.float32
    para = [PairExample("q", "a?", "b?", 1), PairExample("r", "c?", "d?", 0)]
    labels = encode_task(para, tokenizer, PARA).labels
    assert labels.dtype == torch.float32 and labels.tolist() == [1.0, 0.0]


def test_cross_and_bi_pair_encodings(tokenizer) -> None:
    cross = encode_task(PAIRS, tokenizer, STS, pair_encoding="cross")
    bi = encode_task(PAIRS, tokenizer, STS, pair_encoding="bi")
    assert cross.pair_encoding == "cross" and not cross.is_bi and bi.is_bi
    for i in range(len(PAIRS)):
        a, b = bi.input_ids[i], bi.input_ids_b[i]
        # [CLS] a [SEP] b [SEP] is sentence a encoded alone, then b without its [CLS].
        assert cross.input_ids[i] == a + b[1:]
        assert cross.token_type_ids[i] == [0] * len(a) + [1] * (len(b) - 1)
        assert set(bi.token_type_ids[i]) == set(bi.token_type_ids_b[i]) == {0}
    batch = bi.batch([0, 1, 2])
    assert set(batch) == {"input_ids", "token_type_ids", "attention_mask", "input_ids_b", "token_type_ids_b",
                          "attention_mask_b", "labels", "index"}
    assert batch["input_ids"].shape == (3, max(len(x) for x in bi.input_ids))
    assert batch["input_ids_b"].shape == (3, max(len(x) for x in bi.input_ids_b))
    assert batch["attention_mask_b"][2].sum().item() == 2  # empty sentence b: [CLS] [SEP]
    assert bi.lengths().tolist() == [max(len(a), len(b)) for a, b in zip(bi.input_ids, bi.input_ids_b)]


def test_truncation_to_max_length(tokenizer) -> None:
    long = [SentenceExample("x", "word " * 300, 1)]
    assert len(encode_task(long, tokenizer, SST, max_length=16).input_ids[0]) == 16


def test_sentence_longer_than_the_models_positions_is_truncated_to_fit(tokenizer) -> None:
    from minbert import BertModel
    model = BertModel.from_pretrained()
    positions = model.config.max_position_embeddings
    # Even when --max_length asks for more than the model has positions.
    encoded = encode_task([SentenceExample("x", "word " * (positions + 100), 1)], tokenizer, SST,
                          max_length=2 * positions)
    assert len(encoded.input_ids[0]) == positions
    batch = encoded.batch([0])
    with torch.no_grad():
        out = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    assert out["last_hidden_state"].shape == (1, positions, model.config.hidden_size)


def test_unlabelled_dataset_has_no_labels(tokenizer) -> None:
    test = encode_task([SentenceExample("t1", "fine"), SentenceExample("t2", "")], tokenizer, SST)
    assert test.labels is None and "labels" not in test.batch([0, 1])
    assert test.ids == ["t1", "t2"]
    with pytest.raises(ValueError, match="fully labelled or unlabelled"):
        encode_task([SentenceExample("a", "x", 1), SentenceExample("b", "y")], tokenizer, SST)


def test_wrong_example_kind_or_encoding_is_rejected(tokenizer) -> None:
    with pytest.raises(ValueError, match="expects pair examples"):
        encode_task([SentenceExample("a", "x", 1)], tokenizer, STS)
    with pytest.raises(ValueError, match="pair_encoding"):
        encode_task(PAIRS, tokenizer, STS, pair_encoding="siamese")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty batch"):
        collate([])


def test_dataloader_with_bucket_sampler(sst_train: EncodedTask) -> None:
    loader = DataLoader(sst_train, batch_sampler=BucketBatchSampler(sst_train.lengths(), 64, seed=1),
                        collate_fn=sst_train.collate)
    seen = torch.cat([batch["index"] for batch in loader])
    assert sorted(seen.tolist()) == list(range(len(sst_train)))


# --- evaluation order ----------------------------------------------------------------------------

def test_sorted_eval_batches_restore_input_order(sst_train: EncodedTask) -> None:
    lengths = sst_train.lengths()
    batches = sorted_batches(lengths, 50)
    assert batches == sorted_batches(lengths, 50)  # deterministic
    flat = np.concatenate(batches)
    assert (np.diff(lengths[flat]) <= 0).all()  # longest first
    loader = DataLoader(sst_train, batch_sampler=batches, collate_fn=sst_train.collate)
    index, per_example = [], []
    for batch in loader:
        index.append(batch["index"])
        per_example.append(batch["attention_mask"].sum(1))  # stands in for a model output
    restored = restore_order(torch.cat(index), torch.cat(per_example))
    assert restored.tolist() == lengths.tolist()


def test_restore_order_rejects_lost_or_repeated_examples() -> None:
    values = torch.tensor([10.0, 20.0, 30.0])
    assert restore_order([2, 0, 1], values).tolist() == [20.0, 30.0, 10.0]
    with pytest.raises(ValueError, match="not a permutation"):
        restore_order([0, 0, 1], values)
    with pytest.raises(ValueError, match="3 values for 2 indices"):
        restore_order([0, 1], values)
