"""LLaVA-Bench (In-the-Wild): 60 open questions on 24 images, judged against GPT-4's text-only answers.

LLaVA-Bench (In-the-Wild) (Liu et al., 2023, "Visual Instruction Tuning"; HF dataset
``liuhaotian/llava-bench-in-the-wild``) asks 60 questions in three categories -- ``conv`` (conversation), ``detail``
(detailed description) and ``complex`` (complex reasoning) -- about 24 images, each with a human-written description
(``context.jsonl``) and a reference answer GPT-4 wrote from that description (``answers_gpt4.jsonl``). A judge LLM
sees the description, the question, the reference ("Assistant 1") and the model's answer ("Assistant 2") and rates
both from 1 to 10; the score is the model's mean rating relative to the reference's.

This module follows LLaVA's ``llava/eval/eval_gpt_review_bench.py``, ``llava/eval/summarize_gpt_review.py`` and
``llava/eval/table/rule.json`` (haotian-liu/LLaVA @ 181a2f811f1eb0b794c25e87204491d812c05f8d, :data:`JUDGE_SOURCE`,
with the caption fix of 237165b that LLaVA-1.5's ``scripts/v1_5/eval/llavabench.sh`` @ 4241f08 runs), quirks
included:

- Judge request (:func:`judge_request`): system :data:`JUDGE_SYSTEM`, user
  ``f"[Context]\\n{cap_str}\\n\\n[Question]\\n{question}\\n\\n[Assistant 1]\\n{reference}\\n\\n[End of Assistant 1]\\n\\n"
  f"[Assistant 2]\\n{answer}\\n\\n[End of Assistant 2]\\n\\n[System]\\n{prompt}\\n\\n"`` where ``prompt`` is
  ``rule.json``'s ``llava_bench_<category>`` prompt (:data:`RULES`; an unknown category is an error, as the
  official ``assert``), ``cap_str`` the image's ``context.jsonl`` caption (see Caption below); model
  ``gpt-4-0314``, ``temperature=0.2``, ``max_tokens=1024``.
- Caption: a list caption is joined with ``'\\n'``; a string caption (15 of the 60 questions) is used as it is, as
  in the fixed script (LLaVA commit 237165b, "Fix"), which LLaVA-1.5's own ``scripts/v1_5/eval/llavabench.sh``
  (@ 4241f08) runs, and lmms-eval's ``llava-in-the-wild`` (option ``llava_bench_caption=text``, the default).
  ``llava_bench_caption=join`` reproduces v1.0.0's script (181a2f8), whose ``'\\n'.join`` of a string puts a
  newline between every character of the judge's context; the notes say which ran.
- Rating (:func:`parse_score`): the reply's first line (``split('\\n')[0]``), commas replaced by spaces, split on
  single spaces; exactly two parts, both ``float()``-able -> ``[ref, model]``; anything else -> ``[-1, -1]``, and
  that pair **is averaged in** (the official code stores it in the ``tuple`` it sums). So "8 9" and "8,9" parse,
  "8, 9" (two spaces), "8 9 " (trailing space), "Assistant 1: 8" and "8/10 9/10" do not.
- ``summarize_gpt_review.py``: per category (``llava_bench_conv``, ``llava_bench_detail``, ``llava_bench_complex``)
  and ``all``: ``stats = np.asarray(pairs).mean(0)``, each rounded to 3 decimals, printed
  ``round(stats[1] / stats[0] * 100, 1)``.

Headline: ``Overall`` (the ``all`` line), ``Conversation``, ``Detail``, ``Complex`` (the category lines), relative
scores in percent as printed; ``breakdown[<category>]`` also has the rounded mean ratings (``Reference``,
``Model``) and ``n``.

Generation (``llava/eval/model_vqa.py``): the question ``text`` as the prompt, the image, greedy
(``--temperature 0``), ``max_new_tokens=1024``.

Departures that never change a number the official code prints:

- A failed judgment (judge unreachable, a saved review ``null``) is counted (``counts["judge_failed"]``) and left out
  of the means, with a note; it is never scored (the official script retries forever). An unparseable reply is
  averaged in as ``[-1, -1]``, as officially, and counted (``counts["unparsed"]``).
- Questions and reference answers are paired by position (the official ``zip``); a reference answer whose
  ``question_id`` differs from its question's is a :class:`DataError` (the official script would silently pair
  them). A question without a response (failed generation) is counted and not judged.
- A mean reference rating of 0 gives no relative score (the official code divides by zero).

Data (under the data root; option ``llava_bench_format``: ``auto``, ``jsonl``, ``parquet``):

- the HF dataset's files: ``questions.jsonl`` (``{"question_id", "image", "text", "category"}``),
  ``context.jsonl`` (``{"id", "image", "caption"}``), ``answers_gpt4.jsonl`` (``{"question_id", "text", ...}``) and
  ``images/<image>`` (the image root may also be the ``images/`` folder itself);
- ``lmms-lab/llava-bench-in-the-wild`` saved as parquet (``*.parquet`` in the data root or ``data/``):
  ``question_id``, ``question``, ``image`` (embedded), ``caption``, ``gpt_answer``, ``category``.

Sample ids are the ``question_id`` values. Saved reviews (``--reviews``): the official review file
(``eval_gpt_review_bench.py --output``, JSON lines with ``question_id`` and the judge's ``content``), or a JSON list
of reply texts in question order (``null``: a failed judgment). Answer files (``harness score llava_bench
--responses``): LLaVA's answers (``model_vqa.py``: JSON lines ``{"question_id", "text"}``).

Where the harness is stricter than the official scorer: a repeated ``question_id`` is an error; questions and
reference answers are paired by position as officially, but a count mismatch is an error instead of a silent ``zip``
truncation; a response over 100,000 characters is refused with its id.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from harness.errors import ConfigError, DataError
from harness.io import iter_jsonl, iter_parquet_rows, read_json
from harness.judge import Judge, JudgeRequest, ReplayJudge
from harness.task import DataFile, Task, register_task
from harness.types import ImageRef, Metrics, Response, Sample
from tasks import _scaffold as scaffold

log = logging.getLogger(__name__)

JUDGE_SOURCE = (
    "LLaVA llava/eval/eval_gpt_review_bench.py, llava/eval/summarize_gpt_review.py, "
    "llava/eval/table/rule.json, https://github.com/haotian-liu/LLaVA, "
    "commit 181a2f811f1eb0b794c25e87204491d812c05f8d"
)
GENERATION_SOURCE = "LLaVA llava/eval/model_vqa.py (scripts/v1_5/eval/llavabench.sh @ 4241f08)"
DATA_SOURCE = (
    "LLaVA-Bench (In-the-Wild): https://huggingface.co/datasets/liuhaotian/llava-bench-in-the-wild "
    "(questions.jsonl, context.jsonl, answers_gpt4.jsonl, images/), or lmms-lab/llava-bench-in-the-wild "
    "saved as parquet"
)

QUESTIONS_FILE = "questions.jsonl"
CONTEXT_FILE = "context.jsonl"
REFERENCE_FILE = "answers_gpt4.jsonl"
JSONL_FILES: tuple[str, ...] = (QUESTIONS_FILE, CONTEXT_FILE, REFERENCE_FILE)
FORMATS: tuple[str, ...] = scaffold.format_choices("jsonl")
CAPTION_MODES: tuple[str, ...] = ("join", "text")

#: ``eval_gpt_review_bench.py``: ``model='gpt-4-0314'``, ``temperature=0.2``, ``--max-tokens`` 1024.
DEFAULT_JUDGE_MODEL = "gpt-4-0314"
JUDGE_TEMPERATURE = 0.2
JUDGE_MAX_TOKENS = 1024
JUDGE_SYSTEM = "You are a helpful and precise assistant for checking the quality of the answer."
#: ``model_vqa.py``: ``max_new_tokens=1024``.
DEFAULT_MAX_NEW_TOKENS = 1024

_RULE_PROMPT = (
    "We would like to request your feedback on the performance of two AI assistants in response to the "
    "user question displayed above. The user asks the question on observing an image. For your "
    "reference, the visual content in the image is represented with a few sentences describing the "
    "image. \nPlease rate the helpfulness, relevance, accuracy, level of details of their responses. "
    "Each assistant receives an overall score on a scale of 1 to 10, where a higher score indicates "
    "better overall performance.\nPlease first output a single line containing only two values "
    "indicating the scores for Assistant 1 and 2, respectively. The two scores are separated by a "
    "space.\nIn the subsequent line, please provide a comprehensive explanation of your evaluation, "
    "avoiding any potential bias and ensuring that the order in which the responses were presented does "
    "not affect your judgment."
)
#: ``rule.json``'s LLaVA-Bench entries: ``{category key: {"role", "prompt"}}`` (the three prompts are identical).
RULES: dict[str, dict[str, str]] = {
    f"llava_bench_{cat}": {"role": "Assistant", "prompt": _RULE_PROMPT} for cat in ("conv", "detail", "complex")
}
#: Official category -> headline name (the LLaVA paper's columns).
CATEGORY_NAMES: dict[str, str] = {"conv": "Conversation", "detail": "Detail", "complex": "Complex"}
UNPARSED: tuple[float, float] = (-1.0, -1.0)


# --------------------------------------------------------------------------------------------------- official rules
def caption_text(caption: Any, mode: str = "join") -> str:
    """``cap_str``: ``'\\n'.join(caption)`` (``join``, LLaVA v1.0.0: a string is split into characters), or with
    ``text`` (the task's default, LLaVA's fixed script) a string as it is."""
    if mode == "text" and isinstance(caption, str):
        return caption
    return "\n".join(caption)


def judge_content(cap_str: str, question: str, reference: str, answer: str, category: str) -> str:
    """The official user message (see the module docstring); ``category`` is ``conv``, ``detail`` or ``complex``."""
    key = f"llava_bench_{category}"
    if key not in RULES:
        raise ValueError(f"Visual QA category not found in rule file: {key}.")
    role, prompt = RULES[key]["role"], RULES[key]["prompt"]
    return (
        f"[Context]\n{cap_str}\n\n"
        f"[Question]\n{question}\n\n"
        f"[{role} 1]\n{reference}\n\n[End of {role} 1]\n\n"
        f"[{role} 2]\n{answer}\n\n[End of {role} 2]\n\n"
        f"[System]\n{prompt}\n\n"
    )


def judge_request(request_id: str, content: str) -> JudgeRequest:
    """One official judge call: system + user message, temperature 0.2, ``max_tokens`` 1024."""
    return JudgeRequest(
        id=request_id,
        messages=({"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": content}),
        temperature=JUDGE_TEMPERATURE,
        max_tokens=JUDGE_MAX_TOKENS,
    )


def parse_score(review: str) -> tuple[float, float]:
    """``parse_score``: ``(reference, model)`` from the first line, else :data:`UNPARSED` ``(-1, -1)``."""
    return _parse(review)[0]


def _parse(review: str) -> tuple[tuple[float, float], bool]:
    """The official pair and whether the reply parsed (a reply "-1 -1" parses to the same pair as a failure)."""
    try:
        parts = review.split("\n")[0].replace(",", " ").split(" ")
        if len(parts) == 2:
            return (float(parts[0]), float(parts[1])), True
        return UNPARSED, False
    except (ValueError, AttributeError):
        return UNPARSED, False


def relative_score(pairs: Sequence[Sequence[float]]) -> tuple[float | None, list[float]]:
    """``summarize_gpt_review.py``: ``(round(stats[1] / stats[0] * 100, 1), stats)`` with ``stats`` the column
    means rounded to 3 decimals; ``None`` when ``stats[0]`` is 0."""
    stats = [round(x, 3) for x in np.asarray(pairs, dtype=float).mean(0).tolist()]
    if stats[0] == 0:
        return None, stats
    return round(stats[1] / stats[0] * 100, 1), stats


# --------------------------------------------------------------------------------------------------- data
@dataclass(frozen=True)
class BenchQuestion:
    """One LLaVA-Bench question with its image description and reference answer."""

    question_id: int
    position: int
    text: str
    category: str
    image: str
    caption: Any
    reference: str
    image_bytes: bytes | None = None

    @property
    def sample_id(self) -> str:
        return str(self.question_id)


def _int_id(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _check_category(category: Any, path: Path, where: str, line: int | None = None) -> str:
    if not isinstance(category, str) or f"llava_bench_{category}" not in RULES:
        raise DataError(
            f"{where}: category {category!r}; expected one of {', '.join(CATEGORY_NAMES)} (the official "
            f"rule.json has no 'llava_bench_{category}')",
            path=path,
            line=line,
        )
    return category


def _check_caption(caption: Any, path: Path, where: str, line: int | None = None) -> Any:
    if isinstance(caption, str) or (isinstance(caption, list) and all(isinstance(c, str) for c in caption)):
        return caption
    raise DataError(f"{where}: field 'caption' must be a string or a list of strings", path=path, line=line)


def read_jsonl_layout(root: Path) -> list[BenchQuestion]:
    """``questions.jsonl`` + ``context.jsonl`` + ``answers_gpt4.jsonl`` (paired with the questions by position)."""
    qpath, cpath, rpath = (root / name for name in JSONL_FILES)
    contexts: dict[str, Any] = {}
    for lineno, obj in iter_jsonl(cpath):
        if not isinstance(obj.get("image"), str) or "caption" not in obj:
            raise DataError('expected {"id", "image", "caption"}', path=cpath, line=lineno)
        contexts[obj["image"]] = _check_caption(obj["caption"], cpath, f"image {obj['image']}", lineno)
    refs = list(iter_jsonl(rpath))
    questions = list(iter_jsonl(qpath))
    if len(refs) != len(questions):
        raise DataError(
            f"holds {len(refs)} reference answers for the {len(questions)} questions of {qpath} "
            f"(paired by position, as the official script)",
            path=rpath,
        )
    out: list[BenchQuestion] = []
    for i, ((lineno, q), (rline, ref)) in enumerate(zip(questions, refs)):
        qid = _int_id(q.get("question_id"))
        if qid is None or not isinstance(q.get("text"), str) or not isinstance(q.get("image"), str):
            raise DataError('expected {"question_id": int, "image", "text", "category"}', path=qpath, line=lineno)
        category = _check_category(q.get("category"), qpath, f"question {qid}", lineno)
        if q["image"] not in contexts:
            raise DataError(f"question {qid}: image {q['image']!r} has no entry in {cpath}", path=qpath, line=lineno)
        if not isinstance(ref.get("text"), str):
            raise DataError("missing or non-string field 'text' (GPT-4's reference answer)", path=rpath, line=rline)
        ref_id = ref.get("question_id")
        if ref_id is not None and ref_id != qid:
            raise DataError(
                f"reference answer for question_id {ref_id!r} on line {rline}, where question {qid} "
                f"is on line {lineno} of {qpath}; expected the files in the same order",
                path=rpath,
                line=rline,
            )
        out.append(
            BenchQuestion(
                question_id=qid,
                position=i,
                text=q["text"],
                category=category,
                image=q["image"],
                caption=contexts[q["image"]],
                reference=ref["text"],
            )
        )
    if not out:
        raise DataError("holds no questions", path=qpath)
    return out


def read_parquet_layout(paths: Sequence[Path]) -> list[BenchQuestion]:
    """lmms-lab's parquet rows: ``question_id``, ``question``, ``image``, ``caption``, ``gpt_answer``, ``category``."""
    out: list[BenchQuestion] = []
    for path in paths:
        for i, row in enumerate(iter_parquet_rows(path)):
            where = f"row {i}"
            qid = _int_id(row.get("question_id"))
            if qid is None:
                raise DataError(f"{where}: missing or non-integer field 'question_id'", path=path)
            for key in ("question", "gpt_answer"):
                if not isinstance(row.get(key), str):
                    raise DataError(f"{where} (question {qid}): missing or non-string field {key!r}", path=path)
            image = row.get("image")
            if not (isinstance(image, Mapping) and isinstance(image.get("bytes"), (bytes, bytearray))):
                raise DataError(
                    f"{where} (question {qid}): no embedded image; expected 'image' with 'bytes'", path=path
                )
            category = _check_category(row.get("category"), path, f"{where} (question {qid})")
            caption = _check_caption(row.get("caption"), path, f"{where} (question {qid})")
            name = row.get("image_id") if isinstance(row.get("image_id"), str) else f"{qid}"
            out.append(
                BenchQuestion(
                    question_id=qid,
                    position=len(out),
                    text=row["question"],
                    category=category,
                    image=name,
                    caption=caption,
                    reference=row["gpt_answer"],
                    image_bytes=bytes(image["bytes"]),
                )
            )
    if not out:
        raise DataError("holds no questions", path=", ".join(str(p) for p in paths))
    return out


