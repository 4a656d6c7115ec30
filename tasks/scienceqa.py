"""ScienceQA-IMG: the image questions of ScienceQA's test split, answered with an option letter.

ScienceQA (Lu et al., 2022, "Learn to Explain"; https://scienceqa.github.io) has 21,208 multiple-choice science
questions, 4,241 in the test split, 2,017 of them with an image. LLaVA-1.5 reports the accuracy on those 2,017
("SQA-IMG", 66.8 for the 7B model), computed by LLaVA's ``llava/eval/eval_science_qa.py`` (LLaVA-1.5 version,
:data:`SCORER_SOURCE`; the stored haotian-liu/LLaVA copy @ 8959d5c is the LLaVA-v1 one that guesses at random, the
LLaVA-1.5 one read is the fork afra-baas/LLaVA @ d57f942, the same as SmallPigPeppa/LLaVA @ c41dd81) on answers from
``llava/eval/model_vqa_science.py --single-pred-prompt``. This module follows them, quirks included.

Prompt (:func:`build_prompt`): LLaVA-1.5's question file ``llava_test_CQM-A.json`` holds
``[f"Context: {hint}\\n" if hint] + question + "\\n" + "\\n".join(f"{letter}. {choice}")`` (the same text as
lmms-eval's ``sqa_doc_to_text``, ``format: default``); ``model_vqa_science.py`` removes ``<image>``, strips, and
appends ``"\\nAnswer with the option's letter from the given choices directly."`` (:data:`SINGLE_PRED_SUFFIX`).
When ``llava_test_CQM-A.json`` is under the data root its text is used verbatim; otherwise the prompt is built from
the record. Option ``scienceqa_suffix`` replaces the instruction (``none``: no instruction). Default budget 1024 new
tokens (``model_vqa_science.py``).

Answer parsing (:func:`parse_answer`), in order, on the response text as it is (no stripping):

1. the whole text is one of "A", "B", "C", "D", "E" -> that letter;
2. ``len(text) >= 3`` and ``text[0]`` is one of them and ``text[1:3] == ". "`` -> ``text[0]`` ("B. apostrophe");
3. ``re.compile(r'The answer is ([A-Z]).').findall(text)`` has exactly one hit -> that letter (the ``.`` matches
   any character, so "The answer is B" at the very end of the text does **not** match, "The answer is B," does);
4. else "FAILED".

``get_pred_idx``: the letter's index when it is among the first ``len(choices)`` of A-E, else -1 (wrong): "E" on a
two-choice question, "F" and "FAILED" are wrong. Quirks kept: "B." (two characters), " B", "B\\n" and "(B)" are
FAILED; "A. " + anything is A even if the text then argues for B.

Metrics: ``Accuracy = correct / total * 100`` over the answered test questions and ``IMG-Accuracy`` over those whose
prompt holds ``<image>`` (the image questions); printed ``{:.2f}``. The official script counts a question without a
prediction as wrong in ``Accuracy`` (prompt "Unknown"), and leaves it out of ``IMG-Accuracy`` (its prompt has no
``<image>``). On the image subset (this task, option ``scienceqa_subset=img``, default) the headline is
``IMG-Accuracy``: correct / answered image questions, exactly the official number (a question without a response is
left out, as officially). With ``scienceqa_subset=all`` (every question of the split, text-only ones without an
image) the headline has both, ``Accuracy`` counting unanswered questions as wrong as the official script does.
Unrounded values are in ``breakdown["unrounded"]``; ``counts["failed_parse"]`` counts the FAILED answers.

Data (under the data root; option ``scienceqa_format``: ``auto``, ``json`` or ``parquet``):

- the original release (https://github.com/lupantech/ScienceQA, ``data/scienceqa``): ``problems.json``
  (``{pid: {question, choices, answer, hint, image, ...}}``) and ``pid_splits.json`` (``{split: [pid, ...]}``);
  images ``<image root>/test/<pid>/image.png`` (also ``images/test/<pid>/`` or ``<pid>/`` directly), sample ids are
  the pids, in ``pid_splits.json`` order; option ``scienceqa_split`` (default ``test``);
- the HF layouts (``derek-thomas/ScienceQA``, ``lmms-lab/ScienceQA`` saved as parquet): ``test-*.parquet`` (in the
  data root, ``data/`` or ``ScienceQA-IMG/``) with ``question``, ``choices``, ``answer``, ``hint`` and the image
  embedded (``null`` for text-only questions); sample ids are ``<split>-<row>`` (the HF files carry no pid).

Answer files (``harness score scienceqa_img --responses FILE``): LLaVA's answers (``model_vqa_science.py``: JSON
lines ``{"question_id": pid, "prompt", "text"}``) or the harness' JSON lines with ``question_id``/``id`` and the
answer under ``text``, ``answer`` or ``response``; answers to split questions outside the subset (text-only ones)
are skipped and counted, ids not in the split are an error.

Where the harness is stricter than the official scorer: a second answer for one question id is an error (the
official ``eval_science_qa.py`` collects answers in a dict and keeps the last); an answer whose id is not a question
of the split is an error; a response over 100,000 characters is refused with its id.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import ConfigError, DataError, MissingDataFile
from harness.io import first_glob, iter_jsonl, iter_parquet_rows, read_json
from harness.task import DataFile, Task, register_task
from harness.types import ImageRef, Metrics, Response, Sample
from tasks import _scaffold as scaffold

log = logging.getLogger(__name__)

SCORER_SOURCE = (
    "LLaVA-1.5 llava/eval/eval_science_qa.py (https://github.com/haotian-liu/LLaVA; copy read: fork "
    "afra-baas/LLaVA @ d57f942b7bbffcb394b3a677d14441e0363386e5)"
)
PROMPT_SOURCE = (
    "LLaVA-1.5 playground/data/eval/scienceqa/llava_test_CQM-A.json + llava/eval/model_vqa_science.py "
    "--single-pred-prompt (scripts/v1_5/eval/sqa.sh @ 524a75b)"
)
DATA_SOURCE = (
    "ScienceQA: https://github.com/lupantech/ScienceQA (data/scienceqa: problems.json, pid_splits.json, "
    "images test/<pid>/image.png), or the HF dataset derek-thomas/ScienceQA / lmms-lab/ScienceQA saved "
    "as parquet (test-*.parquet)"
)

PROBLEMS_FILE = "problems.json"
SPLITS_FILE = "pid_splits.json"
LLAVA_QUESTION_FILE = "llava_test_CQM-A.json"
PARQUET_DIRS: tuple[str, ...] = ("", "data", "ScienceQA-IMG")
IMAGE_DIRS: tuple[str, ...] = ("test", "images/test", "")
FORMATS: tuple[str, ...] = scaffold.format_choices("json")
SUBSETS: tuple[str, ...] = ("img", "all")
#: ``eval_science_qa.py --options`` default.
OPTIONS: tuple[str, ...] = ("A", "B", "C", "D", "E")
SINGLE_PRED_SUFFIX = "\nAnswer with the option's letter from the given choices directly."
#: ``model_vqa_science.py``: ``max_new_tokens=1024``.
DEFAULT_MAX_NEW_TOKENS = 1024
FAILED = "FAILED"
_ANSWER_IS = re.compile(r"The answer is ([A-Z]).")


# --------------------------------------------------------------------------------------------------- official rules
def parse_answer(text: str, options: Sequence[str] = OPTIONS) -> str:
    """``eval_science_qa.py``'s answer: a letter, or "FAILED" (see the module docstring)."""
    if text in options:
        return text
    if len(text) >= 3 and text[0] in options and text[1:3] == ". ":
        return text[0]
    hits = _ANSWER_IS.findall(text)
    if len(hits) == 1:
        return hits[0]
    return FAILED


