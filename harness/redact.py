"""Redaction of credentials from everything the harness writes: run files, the judge cache, logs and messages.

What is hidden (each replaced by ``***``):

- credentials in URLs: the userinfo of ``scheme://user:password@host`` (user and password both) and the value
  of secret-bearing query parameters (``key=``, ``api_key=``, ``token=``, ``access_token=``, ``password=``,
  ``secret=``, ``sig=`` ...);
- header values that carry credentials: ``Authorization: Bearer ...`` / ``Basic ...`` (also as JSON or Python
  mapping items), ``Proxy-Authorization``, ``X-Api-Key``, ``Api-Key``; a bare ``Bearer <token>``, and a bare
  ``Basic <base64>`` whose payload decodes to ``user:password``;
- API keys in the style ``sk-...``;
- the *known secrets* of this process: values registered with :func:`add_secret` / :func:`add_url_credentials`
  (the API keys read from the environment, passwords found in endpoint URLs and the ``Basic`` token they make).

:func:`redact` handles text, :func:`redact_obj` nested JSON-like values, :func:`redact_argv` a command line
(the value of every secret-bearing flag and of each abbreviation argparse would accept for it), and
:class:`RedactingFilter` log records (installed on the root logger's handlers by :func:`install_log_redaction`).
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import quote, unquote, urlsplit

REDACTED = "***"
MIN_SECRET_LENGTH = 6  # shorter values are not registered: replacing them everywhere would garble text

# Flags whose value is a secret, or names where one is kept (an environment variable given by mistake as the
# key itself is still hidden). Any unambiguous abbreviation of these is hidden too (argparse accepts them).
SECRET_FLAGS: tuple[str, ...] = ("--api-key", "--api-key-env", "--judge-api-key-env", "--llm-api-key-env")
# Any other flag whose name ends like this is treated as secret-bearing as well.
SECRET_FLAG_SUFFIXES: tuple[str, ...] = ("-api-key", "-key-env", "-token", "-secret", "-password")

_lock = threading.Lock()
_secrets: set[str] = set()
_ordered: tuple[str, ...] = ()

_URL_USERINFO = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://)[^\s/?#\"'<>`\\]+@")
_SECRET_PARAMS = (
    r"api[_-]?key|apikey|key|token|access[_-]?token|refresh[_-]?token|id[_-]?token|auth|"
    r"auth[_-]?token|password|passwd|pwd|secret|client[_-]?secret|sig|signature|x-api-key|"
    r"x-goog-api-key|code"
)
_QUERY_SECRET = re.compile(rf"([?&;](?:{_SECRET_PARAMS})=)[^&#\s\"'<>`]*", re.IGNORECASE)
_HEADER = re.compile(
    r"\b((?:proxy-)?authorization|x-api-key|api-key|openai-api-key|x-goog-api-key)"
    r"([\"']?\s*[:=]\s*[\"']?)"
    r"(?:(bearer|basic|token|digest|apikey)(\s+))?"
    r"([^\s\"',;}\])]+)",
    re.IGNORECASE,
)
_BEARER = re.compile(r"\b(bearer)(\s+)(?!\*\*\*)[A-Za-z0-9._~+/=-]{8,}", re.IGNORECASE)
_BASIC = re.compile(r"\b(Basic|basic|BASIC)(\s+)([A-Za-z0-9+/]{4,}={0,2})(?![A-Za-z0-9+/=])")
_SK_KEY = re.compile(r"(?<![A-Za-z0-9_-])sk-[A-Za-z0-9_-]{16,}")
_ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]*")


# --------------------------------------------------------------------------------------------- known secrets
def add_secret(value: str | None) -> None:
    """Register ``value`` (and its URL-encoded and -decoded forms) as a secret of this process.

    ``None``, the placeholder key ``EMPTY`` and values shorter than :data:`MIN_SECRET_LENGTH` are ignored.
    """
    global _ordered
    if not value:
        return
    forms = {value, quote(value, safe=""), unquote(value)}
    forms = {f for f in forms if len(f) >= MIN_SECRET_LENGTH and f != "EMPTY"}
    if not forms - _secrets:
        return
    with _lock:
        _secrets.update(forms)
        _ordered = tuple(sorted(_secrets, key=len, reverse=True))


def add_url_credentials(url: str | None) -> None:
    """Register the user name, the password and the ``Basic`` token of ``url``'s userinfo, if it has one."""
    if not url:
        return
    try:
        parts = urlsplit(url.strip())
        user, password = parts.username, parts.password
    except ValueError:
        return
    if user is None and password is None:
        return
    for value in (user, password):
        add_secret(value)
    for u, p in {(user or "", password or ""), (unquote(user or ""), unquote(password or ""))}:
        add_secret(base64.b64encode(f"{u}:{p}".encode()).decode("ascii"))


def add_env_secret(name: str | None, environ: Mapping[str, str] | None = None) -> None:
    """Register the value of environment variable ``name``; and ``name`` itself when no such variable is set
    and it does not read as a variable name (a key passed where its variable's name belongs)."""
    import os

    if not name:
        return
    env = os.environ if environ is None else environ
    value = env.get(name)
    if value:
        add_secret(value)
    elif not _ENV_NAME.fullmatch(name):
        add_secret(name)


