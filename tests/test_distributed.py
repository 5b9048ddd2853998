"""Data-parallel training: two gloo processes under torchrun match one process with the same global batch."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing
from safetensors.torch import load_file

from minbert import BertModel, CheckpointError
from minbert.hub import default_checkpoint_dir
from multitask_classifier import main, open_run_state
from multitask.distributed import DUMP_ENV, DistEnv, DistributedError, global_batch_size, shard
from multitask.resume import FORMAT
from multitask.run_lock import OUT_DIR_LOCK, LockSpec, RunLockError, hold_output_locks, holding
from multitask.settings import parse
from tests.test_pipeline import SEED, check_predictions, data_args, output_args, write_tiny_course_files

REPO = Path(__file__).resolve().parent.parent
ROWS = {"train": 8, "dev": 8, "test": 4}
PER_RANK_BATCH = 2
RANKS = 2


# ------------------------------------------------------------------------------------------- pure helpers

def test_shards_are_strided_and_weighted_to_the_global_mean():
    assert shard([10, 11, 12, 13], 0, 2) == ([10, 12], 1.0)
    assert shard([10, 11, 12, 13], 1, 2) == ([11, 13], 1.0)
    # An uneven last batch: weights n_r·W/N make the ranks' average the mean over all N examples.
    assert shard([10, 11, 12], 0, 2) == ([10, 12], 4 / 3)
    assert shard([10, 11, 12], 1, 2) == ([11], 2 / 3)
    # A rank with nothing to do still runs the step (DDP needs every rank) on one example, weight 0.
    assert shard([10], 1, 2) == ([10], 0.0)


def test_global_batch_defaults_to_per_process_batch_times_world_and_must_split_evenly():
    assert global_batch_size(8, None, 1) == 8
    assert global_batch_size(8, None, 4) == 32
    assert global_batch_size(8, 12, 4) == 12
    with pytest.raises(DistributedError, match="multiple of 4"):
        global_batch_size(8, 10, 4)


def test_environment_without_torchrun_is_one_process_and_bad_values_are_named():
    assert DistEnv.from_environ({}) == DistEnv(0, 1, 0)
    assert DistEnv.from_environ({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == DistEnv(3, 4, 1)
    with pytest.raises(DistributedError, match="RANK"):
        DistEnv.from_environ({"RANK": "x", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})
    with pytest.raises(DistributedError, match="torchrun"):
        DistEnv.from_environ({"RANK": "2", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})


# ------------------------------------------------------------------------------------------------ runs

@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    """Tiny course files, and a copy of the packaged model with every dropout off.

    `--hidden_dropout_prob 0` leaves attention dropout at the checkpoint's 0.1, and dropout masks
    differ between one process and two, so the comparison needs it off in config.json too.
    """
    data = write_tiny_course_files(tmp_path_factory.mktemp("data"), ROWS)
    model = tmp_path_factory.mktemp("no_dropout_model")
    source = default_checkpoint_dir()
    for item in source.iterdir():
        if item.is_file() and item.name != "config.json":
            (model / item.name).symlink_to(item)
    config = json.loads((source / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (model / "config.json").write_text(json.dumps(config))
    return {**data, "model": model}


def run_args(tiny: dict, out_dir: Path, *extra: str) -> tuple[list[str], dict]:
    out_args, outputs = output_args(out_dir / "predictions")
    # Small eval batches, so dev evaluation is really dealt out over both ranks (8 rows → 2 per task).
    # fp32: one process and two sum a batch's gradients in different orders, and bf16 rounding
    # would turn that into differences above the 1e-5 the comparison allows.
    return ["--option", "finetune", "--epochs", "1", "--seed", SEED, "--device", "cpu", "--precision", "fp32",
            "--eval_batch_size", "4",
            *data_args(tiny), *out_args, "--out_dir", str(out_dir), *extra], outputs


def torchrun(args: list[str], dump: Path) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node 2 multitask_classifier.py ARGS` (python -m keeps it on this venv)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CI": "1", DUMP_ENV: str(dump)}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                             "--nproc_per_node", str(RANKS), "multitask_classifier.py", *args],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def load_dump(path: Path, prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in load_file(str(path)).items() if k.startswith(prefix)}


def metrics(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


# Every shard must hold the same number of examples for the single-process comparison: each
# rank's loss is a mean over its own shard and DDP averages the ranks' gradients, which is the
# mean over the global batch only when the shards are equal. Uneven shards are re-weighted by
# n_r·W/N (multitask.distributed.shard), exact in arithmetic but a different float computation;
# 8 training rows in global batches of 2 × 2 keep every weight exactly 1, so the comparison
# checks DDP's gradient averaging itself. (The SMART run below takes the uneven path.)
PLAIN = ("--train_limit", "8", "--pretrained")


def train_in_process(args: list[str], dump: Path) -> dict[str, torch.Tensor]:
    """One process, one thread (as each torchrun process has): the final student weights."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv(DUMP_ENV, str(dump))
            patch.setenv("CI", "1")
            main(args)
    finally:
        torch.set_num_threads(threads)
    return load_dump(dump / "rank0.safetensors", "student.")


