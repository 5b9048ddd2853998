"""Data-parallel training under torchrun: process group, per-rank batch shards, DDP step, gathered dev scores."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from minbert import CheckpointError
from minbert.plumbing.machine import pick_device, to_device
from minbert.weights import save_tensors
from multitask.batching import EncodedTask, restore_order, sorted_batches
from multitask.evaluate import batch_outputs
from multitask.model import MultitaskBert
from multitask.resume import RunState
from multitask.train import Trainer
from smart import WeightAverage

T = TypeVar("T")

# Test hook: when set to a directory, every rank writes its final student and teacher tensors
# there as rank<R>.safetensors, so a test can compare the processes' states (see dump_final_state).
DUMP_ENV = "MINBERT_DUMP_FINAL_STATE"


class DistributedError(RuntimeError):
    """The torchrun environment or the batch settings do not fit a distributed run."""


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in a torchrun job; the defaults are a plain single-process run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ) -> "DistEnv":
        """Read RANK, WORLD_SIZE and LOCAL_RANK as torchrun sets them; absent means one process."""
        if "WORLD_SIZE" not in environ:
            return cls()
        values = {}
        for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
            try:
                values[name] = int(environ.get(name, "0"))
            except ValueError:
                raise DistributedError(f"environment variable {name}={environ[name]!r} is not an integer; "
                                       "start the job with torchrun, which sets it") from None
        env = cls(values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"])
        if env.world_size < 1 or not 0 <= env.rank < env.world_size or env.local_rank < 0:
            raise DistributedError(f"RANK={env.rank}, WORLD_SIZE={env.world_size}, LOCAL_RANK={env.local_rank} "
                                   "do not describe a process of a job; start it with torchrun")
        return env

    def barrier(self) -> None:
        """Wait until every process gets here (no-op in one process), e.g. after rank 0 saved a file."""
        if self.is_distributed:
            dist.barrier()

    def share_from_main(self, value: T) -> T:
        """Rank 0's `value` on every rank (a picklable object; in one process, the value itself)."""
        if not self.is_distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value: T) -> list[T]:
        """Every rank's `value`, in rank order, on every rank."""
        if not self.is_distributed:
            return [value]
        values: list = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values


def start(device: str = "auto", use_gpu: bool = False) -> tuple[DistEnv, torch.device]:
    """This process's place in the job and its device; joins the process group under torchrun.

    NCCL for CUDA, one GPU per process (cuda:LOCAL_RANK); gloo on the CPU. In one process
    nothing is initialised and the device is chosen as without torchrun.
    """
    env = DistEnv.from_environ()
    chosen = pick_device(device, use_gpu)
    if not env.is_distributed:
        return env, chosen
    if chosen.type == "cuda":
        count = torch.cuda.device_count()
        if env.local_rank >= count:
            raise DistributedError(f"LOCAL_RANK {env.local_rank} but this node has {count} CUDA device(s); "
                                   f"use torchrun --nproc_per_node {count} or fewer")
        chosen = torch.device("cuda", env.local_rank)
        # Set before the process group exists: NCCL and the object collectives use the current device.
        torch.cuda.set_device(chosen)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if chosen.type == "cuda" else "gloo")
    if (dist.get_rank(), dist.get_world_size()) != (env.rank, env.world_size):
        raise DistributedError(f"process group has rank {dist.get_rank()} of {dist.get_world_size()}, "
                               f"the environment says {env.rank} of {env.world_size}")
    return env, chosen


