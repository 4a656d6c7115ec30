"""Stage 4 of ``harness build-vtc``: the LLM writes a shared prompt and two grounded responses for each pair.

For every accepted pair (all labelled pairs, or those the review accepted: :mod:`trainers.vtc.review`) and every
task type in ``tasks``

- ``description`` (detailed description): one instruction asking for a detailed description, the same for both
  images, and a detailed description of each image;
- ``vqa`` (contrastive VQA): one question whose correct answer differs between the two images because of their
  difference, and the answer for each image;

the LLM sees both images, the pair's contrast type with its definition, the labeller's difference sentence and
rationale, and the curated in-context exemplars of the task type (``trainers/vtc/data/exemplars.json``, the same for
every request, so the style stays uniform and the two responses differ only where the images differ). It replies
with one JSON object: ``prompt``, ``response_1`` (grounded in image 1), ``response_2`` (image 2), and
``contrast_terms_1`` / ``contrast_terms_2``, the phrases of each response that state the difference.

Checks (:func:`check_written`) reject, and count, outputs that

- ``malformed`` / ``refusal``: do not parse (see :func:`trainers.vtc.label.parse_json_reply`) or miss a field;
- ``identical``: have two responses equal up to case and spacing;
- ``no_contrast``: do not mention the contrast: a response lacks its own contrast terms, or both responses state
  the same terms;
- ``mentions_pair``: refer to "image 1", "the second image", "both images"...: the prompt is asked about one image at
  a time, so neither it nor a response may know about the other image;

and ``failed`` counts calls without a reply. Each kept output becomes one canonical preference record
(:class:`trainers.data.PreferenceExample`, written with :func:`trainers.data.write_preferences` to ``DIR/vtc.jsonl``):
``id`` ``<pair id>-<task>``, ``question`` the prompt, ``image_w`` / ``y_w`` image 1 and its response, ``image_l`` /
``y_l`` image 2 and its response, ``contrast_type`` the type's name, ``source`` the pair's source. JoMPO's symmetric
term uses both directions, so which image is ``w`` does not matter. Images from a Hugging Face dataset are written
once, content-addressed, under ``DIR/images/``. ``DIR/write/outputs.jsonl`` keeps every output with its status.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from harness.errors import ConfigError
from harness.io import atomic_write_json, atomic_write_text, dumps_record, iter_jsonl
from harness.judge import Judge, JudgeRequest
from trainers.vtc import DATA_DIR, ContrastType
from trainers.vtc.label import (
    Label,
    PairImages,
    ReplyError,
    pair_images_content,
    parse_json_reply,
    read_labels,
)
from trainers.vtc.review import apply_decisions, read_decisions

log = logging.getLogger("harness.vtc.write")

TASK_TYPES = ("description", "vqa")
WRITE_PROMPT_VERSION = 1
WRITE_MAX_TOKENS = 1500
STATUSES = ("written", "failed", "refusal", "malformed", "identical", "no_contrast", "mentions_pair")

_TASK_INSTRUCTIONS = {
    "description": (
        "Task: detailed description. Write one instruction that asks for a detailed description of an image (the "
        "same instruction is given for each image separately), then a detailed description of Image 1 "
        "(response_1) and of Image 2 (response_2), 3 to 6 sentences each."
    ),
    "vqa": (
        "Task: contrastive question answering. Write one question about a single image whose correct answer "
        "differs between Image 1 and Image 2 because of their difference (the same question is asked of each "
        "image separately), then the answer for Image 1 (response_1) and for Image 2 (response_2), one or two "
        "sentences each."
    ),
}
_MENTIONS_PAIR = re.compile(
    r"\b(?:image|picture|photo)\s*(?:#\s*)?(?:1|2|one|two)\b|"
    r"\b(?:first|second|other|both|two)\s+(?:images?|pictures?|photos?)\b|\bthe\s+pair\b",
    re.IGNORECASE,
)


@cache
def load_exemplars() -> dict[str, tuple[dict[str, Any], ...]]:
    """The curated exemplars of each task type (``data/exemplars.json``), checked once."""
    data = json.loads((DATA_DIR / "exemplars.json").read_text(encoding="utf-8"))
    out = {}
    for task in TASK_TYPES:
        items = data.get(task)
        if not isinstance(items, list) or not items:
            raise ConfigError(f"{DATA_DIR / 'exemplars.json'}: no exemplars for task {task!r}")
        for ex in items:
            check_written(parse_written(json.dumps(ex["output"])))  # the exemplars obey the rules they teach
        out[task] = tuple(items)
    return out


def write_prompt(contrast: ContrastType, difference: str, rationale: str | None, task: str) -> str:
    """The instruction sent after the two images."""
    if task not in _TASK_INSTRUCTIONS:
        raise ConfigError(f"unknown task type {task!r}; task types: {', '.join(TASK_TYPES)}")
    examples = "\n".join(
        json.dumps(
            {
                "images": ex["images"],
                "contrast_type": ex["contrast_type"],
                "difference": ex["difference"],
                "output": ex["output"],
            },
            ensure_ascii=False,
        )
        for ex in load_exemplars()[task]
    )
    reason = f" Why it matters: {rationale}" if rationale else ""
    return (
        "Image 1 and Image 2 look alike but differ in this respect: "
        f"{contrast.name} ({contrast.definition})\n"
        f"The difference, as a reviewer noted it: {difference}{reason}\n\n"
        f"{_TASK_INSTRUCTIONS[task]}\n\n"
        "Rules:\n"
        "- response_1 describes only what is visible in Image 1, response_2 only what is visible in Image 2.\n"
        "- Keep the two responses parallel: the same structure and the same words wherever the images agree; "
        "they differ only where the images differ, and each states the difference plainly.\n"
        "- Neither the prompt nor a response may mention Image 1, Image 2, the other image or that there are two "
        "images: each is about one image on its own.\n"
        "- contrast_terms_1 and contrast_terms_2 list the words or short phrases of response_1 and response_2 "
        "that state the difference, copied exactly from the response.\n\n"
        "Examples (their images are described in words):\n"
        f"{examples}\n\n"
        'Reply with one JSON object and nothing else: {"prompt": "...", "response_1": "...", "response_2": "...", '
        '"contrast_terms_1": ["..."], "contrast_terms_2": ["..."]}'
    )


@dataclass(frozen=True)
class WrittenOutput:
    """A parsed writer reply."""

    prompt: str
    response_1: str
    response_2: str
    contrast_terms_1: tuple[str, ...]
    contrast_terms_2: tuple[str, ...]


def _terms(obj: dict[str, Any], key: str) -> tuple[str, ...]:
    value = obj.get(key)
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        raise ReplyError("malformed", f"{key!r} must be a list of strings")
    return tuple(t.strip() for t in value if t.strip())


def parse_written(text: str) -> WrittenOutput:
    """A writer reply as a :class:`WrittenOutput`; a :class:`ReplyError` (malformed, refusal) otherwise."""
    obj = parse_json_reply(text)
    fields = {}
    for key in ("prompt", "response_1", "response_2"):
        value = obj.get(key)
        if not isinstance(value, str) or not value.strip():
            raise ReplyError("malformed", f"{key!r} must be a non-empty string")
        fields[key] = value.strip()
    return WrittenOutput(
        **fields, contrast_terms_1=_terms(obj, "contrast_terms_1"), contrast_terms_2=_terms(obj, "contrast_terms_2")
    )


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def check_written(out: WrittenOutput) -> None:
    """Raise a :class:`ReplyError` (identical, no_contrast, mentions_pair) when an output breaks a rule."""
    if _norm(out.response_1) == _norm(out.response_2):
        raise ReplyError("identical", "the two responses are identical")
    for k, (response, terms) in enumerate(
        ((out.response_1, out.contrast_terms_1), (out.response_2, out.contrast_terms_2)), start=1
    ):
        if not terms:
            raise ReplyError("no_contrast", f"contrast_terms_{k} is empty: response_{k} states no difference")
        absent = [t for t in terms if _norm(t) not in _norm(response)]
        if absent:
            raise ReplyError("no_contrast", f"response_{k} does not contain its contrast term {absent[0]!r}")
    if {_norm(t) for t in out.contrast_terms_1} == {_norm(t) for t in out.contrast_terms_2}:
        raise ReplyError("no_contrast", "both responses state the same contrast terms")
    for key in ("prompt", "response_1", "response_2"):
        m = _MENTIONS_PAIR.search(getattr(out, key))
        if m:
            raise ReplyError("mentions_pair", f"{key} refers to the pair ({m.group(0)!r})")


@dataclass(frozen=True)
class Written:
    """One writing result: a pair, a task type, a status, and the output when it passed the checks."""

    pair_id: str
    task: str
    contrast_type: str
    status: str
    output: WrittenOutput | None = None
    error: str | None = None
    reply: str | None = None

    @property
    def record_id(self) -> str:
        return f"{self.pair_id}-{self.task}"

    def to_record(self) -> dict[str, Any]:
        rec = asdict(self)
        rec["record_id"] = self.record_id
        return rec


def written_from_reply(pair_id: str, task: str, contrast_type: str, text: str | None, error: str | None) -> Written:
    """Parse and check one writer reply (``text=None``: the call failed with ``error``)."""
    if text is None:
        return Written(pair_id, task, contrast_type, "failed", error=error or "no reply")
    try:
        out = parse_written(text)
        check_written(out)
    except ReplyError as exc:
        return Written(pair_id, task, contrast_type, exc.kind, error=str(exc), reply=text[:2000])
    return Written(pair_id, task, contrast_type, "written", out)


@dataclass
class WriteSummary:
    """Counts of a writing run (by status, task type, contrast type and source) and the LLM's ledger."""

    counts: dict[str, int] = field(default_factory=dict)
    tasks: dict[str, int] = field(default_factory=dict)
    types: dict[str, int] = field(default_factory=dict)
    per_source: dict[str, int] = field(default_factory=dict)
    review: dict[str, int] = field(default_factory=dict)
    records: int = 0
    pairs: int = 0
    ledger: dict[str, Any] | None = None


