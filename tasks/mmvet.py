"""MM-Vet: 218 open questions on integrated vision-language capabilities, graded 0-1 by a GPT-4 grader.

MM-Vet (Yu et al., 2023, "MM-Vet: Evaluating Large Multimodal Models for Integrated Capabilities";
https://github.com/yuweihao/MM-Vet) tags each question with the capabilities it needs -- recognition (``rec``),
OCR (``ocr``), knowledge (``know``), language generation (``gen``), spatial awareness (``spat``) and math
(``math``) -- and grades every answer with a GPT-4 few-shot prompt that compares it with the ground truth
(``<AND>``: all elements needed, ``<OR>``: any one). Scores are means x 100 per capability and in total.

This module follows the official ``mm-vet_evaluator.py`` (yuweihao/MM-Vet @
7d717c2f54a584b7ed363d66e6481ce1bf648538, :data:`GRADER_SOURCE`), quirks included:

- Grader request (:func:`grader_query`): one user message,
  ``PROMPT + "\\n" + " | ".join([question, answer.replace("<AND>", " <AND> ").replace("<OR>", " <OR> "),
  prediction, ""])`` -- :data:`GRADER_PROMPT` ends with a newline, so a blank line separates the examples from the
  query, which ends with ``" | "``; model ``gpt-4-0613`` (``--gpt_model`` default), ``max_tokens=3``,
  ``temperature=0.0``.
- Score (:func:`parse_grade`): ``content.split(" ")[0].strip()`` must be a ``float`` in [0, 1] (``"nan"`` passes the
  range check, as officially). Otherwise the grader is asked again with the query plus
  ``"\\nPredict the correctness of the answer (digit): "`` at temperatures 0.0, 0.5, 1.0 and 1.5 (the official loop
  raises the temperature by 0.5 after each call); when none of those four replies parses, the score is 0.0 (the
  official loop makes a fifth retry, at 2.0, whose reply it never reads: it is not made here).
- ``export_result`` (``--num_run 1``): per capability ``sum(scores of its questions) / #questions * 100`` and
  ``total = sum(all scores) / #questions * 100``, each ``round(np.float64, 1)`` (numpy's rounding); per capability
  integration (the set of a question's capabilities) the same. Capabilities are ordered by frequency
  (``Counter.most_common``). Integration names join the capabilities in that order (the official
  ``"_".join(list(set))`` depends on the interpreter's string hashing).

Headline: ``Total`` and the capabilities (``rec``, ``ocr``, ``know``, ``gen``, ``spat``, ``math``), as the
official ``cap-score`` table prints them; ``breakdown[<capability>]`` has the score and ``n``,
``breakdown["capability_integrations"]`` the integration scores, ``breakdown["unrounded"]`` the unrounded ones.
The official evaluator runs the grader ``--num_run`` times (5 in the paper) and reports the mean and std; this is
one run.

Departures that never change a number the official code prints: a judgment that failed (no reply: judge
unreachable, a saved review ``null``) is counted (``counts["judge_failed"]``) and left out of every mean, with a note
(the official script retries forever); a reply that never parses is scored 0.0 as officially and counted
(``counts["unparsed"]``); questions without a response (failed generation) are counted and not graded; means are
over the graded questions (the official script requires all 218).

Generation (LLaVA-1.5 ``scripts/v1_5/eval/mmvet.sh``: ``model_vqa.py`` on ``llava-mm-vet.jsonl``): the question
as it is, greedy, ``max_new_tokens=1024``.

Data (under the data root; option ``mmvet_format``: ``auto``, ``json``, ``parquet``):

- the official release (``mm-vet.zip``): ``mm-vet.json`` (``{"v1_0": {"imagename", "capability": [...],
  "question", "answer"}, ...}``) and ``images/<imagename>`` (the image root may also be ``images/`` itself);
- the HF layout (``lmms-lab/MMVet`` saved as parquet, ``*.parquet`` in the data root or ``data/``):
  ``question_id``, ``question``, ``answer``, ``capability`` (a list or "rec,ocr") and the image embedded.

Sample ids are the MM-Vet ids ("v1_0"). Answer files (``harness score mmvet --responses``): the official
``results/<model>.json`` (``{"v1_0": prediction}``) or LLaVA's answers (``model_vqa.py`` JSON lines
``{"question_id": 0, "text"}``, id ``v1_<question_id>`` as ``scripts/convert_mmvet_for_eval.py``). Saved reviews
(``--reviews``): the official grade file (``<model>_<gpt_model>-grade-<n>runs.json``: ``{"v1_0": {"content":
[...], "score": [...]}}``, the first run is used), a JSON object ``{"v1_0": reply}`` or a JSON list of replies in
question order; a saved reply stands for the final reply of the grading loop (one that does not parse scores 0.0,
as officially after the retries).

Where the harness is stricter than the official scorer: a second answer for one id, or an id that is not an MM-Vet
question, is an error (the official evaluator reads a JSON object, where a repeated key silently keeps the last); a
response over 100,000 characters is refused with its id.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
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

GRADER_SOURCE = (
    "MM-Vet mm-vet_evaluator.py, https://github.com/yuweihao/MM-Vet, commit 7d717c2f54a584b7ed363d66e6481ce1bf648538"
)
DATA_SOURCE = (
    "MM-Vet: https://github.com/yuweihao/MM-Vet (mm-vet.zip: mm-vet.json and images/), or the HF dataset "
    "lmms-lab/MMVet saved as parquet"
)

DATA_FILE = "mm-vet.json"
FORMATS: tuple[str, ...] = scaffold.format_choices("json")
CAPABILITIES: tuple[str, ...] = ("rec", "ocr", "know", "gen", "spat", "math")

#: ``--gpt_model`` default; ``max_tokens=3``; first temperature 0.0.
DEFAULT_JUDGE_MODEL = "gpt-4-0613"
GRADER_MAX_TOKENS = 3
#: Temperatures of the retry calls that the official loop reads (0.0, 0.5, 1.0, 1.5).
RETRY_TEMPERATURES: tuple[float, ...] = (0.0, 0.5, 1.0, 1.5)
RETRY_SUFFIX = "\nPredict the correctness of the answer (digit): "
#: ``model_vqa.py``: ``max_new_tokens=1024``.
DEFAULT_MAX_NEW_TOKENS = 1024
DECIMAL_PLACES = 1

#: The official few-shot grader prompt (``prompt`` of ``mm-vet_evaluator.py``), ending with a newline.
GRADER_PROMPT = """Compare the ground truth and prediction from AI models, to give a correctness score for the prediction. <AND> in the ground truth means it is totally right only when all elements in the ground truth are present in the prediction, and <OR> means it is totally right when any one element in the ground truth is present in the prediction. The correctness score is 0.0 (totally wrong), 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, or 1.0 (totally right). Just complete the last space of the correctness score.

