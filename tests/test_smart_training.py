"""SMART and R3F inside the multitask training loop: switches, zero weights, the teacher's updates."""

from __future__ import annotations

import torch

from minbert import BertConfig, BertModel
from multitask.batching import EncodedTask
from multitask.model import MultitaskBert
from multitask.regularizers import RegularizerSettings, Regularizers, new_weight_average, parameters_frozen
from multitask.tasks import TASKS
from multitask.train import StepLoss, Trainer, TrainSettings

TINY = BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                  max_position_embeddings=32)


def tiny_tasks(n: int = 24) -> dict[str, EncodedTask]:
    generator = torch.Generator().manual_seed(0)

    def sequences(count):
        lengths = torch.randint(3, 12, (count,), generator=generator)
        return [[2] + torch.randint(5, 100, (int(k) - 2,), generator=generator).tolist() + [3] for k in lengths]

    def task(name, kind, labels):
        ids = sequences(n)
        types = [[0] * len(s) for s in ids]
        assert TASKS[name].kind == kind
        return EncodedTask(TASKS[name], [f"{name}{i}" for i in range(n)], ids, types, labels)

    return {"sst": task("sst", "multiclass", torch.randint(0, 5, (n,), generator=generator)),
            "para": task("para", "binary", torch.randint(0, 2, (n,), generator=generator).float()),
            "sts": task("sts", "regression", 5 * torch.rand(n, generator=generator))}


def train_tiny(settings: RegularizerSettings | None, epochs: int = 1, tmp_path=None) -> tuple[MultitaskBert, list]:
    torch.manual_seed(0)
    model = MultitaskBert(BertModel(TINY))
    teacher = new_weight_average(model, settings.bregman_beta) if settings is not None and settings.needs_average else None
    regularizers = Regularizers(settings, teacher) if settings is not None else None
    tasks = tiny_tasks()
    trainer = Trainer(model, tasks, tasks, TrainSettings(epochs=epochs, batch_size=8, lr=1e-3, seed=0, precision="fp32"),
                      torch.device("cpu"), tmp_path, regularizers=regularizers, average=teacher)
    return model, trainer.train()


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_zero_weights_are_bit_identical_to_plain_finetuning(tmp_path):
    plain, _ = train_tiny(None, tmp_path=tmp_path / "plain")
    off = RegularizerSettings(smart=True, r3f=True, smart_lambda=0.0, bregman_mu=0.0,
                              r3f_lambda=0.0)
    zeroed, _ = train_tiny(off, tmp_path=tmp_path / "zero")
    a, b = weights(plain), weights(zeroed)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_each_switch_adds_exactly_its_term(tmp_path):
    cases = {
        "adversarial": RegularizerSettings(smart=True, no_bregman=True),
        "bregman": RegularizerSettings(smart=True, no_adversarial=True),
        "r3f": RegularizerSettings(r3f=True),
    }
    for name, settings in cases.items():
        _, history = train_tiny(settings, tmp_path=tmp_path / name)
        losses = history[0].train_losses
        added = {k.split("_", 1)[1] for k in losses if "_" in k}
        assert added == {name}, (name, losses)
        assert all(f"{task}_{name}" in losses for task in ("sst", "para", "sts"))
    _, both = train_tiny(RegularizerSettings(smart=True), tmp_path=tmp_path / "smart")
    assert {k.split("_", 1)[1] for k in both[0].train_losses if "_" in k} == {"adversarial", "bregman"}


def test_task_lists_regularise_only_the_named_tasks(tmp_path):
    settings = RegularizerSettings(smart=True, r3f=True, smart_tasks=("para", "sts"),
                                   r3f_tasks=("sst",))
    _, history = train_tiny(settings, tmp_path=tmp_path)
    losses = history[0].train_losses
    assert {k for k in losses if "_" in k} == {"sst_r3f", "para_adversarial", "para_bregman", "sts_adversarial",
                                               "sts_bregman"}, losses


def test_regularisers_change_training_and_stay_finite(tmp_path):
    plain, _ = train_tiny(None, tmp_path=tmp_path / "plain")
    smart, history = train_tiny(RegularizerSettings(smart=True, smart_eps=1e-3,
                                                    smart_step_size=1e-2), tmp_path=tmp_path / "smart")
    assert history[0].skipped_steps == 0
    assert all(torch.isfinite(torch.tensor(v)) for v in history[0].train_losses.values())
    assert any(not torch.equal(a, b) for a, b in zip(weights(plain).values(), weights(smart).values()))


def test_teacher_follows_the_student_by_the_ema_formula(tmp_path):
    torch.manual_seed(0)
    model = MultitaskBert(BertModel(TINY))
    regularizers = Regularizers(RegularizerSettings(smart=True, no_adversarial=True), new_weight_average(model, None))
    teacher = regularizers.average.model
    before = weights(teacher)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    # Update 1 of 10,000: within the first 10%, β = 0.99 (a run this long is not capped).
    regularizers.average.update(0, 10_000)
    student = dict(model.named_parameters())
    for name, p in teacher.named_parameters():
        expected = 0.01 * student[name] + 0.99 * before[name]
        assert torch.allclose(p, expected, atol=1e-6), name
    assert not any(p.requires_grad for p in teacher.parameters())


def smart_step(model: MultitaskBert, batch: dict[str, torch.Tensor], ascent_first: bool, monkeypatch) -> tuple:
    """One bf16 SMART step (adversarial and Bregman terms) on the tiny model: its terms and gradients."""
    regularizers = Regularizers(RegularizerSettings(smart=True, smart_eps=0.1), new_weight_average(model, None))
    taken = []
    if ascent_first:
        found = regularizers.adversarial_delta
        monkeypatch.setattr(regularizers, "adversarial_delta", lambda *args: taken.append(1) or found(*args))
    else:
        monkeypatch.setattr(regularizers, "ascends_first", lambda *args: False)
    torch.manual_seed(5)
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        terms = StepLoss(model, regularizers)(TASKS["para"], batch)
    sum(terms.values()).backward()
    assert len(taken) == ascent_first  # the path under test was the one taken
    return ({name: value.item() for name, value in terms.items()},
            {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None})


def test_finding_delta_before_the_clean_pass_changes_no_number(monkeypatch):
    # The fp32 ascent runs before the clean pass (so their activations are never held together):
    # its target pass draws the dropout masks the clean pass used to draw, and δ₀ comes after them.
    # Every term and every gradient must be the ones of the clean-pass-first order.
    torch.manual_seed(0)
    model = MultitaskBert(BertModel(TINY)).train()
    batch = tiny_tasks(8)["para"].batch(list(range(8)))
    first_terms, first_grads = smart_step(model, batch, True, monkeypatch)
    monkeypatch.undo()
    clean_terms, clean_grads = smart_step(model, batch, False, monkeypatch)
    assert first_terms == clean_terms and first_terms["adversarial"] > 0
    assert first_grads.keys() == clean_grads.keys() and len(first_grads) > 0
    assert all(torch.equal(first_grads[name], clean_grads[name]) for name in first_grads)


def test_parameters_frozen_puts_back_only_what_it_froze():
    model = MultitaskBert(BertModel(TINY))
    model.heads.requires_grad_(False)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    try:
        with parameters_frozen(model):
            assert not any(p.requires_grad for p in model.parameters())
            raise KeyError("inside")
    except KeyError:
        pass
    assert {name for name, p in model.named_parameters() if p.requires_grad} == trainable and trainable
