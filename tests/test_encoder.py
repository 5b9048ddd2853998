"""The from-scratch encoder against Hugging Face transformers.BertModel on the same weights."""

from __future__ import annotations

import pytest
import torch
import transformers

from minbert import BertConfig, BertModel, load_tokenizer
from tests.conftest import read_column

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def ours() -> BertModel:
    return BertModel.from_pretrained().eval()


@pytest.fixture(scope="module")
def reference(checkpoint_dir):
    return transformers.BertModel.from_pretrained(str(checkpoint_dir)).eval()


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def compare(model, reference, batch) -> tuple[float, float]:
    with torch.no_grad():
        mine = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        theirs = reference(**batch)
    return (max_diff(mine["last_hidden_state"], theirs.last_hidden_state),
            max_diff(mine["pooler_output"], theirs.pooler_output))


def test_single_sentences_match_transformers(ours, reference, tokenizer, data_dir):
    sentences = read_column(data_dir / "ids-sst-dev.csv", "sentence", limit=24)
    batch = tokenizer(sentences)
    assert batch["attention_mask"].float().mean() < 0.9, "the batch should contain padding"
    hidden_diff, pooled_diff = compare(ours, reference, batch)
    assert hidden_diff <= TOLERANCE and pooled_diff <= TOLERANCE


def test_sentence_pairs_with_token_types_match_transformers(ours, reference, tokenizer, data_dir):
    pairs = read_column(data_dir / "quora-dev.csv", "sentence1", "sentence2", limit=24)
    batch = tokenizer([a for a, _ in pairs], [b for _, b in pairs])
    assert batch["token_type_ids"].sum() > 0
    hidden_diff, pooled_diff = compare(ours, reference, batch)
    assert hidden_diff <= TOLERANCE and pooled_diff <= TOLERANCE


def test_packed_path_on_padded_pairs_matches_transformers(reference, tokenizer, data_dir):
    # Training and prediction run the packed (unpadded) layers: the path the course scores come from.
    packed = BertModel.from_pretrained(unpad_inputs=True).eval()
    pairs = read_column(data_dir / "quora-dev.csv", "sentence1", "sentence2", limit=24)
    batch = tokenizer([a for a, _ in pairs], [b for _, b in pairs])
    real = batch["attention_mask"].bool()
    assert batch["token_type_ids"].sum() > 0 and not real.all(), "pairs of both segments, with padding"
    with torch.no_grad():
        mine = packed(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        theirs = reference(**batch)
    assert max_diff(mine["last_hidden_state"][real], theirs.last_hidden_state[real]) <= TOLERANCE
    assert max_diff(mine["pooler_output"], theirs.pooler_output) <= TOLERANCE


def test_eager_attention_agrees_with_sdpa(ours, tokenizer, data_dir):
    eager = BertModel.from_pretrained(attn_implementation="eager").eval()
    batch = tokenizer(read_column(data_dir / "ids-sst-dev.csv", "sentence", limit=16))
    real = batch["attention_mask"].bool()
    with torch.no_grad():
        fast, plain = ours(**batch), eager(**batch)
    # Pad positions' outputs are never used and are numerically fragile; compare real tokens tightly.
    assert max_diff(fast["last_hidden_state"][real], plain["last_hidden_state"][real]) <= TOLERANCE
    assert max_diff(fast["pooler_output"], plain["pooler_output"]) <= TOLERANCE


def test_forward_is_encode_of_embed(ours, tokenizer):
    batch = tokenizer(["a short one", "and a somewhat longer sentence here"], ["x", "y z"])
    with torch.no_grad():
        direct = ours(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        split = ours.encode(ours.embed(batch["input_ids"], batch["token_type_ids"]), batch["attention_mask"])
    assert torch.equal(direct["last_hidden_state"], split["last_hidden_state"])
    assert torch.equal(direct["pooler_output"], split["pooler_output"])


def test_dropout_is_active_only_in_training(tokenizer):
    model = BertModel.from_pretrained(hidden_dropout_prob=0.5)
    batch = tokenizer(["dropout should change this output"])
    torch.manual_seed(0)
    first = model(**batch)["pooler_output"]
    second = model(**batch)["pooler_output"]
    assert not torch.equal(first, second)
    model.eval()
    assert torch.equal(model(**batch)["pooler_output"], model(**batch)["pooler_output"])


@pytest.fixture(scope="module")
def bert_base_dirs(tmp_path_factory):
    """A randomly initialised bert-base-sized model saved by transformers in both file formats."""
    config = transformers.BertConfig(vocab_size=30522, hidden_size=768, num_hidden_layers=12,
                                     num_attention_heads=12, intermediate_size=3072)
    torch.manual_seed(0)
    model = transformers.BertModel(config).eval()
    dirs = {}
    for safe in (True, False):
        directory = tmp_path_factory.mktemp("safetensors" if safe else "bin")
        model.save_pretrained(directory)
        if not safe:
            # transformers 5 only writes safetensors; the legacy file is a torch.save of the state dict.
            (directory / "model.safetensors").unlink()
            torch.save(model.state_dict(), directory / "pytorch_model.bin")
        dirs[safe] = directory
    assert (dirs[True] / "model.safetensors").is_file() and (dirs[False] / "pytorch_model.bin").is_file()
    return model, dirs


@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "pytorch_model.bin"])
def test_bert_base_sized_checkpoint_loads_in_both_formats(bert_base_dirs, tokenizer, data_dir, safe):
    reference, dirs = bert_base_dirs
    model = BertModel.from_pretrained(dirs[safe]).eval()
    assert model.config.hidden_size == 768 and model.config.num_hidden_layers == 12
    pairs = read_column(data_dir / "sts-dev.csv", "sentence1", "sentence2", limit=8)
    batch = tokenizer([a for a, _ in pairs], [b for _, b in pairs])
    hidden_diff, pooled_diff = compare(model, reference, batch)
    assert hidden_diff <= TOLERANCE and pooled_diff <= TOLERANCE


