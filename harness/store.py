"""The run directory of one (model, task): ``manifest.json``, ``predictions.jsonl``, ``metrics.json``.

- ``manifest.json`` describes the run completely (model path and hash, engine and version, template, the exact
  sampling parameters sent, task name and version, data file hashes, package versions, git revision, command
  line) and never holds a secret. Its ``fingerprint`` covers every setting that changes a prediction; a rerun
  with a different fingerprint is refused instead of mixing predictions of two settings.
- ``predictions.jsonl`` gets one record per finished sample, appended and flushed as results arrive (a killed
  process loses nothing written), and fsynced when the last fsync is a second old and when the run ends (a machine
  crash loses at most the last second).
  No timing fields: two runs of the same setting write byte-identical files. A rerun skips finished ids; a
  line cut short by a crash or ``kill -9`` is dropped (that sample is generated again).
- ``failures.jsonl`` lists the samples that could not be run (e.g. an unreadable image) in the last run.
- ``metrics.json`` is written atomically when scoring finishes. Per-invocation timings go to ``runs.jsonl``.
- ``.lock`` makes one process at a time the writer of the directory: :meth:`RunStore.lock` takes an exclusive,
  non-blocking ``flock`` on it (the operating system releases it when the process ends, ``kill -9``
  included) and writes the holder into it (pid, host, start time of its command, command line). A second
  process gets a :class:`RunDirectoryBusy` naming the holder, before it has changed anything in the
  directory. All :class:`RunStore` objects of one process share the lock of a directory; it is held until
  :func:`release_locks` (the CLI calls it when a command ends) or the end of the process.

The manifest, metrics, score records and failures pass through :func:`harness.redact.redact_obj` before they
are written: no credential (an API key, a password in an endpoint URL) reaches a run file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TextIO

from harness.errors import DataError, HarnessError
from harness.io import atomic_write_json, atomic_write_text, dumps_record, read_json
from harness.manifest import redacted_argv
from harness.redact import redact_obj

try:
    import fcntl
except ImportError:  # not POSIX: no locking
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
PREDICTIONS = "predictions.jsonl"
METRICS = "metrics.json"
FAILURES = "failures.jsonl"
SCORES = "scores.jsonl"
RUNS = "runs.jsonl"
LOCK = ".lock"


def _process_start_time() -> float:
    """When this process started (Linux: from /proc), else when this module was imported."""
    try:
        with open("/proc/self/stat", encoding="ascii") as fh:
            ticks = int(fh.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime, in clock ticks after boot
        with open("/proc/stat", encoding="ascii") as fh:
            boot = next(int(line.split()[1]) for line in fh if line.startswith("btime "))
        started = boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time()
    return started if 0 < started <= time.time() + 2 else time.time()


_STARTED = _process_start_time()  # the start of this process's command, recorded in the lock file
_held: dict[str, list[int]] = {}  # real path of a locked directory -> [file descriptor, number of holders]
_held_guard = threading.Lock()


class RunDirectoryBusy(HarnessError):
    """Another process is writing the run directory (it holds the directory's lock)."""


def _holder_info() -> dict[str, Any]:

    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(_STARTED)),
        "command": redacted_argv(list(sys.argv)),
    }


def _describe_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 65536, 0).decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        info = None
    if not isinstance(info, dict):
        return "a process that has not yet recorded itself"
    return f"pid {info.get('pid', '?')} on host {info.get('host', '?')}, started {info.get('started', '?')}"


def release_locks() -> None:
    """Release every run-directory lock this process holds."""
    with _held_guard:
        for fd, _ in _held.values():
            try:
                os.close(fd)
            except OSError:
                pass
        _held.clear()