def read_reviews(path: str | Path, question_ids: Sequence[str]) -> ReplayJudge:
    """Saved judge replies as a judge (request id = sample id): the official review file (JSON lines with
    ``question_id`` and ``content``), or a JSON list of reply texts (``null``: failed) in the order of
    ``question_ids``."""
    path = Path(path)
    replies: dict[str, str | None] = {}
    try:
        data = read_json(path)
    except DataError:
        data = None  # JSON lines, not one JSON document
    if isinstance(data, list):
        replies = scaffold.replies_in_order(data, question_ids, path)
        for i, text in enumerate(replies.values()):
            if text is not None and not isinstance(text, str):
                raise DataError(
                    f"reply {i} is a {type(text).__name__}; expected the judge's reply text or null", path=path
                )
    elif isinstance(data, dict):  # a single review record on one line
        replies = _review_lines([(1, data)], path)
    else:
        replies = _review_lines(list(iter_jsonl(path)), path)
    if not replies:
        raise DataError("holds no judge replies", path=path)
    return ReplayJudge(replies, source=str(path), strict=True)


def _review_lines(lines: Sequence[tuple[int, Mapping[str, Any]]], path: Path) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    reviewed = scaffold.UniqueIds(path)
    for lineno, obj in lines:
        qid, content = obj.get("question_id"), obj.get("content")
        if (
            not isinstance(qid, (int, str))
            or isinstance(qid, bool)
            or "content" not in obj
            or not (content is None or isinstance(content, str))
        ):
            raise DataError(
                'expected an official review {"question_id", "content": <the judge\'s reply>} '
                "(eval_gpt_review_bench.py --output)",
                path=path,
                line=lineno,
            )
        reviewed.add(str(qid), f"a second review for question_id {qid}", line=lineno)
        out[str(qid)] = content
    return out


