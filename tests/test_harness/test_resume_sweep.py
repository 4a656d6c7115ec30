"""An interrupted `harness sweep` ends like an uninterrupted one: stopped at a job boundary or inside a job (SFT
killed after a checkpoint, after its final save but before it was marked done), the rerun resumes training from the
checkpoint, never retrains a complete verified model, and its index, models and metrics equal those of a sweep that
ran straight through. The jobs die with the sweep (SIGTERM, SIGKILL); one process at a time runs a job, one sweep at a
time writes a sweep folder."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from harness import sweep
from harness.cli import main
from harness.sweep import JobFailed, RunIndex, SweepSettings, run_sweep

REPO = Path(__file__).resolve().parents[2]


# ===================================================================================== real training, in process
class InProcessRunner:
    """Runs each job's own `harness` command line (with --resume when it has checkpoints) in this process;
    ``after(job, output)`` runs once a job returned (to simulate a kill there)."""

    def __init__(self, after=None):
        self.calls: list[str] = []
        self.after = after

    def __call__(self, job, output: Path, log_path: Path) -> None:
        self.calls.append(job.id)
        argv = sweep.job_arguments(job, output)
        argv = argv[argv.index("harness") + 1 :]
        code = main(["--log-level", "WARNING", *argv])
        if code != 0:
            raise JobFailed(f"exit status {code}")
        if self.after is not None:
            self.after(job, output)


def _settings(output: Path) -> SweepSettings:
    train = {
        "lora": False,
        "modules": ["language_model", "projector"],
        "batch_size": 2,
        "grad_accum": 1,
        "lr": 1e-3,
        "lr_scheduler": "cosine",
        "warmup_ratio": 0.0,
        "bf16": False,
        "report_to": ["none"],
        "save_steps": 2,
        "save_total_limit": None,
        "max_steps": 4,
    }
    return SweepSettings.from_mapping(
        {
            "methods": ["dpo"],
            "data": "toy",
            "toy_pairs": 8,
            "data_sizes": ["8"],
            "toy_captions": 8,
            "tasks": ["toy_amber"],
            "limit": 2,
            "engine": "hf",
            "seeds": [7],
            "output": str(output),
            "no_report": True,
            "sft": {"data": "toy", **train},
            "train": train,
            "eval": {"batch_size": 2},
        }
    )


def _snapshot(output: Path) -> dict:
    """What must not depend on interruptions: each job's state and fingerprint, the models' tensors, the metrics."""
    from safetensors.torch import load_file

    index = {e["id"]: (e["state"], e["fingerprint"]) for e in RunIndex(output).entries().values()}
    models = {p.parent.name: load_file(str(p)) for p in sorted((output / "models").glob("*/model.safetensors"))}
    metrics = {
        str(p.relative_to(output)): json.loads(p.read_text()) for p in sorted(output.glob("runs/*/*/metrics.json"))
    }
    return {"index": index, "models": models, "metrics": metrics}


def _assert_same(got: dict, want: dict) -> None:
    import torch

    assert got["index"] == want["index"]
    assert {v[0] for v in got["index"].values()} == {"done"}
    assert got["models"].keys() == want["models"].keys() == {"sft", "dpo-8-b0.05-e2-s7"}
    for name, tensors in want["models"].items():
        assert tensors.keys() == got["models"][name].keys()
        diff = max(float((tensors[k] - got["models"][name][k]).abs().max()) for k in tensors)
        assert diff == 0.0, (name, diff)
    assert got["metrics"] == want["metrics"] and len(want["metrics"]) == 2
    # the SFT stage trained: its model is not the embedded starting model
    from harness.models.tiny import ensure_embedded_model
    from tasks.toy import corpus

    base = ensure_embedded_model(corpus())
    sft = got["models"]["sft"]
    from safetensors.torch import load_file

    start = load_file(str(Path(base) / "model.safetensors"))
    assert any(not torch.equal(sft[k], start[k]) for k in sft)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("sweep-ref") / "sw"
    runner = InProcessRunner()
    assert run_sweep(_settings(out), runner=runner, echo=lambda _: None).ok
    return _snapshot(out)


def _killed_after_sft(keep_checkpoint: int | None):
    """``after`` hook: a kill once SFT returned. ``keep_checkpoint`` None: after its final save (before done.json);
    N: right after checkpoint N (later checkpoints and the final model not written yet)."""

    def after(job, output):
        if job.id != "sft":
            return
        if keep_checkpoint is not None:
            folder = output / job.outputs["model"]
            for ckpt in (folder / "checkpoints").iterdir():
                if int(ckpt.name.split("-")[1]) > keep_checkpoint:
                    shutil.rmtree(ckpt)
            for p in folder.iterdir():
                if p.is_file():
                    p.unlink()
        raise KeyboardInterrupt

    return after


@pytest.mark.parametrize("keep_checkpoint", [None, 2])
def test_a_sweep_killed_in_its_sft_stage_ends_like_an_uninterrupted_one(keep_checkpoint, uninterrupted, tmp_path):
    out = tmp_path / "sw"
    first = InProcessRunner(after=_killed_after_sft(keep_checkpoint))
    with pytest.raises(KeyboardInterrupt):
        run_sweep(_settings(out), runner=first, echo=lambda _: None)
    assert first.calls == ["sft"]
    assert RunIndex(out).entries()["sft"]["state"] == "pending"
    second = InProcessRunner()
    assert run_sweep(_settings(out), runner=second, echo=lambda _: None).ok
    if keep_checkpoint is None:  # complete and verified: not trained again
        assert second.calls == ["eval-sft", "train-dpo-8-b0.05-e2-s7", "eval-dpo-8-b0.05-e2-s7"]
        assert json.loads((out / "jobs/sft/done.json").read_text())["verified_existing"] is True
    else:  # resumed from checkpoint-2, to the same weights
        assert second.calls[0] == "sft"
        log = [json.loads(x) for x in (out / "models/sft/train_log.jsonl").read_text().splitlines()]
        assert [e["step"] for e in log if "loss" in e] == [1, 2, 3, 4]
    _assert_same(_snapshot(out), uninterrupted)


def test_an_sft_rerun_that_trains_nothing_is_not_marked_done(tmp_path):
    """The old failure: a resumed SFT that saved the starting weights. Such a model is refused (the job fails,
    nothing downstream runs on it) instead of being marked done."""
    from trainers.lab_model import default_model

    out = tmp_path / "sw"
    base = Path(default_model(progress=False))  # the sweep's starting model when none is given

    def base_weights(job, output):
        if job.id == "sft":
            from trainers.trainer import weights_record

            folder = output / job.outputs["model"]
            shutil.copy(base / "model.safetensors", folder / "model.safetensors")
            manifest = json.loads((folder / "train_manifest.json").read_text())
            manifest["weights"] = weights_record(folder)
            (folder / "train_manifest.json").write_text(json.dumps(manifest))

    s = _settings(out)
    s.methods = ["dpo"]
    result = run_sweep(s, runner=InProcessRunner(after=base_weights), echo=lambda _: None)
    assert result.failed == ["sft"] and set(result.blocked) == {
        "eval-sft",
        "train-dpo-8-b0.05-e2-s7",
        "eval-dpo-8-b0.05-e2-s7",
    }
    assert "identical to its starting model" in RunIndex(out).entries()["sft"]["error"]


# ===================================================================================== processes: signals, locks
FAKE_JOB = textwrap.dedent('''
    """A stand-in for `python -m harness ...`: writes the job's outputs (a small model with its manifest, or metrics)
    and records each start; FAKE_HANG=JOB_ID:before|after makes it wait (for a kill) before or after writing."""
    import json, os, shutil, sys, time
    from pathlib import Path

    import numpy as np
    from safetensors.numpy import save_file

    spec, output = Path(sys.argv[1]), Path(sys.argv[2])
    job = json.loads(spec.read_text())
    folder = spec.parent
    n = len(list(folder.glob("started-*")))
    (folder / f"started-{n}").write_text(str(os.getpid()))
    hang = os.environ.get("FAKE_HANG", "").split(",")

    def wait():
        while True:
            time.sleep(0.05)

    if job["id"] + ":before" in hang:
        wait()
    if job["kind"] in ("sft", "train"):
        start = Path(job["train_config"]["model"]) if job["train_config"].get("model") else output / "fake-base"
        if not start.exists():  # parallel jobs share one fake base: built aside, then renamed into place whole
            part = start.with_name(f"{start.name}.part{os.getpid()}")
            part.mkdir(parents=True)
            (part / "config.json").write_text("{}")
            save_file({"w": np.zeros(4, np.float32)}, str(part / "model.safetensors"))
            try:
                part.rename(start)
            except OSError:  # another job's base is in place
                shutil.rmtree(part)
        model = output / job["outputs"]["model"]
        model.mkdir(parents=True, exist_ok=True)
        (model / "config.json").write_text("{}")
        save_file({"w": np.arange(4, dtype=np.float32) + len(job["id"])}, str(model / "model.safetensors"))
        (model / "train_manifest.json").write_text(json.dumps(
            {"config": job["train_config"], "model": {"path": str(start.resolve())}, "global_step": 1}))
    else:
        for rel in job["expect"]:
            (output / rel).parent.mkdir(parents=True, exist_ok=True)
            (output / rel).write_text(json.dumps({"job": job["id"]}))
    if job["id"] + ":after" in hang:
        wait()
''')

DRIVER = textwrap.dedent('''
    """`harness sweep` whose jobs run FAKE_JOB instead of `python -m harness` (through the real supervisor)."""
    import os, sys

    import harness.sweep as sw
    from harness.cli import main

    sw.locks.JOB_LOCK_WAIT_S = float(os.environ.get("JOB_LOCK_WAIT_S", "10"))

    def command(self, job, output):
        return [sys.executable, os.environ["FAKE_JOB"], str(sw.job_dir(output, job.id) / sw.SPEC_FILE), str(output)]

    sw.SubprocessRunner.command = command
    sys.exit(main(sys.argv[1:]))
''')

TRAIN = "train-dpo-10-b0.05-e2-s3"


@pytest.fixture(scope="module")
def fake(tmp_path_factory) -> dict:
    from trainers.data import PreferenceExample, write_preferences

    root = tmp_path_factory.mktemp("fake-jobs")
    (root / "job.py").write_text(FAKE_JOB)
    (root / "driver.py").write_text(DRIVER)
    prefs = root / "prefs.jsonl"
    write_preferences(
        prefs, [PreferenceExample(f"p{i}", f"q {i}?", None, None, f"yes {i}", f"no {i}") for i in range(12)]
    )
    return {"root": root, "prefs": prefs}


def _sweep_args(fake: dict, out: Path, extra: tuple[str, ...] = ()) -> list[str]:
    return [
        sys.executable,
        str(fake["root"] / "driver.py"),
        "--log-level",
        "WARNING",
        "sweep",
        "--methods",
        "dpo",
        "--data-sizes",
        "10",
        "--data",
        str(fake["prefs"]),
        "--tasks",
        "toy_amber",
        "--seeds",
        "3",
        "--output",
        str(out),
        "--no-report",
        *extra,
    ]


def _start(fake: dict, out: Path, extra: tuple[str, ...] = (), **env: str) -> subprocess.Popen:
    full = {**os.environ, "FAKE_JOB": str(fake["root"] / "job.py"), "PYTHONPATH": str(REPO), **env}
    return subprocess.Popen(
        _sweep_args(fake, out, extra), env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _run(fake: dict, out: Path, extra: tuple[str, ...] = (), **env: str) -> tuple[int, str]:
    proc = _start(fake, out, extra, **env)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _wait_for(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)


def _started(out: Path, job_id: str) -> list[int]:
    return [int(p.read_text()) for p in sorted((out / "jobs" / job_id).glob("started-*"))]


def _fake_snapshot(out: Path) -> dict:
    index = {e["id"]: (e["state"], e["fingerprint"]) for e in RunIndex(out).entries().values()}
    files = {
        str(p.relative_to(out)): p.read_bytes()
        for p in sorted(out.glob("models/*/model.safetensors")) + sorted(out.glob("runs/*/*/metrics.json"))
    }
    return {"index": index, "files": files}


@pytest.fixture(scope="module")
def fake_reference(fake, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("fake-ref") / "sw"
    code, err = _run(fake, out)
    assert code == 0, err
    snap = _fake_snapshot(out)
    assert {s for s, _ in snap["index"].values()} == {"done"} and len(snap["files"]) == 3
    return snap


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc")
@pytest.mark.parametrize(
    "how, when", [(signal.SIGTERM, "before"), (signal.SIGKILL, "before"), (signal.SIGINT, "after")]
)
def test_the_running_job_dies_with_the_sweep_and_the_rerun_ends_the_same(how, when, fake, fake_reference, tmp_path):
    """Killed inside a job (``before`` it wrote its outputs) or at its end (``after``: outputs written, not marked
    done): the job's processes die with the sweep, even on SIGKILL; the rerun runs what is left and ends like an
    uninterrupted sweep (a complete training job is not run again). While the first sweep runs, a second one on
    the same folder is refused with one line naming the holder."""
    out = tmp_path / "sw"
    proc = _start(fake, out, FAKE_HANG=f"{TRAIN}:{when}")
    _wait_for(lambda: _started(out, TRAIN))
    if when == "after":
        _wait_for(lambda: (out / "models/dpo-10-b0.05-e2-s3/train_manifest.json").is_file())
    job_pid = _started(out, TRAIN)[0]
    assert _alive(job_pid)
    if how == signal.SIGTERM:
        code, err = _run(fake, out)
        assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert f"another `harness sweep` is running on {out}: pid {proc.pid} on {socket.gethostname()} (since " in err
        assert len(_started(out, TRAIN)) == 1  # the second sweep ran nothing
    proc.send_signal(how)
    _, err = proc.communicate(timeout=30)
    if how == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
    else:
        assert proc.returncode == 128 + how, err
        lines = [x for x in err.splitlines() if x.startswith("harness:")]
        expected = f"harness: sweep interrupted ({how.name}): job {TRAIN} was stopped; rerun the same command to resume"
        assert lines == [expected], err
        assert "Traceback" not in err
    _wait_for(lambda: not _alive(job_pid), timeout=15)  # the job did not outlive the sweep

    code, err = _run(fake, out)
    assert code == 0, err
    assert len(_started(out, TRAIN)) == (1 if when == "after" else 2)  # complete and verified: not run again
    assert len(_started(out, "eval-base")) == 1
    assert _fake_snapshot(out) == fake_reference


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc")
def test_a_parallel_sweep_runs_jobs_side_by_side_and_an_interrupt_stops_them_all(fake, tmp_path):
    """--parallel 2: two training jobs run at once (both hang; with one slot the second would never start). SIGTERM
    stops both, leaves both pending and names them; the rerun finishes everything, each job run once more."""
    out = tmp_path / "sw"
    a, b = "train-dpo-10-b0.05-e2-s3", "train-dpo-10-b0.05-e2-s4"
    extra = ("--seeds", "3,4", "--parallel", "2")
    proc = _start(fake, out, extra, FAKE_HANG=f"{a}:before,{b}:before")
    _wait_for(lambda: _started(out, a) and _started(out, b))
    pids = [_started(out, a)[0], _started(out, b)[0]]
    assert all(_alive(p) for p in pids)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM, err
    lines = [x for x in err.splitlines() if x.startswith("harness:")]
    assert lines == [
        f"harness: sweep interrupted (SIGTERM): jobs {a}, {b} were stopped; rerun the same command to resume"
    ], err
    _wait_for(lambda: not any(_alive(p) for p in pids), timeout=15)
    entries = RunIndex(out).entries()
    assert entries[a]["state"] == entries[b]["state"] == "pending"
    assert entries["eval-base"]["state"] == "done"

    code, err = _run(fake, out, extra)
    assert code == 0, err
    assert {e["state"] for e in RunIndex(out).entries().values()} == {"done"}
    assert (len(_started(out, a)), len(_started(out, b)), len(_started(out, "eval-base"))) == (2, 2, 1)


def test_a_job_still_run_by_another_process_is_never_run_twice(fake, tmp_path):
    """A job whose lock is held (its processes outlived their sweep, or another machine runs it) is not started
    again: a one-line error names the holder. The lock is the OS's: it goes with the holder."""
    out = tmp_path / "sw"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from harness.sweep import try_lock, _lock_info
        fd = try_lock(Path({str(out / "jobs" / TRAIN / "lock")!r}), _lock_info(job={TRAIN!r}))
        print("held" if fd is not None else "busy", flush=True)
        time.sleep(60)
    """),
        ],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        code, err = _run(fake, out, JOB_LOCK_WAIT_S="0.3")
        assert code == 2 and "Traceback" not in err, err
        assert len(err.strip().splitlines()) == 1, err
        assert f"job {TRAIN} is being run by another process: pid {holder.pid} on {socket.gethostname()}" in err
    finally:
        holder.kill()
        holder.wait()
    code, err = _run(fake, out)  # the holder is gone: the lock with it
    assert code == 0, err


def test_checkpoints_of_another_start_model_are_moved_aside_not_resumed(tmp_path, tiny_llava_path, monkeypatch):
    """A downstream job whose checkpoints were made from an older version of its starting model (its upstream job
    trained again) trains from the start; its old checkpoints are kept aside, never resumed."""
    import types

    from harness import sweep
    from harness.models import content_hash

    out = tmp_path / "sweep"
    model_dir = out / "models" / "dpo"
    (model_dir / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    job = types.SimpleNamespace(
        kind="train",
        outputs={"model": "models/dpo"},
        train_config={"model": tiny_llava_path},
        command=lambda: ["train"],
        id="dpo",
    )
    monkeypatch.setattr(sweep.local, "has_checkpoint", lambda folder: (folder / "checkpoint-2").is_dir())
    (model_dir / "start_model.json").write_text(
        json.dumps({"path": tiny_llava_path, "content_hash": content_hash(tiny_llava_path)})
    )
    assert sweep.job_arguments(job, out) == ["train", "--resume"]  # same start model: resumed
    (model_dir / "start_model.json").write_text(json.dumps({"path": tiny_llava_path, "content_hash": "0" * 64}))
    assert sweep.job_arguments(job, out) == ["train"]  # another start model: from the start
    assert not (model_dir / "checkpoints").exists()
    assert [p.name.startswith("checkpoints.stale-") for p in model_dir.iterdir() if p.is_dir()] == [True]