def pred_index(answer: str, n_choices: int, options: Sequence[str] = OPTIONS) -> int:
    """``get_pred_idx``: the index of ``answer`` among the first ``n_choices`` options, else -1."""
    if answer in options[:n_choices]:
        return list(options).index(answer)
    return -1


def build_prompt(question: str, hint: str, choices: Sequence[str]) -> str:
    """The question text of ``llava_test_CQM-A.json`` (without ``<image>`` and the answer instruction)."""
    context = f"Context: {hint}\n" if hint else ""
    letters = "\n".join(f"{chr(ord('A') + i)}. {c}" for i, c in enumerate(choices))
    return f"{context}{question}\n{letters}"


# --------------------------------------------------------------------------------------------------- data
@dataclass(frozen=True)
class SQAProblem:
    """One ScienceQA question; ``image`` is the file (original layout) or None, ``image_bytes`` the HF image."""

    id: str
    question: str
    choices: tuple[str, ...]
    answer: int
    hint: str
    image: str | None = None
    image_bytes: bytes | None = None
    subject: str | None = None
    grade: str | None = None

    @property
    def has_image(self) -> bool:
        return self.image is not None or self.image_bytes is not None


def parse_problem(pid: str, obj: Any, path: str | Path, where: str, *, embedded: bool = False) -> SQAProblem:
    """Check one ScienceQA record; a missing or mistyped field raises :class:`DataError` naming the file and
    record."""
    if not isinstance(obj, Mapping):
        raise DataError(f"{where} is not an object; expected a ScienceQA problem", path=path)
    if not isinstance(obj.get("question"), str):
        raise DataError(f"{where}: missing or non-string field 'question'", path=path)
    choices = obj.get("choices")
    if not isinstance(choices, (list, tuple)) or not choices or not all(isinstance(c, str) for c in choices):
        raise DataError(f"{where}: field 'choices' must be a non-empty list of strings", path=path)
    if len(choices) > len(OPTIONS):
        raise DataError(
            f"{where}: {len(choices)} choices; the official scorer's options are {', '.join(OPTIONS)}", path=path
        )
    answer = obj.get("answer")
    if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(choices):
        raise DataError(
            f"{where}: field 'answer' must be the index of the right choice (0..{len(choices) - 1}), got {answer!r}",
            path=path,
        )
    hint = obj.get("hint", "")
    if hint is None:
        hint = ""
    if not isinstance(hint, str):
        raise DataError(f"{where}: field 'hint' must be a string", path=path)
    image: str | None = None
    image_bytes: bytes | None = None
    raw = obj.get("image")
    if embedded:
        if isinstance(raw, Mapping) and isinstance(raw.get("bytes"), (bytes, bytearray)):
            image_bytes = bytes(raw["bytes"])
        elif raw is not None:
            raise DataError(f"{where}: field 'image' must be null or an image with 'bytes'", path=path)
    elif raw is not None:
        if not isinstance(raw, str) or not raw:
            raise DataError(f"{where}: field 'image' must be a file name (\"image.png\") or null", path=path)
        image = raw
    subject, grade = obj.get("subject"), obj.get("grade")
    return SQAProblem(
        id=pid,
        question=obj["question"],
        choices=tuple(choices),
        answer=answer,
        hint=hint,
        image=image,
        image_bytes=image_bytes,
        subject=subject if isinstance(subject, str) else None,
        grade=grade if isinstance(grade, str) else None,
    )


