"""MLM pretraining: masking statistics, the tied head, save/reload, the corpus and packing, a smoke run end to end."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from safetensors.torch import load_file

from minbert import BertConfig, BertModel, CheckpointError, load_tokenizer
from minbert.corpus import dedupe, pack, split_held_out, tokenise_and_pack
from minbert.masking import IGNORE_INDEX, MaskingVocab, mask_tokens, word_starts
from minbert.mlm import HEAD_NAMES, BertForMaskedLM
from minbert.weights import read_tensors, save_tensors
from multitask.corpus import pretraining_texts
from tests.conftest import DATA, read_column
from tests.test_pipeline import write_tiny_file


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


@pytest.fixture(scope="module")
def vocab(tokenizer) -> MaskingVocab:
    return MaskingVocab.from_tokenizer(tokenizer)


def tiny_config(**overrides) -> BertConfig:
    # The packaged vocabulary (30,522) so the tokenizer files saved alongside match.
    return BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                      max_position_embeddings=64, **overrides)


def random_rows(tokenizer, vocab: MaskingVocab, rows: int = 400, length: int = 128, seed: int = 0) -> torch.Tensor:
    """[CLS] + ordinary tokens with a [SEP] every ~20 tokens and [PAD]s at the end of every row."""
    g = torch.Generator().manual_seed(seed)
    ids = vocab.replacement_ids[torch.randint(len(vocab.replacement_ids), (rows, length), generator=g)]
    ids[:, 0] = tokenizer.cls_id
    ids[torch.rand(rows, length, generator=g) < 0.05] = tokenizer.sep_id
    ids[:, -10:] = tokenizer.pad_id
    return ids


# ------------------------------------------------------------------------------------------------ masking

def test_masking_selects_15_percent_and_splits_80_10_10(tokenizer, vocab):
    ids = random_rows(tokenizer, vocab)
    inputs, labels = mask_tokens(ids, vocab, torch.Generator().manual_seed(1))
    selectable = ~torch.isin(ids, vocab.special_ids)
    selected = labels != IGNORE_INDEX
    assert selected.sum() / selectable.sum() == pytest.approx(0.15, abs=0.01)  # ~42k candidates
    masked = selected & (inputs == tokenizer.mask_id)
    kept = selected & (inputs == ids)
    swapped = selected & ~masked & ~kept
    n = selected.sum().item()  # ~6,300
    assert masked.sum().item() / n == pytest.approx(0.8, abs=0.02)
    assert swapped.sum().item() / n == pytest.approx(0.1, abs=0.015)
    assert kept.sum().item() / n == pytest.approx(0.1, abs=0.015)
    # Random replacements are ordinary tokens, never [MASK], [PAD], [unused..] and the like.
    assert torch.isin(inputs[swapped], vocab.replacement_ids).all()
    assert not torch.isin(inputs[swapped], vocab.special_ids).any()


def test_specials_and_padding_are_never_selected_and_unselected_labels_are_ignored(tokenizer, vocab):
    ids = random_rows(tokenizer, vocab)
    inputs, labels = mask_tokens(ids, vocab, torch.Generator().manual_seed(2), probability=0.9)
    special = torch.isin(ids, vocab.special_ids)
    assert special.sum() > 6000  # 400 [CLS], ~2,400 [SEP], 4,000 [PAD]
    assert (labels[special] == IGNORE_INDEX).all()
    assert torch.equal(inputs[special], ids[special])  # [CLS], [SEP], [PAD] untouched
    selected = labels != IGNORE_INDEX
    assert torch.equal(labels[selected], ids[selected])  # labels are the original tokens
    assert (labels[~selected] == IGNORE_INDEX).all()
    assert torch.equal(inputs[~selected], ids[~selected])  # unselected positions are never changed


def test_masking_is_reproducible_from_the_generator_seed(tokenizer, vocab):
    ids = random_rows(tokenizer, vocab, rows=20)
    first = mask_tokens(ids, vocab, torch.Generator().manual_seed(5))
    again = mask_tokens(ids, vocab, torch.Generator().manual_seed(5))
    other = mask_tokens(ids, vocab, torch.Generator().manual_seed(6))
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[1], other[1])


def test_whole_word_masking_selects_every_piece_of_a_word_together(tokenizer, vocab):
    sentences = read_column(DATA / "ids-cfimdb-train.csv", "sentence", limit=300)
    rows = tokenise_and_pack(sentences, tokenizer, 128)
    ids = rows.input_ids
    inputs, labels = mask_tokens(ids, vocab, torch.Generator().manual_seed(3), whole_word=True)
    selectable = ~torch.isin(ids, vocab.special_ids)
    starts = word_starts(ids, selectable, vocab)
    selected = labels != IGNORE_INDEX
    multi_piece_words_selected = 0
    for row in range(ids.shape[0]):
        positions = selectable[row].nonzero().squeeze(1).tolist()
        words: list[list[int]] = []
        for p in positions:
            if starts[row, p]:
                words.append([p])
            else:
                words[-1].append(p)
        for word in words:
            flags = {bool(selected[row, p]) for p in word}
            assert len(flags) == 1, (row, word, tokenizer.decode(ids[row, word].tolist()))
            if flags == {True} and len(word) > 1:
                multi_piece_words_selected += 1
                # The replacement decision is per word too: all [MASK], all kept or all swapped.
                assert len({int(inputs[row, p] == tokenizer.mask_id) for p in word}) == 1
    assert multi_piece_words_selected > 50  # the check above is not vacuous
    assert selected.sum() / selectable.sum() == pytest.approx(0.15, abs=0.02)


# ----------------------------------------------------------------------------------------------- the head

def test_decoder_shares_storage_with_the_word_embeddings():
    model = BertForMaskedLM(BertModel(tiny_config()))
    embeddings = model.encoder.embeddings.word_embeddings.weight
    assert model.head.decoder.weight is embeddings
    assert model.head.decoder.weight.data_ptr() == embeddings.data_ptr()
    # Listed once, so the optimiser updates the shared matrix once per step.
    assert sum(p is embeddings for p in model.parameters()) == 1
    with torch.no_grad():
        embeddings[5, 0] = 123.0
    assert model.head.decoder.weight[5, 0] == 123.0


def test_packaged_model_has_no_mlm_head_so_it_is_initialised():
    model = BertForMaskedLM.from_pretrained()
    assert not model.head_from_checkpoint
    head = model.head
    assert torch.equal(head.bias, torch.zeros_like(head.bias))
    assert torch.equal(head.LayerNorm.weight, torch.ones_like(head.LayerNorm.weight))
    assert torch.equal(head.dense.bias, torch.zeros_like(head.dense.bias))
    assert head.dense.weight.std().item() == pytest.approx(model.config.initializer_range, rel=0.05)


def randomised_model(seed: int = 0) -> BertForMaskedLM:
    torch.manual_seed(seed)
    model = BertForMaskedLM(BertModel(tiny_config()))
    with torch.no_grad():
        for param in model.head.parameters():
            param.normal_()
    return model


def test_saved_checkpoint_reloads_bit_identically(tmp_path):
    model = randomised_model()
    model.save_pretrained(tmp_path)
    saved = load_file(str(tmp_path / "model.safetensors"))
    assert set(HEAD_NAMES.values()) <= set(saved)
    reloaded = BertForMaskedLM.from_pretrained(tmp_path)
    assert reloaded.head_from_checkpoint
    before, after = model.state_dict(), reloaded.state_dict()
    assert before.keys() == after.keys()
    for key in before:
        assert torch.equal(before[key], after[key]), key
    assert reloaded.head.decoder.weight.data_ptr() == reloaded.encoder.embeddings.word_embeddings.weight.data_ptr()
    # Our plain encoder loader sets the head aside.
    encoder = BertModel.from_pretrained(tmp_path).state_dict()
    assert all(torch.equal(encoder[k], model.encoder.state_dict()[k]) for k in encoder)


def test_incomplete_mlm_head_is_an_error_naming_the_key(tmp_path):
    randomised_model().save_pretrained(tmp_path)
    tensors = read_tensors(tmp_path / "model.safetensors")
    del tensors["cls.predictions.transform.LayerNorm.bias"]
    save_tensors(tensors, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match="cls.predictions.transform.LayerNorm.bias"):
        BertForMaskedLM.from_pretrained(tmp_path)


# ------------------------------------------------------------------------------------------ corpus, packing

def stripped(values) -> set[str]:
    return {v.strip() for v in values if v and v.strip()}


def test_corpus_holds_training_text_only_never_dev_or_test():
    documents = dedupe(pretraining_texts(DATA))
    # Read independently of the package, with the plain csv module.
    train = stripped(read_column(DATA / "ids-sst-train.csv", "sentence"))
    train |= stripped(read_column(DATA / "ids-cfimdb-train.csv", "sentence"))
    for name in ("quora-train.csv", "sts-train.csv"):
        train |= stripped(read_column(DATA / name, "sentence1") + read_column(DATA / name, "sentence2"))
    held_back = set()
    for stem, columns in (("ids-sst", ("sentence",)), ("ids-cfimdb", ("sentence",)),
                          ("quora", ("sentence1", "sentence2")), ("sts", ("sentence1", "sentence2"))):
        for split in ("dev", "test-student"):
            for column in columns:
                held_back |= stripped(read_column(DATA / f"{stem}-{split}.csv", column))
    corpus = set(documents)
    assert corpus <= train  # every document is verbatim training text
    leaked = {s for s in held_back & corpus if s not in train}
    assert not leaked
    dev_test_only = held_back - train
    assert len(dev_test_only) > 10_000 and not dev_test_only & corpus  # not vacuous: those exist and are absent
    assert len(documents) > 45_000


def test_dedupe_ignores_case_and_spacing_and_the_held_out_split_is_seeded():
    assert dedupe(["A  film .", "a film .", " ", "another"]) == ["A  film .", "another"]
    documents = [f"doc {i}" for i in range(1000)]
    train, held = split_held_out(documents, 0.05, seed=0)
    assert len(held) == 50 and not set(train) & set(held) and sorted(train + held) == sorted(documents)
    assert split_held_out(documents, 0.05, seed=0) == (train, held)
    assert split_held_out(documents, 0.05, seed=1)[1] != held


def test_packing_keeps_every_token_once_and_in_order(tokenizer):
    sentences = read_column(DATA / "ids-sst-train.csv", "sentence", limit=500)
    documents = tokenizer.encode_documents(sentences)
    rows = pack(documents, 64, tokenizer.cls_id, tokenizer.sep_id, tokenizer.pad_id)
    assert rows.input_ids.shape[1] == 64 and (rows.input_ids[:, 0] == tokenizer.cls_id).all()
    stream = []
    for ids, mask in zip(rows.input_ids.tolist(), rows.attention_mask.tolist()):
        stream += [t for t, m in zip(ids[1:], mask[1:]) if m]
    assert stream == [t for document in documents for t in (*document, tokenizer.sep_id)]
    assert rows.attention_mask[:-1].all()  # only the last row may be padded
    assert rows.padding_fraction < 1 / len(rows)
    # No truncation: a long review is packed whole, across rows.
    assert max(len(d) for d in tokenizer.encode_documents(read_column(DATA / "ids-cfimdb-train.csv", "sentence"))) > 128


# --------------------------------------------------------------------------------------------- smoke run

@pytest.fixture(scope="module")
def mlm_run(tmp_path_factory) -> dict:
    """Three updates of the real script on a few rows of each training file plus an extra corpus file."""
    from scripts.pretrain_mlm import main

    data = tmp_path_factory.mktemp("data")
    for name in ("ids-sst-train.csv", "quora-train.csv", "sts-train.csv", "ids-cfimdb-train.csv"):
        write_tiny_file(DATA / name, data / name, 12)
    extra = data / "extra.txt"
    extra.write_text("the film was long but rewarding .\n\nis this question a duplicate of that one ?\n")
    out_dir = tmp_path_factory.mktemp("runs") / "mlm"
    history = main(["--data_dir", str(data), "--corpus", str(extra), "--out_dir", str(out_dir), "--max_steps", "3",
                    "--eval_every", "2", "--batch_size", "4", "--max_length", "32", "--held_out", "0.2",
                    "--device", "cpu"])
    return {"out_dir": out_dir, "history": history, "data": data}


def test_smoke_run_writes_metrics_and_a_hugging_face_directory(mlm_run):
    out_dir = mlm_run["out_dir"]
    lines = [json.loads(line) for line in (out_dir / "mlm_metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [0, 2, 3]  # start, every 2 updates, end
    assert lines == mlm_run["history"]
    for line in lines:
        assert line["eval_perplexity"] == pytest.approx(torch.tensor(line["eval_loss"]).exp().item(), rel=1e-6)
        assert 0.0 <= line["eval_accuracy"] <= 1.0 and line["eval_masked_tokens"] > 0
    # The fixed evaluation mask seed: every evaluation scores the same masked tokens.
    assert len({line["eval_masked_tokens"] for line in lines}) == 1
    for name in ("config.json", "model.safetensors", "vocab.txt", "pretrain_run.json"):
        assert (out_dir / name).is_file(), name
    assert not any(out_dir.parent.glob("mlm.*"))  # no staging or old directory left behind
    run = json.loads((out_dir / "pretrain_run.json").read_text())
    corpus = run["corpus"]
    assert corpus["texts"] == 12 + 2 * 12 + 2 * 12 + 12 + 2  # SST, Quora pairs, STS pairs, CFIMDB, extra file
    assert corpus["held_out_documents"] == round(0.2 * corpus["documents"])
    assert run["head_from_checkpoint"] is False


def test_smoke_run_output_loads_in_ours_and_in_transformers_with_the_same_logits(mlm_run):
    out_dir = mlm_run["out_dir"]
    ours = BertForMaskedLM.from_pretrained(out_dir).eval()
    assert ours.head_from_checkpoint
    theirs = transformers.BertForMaskedLM.from_pretrained(str(out_dir)).eval()
    tokenizer = load_tokenizer(out_dir)
    batch = tokenizer(["the movie was [MASK] good .", "how do i learn python quickly ?"],
                      ["a man is playing a guitar .", "what is the best way to learn python ?"])
    with torch.no_grad():
        expected = theirs(**batch).logits
        got = ours(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    assert (got - expected).abs().max().item() <= 1e-4
    # Training moved the encoder away from the packaged one.
    packaged = BertModel.from_pretrained().state_dict()
    assert any(not torch.equal(v, packaged[k]) for k, v in ours.encoder.state_dict().items())


def test_multitask_classifier_starts_from_the_adapted_encoder(mlm_run, tmp_path):
    from multitask_classifier import main as multitask_main

    files = {}
    for split, suffix in (("train", "train"), ("dev", "dev"), ("test", "test-student")):
        files[split] = tmp_path / f"ids-sst-{suffix}.csv"
        write_tiny_file(DATA / f"ids-sst-{suffix}.csv", files[split], 8)
    out = tmp_path / "run"
    multitask_main(["--option", "pretrain", "--epochs", "1", "--tasks", "sst", "--batch_size", "8", "--device", "cpu",
                    "--pretrained", str(mlm_run["out_dir"]), "--sst_train", str(files["train"]),
                    "--sst_dev", str(files["dev"]), "--sst_test", str(files["test"]),
                    "--sst_dev_out", str(tmp_path / "dev.csv"), "--sst_test_out", str(tmp_path / "test.csv"),
                    "--out_dir", str(out)])
    # --option pretrain freezes the encoder, so the saved one must be exactly the MLM-adapted one.
    adapted = BertModel.from_pretrained(mlm_run["out_dir"]).state_dict()
    saved = BertModel.from_pretrained(out / "best").state_dict()
    assert all(torch.equal(saved[k], adapted[k]) for k in adapted)
    assert (tmp_path / "test.csv").is_file()


def test_loop_lowers_held_out_loss_and_epochs_set_the_run_length(tokenizer, vocab):
    from minbert.mlm_training import MLMSettings, MLMTrainer

    torch.manual_seed(0)
    model = BertForMaskedLM(BertModel(tiny_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)))
    rows = tokenise_and_pack(read_column(DATA / "ids-sst-train.csv", "sentence", limit=60), tokenizer, 32)
    settings = MLMSettings(epochs=5, batch_size=8, lr=1e-2, eval_every=10, whole_word_mask=True, seed=0,
                           precision="fp32")
    trainer = MLMTrainer(model, vocab, rows, rows, settings)
    assert trainer.total == 5 * -(-len(rows) // 8)
    lines = []
    history = trainer.train(report=lines.append, progress_lines=0)
    assert history[0]["step"] == 0 and history[-1]["step"] == trainer.total
    # With no interval, a progress line after every update, between the evaluation lines.
    progress = [line for line in lines if "ETA" in line]
    assert len(progress) == trainer.total and len(lines) == trainer.total + len(history)
    assert progress[0].startswith(f"update 1/{trainer.total}: train loss ")
    assert progress[-1].startswith(f"update {trainer.total}/{trainer.total}: ") and progress[-1].endswith("; ETA 0s")
    assert all(" examples/s; ETA " in line for line in progress)
    assert history[-1]["eval_loss"] < history[0]["eval_loss"] - 1.0
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)  # decayed to zero
