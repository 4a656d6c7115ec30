"""Bad input and hostile conditions: full disk, unwritable --records, directories as --responses, overlong
responses, SIGTERM, misspelt task options, --limit past the end. Each is one line on stderr (exit 2 for user
errors; 130 / 143 for SIGINT / SIGTERM), no traceback, finished predictions kept.

``harness run`` runs here on the toy benchmark with an in-process engine (no model is loaded)."""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import signal
from pathlib import Path

import pytest

from harness.cli import main
from harness.engines.base import Engine
from harness.types import Response

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
AMBER = FIXTURES / "data" / "amber"
GOLDEN = FIXTURES / "golden" / "amber"


class FakeEngine(Engine):
    """Answers every request at once; ``hook(n)`` runs before the n-th response (0-based) is yielded."""

    name = "fake"
    n = 0
    hook = None
    text = "there is a red circle ."

    def generate(self, requests):
        for r in requests:
            FakeEngine.n += 1
            if FakeEngine.hook is not None:
                FakeEngine.hook(FakeEngine.n - 1)
            yield Response(r.sample_id, FakeEngine.text, "stop", 3, 2)

    def describe(self):
        return {"engine": "fake", "sampling_params": {}}


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory):
    from tasks.toy import generate_toy_amber

    return generate_toy_amber(tmp_path_factory.mktemp("toy") / "toy", n_images=4, seed=0)


@pytest.fixture
def fake_engine(monkeypatch):
    import harness.engines
    import harness.evaluate

    FakeEngine.n = 0
    FakeEngine.hook = None
    FakeEngine.text = "there is a red circle ."
    monkeypatch.setattr(
        harness.engines, "create_engine", lambda name, model, decoding, options: FakeEngine(model, decoding, options)
    )
    monkeypatch.setattr(
        harness.evaluate,
        "_describe_model",
        lambda args, engine: ("m", {"name": "fake", "path": None, "content_hash": None}, "fake", None),
    )
    return FakeEngine


def run(tmp_path, toy_root, *extra):
    return [
        "--log-level",
        "WARNING",
        "run",
        "--tasks",
        "toy_amber",
        "--data-root",
        str(toy_root),
        "--engine",
        "hf",
        "--output-path",
        str(tmp_path / "runs"),
        "--no-progress",
        "--batch-size",
        "2",
        *map(str, extra),
    ]


def run_dir(tmp_path):
    return tmp_path / "runs" / "fake" / "toy_amber"


def one_line_error(code, err, *needles, status=2):
    assert code == status, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("harness:")]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], (needle, err)
    return lines[0]


def score(capsys, *args):
    code = main(["--log-level", "WARNING", "score", *map(str, args)])
    out = capsys.readouterr()
    return code, out


# ------------------------------------------------------------------------------------------------- disk full
@pytest.mark.parametrize("where", ["append", "close"])
def test_disk_full_during_run_is_one_line_and_keeps_finished_work(
    tmp_path, toy_root, fake_engine, capsys, monkeypatch, where
):
    from harness.store import RunStore

    real = getattr(RunStore, where)
    calls = {"n": 0}

    def full(self, *args, **kw):
        calls["n"] += 1
        if where == "append" and calls["n"] <= 2:
            return real(self, *args, **kw)  # two records are written, the third finds the disk full
        if where == "close" and self._fh is None:
            return real(self, *args, **kw)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(RunStore, where, full)
    code = main(run(tmp_path, toy_root))
    preds = run_dir(tmp_path) / "predictions.jsonl"
    line = one_line_error(
        code,
        capsys.readouterr().err,
        "No space left on device",
        "errno 28",
        str(preds),
        "finished predictions are kept",
        "rerun the same command",
    )
    assert "free some space" in line
    kept = preds.read_text().splitlines()
    assert len(kept) >= 2 and all(json.loads(x)["id"] for x in kept)

    monkeypatch.setattr(RunStore, where, real)  # space freed: the rerun resumes
    code = main(run(tmp_path, toy_root))
    assert code == 0
    runs = [json.loads(x) for x in (run_dir(tmp_path) / "runs.jsonl").read_text().splitlines()]
    assert runs[-1]["resumed"] == (2 if where == "append" else 16)


