"""The start-up check of shared dropout masks: passes where replay works, refuses in one line where it does not."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch

from minbert import BertModel
from minbert.plumbing.machine import DeviceError
from multitask_classifier import main
from multitask.mask_check import check_dropout_replay, shares_dropout_masks
from multitask.model import MultitaskBert
from multitask.regularizers import RegularizerSettings
from minbert.dropout import DropoutReplay
from tests.test_pipeline import data_args, write_tiny_course_files
from tests.test_smart_training import TINY, train_tiny, weights

CPU = torch.device("cpu")


@contextmanager
def forgetful_replaying(self):
    """A broken replay: it does not go back to the captured state, so the pass draws fresh masks."""
    yield


def tiny_model(pair_encoding: str = "cross", tasks: tuple[str, ...] = ("sst", "para", "sts")) -> MultitaskBert:
    torch.manual_seed(0)
    return MultitaskBert(BertModel(TINY), tasks, pair_encoding=pair_encoding)


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("pair_encoding,tasks", [("cross", ("sst", "para")), ("bi", ("para", "sts"))])
def test_the_check_passes_on_the_cpu_and_leaves_the_model_and_the_rng_as_they_were(precision, pair_encoding, tasks):
    model = tiny_model(pair_encoding, tasks).eval()
    before, rng = weights(model), torch.get_rng_state()
    check_dropout_replay(model, CPU, precision)
    assert torch.equal(torch.get_rng_state(), rng) and not model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_a_replay_that_does_not_restore_the_masks_is_refused_naming_the_way_out(monkeypatch):
    model = tiny_model()
    rng = torch.get_rng_state()
    monkeypatch.setattr(DropoutReplay, "replaying", forgetful_replaying)
    with pytest.raises(DeviceError) as excinfo:
        check_dropout_replay(model, CPU, "fp32")
    message = str(excinfo.value)
    assert "\n" not in message and message.endswith("run with --smart_dropout independent (and --no_bregman)")
    assert "cpu" in message and model.training and torch.equal(torch.get_rng_state(), rng)


def test_a_run_after_the_check_is_bit_identical_to_one_without_it(tmp_path, monkeypatch):
    settings = RegularizerSettings(smart=True)
    plain, plain_history = train_tiny(settings, tmp_path=tmp_path / "plain")

    # The check, run on the freshly built model just before training (where the CLI runs it).
    real_init = MultitaskBert.__init__

    def init_then_check(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        check_dropout_replay(self, CPU, "fp32")

    monkeypatch.setattr(MultitaskBert, "__init__", init_then_check)
    checked, checked_history = train_tiny(settings, tmp_path=tmp_path / "checked")
    a, b = weights(plain), weights(checked)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r.train_losses for r in plain_history] == [r.train_losses for r in checked_history]


@pytest.mark.parametrize("flags,shared", [
    ({}, False),
    ({"rdrop": True}, False),
    ({"smart": True}, True),
    ({"smart": True, "no_bregman": True}, True),
    ({"smart": True, "no_adversarial": True}, True),   # the Bregman term alone
    ({"smart": True, "smart_dropout": "independent"}, False),
    ({"smart": True, "no_bregman": True, "smart_lambda": 0.0}, False),
    ({"r3f": True}, True),
    ({"r3f": True, "smart_dropout": "independent"}, False),
])
def test_which_terms_share_masks(flags, shared):
    assert shares_dropout_masks(RegularizerSettings(**flags)) == shared


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> dict:
    return write_tiny_course_files(tmp_path_factory.mktemp("data"))


def test_the_cli_refuses_shared_masks_the_device_cannot_replay_before_training(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setattr(DropoutReplay, "replaying", forgetful_replaying)
    flags = ["--option", "finetune", "--epochs", "1", "--device", "cpu", "--precision", "fp32", "--skip_predictions",
             *data_args(tiny_data), "--out_dir", str(tmp_path / "run")]
    with pytest.raises(SystemExit) as excinfo:
        main([*flags, "--r3f"])
    message = str(excinfo.value.code)
    assert message.startswith("error: shared dropout masks do not replay on cpu") and "\n" not in message
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