def test_saved_checkpoint_reloads_here_and_in_transformers(ours, tokenizer, tmp_path):
    ours.save_pretrained(tmp_path)
    assert {"config.json", "model.safetensors", "vocab.txt"} <= {p.name for p in tmp_path.iterdir()}
    batch = tokenizer(["saving must not change a single weight"], ["nor the outputs"])
    reloaded = BertModel.from_pretrained(tmp_path).eval()
    for key, tensor in ours.state_dict().items():
        assert torch.equal(tensor, reloaded.state_dict()[key]), key
    theirs = transformers.BertModel.from_pretrained(str(tmp_path)).eval()
    hidden_diff, pooled_diff = compare(ours, theirs, batch)
    assert hidden_diff <= TOLERANCE and pooled_diff <= TOLERANCE


def test_config_rejects_inconsistent_shapes():
    with pytest.raises(ValueError, match="multiple"):
        BertConfig(hidden_size=100, num_attention_heads=12)


def test_too_long_input_is_a_clear_error(ours):
    ids = torch.ones(1, ours.config.max_position_embeddings + 1, dtype=torch.long)
    with pytest.raises(ValueError, match="exceeds"):
        ours(ids)


def test_unpadded_layers_match_padded_on_real_tokens_and_gradients(tokenizer, data_dir):
    padded = BertModel.from_pretrained().eval()
    packed = BertModel.from_pretrained(unpad_inputs=True).eval()
    batch = tokenizer(read_column(data_dir / "ids-sst-dev.csv", "sentence", limit=12))
    real = batch["attention_mask"].bool()
    a, b = padded(**batch), packed(**batch)
    assert max_diff(a["last_hidden_state"][real], b["last_hidden_state"][real]) <= TOLERANCE
    assert max_diff(a["pooler_output"], b["pooler_output"]) <= TOLERANCE
    assert torch.equal(b["last_hidden_state"][~real], torch.zeros_like(b["last_hidden_state"][~real]))
    (a["pooler_output"].sum() + (a["last_hidden_state"] * real[..., None]).sum()).backward()
    (b["pooler_output"].sum() + (b["last_hidden_state"] * real[..., None]).sum()).backward()
    for (name, p), q in zip(padded.named_parameters(), packed.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-4, rtol=1e-4), name


def test_packing_rounds_rows_and_grid_and_unpacks_real_tokens_only():
    from minbert.packing import Packing
    mask = torch.zeros(4, 10, dtype=torch.long)
    for row, length in enumerate((10, 7, 3, 1)):
        mask[row, :length] = 1
    packing = Packing.from_mask(mask, granule=8, grid_multiple=8)
    real = mask.reshape(-1).nonzero().squeeze(1)
    assert packing.real == 21 and packing.index.numel() == 24
    assert torch.equal(packing.index[:21], real)
    assert not mask.reshape(-1)[packing.index[21:]].any() and packing.index.unique().numel() == 24
    rows = torch.arange(24.0).unsqueeze(1) + 1
    unpacked = packing.unpack(rows)
    assert torch.equal(unpacked[mask.bool()], rows[:21]) and not unpacked[~mask.bool()].any()
    # The attention grid is 16 wide: every row at its (batch, position), zeros elsewhere, and the
    # grid's mask marks exactly the real tokens.
    grid = packing.to_grid(rows)
    assert grid.shape == (4, 16, 1) and grid.count_nonzero() == 24
    grid_mask = packing.grid_mask()
    assert torch.equal(grid_mask[:, :10], mask) and not grid_mask[:, 10:].any()
    assert torch.equal(grid[grid_mask.bool()], rows[:21])
    assert torch.equal(packing.from_grid(grid), rows)
    # Never more rows than the grid has positions.
    assert Packing.from_mask(mask, granule=64).index.numel() == 40
