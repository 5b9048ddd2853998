"""The task registry: each kind's loss, predictions and metric, and a new task declared in one place."""

from __future__ import annotations

import pytest
import scipy.stats
import torch
import torch.nn.functional as F

from minbert import BertConfig, BertModel
from minbert.plumbing.flags import FlagError
from multitask.evaluate import overall
from multitask.model import MultitaskBert
from multitask.predictions import read_predictions, write_predictions
from multitask.settings import build_parser, settings_from
from multitask.tasks import CFIMDB, PARA, SST, STS, TASKS, Task


def test_each_kind_has_its_loss_prediction_and_metric():
    logits = torch.tensor([[0.1, 2.0, -1.0, 0.0, 0.3], [3.0, 0.0, 0.0, 0.0, 0.0]])
    classes = torch.tensor([1, 4])
    assert torch.allclose(SST.loss(logits, classes), F.cross_entropy(logits, classes))
    assert SST.predictions(logits).tolist() == [1, 0]
    assert SST.score(SST.predictions(logits), classes) == 0.5

    logit = torch.tensor([0.5, -0.2, 0.0])
    target = torch.tensor([1.0, 1.0, 0.0])
    for task in (PARA, CFIMDB):
        assert torch.allclose(task.loss(logit, target), F.binary_cross_entropy_with_logits(logit, target))
        assert task.predictions(logit).tolist() == [1, 0, 0]  # 0 is not above the threshold
    scores = torch.tensor([-0.5, 2.0, 7.0])
    assert STS.predictions(scores).tolist() == [0.0, 2.0, 5.0]
    x, y = torch.tensor([0.0, 1.0, 3.0, 2.0]), torch.tensor([0.5, 1.0, 2.0, 2.5])
    assert STS.score(x, y) == pytest.approx(scipy.stats.pearsonr(x.numpy(), y.numpy()).statistic)
    assert STS.score(torch.ones(4), y) == 0.0  # an untrained, constant head
    assert overall({"sst": 0.5, "sts": 0.0, "cfimdb": 0.8}) == pytest.approx((0.5 + 0.5 + 0.8) / 3)


def test_labels_and_prediction_values_follow_each_tasks_range():
    assert SST.parse_label("4.0") == 4 and CFIMDB.parse_label("1") == 1 and STS.parse_label("3.2") == 3.2
    for task, bad in ((SST, "5"), (CFIMDB, "2"), (PARA, "0.5"), (STS, "5.5")):
        with pytest.raises(ValueError):
            task.parse_label(bad)
    assert SST.check_prediction(4) is None and "0..4" in SST.check_prediction(5)
    assert CFIMDB.check_prediction(1) is None and "0..1" in CFIMDB.check_prediction(2)
    assert STS.check_prediction(5.0) is None and "[0, 5]" in STS.check_prediction(float("nan"))


def test_task_lists_are_parsed_and_the_unknown_names_named():
    def settings(*flags: str):
        return settings_from(build_parser().parse_args(list(flags)))

    assert settings("--tasks", "sst, cfimdb").run.tasks == ("sst", "cfimdb")
    assert settings("--r3f", "--r3f_tasks", "sts").regularizers.r3f_tasks == ("sts",)
    with pytest.raises(FlagError, match=r"--tasks: unknown task\(s\) \['imdb'\]; choose from sst,para,sts,cfimdb"):
        settings("--tasks", "sst,imdb")
    with pytest.raises(FlagError, match=r"--rdrop_tasks: unknown task\(s\) \['x'\]"):
        settings("--rdrop", "--rdrop_tasks", "x")


def test_a_task_declared_once_gets_flags_a_head_and_a_prediction_format(monkeypatch, tmp_path):
    toy = Task("toy", "Toy", "toy", "multiclass", ("sentence",), "label", "Predicted_Toy", classes=3)
    monkeypatch.setitem(TASKS, "toy", toy)
    flags = build_parser()._option_string_actions
    for flag in ("--toy_train", "--toy_dev", "--toy_test", "--toy_dev_out", "--toy_test_out"):
        assert flag in flags, flag
    assert flags["--toy_dev"].default.name == "toy-dev.csv"
    assert flags["--toy_test"].default.name == "toy-test-student.csv"

    config = BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=16, max_position_embeddings=16)
    model = MultitaskBert(BertModel(config), ("sst", "toy"))
    batch = {"input_ids": torch.tensor([[2, 5, 3]]), "token_type_ids": torch.zeros(1, 3, dtype=torch.long),
             "attention_mask": torch.ones(1, 3, dtype=torch.long)}
    assert model(toy, batch).shape == (1, 3)

    path = write_predictions(tmp_path / "toy.csv", "toy", ["a", "b"], [2, 0])
    assert path.read_text() == "id \t Predicted_Toy \na , 2 \nb , 0 \n"
    assert read_predictions(path).task == "toy" and read_predictions(path).values == [2, 0]
    with pytest.raises(ValueError, match="0..2"):
        write_predictions(tmp_path / "bad.csv", "toy", ["a"], [3])


def test_help_shows_each_default_once_and_every_flag_explained():
    parser = build_parser()
    formatter = parser._get_formatter()
    for action in parser._actions:
        if not action.option_strings or action.dest == "help":
            continue
        text = formatter._expand_help(action) if action.help else ""
        assert text, f"{action.option_strings[0]} has no help"
        shown = text.count("(default")
        switch = action.default is None or action.default is False
        # A value default is printed once by the formatter; a switch or a None default that the
        # help explains in words ("default: every task") at most once.
        assert shown == (0 if switch and "(default" not in action.help else 1), (action.option_strings[0], text)
