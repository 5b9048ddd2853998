"""One run per output: lock files that stop a second run from writing the same --out_dir or prediction directory."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shlex
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from multitask.tasks import PREDICTED_SPLITS

if TYPE_CHECKING:
    from multitask.distributed import DistEnv
    from multitask.settings import Settings

log = logging.getLogger(__name__)

OUT_DIR_LOCK = "run.lock"
# Hidden: prediction directories are what students look at and zip; the submission takes the
# six files by name, never the whole directory.
PREDICTIONS_LOCK = ".minbert.lock"
# A lock file is created empty and its owner written right after; a reader that finds it empty or
# half written waits this long for the owner to appear before calling it unreadable.
READ_PATIENCE_SECONDS = 2.0
ATTEMPTS = 5


class RunLockError(RuntimeError):
    """Another run holds an output this run would write (its message names that run and what to do)."""


@dataclass(frozen=True)
class LockSpec:
    """A lock to take: its file, how a message names what it protects, and what the user can do instead."""

    path: Path
    what: str
    instead: str


@dataclass(frozen=True)
class LockOwner:
    """The process holding a lock, as written in the lock file."""

    pid: int
    host: str
    started: str
    command: str
    # Boot id and pid namespace: a pid means a process only in the namespace it came from, and two
    # machines (or containers) can share a host name.
    machine: str = ""

    @classmethod
    def this_process(cls) -> "LockOwner":
        return cls(pid=os.getpid(), host=socket.gethostname(), started=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                   command=shlex.join(sys.argv), machine=machine_id())

    @classmethod
    def from_json(cls, text: str) -> "LockOwner":
        data = json.loads(text)
        return cls(pid=int(data["pid"]), host=str(data["host"]), started=str(data["started"]),
                   command=str(data.get("command", "")), machine=str(data.get("machine", "")))

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1) + "\n"

    def describe(self) -> str:
        command = self.command if len(self.command) <= 120 else self.command[:119] + "…"
        return f"pid {self.pid} on host {self.host}, started {self.started}: {command}"

    def on_this_machine(self) -> bool:
        """Whether this process can see the owner's pid (same host, same boot, same pid namespace)."""
        here = machine_id()
        return self.host == socket.gethostname() and (not self.machine or not here or self.machine == here)


def machine_id() -> str:
    """This kernel boot and pid namespace ("" where Linux's /proc does not say)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        return f"{boot}/{os.readlink('/proc/self/ns/pid')}"
    except OSError:
        return ""


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists here (signal 0 checks without sending anything)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by another user
        return True
    return True


def read_owner(path: Path) -> LockOwner | None:
    """The owner written in a lock file; None once the file is gone. Waits briefly for one being written."""
    deadline = time.monotonic() + READ_PATIENCE_SECONDS
    while True:
        try:
            return LockOwner.from_json(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as err:
            if time.monotonic() > deadline:
                raise RunLockError(f"{path}: a lock file with no readable owner ({err}); if no run is writing "
                                   f"there, delete {path} and rerun") from err
            time.sleep(0.1)


def acquire(spec: LockSpec) -> bool:
    """Take the lock `spec.path` for this process; returns whether its directory was created for it.

    Created with O_CREAT | O_EXCL, which fails if the file exists, so of two runs starting
    together exactly one gets it. A lock of a dead process on this machine is taken over (with a
    warning); a live one, or one from another machine, refuses in one line naming its run.
    """
    path = spec.path
    for _ in range(ATTEMPTS):
        created = not path.parent.exists()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise RunLockError(f"{spec.what}: cannot create {path.parent} ({err.strerror}); "
                               f"{spec.instead}") from err
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileNotFoundError:
            continue  # the directory was removed by a run releasing its lock just then: make it again
        except FileExistsError:
            owner = read_owner(path)
            if owner is None:
                continue  # released between our open and our read
            if owner.on_this_machine() and not pid_alive(owner.pid):
                take_over(path, owner)
                continue
            raise RunLockError(refusal(spec, owner))
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(LockOwner.this_process().to_json())
            f.flush()
            os.fsync(f.fileno())
        return created
    raise RunLockError(f"{path}: could not take this lock in {ATTEMPTS} attempts (other runs keep taking or "
                       "releasing it); retry in a moment")


def refusal(spec: LockSpec, owner: LockOwner) -> str:
    """The one-line error for a lock held by `owner`."""
    if owner.on_this_machine():
        return (f"{spec.what} is in use by another run ({owner.describe()}); wait for it to finish or "
                f"{spec.instead}")
    return (f"{spec.what} is in use by a run on another machine ({owner.describe()}); {spec.instead}, or, if "
            f"that run is no longer running, delete {spec.path} and rerun (a lock from another machine is never "
            "taken over, since its process cannot be checked from here)")


def take_over(path: Path, owner: LockOwner) -> None:
    """Remove the lock of a dead process, unless someone else replaced it meanwhile.

    Reading and deleting are two steps, so a second file guards them: of two runs that find the
    same stale lock, one deletes it, and the other cannot delete the fresh lock the first then takes.
    """
    guard = path.with_name(path.name + ".takeover")
    try:
        fd = os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        with contextlib.suppress(FileNotFoundError):
            # The guard lives for a read and an unlink; an old one was left by a run killed in between.
            if time.time() - guard.stat().st_mtime > 60:
                raise RunLockError(f"{guard}: left by a run that died while taking over {path}; delete both "
                                   "files and rerun") from None
        time.sleep(0.2)  # another run is taking it over right now; the caller tries again
        return
    try:
        if read_owner(path) == owner:
            path.unlink()
            log.warning("took over %s: its run (%s) is no longer running", path, owner.describe())
    finally:
        os.close(fd)
        guard.unlink()


def release(path: Path, created_dir: bool) -> None:
    """Remove this process's lock, and its directory if the lock made it and nothing else was written."""
    owner = None
    with contextlib.suppress(RunLockError):
        owner = read_owner(path)
    # Never remove a lock that is not ours (deleted by hand and taken by another run meanwhile).
    if owner is not None and owner.pid == os.getpid() and owner.on_this_machine():
        path.unlink(missing_ok=True)
    if created_dir:
        with contextlib.suppress(OSError):
            path.parent.rmdir()  # fails unless empty: only a directory the run left unused goes


