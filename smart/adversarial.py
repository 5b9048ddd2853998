"""SMART's adversarial smoothness regulariser R_s (Jiang et al., ACL 2020, Algorithm 1)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext

import torch

from smart.divergences import check_kind, divergence
from smart.noise import apply_mask, check_positive, keep_mask, masked_noise

OutputFn = Callable[[torch.Tensor], torch.Tensor]


def _check_steps(steps: int) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an int ≥ 0 (number of ascent steps), got {steps!r}")


def _ascent_direction(grad: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """g / ‖g‖∞ per example, over all of its (T, H) entries."""
    # Pads cannot move, so their gradient must not set the scale of the step for real tokens.
    grad = apply_mask(grad, keep)
    # An example whose gradient is not finite (FreeLB reports NaNs early in training) keeps its
    # current δ instead of poisoning it; the other examples still take their step.
    finite = torch.isfinite(grad).flatten(1).all(dim=1).view(-1, 1, 1)
    grad = torch.where(finite, grad, torch.zeros((), dtype=grad.dtype, device=grad.device))
    norm = grad.abs().amax(dim=(1, 2), keepdim=True)
    # Flooring the norm (rather than adding a constant) keeps the normalisation exact whenever the
    # gradient is non-zero, however small — near δ = 0 it is tiny, since ℓ_s has its minimum
    # there — while an all-zero gradient still gives 0 / tiny = 0, a zero step, not NaN.
    return grad / norm.clamp_min(torch.finfo(grad.dtype).tiny)


def adversarial_perturbation(
    fn: OutputFn,
    embeddings: torch.Tensor,
    clean_output: torch.Tensor,
    kind: str,
    eps: float,
    sigma: float,
    step_size: float,
    steps: int,
    keep: torch.Tensor | None,
    ascent_in_fp32: bool = False,
    target_fn: OutputFn | None = None,
) -> torch.Tensor:
    """The δ of Algorithm 1 after `steps` projected ascent steps, detached (arguments already checked).

    With `ascent_in_fp32`, the ascent's passes run with autocast off. Its first gradient is taken
    at δ₀ ~ N(0, σ²), whose effect on each layer's input sits at bf16's rounding of the whole
    input: under bf16 that gradient is largely the forward pass's rounding, the ℓ∞ step follows
    its signs, and the δ found is a weaker attack than fp32's at the same radius. ℓ_s is then taken
    against the clean output of that same fp32 function (one extra forward without a graph), so
    that at δ = 0 the ascent's objective is exactly 0, not the bf16 rounding gap. That pass runs
    `target_fn` when given (else fn), and `clean_output` may then be None: a caller can find δ
    before its clean pass, with target_fn drawing the dropout masks that fn and the clean pass replay.
    """
    base = embeddings.detach()
    precise = ascent_in_fp32 and torch.is_autocast_enabled(base.device.type)
    # The caller may sit under no_grad (e.g. an evaluation probe); the ascent needs a graph anyway.
    autocast_off = torch.autocast(base.device.type, enabled=False) if precise else nullcontext()
    with torch.enable_grad(), autocast_off:
        if precise and steps > 0:
            with torch.no_grad():
                target = (fn if target_fn is None else target_fn)(base).detach()
        elif clean_output is None:
            raise ValueError("clean_output is needed unless the ascent runs in fp32 under autocast")
        else:
            target = clean_output.detach()
        # Drawn after the target pass: when that pass draws the step's dropout masks (target_fn),
        # they come off the generator first, as they would in a clean pass run before the ascent.
        delta = masked_noise(embeddings, "normal", sigma, keep)
        for _ in range(steps):
            delta.requires_grad_(True)
            loss = divergence(kind, fn(base + delta), target)
            # autograd.grad with δ as the only input: the model's parameters share this graph but
            # their .grad fields are never written, so the ascent cannot leak into the update.
            (grad,) = torch.autograd.grad(loss, delta)
            with torch.no_grad():
                step = step_size * _ascent_direction(grad, keep)
                # Projection onto the ℓ∞ ball: eps is the radius, as in the paper, not a guard
                # against division by zero.
                delta = apply_mask((delta + step).clamp(-eps, eps), keep)
    return delta.detach()


def smoothness_loss(
    fn: OutputFn,
    embeddings: torch.Tensor,
    clean_output: torch.Tensor,
    kind: str,
    eps: float = 1e-5,
    sigma: float = 1e-5,
    step_size: float = 1e-3,
    steps: int = 1,
    mask: torch.Tensor | None = None,
    ascent_in_fp32: bool = False,
    delta: torch.Tensor | None = None,
) -> torch.Tensor:
    """R_s = ℓ_s(f(x + δ), f(x)), δ found by projected ℓ∞ gradient ascent; a scalar to weight by λ_s.

    fn maps embeddings [B, T, H] to outputs; clean_output is fn(embeddings), already computed for
    the task loss and reused here (fn is called exactly steps + 1 times). mask [B, T] marks real
    tokens (non-zero) and padding (0); padding is never perturbed.

    δ₀ ~ N(0, σ²I); each step ascends ℓ_s by step_size along the ℓ∞-normalised gradient with respect
    to δ alone and projects onto ‖δ‖∞ ≤ eps. With steps = 0 only the noise remains (and δ₀ is not
    projected, as in the paper). The returned loss carries gradients into the parameters through
    both the perturbed forward and clean_output; δ itself is a constant. `ascent_in_fp32`: see
    `adversarial_perturbation`; the final perturbed pass always runs in the caller's precision, the
    one f(x) was computed in.

    `delta`: δ already found by `adversarial_perturbation` with these settings (a caller that runs the
    ascent before its clean pass, so the two passes' activations are never held at once); the
    ascent is then not run again.

    With a deterministic fn (shared dropout masks) and sigma = 0 the ascent starts at the exact
    minimum of ℓ_s, where the gradient is 0, so δ stays 0: the caller should refuse that setting.
    """
    check_kind(kind)
    check_positive("eps", eps)
    check_positive("sigma", sigma, allow_zero=True)
    check_positive("step_size", step_size)
    _check_steps(steps)
    if delta is None:
        delta = adversarial_perturbation(
            fn, embeddings, clean_output, kind, eps, sigma, step_size, steps, keep_mask(embeddings, mask),
            ascent_in_fp32
        )
    return divergence(kind, fn(embeddings + delta), clean_output)
