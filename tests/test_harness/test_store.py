import json
import os

import pytest

from harness.errors import DataError, HarnessError
from harness.io import iter_jsonl, read_json
from harness.store import RunStore, fingerprint

SETTINGS = {"model": {"path": "/m", "content_hash": "abc"}, "engine": {"engine": "hf"}, "task": {"name": "t"}}


def _store(tmp_path, settings=SETTINGS, **kw):
    store = RunStore(tmp_path / "run")
    store.open({"model": {"path": "/m"}}, settings, **kw)
    return store


def test_manifest_written_with_fingerprint(tmp_path):
    store = _store(tmp_path)
    manifest = json.loads((store.dir / "manifest.json").read_text())
    assert manifest["fingerprint"] == fingerprint(SETTINGS)
    assert manifest["settings"] == SETTINGS


def test_append_and_resume(tmp_path):
    store = _store(tmp_path)
    store.append([{"id": "1", "response": "a"}, {"id": "2", "response": "b"}])
    store.append([{"id": "3", "response": "c"}])
    again = _store(tmp_path)
    assert list(again.load_finished()) == ["1", "2", "3"]


def test_truncated_last_line_is_dropped_and_file_repaired(tmp_path):
    store = _store(tmp_path)
    store.append([{"id": "1", "response": "a"}])
    with store.predictions_path.open("a") as fh:
        fh.write('{"id": "2", "resp')  # what kill -9 in the middle of a write leaves
    finished = store.load_finished()
    assert list(finished) == ["1"]
    assert store.predictions_path.read_text() == '{"id":"1","response":"a"}\n'
    store.append([{"id": "2", "response": "b"}])
    assert list(store.load_finished()) == ["1", "2"]


def test_corrupt_interior_line_names_file_and_line(tmp_path):
    store = _store(tmp_path)
    store.predictions_path.write_text('{"id": "1"}\nnot json\n{"id": "3"}\n')
    with pytest.raises(DataError) as err:
        store.load_finished()
    assert "predictions.jsonl, line 2" in str(err.value)


def test_duplicate_ids_rejected(tmp_path):
    store = _store(tmp_path)
    store.predictions_path.write_text('{"id": "1"}\n{"id": "1"}\n')
    with pytest.raises(DataError, match="duplicate prediction for sample 1"):
        store.load_finished()


def test_other_settings_never_reuse_predictions(tmp_path):
    store = _store(tmp_path)
    store.append([{"id": "1", "response": "a"}])
    changed = {**SETTINGS, "engine": {"engine": "vllm"}}
    with pytest.raises(HarnessError) as err:
        _store(tmp_path, changed)
    assert "engine.engine: 'hf' -> 'vllm'" in str(err.value)
    assert store.predictions_path.exists()  # nothing lost
    fresh = _store(tmp_path, changed, overwrite=True)
    assert fresh.load_finished() == {}


def test_predictions_without_manifest_are_not_trusted(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "predictions.jsonl").write_text('{"id": "1"}\n')
    with pytest.raises(HarnessError, match="no manifest.json"):
        RunStore(run).open({}, SETTINGS)


def test_output_dir_blocked_by_a_file(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(HarnessError, match="cannot be created"):
        RunStore(blocker / "run").open({}, SETTINGS)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores permission bits")
def test_output_dir_read_only(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    with pytest.raises(HarnessError, match="cannot be created|not writable"):
        RunStore(ro / "run").open({}, SETTINGS)


def test_read_json_and_jsonl_name_the_line(tmp_path):
    bad = tmp_path / "a.json"
    bad.write_text('{\n  "a": 1,\n  "b": \n}\n')
    with pytest.raises(DataError, match=r"a.json, line 4: invalid JSON"):
        read_json(bad)
    jl = tmp_path / "b.jsonl"
    jl.write_text('{"a": 1}\n\n[1, 2]\n')
    with pytest.raises(DataError, match=r"b.jsonl, line 3: expected a JSON object"):
        list(iter_jsonl(jl))


def test_content_hash_file_and_dir_cached(tmp_path, monkeypatch):
    import hashlib

    from harness import cache

    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    d = tmp_path / "d"
    d.mkdir()
    (d / "x").write_text("1")
    (d / ".hidden").write_text("ignored")
    h1 = cache.content_hash(d)
    assert h1 == hashlib.sha256(b"x\0" + b"1\0" + b"1").hexdigest()  # path, size, bytes per file
    assert str(d.resolve()) in (tmp_path / "cache" / "hashes.json").read_text()
    (d / "x").write_text("22")
    assert cache.content_hash(d) != h1  # size/mtime changed: hashed again
    assert cache.content_hash(d / "x") == hashlib.sha256(b"x\0" + b"2\0" + b"22").hexdigest()


def test_appends_are_flushed_at_once_and_fsynced_at_most_once_a_second(tmp_path, monkeypatch):
    import harness.store as store_module

    calls = []
    store = _store(tmp_path)
    monkeypatch.setattr(store_module.os, "fsync", lambda fd: calls.append(fd))
    for i in range(20):
        store.append([{"id": str(i)}])
        # another reader sees every record as soon as append returns (a killed process loses nothing)
        assert store.predictions_path.read_text().count("\n") == i + 1
    assert len(calls) == 1  # the first append; the rest fall within the same second
    store.close()
    assert len(calls) == 2  # closing makes the tail durable


def test_run_files_hold_no_credentials(tmp_path):
    from harness import redact

    secret = "sk-store-planted-0123456789"
    redact.add_secret("known-run-secret-42")
    try:
        store = RunStore(tmp_path / "run")
        settings = {**SETTINGS, "engine": {"engine": "openai", "base_url": f"http://u:{secret}@h/v1?key={secret}"}}
        store.open(
            {"engine": {"base_url": f"http://u:{secret}@h/v1"}, "command": ["--x", "known-run-secret-42"]}, settings
        )
        store.write_metrics(
            {"notes": [f"Authorization: Bearer {secret}"]},
            [{"id": "1", "review": f"echo [Authorization: Bearer {secret}] known-run-secret-42"}],
        )
        store.write_failures([{"id": "2", "error": f"GET http://u:{secret}@h failed"}])
        store.log_run({"note": "known-run-secret-42"})
        texts = {p.name: p.read_text() for p in store.dir.iterdir() if p.is_file()}
        assert {"manifest.json", "metrics.json", "scores.jsonl", "failures.jsonl", "runs.jsonl"} <= set(texts)
        assert [name for name, text in texts.items() if secret in text or "known-run-secret-42" in text] == []
        manifest = json.loads(texts["manifest.json"])
        assert manifest["settings"]["engine"]["base_url"] == "http://***@h/v1?key=***"
        assert manifest["fingerprint"] == fingerprint(manifest["settings"])
        assert "Bearer ***" in texts["scores.jsonl"]
    finally:
        redact.forget_secrets()
        store.release()