def fingerprint(settings: dict[str, Any]) -> str:
    """Stable hash of the settings that determine predictions."""
    blob = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _diff(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _diff(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


class RunStore:
    """One run directory. Use :meth:`open` to create or resume it."""

    SYNC_INTERVAL_S = 1.0

    def __init__(self, run_dir: str | Path):
        self.dir = Path(run_dir)
        self._fh: TextIO | None = None
        self._unsynced = False
        self._last_sync = 0.0
        self._lock_key: str | None = None

    @property
    def predictions_path(self) -> Path:
        return self.dir / PREDICTIONS

    # ------------------------------------------------------------------ setup
    def open(self, manifest: dict[str, Any], settings: dict[str, Any], overwrite: bool = False) -> None:
        """Create the directory (or resume it) for ``settings``; write the manifest.

        Raises :class:`HarnessError` when the directory cannot be written, when another process holds it
        (:class:`RunDirectoryBusy`), or when it holds predictions made with different settings (unless
        ``overwrite``, which discards them). Credentials in ``manifest`` and ``settings`` are redacted.
        """
        self._ensure_writable()
        settings = redact_obj(settings)
        fp = fingerprint(settings)
        manifest_path = self.dir / MANIFEST
        if manifest_path.exists():
            old = read_json(manifest_path)
            if old.get("fingerprint") != fp:
                if not overwrite and self.predictions_path.exists():
                    changes = _diff(old.get("settings", {}), settings) or ["(settings of an older harness)"]
                    raise HarnessError(
                        f"{self.dir} holds predictions made with other settings:\n  "
                        + "\n  ".join(changes)
                        + "\nUse another --output-path (or --run-name), or --overwrite to discard them."
                    )
                self.discard()
        elif self.predictions_path.exists() and not overwrite:
            raise HarnessError(
                f"{self.dir} holds {PREDICTIONS} but no {MANIFEST}, so its settings are unknown; "
                "use another --output-path, or --overwrite to discard it"
            )
        elif overwrite:
            self.discard()
        manifest = {**redact_obj(manifest), "fingerprint": fp, "settings": settings}
        atomic_write_json(manifest_path, manifest)

    def _ensure_writable(self) -> None:
        """Create the directory, take its lock (:meth:`lock`) and check that files can be written in it."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as exc:
            raise HarnessError(f"output directory {self.dir} cannot be created: a file is in the way ({exc})") from exc
        except PermissionError as exc:
            raise HarnessError(f"output directory {self.dir} cannot be created: permission denied") from exc
        except OSError as exc:
            raise HarnessError(f"output directory {self.dir} cannot be created: {exc.strerror}") from exc
        self.lock()
        probe = self.dir / ".write-test"
        try:
            probe.write_text("")
            probe.unlink()
        except OSError as exc:
            raise HarnessError(f"output directory {self.dir} is not writable: {exc.strerror}") from exc

    # ------------------------------------------------------------------ lock
    @property
    def locked(self) -> bool:
        return self._lock_key is not None and self._lock_key in _held

    def lock(self) -> None:
        """Become the only writer of the directory (which must exist), or raise :class:`RunDirectoryBusy`
        naming the process that is (pid, host, start time). Does not wait; calling it again is a no-op."""
        if fcntl is None or self.locked:
            return
        key = os.path.realpath(self.dir)
        with _held_guard:
            if key in _held:  # another RunStore of this process holds it
                _held[key][1] += 1
                self._lock_key = key
                return
            path = self.dir / LOCK
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
            except OSError as exc:
                raise HarnessError(
                    f"output directory {self.dir} is not writable: cannot open {path.name} ({exc.strerror})"
                ) from exc
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _describe_holder(fd)
                os.close(fd)
                raise RunDirectoryBusy(
                    f"{self.dir} is being written by another harness process ({holder}); wait for it to "
                    "finish, or use another --output-path or --run-name"
                ) from None
            except OSError as exc:
                os.close(fd)
                raise HarnessError(
                    f"cannot lock {path}: {exc.strerror}; the file system must support flock "
                    "(use another --output-path)"
                ) from exc
            data = (json.dumps(_holder_info(), ensure_ascii=False) + "\n").encode("utf-8")
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
            _held[key] = [fd, 1]
            self._lock_key = key

    def release(self) -> None:
        """Give up this store's share of the directory lock (released when no store of the process holds it)."""
        key, self._lock_key = self._lock_key, None
        if key is None:
            return
        with _held_guard:
            entry = _held.get(key)
            if entry is None:
                return
            entry[1] -= 1
            if entry[1] <= 0:
                del _held[key]
                os.close(entry[0])

    def discard(self) -> None:
        self.close()
        for name in (PREDICTIONS, METRICS, FAILURES, SCORES):
            (self.dir / name).unlink(missing_ok=True)

    # ------------------------------------------------------------ predictions
    def load_finished(self) -> dict[str, dict[str, Any]]:
        """Finished records by sample id. A final line cut short by a crash is removed from the file."""
        self.close()
        path = self.predictions_path
        if not path.exists():
            return {}
        data = path.read_bytes()
        records: dict[str, dict[str, Any]] = {}
        good_end = 0
        pos = 0
        lineno = 0
        while pos < len(data):
            nl = data.find(b"\n", pos)
            lineno += 1
            if nl == -1:  # last line without its newline: the write was interrupted
                log.warning("%s: dropping an unfinished last line (line %d); that sample runs again", path, lineno)
                break
            line = data[pos:nl]
            try:
                rec = json.loads(line)
                if not isinstance(rec, dict) or "id" not in rec:
                    raise ValueError("expected a JSON object with an 'id'")
            except (ValueError, UnicodeDecodeError) as exc:
                raise DataError(
                    f"corrupt prediction record ({exc}); fix or delete the line, or rerun with --overwrite",
                    path=path,
                    line=lineno,
                ) from exc
            sid = str(rec["id"])
            if sid in records:
                raise DataError(f"duplicate prediction for sample {sid}", path=path, line=lineno)
            records[sid] = rec
            pos = good_end = nl + 1
        if good_end < len(data):
            with path.open("r+b") as fh:
                fh.truncate(good_end)
        return records

    def append(self, records: Iterable[dict[str, Any]]) -> None:
        """Append records and flush them to the operating system (they survive the process being killed);
        fsync when the last fsync is older than :attr:`SYNC_INTERVAL_S`."""
        lines = "".join(dumps_record(r) + "\n" for r in records)
        if not lines:
            return
        if self._fh is None:
            self._fh = self.predictions_path.open("a", encoding="utf-8")
        self._fh.write(lines)
        self._fh.flush()
        self._unsynced = True
        if time.monotonic() - self._last_sync >= self.SYNC_INTERVAL_S:
            self.sync()

    def sync(self) -> None:
        """Make every appended record durable (fsync)."""
        if self._fh is not None and self._unsynced:
            os.fsync(self._fh.fileno())
            self._unsynced = False
            self._last_sync = time.monotonic()

    def close(self) -> None:
        if self._fh is not None:
            self.sync()
            self._fh.close()
            self._fh = None

    # ---------------------------------------------------------------- results
    def write_failures(self, failures: list[dict[str, Any]]) -> None:
        path = self.dir / FAILURES
        if not failures:
            path.unlink(missing_ok=True)
            return
        path.write_text("".join(dumps_record(redact_obj(f)) + "\n" for f in failures), encoding="utf-8")

    def write_metrics(self, metrics: dict[str, Any], records: list[dict[str, Any]] | None = None) -> None:
        """``metrics.json`` and, when given, the per-sample scoring records (``scores.jsonl``), atomically."""
        if records is not None:
            atomic_write_text(self.dir / SCORES, "".join(dumps_record(redact_obj(r)) + "\n" for r in records))
        atomic_write_json(self.dir / METRICS, redact_obj(metrics))

    def log_run(self, info: dict[str, Any]) -> None:
        with (self.dir / RUNS).open("a", encoding="utf-8") as fh:
            fh.write(dumps_record(redact_obj(info)) + "\n")
