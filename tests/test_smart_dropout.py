"""SMART and R3F compare one function at x and x + δ: the perturbed passes reuse the clean pass's dropout masks.

Run on the packaged MiniLM with dropout on, in a training step as the Trainer takes it.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from minbert import BertModel, load_tokenizer
from minbert.plumbing.machine import autocast
from multitask.batching import encode_task
from multitask.model import MultitaskBert
from multitask.regularizers import Regularizers, RegularizerSettings, new_weight_average
from multitask.tasks import SST, TASKS
from multitask.train import StepLoss
from minbert.dropout import DropoutReplay
from tests.test_pipeline import DATA

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def sst_batch() -> dict[str, torch.Tensor]:
    examples = SST.read(DATA / "ids-sst-train.csv").examples[:16]
    dataset = encode_task(examples, load_tokenizer(None), SST, "cross", 64)
    return dataset.batch(list(range(len(dataset))))


@pytest.fixture(scope="module")
def model() -> MultitaskBert:
    torch.manual_seed(0)
    return MultitaskBert(BertModel.from_pretrained(None, unpad_inputs=True), ("sst",)).train()


def step_terms(model: MultitaskBert, batch: dict, precision: str = "fp32", seed: int = 0,
               **settings) -> dict[str, float]:
    """The loss terms of one training step (dropout on), from a fixed random stream."""
    torch.manual_seed(seed)
    loss = StepLoss(model, Regularizers(RegularizerSettings(**settings)))
    with torch.no_grad(), autocast(CPU, precision):
        return {name: value.item() for name, value in loss(SST, batch).items()}


def adversarial(model, batch, eps: float, dropout: str = "shared", precision: str = "fp32") -> float:
    return step_terms(model, batch, precision, smart=True, no_bregman=True, smart_eps=eps, smart_step_size=eps,
                      smart_sigma=eps / 10, smart_dropout=dropout)["adversarial"]


def r3f(model, batch, eps: float, dropout: str = "shared") -> float:
    return step_terms(model, batch, r3f=True, r3f_eps=eps, smart_dropout=dropout)["r3f"]


def test_with_shared_masks_a_vanishing_delta_gives_a_vanishing_term(model, sst_batch):
    # With fresh masks per pass the term is the disagreement of two dropout masks, whatever δ is.
    dropout_disagreement = adversarial(model, sst_batch, 1e-12, "independent")
    assert dropout_disagreement > 1e-4
    assert r3f(model, sst_batch, 1e-12, "independent") > 1e-4
    assert adversarial(model, sst_batch, 1e-12) <= 1e-6 * dropout_disagreement
    assert r3f(model, sst_batch, 1e-12) <= 1e-6 * dropout_disagreement


def test_with_shared_masks_the_terms_grow_with_the_radius(model, sst_batch):
    radii = (1e-3, 1e-2, 1e-1, 1.0)
    adversarial_terms = [adversarial(model, sst_batch, eps) for eps in radii]
    noise_terms = [r3f(model, sst_batch, eps) for eps in radii]
    assert adversarial_terms == sorted(adversarial_terms) and noise_terms == sorted(noise_terms)
    # Small δ: ℓ_s is quadratic in δ, so ten times the radius gives about a hundred times the term.
    assert 30 < adversarial_terms[1] / adversarial_terms[0] < 300
    # The ascent finds a worse direction than random noise of the same size.
    assert all(a > 3 * n for a, n in zip(adversarial_terms, noise_terms))


class MaskRecorder:
    """Records, per forward of each dropout module after the embeddings, which entries it zeroed."""

    def __init__(self, model: MultitaskBert) -> None:
        self.masks: list[torch.Tensor] = []
        modules = [m for name, m in model.named_modules()
                   if isinstance(m, nn.Dropout) and not name.startswith("encoder.embeddings")]
        self.per_pass = len(modules)
        # Dropped: zero out of a non-zero input (an input that is exactly 0 tells nothing).
        self.handles = [m.register_forward_hook(lambda _m, i, out: self.masks.append(out.eq(0) & i[0].ne(0)))
                        for m in modules]

    def passes(self) -> list[list[torch.Tensor]]:
        return [self.masks[i:i + self.per_pass] for i in range(0, len(self.masks), self.per_pass)]

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


@pytest.mark.parametrize("term,passes", [("adversarial", 3), ("r3f", 2)])
@pytest.mark.parametrize("dropout", ["shared", "independent"])
def test_clean_ascent_and_final_passes_draw_the_same_masks_only_when_shared(model, sst_batch, term, passes,
                                                                            dropout):
    recorder = MaskRecorder(model)
    try:
        step_terms(model, sst_batch, smart=term == "adversarial", no_bregman=term == "adversarial", r3f=term == "r3f", smart_eps=0.1,
                   smart_step_size=0.1, smart_sigma=0.01, r3f_eps=0.1, smart_dropout=dropout)
    finally:
        recorder.remove()
    # clean, (ascent,) final: each a full set of masks, and masks that really drop something.
    recorded = recorder.passes()
    assert len(recorded) == passes and all(mask.any() for mask in recorded[0])
    same = [all(torch.equal(a, b) for a, b in zip(recorded[0], other)) for other in recorded[1:]]
    assert same == ([True] * (passes - 1) if dropout == "shared" else [False] * (passes - 1))


def test_shared_masks_leave_the_random_stream_where_independent_passes_would_not(model, sst_batch):
    # Replaying restores the stream after each pass: what is drawn next is the same whether the
    # regulariser ran its passes or not, so resume and reruns see one stream.
    torch.manual_seed(0)
    StepLoss(model)(SST, sst_batch)
    after_plain = torch.rand(4)
    torch.manual_seed(0)
    with torch.no_grad():
        embeddings, mask = model.embed(TASKS["sst"], sst_batch)
        masks = DropoutReplay(CPU)
        model.predict_from_embeddings(TASKS["sst"], embeddings, mask)
        masks.wrap(lambda e: model.predict_from_embeddings(TASKS["sst"], e, mask))(embeddings)
    assert torch.equal(torch.rand(4), after_plain)


def test_rdrop_is_zero_without_dropout_and_positive_with_it(sst_batch):
    torch.manual_seed(0)
    no_dropout = MultitaskBert(BertModel.from_pretrained(None, unpad_inputs=True, hidden_dropout_prob=0.0,
                                                         attention_probs_dropout_prob=0.0),
                               ("sst",), head_dropout=0.0).train()
    assert step_terms(no_dropout, sst_batch, rdrop=True)["rdrop"] == 0.0
    torch.manual_seed(0)
    with_dropout = MultitaskBert(BertModel.from_pretrained(None, unpad_inputs=True), ("sst",)).train()
    value = step_terms(with_dropout, sst_batch, rdrop=True, rdrop_alpha=2.0)["rdrop"]
    assert value > 1e-4
    # α weights the divergence linearly (same stream, same two passes).
    assert step_terms(with_dropout, sst_batch, rdrop=True, rdrop_alpha=1.0)["rdrop"] == pytest.approx(value / 2)


@pytest.mark.parametrize("settings,replays", [
    (None, 0), ({"rdrop": True}, 0), ({"smart": True, "no_adversarial": True}, 1), ({"smart": True}, 2),
    ({"r3f": True, "smart_dropout": "independent"}, 0)])
def test_mask_replay_is_built_only_for_the_terms_that_replay(model, sst_batch, monkeypatch, settings, replays):
    built = []

    def counting(device):
        built.append(device)
        return DropoutReplay(device)

    monkeypatch.setattr("multitask.train.DropoutReplay", counting)
    regularizers = None
    if settings is not None:
        regularizer_settings = RegularizerSettings(**settings)
        average = new_weight_average(model, None) if regularizer_settings.needs_average else None
        regularizers = Regularizers(regularizer_settings, average)
    with torch.no_grad():
        StepLoss(model, regularizers)(SST, sst_batch)
    assert len(built) == replays
