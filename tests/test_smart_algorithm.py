"""SMART as Algorithm 1 runs it, on the packaged MiniLM: δ on the ball's surface, δ that survives bf16, a Bregman
term that is 0 at θ = θ̃, R-Drop in the paper's form, and terms whose size can be read."""

from __future__ import annotations

import json

import pytest
import torch

from minbert import BertModel, load_tokenizer
from minbert.plumbing.machine import autocast
from minbert.plumbing.progress import ProgressReporter, format_loss
from multitask.batching import encode_task
from multitask.model import MultitaskBert
from multitask.regularizers import Regularizers, RegularizerSettings, new_weight_average
from multitask.tasks import COURSE_TASKS, TASKS
from multitask.records import EpochRecord, format_epoch
from multitask.train import StepLoss
from minbert.dropout import DropoutReplay
from smart import divergence
from smart.adversarial import adversarial_perturbation
from smart.noise import keep_mask
from tests.test_pipeline import DATA

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def model() -> MultitaskBert:
    torch.manual_seed(0)
    return MultitaskBert(BertModel.from_pretrained(None, unpad_inputs=True), COURSE_TASKS).train()


@pytest.fixture(scope="module")
def batches() -> dict[str, dict[str, torch.Tensor]]:
    """The first 16 training examples of each course task, as one padded batch each."""
    tokenizer = load_tokenizer(None)
    out = {}
    for name in COURSE_TASKS:
        spec = TASKS[name]
        dataset = encode_task(spec.read(spec.file(DATA, "train")).examples[:16], tokenizer, spec, "cross", 64)
        out[name] = dataset.batch(list(range(len(dataset))))
    return out


def test_step_and_noise_follow_the_radius_by_default():
    settings = RegularizerSettings(smart=True, smart_eps=0.03)
    assert settings.step_size == pytest.approx(3.0) and settings.sigma == 0.03
    given = RegularizerSettings(smart=True, smart_eps=0.03, smart_step_size=0.01, smart_sigma=0.0)
    assert given.step_size == 0.01 and given.sigma == 0.0


@pytest.mark.parametrize("task", COURSE_TASKS)
def test_one_default_step_puts_delta_on_the_surface_of_the_ball(model, batches, task):
    settings = RegularizerSettings(smart=True)
    eps = settings.smart_eps
    batch = batches[task]
    torch.manual_seed(1)
    with torch.no_grad():
        embeddings, mask = model.embed(TASKS[task], batch)
        masks = DropoutReplay(CPU)
        clean = model.predict_from_embeddings(TASKS[task], embeddings, mask)
        f = masks.wrap(lambda e: model.predict_from_embeddings(TASKS[task], e, mask))
        keep = keep_mask(embeddings, mask)
        delta = adversarial_perturbation(f, embeddings, clean, TASKS[task].kind, eps, settings.sigma,
                                         settings.step_size, 1, keep)
    per_example = delta.abs().amax(dim=(1, 2))
    assert torch.allclose(per_example, torch.full_like(per_example, eps), rtol=1e-6)
    real = delta[mask.bool()]
    on_surface = torch.isclose(real.abs(), torch.tensor(eps), rtol=1e-6).float().mean().item()
    assert on_surface >= 0.5
    assert (delta[~mask.bool()] == 0).all()


def adversarial_term(model, batch, task: str, precision: str, seed: int, **settings) -> float:
    torch.manual_seed(seed)
    loss = StepLoss(model, Regularizers(RegularizerSettings(smart=True, no_bregman=True, **settings)))
    with torch.no_grad(), autocast(CPU, precision):
        return loss(TASKS[task], batch)["adversarial"].item()


@pytest.mark.parametrize("task", COURSE_TASKS)
def test_bf16_term_is_within_ten_percent_of_fp32_at_the_defaults(model, batches, task):
    # Summed over a few streams (dropout masks and starting noise), as an epoch's mean sums over steps.
    fp32 = sum(adversarial_term(model, batches[task], task, "fp32", seed) for seed in range(3))
    bf16 = sum(adversarial_term(model, batches[task], task, "bf16", seed) for seed in range(3))
    assert fp32 > 0
    assert abs(bf16 / fp32 - 1) < 0.10


