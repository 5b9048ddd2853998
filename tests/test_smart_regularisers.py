"""Tests for the SMART adversarial smoothness term and the R3F noise term."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from smart import divergence, r3f_loss, smoothness_loss

B, T, H = 3, 4, 8


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


class Recorder:
    """Wraps fn, counting calls and keeping a detached copy of every input it sees."""

    def __init__(self, fn):
        self.fn = fn
        self.inputs: list[torch.Tensor] = []

    def __call__(self, e: torch.Tensor) -> torch.Tensor:
        self.inputs.append(e.detach().clone())
        return self.fn(e)


class PooledHead(nn.Module):
    """A small nonlinear model of embeddings: per-token tanh layer, mean over tokens, linear head."""

    def __init__(self, out: int) -> None:
        super().__init__()
        self.hidden = nn.Linear(H, 16)
        self.head = nn.Linear(16, out)

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.hidden(e).mean(dim=1)))


def _sign_weights() -> torch.Tensor:
    return torch.where(torch.rand(T, H) < 0.5, -1.0, 1.0).double()


def _padding_mask() -> torch.Tensor:
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 3:] = 0
    mask[2, 1:] = 0
    return mask


# --- SMART: the ascent finds the worst case -------------------------------------------------


def test_linear_regression_reaches_analytic_maximum() -> None:
    # For f(e) = Σ w·e the squared error (w·δ)² over ‖δ‖∞ ≤ eps peaks at δ = ±eps·sign(w), with
    # value (eps·‖w‖₁)². One normalised step far longer than eps lands exactly there.
    w = _sign_weights()
    fn = lambda e: (e * w).sum(dim=(1, 2))  # noqa: E731
    emb = torch.randn(B, T, H, dtype=torch.float64)
    eps = 1e-3
    loss = smoothness_loss(fn, emb, fn(emb), "regression", eps=eps, step_size=1.0, steps=1)
    expected = (eps * w.abs().sum().item()) ** 2
    assert loss.item() == pytest.approx(expected, rel=1e-9)
    # Noise alone is far below the maximum, so reaching it is the ascent's doing.
    noise_only = smoothness_loss(fn, emb, fn(emb), "regression", eps=eps, step_size=1.0, steps=0)
    assert noise_only.item() < 1e-3 * expected


def test_linear_regression_maximum_with_padding() -> None:
    w = _sign_weights()
    fn = lambda e: (e * w).sum(dim=(1, 2))  # noqa: E731
    emb = torch.randn(B, T, H, dtype=torch.float64)
    mask = _padding_mask()
    eps = 1e-3
    loss = smoothness_loss(fn, emb, fn(emb), "regression", eps=eps, step_size=1.0, steps=1, mask=mask)
    # Only real tokens move, so each example's maximum is (eps·‖w restricted to its tokens‖₁)².
    per_example = [(eps * (w * mask[b, :, None]).abs().sum().item()) ** 2 for b in range(B)]
    assert loss.item() == pytest.approx(sum(per_example) / B, rel=1e-9)
    unmasked = smoothness_loss(fn, emb, fn(emb), "regression", eps=eps, step_size=1.0, steps=1)
    assert unmasked.item() > 1.5 * loss.item()


def test_delta_stays_in_ball_and_off_padding_each_step() -> None:
    # eps and step_size are powers of two so the bound can be checked exactly in float32, and zero
    # embeddings make every input fn sees equal to δ itself.
    eps, step_size, steps = 2.0**-10, 2.0**-12, 3
    model = PooledHead(out=5)
    emb = torch.zeros(B, T, H)
    mask = _padding_mask()
    rec = Recorder(model)
    smoothness_loss(
        rec, emb, model(emb), "multiclass", eps=eps, sigma=eps, step_size=step_size, steps=steps, mask=mask
    )
    assert len(rec.inputs) == steps + 1
    pad = mask == 0
    for k, delta in enumerate(rec.inputs):
        assert torch.equal(delta[pad], torch.zeros_like(delta[pad])), f"pad moved at call {k}"
    # σ = eps, so the initial noise exceeds the radius somewhere; the paper projects only after steps.
    assert rec.inputs[0].abs().max().item() > eps
    for k, delta in enumerate(rec.inputs[1:], start=1):
        assert delta.abs().max().item() <= eps, f"left the ball after step {k}"
        # Each step really moves δ: by exactly step_size at the largest-gradient entry, unless clamped.
        moved = (delta - rec.inputs[k - 1])[~pad].abs().max().item()
        assert 0.0 < moved <= step_size + eps


def test_padding_gradient_does_not_shrink_the_step() -> None:
    # Weights ten times larger on the last position, which is padding for examples 1 and 2: the
    # ℓ∞ normalisation must use real tokens only, so every example still moves by step_size.
    w = _sign_weights()
    w[3:] *= 10
    fn = lambda e: (e * w).sum(dim=(1, 2))  # noqa: E731
    emb = torch.zeros(B, T, H, dtype=torch.float64)
    mask = _padding_mask()
    rec = Recorder(fn)
    step_size = 1e-3
    smoothness_loss(rec, emb, fn(emb), "regression", eps=1.0, sigma=1e-8, step_size=step_size, mask=mask)
    # The gradient is ∝ w, so after ℓ∞ normalisation over real tokens each entry moves by
    # step_size·|w| / max|w on this example's real tokens|, and the largest move is step_size.
    real = mask[:, :, None].bool()
    scale = torch.where(real, w.abs(), 0.0).amax(dim=(1, 2), keepdim=True)
    expected = torch.where(real, step_size * w.abs() / scale, 0.0)
    moved = (rec.inputs[1] - rec.inputs[0]).abs()
    torch.testing.assert_close(moved, expected, rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(moved.amax(dim=(1, 2)), torch.full((B,), step_size, dtype=torch.float64))


def test_ascent_leaves_parameter_grads_untouched_and_loss_trains_them() -> None:
    model = PooledHead(out=1)
    emb = torch.randn(B, T, H, requires_grad=True)
    clean = model(emb)
    loss = smoothness_loss(model, emb, clean, "binary", eps=1e-2, sigma=1e-3, step_size=1e-2, steps=2)
    assert all(p.grad is None for p in model.parameters())
    assert emb.grad is None
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum().item() > 0, name
    assert emb.grad is not None and emb.grad.abs().sum().item() > 0


def test_gradient_also_flows_through_clean_output() -> None:
    model = PooledHead(out=5)
    emb = torch.randn(B, T, H)
    clean = model(emb)
    loss = smoothness_loss(model, emb, clean, "multiclass", eps=1e-2, sigma=1e-3, step_size=1e-2)
    (g,) = torch.autograd.grad(loss, clean)
    assert g.abs().sum().item() > 0


@pytest.mark.parametrize("steps", [0, 1, 3])
def test_fn_called_steps_plus_one_times(steps: int) -> None:
    model = PooledHead(out=5)
    emb = torch.randn(B, T, H)
    clean = model(emb)
    rec = Recorder(model)
    smoothness_loss(rec, emb, clean, "multiclass", steps=steps)
    assert len(rec.inputs) == steps + 1


def test_zero_steps_is_normal_noise_term() -> None:
    model = PooledHead(out=5)
    emb = torch.randn(B, T, H)
    clean = model(emb)
    torch.manual_seed(7)
    smart_value = smoothness_loss(model, emb, clean, "multiclass", sigma=1e-2, steps=0)
    torch.manual_seed(7)
    r3f_value = r3f_loss(model, emb, clean, "multiclass", eps=1e-2, noise="normal")
    assert smart_value.item() > 0
    assert torch.equal(smart_value, r3f_value)


def test_non_finite_gradient_example_keeps_its_noise() -> None:
    # Example 0's output is finite but its gradient is NaN (the sqrt branch torch.where discards
    # still back-propagates 0/NaN); the others must still take a step, and δ₀ stays finite.
    w = _sign_weights().float()
    shift = torch.tensor([1e9, -1e9, -1e9])

    def fn(e: torch.Tensor) -> torch.Tensor:
        out = (e * w).sum(dim=(1, 2))
        return torch.where(torch.ones(B, dtype=torch.bool), out, torch.sqrt(out - shift))

    emb = torch.zeros(B, T, H)
    rec = Recorder(fn)
    loss = smoothness_loss(rec, emb, fn(emb), "regression", eps=1e-3, sigma=1e-5, step_size=1.0)
    assert torch.isfinite(loss)
    initial, final = rec.inputs
    assert torch.equal(final[0], initial[0])
    torch.testing.assert_close(final[1:].abs(), torch.full_like(final[1:], 1e-3))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"eps": 0.0}, "eps"),
        ({"eps": -1e-5}, "eps"),
        ({"eps": float("nan")}, "eps"),
        ({"sigma": -1.0}, "sigma"),
        ({"step_size": 0.0}, "step_size"),
        ({"steps": -1}, "steps"),
        ({"steps": 1.5}, "steps"),
        ({"kind": "ordinal"}, "multiclass"),
        ({"mask": torch.ones(B, T + 1)}, "mask"),
    ],
)
def test_smoothness_loss_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    model = PooledHead(out=5)
    emb = torch.randn(B, T, H)
    args = {"kind": "multiclass", **kwargs}
    with pytest.raises(ValueError, match=message):
        smoothness_loss(model, emb, model(emb), **args)


def test_embeddings_must_be_three_dimensional() -> None:
    with pytest.raises(ValueError, match=r"\[B, T, H\]"):
        smoothness_loss(lambda e: e, torch.zeros(B, H), torch.zeros(B, H), "regression")


# --- R3F ------------------------------------------------------------------------------------


def _r3f_noise(noise: str, eps: float, mask: torch.Tensor | None = None, shape=(8, 64, 64)) -> torch.Tensor:
    emb = torch.zeros(shape)
    rec = Recorder(lambda e: e.sum(dim=(1, 2)))
    r3f_loss(rec, emb, rec.fn(emb), "regression", eps=eps, noise=noise, mask=mask)
    assert len(rec.inputs) == 1
    return rec.inputs[0]


def test_r3f_uniform_noise_fills_the_interval() -> None:
    eps = 0.5
    delta = _r3f_noise("uniform", eps)
    assert delta.min().item() >= -eps and delta.max().item() <= eps
    assert delta.max().item() > 0.99 * eps and delta.min().item() < -0.99 * eps
    assert delta.std().item() == pytest.approx(eps / 3**0.5, rel=0.02)


def test_r3f_normal_noise_has_std_eps() -> None:
    eps = 1e-5
    delta = _r3f_noise("normal", eps)
    assert delta.std().item() == pytest.approx(eps, rel=0.02)
    assert abs(delta.mean().item()) < 4 * eps / delta.numel() ** 0.5


@pytest.mark.parametrize("noise", ["normal", "uniform"])
def test_r3f_noise_is_zero_on_padding(noise: str) -> None:
    mask = torch.ones(4, 6)
    mask[0, 2:] = 0
    mask[3, 5:] = 0
    delta = _r3f_noise(noise, 0.1, mask=mask, shape=(4, 6, 5))
    pad = mask == 0
    assert torch.equal(delta[pad], torch.zeros_like(delta[pad]))
    assert (delta[~pad] != 0).all()


def test_r3f_value_is_divergence_at_the_noisy_input() -> None:
    model = PooledHead(out=5)
    emb = torch.randn(B, T, H)
    clean = model(emb)
    rec = Recorder(model)
    loss = r3f_loss(rec, emb, clean, "multiclass", eps=1e-2, noise="uniform")
    (seen,) = rec.inputs
    assert loss.item() > 0
    assert torch.equal(loss, divergence("multiclass", model(seen), clean))
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_r3f_rejects_bad_arguments() -> None:
    emb = torch.zeros(B, T, H)
    fn = lambda e: e.sum(dim=(1, 2))  # noqa: E731
    with pytest.raises(ValueError, match="noise"):
        r3f_loss(fn, emb, fn(emb), "regression", noise="laplace")
    with pytest.raises(ValueError, match="eps"):
        r3f_loss(fn, emb, fn(emb), "regression", eps=0.0)