# --------------------------------------------------------------------------------------------------- scoring
@dataclass(frozen=True)
class _Item:
    id: str
    category: str
    content: str


def score_items(
    items: Sequence[_Item],
    judge: Judge,
    *,
    task: str = "llava_bench",
    extra_counts: Mapping[str, int] | None = None,
    extra_notes: Sequence[str] = (),
) -> Metrics:
    """Judge ``items`` and compute ``summarize_gpt_review.py``'s relative scores over the successful judgments."""
    by_id = {it.id: it for it in items}
    loop = scaffold.run_judge(judge, list(by_id), lambda sid, _: judge_request(sid, by_id[sid].content), _parse)
    pairs: dict[str, list[tuple[float, float]]] = {}
    all_pairs: list[tuple[float, float]] = []
    records: list[dict[str, Any]] = []
    for j in loop:
        it = by_id[j.id]
        pair = None if j.failed else j.value
        if pair is not None:
            pairs.setdefault(it.category, []).append(pair)
            all_pairs.append(pair)
        if j.unparsed:
            log.warning(
                "LLaVA-Bench question %s: the judge's first line holds no two scores (averaged in as "
                "[-1, -1], as the official scorer): %r",
                it.id,
                (j.reply or "")[:200],
            )
        records.append(
            {
                "id": it.id,
                "category": it.category,
                "tuple": None if pair is None else list(pair),
                "parsed": None if j.failed else j.parsed,
                "judge": j.reply,
                "judge_error": j.error,
            }
        )
    counts = scaffold.loop_counts(loop, ("judged", len(all_pairs)), **(extra_counts or {}))
    notes = [
        f"scorer: {JUDGE_SOURCE}",
        f"judge: {judge.model}",
        (
            "scores are 100 * mean(model rating) / mean(reference rating), each mean rounded to 3 decimals, "
            "printed to 1 decimal"
        ),
        *extra_notes,
    ]
    scaffold.loop_notes(
        notes,
        loop,
        "judge replies have no two scores on their first line and are averaged in as [-1, -1], as the official "
        "scorer does",
    )
    if not all_pairs:
        return scaffold.no_score(task, counts, notes, records)
    headline: dict[str, float] = {}
    breakdown: dict[str, dict[str, float]] = {}
    for key, name, group in [
        ("all", "Overall", all_pairs),
        *((cat, CATEGORY_NAMES[cat], pairs[cat]) for cat in CATEGORY_NAMES if cat in pairs),
    ]:
        score, stats = relative_score(group)
        if score is None:
            notes.append(
                f"{name}: the mean reference rating is 0: no relative score (the official code divides by zero)"
            )
        else:
            headline[name] = score
        if key != "all":
            entry: dict[str, float] = {"Reference": stats[0], "Model": stats[1], "n": len(group)}
            if score is not None:
                entry = {"Score": score, **entry}
            breakdown[name] = entry
        else:
            breakdown["summary"] = {"Reference": stats[0], "Model": stats[1], "n": len(group)}
    absent = [CATEGORY_NAMES[c] for c in CATEGORY_NAMES if c not in pairs]
    if absent:
        notes.append(f"no judged question of category {', '.join(absent)}")
    return Metrics(task=task, headline=headline, breakdown=breakdown, counts=counts, notes=notes, records=records)