Question | Ground truth | Prediction | Correctness
--- | --- | --- | ---
What is x in the equation? | -1 <AND> -5 | x = 3 | 0.0
What is x in the equation? | -1 <AND> -5 | x = -1 | 0.5
What is x in the equation? | -1 <AND> -5 | x = -5 | 0.5
What is x in the equation? | -1 <AND> -5 | x = -5 or 5 | 0.5
What is x in the equation? | -1 <AND> -5 | x = -1 or x = -5 | 1.0
Can you explain this meme? | This meme is poking fun at the fact that the names of the countries Iceland and Greenland are misleading. Despite its name, Iceland is known for its beautiful green landscapes, while Greenland is mostly covered in ice and snow. The meme is saying that the person has trust issues because the names of these countries do not accurately represent their landscapes. | The meme talks about Iceland and Greenland. It's pointing out that despite their names, Iceland is not very icy and Greenland isn't very green. | 0.4
Can you explain this meme? | This meme is poking fun at the fact that the names of the countries Iceland and Greenland are misleading. Despite its name, Iceland is known for its beautiful green landscapes, while Greenland is mostly covered in ice and snow. The meme is saying that the person has trust issues because the names of these countries do not accurately represent their landscapes. | The meme is using humor to point out the misleading nature of Iceland's and Greenland's names. Iceland, despite its name, has lush green landscapes while Greenland is mostly covered in ice and snow. The text 'This is why I have trust issues' is a playful way to suggest that these contradictions can lead to distrust or confusion. The humor in this meme is derived from the unexpected contrast between the names of the countries and their actual physical characteristics. | 1.0
"""


# --------------------------------------------------------------------------------------------------- official rules
def grader_query(question: str, answer: str, prediction: str, *, retry: bool = False) -> str:
    """The grader's user message (with ``retry``, the re-ask of the official loop)."""
    gt = answer.replace("<AND>", " <AND> ").replace("<OR>", " <OR> ")
    query = GRADER_PROMPT + "\n" + f"{question} | {gt} | {prediction} | "  # " | ".join([q, gt, pred, ""])
    return query + RETRY_SUFFIX if retry else query


