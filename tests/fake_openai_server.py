"""A scripted, local OpenAI-compatible server for testing the ``openai`` engine without a model.

It listens on 127.0.0.1 only (a free port chosen by the OS) and serves

- ``GET  /v1/models``: the configured model names (or 404 with ``models_route=False``);
- ``POST /v1/chat/completions``: a deterministic echo of the prompt, or the next scripted behaviour.

Behaviours are queued with :meth:`FakeOpenAIServer.script` and consumed one per chat request, in arrival
order; once the script is empty every request gets a normal reply. :meth:`FakeOpenAIServer.always` sets a
standing behaviour for every chat request whose prompt contains a given text (checked before the script), so
a test can make one request of a concurrent batch fail every time. Every request is recorded (path, headers,
JSON body) so tests can check what the client sent, and the server tracks the largest number of chat
requests it was serving at once.

Usage::

    with FakeOpenAIServer(models=("tiny",)) as server:
        server.script(Fail(500), Fail(429), OK())
        client = OpenAI(base_url=server.base_url, api_key="EMPTY")
"""

from __future__ import annotations

import json
import threading
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class OK:
    """A normal reply, optionally after ``delay_s`` seconds; ``usage=False`` leaves out the token usage.
    ``hold_until_in_flight=N`` holds the reply until N requests have been in flight at once (or ``hold_max_s``
    passed), so a test of the client's concurrency does not depend on how fast a loaded machine starts threads."""

    delay_s: float = 0.0
    usage: bool = True
    hold_until_in_flight: int = 0
    hold_max_s: float = 10.0


@dataclass(frozen=True)
class Fail:
    """An HTTP error status with an OpenAI-style error body."""

    status: int
    message: str = "scripted failure"
    retry_after: float | None = None


@dataclass(frozen=True)
class Slow:
    """A normal reply that arrives only after ``delay_s`` seconds (longer than the client's timeout)."""

    delay_s: float


@dataclass(frozen=True)
class Malformed:
    """A 200 reply whose body is ``body`` verbatim (by default, not JSON at all)."""

    body: str = '{"id": "chatcmpl-x", "choices": [ this is not json'
    content_type: str = "application/json"


Behaviour = OK | Fail | Slow | Malformed


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: dict[str, Any] | None = field(default=None)


def echo_text(body: dict[str, Any]) -> str:
    """The deterministic reply to a chat request: the prompt's words and the number of images."""
    prompt = ""
    n_images = 0
    for message in body.get("messages", []):
        content = message.get("content")
        if isinstance(content, str):
            prompt = content
            continue
        for part in content or []:
            if part.get("type") == "text":
                prompt = part.get("text", "")
            elif part.get("type") == "image_url":
                n_images += 1
    return f"echo[{n_images}]: {prompt}"