def read_release(root: Path, split: str) -> list[SQAProblem]:
    """``problems.json`` + ``pid_splits.json``: the problems of ``split`` in ``pid_splits.json`` order."""
    problems_path, splits_path = root / PROBLEMS_FILE, root / SPLITS_FILE
    splits = read_json(splits_path)
    if not isinstance(splits, Mapping):
        raise DataError("expected {split: [pid, ...]}", path=splits_path)
    if split not in splits:
        raise ConfigError(f"{splits_path}: no split {split!r} (splits: {', '.join(sorted(splits))})")
    pids = splits[split]
    if not isinstance(pids, list) or not all(isinstance(p, str) for p in pids):
        raise DataError(f"split {split!r} must be a list of pid strings", path=splits_path)
    problems = read_json(problems_path)
    if not isinstance(problems, Mapping):
        raise DataError("expected {pid: problem}", path=problems_path)
    out = []
    for pid in pids:
        if pid not in problems:
            raise DataError(
                f"pid {pid} of split {split!r} ({splits_path}) is not a problem of the file", path=problems_path
            )
        out.append(parse_problem(pid, problems[pid], problems_path, f"problem {pid}"))
    scaffold.require_unique(pids, lambda pid: pid, lambda _: f"split {split!r} names a pid twice", path=splits_path)
    return out


def read_parquet(paths: Sequence[Path], split: str) -> list[SQAProblem]:
    """The HF layout's ``<split>-*.parquet`` files, rows in order; ids ``<split>-<row>``."""
    out: list[SQAProblem] = []
    for path in paths:
        for i, row in enumerate(iter_parquet_rows(path)):
            out.append(parse_problem(f"{split}-{len(out)}", row, path, f"row {i}", embedded=True))
    if not out:
        raise DataError("holds no questions", path=", ".join(str(p) for p in paths))
    return out


def read_llava_questions(path: Path) -> dict[str, str]:
    """``llava_test_CQM-A.json``: ``{id: question text}`` (``<image>`` removed and stripped, as
    ``model_vqa_science.py``)."""
    data = read_json(path)
    if not isinstance(data, list):
        raise DataError('expected LLaVA\'s list of {"id", "conversations"}', path=path)
    out = {}
    for i, item in enumerate(data):
        try:
            out[str(item["id"])] = item["conversations"][0]["value"].replace("<image>", "").strip()
        except (KeyError, IndexError, TypeError, AttributeError):
            raise DataError(
                f'entry {i}: expected {{"id", "conversations": [{{"value": ...}}, ...]}}', path=path
            ) from None
    return out