def request_ids(sample_id: str) -> tuple[str, ...]:
    """Judge request ids of a question's grading loop: the first call, then the retries."""
    return (sample_id, *(f"{sample_id}#retry{k}" for k in range(1, len(RETRY_TEMPERATURES) + 1)))


def grader_request(sample_id: str, question: str, answer: str, prediction: str, attempt: int = 0) -> JudgeRequest:
    """Call ``attempt`` of the grading loop (0: the first, temperature 0.0; k >= 1: retry k)."""
    temperature = 0.0 if attempt == 0 else RETRY_TEMPERATURES[attempt - 1]
    return JudgeRequest(
        id=request_ids(sample_id)[attempt],
        messages=({"role": "user", "content": grader_query(question, answer, prediction, retry=attempt > 0)},),
        temperature=temperature,
        max_tokens=GRADER_MAX_TOKENS,
    )


def parse_grade(content: str) -> float | None:
    """The official score of a reply: ``float(content.split(" ")[0].strip())`` within [0, 1], else None."""
    try:
        score = float(content.split(" ")[0].strip())
    except ValueError:
        return None
    if score > 1.0 or score < 0.0:
        return None
    return score


def np_round(value: float, places: int = DECIMAL_PLACES) -> float:
    """``round(np.float64(value), places)``: numpy's rounding, as the official ``round(v.mean(), 1)``."""
    return float(round(np.float64(value), places))


# --------------------------------------------------------------------------------------------------- data
@dataclass(frozen=True)
class MMVetQuestion:
    """One MM-Vet question."""

    id: str
    question: str
    answer: str
    capabilities: tuple[str, ...]
    imagename: str | None = None
    image_bytes: bytes | None = None


def _capabilities(value: Any, path: Path, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [c.strip() for c in value.split(",") if c.strip()]
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(c, str) for c in value):
        raise DataError(
            f"{where}: field 'capability' must be a non-empty list of capabilities ({', '.join(CAPABILITIES)})",
            path=path,
        )
    return tuple(value)


def parse_record(qid: str, obj: Any, path: Path, where: str, *, embedded: bool = False) -> MMVetQuestion:
    """Check one MM-Vet record; a missing or mistyped field raises :class:`DataError` naming the file and record."""
    if not isinstance(obj, Mapping):
        raise DataError(f"{where} is not an object; expected an MM-Vet record", path=path)
    for key in ("question", "answer"):
        if not isinstance(obj.get(key), str):
            raise DataError(f"{where}: missing or non-string field {key!r}", path=path)
    caps = _capabilities(obj.get("capability"), path, where)
    if embedded:
        image = obj.get("image")
        if not (isinstance(image, Mapping) and isinstance(image.get("bytes"), (bytes, bytearray))):
            raise DataError(f"{where}: no embedded image; expected 'image' with 'bytes'", path=path)
        return MMVetQuestion(qid, obj["question"], obj["answer"], caps, image_bytes=bytes(image["bytes"]))
    name = obj.get("imagename")
    if not isinstance(name, str) or not name:
        raise DataError(f"{where}: missing or non-string field 'imagename'", path=path)
    return MMVetQuestion(qid, obj["question"], obj["answer"], caps, imagename=name)


def read_release(path: Path) -> list[MMVetQuestion]:
    """``mm-vet.json``: ``{id: record}`` in file order."""
    data = read_json(path)
    if not isinstance(data, Mapping) or not data:
        raise DataError(
            'expected MM-Vet\'s {"v1_0": {"imagename", "capability", "question", "answer"}, ...}', path=path
        )
    return [parse_record(str(k), v, path, f"record {k}") for k, v in data.items()]


