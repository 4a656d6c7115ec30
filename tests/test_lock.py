"""One writer per run directory: an exclusive flock on ``.lock``, taken before anything is written, held for the
whole command, released by the operating system when the holder dies."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.cli import main
from harness.errors import HarnessError
from harness.store import LOCK, RunDirectoryBusy, RunStore, release_locks

try:
    from tests.fake_openai_server import OK, FakeOpenAIServer
except ImportError:  # tests/ is not a package: pytest puts it on sys.path
    from fake_openai_server import OK, FakeOpenAIServer

REPO = Path(__file__).resolve().parent.parent
SETTINGS = {"model": {"path": "/m"}, "task": {"name": "t"}}

# Takes the lock of the directory argv[1] like `harness run` does, says so, then waits to be killed.
HOLDER = (
    "import sys, time\n"
    "from harness.store import RunStore\n"
    "RunStore(sys.argv[1])._ensure_writable()\n"
    "print('locked', flush=True)\n"
    "time.sleep(600)\n"
)


@pytest.fixture(autouse=True)
def _release():
    yield
    release_locks()


def hold(run_dir: Path) -> subprocess.Popen:
    """A second process that holds ``run_dir``'s lock until killed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(run_dir)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()
    assert line.strip() == "locked", proc.stderr.read()
    return proc


