"""CV-Bench: Cambrian's vision-centric benchmark, 2,638 multiple-choice questions on 2D and 3D perception.

CV-Bench (Tong et al., 2024, "Cambrian-1: A Fully Open, Vision-Centric Exploration of Multimodal LLMs"; HF dataset
``nyu-visionx/CV-Bench``, Apache-2.0) repurposes three vision datasets: **2D** questions on ADE20K and COCO images
(``task`` Count: how many X; Relation: spatial relation of two objects) and **3D** questions on Omni3D images
(Depth: which object is closer to the camera; Distance: which object is closer to another). Each record::

    {"idx": 0, "type": "2D", "task": "Count", "image": <image>, "question": "How many organs are in the image?",
     "choices": ["3", "2", "1", "0"], "answer": "(C)",
     "prompt": "How many organs are in the image? Select from the following choices.\\n(A) 3\\n(B) 2\\n(C) 1\\n(D) 0",
     "filename": "img/2D/count/ade20k_10.png", "source": "ADE20K", "source_dataset": "ADE20K Validation Set",
     "source_filename": "ADE_val_00000248.jpg", "target_class": null, "target_size": null, "bbox": null}

Metric (the dataset card's code, :data:`CARD_SOURCE`): per-source accuracy ``source_df['result'].mean()`` over the
rows of ``source`` ADE20K, COCO and Omni3D; ``accuracy_2d = (accuracy_2d_ade + accuracy_2d_coco) / 2``,
``accuracy_3d = accuracy_3d_omni``, ``combined_accuracy = (accuracy_2d + accuracy_3d) / 2`` (printed ``{:.4f}``).
Headline: ``Overall`` (combined), ``2D``, ``3D``, ``ADE20K``, ``COCO``, ``Omni3D``, unrounded fractions;
``breakdown[source]`` has the source's accuracy, its size ``n`` and its per-task accuracies, as Cambrian's scripts
print them. A source (or type) with no scored question has no accuracy, and the numbers built on it are not
computed (the card's code would give NaN).

The card leaves the 0/1 ``result`` to the user; it is computed as Cambrian's per-source scorers compute it
(cambrian-mllm/cambrian @ 539ffc3254bba004e5d012b65c0ad6cb308897c5, :data:`SCORER_SOURCE`):

- ADE20K and COCO (``eval/eval/coco/coco_test.py``, and ``eval/eval/ade/ade_test.py`` which extracts the same way,
  per ``docs/metrics.md`` section 5; :func:`extract_answer_2d`):
  lower-case and strip; for each of "answer is", "answer is:", "answer:" in turn, if present keep the text after its
  last occurrence; ``strip().rstrip('.').lstrip('(').rstrip(')')``; **keep only the first character** if longer.
  Right iff that equals the ground-truth letter ``gt_answer.lower()[1]`` ("(B)" -> "b"). So "B", "(B)", "B.",
  "Answer: B", "The answer is B." are B; so are "below" and "(B) right" (first character "b"); "4" never matches.
- Omni3D (``eval/eval/omni/omni_test.py``; :func:`extract_answer_omni`): the same but ``rstrip('.:,')``; right iff
  the result equals the gt letter or the gt option's text ``options[ord(gt) - ord('a')]`` -- compared as is, after
  the answer has been cut to one lower-case character, so only a one-character lower-case option text can match:
  "table" is "t", not option "table".

Prompt: the record's ``prompt`` (question and lettered choices) followed by Cambrian's answer instruction
``"\\nAnswer with the option's letter from the given choices directly."`` (``*_eval.py``: ``qs = line["prompt"]``,
``qs += f"\\n{args.question_extension}"``); option ``cvbench_suffix`` changes the appended text (a literal ``\\n`` in
it is a newline; ``""`` or ``none``: the bare ``prompt`` field). Default budget 512 new tokens (Cambrian's).

Departures that never change a number the official code prints: a question without a response (failed generation)
is counted (``counts["no_response"]``) and left out of the means; malformed ground truth (not "(X)", or a letter
beyond the choices) is a :class:`DataError` when the data is read (the official scripts would crash).

Data (under the data root), the HF dataset's files, the first complete set found (option ``cvbench_format``:
``auto``, ``jsonl`` or ``parquet``):

- ``test_2d.jsonl`` + ``test_3d.jsonl`` (current revision) or ``test.jsonl`` (revision 22409a9), with the images at
  ``<image root>/<filename>`` (``img/2D/count/ade20k_10.png``; the image root defaults to the data root; the HF
  repo's ``build_img.py`` writes them from the parquet files);
- ``test_2d.parquet`` + ``test_3d.parquet`` or ``test.parquet``, images embedded (``image.bytes``).

``auto`` reads the JSONL files when their images are there (the first record's image exists), else the parquet
files, else the JSONL files. Sample ids are ``<type>-<idx>`` ("2D-0", "3D-1438").

Answer files (``harness score cvbench --responses SPEC``):

- Cambrian's per-source answer files (``*_eval.py``: ``{"questionId", "image", "prompt", "answer": <model output>,
  "gt_answer": "(B)", "category": "Count", "options": [...], "model_id"}``), scored on their own as
  ``*_test.py`` does. Their ids are positions in Cambrian's pre-release per-source copies, so the source of each
  file must be told: ``SPEC`` is ``ADE20K=ade.jsonl,COCO=coco.jsonl,Omni3D=omni.jsonl``, or files (or a folder of
  ``.jsonl`` files) whose names contain ``ade``, ``coco`` or ``omni``.
- CV-Bench-indexed answers (needs ``--data-root``): JSON lines ``{"id": "2D-0"}`` or ``{"idx": 0, "type": "2D"}``
  (``type`` may be left out where ``idx`` is unique) with the output under ``response``, ``text`` or
  ``prediction``.

Where the harness is stricter than the official scorer: a second answer for one question, an ``idx`` that is
ambiguous without its ``type``, or an id that is not in the data is an error (Cambrian's per-source scripts score
every line they read); a response over 100,000 characters is refused with its id.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import ConfigError, DataError, MissingDataFile
from harness.io import iter_jsonl, iter_parquet_rows
from harness.task import DataFile, Task, check_response_text, register_task
from harness.types import ImageRef, Metrics, Response, Sample
from tasks import _scaffold as scaffold

log = logging.getLogger(__name__)

SCORER_SOURCE = (
    "Cambrian eval/eval/{ade,coco,omni}/*_test.py, https://github.com/cambrian-mllm/cambrian, "
    "commit 539ffc3254bba004e5d012b65c0ad6cb308897c5"
)
CARD_SOURCE = "CV-Bench dataset card (README.md), https://huggingface.co/datasets/nyu-visionx/CV-Bench"
DATA_SOURCE = (
    "CV-Bench: https://huggingface.co/datasets/nyu-visionx/CV-Bench (test_2d/test_3d .jsonl + img/, or "
    "the .parquet files; earlier revision: test.jsonl / test.parquet)"
)

SOURCES: tuple[str, ...] = ("ADE20K", "COCO", "Omni3D")
TYPES: tuple[str, ...] = ("2D", "3D")
#: Sets of question files, in the order they are looked for.
JSONL_SETS: tuple[tuple[str, ...], ...] = (("test_2d.jsonl", "test_3d.jsonl"), ("test.jsonl",))
PARQUET_SETS: tuple[tuple[str, ...], ...] = (("test_2d.parquet", "test_3d.parquet"), ("test.parquet",))
FORMATS: tuple[str, ...] = scaffold.format_choices("jsonl")
REQUIRED_FIELDS: tuple[str, ...] = ("idx", "type", "task", "prompt", "choices", "answer", "source")

#: Cambrian ``*_eval.py`` ``--question_extension`` default, appended after a newline.
CAMBRIAN_SUFFIX = "\nAnswer with the option's letter from the given choices directly."
#: Cambrian ``*_eval.py`` ``--max_new_tokens`` default.
DEFAULT_MAX_NEW_TOKENS = 512
#: ``extract_mcq_answer``'s keywords, in the order they are tried.
ANSWER_KEYWORDS: tuple[str, ...] = ("answer is", "answer is:", "answer:")
_GT = re.compile(r"^\([A-Za-z]\)$")
#: File-name hints of Cambrian's per-source answer files.
_NAME_HINTS: dict[str, str] = {"ade": "ADE20K", "coco": "COCO", "omni": "Omni3D"}


# --------------------------------------------------------------------------------------------------- matching
def _after_keywords(text: str) -> str:
    text = text.lower().strip()
    for keyword in ANSWER_KEYWORDS:
        if keyword in text:
            text = text.split(keyword)[-1]
    return text


def extract_answer_2d(text: str) -> str:
    """``extract_mcq_answer`` of Cambrian's ``ade_test.py`` / ``coco_test.py`` (``rstrip('.')``, first char)."""
    text = _after_keywords(text).strip().rstrip(".").lstrip("(").rstrip(")")
    if len(text) > 1:
        text = text[0]
    return text


