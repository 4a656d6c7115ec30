"""Locks: one sweep at a time writes a sweep folder (``OUTPUT/sweep.lock``), one process at a time runs a job
(``jobs/ID/lock``), and the run index is updated under ``index.lock``. All are ``flock`` locks, released by the OS
however their holder ends."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import socket
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.errors import HarnessError
from harness.sweep.layout import JOB_LOCK, SWEEP_LOCK, _now, _read_json, job_dir

if TYPE_CHECKING:
    from harness.sweep.plan import Job

#: How long a job whose lock is held is waited for before the sweep gives up (the processes of a job whose sweep was
#: just killed take a moment to exit).
JOB_LOCK_WAIT_S = 10.0


def _lock_info(**extra: Any) -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": _now(), **extra}


def _write_lock_info(fd: int, info: Mapping[str, Any]) -> None:
    data = (json.dumps(dict(info), sort_keys=True) + "\n").encode()
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
    except OSError:  # pragma: no cover - the lock matters, not the note
        pass


def lock_holder(path: Path) -> str:
    """Who holds the lock ``path``, from the note its holder wrote in it: ``pid P on HOST (since T)``."""
    info = _read_json(path)
    if not isinstance(info, dict) or "pid" not in info:
        return "another process"
    return f"pid {info.get('pid')} on {info.get('host', '?')} (since {info.get('started', '?')})"


def try_lock(path: Path, info: Mapping[str, Any], *, inheritable: bool = False) -> int | None:
    """Take an exclusive ``flock`` on ``path`` (created) without waiting and write ``info`` (who holds it) in it:
    the open file descriptor, or None when another process holds it. The OS releases the lock when every process
    holding the descriptor has exited, however it ended."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    os.set_inheritable(fd, inheritable)
    _write_lock_info(fd, info)
    return fd


#: job id -> the descriptor of its held lock (passed to the job's processes, which keep it while they run)
_job_lock_fds: dict[str, int] = {}


@contextlib.contextmanager
def job_lock(output: Path, job: Job, wait: float | None = None) -> Iterator[int]:
    """Hold ``jobs/ID/lock`` while job ``job`` runs: one process at a time runs a job. A job still run by another
    process (a sweep killed a moment ago whose job is stopping, a second sweep, a Slurm job) is waited for up to
    ``wait`` seconds (:data:`JOB_LOCK_WAIT_S`), then a HarnessError names the holder."""
    path = job_dir(output, job.id) / JOB_LOCK
    deadline = time.monotonic() + (JOB_LOCK_WAIT_S if wait is None else wait)
    while True:
        fd = try_lock(path, _lock_info(job=job.id))
        if fd is not None:
            break
        if time.monotonic() >= deadline:
            raise HarnessError(
                f"job {job.id} is being run by another process: {lock_holder(path)}; wait for it "
                "to finish or stop it, then rerun"
            )
        time.sleep(0.1)
    _job_lock_fds[job.id] = fd
    try:
        yield fd
    finally:
        _job_lock_fds.pop(job.id, None)
        os.close(fd)


@contextlib.contextmanager
def _locked(path: Path, blocking: bool = True) -> Iterator[bool]:
    """An exclusive ``flock`` on ``path`` (created); yields False when ``blocking`` is off and it is held."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no locking
        yield True
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextlib.contextmanager
def sweep_lock(output: Path) -> Iterator[int]:
    """One writer per sweep folder: an exclusive ``flock`` on ``OUTPUT/sweep.lock`` (released by the OS however the
    sweep ends); a second sweep on the folder is a HarnessError naming the holder (pid, host, start time)."""
    path = output / SWEEP_LOCK
    fd = try_lock(path, _lock_info(command=shlex.join(sys.argv)))
    if fd is None:
        raise HarnessError(
            f"another `harness sweep` is running on {output}: {lock_holder(path)}; wait for it to finish or stop it"
        )
    try:
        yield fd
    finally:
        os.close(fd)