def register_run_secrets(options: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> None:
    """Register the credentials of one command: ``$OPENAI_API_KEY`` and the credentials of
    ``$OPENAI_BASE_URL``; for each option, the value of the variable named by ``*api_key_env`` (see
    :func:`add_env_secret`), an ``*api_key`` itself and the credentials of a ``*base_url``."""
    import os

    env = os.environ if environ is None else environ
    add_env_secret("OPENAI_API_KEY", env)
    add_url_credentials(env.get("OPENAI_BASE_URL"))
    for key, value in options.items():
        if not isinstance(value, str):
            continue
        if key.endswith("api_key_env"):
            add_env_secret(value, env)
        elif key.endswith("api_key"):
            add_secret(value)
        elif key.endswith("base_url"):
            add_url_credentials(value)


def known_secrets() -> tuple[str, ...]:
    """The registered secrets, longest first."""
    return _ordered


def forget_secrets() -> None:
    """Forget every registered secret (for tests)."""
    global _ordered
    with _lock:
        _secrets.clear()
        _ordered = ()


# ----------------------------------------------------------------------------------------------- redaction
def _header(match: re.Match[str]) -> str:
    name, sep, scheme, space, value = match.groups()
    if value == REDACTED or value.startswith(REDACTED):
        return match.group(0)
    return f"{name}{sep}{scheme}{space}{REDACTED}" if scheme else f"{name}{sep}{REDACTED}"


def _basic(match: re.Match[str]) -> str:
    word, space, token = match.groups()
    try:
        decoded = base64.b64decode(token + "=" * (-len(token) % 4), validate=True)
        text = decoded.decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return match.group(0)
    if ":" in text and text.isprintable():
        return f"{word}{space}{REDACTED}"
    return match.group(0)


def redact_url(url: str) -> str:
    """``url`` with its userinfo and the values of secret-bearing query parameters replaced by ``***``."""
    url = _URL_USERINFO.sub(lambda m: f"{m.group(1)}{REDACTED}@", url)
    return _QUERY_SECRET.sub(lambda m: f"{m.group(1)}{REDACTED}", url)


def redact(text: str, extra: Iterable[str] = ()) -> str:
    """``text`` with every credential this module recognises replaced by ``***`` (see the module docstring).

    ``extra``: further secret values to hide in this call only.
    """
    if not text:
        return text
    secrets = [s for s in extra if s]
    for secret in (*sorted(secrets, key=len, reverse=True), *_ordered):
        if secret in text:
            text = text.replace(secret, REDACTED)
    text = redact_url(text)
    text = _HEADER.sub(_header, text)
    text = _BEARER.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
    text = _BASIC.sub(_basic, text)
    return _SK_KEY.sub(REDACTED, text)


def redact_obj(obj: Any) -> Any:
    """A copy of a JSON-like value (dicts, lists, tuples, strings) with :func:`redact` applied to every string,
    keys included; other values are returned unchanged."""
    if isinstance(obj, str):
        return redact(obj)
    if isinstance(obj, dict):
        return {redact_obj(k): redact_obj(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact_obj(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(redact_obj(v) for v in obj)
    return obj


# -------------------------------------------------------------------------------------------- command line
def is_secret_flag(flag: str, secret_flags: Sequence[str] = SECRET_FLAGS) -> bool:
    """Whether ``flag`` (``--name``, without ``=value``) is, or abbreviates, a secret-bearing flag."""
    if not flag.startswith("--") or len(flag) < 3:
        return False
    if any(s.startswith(flag) for s in secret_flags):
        return True
    return flag.endswith(SECRET_FLAG_SUFFIXES)


def redact_argv(argv: Sequence[str], secret_flags: Sequence[str] = SECRET_FLAGS) -> list[str]:
    """The command line with the value of every secret-bearing flag (or abbreviation of one: ``--api-k KEY``,
    ``--api-key-env=KEY``) replaced by ``***``, and :func:`redact` applied to every other argument (URLs with
    credentials, known secrets)."""
    out: list[str] = []
    hide_next = False
    for arg in argv:
        arg = str(arg)
        if hide_next:
            hide_next = False
            if not arg.startswith("--"):
                out.append(REDACTED)
                continue
        flag, eq, _ = arg.partition("=")
        if is_secret_flag(flag, secret_flags):
            if eq:
                out.append(f"{flag}={REDACTED}")
            else:
                out.append(arg)
                hide_next = True
            continue
        out.append(redact(arg))
    return out


# ------------------------------------------------------------------------------------------------- logging
class RedactingFilter(logging.Filter):
    """Rewrites every record it sees so that its message, exception text and stack hold no credential
    (:func:`redact`); it never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string: redact what there is
            message = f"{record.msg} {record.args}"
        record.msg = redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def install_log_redaction(*loggers: logging.Logger) -> RedactingFilter:
    """Add one :class:`RedactingFilter` to every handler of the root logger (and of ``loggers``), so that
    records of every logger, the ``httpx`` and ``openai`` libraries' included, are redacted before output.
    Calling it again adds no second filter."""
    found = None
    handlers = [h for lg in (logging.getLogger(), *loggers) for h in lg.handlers]
    for handler in handlers:
        for f in handler.filters:
            if isinstance(f, RedactingFilter):
                found = f
    flt = found or RedactingFilter()
    for handler in handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(flt)
    return flt
