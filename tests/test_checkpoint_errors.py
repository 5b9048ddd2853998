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


def test_pickled_code_is_refused(copy_of_default):
    (copy_of_default / "model.safetensors").unlink()
    torch.save({"weights": torch.zeros(1), "payload": shutil.rmtree}, copy_of_default / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="refused"):
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