class FakeOpenAIServer:
    """An OpenAI-compatible HTTP server on loopback, running in a background thread.

    ``api_key``: when set, requests whose ``Authorization`` header is not ``Bearer <api_key>`` get a 401.
    ``models``: names listed by ``/v1/models``; ``models_route=False`` makes that route answer 404, like
    servers that do not implement it. ``echo_auth=True`` makes the server echo the request's ``Authorization``
    header back, as a careless proxy or debugging server does: appended to every chat reply's text
    (``... [Authorization: Basic dXNlcjpwdw==]``) and to every error message.
    """

    def __init__(
        self,
        models: tuple[str, ...] = ("fake-model",),
        api_key: str | None = None,
        models_route: bool = True,
        echo_auth: bool = False,
    ):
        self.models = list(models)
        self.echo_auth = echo_auth
        self._models_enabled = models_route
        self.api_key = api_key
        self.requests: list[RecordedRequest] = []
        self.max_in_flight = 0
        self._in_flight = 0
        self._script: deque[Behaviour] = deque()
        self._standing: list[tuple[str, Behaviour]] = []
        self._lock = threading.Lock()
        self._in_flight_rose = threading.Condition(self._lock)
        self._closing = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-openai", daemon=True
        )

    # -- lifecycle -------------------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> FakeOpenAIServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._closing.set()  # wakes slow replies
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- scripting and inspection ----------------------------------------------------------------------------

    def script(self, *behaviours: Behaviour) -> None:
        """Queue behaviours for the next chat requests (one each, in arrival order)."""
        with self._lock:
            self._script.extend(behaviours)

    def always(self, prompt_contains: str, behaviour: Behaviour) -> None:
        """Answer every chat request whose prompt contains ``prompt_contains`` with ``behaviour``."""
        with self._lock:
            self._standing.append((prompt_contains, behaviour))

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.path.endswith("/chat/completions")]

    def _next_behaviour(self, body: dict[str, Any]) -> Behaviour:
        prompt = echo_text(body)
        with self._lock:
            for text, behaviour in self._standing:
                if text in prompt:
                    return behaviour
            return self._script.popleft() if self._script else OK()

    # -- HTTP ------------------------------------------------------------------------------------------------

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
                pass  # keep test output quiet

            def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
                self._send_raw(status, json.dumps(payload), "application/json", headers)

            def _send_raw(
                self, status: int, body: str, content_type: str, headers: dict[str, str] | None = None
            ) -> None:
                data = body.encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", content_type)
                    self.send_header("Content-Length", str(len(data)))
                    for key, value in (headers or {}).items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout) before the reply

            def _record(self, body: dict[str, Any] | None) -> None:
                with server._lock:
                    server.requests.append(
                        RecordedRequest(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                    )

            def _authorized(self) -> bool:
                if server.api_key is None:
                    return True
                if self.headers.get("Authorization") == f"Bearer {server.api_key}":
                    return True
                self._send_json(
                    401,
                    {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}},
                )
                return False

            def do_GET(self) -> None:  # noqa: N802 - stdlib name
                self._record(None)
                if self.path.rstrip("/") != "/v1/models" or not server._models_enabled:
                    self._send_json(404, {"error": {"message": f"no route {self.path}"}})
                    return
                if not self._authorized():
                    return
                data = [{"id": name, "object": "model", "created": 0, "owned_by": "fake"} for name in server.models]
                self._send_json(200, {"object": "list", "data": data})

            def do_POST(self) -> None:  # noqa: N802 - stdlib name
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw or b"{}")
                except json.JSONDecodeError:
                    body = None
                self._record(body)
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._send_json(404, {"error": {"message": f"no route {self.path}"}})
                    return
                if not self._authorized():
                    return
                if body is None:
                    self._send_json(400, {"error": {"message": "request body is not JSON"}})
                    return
                with server._lock:
                    server._in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server._in_flight)
                    server._in_flight_rose.notify_all()
                try:
                    self._chat(body, server._next_behaviour(body))
                finally:
                    with server._lock:
                        server._in_flight -= 1

            def _echo(self) -> str:
                if not server.echo_auth:
                    return ""
                return f" [Authorization: {self.headers.get('Authorization')}]"

            def _chat(self, body: dict[str, Any], behaviour: Behaviour) -> None:
                if isinstance(behaviour, Fail):
                    headers = {}
                    if behaviour.retry_after is not None:
                        headers["Retry-After"] = str(behaviour.retry_after)
                    error = {
                        "message": behaviour.message + self._echo(),
                        "type": "server_error",
                        "code": behaviour.status,
                    }
                    self._send_json(behaviour.status, {"error": error}, headers)
                    return
                if isinstance(behaviour, Malformed):
                    self._send_raw(200, behaviour.body, behaviour.content_type)
                    return
                hold = getattr(behaviour, "hold_until_in_flight", 0)
                if hold:
                    with server._in_flight_rose:
                        server._in_flight_rose.wait_for(
                            lambda: server.max_in_flight >= hold, timeout=behaviour.hold_max_s
                        )
                delay = behaviour.delay_s
                if delay and server._closing.wait(delay):
                    return
                completion = self._completion(body)
                if server.echo_auth:
                    completion["choices"][0]["message"]["content"] += self._echo()
                if not getattr(behaviour, "usage", True):
                    del completion["usage"]
                self._send_json(200, completion)

            @staticmethod
            def _completion(body: dict[str, Any]) -> dict[str, Any]:
                words = echo_text(body).split()
                max_tokens = body.get("max_tokens")
                finish_reason = "stop"
                if isinstance(max_tokens, int) and len(words) > max_tokens:
                    words, finish_reason = words[:max_tokens], "length"
                return {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion",
                    "created": 0,
                    "model": body.get("model", ""),
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": " ".join(words)},
                            "finish_reason": finish_reason,
                        }
                    ],
                    "usage": {
                        "prompt_tokens": len(echo_text(body).split()),
                        "completion_tokens": len(words),
                        "total_tokens": len(echo_text(body).split()) + len(words),
                    },
                }

        return Handler
