"""No secret reaches a file or a log: :mod:`harness.redact`, and `harness run` with planted keys end to end."""

from __future__ import annotations

import base64
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from harness import redact as R
from harness.cli import main
from harness.manifest import environment, redacted_argv
from harness.store import release_locks

try:
    from tests.fake_openai_server import Fail, FakeOpenAIServer
except ImportError:  # tests/ is not a package: pytest puts it on sys.path
    from fake_openai_server import Fail, FakeOpenAIServer

REPO = Path(__file__).resolve().parents[2]
MMHAL = REPO / "tests" / "fixtures" / "data" / "mmhal_bench"


@pytest.fixture(autouse=True)
def _fresh_secrets(monkeypatch):
    # other libraries may have quieted or disabled these loggers earlier in the session (vLLM sets httpx to
    # WARNING); the tests below need their records to reach the handlers, to check that they are redacted
    saved = {}
    for name in ("httpx", "httpx2", "openai", "openai._base_client", "harness"):
        logger = logging.getLogger(name)
        saved[name] = logger.level
        logger.setLevel(logging.NOTSET)
        monkeypatch.setattr(logger, "disabled", False)
        monkeypatch.setattr(logger, "propagate", True)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    R.forget_secrets()
    yield
    R.forget_secrets()
    release_locks()
    for name, level in saved.items():
        logging.getLogger(name).setLevel(level)


# -- redact: text ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            "POST http://user:hunter2pw@127.0.0.1:8000/v1/chat/completions",
            "POST http://***@127.0.0.1:8000/v1/chat/completions",
        ),
        ("https://KEYONLY1234@api.example.com/v1", "https://***@api.example.com/v1"),
        ("http://u:p@ss@host/v1", "http://***@host/v1"),  # an unencoded @ in the password
        ("GET https://h/v1/models?key=abc123&model=x", "GET https://h/v1/models?key=***&model=x"),
        (
            "https://h/x?api_key=abc&token=t0k&access_token=z#frag",
            "https://h/x?api_key=***&token=***&access_token=***#frag",
        ),
        ("https://h/x?a=1&API-KEY=zz", "https://h/x?a=1&API-KEY=***"),
        ("Authorization: Bearer sk-abcdefghijklmnopqrstuvwx", "Authorization: Bearer ***"),
        ("authorization: Basic dXNlcjpwYXNzd29yZA==", "authorization: Basic ***"),
        ('{"Authorization": "Bearer abc.def-ghi"}', '{"Authorization": "Bearer ***"}'),
        ("{'authorization': 'Token zzzzzzzzz'}", "{'authorization': 'Token ***'}"),
        ("x-api-key: 0123456789", "x-api-key: ***"),
        ("Proxy-Authorization=Basic Zm9vOmJhcg==", "Proxy-Authorization=Basic ***"),
        ("the header was Bearer abcdefgh12345", "the header was Bearer ***"),
        ("sent Basic dXNlcjpwYXNzd29yZA== to it", "sent Basic *** to it"),
        ("key sk-proj-ABCDEFGHIJKLMNOPQRST here", "key *** here"),
    ],
)
def test_redact_hides_credentials(text, expected):
    assert R.redact(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "http://127.0.0.1:8000/v1/chat/completions",
        "Basic understanding of the picture shows a red circle.",
        "Bearer bonds",
        "--max-new-tokens 3 --judge-timeout 5",
        "task-abcdefghijklmnopqrstuvwxyz",
        "Rating: 4, the answer is correct (no hallucination)",
        "authentication failed for http://127.0.0.1:9/v1 (HTTP 401): check $OPENAI_API_KEY (it is not set)",
        "email me at someone@example.com",
    ],
)
def test_redact_leaves_ordinary_text_alone(text):
    assert R.redact(text) == text


def test_known_secrets_in_every_form():
    R.add_secret("plainKEY-0123456789")
    R.add_secret("EMPTY")  # the no-key placeholder is not a secret
    R.add_secret("abc")  # too short to replace everywhere
    R.add_url_credentials("http://evaluser:p%40ss-word99@127.0.0.1/v1")
    basic = base64.b64encode(b"evaluser:p@ss-word99").decode()
    text = (
        f"k=plainKEY-0123456789 enc=plainKEY-0123456789 pw=p%40ss-word99 raw=p@ss-word99 basic={basic} "
        "EMPTY abc evaluser"
    )
    out = R.redact(text)
    for secret in ("plainKEY-0123456789", "p%40ss-word99", "p@ss-word99", basic, "evaluser"):
        assert secret not in out
    assert "EMPTY abc" in out
    assert "plainKEY" in R.redact("plainKEY")  # a part of a secret is not a secret
    assert R.redact("zz", extra=["zz"]) == "***"


