"""Running jobs here: one job as a supervised subprocess in its own process group (:class:`SubprocessRunner`,
:func:`supervise_main`), recorded in the run index (:func:`execute_job`), and the local executor (:func:`run_local`:
the unfinished jobs in dependency order, one at a time or ``parallel`` at once)."""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from harness.io import atomic_write_json
from harness.models import content_hash as model_hash
from harness.sweep.index import RunIndex, has_checkpoint, is_done, verify_outputs, verify_trained_model
from harness.sweep.layout import DONE_FILE, JOB_JSON, LOG_FILE, MANIFEST_FILE, TRAIN_KINDS, _now, _read_json, job_dir
from harness.sweep.locks import _job_lock_fds, _lock_info, _write_lock_info, job_lock
from harness.sweep.plan import Job, Plan
from harness.sweep.settings import PROJECT_ROOT

log = logging.getLogger("harness.sweep")

#: How long a stopped job's processes get between SIGTERM and SIGKILL.
STOP_GRACE_S = 5.0

#: Thread-count variables set for a job that runs beside others (``parallel`` > 1), unless already set.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")

# The job processes running now (their supervisors), so that an interrupt of a parallel sweep can stop them all.
_running: dict[str, subprocess.Popen] = {}
_running_lock = threading.Lock()
_stopping = threading.Event()


class JobFailed(Exception):
    """A job that did not finish; the message says why (exit status, last lines of its log)."""


class JobRunner(Protocol):
    """Runs one job to completion (raising :class:`JobFailed` otherwise), logging to ``log_path``."""

    def __call__(self, job: Job, output: Path, log_path: Path) -> None: ...


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


def job_arguments(job: Job, output: Path) -> list[str]:
    """The job's command line: :meth:`Job.command`, with ``--resume`` for a training job whose folder holds
    checkpoints made from its starting model as it is now. Checkpoints made from another version of it (an
    upstream job trained again) are moved aside to ``checkpoints.stale-<time>`` and the job trains from the start."""
    cmd = job.command()
    ckpt_dir = output / job.outputs["model"] / "checkpoints" if job.kind in TRAIN_KINDS else None
    if ckpt_dir is not None and has_checkpoint(ckpt_dir):
        if _stale_checkpoints(job, ckpt_dir):
            aside = ckpt_dir.with_name(f"checkpoints.stale-{time.strftime('%Y%m%d-%H%M%S')}")
            log.warning(
                "%s: its checkpoints were made from another version of its starting model; moved to %s, "
                "training from the start",
                job.id,
                aside,
            )
            ckpt_dir.rename(aside)
        else:
            cmd.append("--resume")
    return cmd


def _stale_checkpoints(job: Job, ckpt_dir: Path) -> bool:
    """Whether the ``start_model.json`` beside ``ckpt_dir`` names another content hash than the job's starting
    model's."""

    recorded = _read_json(ckpt_dir.parent / "start_model.json")
    start = (job.train_config or {}).get("model")
    if not isinstance(recorded, dict) or not start or not Path(start).is_dir():
        return False
    return recorded.get("content_hash") != model_hash(start)