def worst_difference(state: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> float:
    assert state.keys() == reference.keys()
    return max((state[k] - reference[k]).abs().max().item() for k in reference)


@pytest.fixture(scope="module")
def single_run(tiny, tmp_path_factory) -> dict:
    out_dir = tmp_path_factory.mktemp("single")
    args, _ = run_args(tiny, out_dir, *PLAIN, str(tiny["model"]), "--hidden_dropout_prob", "0",
                       "--batch_size", str(PER_RANK_BATCH * RANKS))
    return {"out_dir": out_dir, "state": train_in_process(args, out_dir / "dump")}


@pytest.fixture(scope="module")
def ddp_run(tiny, tmp_path_factory) -> dict:
    out_dir = tmp_path_factory.mktemp("ddp")
    args, outputs = run_args(tiny, out_dir, *PLAIN, str(tiny["model"]), "--hidden_dropout_prob", "0",
                             "--batch_size", str(PER_RANK_BATCH))
    result = torchrun(args, out_dir / "dump")
    return {"out_dir": out_dir, "outputs": outputs, "log": result.stdout + result.stderr,
            "states": [load_dump(out_dir / "dump" / f"rank{r}.safetensors", "student.") for r in range(RANKS)]}


def test_two_processes_end_with_the_weights_of_one_process_with_the_same_global_batch(single_run, ddp_run):
    reference = single_run["state"]
    for rank, state in enumerate(ddp_run["states"]):
        worst = worst_difference(state, reference)
        assert worst <= 1e-5, f"rank {rank}: max abs weight difference {worst:.2e}"
    # Both ranks applied the same averaged update to the same weights: identical, not just close.
    assert all(torch.equal(ddp_run["states"][0][k], ddp_run["states"][1][k]) for k in reference)
    # Training moved the encoder, which is what makes the comparison mean something.
    initial = BertModel.from_pretrained().state_dict()
    assert any(not torch.equal(reference[f"encoder.{k}"], v) for k, v in initial.items())


def test_two_processes_log_global_batch_losses_and_single_process_dev_scores(single_run, ddp_run):
    (single,), (ddp,) = metrics(single_run["out_dir"]), metrics(ddp_run["out_dir"])  # one line each: rank 0 only
    assert ddp["train_examples"] == single["train_examples"] == 3 * 8
    for key in ("loss_sst", "loss_para", "loss_sts"):
        assert ddp[key] == pytest.approx(single[key], rel=1e-4), key
    for key in ("dev_sst", "dev_para", "dev_sts"):
        assert ddp[key] == pytest.approx(single[key], abs=1e-4), key
    run = json.loads((ddp_run["out_dir"] / "best" / "run.json").read_text())
    assert run["settings"]["world_size"] == RANKS and run["settings"]["batch_size"] == PER_RANK_BATCH * RANKS


def test_only_rank_0_writes_the_six_prediction_files(ddp_run, tiny):
    check_predictions(ddp_run, tiny)
    assert ddp_run["log"].count("INFO multitask.submission: wrote ") == 6, ddp_run["log"][-3000:]


def test_an_uneven_last_batch_still_gives_the_weights_of_one_process(tiny, tmp_path):
    # 7 rows per task in global batches of 4: each task's last batch has 3 examples, dealt 2 + 1, so
    # the ranks' mean losses are weighted 4/3 and 2/3 (multitask.distributed.shard). (With 5 rows
    # the last batch would be 1 example and rank 1's stand-in a copy of it: equal gradients on both
    # ranks, where dropping the weights changes nothing and so proves nothing.)
    flags = ("--train_limit", "7", "--pretrained", str(tiny["model"]), "--hidden_dropout_prob", "0")
    single_args, _ = run_args(tiny, tmp_path / "single", *flags, "--batch_size", str(PER_RANK_BATCH * RANKS))
    reference = train_in_process(single_args, tmp_path / "single" / "dump")
    ddp_args, _ = run_args(tiny, tmp_path / "ddp", *flags, "--batch_size", str(PER_RANK_BATCH))
    torchrun(ddp_args, tmp_path / "ddp" / "dump")
    for rank in range(RANKS):
        state = load_dump(tmp_path / "ddp" / "dump" / f"rank{rank}.safetensors", "student.")
        worst = worst_difference(state, reference)
        assert worst <= 1e-5, f"rank {rank}: max abs weight difference {worst:.2e}"


def test_smart_teacher_stays_identical_on_both_ranks(tiny, tmp_path):
    # 5 rows in global batches of 4: the second batch has one example, so rank 1 runs that step
    # on a weight-0 stand-in. Dropout stays on, and each rank draws its own masks and SMART noise.
    args, _ = run_args(tiny, tmp_path, "--smart", "--train_limit", "5", "--batch_size", str(PER_RANK_BATCH))
    torchrun(args, tmp_path / "dump")
    dumps = [load_file(str(tmp_path / "dump" / f"rank{r}.safetensors")) for r in range(RANKS)]
    teacher_keys = [k for k in dumps[0] if k.startswith("teacher.")]
    assert teacher_keys and dumps[0].keys() == dumps[1].keys()
    assert all(torch.equal(dumps[0][k], dumps[1][k]) for k in dumps[0])
    # The teacher trails the student (an EMA), so the dump holds two different models.
    assert any(not torch.equal(dumps[0][k], dumps[0]["student." + k[len("teacher."):]]) for k in teacher_keys)


# ------------------------------------------------------------------------ every rank resumes from one state

def opened_state(argv: list[str], env: DistEnv) -> str:
    """What the CLI does with `argv`'s --resume state on this rank: resume it, start fresh, or refuse."""
    settings = parse(argv)
    # The lr and precision the CLI resolves before it opens the state (they are fingerprinted).
    train = dataclasses.replace(settings.train, lr=5e-5, precision="fp32")
    _, saved = open_run_state(settings, train, torch.device("cpu"), env)
    return "fresh" if saved is None else f"resumes save {saved['serial']}"


def held_outputs(argv: list[str], env: DistEnv) -> str:
    with hold_output_locks(parse(argv), env):
        return "holds its outputs"


def agreement_worker(rank: int, store: str, cases: dict[str, tuple[str, list[list[str]]]], results: str) -> None:
    """One rank of a two-process gloo group: each case's outcome on this rank, written to rank<R>.json.

    A case gives each rank its own command line, as if each machine saw its own --out_dir.
    """
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=RANKS)
    env = DistEnv(rank, RANKS, rank)
    outcomes = {}
    try:
        for name, (action, argvs) in cases.items():
            try:
                outcomes[name] = {"open": opened_state, "lock": held_outputs}[action](argvs[rank], env)
            except (DistributedError, CheckpointError, RunLockError) as err:
                outcomes[name] = f"{type(err).__name__}: {err}"
    finally:
        dist.destroy_process_group()
    Path(results, f"rank{rank}.json").write_text(json.dumps(outcomes))