@pytest.mark.parametrize("err", [errno.EDQUOT, errno.EROFS, errno.EACCES])
def test_quota_readonly_and_permission_errors_while_writing_metrics(
    tmp_path, toy_root, fake_engine, capsys, monkeypatch, err
):
    import harness.store

    def refuse(path, text):
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(harness.store, "atomic_write_text", refuse)
    code = main(run(tmp_path, toy_root))
    one_line_error(
        code, capsys.readouterr().err, os.strerror(err), str(run_dir(tmp_path)), "finished predictions are kept"
    )
    assert len((run_dir(tmp_path) / "predictions.jsonl").read_text().splitlines()) == 16


def test_disk_full_while_logging_the_run(tmp_path, toy_root, fake_engine, capsys, monkeypatch):
    from harness.store import RunStore

    def full(self, info):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(RunStore, "log_run", full)
    code = main(run(tmp_path, toy_root))
    one_line_error(code, capsys.readouterr().err, "runs.jsonl", "No space left on device")
    assert (run_dir(tmp_path) / "metrics.json").exists()


# --------------------------------------------------------------------------------------------- SIGTERM / SIGINT
def test_sigterm_is_handled_like_ctrl_c_and_logged(tmp_path, toy_root, fake_engine, capsys):
    def hook(n):
        if n == 5:
            os.kill(os.getpid(), signal.SIGTERM)

    fake_engine.hook = hook
    before = signal.getsignal(signal.SIGTERM)
    code = main(run(tmp_path, toy_root))
    one_line_error(code, capsys.readouterr().err, "SIGTERM", "finished predictions are kept", "rerun", status=143)
    assert signal.getsignal(signal.SIGTERM) is before
    preds = (run_dir(tmp_path) / "predictions.jsonl").read_text().splitlines()
    assert 4 <= len(preds) <= 6  # the ordered prefix written before the signal
    runs = [json.loads(x) for x in (run_dir(tmp_path) / "runs.jsonl").read_text().splitlines()]
    assert runs[-1]["interrupted"] == "SIGTERM"
    assert runs[-1]["generated"] == len(preds) and runs[-1]["resumed"] == 0 and runs[-1]["failed"] == 0

    fake_engine.hook = None
    assert main(run(tmp_path, toy_root)) == 0  # the rerun resumes
    runs = [json.loads(x) for x in (run_dir(tmp_path) / "runs.jsonl").read_text().splitlines()]
    assert runs[-1]["resumed"] == len(preds) and "interrupted" not in runs[-1]


def test_ctrl_c_is_logged_as_sigint(tmp_path, toy_root, fake_engine, capsys):
    def hook(n):
        if n == 3:
            raise KeyboardInterrupt

    fake_engine.hook = hook
    code = main(run(tmp_path, toy_root))
    one_line_error(code, capsys.readouterr().err, "interrupted", "finished predictions are kept", status=130)
    runs = [json.loads(x) for x in (run_dir(tmp_path) / "runs.jsonl").read_text().splitlines()]
    preds = (run_dir(tmp_path) / "predictions.jsonl").read_text().splitlines()
    assert runs[-1]["interrupted"] == "SIGINT" and runs[-1]["generated"] == len(preds) == 3


# --------------------------------------------------------------------------------------------- task options
def test_misspelt_option_names_the_closest_keys(capsys, tmp_path, toy_root):
    code, out = score(
        capsys,
        "amber",
        "--responses",
        GOLDEN / "amber_all_responses.json",
        "--data-root",
        AMBER,
        "--option",
        "amber_simlarity=none",
    )
    one_line_error(code, out.err, "amber_simlarity", "did you mean amber_similarity")
    assert out.out == ""
    code = main(
        [
            "run",
            "--tasks",
            "toy_amber",
            "--option",
            "amber_simlarity=none",
            "--data-root",
            str(toy_root),
            "--output-path",
            str(tmp_path),
        ]
    )
    one_line_error(code, capsys.readouterr().err, "amber_simlarity", "amber_similarity")
    assert not (tmp_path / "lab-llava-v1").exists()


