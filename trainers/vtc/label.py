"""Stage 3 of ``harness build-vtc``: a vision-capable LLM labels each mined pair with its contrast type.

For each pair the LLM (GPT-4o by default; any OpenAI-compatible model through the harness judge client,
:class:`harness.judge_openai.OpenAIJudge`: disk cache, retries with backoff, token and cost ledger, failures
counted) sees both images and scores **each** of the nine contrast types (:func:`trainers.vtc.contrast_types`) for

- *Importance* (0-10): how prominent and meaningful that kind of difference between the two images is, and
- *Hallucination Likelihood* (0-10): how likely a CLIP-based vision-language model is to confuse the two images in
  that respect,

with a one-sentence rationale for each type, plus one sentence naming the main difference. The overall score of a
type is Importance + Hallucination Likelihood; the highest overall score picks the pair's type (ties: the higher
Hallucination Likelihood, then the paper's order of the types). All nine scores and rationales are kept.

Replies are parsed strictly (:func:`parse_label`): one JSON object (a single surrounding ```json fence is
tolerated) with ``difference`` and exactly one ``scores`` entry per type, numbers in [0, 10], non-empty rationales.
Anything else leaves the pair unlabelled with a status, counted and listed in ``DIR/label/unlabelled.jsonl``:

- ``failed``: no reply (retries spent, timeouts, server errors; not cached, so a rerun asks again);
- ``refusal``: a reply that is not JSON and reads as a refusal ("I'm sorry, I can't ...");
- ``malformed``: any other reply that does not parse or misses a field;
- ``no_difference``: every type scored 0;
- ``unreadable``: an image could not be read.

Images go as base64 data URLs (JPEG, quality 90, longest side at most ``image_max_side`` pixels: deterministic, so
the judge's cache key is stable). ``DIR/label/labels.jsonl`` holds one line per pair; a rerun keeps the pairs already
labelled by the same model and prompt version and asks only for the rest (and the LLM cache answers repeated
requests for free).
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import DataError
from harness.io import atomic_write_json, atomic_write_text, dumps_record, iter_jsonl
from harness.judge import Judge, JudgeRequest
from trainers.vtc import contrast_types, find_contrast_type

log = logging.getLogger("harness.vtc.label")

LABEL_PROMPT_VERSION = 1
LABEL_MAX_TOKENS = 2000
SCORE_RANGE = (0.0, 10.0)
STATUSES = ("labelled", "failed", "refusal", "malformed", "no_difference", "unreadable")

_REFUSAL = re.compile(
    r"\b(i'?m sorry|i am sorry|i apologi[sz]e|i can(?:'|no)t|i am unable|i'?m unable|unable to (?:help|assist|comply)|"
    r"not able to (?:help|assist)|as an ai)\b",
    re.IGNORECASE,
)
_FENCE = re.compile(r"```(?:json)?\s*\n?(.*?)\n?\s*```", re.DOTALL)


# --------------------------------------------------------------------------------------------------------------------
# images and JSON replies


def image_data_url(image: Any, max_side: int = 768, quality: int = 90) -> str:
    """A ``data:image/jpeg;base64,...`` URL of a PIL image, its longest side shrunk to ``max_side`` (deterministic)."""
    from PIL import Image

    img = image.convert("RGB") if image.mode != "RGB" else image
    if max(img.size) > max_side:
        scale = max_side / max(img.size)
        img = img.resize(
            (max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.Resampling.BICUBIC
        )
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality, optimize=False, progressive=False, subsampling=0)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class ReplyError(Exception):
    """A reply that cannot be used: ``kind`` is the status it gives (refusal, malformed, or a check's name)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def parse_json_reply(text: str) -> dict[str, Any]:
    """The JSON object a reply consists of (optionally inside one ```json fence); else a :class:`ReplyError`."""
    stripped = text.strip()
    fenced = _FENCE.fullmatch(stripped)
    if fenced:
        stripped = fenced.group(1).strip()
    if not stripped.startswith("{"):
        kind = "refusal" if _REFUSAL.search(text) else "malformed"
        raise ReplyError(
            kind, "the reply is not a JSON object" + (" (it reads as a refusal)" if kind == "refusal" else "")
        )
    try:
        obj = json.loads(stripped)
    except json.JSONDecodeError as exc:
        raise ReplyError("malformed", f"invalid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
    if not isinstance(obj, dict):
        raise ReplyError("malformed", f"expected a JSON object, got {type(obj).__name__}")
    return obj


def _text_field(obj: dict[str, Any], key: str, where: str = "") -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ReplyError("malformed", f"{where}{key!r} must be a non-empty string")
    return value.strip()


def _score(obj: dict[str, Any], key: str, where: str) -> float:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ReplyError("malformed", f"{where}{key!r} must be a number, got {value!r}")
    lo, hi = SCORE_RANGE
    if not lo <= value <= hi:
        raise ReplyError("malformed", f"{where}{key!r} must be in [{lo:g}, {hi:g}], got {value!r}")
    return float(value)


# --------------------------------------------------------------------------------------------------------------------
# the labelling prompt and its reply


def label_prompt() -> str:
    """The instruction sent after the two images (the same for every pair)."""
    types = "\n".join(f"{k}. {t.name}: {t.definition}" for k, t in enumerate(contrast_types(), start=1))
    example = {
        "difference": "<one sentence: the main visible difference between Image 1 and Image 2>",
        "scores": [
            {
                "type": contrast_types()[0].name,
                "importance": 0,
                "hallucination_likelihood": 0,
                "rationale": "<one sentence>",
            },
            "... one entry for each of the nine types, in order",
        ],
    }
    return (
        "Image 1 and Image 2 look almost the same to a CLIP image encoder, yet a self-supervised vision model sees "
        "them as different. Find out how they differ.\n\n"
        "For each of the nine contrast types below, score:\n"
        "- importance (0-10): how prominent and meaningful this kind of difference between the two images is "
        "(0: the images do not differ in this respect);\n"
        "- hallucination_likelihood (0-10): how likely a vision-language model that sees images through CLIP is "
        "to confuse the two images in this respect and describe one with the details of the other;\n"
        "and give a one-sentence rationale that names what you see in each image.\n\n"
        f"Contrast types:\n{types}\n\n"
        "Reply with one JSON object and nothing else, in this form:\n"
        f"{json.dumps(example, ensure_ascii=False)}\n"
        "Use the type names exactly as written above. If the images do not differ, score every type 0."
    )


@dataclass(frozen=True)
class TypeScore:
    """The LLM's scores for one contrast type of one pair."""

    type: str
    importance: float
    hallucination_likelihood: float
    rationale: str

    @property
    def overall(self) -> float:
        return self.importance + self.hallucination_likelihood

    def to_record(self) -> dict[str, Any]:
        return {**asdict(self), "overall": self.overall}


def parse_label(text: str) -> tuple[tuple[TypeScore, ...], str]:
    """(the nine scores in the paper's order, the difference sentence) of a labelling reply; else a ReplyError."""
    obj = parse_json_reply(text)
    difference = _text_field(obj, "difference")
    entries = obj.get("scores")
    if not isinstance(entries, list):
        raise ReplyError("malformed", "'scores' must be a list with one entry per contrast type")
    found: dict[str, TypeScore] = {}
    for k, entry in enumerate(entries, start=1):
        where = f"scores[{k}]: "
        if not isinstance(entry, dict):
            raise ReplyError("malformed", f"{where}expected an object")
        name = entry.get("type")
        t = find_contrast_type(name) if isinstance(name, str) else None
        if t is None:
            raise ReplyError("malformed", f"{where}unknown contrast type {name!r}")
        if t.name in found:
            raise ReplyError("malformed", f"{where}type {t.name!r} is scored twice")
        found[t.name] = TypeScore(
            t.name,
            _score(entry, "importance", where),
            _score(entry, "hallucination_likelihood", where),
            _text_field(entry, "rationale", where),
        )
    missing = [t.name for t in contrast_types() if t.name not in found]
    if missing:
        raise ReplyError("malformed", f"no scores for {', '.join(missing)}")
    return tuple(found[t.name] for t in contrast_types()), difference


def choose_type(scores: Sequence[TypeScore]) -> TypeScore | None:
    """The highest overall score (ties: higher hallucination likelihood, then the paper's order); None if all 0."""
    best: TypeScore | None = None
    for s in scores:  # in the paper's order: the first of equals wins
        if best is None or (s.overall, s.hallucination_likelihood) > (best.overall, best.hallucination_likelihood):
            best = s
    return best if best is not None and best.overall > 0 else None


@dataclass(frozen=True)
class Label:
    """The labelling of one pair: ``status`` (see :data:`STATUSES`), the chosen type and all scores when labelled."""

    pair_id: str
    status: str
    contrast_type: str | None = None
    difference: str | None = None
    scores: tuple[TypeScore, ...] = ()
    error: str | None = None
    reply: str | None = None
    model: str | None = None
    prompt_version: int = LABEL_PROMPT_VERSION

    @property
    def labelled(self) -> bool:
        return self.status == "labelled"

    def score_of(self, type_name: str) -> TypeScore | None:
        return next((s for s in self.scores if s.type == type_name), None)

    def to_record(self) -> dict[str, Any]:
        rec = asdict(self)
        rec["scores"] = [s.to_record() for s in self.scores]
        return rec

    @classmethod
    def from_record(cls, obj: dict[str, Any]) -> Label:
        scores = tuple(
            TypeScore(s["type"], float(s["importance"]), float(s["hallucination_likelihood"]), s["rationale"])
            for s in obj.get("scores") or ()
        )
        return cls(
            obj["pair_id"],
            obj["status"],
            obj.get("contrast_type"),
            obj.get("difference"),
            scores,
            obj.get("error"),
            obj.get("reply"),
            obj.get("model"),
            int(obj.get("prompt_version", 0)),
        )


def label_from_reply(pair_id: str, text: str | None, error: str | None, model: str) -> Label:
    """The :class:`Label` of one judge reply (``text=None``: the call failed with ``error``)."""
    if text is None:
        return Label(pair_id, "failed", error=error or "no reply", model=model)
    try:
        scores, difference = parse_label(text)
    except ReplyError as exc:
        return Label(pair_id, exc.kind, error=str(exc), reply=text[:2000], model=model)
    best = choose_type(scores)
    if best is None:
        return Label(
            pair_id,
            "no_difference",
            difference=difference,
            scores=scores,
            error="every contrast type scored 0",
            model=model,
        )
    return Label(pair_id, "labelled", best.type, difference, scores, model=model)


# --------------------------------------------------------------------------------------------------------------------
# the stage


def pair_images_content(url_a: str, url_b: str, text: str) -> list[dict[str, Any]]:
    """One user message's content: "Image 1:", the first image, "Image 2:", the second, then the instruction."""
    return [
        {"type": "text", "text": "Image 1:"},
        {"type": "image_url", "image_url": {"url": url_a}},
        {"type": "text", "text": "Image 2:"},
        {"type": "image_url", "image_url": {"url": url_b}},
        {"type": "text", "text": text},
    ]


@dataclass
class PairImages:
    """Reads the two images of pairs as data URLs, from the pool the embed stage recorded."""

    pool: Any
    max_side: int = 768

    def urls(self, id_a: str, id_b: str) -> tuple[str, str]:
        pool = self.pool
        return (
            image_data_url(pool.open(pool.item(id_a)), self.max_side),
            image_data_url(pool.open(pool.item(id_b)), self.max_side),
        )


def read_labels(out_dir: str | os.PathLike[str], *, required: bool = True) -> list[Label]:
    """The labels of ``DIR/label/labels.jsonl`` ([] when absent and not ``required``)."""
    path = Path(out_dir) / "label" / "labels.jsonl"
    if not path.is_file():
        if required:
            from harness.errors import ConfigError

            raise ConfigError(f"no labels at {path}: run `harness build-vtc --stage label` first")
        return []
    labels = []
    for lineno, obj in iter_jsonl(path):
        try:
            labels.append(Label.from_record(obj))
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"malformed label ({exc})", path=path, line=lineno) from exc
    return labels


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for s in range(0, len(items), size):
        yield items[s : s + size]


@dataclass
class LabelSummary:
    """Counts of a labelling run: by status, by chosen type and by source, with the LLM's ledger."""

    counts: dict[str, int] = field(default_factory=dict)
    types: dict[str, int] = field(default_factory=dict)
    per_source: dict[str, int] = field(default_factory=dict)
    reused: int = 0
    ledger: dict[str, Any] | None = None


def run_label_stage(
    out_dir: str | os.PathLike[str],
    judge: Judge,
    *,
    max_pairs: int | None = None,
    image_max_side: int = 768,
    chunk_size: int = 64,
    progress: bool = True,
) -> LabelSummary:
    """Label the mined pairs of ``DIR`` (the first ``max_pairs`` only, when given) with ``judge``."""
    from tqdm import tqdm

    from trainers.vtc.embed import load_pool
    from trainers.vtc.mine import read_pairs

    out = Path(out_dir)
    pairs = read_pairs(out)
    if max_pairs is not None:
        pairs = pairs[:max_pairs]
    previous = {lab.pair_id: lab for lab in read_labels(out, required=False)}
    images = PairImages(load_pool(out), image_max_side)
    prompt = label_prompt()
    labels: dict[str, Label] = {}
    todo = []
    for p in pairs:
        old = previous.get(p.pair_id)
        if old is not None and old.labelled and old.model == judge.model and old.prompt_version == LABEL_PROMPT_VERSION:
            labels[p.pair_id] = old
        else:
            todo.append(p)
    reused = len(labels)
    label_dir = out / "label"
    label_dir.mkdir(parents=True, exist_ok=True)
    with tqdm(total=len(todo), desc="label", unit="pair", disable=None if progress else True) as bar:
        for chunk in _chunks(todo, chunk_size):
            requests = []
            for p in chunk:
                try:
                    url_a, url_b = images.urls(p.id_a, p.id_b)
                except Exception as exc:  # noqa: BLE001 - an unreadable image leaves the pair unlabelled
                    labels[p.pair_id] = Label(
                        p.pair_id, "unreadable", error=f"{type(exc).__name__}: {exc}", model=judge.model
                    )
                    continue
                requests.append(
                    JudgeRequest(
                        p.pair_id,
                        ({"role": "user", "content": pair_images_content(url_a, url_b, prompt)},),
                        temperature=0.0,
                        max_tokens=LABEL_MAX_TOKENS,
                    )
                )
            if requests:
                for pid, result in judge.judge(requests).items():
                    labels[pid] = label_from_reply(pid, result.text, result.error, judge.model)
            bar.update(len(chunk))
    ordered = [labels[p.pair_id] for p in pairs]
    atomic_write_text(label_dir / "labels.jsonl", "".join(dumps_record(lab.to_record()) + "\n" for lab in ordered))
    unlabelled = [
        {"pair_id": lab.pair_id, "status": lab.status, "error": lab.error} for lab in ordered if not lab.labelled
    ]
    atomic_write_text(label_dir / "unlabelled.jsonl", "".join(dumps_record(u) + "\n" for u in unlabelled))
    source = {p.pair_id: p.source for p in pairs}
    summary = LabelSummary(
        counts={s: sum(lab.status == s for lab in ordered) for s in STATUSES},
        types=dict(Counter(lab.contrast_type for lab in ordered if lab.labelled and lab.contrast_type)),
        per_source=dict(sorted(Counter(source[lab.pair_id] for lab in ordered if lab.labelled).items())),
        reused=reused,
        ledger=judge.ledger().to_dict(),
    )
    atomic_write_json(
        label_dir / "summary.json",
        {"model": judge.model, "prompt_version": LABEL_PROMPT_VERSION, "pairs": len(pairs), **asdict(summary)},
    )
    bad = len(ordered) - summary.counts["labelled"]
    log.info(
        "label: %d of %d pairs labelled (%d reused), %d unlabelled (%s)",
        summary.counts["labelled"],
        len(ordered),
        reused,
        bad,
        ", ".join(f"{k} {v}" for k, v in summary.counts.items() if k != "labelled" and v),
    )
    return summary


__all__ = [
    "LABEL_PROMPT_VERSION",
    "STATUSES",
    "Label",
    "LabelSummary",
    "PairImages",
    "ReplyError",
    "TypeScore",
    "choose_type",
    "image_data_url",
    "label_from_reply",
    "label_prompt",
    "pair_images_content",
    "parse_json_reply",
    "parse_label",
    "read_labels",
    "run_label_stage",
]
