"""Resuming on another machine's GPUs: each saved CUDA generator state goes to the device of its index, if present."""

from __future__ import annotations

import logging

import pytest
import torch

from multitask.resume import capture_rng, restore_cuda_rng, restore_rng


def fake_gpu_states(count: int) -> list[torch.Tensor]:
    return [torch.full((8,), index, dtype=torch.uint8) for index in range(count)]


@pytest.mark.parametrize("saved,visible", [(2, 1), (1, 2), (0, 2), (2, 0), (1, 1)])
def test_gpu_generator_states_are_restored_for_the_devices_present(caplog, saved, visible):
    calls = []
    with caplog.at_level(logging.INFO, logger="multitask.resume"):
        restored = restore_cuda_rng(fake_gpu_states(saved), visible, lambda state, index: calls.append((index, state)))
    assert restored == min(saved, visible)
    # Device i gets saved state i.
    assert [(index, int(state[0])) for index, state in calls] == [(i, i) for i in range(min(saved, visible))]
    lines = [r.getMessage() for r in caplog.records if "CUDA RNG" in r.getMessage()]
    assert len(lines) == (saved != visible)
    if lines:
        assert f"the CUDA RNG states of {saved} device(s), {visible} visible here: restored {min(saved, visible)}" \
            in lines[0]


def test_a_state_saved_with_two_gpus_resumes_with_one(monkeypatch):
    # What a machine with one GPU does when asked for a second: set_rng_state on a device that is not there fails.
    calls = []

    def one_gpu(state: torch.Tensor, device: int = 0) -> None:
        if device >= 1:
            raise IndexError(f"no CUDA device {device}")
        calls.append(device)

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", one_gpu)
    monkeypatch.setattr(torch.cuda.random, "set_rng_state", one_gpu)
    state = {**capture_rng(), "cuda": fake_gpu_states(2)}
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    state["torch"] = torch.get_rng_state()
    torch.rand(10)
    restore_rng(state)
    assert calls == [0]
    assert torch.equal(torch.rand(3), expected)  # the rest of the state is restored as before