def test_an_ascent_in_bf16_is_a_weaker_attack_than_the_fp32_one(model, batches):
    # What the fp32 ascent is for: at ε = 0.01 bf16's rounding flips the signs the ℓ∞ step follows.
    def total(precision: str, ascent: str) -> float:
        return sum(adversarial_term(model, batches[task], task, precision, seed, smart_eps=0.01,
                                    smart_ascent_precision=ascent)
                   for task in ("para", "sts") for seed in range(2))

    assert total("bf16", "compute") < 0.95 * total("fp32", "fp32")
    assert abs(total("bf16", "fp32") / total("fp32", "fp32") - 1) < 0.05


def bregman_terms(model, batch, task: str, **settings) -> dict[str, float]:
    average = new_weight_average(model, None)
    regularizers = Regularizers(RegularizerSettings(smart=True, no_adversarial=True, **settings), average)
    torch.manual_seed(3)
    with torch.no_grad():
        return {name: value.item() for name, value in StepLoss(model, regularizers)(TASKS[task], batch).items()}, average


@pytest.mark.parametrize("task", COURSE_TASKS)
def test_bregman_term_is_exactly_zero_when_the_average_equals_the_student(model, batches, task):
    terms, average = bregman_terms(model, batches[task], task)
    assert model.training and average.model.training
    assert terms["bregman"] == 0.0
    # And it measures a difference of weights once there is one, under the same masks.
    with torch.no_grad():
        for p in average.model.parameters():
            p.add_(1e-3 * torch.randn_like(p))
        torch.manual_seed(3)
        student_out = model(TASKS[task], batches[task])
        torch.manual_seed(3)
        teacher_out = average.model(TASKS[task], batches[task])
    regularizers = Regularizers(RegularizerSettings(smart=True, no_adversarial=True), average)
    torch.manual_seed(3)
    with torch.no_grad():
        moved = StepLoss(model, regularizers)(TASKS[task], batches[task])["bregman"].item()
    assert moved > 0
    assert moved == pytest.approx(divergence(TASKS[task].kind, student_out, teacher_out).item(), rel=1e-5)


def test_rdrop_paper_form_is_both_task_losses_and_half_the_symmetric_kl(model, batches):
    batch = batches["sst"]
    torch.manual_seed(4)
    with torch.no_grad():
        first, second = model(TASKS["sst"], batch), model(TASKS["sst"], batch)
    kl = divergence("multiclass", second, first).item()
    assert kl > 1e-5

    def terms(**settings) -> dict[str, float]:
        torch.manual_seed(4)
        with torch.no_grad():
            loss = StepLoss(model, Regularizers(RegularizerSettings(rdrop=True, rdrop_alpha=2.0, **settings)))
            return {name: value.item() for name, value in loss(TASKS["sst"], batch).items()}

    paper = terms()
    assert paper["task"] == pytest.approx(TASKS["sst"].loss(first, batch["labels"]).item(), rel=1e-6)
    assert paper["rdrop_task"] == pytest.approx(TASKS["sst"].loss(second, batch["labels"]).item(), rel=1e-6)
    assert paper["rdrop"] == pytest.approx(0.5 * 2.0 * kl, rel=1e-5)
    first_pass = terms(rdrop_form="first_pass")
    assert set(first_pass) == {"task", "rdrop"}
    assert first_pass["rdrop"] == pytest.approx(2.0 * kl, rel=1e-5)


@pytest.mark.parametrize("value,text", [(1.234567, "1.23"), (0.0123, "0.0123"), (0.00098765, "9.88e-04"),
                                        (7.0, "7.00"), (0.0, "0.00"), (-2.5e-6, "-2.50e-06")])
def test_losses_print_with_three_significant_digits(value, text):
    assert format_loss(value) == text


def test_a_small_term_never_reads_zero_in_progress_lines_or_epoch_lines():
    lines = []
    reporter = ProgressReporter(10, emit=lines.append, interval=0.0)
    reporter.add(32, {"sst loss": 1.4, "sst_adversarial loss": 2.3e-5})
    reporter.advance(1)
    assert "sst_adversarial loss 2.30e-05" in lines[0] and "0.0000" not in lines[0]
    record = EpochRecord(1, {"sst": 0.4}, 0.4, {"sst": 1.2, "sst_adversarial": 0.024}, 10.0, 64, 0)
    assert record.as_json()["ratio_sst_adversarial"] == pytest.approx(0.02)
    assert "ratio_sst" not in record.as_json()
    assert "sst_adversarial 0.0240 (2.00% of sst)" in format_epoch(record)
    json.dumps(record.as_json())
