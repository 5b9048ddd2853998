"""--pretrained NAME: a Hugging Face Hub id is resolved through the hub's cache (offline here), paths never are."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from minbert import BertModel, CheckpointError, hub, load_tokenizer
from minbert.hub import resolve_checkpoint_dir
from multitask_classifier import check_settings, main
from multitask.settings import parse
from tests.test_pipeline import data_args, write_tiny_course_files

REPO = Path(__file__).resolve().parent.parent
MODEL_ID = "someorg/minilm-copy"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
SNAPSHOT_FILES = ("config.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json", "model.safetensors")


def write_hub_cache(cache: Path, repo_id: str, source: Path, files: tuple[str, ...] = SNAPSHOT_FILES) -> Path:
    """A cache in huggingface_hub's layout holding `files` of `source` as `repo_id` at branch main."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    for name in files:
        shutil.copyfile(source / name, snapshot / name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return snapshot


@pytest.fixture
def offline_cache(tmp_path, monkeypatch) -> Path:
    """HF_HOME in tmp_path, offline, with the packaged MiniLM cached as MODEL_ID; returns its snapshot.

    huggingface_hub reads its environment when imported; another test may have imported it
    already, so its constants are set too (the subprocess test below checks the environment alone).
    """
    from huggingface_hub import constants
    home = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return write_hub_cache(home / "hub", MODEL_ID, resolve_checkpoint_dir(None))


def test_hub_id_resolves_offline_from_the_cache_and_loads_identical_weights(offline_cache):
    assert resolve_checkpoint_dir(MODEL_ID) == offline_cache
    cached, packaged = BertModel.from_pretrained(MODEL_ID).state_dict(), BertModel.from_pretrained().state_dict()
    assert cached.keys() == packaged.keys() and all(torch.equal(cached[k], packaged[k]) for k in packaged)
    text = ["The café's naïve reviewer", "hated it"]
    assert load_tokenizer(MODEL_ID)(text)["input_ids"].tolist() == load_tokenizer()(text)["input_ids"].tolist()


@pytest.mark.parametrize("name", ["someorg/not-cached", "bert-base-uncased"])
def test_an_id_not_in_the_offline_cache_is_a_one_line_error_naming_it(offline_cache, name):
    with pytest.raises(CheckpointError) as excinfo:
        BertModel.from_pretrained(name)
    message = str(excinfo.value)
    assert "\n" not in message and message.startswith(f"{name}: not a local directory")
    assert "HF_HUB_OFFLINE" in message and f"`hf download {name}`" in message and "local directory" in message


@pytest.mark.parametrize("name", ["./nowhere", "/no/such/model", "~/nowhere", "runs/mlm/best", "with space",
                                  "back\\slash"])
def test_a_missing_path_is_not_looked_up_on_the_hub(monkeypatch, name):
    monkeypatch.setattr(hub, "hub_snapshot", lambda _: pytest.fail("a path went to the Hub"))
    assert hub.looks_like_path(name) and not hub.is_hub_id(name)
    with pytest.raises(CheckpointError, match="checkpoint directory not found"):
        resolve_checkpoint_dir(name)


def test_an_existing_directory_wins_over_a_hub_id_of_the_same_name(tmp_path, monkeypatch, checkpoint_dir):
    assert hub.is_hub_id("bert-base-uncased") and hub.is_hub_id("runs/mlm")
    local = tmp_path / "runs" / "mlm"
    shutil.copytree(checkpoint_dir, local)
    monkeypatch.chdir(tmp_path)
    assert not hub.is_hub_id("runs/mlm")
    assert resolve_checkpoint_dir("runs/mlm") == Path("runs/mlm")


def test_safetensors_are_fetched_and_the_pickle_only_when_there_are_none(tmp_path, monkeypatch):
    import huggingface_hub
    calls: list[list[str]] = []
    folders = {"new/model": tmp_path / "new", "old/model": tmp_path / "old"}
    folders["new/model"].mkdir()
    (folders["new/model"] / "model.safetensors").write_bytes(b"")
    folders["old/model"].mkdir()

    def fake_download(repo_id, allow_patterns):
        calls.append(list(allow_patterns))
        return str(folders[repo_id])

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    metadata = ["config.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"]
    assert hub.hub_snapshot("new/model") == folders["new/model"]
    assert calls == [[*metadata, "model.safetensors"]]
    calls.clear()
    assert hub.hub_snapshot("old/model") == folders["old/model"]
    assert calls == [[*metadata, "model.safetensors"], [*metadata, "pytorch_model.bin"]]


def test_without_hub_ids_huggingface_hub_is_not_imported_and_the_environment_alone_is_honoured(tmp_path,
                                                                                                checkpoint_dir):
    home = tmp_path / "hf"
    write_hub_cache(home / "hub", MODEL_ID, checkpoint_dir)
    script = ("import sys, torch\n"
              "from minbert import BertModel, load_tokenizer\n"
              "packaged = BertModel.from_pretrained().state_dict(); load_tokenizer()\n"
              "assert 'huggingface_hub' not in sys.modules, 'imported without a Hub id'\n"
              f"cached = BertModel.from_pretrained({MODEL_ID!r}).state_dict()\n"
              "assert all(torch.equal(cached[k], packaged[k]) for k in packaged)\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(HF_HOME=str(home), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr


# --------------------------------------------------------------------------------------- the CLI flag

@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> dict:
    return write_tiny_course_files(tmp_path_factory.mktemp("data"))


def test_check_settings_accepts_a_cached_hub_id_and_reads_its_config(offline_cache, tiny_data, capsys):
    flags = ["--option", "finetune", "--device", "cpu", *data_args(tiny_data), "--pretrained", MODEL_ID]
    check_settings(parse(flags))
    # The id's own config.json bounds --max_length, as a directory's would.
    with pytest.raises(SystemExit):
        main([*flags, "--max_length", "1000"])
    assert "--max_length: expected an integer from 8 to 512" in capsys.readouterr().err


def test_the_cli_exits_in_one_line_on_an_id_it_cannot_get(offline_cache, tiny_data, tmp_path):
    flags = ["--option", "finetune", "--device", "cpu", *data_args(tiny_data), "--out_dir", str(tmp_path / "run"),
             "--pretrained", "someorg/not-cached"]
    check_settings(parse(flags))  # an id is not refused as a missing directory...
    with pytest.raises(SystemExit) as excinfo:
        main(flags)  # ...but the run stops on it in one line, before anything is written
    message = str(excinfo.value.code)
    assert message.startswith("error: someorg/not-cached: not a local directory") and "\n" not in message
    assert not (tmp_path / "run").exists()