def test_env_secrets_and_names():
    env = {"MY_KEY": "value-of-the-key-42", "OPENAI_API_KEY": "sk-env-abcdefghijklmnop"}
    R.register_run_secrets(
        {
            "api_key_env": "MY_KEY",
            "judge_api_key_env": "sk-pasted-instead-of-a-name",
            "llm_api_key_env": "UNSET_NAME",
            "base_url": "http://u:pw-in-url-1@h/v1",
            "judge_base_url": None,
        },
        environ=env,
    )
    secrets = set(R.known_secrets())
    assert {"value-of-the-key-42", "sk-env-abcdefghijklmnop", "sk-pasted-instead-of-a-name", "pw-in-url-1"} <= secrets
    assert "MY_KEY" not in secrets and "UNSET_NAME" not in secrets  # names of variables are not secrets


def test_redact_obj_keys_values_and_nesting():
    R.add_secret("s3cr3t-value")
    obj = {
        "base_url": "http://a:b1234567@h/v1",
        "list": ["s3cr3t-value", 3, None, ("s3cr3t-value",)],
        "s3cr3t-value": True,
        "n": 1.5,
    }
    assert R.redact_obj(obj) == {
        "base_url": "http://***@h/v1",
        "list": ["***", 3, None, ("***",)],
        "***": True,
        "n": 1.5,
    }


# -- redact: command lines ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--api-key-env", "K"], ["--api-key-env", "***"]),
        (["--api-key-env=K"], ["--api-key-env=***"]),
        (["--api-k", "K"], ["--api-k", "***"]),
        (["--api-k=K"], ["--api-k=***"]),
        (["--api", "K"], ["--api", "***"]),
        (["--api-key", "K"], ["--api-key", "***"]),
        (["--judge-api-key-env", "K"], ["--judge-api-key-env", "***"]),
        (["--judge-api", "K"], ["--judge-api", "***"]),
        (["--judge-api-key-env=K"], ["--judge-api-key-env=***"]),
        (["--llm-api-key-env", "K"], ["--llm-api-key-env", "***"]),
        (["--hf-token", "K"], ["--hf-token", "***"]),
        (["--base-url", "http://u:K@h/v1"], ["--base-url", "http://***@h/v1"]),
        (["--judge-base-url=http://u:K@h/v1"], ["--judge-base-url=http://***@h/v1"]),
        (["--base-url", "https://h/v1?key=K"], ["--base-url", "https://h/v1?key=***"]),
        (["--api-key-env", "--tasks", "x"], ["--api-key-env", "--tasks", "x"]),  # no value to hide
        (
            ["--max-new-tokens", "3", "--model", "m", "--judge-model", "j"],
            ["--max-new-tokens", "3", "--model", "m", "--judge-model", "j"],
        ),
    ],
)
def test_redacted_argv(args, expected):
    assert redacted_argv(["harness", "run", *args]) == ["harness", "run", *expected]


def test_environment_command_is_redacted():
    R.add_secret("planted-known-secret")
    env = environment(["harness", "run", "--api-k", "K", "--model", "planted-known-secret"])
    assert env["command"] == ["harness", "run", "--api-k", "***", "--model", "***"]


# -- redact: logging ------------------------------------------------------------------------------------------


def test_filter_redacts_message_args_and_traceback():
    R.add_secret("log-secret-0123")
    flt = R.RedactingFilter()
    record = logging.LogRecord(
        "httpx",
        logging.INFO,
        __file__,
        1,
        'HTTP Request: POST %s "%s"',
        ("http://user:pw-zzzz@h/v1/chat", "log-secret-0123"),
        None,
    )
    assert flt.filter(record) is True
    assert record.getMessage() == 'HTTP Request: POST http://***@h/v1/chat "***"'
    try:
        raise RuntimeError("Authorization: Bearer log-secret-0123")
    except RuntimeError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", None, sys.exc_info())
    flt.filter(record)
    text = logging.Formatter().format(record)
    assert "log-secret-0123" not in text and "Bearer ***" in text


def test_install_covers_library_loggers_and_is_idempotent(caplog):
    caplog.set_level(logging.DEBUG)
    R.add_secret("lib-secret-98765")
    R.install_log_redaction()
    R.install_log_redaction()
    assert sum(isinstance(f, R.RedactingFilter) for f in caplog.handler.filters) == 1
    logging.getLogger("httpx").info("HTTP Request: POST %s", "http://u:lib-secret-98765@h/v1")
    logging.getLogger("openai._base_client").debug("headers %s", {"Authorization": "Bearer sk-abcdefghijklmnopqr"})
    logging.getLogger("harness.x").warning("reply: %s", "echo Bearer lib-secret-98765")
    assert "lib-secret-98765" not in caplog.text and "sk-abcdefghijklmnopqr" not in caplog.text
    assert caplog.text.count("***") == 3


# -- end to end -----------------------------------------------------------------------------------------------

K_URL = "PLANTED-userinfo-Zq81xK"  # in the engine's --base-url
K_ENV = "sk-planted-env-0123456789abcdef"  # in $OPENAI_API_KEY (the judge sends it as Bearer)
K_ARG = "planted-argkey-77Qx"  # given with --api-k
BASIC = base64.b64encode(f"evaluser:{K_URL}".encode()).decode()
PLANTED = (K_URL, K_ENV, K_ARG, BASIC)