def extract_answer_omni(text: str) -> str:
    """``extract_mcq_answer`` of Cambrian's ``omni_test.py`` (``rstrip('.:,')``, first char)."""
    text = _after_keywords(text).strip().rstrip(".:,").lstrip("(").rstrip(")")
    if len(text) > 1:
        text = text[0]
    return text


@dataclass(frozen=True)
class Match:
    """What the source's scorer found for one answer."""

    right: bool
    extracted: str
    gt_letter: str
    gt_text: str | None  # Omni3D only: ``options[gt position]``, compared as is


def match_answer(source: str, response: str, gt_answer: str, options: Sequence[str]) -> Match:
    """Whether ``response`` is right under ``source``'s Cambrian scorer (see the module docstring)."""
    letter = gt_answer.lower()[1]
    if source == "Omni3D":
        answer = extract_answer_omni(response)
        text_answer = options[ord(letter) - ord("a")]
        return Match((answer == letter) or answer == text_answer, answer, letter, text_answer)
    answer = extract_answer_2d(response)
    return Match(answer == letter, answer, letter, None)


def _check_gt(gt: Any, choices: Sequence[Any] | None, where: str, path: str | Path, line: int | None) -> str:
    if not isinstance(gt, str) or not _GT.match(gt):
        raise DataError(
            f'{where}: answer {gt!r}; expected the option letter in parentheses, e.g. "(A)"', path=path, line=line
        )
    if choices is not None and not 0 <= ord(gt.lower()[1]) - ord("a") < len(choices):
        raise DataError(f"{where}: answer {gt!r} names no option (choices: {list(choices)})", path=path, line=line)
    return gt


