"""Start-up check that the training device replays dropout masks bit for bit, as shared-mask terms assume."""

from __future__ import annotations

import torch

from minbert.dropout import DropoutReplay
from minbert.plumbing.machine import DeviceError, autocast
from multitask.model import MultitaskBert
from multitask.regularizers import TERMS, RegularizerSettings
from multitask.tasks import TASKS

# A small batch: the check costs a few forward passes, and the masks it compares are drawn per element.
CHECK_BATCH, CHECK_LENGTH = 4, 16


def shares_dropout_masks(settings: RegularizerSettings) -> bool:
    """Whether a switched-on term replays the clean pass's dropout masks (minbert/dropout.py DropoutReplay).

    SMART's adversarial term and R3F do with `--smart_dropout shared`; the Bregman term's teacher
    replays the student's masks whatever that flag says, and is counted under it. With
    `--smart_dropout independent` the check is skipped, so its advice always gets a run going.
    """
    if settings.smart_dropout != "shared":
        return False
    return any(settings.on(term.name) for term in TERMS if term.replays_masks) or settings.needs_average


def check_dropout_replay(model: MultitaskBert, device: torch.device, precision: str) -> None:
    """Refuse, in one line, a device on which a pass replayed with DropoutReplay differs from its clean pass.

    On the CPU a replayed pass takes back the masks the clean pass recorded; elsewhere (torch's
    CUDA dropout) it restores the generator state the clean pass drew them from, and a device,
    kernel or library that draws dropout from elsewhere would silently turn the shared-mask terms
    into R-Drop's. The check runs the way a training step does (train mode, autograd on, the run's
    autocast) on a random batch, and leaves the model's mode and every random generator as it
    found them, so the run that follows draws exactly what it would have drawn without it.
    """
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(model.encoder.config.vocab_size, (CHECK_BATCH, CHECK_LENGTH), generator=generator)
    mask = torch.ones_like(ids)
    mask[: CHECK_BATCH // 2, CHECK_LENGTH // 2:] = 0  # padded rows too, as in a real batch
    ids, mask, types = ids.to(device), mask.to(device), torch.zeros_like(ids, device=device)
    # A pair task with `bi` encoding reads the batch as stacked pairs, which an even batch is.
    task = TASKS[model.tasks[0]]
    was_training = model.training
    cpu_state = torch.get_rng_state()
    cuda_state = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    try:
        model.train()
        with torch.enable_grad(), autocast(device, precision):
            embeddings = model.encoder.embed(ids, types)
            masks = DropoutReplay(device)
            clean = model.predict_from_embeddings(task, embeddings, mask)
            with masks.replaying():
                replayed = model.predict_from_embeddings(task, embeddings, mask)
        same = torch.equal(clean, replayed)
    finally:
        model.train(was_training)
        torch.set_rng_state(cpu_state)
        if cuda_state is not None:
            torch.cuda.set_rng_state(cuda_state, device)
    if not same:
        raise DeviceError(f"shared dropout masks do not replay on {device} ({precision}): a pass replaying the "
                          "clean pass's generator state drew other masks, so the shared-mask terms would not "
                          "compare one function; run with --smart_dropout independent (and --no_bregman)")