def test_option_of_another_task_and_flag_for_another_task(capsys):
    code = main(["run", "--tasks", "pope", "--option", "amber_answer=strip"])
    one_line_error(code, capsys.readouterr().err, "'amber_answer'", "pope", "it is an option of amber")
    code = main(["run", "--tasks", "pope", "--amber-similarity", "none"])
    one_line_error(code, capsys.readouterr().err, "--amber-similarity", "pope")
    code = main(["run", "--tasks", "pope", "--option", "pope_sufix=none"])
    one_line_error(code, capsys.readouterr().err, "did you mean pope_suffix")


def test_every_option_a_task_reads_is_declared():
    from harness.task import all_tasks

    patterns = [
        r"options\.get\(\s*\"(\w+)\"",
        r"choice_option\(\s*\"(\w+)\"",
        r"_bool_option\(self\.options,\s*\"(\w+)\"",
    ]
    by_module: dict[str, set[str]] = {}
    for cls in all_tasks().values():
        by_module.setdefault(cls.__module__, set()).update(cls.option_names)
    from tasks.lmms import LmmsTask

    by_module.setdefault(LmmsTask.__module__, set()).update(LmmsTask.option_names)
    checked = 0
    for module, declared in by_module.items():
        source = (REPO / (module.replace(".", "/") + ".py")).read_text()
        read = {m for p in patterns for m in re.findall(p, source)}
        if module == "tasks.toy":
            read |= set(by_module["tasks.amber"])
        assert read <= declared, (module, read - declared)
        checked += len(read)
    assert checked >= 20


# ------------------------------------------------------------------------------------------------- --limit
def test_limit_past_the_end_warns_once(tmp_path, toy_root, fake_engine, caplog):
    with caplog.at_level(logging.WARNING, logger="harness"):
        assert main(run(tmp_path, toy_root, "--limit", 200)) == 0
    hits = [r.getMessage() for r in caplog.records if "--limit" in r.getMessage()]
    assert len(hits) == 1 and "toy_amber" in hits[0] and "200" in hits[0] and "16 samples" in hits[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="harness"):
        assert main(run(tmp_path, toy_root, "--limit", 16)) == 0
    assert not [r for r in caplog.records if "--limit" in r.getMessage()]


# ------------------------------------------------------------------------------------ score: paths and lengths
def test_records_path_is_checked_before_scoring(capsys, tmp_path, monkeypatch):
    from tasks.amber import _AmberTask

    def never(*a, **kw):
        raise AssertionError("scored although --records cannot be written")

    monkeypatch.setattr(_AmberTask, "score", never)
    code, out = score(
        capsys,
        "amber",
        "--responses",
        GOLDEN / "amber_all_responses.json",
        "--data-root",
        AMBER,
        "--amber-similarity",
        "none",
        "--records",
        "/nonexistent/x.jsonl",
    )
    one_line_error(code, out.err, "--records /nonexistent/x.jsonl", "/nonexistent", "does not exist")
    code, out = score(
        capsys,
        "amber",
        "--responses",
        GOLDEN / "amber_all_responses.json",
        "--data-root",
        AMBER,
        "--amber-similarity",
        "none",
        "--records",
        tmp_path,
    )
    one_line_error(code, out.err, str(tmp_path), "is a directory")


def test_records_write_failure_is_one_line(capsys, tmp_path, monkeypatch):
    real = Path.write_text

    def full(self, *a, **kw):
        if self.name == "records.jsonl":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *a, **kw)

    monkeypatch.setattr(Path, "write_text", full)
    code, out = score(
        capsys,
        "amber",
        "--responses",
        GOLDEN / "amber_all_responses.json",
        "--data-root",
        AMBER,
        "--amber-similarity",
        "none",
        "--records",
        tmp_path / "records.jsonl",
    )
    one_line_error(code, out.err, "records.jsonl", "No space left on device")