# --------------------------------------------------------------------------------------------------- aggregation
def aggregate(per_source: Mapping[str, tuple[int, int]]) -> tuple[dict[str, float], list[str]]:
    """The card's numbers from ``{source: (right, total)}``: per-source accuracy, 2D = mean of ADE20K and COCO,
    3D = Omni3D, Overall = mean of 2D and 3D; the numbers whose inputs are missing are left out (with notes)."""
    acc = {s: right / total for s, (right, total) in per_source.items() if total}
    headline: dict[str, float] = {}
    notes: list[str] = []
    if "ADE20K" in acc and "COCO" in acc:
        headline["2D"] = (acc["ADE20K"] + acc["COCO"]) / 2
    if "Omni3D" in acc:
        headline["3D"] = acc["Omni3D"]
    if "2D" in headline and "3D" in headline:
        headline = {"Overall": (headline["2D"] + headline["3D"]) / 2, **headline}
    headline.update({s: acc[s] for s in SOURCES if s in acc})
    absent = [s for s in SOURCES if s not in acc]
    if absent:
        lost = [k for k in ("Overall", "2D", "3D") if k not in headline]
        notes.append(
            f"no scored question from {', '.join(absent)}: {', '.join(lost)} not computed "
            f"(the card's formula needs every source)"
        )
    return headline, notes