class SubprocessRunner:
    """Runs a job as ``python -m harness ...`` (training: the ``train_launcher`` if set), output appended to its
    log; training continues from the last checkpoint (``--resume``) when there is one.

    The job runs in its own process group under a small supervisor (:func:`supervise_main`): when the sweep is
    interrupted (SIGINT, SIGTERM) the whole group is stopped (SIGTERM, then SIGKILL after :data:`STOP_GRACE_S`);
    when the sweep dies without a chance to do so (SIGKILL), the supervisor sees it (``PR_SET_PDEATHSIG`` on Linux,
    its parent pid changing elsewhere) and stops the group itself. The job's processes hold the job's lock
    (:func:`job_lock`) until the last of them exits.

    ``threads``: the CPU threads of each job (``OMP_NUM_THREADS`` and its kin, where the environment does not set
    them), for jobs that run side by side."""

    def __init__(self, threads: int | None = None):
        self.threads = threads

    def command(self, job: Job, output: Path) -> list[str]:
        return job_arguments(job, output)

    def __call__(self, job: Job, output: Path, log_path: Path) -> None:
        cmd = self.command(job, output)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH")) if p)
        if self.threads:
            for name in THREAD_VARIABLES:
                env.setdefault(name, str(self.threads))
        lock_fd = _job_lock_fds.get(job.id)
        supervised = [
            sys.executable,
            "-c",
            "from harness.sweep import supervise_main; supervise_main()",
            str(os.getpid()),
            str(-1 if lock_fd is None else lock_fd),
            job.id,
            "--",
            *cmd,
        ]
        with open(log_path, "a", encoding="utf-8") as fh:
            fh.write(f"\n===== {_now()} {shlex.join(cmd)}\n")
            fh.flush()
            try:
                proc = subprocess.Popen(
                    supervised,
                    stdin=subprocess.DEVNULL,
                    stdout=fh,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                    pass_fds=() if lock_fd is None else (lock_fd,),
                )
            except OSError as exc:
                raise JobFailed(f"cannot start {sys.executable}: {exc.strerror}") from exc
            with _running_lock:
                _running[job.id] = proc
            try:
                returncode = proc.wait()
            except BaseException:  # interrupted (SIGINT, SIGTERM): the job must not outlive the sweep
                stop_process_group(proc)
                raise
            finally:
                with _running_lock:
                    _running.pop(job.id, None)
            stop_process_group(proc, grace=0)  # anything the job left behind in its group
        if _stopping.is_set():  # stopped by the interrupt of a parallel sweep: not a failure of the job
            raise KeyboardInterrupt
        if returncode != 0:
            tail = _tail(log_path)
            raise JobFailed(f"exit status {returncode}" + (f"; last lines of {log_path}:\n{tail}" if tail else ""))


