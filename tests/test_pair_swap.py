"""Pair order: swapping a pair's sentences in training, and averaging both orders in evaluation."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from minbert import BertModel
from multitask.batching import encode_task, swap_cross_pair
from multitask.checkpoint import RUN_FILE, load_checkpoint, save_checkpoint
from multitask.data import PairExample, SentenceExample
from multitask.tasks import PARA, SST, STS
from multitask.evaluate import raw_outputs
from multitask.model import MultitaskBert
from multitask.train import Trainer, TrainSettings
from tests.test_smart_training import TINY

PAIRS = [PairExample("p0", "A man is playing a guitar.", "A person plays music.", 4.2),
         PairExample("p1", "Dogs run.", "Cats sleep on the warm sofa all afternoon.", 0.4),
         PairExample("p2", "Hello there", "", 1.0),
         PairExample("p3", "word " * 80, "another much shorter one", 2.5)]


def reversed_pairs(pairs: list[PairExample]) -> list[PairExample]:
    return [dataclasses.replace(p, text_a=p.text_b, text_b=p.text_a) for p in pairs]


@pytest.fixture(scope="module")
def tokenizer():
    from minbert.tokenizer import load_tokenizer
    return load_tokenizer()


def test_swapping_a_cross_pair_equals_tokenizing_it_the_other_way_round(tokenizer) -> None:
    # max_length 40 truncates p3; longest-first truncation cuts the same tokens in either order.
    forward = encode_task(PAIRS, tokenizer, STS, "cross", max_length=40)
    backward = encode_task(reversed_pairs(PAIRS), tokenizer, STS, "cross", max_length=40)
    assert max(map(len, forward.input_ids)) == 40
    for i in range(len(PAIRS)):
        assert swap_cross_pair(forward.input_ids[i], forward.token_type_ids[i]) == \
            (backward.input_ids[i], backward.token_type_ids[i])
        item = forward.item(i, swapped=True)
        assert (item["input_ids"], item["token_type_ids"]) == (backward.input_ids[i], backward.token_type_ids[i])
        assert item["label"] == forward.labels[i] and item["index"] == i


def test_swapping_a_bi_pair_exchanges_its_sides(tokenizer) -> None:
    bi = encode_task(PAIRS, tokenizer, STS, "bi")
    batch = bi.batch([0, 1], swapped=[True, False])
    plain = bi.batch([0, 1])
    assert batch["input_ids"][0, :len(bi.input_ids_b[0])].tolist() == bi.input_ids_b[0]
    assert batch["input_ids_b"][0, :len(bi.input_ids[0])].tolist() == bi.input_ids[0]
    n = len(bi.input_ids[1])  # an unflagged pair keeps its sides
    assert torch.equal(batch["input_ids"][1, :n], plain["input_ids"][1, :n])


def test_swap_is_refused_for_single_sentences_and_mismatched_flags(tokenizer) -> None:
    sst = encode_task([SentenceExample("s", "fine", 1)], tokenizer, SST)
    with pytest.raises(ValueError, match="only pairs can be swapped"):
        sst.batch([0], swapped=True)
    pairs = encode_task(PAIRS, tokenizer, STS)
    with pytest.raises(ValueError, match="2 swap flags for 3 examples"):
        pairs.batch([0, 1, 2], swapped=[True, False])
    with pytest.raises(ValueError, match="not a cross-encoded pair"):
        swap_cross_pair([2, 5, 3], [0, 0, 0])


@pytest.mark.parametrize("pair_encoding", ["cross", "bi"])
def test_symmetric_evaluation_is_the_mean_of_both_orders(tokenizer, pair_encoding: str) -> None:
    torch.manual_seed(0)
    model = MultitaskBert(BertModel(dataclasses.replace(TINY, vocab_size=30522, max_position_embeddings=128)),
                          pair_encoding=pair_encoding)
    forward = encode_task(PAIRS, tokenizer, STS, pair_encoding, max_length=40)
    backward = encode_task(reversed_pairs(PAIRS), tokenizer, STS, pair_encoding, max_length=40)
    cpu = torch.device("cpu")
    as_read, other_way = raw_outputs(model, forward, 2, cpu), raw_outputs(model, backward, 2, cpu)
    assert not torch.allclose(as_read, other_way)  # an untrained cross-encoder is not symmetric
    model.symmetric_pairs = True
    torch.testing.assert_close(raw_outputs(model, forward, 2, cpu), (as_read + other_way) / 2)
    # Single sentences have nothing to swap and are scored once.
    sst = encode_task([SentenceExample("s", "fine", 1), SentenceExample("t", "bad", 0)], tokenizer, SST)
    model_plain = raw_outputs(model, sst, 2, cpu)
    model.symmetric_pairs = False
    torch.testing.assert_close(raw_outputs(model, sst, 2, cpu), model_plain)


def pair_tasks(tokenizer):
    pairs = PAIRS * 6
    return {"sst": encode_task([SentenceExample(f"s{i}", "good " * (i % 5 + 1), i % 5) for i in range(24)],
                               tokenizer, SST),
            "para": encode_task([dataclasses.replace(p, label=float(i % 2)) for i, p in enumerate(pairs)],
                                tokenizer, PARA),
            "sts": encode_task(pairs, tokenizer, STS)}


def test_epoch_plan_swaps_about_half_of_the_pairs_and_no_single_sentence(tmp_path, tokenizer) -> None:
    tasks = pair_tasks(tokenizer)
    model = MultitaskBert(BertModel(dataclasses.replace(TINY, vocab_size=30522, max_position_embeddings=128)))

    def plan(swap_pairs: bool, epoch: int = 0):
        settings = TrainSettings(epochs=2, batch_size=4, lr=5e-5, seed=3, swap_pairs=swap_pairs, precision="fp32")
        return Trainer(model, tasks, tasks, settings, torch.device("cpu"), tmp_path).epoch_plan(epoch)

    swapped = plan(True)
    assert swapped == plan(True) and swapped != plan(True, epoch=1)  # seeded per epoch
    flags = {task: [f for t, _, fs in swapped if t == task for f in fs] for task in tasks}
    assert not any(flags["sst"])
    for task in ("para", "sts"):
        assert 0.25 < sum(flags[task]) / len(flags[task]) < 0.75
    assert all(len(indices) == len(fs) for _, indices, fs in swapped)
    assert not any(f for _, _, fs in plan(False) for f in fs)
    # The flags ride along the same batches: switching them off changes nothing else in the plan.
    assert [(t, i) for t, i, _ in swapped] == [(t, i) for t, i, _ in plan(False)]


def test_symmetric_pairs_survive_a_checkpoint_and_old_checkpoints_read_as_read(tmp_path) -> None:
    model = MultitaskBert(BertModel(TINY), symmetric_pairs=True)
    save_checkpoint(model, tmp_path / "ck", {}, {}, tokenizer_from=None)
    assert load_checkpoint(tmp_path / "ck")[0].symmetric_pairs is True
    run_file = tmp_path / "ck" / RUN_FILE
    record = json.loads(run_file.read_text())
    del record["symmetric_pairs"]
    run_file.write_text(json.dumps(record))
    assert load_checkpoint(tmp_path / "ck")[0].symmetric_pairs is False
