"""Loading refuses broken, incomplete or unsafe checkpoints with an error naming the file and key."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from minbert import BertModel, CheckpointError


@pytest.fixture
def copy_of_default(checkpoint_dir, tmp_path):
    for name in ("config.json", "model.safetensors", "vocab.txt", "tokenizer_config.json"):
        shutil.copyfile(checkpoint_dir / name, tmp_path / name)
    return tmp_path


def rewrite_weights(directory, change):
    tensors = load_file(str(directory / "model.safetensors"))
    change(tensors)
    save_file(tensors, str(directory / "model.safetensors"))


def test_missing_directory(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        BertModel.from_pretrained(tmp_path / "nowhere")


def test_missing_config(copy_of_default):
    (copy_of_default / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json"):
        BertModel.from_pretrained(copy_of_default)


def test_invalid_config_json(copy_of_default):
    (copy_of_default / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json"):
        BertModel.from_pretrained(copy_of_default)


def test_missing_weight_file(copy_of_default):
    (copy_of_default / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no weight file"):
        BertModel.from_pretrained(copy_of_default)


def test_truncated_safetensors(copy_of_default):
    path = copy_of_default / "model.safetensors"
    path.write_bytes(path.read_bytes()[: 1_000_000])
    with pytest.raises(CheckpointError, match="model.safetensors.*truncated or corrupt"):
        BertModel.from_pretrained(copy_of_default)


def test_truncated_pytorch_bin(copy_of_default):
    tensors = load_file(str(copy_of_default / "model.safetensors"))
    (copy_of_default / "model.safetensors").unlink()
    torch.save(tensors, copy_of_default / "pytorch_model.bin")
    path = copy_of_default / "pytorch_model.bin"
    path.write_bytes(path.read_bytes()[: 500_000])
    with pytest.raises(CheckpointError, match="pytorch_model.bin"):
        BertModel.from_pretrained(copy_of_default)


class CreatesFile:
    """Unpickling this calls open(path, "w"): a file appearing proves that a loader ran pickled code."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def live_payload(path, marker) -> None:
    """torch.save a state dict carrying CreatesFile(marker), after checking an unsafe load would run it."""
    torch.save({"weights": torch.zeros(1), "payload": CreatesFile(marker)}, path)
    torch.load(path, weights_only=False)["payload"].close()
    assert marker.exists(), "the payload must be live for the refusal to mean something"
    marker.unlink()


def test_pickled_code_is_refused_and_never_runs(copy_of_default, tmp_path):
    (copy_of_default / "model.safetensors").unlink()
    marker = tmp_path / "payload-ran"
    live_payload(copy_of_default / "pytorch_model.bin", marker)
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin: refused to load"):
        BertModel.from_pretrained(copy_of_default)
    assert not marker.exists()


def set_config(directory, **values):
    config = json.loads((directory / "config.json").read_text())
    config.update(values)
    (directory / "config.json").write_text(json.dumps(config))


# Sizes that would need petabytes, or a million layers: refused from the weight file's shapes
# before any module is built (a build would fail in an allocation or run for hours instead).
@pytest.mark.parametrize("values,message", [
    ({"vocab_size": 10**12}, r"embeddings\.word_embeddings\.weight has shape \(30522, 384\), but config\.json "
                             r"implies \(1000000000000, 384\)"),
    ({"max_position_embeddings": 10**9}, r"position_embeddings\.weight has shape \(512, 384\)"),
    ({"num_hidden_layers": 10**6}, r"holds 6 encoder layers, but config\.json asks for num_hidden_layers 1000000"),
    ({"hidden_size": 384 * 10**6, "num_attention_heads": 12}, r"word_embeddings\.weight has shape \(30522, 384\)"),
    ({"intermediate_size": 10**10}, r"intermediate\.dense\.bias has shape \(1536,\)"),
], ids=["vocab", "positions", "layers", "hidden", "intermediate"])
def test_absurd_sizes_are_refused_before_building(copy_of_default, values, message):
    set_config(copy_of_default, **values)
    with pytest.raises(CheckpointError, match=rf"model\.safetensors: (key )?.*{message}"):
        BertModel.from_pretrained(copy_of_default)


@pytest.mark.parametrize("values,message", [
    ({"hidden_size": "384"}, "hidden_size must be a positive integer, got '384'"),
    ({"num_hidden_layers": 6.0}, "num_hidden_layers must be a positive integer, got 6.0"),
    ({"num_attention_heads": 0}, "num_attention_heads must be a positive integer, got 0"),
    ({"vocab_size": True}, "vocab_size must be a positive integer, got True"),
    ({"type_vocab_size": None}, "type_vocab_size must be a positive integer, got None"),
    ({"hidden_dropout_prob": "0.1"}, r"hidden_dropout_prob must be a number in \[0, 1\), got '0\.1'"),
    ({"attention_probs_dropout_prob": 1.5}, r"attention_probs_dropout_prob must be a number in \[0, 1\), got 1\.5"),
    ({"layer_norm_eps": -1}, "layer_norm_eps must be a number"),
    ({"pad_token_id": 10**6}, "pad_token_id must be an integer in 0..vocab_size-1"),
], ids=["str-size", "float-size", "zero-heads", "bool-size", "null-size", "str-rate", "rate-above-1",
        "negative-eps", "pad-outside-vocab"])
def test_wrongly_typed_or_out_of_range_config_values_are_named(copy_of_default, values, message):
    set_config(copy_of_default, **values)
    with pytest.raises(CheckpointError, match=rf"config\.json: {message}"):
        BertModel.from_pretrained(copy_of_default)


def test_missing_key_is_named(copy_of_default):
    rewrite_weights(copy_of_default, lambda t: t.pop("encoder.layer.3.output.dense.weight"))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: missing key encoder\.layer\.3\.output\.dense\.weight"):
        BertModel.from_pretrained(copy_of_default)


def test_missing_attention_part_is_named(copy_of_default):
    rewrite_weights(copy_of_default, lambda t: t.pop("encoder.layer.2.attention.self.key.bias"))
    with pytest.raises(CheckpointError, match=r"missing key encoder\.layer\.2\.attention\.self\.key\.bias"):
        BertModel.from_pretrained(copy_of_default)


def test_unexpected_key_is_named(copy_of_default):
    rewrite_weights(copy_of_default, lambda t: t.update({"encoder.layer.9.output.dense.weight": torch.zeros(2, 2)}))
    with pytest.raises(CheckpointError, match=r"unexpected key encoder\.layer\.9\.output\.dense\.weight"):
        BertModel.from_pretrained(copy_of_default)


def test_shape_mismatch_is_named(copy_of_default):
    config = json.loads((copy_of_default / "config.json").read_text())
    config["intermediate_size"] = 1024
    (copy_of_default / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"key encoder\.layer\.0\.intermediate\.dense\.bias has shape \(1536,\), but config\.json implies \(1024,\)"):
        BertModel.from_pretrained(copy_of_default)


def test_legacy_names_load(copy_of_default):
    reference = BertModel.from_pretrained().state_dict()

    def to_legacy(tensors):
        for key in list(tensors):
            new = "bert." + key
            new = new.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
            tensors[new] = tensors.pop(key)
        tensors["cls.predictions.bias"] = torch.zeros(30522)  # pretraining heads are set aside, not errors

    rewrite_weights(copy_of_default, to_legacy)
    loaded = BertModel.from_pretrained(copy_of_default).state_dict()
    assert all(torch.equal(reference[k], loaded[k]) for k in reference)
