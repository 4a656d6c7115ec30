"""`harness` end to end on the embedded default (toy benchmark, tiny LLaVA, hf engine), and its bad-input paths."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.cli import main

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One harness cache (embedded model + toy data) for the module."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(autouse=True)
def _cache_env(cache, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(cache))


@pytest.fixture(scope="module")
def toy_root(cache):
    from tasks.toy import generate_toy_amber

    return generate_toy_amber(cache / "toy-copy", n_images=8, seed=0)


def run_cli(*args, capsys=None):
    code = main(["--log-level", "WARNING", *map(str, args)])
    out = capsys.readouterr() if capsys else None
    return code, out


def harness_subprocess(*args, cache, timeout=600, **kw):
    env = {**os.environ, "HARNESS_CACHE": str(cache)}
    return subprocess.run(
        [sys.executable, "-m", "harness", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=kw.get("cwd", REPO),
    )


def test_tasks_lists_toy(capsys):
    code, out = run_cli("tasks", capsys=capsys)
    assert code == 0
    assert "toy_amber" in out.out and "annotations.json" in out.out


def test_main_job_runs_and_resumes_byte_identically(tmp_path, capsys):
    out_dir = tmp_path / "runs"
    code, out = run_cli(
        "run", "--tasks", "toy_amber", "--limit", 6, "--output-path", out_dir, "--no-progress", capsys=capsys
    )
    assert code == 0, out.err
    run_dir = out_dir / "lab-llava-v1" / "toy_amber"
    assert "toy_amber" in out.out and "CHAIR" in out.out  # summary table
    manifest = json.loads((run_dir / "manifest.json").read_text())
    for key in ("model", "engine", "task", "decoding", "packages", "git", "command", "fingerprint"):
        assert key in manifest, key
    assert manifest["model"]["content_hash"] and manifest["engine"]["engine"] == "hf"
    assert manifest["engine"]["sampling_params"]["do_sample"] is False
    assert manifest["task"]["data_files"]["annotations.json"]
    preds = (run_dir / "predictions.jsonl").read_bytes()
    assert len(preds.splitlines()) == 6
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["counts"]["samples"] == 6 and metrics["counts"]["failed"] == 0

    # rerun: nothing generated again, same bytes
    code, _ = run_cli(
        "run", "--tasks", "toy_amber", "--limit", 6, "--output-path", out_dir, "--no-progress", capsys=capsys
    )
    assert code == 0
    runs = [json.loads(line) for line in (run_dir / "runs.jsonl").read_text().splitlines()]
    assert runs[-1]["generated"] == 0 and runs[-1]["resumed"] == 6
    assert (run_dir / "predictions.jsonl").read_bytes() == preds

    # a fresh directory, same command: byte-identical predictions
    code, _ = run_cli(
        "run", "--tasks", "toy_amber", "--limit", 6, "--output-path", tmp_path / "again", "--no-progress", capsys=capsys
    )
    assert code == 0
    assert (tmp_path / "again" / "lab-llava-v1" / "toy_amber" / "predictions.jsonl").read_bytes() == preds

    # a larger limit extends the same run
    code, _ = run_cli(
        "run", "--tasks", "toy_amber", "--limit", 8, "--output-path", out_dir, "--no-progress", capsys=capsys
    )
    assert code == 0
    assert (run_dir / "predictions.jsonl").read_bytes().startswith(preds)
    assert len((run_dir / "predictions.jsonl").read_bytes().splitlines()) == 8

    # another decoding setting never reuses these predictions
    code, out = run_cli(
        "run",
        "--tasks",
        "toy_amber",
        "--limit",
        6,
        "--output-path",
        out_dir,
        "--no-progress",
        "--max-new-tokens",
        3,
        capsys=capsys,
    )
    assert code == 2 and "other settings" in out.err and "max_new_tokens: None -> 3" in out.err
    code, _ = run_cli(
        "run",
        "--tasks",
        "toy_amber",
        "--limit",
        6,
        "--output-path",
        out_dir,
        "--no-progress",
        "--max-new-tokens",
        3,
        "--overwrite",
        capsys=capsys,
    )
    assert code == 0


def _assert_user_error(code, out, *needles):
    assert code == 2
    assert "Traceback" not in out.err
    for needle in needles:
        assert needle in out.err, (needle, out.err)


def test_unknown_task_suggests_names(capsys):
    code, out = run_cli("run", "--tasks", "toy_ambr", capsys=capsys)
    _assert_user_error(code, out, "unknown task 'toy_ambr'", "did you mean toy_amber")


def test_missing_model_path(tmp_path, capsys):
    code, out = run_cli("run", "--tasks", "toy_amber", "--model", tmp_path / "nope", capsys=capsys)
    _assert_user_error(code, out, "does not exist", "nope")


def test_unsupported_architecture(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    code, out = run_cli("run", "--tasks", "toy_amber", "--model", tmp_path, capsys=capsys)
    _assert_user_error(code, out, "unsupported architecture", "bert")


def test_data_root_missing_file(toy_root, tmp_path, capsys):
    root = tmp_path / "toy"
    shutil.copytree(toy_root, root)
    (root / "relation.json").unlink()
    code, out = run_cli("run", "--tasks", "toy_amber", "--data-root", root, capsys=capsys)
    _assert_user_error(code, out, str(root / "relation.json"), "comes from")


def test_malformed_query_file_names_line(toy_root, tmp_path, capsys):
    root = tmp_path / "toy"
    shutil.copytree(toy_root, root)
    query = root / "query" / "query_all.json"
    lines = query.read_text().splitlines()
    lines[3] = lines[3] + " ]]"
    query.write_text("\n".join(lines))
    code, out = run_cli("run", "--tasks", "toy_amber", "--data-root", root, "--no-progress", capsys=capsys)
    _assert_user_error(code, out, "query_all.json, line 4")


def test_corrupt_image_skipped_or_stopped(toy_root, tmp_path, capsys):
    root = tmp_path / "toy"
    shutil.copytree(toy_root, root)
    queries = json.loads((root / "query" / "query_all.json").read_text())
    first = queries[0]
    (root / "image" / first["image"]).write_bytes(b"not an image")
    common = ["run", "--tasks", "toy_amber", "--data-root", root, "--limit", 3, "--no-progress"]
    code, out = run_cli(*common, "--output-path", tmp_path / "skip", capsys=capsys)
    assert code == 0, out.err
    run_dir = tmp_path / "skip" / "lab-llava-v1" / "toy_amber"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["counts"]["failed"] == 1
    failure = json.loads((run_dir / "failures.jsonl").read_text())
    assert failure["id"] == str(first["id"])
    code, out = run_cli(*common, "--output-path", tmp_path / "stop", "--on-image-error", "stop", capsys=capsys)
    _assert_user_error(code, out, f"sample {first['id']}: cannot read image")


def test_unreachable_endpoint(tmp_path, capsys):
    code, out = run_cli(
        "run",
        "--tasks",
        "toy_amber",
        "--engine",
        "openai",
        "--model",
        "m",
        "--base-url",
        "http://127.0.0.1:9/v1",
        "--max-retries",
        0,
        "--timeout",
        2,
        "--output-path",
        tmp_path,
        capsys=capsys,
    )
    _assert_user_error(code, out, "cannot reach", "127.0.0.1:9")


def test_output_path_not_writable(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, out = run_cli("run", "--tasks", "toy_amber", "--output-path", blocker, capsys=capsys)
    _assert_user_error(code, out, "cannot be created", str(blocker))


def test_kill_9_then_resume_loses_and_duplicates_nothing(cache, tmp_path):
    args = ["run", "--tasks", "toy_amber", "--limit", 40, "--batch-size", 1, "--no-progress"]
    ref = harness_subprocess(*args, "--output-path", tmp_path / "ref", cache=cache)
    assert ref.returncode == 0, ref.stderr
    expected = (tmp_path / "ref" / "lab-llava-v1" / "toy_amber" / "predictions.jsonl").read_bytes()

    preds = tmp_path / "killed" / "lab-llava-v1" / "toy_amber" / "predictions.jsonl"
    env = {**os.environ, "HARNESS_CACHE": str(cache)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness", *map(str, args), "--output-path", str(tmp_path / "killed")],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if preds.exists() and len(preds.read_bytes().splitlines()) >= 5:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = preds.read_bytes()
    n_done = partial.count(b"\n")
    assert 5 <= n_done < 40
    resumed = harness_subprocess(*args, "--output-path", tmp_path / "killed", cache=cache)
    assert resumed.returncode == 0, resumed.stderr
    assert preds.read_bytes() == expected
    runs = [json.loads(line) for line in (preds.parent / "runs.jsonl").read_text().splitlines()]
    assert runs[-1]["resumed"] == n_done and runs[-1]["generated"] == 40 - n_done


def test_openai_engine_through_the_cli_keeps_the_key_secret(tmp_path, capsys, monkeypatch):
    try:
        from tests.fake_openai_server import FakeOpenAIServer
    except ImportError:
        from fake_openai_server import FakeOpenAIServer

    secret = "sk-test-0123456789abcdef"
    monkeypatch.setenv("MY_KEY", secret)
    with FakeOpenAIServer(models=("served",), api_key=secret) as server:
        code, out = run_cli(
            "run",
            "--tasks",
            "toy_amber",
            "--limit",
            4,
            "--engine",
            "openai",
            "--model",
            "served",
            "--base-url",
            server.base_url,
            "--api-key-env",
            "MY_KEY",
            "--output-path",
            tmp_path,
            "--no-progress",
            "--log-level",
            "DEBUG",
            capsys=capsys,
        )
        assert code == 0, out.err
        sent = server.requests[-1].body
    assert sent["temperature"] == 0 and sent["seed"] == 1234
    run_dir = tmp_path / "served" / "toy_amber"
    assert len((run_dir / "predictions.jsonl").read_text().splitlines()) == 4
    manifest = (run_dir / "manifest.json").read_text()
    assert json.loads(manifest)["engine"]["engine"] == "openai"
    for text in [manifest, out.out, out.err, *(p.read_text() for p in run_dir.iterdir())]:
        assert secret not in text


@pytest.mark.vllm
@pytest.mark.skipif(__import__("importlib").util.find_spec("vllm") is None, reason="vLLM is not installed")
def test_vllm_engine_through_the_cli_matches_hf(cache, tmp_path):
    """`harness run --engine vllm` in its own process (vLLM spawns its engine core) gives hf's predictions."""
    args = ["run", "--tasks", "toy_amber", "--limit", 6, "--no-progress", "--dtype", "float32"]
    hf = harness_subprocess(*args, "--engine", "hf", "--output-path", tmp_path / "hf", cache=cache)
    assert hf.returncode == 0, hf.stderr
    vllm = harness_subprocess(
        *args,
        "--engine",
        "vllm",
        "--enforce-eager",
        "--max-model-len",
        512,
        "--output-path",
        tmp_path / "vllm",
        cache=cache,
    )
    assert vllm.returncode == 0, vllm.stderr[-3000:]
    preds = [(tmp_path / e / "lab-llava-v1" / "toy_amber" / "predictions.jsonl").read_text() for e in ("hf", "vllm")]
    assert preds[0] == preds[1]


def test_cli_modules_load_no_heavy_library_at_import():
    """Starting the CLI (or reading a sweep or a report) imports no torch, transformers, pandas or numpy."""
    code = (
        "import sys, harness.cli, harness.evaluate, harness.sweep, reports.cli, trainers.cli; "
        "print(','.join(m for m in ('torch', 'transformers', 'pandas', 'numpy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