def stop() -> None:
    """Leave the process group if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def global_batch_size(batch_size: int, global_size: int | None, world_size: int) -> int:
    """Examples per step over all processes: --global_batch_size, or --batch_size per process."""
    if global_size is None:
        return batch_size * world_size
    if global_size < 1 or global_size % world_size:
        raise DistributedError(f"--global_batch_size {global_size} does not split evenly over {world_size} "
                               f"processes; use a positive multiple of {world_size}")
    return global_size


def shard(indices: list[T], rank: int, world_size: int) -> tuple[list[T], float]:
    """This rank's share of a global batch (or of its per-example flags), and the weight that makes
    DDP's average the batch mean.

    Every loss term is a mean over the examples a rank sees, and DDP averages the ranks'
    gradients. With shards of sizes n_r out of N, scaling rank r's terms by n_r·W/N makes that
    average Σ n_r·mean_r / N, the mean over the whole batch, also when the last batch of a pass
    does not split evenly. Equal shards give a weight of exactly 1.0.

    Strided, not contiguous: a bucketed batch is sorted by length, so contiguous shards would
    give one rank all the long sequences and make the others wait for it every step. A rank
    whose share is empty (a batch smaller than the world) still has to run the step, since
    every rank must join DDP's gradient reduction: it takes one example with weight 0.
    """
    local = list(indices[rank::world_size])
    weight = len(local) * world_size / len(indices)
    return (local or list(indices[:1])), weight


def rank_seed(seed: int, rank: int, *more: int) -> int:
    """A torch seed per rank, so dropout masks and SMART noise are not copies across processes."""
    return int(np.random.SeedSequence([seed, rank, *more]).generate_state(1)[0])


def reseed_ranks_after_resume(env: DistEnv, seed: int, updates: int) -> None:
    """Give each rank its own torch stream again after a resume restored rank 0's saved RNG state.

    Only rank 0's generator states are saved, so a resumed multi-process run continues correctly
    (same data order, weights, optimiser and teacher) but with fresh dropout and SMART noise
    streams; it is exact only in one process, where nothing is reseeded.
    """
    if env.is_distributed:
        torch.manual_seed(rank_seed(seed, env.rank, updates))


def load_agreed_state(env: DistEnv, run_state: RunState) -> dict | None:
    """`run_state.load()` on every rank, refused on all of them unless all ranks see the same state.

    Each process reads `<out_dir>/resume` from its own disk. On machines that do not share a
    filesystem, rank 0 would resume while the others start fresh (or from an older copy), and
    the ranks would silently train different models or hang in a collective. So the ranks
    compare what they see (save, update, content digest) and all stop with the same one line
    if they differ. In one process this is `run_state.load()`.
    """
    if not env.is_distributed:
        return run_state.load()
    try:
        saved = run_state.load()
        view = run_state.identity(saved)
    except CheckpointError as err:
        # Raised only after every rank has reported, or the others would wait in the gather forever.
        saved, view = None, f"error: {err}"
    views = env.gather(view)
    if len(set(views)) == 1:
        if view.startswith("error: "):
            raise CheckpointError(view.removeprefix("error: "))
        return saved
    seen = "; ".join(f"rank {rank}: {seen}" for rank, seen in enumerate(views))
    raise DistributedError(f"--resume: the processes see different resume states ({seen}); every process must "
                           f"resume the same one: put --out_dir on a filesystem all machines share, or copy rank 0's "
                           f"{run_state.directory} to every machine (or drop --resume to start over)")


@torch.no_grad()
def gathered_predictions(model: MultitaskBert, dataset: EncodedTask, batch_size: int, device: torch.device,
                         env: DistEnv, precision: str = "fp32") -> torch.Tensor:
    """`evaluate.predict` with the evaluation batches dealt out over the ranks; all ranks get all predictions.

    The batches are those one process would form, so each example's output is computed on the
    same padded batch and the gathered predictions equal a single-process run's exactly.
    """
    batches = sorted_batches(dataset.lengths(), batch_size)
    mine = batch_outputs(model, dataset, batches[env.rank::env.world_size], device, precision)
    parts: list = [None] * env.world_size
    dist.all_gather_object(parts, mine)
    outputs = [tensor for part_outputs, _ in parts for tensor in part_outputs]
    order = [tensor for _, part_order in parts for tensor in part_order]
    return dataset.task.predictions(restore_order(torch.cat(order), torch.cat(outputs)))


class ParallelTrainer(Trainer):
    """The Trainer with each global batch split over the processes of a torchrun job (DDP).

    All ranks follow the same seeded epoch plan, so they agree on every step's task and global
    batch; each trains on its shard, DDP averages the gradients, and every rank applies the
    same update, so parameters (and the SMART teacher, moved from them) stay identical.
    """

    def __init__(self, *args, env: DistEnv, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.env = env
        self.is_main = env.is_main
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        # find_unused_parameters: a step uses one task's head (and, with mean pooling, never the
        # pooler); without it DDP would wait forever for their gradients. Parameters no rank used
        # keep grad None rather than getting zeros, so AdamW skips them exactly as in one
        # process — a zero gradient would still apply weight decay and momentum to them.
        # Wrapping construction broadcasts rank 0's parameters to all ranks.
        self.loss_terms = DistributedDataParallel(self.loss_terms, device_ids=device_ids,
                                                  find_unused_parameters=True)
        if self.average is not None:
            # The average was copied from the student before that broadcast; start it from rank 0 too.
            with torch.no_grad():
                for tensor in self.average.model.state_dict().values():
                    dist.broadcast(tensor, src=0)
        torch.manual_seed(rank_seed(self.settings.seed, env.rank))

    def run_step(self, task: str, indices: list[int],
                 swapped: list[bool]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        local, weight = shard(indices, self.env.rank, self.env.world_size)
        local_swapped, _ = shard(swapped, self.env.rank, self.env.world_size)
        dataset = self.train_sets[task]
        terms = self.step_terms(dataset.task, to_device(dataset.batch(local, local_swapped), self.device))
        if weight != 1.0:
            terms = {name: value * weight for name, value in terms.items()}
        # Σ_r weight_r·term_r / W is the term over the whole global batch; every rank gets the same
        # values, so all of them log the same losses and skip the same non-finite steps.
        reported = torch.stack([value.detach().float() for value in terms.values()]) / self.env.world_size
        dist.all_reduce(reported)
        return terms, dict(zip(terms, reported.unbind()))

    def dev_predictions(self) -> dict[str, torch.Tensor]:
        return {name: gathered_predictions(self.eval_model, ds, self.settings.eval_batch_size, self.device, self.env,
                                           self.settings.precision)
                for name, ds in self.dev_sets.items()}


def make_trainer(env: DistEnv, *args, **kwargs) -> Trainer:
    """A ParallelTrainer under torchrun with more than one process, else the plain Trainer."""
    return ParallelTrainer(*args, env=env, **kwargs) if env.is_distributed else Trainer(*args, **kwargs)


def dump_final_state(model: MultitaskBert, teacher: WeightAverage | None, env: DistEnv) -> Path | None:
    """Test hook: with $MINBERT_DUMP_FINAL_STATE set, write this rank's final student (and teacher).

    Every rank writes its own file — the one exception to "only rank 0 writes" — because the
    point is to check that the processes ended with identical states.
    """
    directory = os.environ.get(DUMP_ENV)
    if not directory:
        return None
    tensors = {f"student.{k}": v for k, v in model.state_dict().items()}
    if teacher is not None:
        tensors.update({f"teacher.{k}": v for k, v in teacher.state_dict().items()})
    path = Path(directory) / f"rank{env.rank}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_tensors(tensors, path)
    return path