@dataclass(frozen=True)
class _Scored:
    id: str
    source: str
    task: str
    match: Match


def _metrics(scored: Sequence[_Scored], *, task: str, counts: Mapping[str, int], notes: Sequence[str]) -> Metrics:
    per_source: dict[str, list[int]] = {}
    per_task: dict[tuple[str, str], list[int]] = {}
    records = []
    for s in scored:
        tally = per_source.setdefault(s.source, [0, 0])
        tally[0] += s.match.right
        tally[1] += 1
        t = per_task.setdefault((s.source, s.task), [0, 0])
        t[0] += s.match.right
        t[1] += 1
        records.append(
            {
                "id": s.id,
                "source": s.source,
                "task": s.task,
                "extracted": s.match.extracted,
                "gt_letter": s.match.gt_letter,
                "gt_text": s.match.gt_text,
                "right": s.match.right,
            }
        )
    headline, agg_notes = aggregate({k: (v[0], v[1]) for k, v in per_source.items()})
    breakdown: dict[str, dict[str, float]] = {}
    for source in [*SOURCES, *sorted(set(per_source) - set(SOURCES))]:
        if source not in per_source:
            continue
        right, total = per_source[source]
        entry: dict[str, float] = {"Accuracy": right / total, "n": total}
        for (src, name), (r, n) in sorted(per_task.items()):
            if src == source:
                entry[name] = r / n
                entry[f"{name} n"] = n
        breakdown[source] = entry
    all_counts = {"scored": len(scored), "right": sum(s.match.right for s in scored), **counts}
    all_notes = [
        f"scorer: {SCORER_SOURCE}",
        f"aggregation: {CARD_SOURCE}",
        "accuracies are fractions (the card prints them {:.4f})",
        *notes,
        *agg_notes,
    ]
    return Metrics(
        task=task, headline=headline, breakdown=breakdown, counts=all_counts, notes=all_notes, records=records
    )


# --------------------------------------------------------------------------------------------------- data
@dataclass(frozen=True)
class CVBenchRecord:
    """One CV-Bench question (the fields the harness uses)."""

    idx: int
    type: str
    task: str
    source: str
    prompt: str
    choices: tuple[str, ...]
    answer: str
    question: str | None
    filename: str | None
    image_bytes: bytes | None = None

    @property
    def sample_id(self) -> str:
        return f"{self.type}-{self.idx}"