def spawn_two_ranks(cases: dict, directory: Path) -> list[dict[str, str]]:
    """Run agreement_worker on two ranks; each rank's outcomes. A hang (a rank left waiting) fails the test."""
    context = torch.multiprocessing.spawn(agreement_worker, args=(str(directory / "store"), cases, str(directory)),
                                          nprocs=RANKS, join=False)
    deadline = time.monotonic() + 300
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the ranks did not finish: one is waiting for the other")
    return [json.loads((directory / f"rank{rank}.json").read_text()) for rank in range(RANKS)]


def test_every_rank_resumes_the_same_state_or_all_refuse_in_one_line(tiny, tmp_path):
    def argv(out_dir: Path) -> list[str]:
        return ["--option", "finetune", "--epochs", "1", "--seed", SEED, "--device", "cpu", "--precision", "fp32",
                *data_args(tiny), "--skip_predictions", "--resume", "--out_dir", str(out_dir)]

    # A stand-in state: load() checks its format and fingerprint (the CLI's own), the agreement its files.
    shared = tmp_path / "shared"
    settings = parse(argv(shared))
    run_state, _ = open_run_state(settings, dataclasses.replace(settings.train, lr=5e-5, precision="fp32"),
                                  torch.device("cpu"))
    run_state.directory.mkdir(parents=True)
    torch.save({"format": FORMAT, "serial": 1, "weights": "weights-000001.safetensors",
                "fingerprint": json.dumps(run_state.fingerprint, sort_keys=True), "has_teacher": True,
                "trainer": {"updates": 2}, "rng": {}}, run_state.state_file)
    (run_state.directory / "weights-000001.safetensors").write_bytes(b"the weights of save 1")
    shutil.copytree(shared, tmp_path / "copy")
    # A copy with the same save number and other weights: another run's, or one that a later save overwrote.
    shutil.copytree(shared, tmp_path / "other")
    (tmp_path / "other" / "resume" / "weights-000001.safetensors").write_bytes(b"the weights of another run")
    shutil.copytree(shared, tmp_path / "truncated")
    (tmp_path / "truncated" / "resume" / "state.pt").write_bytes(run_state.state_file.read_bytes()[:100])
    locked = tmp_path / "locked"
    cases = {
        "shared": ("open", [argv(shared), argv(shared)]),
        "copied": ("open", [argv(shared), argv(tmp_path / "copy")]),
        "neither": ("open", [argv(tmp_path / "none0"), argv(tmp_path / "none1")]),
        "missing on rank 1": ("open", [argv(shared), argv(tmp_path / "none1")]),
        "missing on rank 0": ("open", [argv(tmp_path / "none0"), argv(shared)]),
        "other content": ("open", [argv(shared), argv(tmp_path / "other")]),
        # A rank that cannot read its copy reports that, after the gather, instead of leaving the others waiting.
        "unreadable on rank 1": ("open", [argv(shared), argv(tmp_path / "truncated")]),
        # The same refusal on every rank is the single-process refusal.
        "other settings": ("open", [[*argv(shared), "--seed", "7"], [*argv(shared), "--seed", "7"]]),
        "out_dir locked": ("lock", [argv(locked), argv(tmp_path / "free")]),
    }
    # This test process holds rank 0's --out_dir, as a first run would.
    with holding([LockSpec(locked / OUT_DIR_LOCK, f"--out_dir {locked}", "pick another --out_dir")]):
        rank0, rank1 = spawn_two_ranks(cases, tmp_path)
    # Never a rank resuming while another starts fresh: the same outcome everywhere (the advice at
    # the end of a refusal names each rank's own --out_dir, as each machine sees it).
    assert {case: outcome.split("; every process")[0] for case, outcome in rank0.items()} == \
        {case: outcome.split("; every process")[0] for case, outcome in rank1.items()}
    assert rank0["shared"] == rank0["copied"] == "resumes save 1"
    assert rank0["neither"] == "fresh"
    save_1 = r"save 1 at update 2 \(content sha256 [0-9a-f]{12}\)"
    for case, views in [("missing on rank 1", (save_1, "no state")), ("missing on rank 0", ("no state", save_1)),
                        ("other content", (save_1, save_1))]:
        message = rank0[case]
        assert "\n" not in message
        assert re.fullmatch(rf"DistributedError: --resume: the processes see different resume states "
                            rf"\(rank 0: {views[0]}; rank 1: {views[1]}\); every process must resume the same one: "
                            r"put --out_dir on a filesystem all machines share, or copy rank 0's .*", message), message
    assert re.fullmatch(rf"DistributedError: --resume: the processes see different resume states \(rank 0: {save_1}; "
                        rf"rank 1: error: .*truncated/resume/state.pt: cannot read the resume state.*\); every .*",
                        rank0["unreadable on rank 1"]), rank0["unreadable on rank 1"]
    assert rank0["other settings"].startswith(f"CheckpointError: {shared / 'resume' / 'state.pt'}: refusing to "
                                              "resume: the saved run had different settings (--seed: saved 1234, now 7")
    assert rank0["out_dir locked"].startswith(f"RunLockError: --out_dir {locked} is in use by another run "
                                              f"(pid {os.getpid()} ")
    assert not (tmp_path / "free").exists()