def test_responses_directory_or_missing_file(capsys, tmp_path):
    code, out = score(capsys, "amber", "--responses", tmp_path, "--data-root", AMBER, "--amber-similarity", "none")
    one_line_error(code, out.err, str(tmp_path), "is a directory", "amber")
    code, out = score(
        capsys, "amber", "--responses", tmp_path / "nope.json", "--data-root", AMBER, "--amber-similarity", "none"
    )
    one_line_error(code, out.err, "nope.json", "not found")
    for task in ("object_halbench", "mmvp", "textvqa", "scienceqa_img", "mmvet", "llava_bench", "mmhal"):
        code, out = score(capsys, task, "--responses", tmp_path, "--data-root", tmp_path)
        one_line_error(code, out.err, "is a directory")
    # CV-Bench reads folders of answer files: the folder reaches its own check
    code, out = score(capsys, "cvbench", "--responses", tmp_path)
    one_line_error(code, out.err, "holds no .jsonl answer files")


def test_readers_name_a_directory():
    from harness.errors import DataError
    from harness.io import iter_jsonl, read_json

    with pytest.raises(DataError, match="is a directory"):
        read_json(FIXTURES)
    with pytest.raises(DataError, match="is a directory"):
        list(iter_jsonl(FIXTURES))


def test_overlong_response_is_refused_with_its_sample_id(capsys, tmp_path):
    from harness.task import MAX_RESPONSE_CHARS

    assert MAX_RESPONSE_CHARS == 100_000
    rows = json.loads((GOLDEN / "amber_all_responses.json").read_text())
    rows[1]["response"] = "a cat " * 20_000  # 120,000 characters: hours of NLTK tokenizing at 50 MB
    path = tmp_path / "long.json"
    path.write_text(json.dumps(rows))
    code, out = score(capsys, "amber", "--responses", path, "--data-root", AMBER, "--amber-similarity", "none")
    one_line_error(code, out.err, f"sample {rows[1]['id']}", "120,000 characters", "100,000", "long.json")
    rows[1]["response"] = "a" * MAX_RESPONSE_CHARS  # at the cap: scored
    path.write_text(json.dumps(rows[:3]))
    code, out = score(capsys, "amber", "--responses", path, "--data-root", AMBER, "--amber-similarity", "none")
    assert code == 0, out.err


def test_overlong_response_in_a_run_is_refused(tmp_path, toy_root, fake_engine, capsys):
    fake_engine.text = "x" * 100_001
    code = main(run(tmp_path, toy_root, "--limit", 3))
    line = one_line_error(code, capsys.readouterr().err, "100,001 characters", "predictions.jsonl", "sample ")
    assert "toy_amber" in line
    assert len((run_dir(tmp_path) / "predictions.jsonl").read_text().splitlines()) == 3


def test_sigterm_of_a_harness_process(tmp_path, toy_root):
    """The real thing: `kill -TERM` of a `harness run` process (openai engine against a local fake server)."""
    import subprocess
    import sys
    import time

    try:
        from tests.fake_openai_server import OK, FakeOpenAIServer
    except ImportError:
        from fake_openai_server import OK, FakeOpenAIServer

    preds = tmp_path / "served" / "toy_amber" / "predictions.jsonl"
    with FakeOpenAIServer(models=("served",)) as server:
        server.script(*[OK()] * 3, *[OK(delay_s=1.0)] * 20)
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "harness",
                "run",
                "--tasks",
                "toy_amber",
                "--data-root",
                str(toy_root),
                "--engine",
                "openai",
                "--model",
                "served",
                "--base-url",
                server.base_url,
                "--concurrency",
                "1",
                "--batch-size",
                "1",
                "--max-retries",
                "0",
                "--output-path",
                str(tmp_path),
                "--no-progress",
            ],
            cwd=REPO,
            env={**os.environ, "OPENAI_API_KEY": "EMPTY"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if preds.exists() and len(preds.read_bytes().splitlines()) >= 3:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    one_line_error(proc.returncode, err, "SIGTERM", "finished predictions are kept", status=143)
    runs = [json.loads(x) for x in (preds.parent / "runs.jsonl").read_text().splitlines()]
    assert runs[-1]["interrupted"] == "SIGTERM" and runs[-1]["generated"] == len(preds.read_bytes().splitlines())