def parse_record(
    obj: Mapping[str, Any], path: str | Path, where: str, line: int | None = None, *, embedded: bool = False
) -> CVBenchRecord:
    """Check one CV-Bench record; a missing or mistyped field raises :class:`DataError` naming the file and
    record. ``embedded``: a parquet row, whose image is ``image.bytes`` (else ``filename`` is needed)."""
    missing = [k for k in REQUIRED_FIELDS if k not in obj or obj[k] is None]
    if missing:
        raise DataError(
            f"{where}: missing field(s) {', '.join(missing)}; a CV-Bench record has "
            f"{', '.join(REQUIRED_FIELDS)}, filename/image, ...",
            path=path,
            line=line,
        )
    idx = obj["idx"]
    if isinstance(idx, bool) or not isinstance(idx, int):
        raise DataError(f"{where}: field 'idx' must be an integer, got {idx!r}", path=path, line=line)
    where = f"{where} (idx {idx})"
    if obj["type"] not in TYPES:
        raise DataError(f"{where}: type {obj['type']!r}; expected 2D or 3D", path=path, line=line)
    if obj["source"] not in SOURCES:
        raise DataError(
            f"{where}: source {obj['source']!r}; expected one of {', '.join(SOURCES)}", path=path, line=line
        )
    for key in ("task", "prompt"):
        if not isinstance(obj[key], str):
            raise DataError(f"{where}: field {key!r} must be a string", path=path, line=line)
    choices = obj["choices"]
    if not isinstance(choices, (list, tuple)) or not choices or not all(isinstance(c, str) for c in choices):
        raise DataError(f"{where}: field 'choices' must be a non-empty list of strings", path=path, line=line)
    answer = _check_gt(obj["answer"], choices, where, path, line)
    filename = obj.get("filename")
    if filename is not None and not isinstance(filename, str):
        raise DataError(f"{where}: field 'filename' must be a string", path=path, line=line)
    image_bytes = None
    if embedded:
        image = obj.get("image")
        if isinstance(image, Mapping) and isinstance(image.get("bytes"), (bytes, bytearray)):
            image_bytes = bytes(image["bytes"])
    if image_bytes is None and not filename:
        raise DataError(
            f"{where}: no image: expected "
            + ("an 'image' with bytes or " if embedded else "")
            + "a 'filename' (img/...)",
            path=path,
            line=line,
        )
    question = obj.get("question")
    return CVBenchRecord(
        idx=idx,
        type=obj["type"],
        task=obj["task"],
        source=obj["source"],
        prompt=obj["prompt"],
        choices=tuple(choices),
        answer=answer,
        question=question if isinstance(question, str) else None,
        filename=filename,
        image_bytes=image_bytes,
    )


def read_jsonl(path: str | Path) -> list[CVBenchRecord]:
    """A CV-Bench JSONL file (``test.jsonl``, ``test_2d.jsonl``, ``test_3d.jsonl``)."""
    out: list[CVBenchRecord] = []
    for lineno, obj in iter_jsonl(path):
        out.append(parse_record(obj, path, f"record {len(out) + 1}", lineno))
    if not out:
        raise DataError("holds no CV-Bench records", path=path)
    return out


def read_parquet(path: str | Path) -> list[CVBenchRecord]:
    """A CV-Bench parquet file (``test.parquet``, ``test_2d.parquet``, ``test_3d.parquet``); images embedded."""
    path = Path(path)
    out: list[CVBenchRecord] = []
    for row in iter_parquet_rows(path):
        out.append(parse_record(row, path, f"row {len(out)}", embedded=True))
    if not out:
        raise DataError("holds no CV-Bench records", path=path)
    return out


def _present(root: Path, sets: Sequence[tuple[str, ...]]) -> list[Path] | None:
    for names in sets:
        if all((root / n).is_file() for n in names):
            return [root / n for n in names]
    return None


# --------------------------------------------------------------------------------------------------- answer files
@dataclass(frozen=True)
class CambrianAnswer:
    """One line of a Cambrian per-source answer file."""

    lineno: int
    question_id: Any
    answer: str
    gt_answer: str
    category: str
    options: tuple[Any, ...]


def read_cambrian_answers(path: str | Path, source: str) -> list[CambrianAnswer]:
    """Read a Cambrian ``*_eval.py`` answer file of ``source``. ``answer`` and ``gt_answer`` ("(B)") are required,
    and ``options`` for Omni3D (whose scorer reads the gt option's text); ``category`` defaults to "" as
    ``data.get('category', '')``."""
    if source not in SOURCES:
        raise ConfigError(f"unknown CV-Bench source {source!r}; expected one of {', '.join(SOURCES)}")
    out = []
    for lineno, obj in iter_jsonl(path):
        answer = obj.get("answer")
        if not isinstance(answer, str):
            raise DataError("missing or non-string field 'answer' (the model's output)", path=path, line=lineno)
        category = obj.get("category", "")
        if not isinstance(category, str):
            raise DataError("field 'category' must be a string", path=path, line=lineno)
        options = obj.get("options")
        if source == "Omni3D" and not isinstance(options, list):
            raise DataError(
                "missing field 'options' (Omni3D's scorer compares the answer with the right option's text)",
                path=path,
                line=lineno,
            )
        gt = _check_gt(
            obj.get("gt_answer"),
            options if source == "Omni3D" else None,
            f"questionId {obj.get('questionId')!r}: gt_answer",
            path,
            lineno,
        )
        out.append(CambrianAnswer(lineno, obj.get("questionId"), answer, gt, category, tuple(options or ())))
    if not out:
        raise DataError("holds no answers", path=path)
    return out