def stop_process_group(proc: subprocess.Popen, grace: float | None = None) -> None:
    """Stop every process of ``proc``'s process group (``proc`` leads it): SIGTERM, then SIGKILL to what is left
    after ``grace`` seconds (:data:`STOP_GRACE_S`)."""
    grace = STOP_GRACE_S if grace is None else grace
    if proc.poll() is None or grace == 0:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM if grace else signal.SIGKILL)
        if grace:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=grace)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _die_with_parent() -> None:
    """Linux: have the kernel send this process SIGTERM when its parent dies (``prctl(PR_SET_PDEATHSIG)``)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG = 1


def supervise_main(argv: Sequence[str] | None = None) -> None:
    """The supervisor of one job (``python -c "from harness.sweep import supervise_main; supervise_main()" PARENT
    LOCK_FD JOB_ID -- COMMAND...``), started by :class:`SubprocessRunner` as the leader of a new process group.

    It runs COMMAND in its group, holding the job's lock descriptor, and exits with its status. When the sweep
    (PARENT) goes away, or it is sent SIGTERM / SIGINT / SIGHUP, it stops the whole group: SIGTERM, then SIGKILL
    after :data:`STOP_GRACE_S`."""
    args = list(sys.argv[1:] if argv is None else argv)
    parent, lock_fd, job_id, cmd = int(args[0]), int(args[1]), args[2], args[4:]
    stopping: list[int] = []

    def on_signal(signum: int, frame: Any) -> None:
        stopping.append(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    _die_with_parent()
    if os.getppid() != parent:  # the sweep died before the line above
        os._exit(1)
    if lock_fd >= 0:
        _write_lock_info(lock_fd, _lock_info(job=job_id, sweep_pid=parent))
    try:
        proc = subprocess.Popen(cmd, pass_fds=(lock_fd,) if lock_fd >= 0 else ())
    except OSError as exc:
        print(f"harness sweep: cannot start {cmd[0]}: {exc.strerror}", file=sys.stderr)
        os._exit(127)
    while True:
        try:
            code = proc.wait(timeout=0.2)
        except subprocess.TimeoutExpired:
            if stopping or os.getppid() != parent:
                break
            continue
        os._exit(code if code >= 0 else 128 - code)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    print(
        f"harness sweep: job {job_id}: stopping it ("
        + (signal.Signals(stopping[0]).name if stopping else "the sweep is gone")
        + ")",
        file=sys.stderr,
        flush=True,
    )
    with contextlib.suppress(ProcessLookupError):
        os.killpg(0, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=STOP_GRACE_S)
    os.killpg(0, signal.SIGKILL)  # the rest of the group, this process included


def execute_job(job: Job, output: Path, runner: JobRunner | None = None) -> bool:
    """Run one job and record it: the index says ``running``, then ``done`` (with ``done.json`` written) or
    ``failed`` (with the error). Returns whether it finished. An interrupt leaves it ``pending`` and propagates.

    The job's lock (:func:`job_lock`) is held throughout. A job is marked done only once its outputs are complete
    and verified (:func:`verify_outputs`); a training job whose final model is already complete and verified (a
    sweep stopped after the training ended, before marking it done) is marked done without training again."""
    runner = runner or SubprocessRunner()
    index = RunIndex(output)
    folder = job_dir(output, job.id)
    folder.mkdir(parents=True, exist_ok=True)
    with job_lock(output, job):
        (folder / DONE_FILE).unlink(missing_ok=True)
        started = time.time()
        index.update(
            job.id,
            increment=("attempts",),
            state="running",
            started=_now(),
            finished=None,
            seconds=None,
            error=None,
            host=socket.gethostname(),
        )
        if job.kind in TRAIN_KINDS and (output / job.outputs["model"] / MANIFEST_FILE).is_file():
            problem, weights = verify_trained_model(job, output)
            if problem is None:
                log.info("%s: its final model is complete and verified; not trained again", job.id)
                _mark_done(job, output, index, started, weights, adopted=True)
                return True
            log.info("%s: %s; training (again)", job.id, problem)
        if job.job_json is not None:
            run_dir = output / job.outputs["run"]
            run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_json(run_dir / JOB_JSON, job.job_json)
        try:
            runner(job, output, folder / LOG_FILE)
            problem, weights = verify_outputs(job, output)
            if problem:
                raise JobFailed(problem)
        except JobFailed as exc:
            index.update(
                job.id, state="failed", finished=_now(), seconds=round(time.time() - started, 3), error=str(exc)
            )
            return False
        except KeyboardInterrupt as exc:
            index.update(job.id, state="pending", error="interrupted", seconds=round(time.time() - started, 3))
            with contextlib.suppress(AttributeError):
                exc.sweep_job = job.id  # type: ignore[attr-defined]
            raise
        _mark_done(job, output, index, started, weights)
        return True


def _mark_done(
    job: Job, output: Path, index: RunIndex, started: float, weights: Mapping[str, Any], adopted: bool = False
) -> None:
    seconds = round(time.time() - started, 3)
    marker: dict[str, Any] = {"fingerprint": job.fingerprint, "finished": _now(), "seconds": seconds}
    if job.kind in TRAIN_KINDS:
        marker["weights"] = dict(weights)
    if adopted:
        marker["verified_existing"] = True
    atomic_write_json(job_dir(output, job.id) / DONE_FILE, marker)
    index.update(job.id, state="done", finished=_now(), seconds=seconds, error=None)


@dataclass
class SweepResult:
    """What a sweep did: job ids by what happened to them, and the report folder (None: no report)."""

    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    submitted: dict[str, str] = field(default_factory=dict)
    report: Path | None = None

    @property
    def ok(self) -> bool:
        return not self.failed and not self.blocked


def run_local(plan: Plan, runner: JobRunner | None = None, parallel: int = 1) -> SweepResult:
    """Run the unfinished jobs in dependency order, ``parallel`` at a time (each job starts once the jobs it
    depends on are done; with ``parallel`` > 1 each job gets ``cpu_count // parallel`` CPU threads unless the
    environment sets them). A failed job does not stop the sweep; the jobs that depend on it are left pending
    ("blocked"). An interrupt stops every running job and leaves it pending."""
    if parallel > 1 and runner is None:
        runner = SubprocessRunner(threads=max(1, (os.cpu_count() or 1) // parallel))
    result = SweepResult()
    finished: set[str] = set()
    not_finished: set[str] = set()
    index = RunIndex(plan.output)
    total = len(plan.jobs)
    tags = {job.id: f"[{k}/{total}] {job.id}" for k, job in enumerate(plan.jobs, start=1)}
    waiting: list[Job] = []
    for job in plan.jobs:
        if is_done(job, plan.output):
            finished.add(job.id)
            result.skipped.append(job.id)
            log.info("%s: done already, skipped", tags[job.id])
        else:
            waiting.append(job)

    def run_one(job: Job) -> bool:
        log.info("%s: running (log: %s)", tags[job.id], job_dir(plan.output, job.id) / LOG_FILE)
        t0 = time.time()
        ok = execute_job(job, plan.output, runner)
        if ok:
            log.info("%s: done in %.1fs", tags[job.id], time.time() - t0)
        else:
            error = index.entries().get(job.id, {}).get("error") or "failed"
            log.error("%s: failed after %.1fs: %s", tags[job.id], time.time() - t0, error)
        return ok

    def block(job: Job, blockers: Sequence[str]) -> None:
        not_finished.add(job.id)
        result.blocked.append(job.id)
        index.update(job.id, state="pending", error=f"not run: {', '.join(blockers)} did not finish")
        log.warning("%s: not run, %s did not finish", tags[job.id], ", ".join(blockers))

    def record(job: Job, ok: bool) -> None:
        (finished if ok else not_finished).add(job.id)
        (result.ran if ok else result.failed).append(job.id)

    if parallel <= 1:
        for job in waiting:
            blockers = [d for d in job.deps if d not in finished]
            if blockers:
                block(job, blockers)
                continue
            record(job, run_one(job))
        return result
    _run_parallel(waiting, parallel, run_one, block, record, finished, not_finished)
    return result


def _run_parallel(
    waiting: list[Job], parallel: int, run_one: Any, block: Any, record: Any, finished: set[str], not_finished: set[str]
) -> None:
    """The parallel loop of :func:`run_local`: start each ready job (in plan order) while fewer than ``parallel``
    run; on an interrupt, stop them all (their index entries go back to pending) and re-raise."""
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    running: dict[Any, Job] = {}
    pool = ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="sweep-job")
    _stopping.clear()
    try:
        while waiting or running:
            for job in list(waiting):
                failed = [d for d in job.deps if d in not_finished]
                if failed:
                    waiting.remove(job)
                    block(job, failed)
                elif len(running) < parallel and all(d in finished for d in job.deps):
                    waiting.remove(job)
                    running[pool.submit(run_one, job)] = job
            if not running:
                if waiting:  # pragma: no cover - a dependency outside the plan
                    for job in waiting:
                        block(job, [d for d in job.deps if d not in finished])
                break
            done, _ = wait(list(running), timeout=0.5, return_when=FIRST_COMPLETED)
            for future in done:
                job = running.pop(future)
                record(job, future.result())
    except BaseException as exc:  # an interrupt (or a bug): no job may outlive the sweep
        _stopping.set()
        with _running_lock:
            procs = list(_running.values())
        for proc in procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
        pool.shutdown(wait=True, cancel_futures=True)
        if isinstance(exc, KeyboardInterrupt):
            with contextlib.suppress(AttributeError):
                exc.sweep_job = ", ".join(j.id for j in running.values())  # type: ignore[attr-defined]
        raise
    finally:
        pool.shutdown(wait=True)
        _stopping.clear()