# --------------------------------------------------------------------------------------------------- scoring
# --------------------------------------------------------------------------------------------------- task
@register_task
class ScienceQAImg(scaffold.DataLayout, Task):
    """ScienceQA-IMG (2,017 test questions with an image): option-letter accuracy as LLaVA's
    ``eval_science_qa.py`` computes it.

    Options: ``scienceqa_subset`` (``img``, default; ``all``: every question of the split), ``scienceqa_split``
    (default ``test``), ``scienceqa_suffix`` (answer instruction; ``none``: no instruction), ``scienceqa_format``
    (``auto``, ``json``, ``parquet``).
    """

    name = "scienceqa_img"
    version = "1"
    description = (
        "ScienceQA-IMG (2,017 test questions with an image): IMG-Accuracy with LLaVA-1.5's option-letter "
        "parsing (eval_science_qa.py)"
    )
    option_names = ("scienceqa_format", "scienceqa_split", "scienceqa_subset", "scienceqa_suffix")
    data_files = (DataFile(PROBLEMS_FILE, DATA_SOURCE), DataFile(SPLITS_FILE, DATA_SOURCE))
    default_max_new_tokens = DEFAULT_MAX_NEW_TOKENS
    format_option = "scienceqa_format"
    release_format = "json"
    release_names = (PROBLEMS_FILE, SPLITS_FILE)
    layout_source = DATA_SOURCE

    def read_options(self) -> None:
        self.subset = self.choice_option("scienceqa_subset", "img", SUBSETS)
        self.read_format_option()
        self.split = str(self.options.get("scienceqa_split", "test")).strip()
        if not self.split:
            raise ConfigError("scienceqa_split is empty; expected a split of pid_splits.json, e.g. test")
        self.suffix = scaffold.suffix_text(self.options.get("scienceqa_suffix", SINGLE_PRED_SUFFIX), "scienceqa_suffix")

    def default_data_root(self) -> Path:
        raise ConfigError(
            f"task {self.name} needs --data-root: the folder holding {PROBLEMS_FILE} and "
            f"{SPLITS_FILE} (with test/<pid>/image.png) or test-*.parquet ({DATA_SOURCE})"
        )

    def parquet_paths(self) -> list[Path]:
        return first_glob(
            self.data_root, [f"{d}/{self.split}{s}.parquet".lstrip("/") for d in PARQUET_DIRS for s in ("-*", "")]
        )

    def missing_layout_error(self) -> MissingDataFile:
        return scaffold.missing_layout(
            self.format,
            self.release_paths(),
            DATA_SOURCE,
            (
                self.data_root / f"{self.split}-*.parquet",
                f"{DATA_SOURCE}; looked in the data root, data/ and ScienceQA-IMG/",
            ),
            auto_source=f"{DATA_SOURCE}; or {self.split}-*.parquet of the HF layout",
        )

    def _read_split(self, fmt: str, files: list[Path]) -> list[SQAProblem]:
        """Every problem of the split (the subset not applied)."""
        return read_release(self.data_root, self.split) if fmt == "json" else read_parquet(files, self.split)

    def read_layout(self, fmt: str, files: list[Path]) -> list[SQAProblem]:
        return [p for p in self._read_split(fmt, files) if self.subset == "all" or p.has_image]

    def problems(self) -> list[SQAProblem]:
        """The problems of the split and subset, in the split's order (read once)."""
        return self.layout_records()

    def _image(self, p: SQAProblem) -> ImageRef:
        if p.image_bytes is not None:
            return ImageRef(data=p.image_bytes)
        assert p.image is not None
        return scaffold.first_file(
            [(self.image_root / d if d else self.image_root) / p.id / p.image for d in IMAGE_DIRS]
        )

    def _question_texts(self) -> tuple[dict[str, str] | None, Path]:
        path = self.data_root / LLAVA_QUESTION_FILE
        if self.split == "test" and path.is_file():
            return read_llava_questions(path), path
        return None, path

    def load_samples(self) -> list[Sample]:
        llava, llava_path = self._question_texts()
        out = []
        for p in self.problems():
            if llava is not None:
                if p.id not in llava:
                    raise DataError(f"no question with id {p.id}; expected LLaVA's test questions", path=llava_path)
                text = llava[p.id]
            else:
                text = build_prompt(p.question, p.hint, p.choices)
            out.append(
                Sample(
                    id=p.id,
                    prompt=text + self.suffix,
                    images=(self._image(p),) if p.has_image else (),
                    reference={"answer": p.answer, "n_choices": len(p.choices)},
                    meta={"has_image": p.has_image, "subject": p.subject, "grade": p.grade},
                )
            )
        return out

    def score(self, samples: Sequence[Sample], responses: Mapping[str, Response], judge: Any = None) -> Metrics:
        records: list[dict[str, Any]] = []
        correct = total = img_correct = img_total = failed_parse = 0
        missing: list[str] = []
        for s in samples:
            has_image = bool(s.meta.get("has_image", bool(s.images)))
            if s.id not in responses:
                missing.append(s.id)
                if self.subset == "all":  # officially FAILED, prompt "Unknown": wrong, not an image question
                    total += 1
                continue
            answer = parse_answer(responses[s.id].text)
            idx = pred_index(answer, s.reference["n_choices"])
            right = idx == s.reference["answer"]
            failed_parse += answer == FAILED
            total += 1
            correct += right
            if has_image:
                img_total += 1
                img_correct += right
            records.append(
                {
                    "id": s.id,
                    "parsed": answer,
                    "pred_index": idx,
                    "answer": s.reference["answer"],
                    "ground_truth": OPTIONS[s.reference["answer"]],
                    "correct": right,
                    "is_multimodal": has_image,
                }
            )
        counts = {
            "questions": len(samples),
            "scored": len(records),
            "correct": correct,
            "img_questions": img_total,
            "img_correct": img_correct,
            "failed_parse": failed_parse,
            "no_response": len(missing),
        }
        notes = [
            f"scorer: {SCORER_SOURCE}",
            f"prompt: {PROMPT_SOURCE}, instruction {self.suffix!r}",
            f"subset: {self.subset} of split {self.split}; accuracies are percentages (printed {{:.2f}})",
        ]
        if missing:
            how = (
                "counted wrong in Accuracy and left out of IMG-Accuracy, as the official script"
                if self.subset == "all"
                else "left out, as the official IMG-Accuracy leaves them out"
            )
            notes.append(f"{len(missing)} questions have no response (failed generation): {how}")
        if failed_parse:
            notes.append(f"{failed_parse} responses parse to no option letter (FAILED): wrong, as officially")
        headline: dict[str, float] = {}
        unrounded: dict[str, float] = {}
        if img_total:
            unrounded["IMG-Accuracy"] = img_correct / img_total * 100
        if self.subset == "all" and total:
            unrounded["Accuracy"] = correct / total * 100
        if not unrounded:
            notes.append("no response to score: no accuracy")
            return Metrics(task=self.name, headline={}, counts=counts, notes=notes, records=records)
        headline = {k: scaffold.fmt2(v) for k, v in unrounded.items()}
        return Metrics(
            task=self.name,
            headline=headline,
            breakdown={"unrounded": unrounded},
            counts=counts,
            notes=notes,
            records=records,
        )

    def read_responses(self, path: str | Path) -> dict[str, Response]:
        """LLaVA's ``model_vqa_science.py`` answers (``question_id`` = pid, ``text``) or JSON lines with
        ``question_id``/``id`` and ``text``/``answer``/``response``. Answers to questions of the split outside the
        subset are skipped; unknown or repeated ids raise :class:`DataError` naming the file and line."""
        answers = scaffold.Answers(
            path, {p.id for p in self.problems()}, f"a ScienceQA {self.split} question of {self.data_root}"
        )
        split_ids: set[str] = set()
        if self.subset == "img":
            split_ids = {p.id for p in self._read_split(*self.layout())}
        skipped = 0
        for lineno, obj in iter_jsonl(path):
            raw = obj.get("question_id", obj.get("id"))
            text = next((obj[k] for k in ("text", "answer", "response") if k in obj), None)
            if not isinstance(raw, (str, int)) or isinstance(raw, bool) or not isinstance(text, str):
                raise DataError(
                    "expected a 'question_id' (the pid) and the answer under 'text', 'answer' or 'response'",
                    path=path,
                    line=lineno,
                )
            sid = str(raw)
            if sid not in answers.known and sid in split_ids:
                skipped += 1
                continue
            answers.add(sid, text, lineno, name=f"question_id {sid}")
        if skipped:
            log.info("%s: skipped %d answers to %s questions without an image", path, skipped, self.split)
        return answers.responses