def _source_from_name(path: Path) -> str | None:
    name = path.name.lower()
    hits = {src for hint, src in _NAME_HINTS.items() if hint in name}
    return hits.pop() if len(hits) == 1 else None


def parse_answer_spec(spec: str | Path) -> list[tuple[str | None, Path]]:
    """``SOURCE=FILE,...``, ``FILE,...`` or a folder (its ``*.jsonl`` files) -> ``[(source or None, path)]``; the
    source of a file given without one is read from its name (``ade``, ``coco``, ``omni``) where it can be."""
    text = str(spec)
    items: list[tuple[str | None, Path]] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        source: str | None = None
        head, eq, tail = part.partition("=")
        if eq and head.strip() in SOURCES:
            source, part = head.strip(), tail.strip()
        elif eq and head.strip().lower() in {s.lower() for s in SOURCES}:
            source = next(s for s in SOURCES if s.lower() == head.strip().lower())
            part = tail.strip()
        path = Path(part)
        if path.is_dir():
            files = sorted(path.glob("*.jsonl"))
            if not files:
                raise DataError("folder holds no .jsonl answer files", path=path)
            items += [(source or _source_from_name(f), f) for f in files]
        else:
            if not path.is_file():
                raise DataError("file not found", path=path)
            items.append((source or _source_from_name(path), path))
    if not items:
        raise ConfigError(f"no answer file in {text!r}")
    return items


def _first_record(path: Path) -> dict[str, Any]:
    for _, obj in iter_jsonl(path):
        return obj
    raise DataError("holds no answers", path=path)


def score_cambrian_files(files: Sequence[tuple[str, Path]], *, task: str = "cvbench") -> Metrics:
    """Score Cambrian per-source answer files (``[(source, path)]``) as ``*_test.py`` does, then aggregate as the
    dataset card."""
    scored: list[_Scored] = []
    notes = []
    seen: dict[str, Path] = {}
    for source, path in files:
        if source in seen:
            raise ConfigError(f"two answer files for {source}: {seen[source]} and {path}")
        seen[source] = path
        for a in read_cambrian_answers(path, source):
            check_response_text(f"{source}:{a.lineno}", a.answer, source=path, line=a.lineno)
            m = match_answer(source, a.answer, a.gt_answer, a.options)
            scored.append(_Scored(f"{source}:{a.lineno}", source, a.category, m))
        notes.append(f"{source}: {path}")
    return _metrics(scored, task=task, counts={"questions": len(scored)}, notes=notes)