@contextlib.contextmanager
def holding(specs: list[LockSpec]) -> Iterator[None]:
    """Hold every lock of `specs` for the block (all or none: a refusal releases those already taken)."""
    held: list[tuple[Path, bool]] = []
    try:
        for spec in specs:
            held.append((spec.path, acquire(spec)))
        yield
    finally:
        for path, created in reversed(held):
            release(path, created)


def output_locks(settings: Settings) -> list[LockSpec]:
    """The locks a run takes: its --out_dir (training only) and each directory it writes predictions to.

    --predict_only reads --checkpoint and writes only prediction files, so it locks only their
    directories. Prediction files are locked by directory, not by name: by default every run
    writes them to `predictions/`, whatever its --out_dir, and a submission packs the files of
    one directory, which must come from one run.
    """
    run = settings.run
    specs = []
    if not run.predict_only:
        specs.append(LockSpec(run.out_dir / OUT_DIR_LOCK, f"--out_dir {run.out_dir}", "pick another --out_dir"))
    if run.predict_only or not run.skip_predictions:
        flags_by_dir: dict[Path, list[str]] = {}
        for task in run.tasks:
            for split in PREDICTED_SPLITS:
                directory = settings.output_file(task, split).parent
                # Keyed by the resolved path: two spellings of one directory are one lock, not a refusal
                # of this run by itself.
                flags_by_dir.setdefault(directory.resolve(), []).append(f"--{task}_{split}_out")
        for directory, flags in flags_by_dir.items():
            instead = f"point {' '.join(flags)} at another directory"
            if not run.predict_only:
                instead += " (or pass --skip_predictions)"
            specs.append(LockSpec(directory / PREDICTIONS_LOCK, f"the prediction directory {directory}", instead))
    return specs


@contextlib.contextmanager
def hold_output_locks(settings: Settings, env: DistEnv) -> Iterator[None]:
    """Hold the run's output locks for the block; under torchrun rank 0 takes them and every rank learns the outcome.

    Only rank 0 writes outputs, so only it locks; its refusal is shared so that every rank stops
    with the same line instead of waiting for rank 0 in the first collective.
    """
    refused = None
    with contextlib.ExitStack() as stack:
        if env.is_main:
            try:
                stack.enter_context(holding(output_locks(settings)))
            except RunLockError as err:
                refused = str(err)
        refused = env.share_from_main(refused)
        if refused is not None:
            raise RunLockError(refused)
        yield
