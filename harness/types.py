"""The plain values that flow through an evaluation.

``Task.samples() -> Sample -> Request -> Engine.generate() -> Response -> RunStore``
and ``Task.score(samples, responses) -> Metrics``.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.errors import ImageError

if TYPE_CHECKING:
    import PIL.Image


@dataclass(frozen=True)
class ImageRef:
    """Where a sample's image lives: a file path or the encoded bytes (e.g. base64-decoded from a JSONL)."""

    path: str | None = None
    data: bytes | None = field(default=None, repr=False)

    def load(self, sample_id: str) -> PIL.Image.Image:
        """Decode the image as RGB ``PIL.Image``; raises :class:`ImageError` naming ``sample_id``."""
        from PIL import Image, UnidentifiedImageError

        try:
            if self.data is not None:
                img = Image.open(io.BytesIO(self.data))
            elif self.path is not None:
                if not Path(self.path).is_file():
                    raise ImageError(sample_id, f"file not found: {self.path}")
                img = Image.open(self.path)
            else:
                raise ImageError(sample_id, "the sample names no image")
            img.load()
            return img.convert("RGB")
        except ImageError:
            raise
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
            where = self.path or "embedded image bytes"
            raise ImageError(sample_id, f"{where}: {exc}") from exc


@dataclass(frozen=True)
class Sample:
    """One question of a task: its prompt text, its images and what the scorer needs (``reference``)."""

    id: str
    prompt: str
    images: tuple[ImageRef, ...] = ()
    reference: Any = None
    meta: dict[str, Any] = field(default_factory=dict)
    max_new_tokens: int | None = None


@dataclass(frozen=True)
class Request:
    """What an engine is asked: one user turn (text plus decoded images) and a token budget."""

    sample_id: str
    prompt: str
    images: tuple[Any, ...]  # PIL.Image.Image, already decoded and RGB
    max_new_tokens: int


@dataclass(frozen=True)
class Response:
    """An engine's answer to one :class:`Request`."""

    sample_id: str
    text: str
    finish_reason: str  # "stop" | "length"
    prompt_tokens: int | None = None
    completion_tokens: int | None = None

    def to_record(self, prompt: str) -> dict[str, Any]:
        """The predictions.jsonl record (no timing fields: records are byte-identical across runs)."""
        return {
            "id": self.sample_id,
            "prompt": prompt,
            "response": self.text,
            "finish_reason": self.finish_reason,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
        }


@dataclass(frozen=True)
class Decoding:
    """Decoding settings. Greedy by default; the exact parameters sent are written to the manifest."""

    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 128
    seed: int = 1234

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Metrics:
    """A task's scores: headline numbers under the papers' names, breakdowns and counts.

    ``records`` holds one dict per scored sample saying what the scorer found (e.g. AMBER: nouns kept, covered
    objects, hallucinated mentions; MMHal: rating and judge text), each with the sample's ``id``. They go to
    ``scores.jsonl`` in the run directory, not to ``metrics.json``.
    """

    task: str
    headline: dict[str, float]
    breakdown: dict[str, dict[str, float]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        del out["records"]
        return out