def snapshot(root: Path) -> dict[str, tuple[int, int, bytes]]:
    return {
        str(p.relative_to(root)): (p.stat().st_mtime_ns, p.stat().st_size, p.read_bytes())
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def can_lock_from_another_process(run_dir: Path) -> bool:
    probe = (
        "import sys\nfrom harness.store import RunStore\nfrom harness.errors import HarnessError\n"
        "try:\n    RunStore(sys.argv[1])._ensure_writable()\nexcept HarnessError as e:\n"
        "    print(e); sys.exit(3)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe, str(run_dir)], check=False, cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode in (0, 3), proc.stderr
    return proc.returncode == 0


def test_lock_file_names_the_holder(tmp_path):
    store = RunStore(tmp_path / "run")
    store.open({"model": {}}, SETTINGS)
    info = json.loads((store.dir / LOCK).read_text())
    assert info["pid"] == os.getpid()
    assert info["host"] == socket.gethostname()
    assert time.strptime(info["started"], "%Y-%m-%dT%H:%M:%S%z")
    assert isinstance(info["command"], list)
    assert store.locked


def test_another_process_is_refused_without_touching_the_directory(tmp_path, capsys):
    run_dir = tmp_path / "out" / "served" / "toy_amber"
    run_dir.mkdir(parents=True)
    (run_dir / "predictions.jsonl").write_text('{"id": "1", "response": "a"}\n')
    holder = hold(run_dir)
    try:
        before = snapshot(tmp_path)
        # in-process: the store refuses, naming the holder
        with pytest.raises(RunDirectoryBusy) as info:
            RunStore(run_dir).open({}, SETTINGS)
        message = str(info.value)
        assert "\n" not in message
        assert f"pid {holder.pid}" in message and socket.gethostname() in message and "started 20" in message
        assert str(run_dir) in message
        # the CLI: exit 2, one line, no traceback, nothing in the directory changed
        code = main(
            [
                "--log-level",
                "WARNING",
                "run",
                "--tasks",
                "toy_amber",
                "--engine",
                "openai",
                "--model",
                "served",
                "--base-url",
                "http://127.0.0.1:9/v1",
                "--output-path",
                str(tmp_path / "out"),
                "--no-progress",
            ]
        )
        err = capsys.readouterr().err
        assert code == 2
        assert "Traceback" not in err
        (line,) = [ln for ln in err.splitlines() if ln.startswith("harness: error:")]
        assert f"pid {holder.pid}" in line and "being written by another harness process" in line
        assert snapshot(tmp_path) == before
    finally:
        holder.kill()
        holder.wait()
    # kill -9 released the lock: the directory can be taken now
    store = RunStore(run_dir)
    store.open({}, SETTINGS, overwrite=True)
    assert json.loads((run_dir / LOCK).read_text())["pid"] == os.getpid()


def test_holder_killed_with_sigkill_releases_the_lock(tmp_path):
    run_dir = tmp_path / "run"
    spawned = time.time()
    holder = hold(run_dir)
    info = json.loads((run_dir / LOCK).read_text())
    assert info["pid"] == holder.pid
    started = time.mktime(time.strptime(info["started"], "%Y-%m-%dT%H:%M:%S%z"))
    assert spawned - 3 <= started <= time.time() + 1  # the holder's own start, not the time the file was read
    with pytest.raises(HarnessError, match=f"pid {holder.pid}"):
        RunStore(run_dir).lock()
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    RunStore(run_dir).lock()


def test_stores_of_one_process_share_the_lock_until_released(tmp_path):
    first = RunStore(tmp_path / "run")
    first.open({}, SETTINGS)
    second = RunStore(tmp_path / "run")
    second.open({}, SETTINGS)  # same process: no conflict
    assert not can_lock_from_another_process(tmp_path / "run")
    first.release()
    assert not can_lock_from_another_process(tmp_path / "run")  # second still holds it
    second.release()
    assert can_lock_from_another_process(tmp_path / "run")


def test_main_releases_its_locks_when_the_command_ends(tmp_path, capsys):
    with FakeOpenAIServer(models=("served",)) as server:
        code = main(
            [
                "--log-level",
                "WARNING",
                "run",
                "--tasks",
                "toy_amber",
                "--limit",
                "2",
                "--engine",
                "openai",
                "--model",
                "served",
                "--base-url",
                server.base_url,
                "--output-path",
                str(tmp_path),
                "--no-progress",
            ]
        )
    assert code == 0, capsys.readouterr().err
    assert can_lock_from_another_process(tmp_path / "served" / "toy_amber")


def test_two_harness_runs_on_one_directory(tmp_path):
    """Two `harness run` processes on one output directory: the second exits 2 naming the first, which finishes
    with its own settings in the manifest and its own numbers in the metrics."""
    n = 4
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("OPENAI_BASE_URL", None)
    with FakeOpenAIServer(models=("served",)) as server:
        server.script(*[OK(delay_s=0.5)] * n)  # the first run takes about 2 s
        common = [
            sys.executable,
            "-m",
            "harness",
            "run",
            "--tasks",
            "toy_amber",
            "--limit",
            str(n),
            "--engine",
            "openai",
            "--model",
            "served",
            "--base-url",
            server.base_url,
            "--output-path",
            str(tmp_path),
            "--concurrency",
            "1",
            "--batch-size",
            "1",
            "--no-progress",
        ]
        first = subprocess.Popen(
            [*common, "--max-new-tokens", "20"],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        run_dir = tmp_path / "served" / "toy_amber"
        deadline = time.time() + 120
        while time.time() < deadline and first.poll() is None:
            try:
                if json.loads((run_dir / LOCK).read_text())["pid"] == first.pid:
                    break
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.02)
        assert first.poll() is None, "the first run ended before the second started"
        second = subprocess.run(
            [*common, "--max-new-tokens", "3"],
            check=False,
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert second.returncode == 2
    assert "Traceback" not in second.stderr
    (line,) = [ln for ln in second.stderr.splitlines() if ln.startswith("harness: error:")]
    assert f"pid {first.pid}" in line
    assert len((run_dir / "predictions.jsonl").read_text().splitlines()) == n
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["max_new_tokens_override"] == 20 and manifest["settings"]["max_new_tokens"] == 20
    assert all(b["max_tokens"] == 20 for b in (r.body for r in server.chat_requests))
    assert json.loads((run_dir / "metrics.json").read_text())["counts"]["samples"] == n
