"""The three-head model, the task losses, the task schedules, the lr schedule, optimizer groups and metrics."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from minbert import BertConfig, BertModel
from multitask.evaluate import overall
from multitask.model import MultitaskBert
from multitask.schedule import task_order
from multitask.tasks import COURSE_TASKS, TASKS, pearson
from multitask.train import build_optimizer, warmup_linear_decay

HIDDEN = 32
BATCH = 3
ATOL = 1e-5


def tiny_encoder(seed: int = 0) -> BertModel:
    torch.manual_seed(seed)
    return BertModel(BertConfig(vocab_size=30522, hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=64))


def tiny_model(pooling: str = "cls", pair_encoding: str = "cross", seed: int = 0) -> MultitaskBert:
    model = MultitaskBert(tiny_encoder(seed), pooling=pooling, pair_encoding=pair_encoding)
    return model.eval()


def side(lengths: list[int], generator: torch.Generator, second_segment: int = 0) -> dict[str, torch.Tensor]:
    """Right-padded ids / token types / mask for sequences of the given real lengths."""
    width = max(lengths)
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    types = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, n in enumerate(lengths):
        ids[row, :n] = torch.randint(1000, 2000, (n,), generator=generator)
        mask[row, :n] = 1
        if second_segment:
            types[row, n // 2:n] = 1  # a cross-encoded pair: the back half is sentence b
    return {"input_ids": ids, "token_type_ids": types, "attention_mask": mask}


def make_batch(lengths_a: list[int], lengths_b: list[int] | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
    """A batch with side a and, when given, a separately padded side b (the `bi` layout)."""
    generator = torch.Generator().manual_seed(seed)
    batch = side(lengths_a, generator)
    if lengths_b is not None:
        batch.update({f"{k}_b": v for k, v in side(lengths_b, generator).items()})
    return batch


def append_pads(batch: dict[str, torch.Tensor], extra: int) -> dict[str, torch.Tensor]:
    """The same batch with `extra` more pad positions on every side (pad id 0, type 0, mask 0)."""
    return {k: F.pad(v, (0, extra), value=0) for k, v in batch.items()}


# Side b deliberately longer than side a, so stacking must pad side a.
A_LENGTHS, B_LENGTHS = [5, 3, 7], [9, 2, 4]


# ---------------------------------------------------------------------------------------------- shapes

@pytest.mark.parametrize("pooling", ["cls", "mean"])
@pytest.mark.parametrize("pair_encoding", ["cross", "bi"])
def test_output_shape_per_task(pooling, pair_encoding):
    model = tiny_model(pooling, pair_encoding)
    batch = make_batch(A_LENGTHS, B_LENGTHS)
    with torch.no_grad():
        assert model(TASKS["sst"], batch).shape == (BATCH, 5)
        assert model(TASKS["para"], batch).shape == (BATCH,)
        assert model(TASKS["sts"], batch).shape == (BATCH,)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
@pytest.mark.parametrize("pair_encoding", ["cross", "bi"])
def test_forward_is_predict_from_embeddings_of_embed(pooling, pair_encoding):
    model = tiny_model(pooling, pair_encoding)
    batch = make_batch(A_LENGTHS, B_LENGTHS)
    with torch.no_grad():
        for task in COURSE_TASKS:
            embeddings, mask = model.embed(TASKS[task], batch)
            assert embeddings.shape[:2] == mask.shape
            assert torch.equal(model(TASKS[task], batch), model.predict_from_embeddings(TASKS[task], embeddings, mask))


def test_unknown_pooling_pair_encoding_or_task_is_rejected():
    encoder = tiny_encoder()
    with pytest.raises(ValueError, match="pooling"):
        MultitaskBert(encoder, pooling="max")
    with pytest.raises(ValueError, match="pair_encoding"):
        MultitaskBert(encoder, pair_encoding="siamese")
    with pytest.raises(ValueError, match="unknown task"):
        MultitaskBert(encoder, tasks=("sst", "nli"))


# ------------------------------------------------------------------------------------------ bi-encoding

def test_head_input_width_is_4h_for_bi_pairs_only():
    bi, cross = tiny_model(pair_encoding="bi"), tiny_model(pair_encoding="cross")
    assert bi.heads["sst"].in_features == HIDDEN
    assert bi.heads["para"].in_features == 4 * HIDDEN
    assert bi.heads["sts"].in_features == 4 * HIDDEN
    assert all(cross.heads[t].in_features == HIDDEN for t in COURSE_TASKS)
    assert [cross.heads[t].out_features for t in ("sst", "para", "sts")] == [5, 1, 1]


def test_bi_embed_stacks_both_sides_along_the_batch():
    model = tiny_model(pair_encoding="bi")
    batch = make_batch(A_LENGTHS, B_LENGTHS)
    width = max(max(A_LENGTHS), max(B_LENGTHS))
    with torch.no_grad():
        embeddings, mask = model.embed(TASKS["sts"], batch)
        assert embeddings.shape == (2 * BATCH, width, HIDDEN)
        assert mask.shape == (2 * BATCH, width)
        padded_a = append_pads({k: v for k, v in batch.items() if not k.endswith("_b")},
                               width - batch["input_ids"].shape[1])
        assert torch.equal(mask[:BATCH], padded_a["attention_mask"])
        assert torch.equal(mask[BATCH:], batch["attention_mask_b"])
        assert torch.allclose(embeddings[:BATCH],
                              model.encoder.embed(padded_a["input_ids"], padded_a["token_type_ids"]), atol=ATOL)
        assert torch.allclose(embeddings[BATCH:],
                              model.encoder.embed(batch["input_ids_b"], batch["token_type_ids_b"]), atol=ATOL)
        # sst is never a pair: its embeddings are side a alone.
        sst_embeddings, sst_mask = model.embed(TASKS["sst"], batch)
        assert sst_embeddings.shape[0] == BATCH and torch.equal(sst_mask, batch["attention_mask"])


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_bi_pair_features_are_u_v_absdiff_product(pooling):
    model = tiny_model(pooling, "bi")
    batch = make_batch(A_LENGTHS, B_LENGTHS)
    captured = {}
    handle = model.heads["para"].register_forward_hook(lambda module, args, out: captured.update(x=args[0]))
    try:
        with torch.no_grad():
            logits = model(TASKS["para"], batch)
            # Each side encoded alone, at its own padded length.
            u = model.pool(model.encoder(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]),
                           batch["attention_mask"])
            v = model.pool(model.encoder(batch["input_ids_b"], batch["attention_mask_b"],
                                         batch["token_type_ids_b"]), batch["attention_mask_b"])
    finally:
        handle.remove()
    features = captured["x"]
    assert features.shape == (BATCH, 4 * HIDDEN)
    expected = torch.cat([u, v, (u - v).abs(), u * v], dim=-1)
    assert torch.allclose(features, expected, atol=ATOL), (features - expected).abs().max()
    head = model.heads["para"]
    assert torch.allclose(logits, (expected @ head.weight.T + head.bias).squeeze(-1), atol=ATOL)


# -------------------------------------------------------------------------------------------- mean pooling

@pytest.mark.parametrize("pair_encoding", ["cross", "bi"])
def test_mean_pooling_ignores_appended_pads(pair_encoding):
    model = tiny_model("mean", pair_encoding)
    batch = make_batch(A_LENGTHS, B_LENGTHS)
    with torch.no_grad():
        for task in COURSE_TASKS:
            plain, padded = model(TASKS[task], batch), model(TASKS[task], append_pads(batch, 6))
            assert torch.allclose(plain, padded, atol=ATOL), (task, (plain - padded).abs().max())


def test_mean_pool_averages_real_positions_only():
    model = tiny_model("mean")
    hidden = torch.randn(2, 4, HIDDEN)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    hidden[0, 2:] = 1e6  # garbage at pad positions must not leak in
    pooled = model.pool({"last_hidden_state": hidden, "pooler_output": torch.zeros(2, HIDDEN)}, mask)
    assert torch.allclose(pooled[0], hidden[0, :2].mean(0))
    assert torch.allclose(pooled[1], hidden[1].mean(0))


def test_mean_pooling_differs_from_cls_pooling():
    batch = make_batch(A_LENGTHS)
    cls_model, mean_model = tiny_model("cls"), tiny_model("mean")  # same seed: same weights
    with torch.no_grad():
        assert not torch.allclose(cls_model(TASKS["sst"], batch), mean_model(TASKS["sst"], batch))


# ------------------------------------------------------------------------------------------------- losses

@pytest.mark.parametrize("task", ["sts", "para"])
def test_task_loss_rejects_column_vs_vector_instead_of_broadcasting(task):
    labels = torch.tensor([0.0, 1.0, 1.0, 0.0])
    with pytest.raises(ValueError, match="shape"):
        TASKS[task].loss(torch.zeros(4, 1), labels)
    with pytest.raises(ValueError, match="shape"):
        TASKS[task].loss(torch.zeros(4), labels[:, None])


def test_task_loss_matches_torch_losses_on_correct_shapes():
    generator = torch.Generator().manual_seed(0)
    scores, similarity = torch.randn(6, generator=generator), torch.rand(6, generator=generator) * 5
    assert torch.allclose(TASKS["sts"].loss(scores, similarity), F.mse_loss(scores, similarity))
    logits, duplicate = torch.randn(6, generator=generator), torch.tensor([0, 1, 1, 0, 1, 0])
    assert torch.allclose(TASKS["para"].loss(logits, duplicate),
                          F.binary_cross_entropy_with_logits(logits, duplicate.float()))
    class_logits, sentiment = torch.randn(6, 5, generator=generator), torch.tensor([0, 4, 2, 3, 1, 2])
    assert torch.allclose(TASKS["sst"].loss(class_logits, sentiment), F.cross_entropy(class_logits, sentiment))


def test_model_outputs_fit_task_loss_without_broadcasting():
    model = tiny_model(pair_encoding="bi")
    batch = make_batch(A_LENGTHS, B_LENGTHS)
    labels = {"sst": torch.tensor([0, 4, 2]), "para": torch.tensor([0.0, 1.0, 1.0]), "sts": torch.tensor([0.5, 3.0, 5.0])}
    for task in COURSE_TASKS:
        loss = TASKS[task].loss(model(TASKS[task], batch), labels[task])
        assert loss.shape == () and torch.isfinite(loss)


# ---------------------------------------------------------------------------------------------- schedules

SIZES = {"sst": 7, "para": 12, "sts": 3}


def test_proportional_holds_each_task_exactly_its_batch_count():
    order = task_order("proportional", SIZES, np.random.default_rng(0))
    assert len(order) == sum(SIZES.values())
    assert Counter(order) == Counter(SIZES)
    assert order != sorted(order, key=list(SIZES).index)  # shuffled, not blocked


def test_round_robin_alternates_tasks():
    order = task_order("round_robin", SIZES, np.random.default_rng(0))
    assert len(order) == sum(SIZES.values())
    assert order[:6] == ["sst", "para", "sts", "sst", "para", "sts"]
    assert all(a != b for a, b in zip(order, order[1:]))
    counts = Counter(order).values()
    assert max(counts) - min(counts) <= 1  # equal shares whatever the sizes


def test_annealed_is_deterministic_for_a_seeded_rng():
    first = task_order("annealed", SIZES, np.random.default_rng(42), epoch=1, epochs=3)
    second = task_order("annealed", SIZES, np.random.default_rng(42), epoch=1, epochs=3)
    other = task_order("annealed", SIZES, np.random.default_rng(43), epoch=1, epochs=3)
    assert first == second
    assert first != other
    assert len(first) == sum(SIZES.values()) and set(first) <= set(SIZES)


def test_annealed_gives_small_tasks_more_weight_late_in_training():
    sizes = {"big": 900, "small": 100}
    rng = np.random.default_rng(0)
    epochs = 10
    shares = [Counter(task_order("annealed", sizes, rng, epoch=e, epochs=epochs))["small"] / 1000
              for e in range(epochs)]
    # α = 1 at the start (share 0.1, proportional), α = 0.5 at the end (share 10 / (30 + 10) = 0.25).
    assert 0.07 < shares[0] < 0.14, shares
    assert 0.20 < shares[-1] < 0.30, shares
    assert shares[-1] > shares[0] + 0.08, shares


def test_sqrt_deals_shares_proportional_to_the_square_root_of_size_evenly():
    sizes = {"big": 900, "small": 100}
    order = task_order("sqrt", sizes, np.random.default_rng(0))
    assert len(order) == 1000
    # √900 : √100 = 30 : 10, so 750 : 250 of the steps, exactly up to rounding.
    assert abs(Counter(order)["small"] - 250) <= 1
    # Dealt evenly: the small task comes every 4th step, never in runs.
    gaps = np.diff([i for i, task in enumerate(order) if task == "small"])
    assert set(gaps) == {4}
    assert order == task_order("sqrt", sizes, np.random.default_rng(1))  # no randomness involved


def test_unknown_schedule_is_rejected():
    with pytest.raises(ValueError, match="schedule"):
        task_order("random", SIZES, np.random.default_rng(0))


# --------------------------------------------------------------------------------------- lr and optimizer

def lr_curve(peak: float, warmup: int, total: int) -> list[float]:
    """The lr used by each of `total` updates, then the lr after the last one."""
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=peak)
    scheduler = warmup_linear_decay(optimizer, warmup, total)
    lrs = []
    for _ in range(total):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs + [optimizer.param_groups[0]["lr"]]


def test_warmup_rises_linearly_to_peak_then_decays_linearly_to_zero():
    peak, warmup, total = 0.1, 10, 50
    lrs = lr_curve(peak, warmup, total)
    assert lrs[0] <= peak / warmup + 1e-12  # starts near 0
    rise = np.diff(lrs[:warmup])
    assert np.allclose(rise, peak / warmup)  # linear warm-up
    assert lrs[warmup] == pytest.approx(peak) and max(lrs) == pytest.approx(peak)
    fall = np.diff(lrs[warmup:])
    assert np.allclose(fall, -peak / (total - warmup))  # linear decay
    assert lrs[total] == pytest.approx(0.0, abs=1e-12)


def test_no_warmup_starts_at_peak():
    lrs = lr_curve(0.1, 0, 20)
    assert lrs[0] == pytest.approx(0.1)
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12)
    assert all(a > b for a, b in zip(lrs, lrs[1:]))


def test_build_optimizer_does_not_decay_biases_or_layernorm():
    model = tiny_model()
    model.encoder.pooler.requires_grad_(False)  # frozen parameters are left out entirely
    optimizer = build_optimizer(model, lr=1e-3, weight_decay=0.01)
    decay_group, no_decay_group = optimizer.param_groups
    assert decay_group["weight_decay"] == 0.01 and no_decay_group["weight_decay"] == 0.0
    decay, no_decay = {id(p) for p in decay_group["params"]}, {id(p) for p in no_decay_group["params"]}
    assert not decay & no_decay
    for name, param in model.named_parameters():
        if not param.requires_grad:
            assert id(param) not in decay | no_decay, name
        elif name.endswith(".bias") or "LayerNorm" in name:
            assert id(param) in no_decay, name
        else:
            assert id(param) in decay, name
    names = dict(model.named_parameters())
    assert id(names["encoder.embeddings.LayerNorm.weight"]) in no_decay
    assert id(names["heads.sts.bias"]) in no_decay
    assert id(names["heads.sst.weight"]) in decay
    assert id(names["encoder.embeddings.word_embeddings.weight"]) in decay


# ------------------------------------------------------------------------------------------------ metrics

def test_overall_maps_sts_pearson_to_unit_interval():
    assert overall({"sst": 0.5, "para": 0.7, "sts": 0.2}) == pytest.approx((0.5 + 0.7 + 0.6) / 3)
    assert overall({"sts": -1.0}) == pytest.approx(0.0)
    assert overall({"sts": 1.0}) == pytest.approx(1.0)
    assert overall({"sst": 0.4}) == pytest.approx(0.4)


def test_pearson_matches_numpy_and_is_zero_for_constant_input():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=50), rng.normal(size=50)
    assert pearson(x, y) == pytest.approx(np.corrcoef(x, y)[0, 1])
    assert pearson(np.ones(5), np.arange(5.0)) == 0.0


def test_head_lr_gives_the_heads_their_own_rate_and_keeps_decay_rules():
    model = tiny_model()
    optimizer = build_optimizer(model, lr=1e-4, weight_decay=0.01, head_lr=2e-3)
    rate_of = {id(p): (g["lr"], g["weight_decay"]) for g in optimizer.param_groups for p in g["params"]}
    for name, param in model.named_parameters():
        decay = 0.0 if name.endswith(".bias") or "LayerNorm" in name else 0.01
        lr = 2e-3 if name.startswith("heads.") else 1e-4
        assert rate_of[id(param)] == (lr, decay), name