def mmhal_images(root: Path, n: int) -> Path:
    records = json.loads((MMHAL / "mmhal-bench_answer_template.json").read_text())
    root.mkdir()
    for rec in records[:n]:
        Image.new("RGB", (8, 8), (0, 0, 0)).save(root / rec["image_src"].rsplit("/", 1)[1], format="JPEG")
    return root


def leaks(texts: dict[str, str]) -> list[tuple[str, str]]:
    return [(where, key) for where, text in texts.items() for key in PLANTED if key in text]


def files_under(*roots: Path) -> dict[str, str]:
    return {str(p): p.read_text(errors="replace") for root in roots for p in sorted(root.rglob("*")) if p.is_file()}


def test_planted_keys_reach_no_file_and_no_log(tmp_path):
    """`harness run` (openai engine + LLM judge) with a key in the URL userinfo, one in $OPENAI_API_KEY and one
    given with --api-k, against servers that echo the Authorization header into replies and error bodies."""
    images = mmhal_images(tmp_path / "images", 3)
    out, cache = tmp_path / "out", tmp_path / "cache"
    with (
        FakeOpenAIServer(models=("fake-model",), echo_auth=True) as engine,
        FakeOpenAIServer(models=("gpt-4o-mini",), echo_auth=True) as judge,
    ):
        engine.script(Fail(503, "busy"))  # a retried error whose body echoes the header: logged
        judge.script(Fail(500, "judge busy"))
        env = {k: v for k, v in os.environ.items() if k != "OPENAI_BASE_URL"}
        env.update(HARNESS_CACHE=str(cache), OPENAI_API_KEY=K_ENV, OMP_NUM_THREADS="1")
        cmd = [
            sys.executable,
            "-m",
            "harness",
            "--log-level",
            "DEBUG",
            "run",
            "--tasks",
            "mmhal",
            "--data-root",
            str(MMHAL),
            "--image-root",
            str(images),
            "--limit",
            "3",
            "--engine",
            "openai",
            "--model",
            "fake-model",
            "--base-url",
            f"http://evaluser:{K_URL}@127.0.0.1:{engine.port}/v1",
            "--api-k",
            K_ARG,
            "--judge-model",
            "gpt-4o-mini",
            "--judge-base-url",
            judge.base_url,
            "--output-path",
            str(out),
            "--no-progress",
            "--max-retries",
            "2",
            "--judge-max-retries",
            "2",
        ]
        proc = subprocess.run(cmd, check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        sent = [r.headers.get("authorization") for r in engine.chat_requests + judge.chat_requests]
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the probe is real: the credentials were sent, echoed back, logged and stored (redacted)
    assert f"Basic {BASIC}" in sent and f"Bearer {K_ENV}" in sent
    run_dir = out / "fake-model" / "mmhal"
    scores = (run_dir / "scores.jsonl").read_text()
    assert "[Authorization: Bearer ***]" in scores and "[Authorization: Basic ***]" in scores
    assert f"HTTP Request: POST http://127.0.0.1:{engine.port}/v1/chat/completions" in proc.stderr
    assert "judge busy [Authorization: Bearer ***]" in proc.stderr
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["command"][manifest["command"].index("--api-k") + 1] == "***"
    assert list(cache.rglob("judge/*/*.json"))
    found = leaks({**files_under(out, cache), "stderr": proc.stderr, "stdout": proc.stdout})
    assert found == []


def test_in_process_run_records_a_redacted_command_and_logs(tmp_path, capsys, caplog, monkeypatch):
    caplog.set_level(logging.INFO)
    monkeypatch.setenv("OPENAI_API_KEY", K_ENV)
    with FakeOpenAIServer(models=("served",), echo_auth=True) as server:
        url = f"http://evaluser:{K_URL}@127.0.0.1:{server.port}/v1"
        code = main(
            [
                "run",
                "--tasks",
                "toy_amber",
                "--limit",
                "2",
                "--engine",
                "openai",
                "--model",
                "served",
                f"--base-url={url}",
                f"--api-key-env={K_ARG}",
                "--output-path",
                str(tmp_path),
                "--no-progress",
            ]
        )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    manifest = json.loads((tmp_path / "served" / "toy_amber" / "manifest.json").read_text())
    assert manifest["command"][:2] == ["harness", "run"]  # this command, not the test runner's
    assert f"--base-url=http://***@127.0.0.1:{server.port}/v1" in manifest["command"]
    assert "--api-key-env=***" in manifest["command"]
    assert "HTTP Request" in caplog.text
    assert any(isinstance(f, R.RedactingFilter) for f in caplog.handler.filters)  # installed by main()
    assert leaks({**files_under(tmp_path), "log": caplog.text, "err": captured.err, "out": captured.out}) == []


def test_error_message_is_redacted(tmp_path, capsys):
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
            "m",
            "--base-url",
            f"http://evaluser:{K_URL}@127.0.0.1:9/v1",
            "--max-retries",
            "0",
            "--output-path",
            str(tmp_path),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "cannot reach http://127.0.0.1:9/v1" in err
    assert K_URL not in err
