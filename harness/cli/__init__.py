"""Command line: ``harness run | score | train | report | sweep | build-vtc | tasks | toy-data | lab-data``.

User errors (:class:`harness.errors.HarnessError`) print one clear message and exit with status 2;
finished predictions are always kept. The parser is :mod:`harness.cli.parser`, the subcommands
:mod:`harness.cli.commands`.
"""

from __future__ import annotations

import logging
import sys

from harness.cli.commands import COMMANDS, eval_config, parse_counts, print_summary
from harness.cli.parser import build_parser
from harness.errors import HarnessError
from harness.redact import install_log_redaction, redact, register_run_secrets
from harness.store import release_locks

__all__ = ["COMMANDS", "build_parser", "eval_config", "main", "parse_counts", "print_summary"]


def main(argv: list[str] | None = None) -> int:

    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv) if argv is None else ["harness", *map(str, argv)]
    register_run_secrets(vars(args))  # the keys this run reads, the credentials in its endpoint URLs
    logging.basicConfig(
        stream=sys.stderr,
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    install_log_redaction()  # no credential in any log line, the httpx and openai loggers' included
    try:
        return COMMANDS[args.command](args)
    except HarnessError as exc:
        print(f"harness: error: {redact(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        name = getattr(exc, "signal_name", "SIGINT")
        what = "terminated (SIGTERM)" if name == "SIGTERM" else "interrupted"
        print(f"harness: {what}; finished predictions are kept, rerun the same command to resume", file=sys.stderr)
        return 143 if name == "SIGTERM" else 130
    finally:
        release_locks()  # the run directories this command wrote