def read_parquet(paths: Sequence[Path]) -> list[MMVetQuestion]:
    """The HF layout's parquet rows; ``question_id`` ("v1_0") is the id."""
    out: list[MMVetQuestion] = []
    for path in paths:
        for i, row in enumerate(iter_parquet_rows(path)):
            qid = row.get("question_id")
            if not isinstance(qid, str) or not qid:
                raise DataError(f"row {i}: missing or non-string field 'question_id' (\"v1_0\")", path=path)
            out.append(parse_record(qid, row, path, f"row {i} ({qid})", embedded=True))
    if not out:
        raise DataError("holds no questions", path=", ".join(str(p) for p in paths))
    return out


def read_reviews(path: str | Path, question_ids: Sequence[str]) -> ReplayJudge:
    """Saved grader replies as a judge whose every call of a question's grading loop answers with the saved reply
    (see the module docstring for the formats)."""
    data = read_json(path)
    replies: dict[str, Any]
    if isinstance(data, list):
        replies = scaffold.replies_in_order(data, question_ids, path)
    elif isinstance(data, Mapping):
        replies = {}
        for k, v in data.items():
            if isinstance(v, Mapping):  # the official grade file
                content = v.get("content")
                if not isinstance(content, list) or not content:
                    raise DataError(
                        f'record {k}: expected the official grade record {{"content": [...], "score": [...]}}',
                        path=path,
                    )
                v = content[0]
            replies[str(k)] = v
    else:
        raise DataError(
            f"expected the official grade file, {{id: reply}} or a list of replies, got {type(data).__name__}",
            path=path,
        )
    # each saved reply answers the question's first grading call and its retries (the first id is the question's)
    return ReplayJudge.from_replies(
        {rid: text for sid, text in replies.items() for rid in request_ids(sid)}, source=path
    )


# --------------------------------------------------------------------------------------------------- scoring
@dataclass(frozen=True)
class _Item:
    id: str
    question: str
    answer: str
    prediction: str
    capabilities: tuple[str, ...]


def _read_grade(reply: str) -> tuple[float, bool]:
    """A reply's grade and whether it parsed; 0.0, the official loop's answer after the retries, when it does not."""
    score = parse_grade(reply)
    return (0.0, False) if score is None else (score, True)


def grade_items(items: Sequence[_Item], judge: Judge) -> scaffold.JudgeLoop[float]:
    """Run the official grading loop for every item, one judge batch per call of the loop."""
    by_id = {it.id: it for it in items}

    def request(sid: str, attempt: int) -> JudgeRequest:
        it = by_id[sid]
        return grader_request(sid, it.question, it.answer, it.prediction, attempt)

    return scaffold.run_judge(judge, list(by_id), request, _read_grade, attempts=len(RETRY_TEMPERATURES) + 1)


def _ordered_capabilities(cap_lists: Sequence[Sequence[str]]) -> list[str]:
    counter: Counter[str] = Counter()
    for caps in cap_lists:
        counter.update(set(caps))
    # most_common orders ties by first insertion; insert in the order capabilities first appear in the data
    first: dict[str, int] = {}
    for caps in cap_lists:
        for c in caps:
            first.setdefault(c, len(first))
    ordered = Counter({c: counter[c] for c in sorted(counter, key=lambda c: first[c])})
    return [c for c, _ in ordered.most_common()]