def _no_judge() -> ConfigError:
    return scaffold.no_judge("llava_bench", DEFAULT_JUDGE_MODEL)


# --------------------------------------------------------------------------------------------------- task
@register_task
class LLaVABench(scaffold.DataLayout, Task):
    """LLaVA-Bench (In-the-Wild): 60 questions judged against GPT-4's reference answers; relative scores overall and
    per category (``eval_gpt_review_bench.py`` + ``summarize_gpt_review.py``).

    Options: ``llava_bench_caption`` (``text``, default: a string caption as it is, a list joined with newlines, as
    LLaVA's fixed script 237165b; ``join``: ``'\\n'.join(caption)`` of v1.0.0, a string split into characters),
    ``llava_bench_format`` (``auto``, ``jsonl``, ``parquet``).
    """

    name = "llava_bench"
    version = "1"
    description = (
        "LLaVA-Bench (In-the-Wild) (60 questions, GPT-4 judge vs GPT-4 reference answers): relative score "
        "overall and per category (LLaVA eval_gpt_review_bench.py + summarize_gpt_review.py)"
    )
    option_names = ("llava_bench_caption", "llava_bench_format")
    data_files = tuple(DataFile(name, DATA_SOURCE) for name in JSONL_FILES)
    default_max_new_tokens = DEFAULT_MAX_NEW_TOKENS
    default_judge_model: ClassVar[str] = DEFAULT_JUDGE_MODEL
    format_option = "llava_bench_format"
    release_names = JSONL_FILES
    layout_source = DATA_SOURCE

    def read_options(self) -> None:
        self.caption_mode = self.choice_option("llava_bench_caption", "text", CAPTION_MODES)
        self.read_format_option()

    def needs_judge(self) -> bool:
        return True

    def default_data_root(self) -> Path:
        raise ConfigError(
            f"task {self.name} needs --data-root: the folder holding {', '.join(JSONL_FILES)} and "
            f"images/ ({DATA_SOURCE})"
        )

    def read_layout(self, fmt: str, files: list[Path]) -> list[BenchQuestion]:
        questions = read_jsonl_layout(self.data_root) if fmt == "jsonl" else read_parquet_layout(files)
        scaffold.require_unique(
            questions,
            lambda q: q.question_id,
            lambda q: f"question_id {q.question_id} appears twice; expected unique ids",
            path=files[0],
        )
        return questions

    def questions(self) -> list[BenchQuestion]:
        """The benchmark's questions in file order (read once); a repeated ``question_id`` is a :class:`DataError`."""
        return self.layout_records()

    def _image(self, q: BenchQuestion) -> ImageRef:
        if q.image_bytes is not None:
            return ImageRef(data=q.image_bytes)
        return scaffold.first_file([self.image_root / "images" / q.image, self.image_root / q.image])

    def load_samples(self) -> list[Sample]:
        return [
            Sample(
                id=q.sample_id,
                prompt=q.text,
                images=(self._image(q),),
                reference={"question": q.text, "reference": q.reference, "category": q.category, "caption": q.caption},
                meta={"position": q.position, "category": q.category, "image": q.image},
            )
            for q in self.questions()
        ]

    def score(self, samples: Sequence[Sample], responses: Mapping[str, Response], judge: Any = None) -> Metrics:
        """Judge every sample that has a response; samples without one are counted (``no_response``)."""
        if judge is None:
            raise _no_judge()
        items: list[_Item] = []
        split_captions = 0
        for s in samples:
            if s.id not in responses:
                continue
            ref = s.reference
            split_captions += isinstance(ref["caption"], str) and self.caption_mode == "join"
            items.append(
                _Item(
                    s.id,
                    ref["category"],
                    judge_content(
                        caption_text(ref["caption"], self.caption_mode),
                        ref["question"],
                        ref["reference"],
                        responses[s.id].text,
                        ref["category"],
                    ),
                )
            )
        missing = len(samples) - len(items)
        notes = [f"generation: {GENERATION_SOURCE}", f"caption: {self.caption_mode}"]
        if split_captions:
            notes.append(
                f"{split_captions} judge prompts hold a string caption joined character by character "
                f"('\\n'.join(caption), as LLaVA v1.0.0's script did); the default llava_bench_caption=text "
                f"keeps it whole, as the fixed script"
            )
        if missing:
            notes.append(f"{missing} questions have no response (failed generation) and are not judged")
        return score_items(
            items,
            judge,
            task=self.name,
            extra_counts={"questions": len(samples), "no_response": missing},
            extra_notes=notes,
        )

    def read_reviews(self, path: str | Path) -> ReplayJudge:
        """The official review file or a JSON list of replies in question order; see :func:`read_reviews`."""
        return read_reviews(path, [q.sample_id for q in self.questions()])

    def read_responses(self, path: str | Path) -> dict[str, Response]:
        """LLaVA's ``model_vqa.py`` answers (JSON lines ``{"question_id", "text"}``; also ``answer``/``response``);
        unknown or repeated ids raise :class:`DataError` naming the file and line."""
        answers = scaffold.Answers(
            path, {q.sample_id for q in self.questions()}, f"a LLaVA-Bench question of {self.data_root}"
        )
        for lineno, obj in iter_jsonl(path):
            qid = obj.get("question_id")
            text = next((obj[k] for k in ("text", "answer", "response") if k in obj), None)
            if not isinstance(qid, (int, str)) or isinstance(qid, bool) or not isinstance(text, str):
                raise DataError('expected LLaVA\'s answer {"question_id", "text"}', path=path, line=lineno)
            answers.add(str(qid), text, lineno, name=f"question_id {qid}")
        return answers.responses