# --------------------------------------------------------------------------------------------------- task
@register_task
class CVBench(scaffold.TaskOptions, Task):
    """CV-Bench (2D: ADE20K, COCO; 3D: Omni3D): per-source accuracy and the card's ``((ade + coco) / 2 + omni) / 2``.

    Options: ``cvbench_suffix`` (text appended to each ``prompt``; default Cambrian's answer instruction
    :data:`CAMBRIAN_SUFFIX`; ``""``/``none``: the bare prompt), ``cvbench_format`` (``auto``, ``jsonl``,
    ``parquet``: which files of the HF layout to read).
    """

    name = "cvbench"
    version = "1"
    description = (
        "CV-Bench (2,638 questions; 2D: ADE20K, COCO count/relation; 3D: Omni3D depth/distance): "
        "per-source accuracy (Cambrian *_test.py matching) and the card's combined accuracy"
    )
    option_names = ("cvbench_format", "cvbench_suffix")
    responses_accept_directory = True  # an answer spec: files, folders of *.jsonl, SOURCE=FILE (parse_answer_spec)
    data_files = (DataFile("test_2d.jsonl", DATA_SOURCE), DataFile("test_3d.jsonl", DATA_SOURCE))
    default_max_new_tokens = DEFAULT_MAX_NEW_TOKENS

    _records: list[CVBenchRecord] | None = None

    def read_options(self) -> None:
        self.suffix = scaffold.suffix_text(self.options.get("cvbench_suffix", CAMBRIAN_SUFFIX), "cvbench_suffix")
        self.format = self.choice_option("cvbench_format", "auto", FORMATS)

    def default_data_root(self) -> Path:
        raise ConfigError(
            f"task {self.name} needs --data-root: the folder holding test_2d.jsonl and test_3d.jsonl "
            f"(with img/) or the parquet files ({DATA_SOURCE})"
        )

    def _missing(self) -> MissingDataFile:
        sets = (
            JSONL_SETS
            if self.format == "jsonl"
            else PARQUET_SETS
            if self.format == "parquet"
            else JSONL_SETS + PARQUET_SETS
        )
        wanted = " or ".join(" + ".join(s) for s in sets)
        return MissingDataFile(self.data_root / sets[0][0], f"{DATA_SOURCE}; looked for {wanted}")

    def _layout(self) -> tuple[str, list[Path]]:
        return scaffold.select_layout(
            self.format,
            release=lambda: _present(self.data_root, JSONL_SETS),
            parquet=lambda: _present(self.data_root, PARQUET_SETS),
            missing=self._missing,
        )

    def check_files(self) -> list[Path]:
        return self._layout()[1]

    def records(self) -> list[CVBenchRecord]:
        """The benchmark's records, file by file in file order; repeated ``(type, idx)`` is a :class:`DataError`."""
        if self._records is not None:
            return self._records
        fmt, files = self._layout()
        records = [r for p in files for r in (read_jsonl(p) if fmt == "jsonl" else read_parquet(p))]
        first = records[0]
        parquet = _present(self.data_root, PARQUET_SETS) if fmt == "jsonl" and self.format == "auto" else None
        if parquet is not None and first.filename is not None and not (self.image_root / first.filename).is_file():
            log.info(
                "CV-Bench: %s not found; reading the images from %s",
                self.image_root / first.filename,
                ", ".join(p.name for p in parquet),
            )
            records = [r for p in parquet for r in read_parquet(p)]
            files = parquet
        scaffold.require_unique(
            records,
            lambda r: r.sample_id,
            lambda r: f"record {r.type} idx {r.idx} appears twice; expected unique (type, idx)",
            path=", ".join(str(p) for p in files),
        )
        self._records = records
        return records

    def _image(self, r: CVBenchRecord) -> ImageRef:
        if r.image_bytes is not None:
            return ImageRef(data=r.image_bytes)
        return ImageRef(path=str(self.image_root / (r.filename or "")))

    def load_samples(self) -> list[Sample]:
        return [
            Sample(
                id=r.sample_id,
                prompt=r.prompt + self.suffix,
                images=(self._image(r),),
                reference={"answer": r.answer, "choices": list(r.choices), "source": r.source, "task": r.task},
                meta={
                    "idx": r.idx,
                    "type": r.type,
                    "task": r.task,
                    "source": r.source,
                    "filename": r.filename,
                    "question": r.question,
                },
            )
            for r in self.records()
        ]

    def score(self, samples: Sequence[Sample], responses: Mapping[str, Response], judge: Any = None) -> Metrics:
        scored: list[_Scored] = []
        missing: list[str] = []
        for s in samples:
            if s.id not in responses:
                missing.append(s.id)
                continue
            ref = s.reference
            m = match_answer(ref["source"], responses[s.id].text, ref["answer"], ref["choices"])
            scored.append(_Scored(s.id, ref["source"], ref["task"], m))
        notes = [f"prompt suffix: {self.suffix!r}"]
        if missing:
            notes.append(
                f"{len(missing)} questions have no response (failed generation) and are not scored: ids "
                f"{scaffold.id_list(missing)}"
            )
        return _metrics(
            scored, task=self.name, counts={"questions": len(samples), "no_response": len(missing)}, notes=notes
        )

    def read_responses(self, path: str | Path) -> dict[str, Response]:
        """CV-Bench-indexed answers (see the module docstring) by sample id; unknown, ambiguous or repeated ids
        raise :class:`DataError` naming the file and line."""
        records = self.records()
        answers = scaffold.Answers(path, {r.sample_id for r in records}, f"a CV-Bench question of {self.data_root}")
        by_idx: dict[int, list[str]] = {}
        for r in records:
            by_idx.setdefault(r.idx, []).append(r.sample_id)
        for lineno, obj in iter_jsonl(path):
            text = next((obj[k] for k in ("response", "text", "prediction") if k in obj), None)
            if not isinstance(text, str):
                raise DataError(
                    "missing or non-string field 'response' (or 'text', 'prediction'): the model's output",
                    path=path,
                    line=lineno,
                )
            if isinstance(obj.get("id"), str):
                sid = obj["id"]
            elif isinstance(obj.get("idx"), int) and not isinstance(obj.get("idx"), bool):
                kind = obj.get("type")
                if kind is not None:
                    sid = f"{kind}-{obj['idx']}"
                else:
                    matches = by_idx.get(obj["idx"], [])
                    if len(matches) > 1:
                        raise DataError(
                            f"idx {obj['idx']} is ambiguous ({', '.join(matches)}); add its 'type'",
                            path=path,
                            line=lineno,
                        )
                    sid = matches[0] if matches else str(obj["idx"])
            else:
                raise DataError(
                    "expected a sample 'id' (\"2D-0\") or an integer 'idx' (with 'type')", path=path, line=lineno
                )
            answers.add(sid, text, lineno)
        return answers.responses

    def score_file(self, path: str | Path, judge: Any = None) -> tuple[Metrics, dict[str, int]]:
        """Score Cambrian per-source answer files on their own (as ``*_test.py``), or CV-Bench-indexed answers
        against the benchmark (needs the data root); ``path`` is an answer spec (:func:`parse_answer_spec`)."""
        items = parse_answer_spec(path)
        cambrian = ["gt_answer" in _first_record(p) for _, p in items]
        if all(cambrian):
            unnamed = [p for src, p in items if src is None]
            if unnamed:
                raise ConfigError(
                    f"cannot tell which CV-Bench source {unnamed[0]} answers (Cambrian's answer files "
                    f"do not say): give it as SOURCE=FILE, SOURCE one of {', '.join(SOURCES)}, or "
                    f"name the file with ade, coco or omni"
                )
            metrics = score_cambrian_files([(src, p) for src, p in items if src is not None], task=self.name)
            n = metrics.counts["questions"]
            return metrics, {"samples": n, "responses": n, "missing": 0}
        if any(cambrian):
            raise DataError(
                "mixes Cambrian answer files and CV-Bench-indexed answers; expected one kind", path=str(path)
            )
        if self.data_root_given is None:
            raise ConfigError(
                f"CV-Bench-indexed answers are scored against the benchmark: give --data-root ({DATA_SOURCE})"
            )
        samples = self.load_samples()
        responses: dict[str, Response] = {}
        answered = scaffold.UniqueIds()
        for _, p in items:
            got = self.read_responses(p)
            self.check_response_lengths(got, source=p)
            for sid, resp in got.items():
                answered.add(sid, f"a second answer for {sid}", path=p)
                responses[sid] = resp
        metrics = self.score(samples, responses)
        return metrics, {"samples": len(samples), "responses": len(responses), "missing": len(samples) - len(responses)}