def aggregate(
    scored: Sequence[tuple[tuple[str, ...], float]], order: Sequence[str]
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """``export_result`` for one run: ``(headline, breakdown)`` from ``[(capabilities, score)]``."""
    sums: dict[str, float] = {c: 0.0 for c in order}
    counts: dict[str, int] = {c: 0 for c in order}
    set_sums: dict[frozenset[str], float] = {}
    set_counts: dict[frozenset[str], int] = {}
    total = 0.0
    for caps, score in scored:
        cap_set = frozenset(caps)
        for c in cap_set:
            sums[c] = sums.get(c, 0.0) + score
            counts[c] = counts.get(c, 0) + 1
        total += score
        set_sums[cap_set] = set_sums.get(cap_set, 0.0) + score
        set_counts[cap_set] = set_counts.get(cap_set, 0) + 1
    n = len(scored)
    unrounded = {"Total": float(np.float64(total) / n * 100)}
    headline = {"Total": np_round(unrounded["Total"])}
    breakdown: dict[str, dict[str, float]] = {}
    for c in order:
        if counts.get(c):
            value = float(np.float64(sums[c]) / counts[c] * 100)
            unrounded[c] = value
            headline[c] = np_round(value)
            breakdown[c] = {"Score": headline[c], "n": counts[c]}
    rank = {c: i for i, c in enumerate(order)}
    sets = sorted(set_counts, key=lambda s: -set_counts[s])  # stable: first-seen order among ties
    breakdown["capability_integrations"] = {
        "_".join(sorted(s, key=lambda c: rank.get(c, len(rank)))): np_round(set_sums[s] / set_counts[s] * 100)
        for s in sets
    }
    breakdown["unrounded"] = unrounded
    return headline, breakdown


def score_items(
    items: Sequence[_Item],
    judge: Judge,
    *,
    task: str = "mmvet",
    order: Sequence[str] | None = None,
    extra_counts: Mapping[str, int] | None = None,
    extra_notes: Sequence[str] = (),
) -> Metrics:
    """Grade ``items`` and compute the official per-capability and total scores over the graded ones."""
    loop = grade_items(items, judge)
    order = list(order) if order is not None else _ordered_capabilities([it.capabilities for it in items])
    records: list[dict[str, Any]] = []
    scored: list[tuple[tuple[str, ...], float]] = []
    retried = 0
    for it, g in zip(items, loop):
        rec: dict[str, Any] = {
            "id": it.id,
            "capabilities": list(it.capabilities),
            "attempts": g.calls,
            "judge": g.reply,
        }
        if g.failed:
            rec.update(score=None, parsed=None, judge_error=g.error)
        else:
            assert g.value is not None
            retried += g.calls > 1
            if not g.parsed:
                log.warning(
                    "MM-Vet %s: no grader reply parsed after the retries (scored 0.0, as the official evaluator): %r",
                    it.id,
                    (g.reply or "")[:100],
                )
            scored.append((it.capabilities, g.value))
            rec.update(score=g.value, parsed=g.parsed, judge_error=None)
        records.append(rec)
    counts = scaffold.loop_counts(loop, ("graded", len(scored)), retried=retried, **(extra_counts or {}))
    notes = [
        f"scorer: {GRADER_SOURCE}",
        f"judge: {judge.model}",
        "one grading run (the paper averages 5)",
        "scores are means x 100, rounded to 1 decimal with numpy's rounding",
        *extra_notes,
    ]
    scaffold.loop_notes(
        notes,
        loop,
        "questions got no parseable grade after the official retries and score 0.0, as the official evaluator",
    )
    if not scored:
        return scaffold.no_score(task, counts, notes, records)
    if any(math.isnan(s) for _, s in scored):
        notes.append("a grade parsed as nan (the official range check lets it through): the means are nan")
    headline, breakdown = aggregate(scored, order)
    return Metrics(task=task, headline=headline, breakdown=breakdown, counts=counts, notes=notes, records=records)


def _no_judge() -> ConfigError:
    return scaffold.no_judge("mmvet", DEFAULT_JUDGE_MODEL, grader=True)


# --------------------------------------------------------------------------------------------------- task
@register_task
class MMVet(scaffold.DataLayout, Task):
    """MM-Vet (218 questions): GPT-4 grades 0-1; per-capability scores and total (official ``mm-vet_evaluator.py``).

    Options: ``mmvet_format`` (``auto``, ``json``, ``parquet``).
    """

    name = "mmvet"
    version = "1"
    description = (
        "MM-Vet (218 questions, GPT-4 grader): total and per-capability scores (rec, ocr, know, gen, "
        "spat, math) (official mm-vet_evaluator.py)"
    )
    option_names = ("mmvet_format",)
    data_files = (DataFile(DATA_FILE, DATA_SOURCE),)
    default_max_new_tokens = DEFAULT_MAX_NEW_TOKENS
    default_judge_model: ClassVar[str] = DEFAULT_JUDGE_MODEL
    format_option = "mmvet_format"
    release_format = "json"
    release_names = (DATA_FILE,)
    layout_source = DATA_SOURCE

    def needs_judge(self) -> bool:
        return True

    def default_data_root(self) -> Path:
        raise ConfigError(
            f"task {self.name} needs --data-root: the folder holding {DATA_FILE} and images/ ({DATA_SOURCE})"
        )

    def read_layout(self, fmt: str, files: list[Path]) -> list[MMVetQuestion]:
        questions = read_release(files[0]) if fmt == "json" else read_parquet(files)
        scaffold.require_unique(
            questions, lambda q: q.id, lambda q: f"question {q.id} appears twice; expected unique ids", path=files[0]
        )
        return questions

    def questions(self) -> list[MMVetQuestion]:
        """The benchmark's questions in file order (read once); a repeated id is a :class:`DataError`."""
        return self.layout_records()

    def _image(self, q: MMVetQuestion) -> ImageRef:
        if q.image_bytes is not None:
            return ImageRef(data=q.image_bytes)
        assert q.imagename is not None
        return scaffold.first_file([self.image_root / "images" / q.imagename, self.image_root / q.imagename])

    def load_samples(self) -> list[Sample]:
        return [
            Sample(
                id=q.id,
                prompt=q.question,
                images=(self._image(q),),
                reference={"question": q.question, "answer": q.answer, "capabilities": list(q.capabilities)},
                meta={"capabilities": list(q.capabilities), "imagename": q.imagename},
            )
            for q in self.questions()
        ]

    def score(self, samples: Sequence[Sample], responses: Mapping[str, Response], judge: Any = None) -> Metrics:
        """Grade every sample that has a response; samples without one are counted (``no_response``)."""
        if judge is None:
            raise _no_judge()
        items = [
            _Item(
                s.id,
                s.reference["question"],
                s.reference["answer"],
                responses[s.id].text,
                tuple(s.reference["capabilities"]),
            )
            for s in samples
            if s.id in responses
        ]
        order = _ordered_capabilities([tuple(s.reference["capabilities"]) for s in samples])
        missing = len(samples) - len(items)
        notes = [f"{missing} questions have no response (failed generation) and are not graded"] if missing else []
        return score_items(
            items,
            judge,
            task=self.name,
            order=order,
            extra_counts={"questions": len(samples), "no_response": missing},
            extra_notes=notes,
        )

    def read_reviews(self, path: str | Path) -> ReplayJudge:
        """The official grade file, ``{id: reply}`` or a list of replies in question order."""
        return read_reviews(path, [q.id for q in self.questions()])

    def read_responses(self, path: str | Path) -> dict[str, Response]:
        """The official ``results/<model>.json`` (``{"v1_0": prediction}``) or LLaVA's answer JSON lines
        (``{"question_id": 0, "text"}`` -> ``v1_0``); unknown or repeated ids raise :class:`DataError`."""
        path = Path(path)
        answers = scaffold.Answers(path, {q.id for q in self.questions()}, f"an MM-Vet question of {self.data_root}")
        pairs: list[tuple[int | None, Any, Any]] = []
        if path.suffix == ".json":
            data = read_json(path)
            if not isinstance(data, Mapping):
                raise DataError('expected MM-Vet\'s results {"v1_0": prediction, ...}', path=path)
            pairs = [(None, k, v) for k, v in data.items()]
        else:
            for lineno, obj in iter_jsonl(path):
                qid = obj.get("question_id")
                if isinstance(qid, int) and not isinstance(qid, bool):
                    qid = f"v1_{qid}"  # scripts/convert_mmvet_for_eval.py
                pairs.append((lineno, qid, next((obj[k] for k in ("text", "answer", "response") if k in obj), None)))
        for line, qid, text in pairs:
            if not isinstance(qid, str) or not isinstance(text, str):
                raise DataError(
                    f'answer {qid!r}: expected an id ("v1_0") and the prediction text', path=path, line=line
                )
            answers.add(qid, text, line)
        return answers.responses
