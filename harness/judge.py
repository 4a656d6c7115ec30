"""LLM-as-judge: one client for every judged task (MMHal-Bench, Object HalBench's GPT path, MMVP, LLaVA-Bench, ...).

Tasks build :class:`JudgeRequest` values (chat messages plus the decoding settings the official scorer used) and
get back one :class:`JudgeResult` per request. A judgment that fails is returned as failed (``text is None``) and
the task counts it; it is never scored as 0 or dropped silently.

- :class:`ReplayJudge` answers from saved replies (``harness score TASK --reviews FILE``): re-scoring saved
  reviews costs nothing and is reproducible.
- :class:`OpenAIJudge` (in :mod:`harness.judge_openai`) calls any OpenAI-compatible endpoint with a disk cache keyed
  by (model, full request), retries with backoff, bounded concurrency and a ledger of calls, tokens and cost.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from harness.errors import DataError

_J = TypeVar("_J", bound="Judge")


@dataclass(frozen=True)
class JudgeRequest:
    """One judgment to make: ``messages`` in OpenAI chat format, with the official scorer's settings."""

    id: str
    messages: tuple[dict[str, Any], ...]
    temperature: float = 0.0
    max_tokens: int | None = None


@dataclass(frozen=True)
class JudgeResult:
    """The judge's reply to one request; ``text is None`` when the judgment failed (``error`` says why)."""

    id: str
    text: str | None
    error: str | None = None
    cached: bool = False
    prompt_tokens: int | None = None
    completion_tokens: int | None = None

    @property
    def failed(self) -> bool:
        return self.text is None


@dataclass
class Ledger:
    """Calls, tokens and estimated cost of one task's judgments (written to the run directory).

    ``calls`` counts the judgments asked for; of those, ``cached`` were answered without a new API request
    (from the cache, free) and ``failed`` got no reply. ``retries`` counts repeated API attempts. Tokens and
    ``cost_usd`` cover paid replies only; ``cost_usd`` is None when the model has no known price.
    """

    model: str
    calls: int = 0
    cached: int = 0
    failed: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Judge(ABC):
    """Makes judgments. ``judge`` returns one result per request, keyed by request id."""

    model: str

    @abstractmethod
    def judge(self, requests: Sequence[JudgeRequest]) -> dict[str, JudgeResult]:
        """Judge every request; failures are results with ``text=None``, never exceptions (except user errors)."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """What the manifest records about the judge (never a secret)."""

    def ledger(self) -> Ledger:
        return Ledger(model=self.model)

    def close(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Release connections (nothing to release by default)."""

    def __enter__(self: _J) -> _J:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ReplayJudge(Judge):
    """Replies supplied up front: by request id (a mapping) or in request order (a list).

    A request without a supplied reply is a failed judgment (counted by the task); with ``strict`` it is an error
    naming the source and the request.
    """

    def __init__(
        self,
        replies: Mapping[str, str | None] | Sequence[str | None],
        *,
        source: str = "reviews",
        model: str = "replay",
        strict: bool = True,
    ):
        self.replies = replies
        self.source = source
        self.model = model
        self.strict = strict
        self._ledger = Ledger(model=model, notes=[f"replayed from {source}"])

    @classmethod
    def from_replies(
        cls, replies: Mapping[str, Any], *, source: str | Path, what: str = "grader", strict: bool = True
    ) -> ReplayJudge:
        """A judge over saved replies by id, each the reply text or null (a failed judgment); any other value,
        or no reply at all, is a :class:`DataError` naming ``source``."""
        bad = [k for k, v in replies.items() if v is not None and not isinstance(v, str)]
        if bad:
            raise DataError(
                f"reply for {bad[0]} is a {type(replies[bad[0]]).__name__}; expected the {what}'s reply text or null",
                path=source,
            )
        if not replies:
            raise DataError(f"holds no {what} replies", path=source)
        return cls(dict(replies), source=str(source), strict=strict)

    def judge(self, requests: Sequence[JudgeRequest]) -> dict[str, JudgeResult]:
        if not isinstance(self.replies, Mapping) and len(self.replies) != len(requests):
            raise DataError(
                f"holds {len(self.replies)} replies for {len(requests)} judgments; "
                "expected one reply per question, in question order",
                path=self.source,
            )
        out: dict[str, JudgeResult] = {}
        for i, req in enumerate(requests):
            if isinstance(self.replies, Mapping):
                if req.id not in self.replies:
                    if self.strict:
                        raise DataError(f"no reply for {req.id}", path=self.source)
                    text = None
                else:
                    text = self.replies[req.id]
            else:
                text = self.replies[i]
            if text is not None and not isinstance(text, str):
                raise DataError(f"reply {i + 1} ({req.id}) is a {type(text).__name__}, expected text", path=self.source)
            out[req.id] = JudgeResult(req.id, text, None if text is not None else "no reply supplied")
            self._ledger.calls += 1
            self._ledger.failed += text is None
        return out

    def describe(self) -> dict[str, Any]:
        return {"judge": "replay", "model": self.model, "source": self.source}

    def ledger(self) -> Ledger:
        return self._ledger