def run_write_stage(
    out_dir: str | os.PathLike[str],
    judge: Judge,
    *,
    tasks: Sequence[str] = TASK_TYPES,
    decisions: Sequence[str | os.PathLike[str]] | None = None,
    image_max_side: int = 768,
    chunk_size: int = 64,
    progress: bool = True,
) -> WriteSummary:
    """Write the records of the accepted pairs of ``DIR`` to ``DIR/vtc.jsonl``."""
    from tqdm import tqdm

    from trainers.data import PreferenceExample, write_preferences
    from trainers.vtc.embed import load_pool
    from trainers.vtc.mine import read_pairs

    unknown = [t for t in tasks if t not in TASK_TYPES]
    if unknown or not tasks:
        raise ConfigError(
            f"unknown task type {unknown[0] if unknown else '(none)'!r}; task types: {', '.join(TASK_TYPES)}"
        )
    out = Path(out_dir)
    pairs = {p.pair_id: p for p in read_pairs(out)}
    labels = [lab for lab in read_labels(out) if lab.pair_id in pairs]
    outcome = apply_decisions(labels, read_decisions(decisions) if decisions else None)
    pool = load_pool(out)
    images = PairImages(pool, image_max_side)

    jobs: list[tuple[Label, ContrastType, str]] = [(lab, ct, task) for lab, ct in outcome.accepted for task in tasks]
    results: dict[str, Written] = {}
    with tqdm(total=len(jobs), desc="write", unit="output", disable=None if progress else True) as bar:
        for s in range(0, len(jobs), chunk_size):
            chunk = jobs[s : s + chunk_size]
            requests = []
            meta: dict[str, tuple[str, str, str]] = {}
            for lab, ct, task in chunk:
                pair = pairs[lab.pair_id]
                rid = f"{lab.pair_id}-{task}"
                try:
                    url_a, url_b = images.urls(pair.id_a, pair.id_b)
                except Exception as exc:  # noqa: BLE001 - an image gone since labelling: counted as failed
                    results[rid] = Written(lab.pair_id, task, ct.name, "failed", error=f"unreadable image: {exc}")
                    continue
                score = lab.score_of(ct.name)
                text = write_prompt(ct, lab.difference or "", score.rationale if score else None, task)
                requests.append(
                    JudgeRequest(
                        rid,
                        ({"role": "user", "content": pair_images_content(url_a, url_b, text)},),
                        temperature=0.0,
                        max_tokens=WRITE_MAX_TOKENS,
                    )
                )
                meta[rid] = (lab.pair_id, task, ct.name)
            if requests:
                for rid, result in judge.judge(requests).items():
                    results[rid] = written_from_reply(*meta[rid], result.text, result.error)
            bar.update(len(chunk))

    ordered = [results[f"{lab.pair_id}-{task}"] for lab, _, task in jobs]
    examples = []
    image_dir = out / "images"
    for w in ordered:
        if w.status != "written" or w.output is None:
            continue
        pair = pairs[w.pair_id]
        examples.append(
            PreferenceExample(
                id=w.record_id,
                question=w.output.prompt,
                image_w=pool.file_for(pool.item(pair.id_a), image_dir),
                image_l=pool.file_for(pool.item(pair.id_b), image_dir),
                y_w=w.output.response_1,
                y_l=w.output.response_2,
                contrast_type=w.contrast_type,
                source=pair.source,
            )
        )
    write_preferences(out / "vtc.jsonl", examples)
    write_dir = out / "write"
    write_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(write_dir / "outputs.jsonl", "".join(dumps_record(w.to_record()) + "\n" for w in ordered))
    written_pairs = {w.pair_id: w.contrast_type for w in ordered if w.status == "written"}
    summary = WriteSummary(
        counts={s: sum(w.status == s for w in ordered) for s in STATUSES},
        tasks=dict(Counter(w.task for w in ordered if w.status == "written")),
        types=dict(Counter(written_pairs.values())),
        per_source=dict(sorted(Counter(pairs[p].source for p in written_pairs).items())),
        review=outcome.counts,
        records=len(examples),
        pairs=len(written_pairs),
        ledger=judge.ledger().to_dict(),
    )
    atomic_write_json(
        write_dir / "summary.json",
        {"model": judge.model, "prompt_version": WRITE_PROMPT_VERSION, "tasks": list(tasks), **asdict(summary)},
    )
    log.info(
        "write: %d records from %d pairs -> %s (%s)",
        len(examples),
        len(written_pairs),
        out / "vtc.jsonl",
        ", ".join(f"{k} {v}" for k, v in summary.counts.items() if v),
    )
    return summary


def read_outputs(out_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The writer outputs of ``DIR/write/outputs.jsonl`` as dictionaries ([] before the write stage)."""
    path = Path(out_dir) / "write" / "outputs.jsonl"
    return [obj for _, obj in iter_jsonl(path)] if path.is_file() else []


__all__ = [
    "STATUSES",
    "TASK_TYPES",
    "WriteSummary",
    "Written",
    "WrittenOutput",
    "check_written",
    "load_exemplars",
    "parse_written",
    "read_outputs",
    "run_write_stage",
    "write_prompt",
    "written_from_reply",
]
