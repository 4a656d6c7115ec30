"""MMVP: 300 questions on 150 "CLIP-blind" image pairs, scored by pairs (both questions of a pair right).

MMVP (Tong et al., 2024, "Eyes Wide Shut? Exploring the Visual Shortcomings of Multimodal LLMs";
https://github.com/tsb0601/MMVP, HF dataset ``MMVP/MMVP``) pairs images that CLIP embeds alike although they differ
visibly, and asks one two-option question per image: rows ``2k`` and ``2k+1`` of ``Questions.csv`` (0-based) ask the
same question about the two images of a pair, usually with opposite answers. A pair counts only when both of its
questions are answered correctly; the metric is the share of correct pairs.

Two scorers, option ``mmvp_method``:

``gpt`` (default; the number the MMVP paper reports): tsb0601/MMVP ``scripts/gpt_grader.py``
(@ 763500597e65c3446f09047837ceda76f4e264bf, :data:`GRADER_SOURCE`). Per row, one chat completion:
system :data:`GRADER_SYSTEM`, user ``GRADER_TEMPLATE.format(question, correct_answer, model_response)``
(:func:`grader_prompt`; ``question`` is the answer file's ``prompt``, i.e. ``Question + " " + Options``),
model ``gpt-4-0314``, ``temperature=0.2``. The reply is graded by :func:`parse_grade`:
``re.compile(r"^(yes|no)$", re.IGNORECASE).match(reply)`` -> ``reply.lower()``, else
``"Could not determine yes or no."``; a row is right iff its grade ``== "yes"`` (so "Yes" counts, "yes." or
"Yes, it does" do not; "yes\\n" passes the regex but its grade is "yes\\n", not "yes": not right, as officially).
Rows are consumed in file order two at a time; a pair is correct iff both grades are "yes";
``accuracy = num_correct / num_total`` over the complete pairs, printed unrounded as a fraction
(``The accuracy is 0.6``): ``headline["Accuracy"]`` is that fraction.

``rule`` (judge-free): Cambrian ``eval/eval/mmvp/mmvp_test.py`` (cambrian-mllm/cambrian @
539ffc3254bba004e5d012b65c0ad6cb308897c5, :data:`RULE_SOURCE`). :func:`extract_mcq_answer`: lower-case and strip;
for each of "answer is", "answer is:", "answer:" in turn, if present keep the text after its last occurrence; then
``strip().rstrip('.:,').lstrip('(').rstrip(')')``. A row is right iff that equals the ground-truth letter
(``gt_answer.lower()[1]`` of "(a)") or the lower-cased text of the right option (Cambrian's ``text_options``,
:func:`give_options`). Quirks kept: "(b) Closed" is **not** accepted (it becomes "b) closed"), "Closed" and "B" are.
The pair count is a running counter over the rows in file order (:func:`cambrian_running_count`): an even row
adds 1 when right; an odd row adds 1 when right and the counter is odd (its even row was right), and takes 1 off
when wrong and the counter is odd. ``accuracy = 100.0 * correct / total`` with ``total`` the number of **rows**:
``100 * 2 * correct_pairs / rows`` (``/ 300`` on the full benchmark), printed as a percentage
(``{'total': 20.0, 'correct': 10, 'accuracy': 50.0}``): ``headline["Accuracy"]`` is that percentage.
An unpaired last row of an answer file counts as the official counter counts it.

``breakdown["pairs"]`` holds ``correct``, ``total`` and the fraction ``accuracy`` of pairs for both methods, and
``Metrics.notes`` says which method ran.

Generation prompt, option ``mmvp_prompt``:

- ``mmvp`` (default): ``Question + " " + Options`` (tsb0601/MMVP ``scripts/evaluate_mllm.py``, the LLaVA path,
  e.g. "Is the door of the car open or closed? (a) Open (b) Closed"); 1024 new tokens (its ``max_new_tokens``).
- ``cambrian``: Cambrian ``eval/eval/mmvp/mmvp_eval.py``'s ``process``: ``Question + " Options:"``, then the options
  split on "(b)" as "A. ..." / "B. ..." lines, then "Answer with the option's letter from the given choices
  directly." (:func:`cambrian_prompt`); 512 new tokens.

Whatever the prompt, the grader's question is ``Question + " " + Options``, as in the answer files of
``evaluate_mllm.py``.

Departures that never change a number the official code prints:

- A failed judgment (:attr:`harness.judge.JudgeResult.failed`: judge unreachable, a saved review ``null``) is
  counted (``counts["judge_failed"]``) and its pair is left out of both numerator and denominator, with a note;
  it is never scored as wrong (the official script retries forever instead).
- ``harness run``: pairs are the benchmark's (positions ``2k``, ``2k+1``), matched by sample id, not by the order
  responses arrive in; a pair with a missing response (failed generation) or cut by ``--limit`` is left out and
  counted. An answer file (``harness score``) is paired in file order, as the official scripts do.
- An unpaired last row of an answer file is not sent to the grader (``gpt_grader.py`` grades it, then ignores the
  grade); the rule path counts it, as ``mmvp_test.py`` does.
- No complete pair: no accuracy (the official scripts divide by zero).

Data: the HF dataset ``MMVP/MMVP``: ``Questions.csv`` (columns ``Index`` -- spelled ``lndex`` in some copies, which
Cambrian's loader also accepts -- ``Question``, ``Options``, ``Correct Answer``) and ``MMVP Images/<Index>.jpg``
(tsb0601's ``evaluate_mllm.py`` spells the folder ``MMVP Imgaes``; both are looked for). Sample ids are the
``Index`` values ("1" ... "300"). The ground-truth corrections lmms-eval applies to a few rows are not applied:
neither official scorer applies them.

Answer files (``harness score mmvp --responses FILE``), JSON lines, detected per file:

- tsb0601 (``evaluate_mllm.py``): ``{"question_id": <Index, 1-based>, "prompt": Question + " " + Options,
  "answer": "(a)", "response": <model output>, ...}``;
- Cambrian (``mmvp_eval.py``): ``{"question_id": <0-based row>, "prompt": <the conversation prompt>,
  "answer": <model output>, "gt_answer": "(a)", "text_options": [...], ...}``.

A file is scored on its own as the official scripts do; with ``--data-root`` each record is also checked against the
benchmark (its question or ground truth), and the Cambrian format needs it for the GPT path (the grader's question,
``Question + " " + Options``, is not in Cambrian's file).

Where the harness is stricter than the official scorer: answers are matched to questions by ``question_id`` /
``Index``, and a repeated id is an error (the official scripts pair answer rows with questions by line position); a
record whose prompt or correct answer differs from the benchmark's question is an error; a response over 100,000
characters is refused with its id.
"""

from __future__ import annotations

import csv
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from harness.errors import ConfigError, DataError, MissingDataFile
from harness.io import iter_jsonl, read_json
from harness.judge import Judge, JudgeRequest, ReplayJudge
from harness.task import DataFile, Task, check_response_text, register_task
from harness.types import ImageRef, Metrics, Response, Sample
from tasks import _scaffold as scaffold

log = logging.getLogger(__name__)

#: The MMVP code read: the repository and commit.
MMVP_CODE = "https://github.com/tsb0601/MMVP, commit 763500597e65c3446f09047837ceda76f4e264bf"
GRADER_SOURCE = f"MMVP scripts/gpt_grader.py, {MMVP_CODE}"
GENERATION_SOURCE = f"MMVP scripts/evaluate_mllm.py, {MMVP_CODE}"
RULE_SOURCE = (
    "Cambrian eval/eval/mmvp/mmvp_test.py (prompt: mmvp_eval.py), "
    "https://github.com/cambrian-mllm/cambrian, commit 539ffc3254bba004e5d012b65c0ad6cb308897c5"
)
DATA_SOURCE = (
    "MMVP: https://huggingface.co/datasets/MMVP/MMVP (Questions.csv and 'MMVP Images/'); "
    "code: https://github.com/tsb0601/MMVP"
)

QUESTIONS_FILE = "Questions.csv"
#: Image folders looked for under the image root: the HF dataset's, then the spelling of ``evaluate_mllm.py``.
IMAGE_FOLDERS: tuple[str, ...] = ("MMVP Images", "MMVP Imgaes")
#: Spellings of the first column of ``Questions.csv`` (Cambrian's loader skips a header row with either).
INDEX_COLUMNS: tuple[str, ...] = ("Index", "lndex")
REQUIRED_COLUMNS: tuple[str, ...] = ("Question", "Options", "Correct Answer")

METHODS: tuple[str, ...] = ("gpt", "rule")
DEFAULT_METHOD = "gpt"
PROMPTS: tuple[str, ...] = ("mmvp", "cambrian")
DEFAULT_PROMPT = "mmvp"

#: ``gpt_grader.py``: ``openai.ChatCompletion.create(model='gpt-4-0314', ..., temperature=0.2)``.
DEFAULT_JUDGE_MODEL = "gpt-4-0314"
GRADER_TEMPERATURE = 0.2
GRADER_SYSTEM = (
    "You are a helpful and precise assistant for checking the quality of the answer. Please answer in only yes or no."
)
GRADER_TEMPLATE = (
    "Given the following question {question}, the correct answer is {correct_answer}. "
    "Does the following answer correctly answers the question, answer:{model_response}?"
)
YES_NO_REGEX = re.compile(r"^(yes|no)$", re.IGNORECASE)
COULD_NOT_DETERMINE = "Could not determine yes or no."

#: ``mmvp_test.py``'s ``extract_mcq_answer`` keywords, in the order they are tried.
ANSWER_KEYWORDS: tuple[str, ...] = ("answer is", "answer is:", "answer:")
#: Cambrian ``mmvp_eval.py`` ``--question_extension`` default.
CAMBRIAN_SUFFIX = "Answer with the option's letter from the given choices directly."
#: ``evaluate_mllm.py`` generates up to 1024 new tokens; Cambrian's ``mmvp_eval.py`` 512.
MAX_NEW_TOKENS = {"mmvp": 1024, "cambrian": 512}


# --------------------------------------------------------------------------------------------------- official rules
def grader_prompt(question: str, correct_answer: str, model_response: str) -> str:
    """The grader's user message: ``f"Given the following question {question}, the correct answer is
    {correct_answer}. Does the following answer correctly answers the question, answer:{model_response}?"``."""
    return GRADER_TEMPLATE.format(question=question, correct_answer=correct_answer, model_response=model_response)


def grader_request(request_id: str, question: str, correct_answer: str, model_response: str) -> JudgeRequest:
    """One official grader call: system + user message, temperature 0.2, no token limit."""
    return JudgeRequest(
        id=request_id,
        messages=(
            {"role": "system", "content": GRADER_SYSTEM},
            {"role": "user", "content": grader_prompt(question, correct_answer, model_response)},
        ),
        temperature=GRADER_TEMPERATURE,
    )


def parse_grade(reply: str) -> str:
    """``get_yes_no_answer``'s grade: ``reply.lower()`` if ``^(yes|no)$`` matches (case-insensitive), else
    :data:`COULD_NOT_DETERMINE`. Only a grade equal to ``"yes"`` counts as right."""
    if YES_NO_REGEX.match(reply):
        return reply.lower()
    return COULD_NOT_DETERMINE


def extract_mcq_answer(text: str) -> str:
    """Cambrian ``mmvp_test.py``'s ``extract_mcq_answer`` (see the module docstring)."""
    text = text.lower().strip()
    for keyword in ANSWER_KEYWORDS:
        if keyword in text:
            text = text.split(keyword)[-1]
    return text.strip().rstrip(".:,").lstrip("(").rstrip(")")


def give_options(options: str) -> list[str]:
    """Cambrian ``mmvp_eval.py``'s ``give_options``: the option texts of "(a) Open (b) Closed" -> ["Open", "Closed"]
    (split on "(", each part's text after its ")"). Raises ``ValueError`` when a part has no ")"."""
    parts = options.split("(")
    out = []
    for part in parts[1:]:
        pieces = part.split(")")
        if len(pieces) < 2:
            raise ValueError(f"option part {part!r} has no ')'")
        out.append(pieces[1].strip())
    return out


def gt_letter(correct_answer: str) -> str:
    """Cambrian's ground-truth letter: ``gt_answer.lower()[1]`` ("(a)" -> "a")."""
    return correct_answer.lower()[1]


def rule_check(response: str, correct_answer: str, text_options: Sequence[str]) -> tuple[bool, str, str, str]:
    """``(right, extracted answer, gt letter, gt option text)`` as ``mmvp_test.py``: right iff the extracted answer
    equals the gt letter or the lower-cased text of the gt option."""
    answer = extract_mcq_answer(response)
    letter = gt_letter(correct_answer)
    text_answer = [x.lower() for x in text_options][ord(letter) - ord("a")]
    return (letter == answer) or (answer == text_answer), answer, letter, text_answer


def cambrian_running_count(rights: Sequence[bool]) -> int:
    """``mmvp_test.py``'s running counter over rows in file order (``ind`` = row position)."""
    correct = 0
    for ind, right in enumerate(rights):
        if right:
            if ind % 2 == 0 or (ind % 2 == 1 and correct % 2 == 1):
                correct += 1
        elif ind % 2 == 1 and correct % 2 == 1:
            correct -= 1
    return correct


def cambrian_prompt(question: str, options: str, suffix: str = CAMBRIAN_SUFFIX) -> str:
    """Cambrian ``mmvp_eval.py``'s question text (before the conversation template)."""
    qs = question + " Options:"
    parts = [part.strip() for part in options.split("(b)")]
    parts = [part.replace("(a)", "A.").replace("(b)", "B.") for part in parts]
    if len(parts) > 1:
        parts[1] = "B. " + parts[1]
    for part in parts:
        qs += f"\n{part}"
    return qs + f"\n{suffix}"


# --------------------------------------------------------------------------------------------------- data
@dataclass(frozen=True)
class MMVPQuestion:
    """One row of ``Questions.csv``; ``position`` is its 0-based row (pairs: ``position // 2``)."""

    position: int
    index: int
    question: str
    options: str
    correct_answer: str

    @property
    def id(self) -> str:
        return str(self.index)

    @property
    def cur_prompt(self) -> str:
        """``evaluate_mllm.py``'s prompt, also the grader's question: ``Question + " " + Options``."""
        return self.question + " " + self.options

    @property
    def text_options(self) -> list[str]:
        return give_options(self.options)


def _check_correct_answer(
    value: str, options: Sequence[str], where: str, path: str | Path, line: int | None = None
) -> None:
    """The ground truth must be "(x)" with x naming one of the options (Cambrian reads ``value.lower()[1]``)."""
    if len(value) < 3 or value[0] != "(" or not value[1].isalpha() or value[2] != ")":
        raise DataError(
            f'{where}: correct answer {value!r}; expected an option letter in parentheses, "(a)" or "(b)"',
            path=path,
            line=line,
        )
    pos = ord(value.lower()[1]) - ord("a")
    if not 0 <= pos < len(options):
        raise DataError(
            f"{where}: correct answer {value!r} names no option (options: {list(options)})", path=path, line=line
        )


def read_questions(path: str | Path) -> list[MMVPQuestion]:
    """Read MMVP's ``Questions.csv``. A missing column, a non-integer or repeated index, options that are not
    "(a) ... (b) ..." or a correct answer that names no option raise :class:`DataError` naming the file and row."""
    path = Path(path)
    try:
        fh = path.open(newline="", encoding="utf-8-sig")
    except FileNotFoundError as exc:
        raise MissingDataFile(path, DATA_SOURCE) from exc
    out: list[MMVPQuestion] = []
    seen = scaffold.UniqueIds(path)
    with fh:
        reader = csv.reader(fh)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise DataError(
                "empty file; expected the header Index,Question,Options,Correct Answer", path=path
            ) from None
        index_col = next((header.index(c) for c in INDEX_COLUMNS if c in header), None)
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if index_col is None or missing:
            names = (["Index"] if index_col is None else []) + missing
            raise DataError(
                f"header {header} lacks the column(s) {', '.join(names)}; expected MMVP's "
                f"Index,Question,Options,Correct Answer",
                path=path,
                line=1,
            )
        cols = {c: header.index(c) for c in REQUIRED_COLUMNS}
        for row in reader:
            lineno = reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            if len(row) < len(header):
                raise DataError(
                    f"row has {len(row)} fields; expected {len(header)} ({', '.join(header)})", path=path, line=lineno
                )
            raw_index = row[index_col].strip()
            try:
                index = int(raw_index)
            except ValueError:
                raise DataError(f"Index {raw_index!r} is not an integer", path=path, line=lineno) from None
            seen.add(index, f"Index {index} appears twice", line=lineno, cite_first=True)
            question, options, answer = (row[cols[c]] for c in REQUIRED_COLUMNS)
            try:
                text_options = give_options(options)
            except ValueError as exc:
                raise DataError(
                    f'question {index}: options {options!r}: {exc}; expected "(a) ... (b) ..."', path=path, line=lineno
                ) from None
            if len(text_options) < 2:
                raise DataError(
                    f'question {index}: options {options!r}; expected "(a) ... (b) ..."', path=path, line=lineno
                )
            _check_correct_answer(answer, text_options, f"question {index}", path, lineno)
            out.append(
                MMVPQuestion(position=len(out), index=index, question=question, options=options, correct_answer=answer)
            )
    if not out:
        raise DataError("holds no questions", path=path)
    if len(out) % 2:
        log.warning("%s: %d questions, an odd number; MMVP's questions come in pairs (rows 2k, 2k+1)", path, len(out))
    return out


@dataclass(frozen=True)
class MMVPAnswer:
    """One record of an answer file, in a form both scorers read.

    ``question`` (the grader's question, ``Question + " " + Options``) is None for a Cambrian file read without
    the benchmark; ``text_options`` are the option texts (Cambrian's ``text_options``)."""

    position: int  # line order in the file (0-based): what pairs the rows
    lineno: int
    question_id: int
    sample_id: str  # the benchmark Index the record answers
    response: str
    correct_answer: str
    question: str | None
    text_options: tuple[str, ...]
    format: str  # "tsb0601" | "cambrian"


def _field(obj: Mapping[str, Any], key: str, kind: type | tuple[type, ...], path: Path, lineno: int, what: str) -> Any:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, kind):
        raise DataError(f"missing or mistyped field {key!r} ({what})", path=path, line=lineno)
    return value


def _detect_format(obj: Mapping[str, Any], path: Path, lineno: int) -> str:
    if "response" in obj:
        return "tsb0601"
    if "gt_answer" in obj:
        return "cambrian"
    raise DataError(
        f"unknown MMVP answer format (fields: {sorted(obj)}); expected tsb0601/MMVP evaluate_mllm.py's "
        "{question_id, prompt, answer, response} or Cambrian mmvp_eval.py's "
        "{question_id, answer, gt_answer, text_options}",
        path=path,
        line=lineno,
    )


def read_answer_file(path: str | Path, questions: Sequence[MMVPQuestion] | None = None) -> list[MMVPAnswer]:
    """Read an MMVP answer file (tsb0601 or Cambrian format, see the module docstring) in file order.

    With ``questions`` (the benchmark), ``question_id`` must name a benchmark row (tsb0601: ``Index``, 1-based, as
    ``photo_id = index + 1``; Cambrian: the 0-based row) and the record must agree with it (tsb0601: its
    ``prompt`` and ``answer``; Cambrian: its ``gt_answer``); the option texts and, for Cambrian files, the
    grader's question come from the benchmark. Repeated ids, missing fields or a mixed file raise
    :class:`DataError` naming the file and line.
    """
    path = Path(path)
    by_position = {q.position: q for q in questions} if questions is not None else None
    out: list[MMVPAnswer] = []
    fmt: str | None = None
    seen = scaffold.UniqueIds(path)
    for lineno, obj in iter_jsonl(path):
        this = _detect_format(obj, path, lineno)
        if fmt is None:
            fmt = this
        elif this != fmt:
            raise DataError(
                f"a {this}-format record in a {fmt}-format file; expected one format per file", path=path, line=lineno
            )
        qid = _field(obj, "question_id", int, path, lineno, "the question's number")
        seen.add(qid, f"question_id {qid} appears twice", line=lineno, cite_first=True)
        position = qid - 1 if fmt == "tsb0601" else qid
        bench = None
        if by_position is not None:
            bench = by_position.get(position)
            if bench is None:
                first = "1" if fmt == "tsb0601" else "0"
                raise DataError(
                    f"question_id {qid} names no MMVP question (the benchmark has {len(by_position)}; "
                    f"{fmt} ids start at {first})",
                    path=path,
                    line=lineno,
                )
        if fmt == "tsb0601":
            prompt = _field(obj, "prompt", str, path, lineno, "Question + ' ' + Options")
            correct = _field(obj, "answer", str, path, lineno, "the correct answer, e.g. '(a)'")
            response = _field(obj, "response", str, path, lineno, "the model's output")
            if bench is not None:
                if prompt != bench.cur_prompt or correct != bench.correct_answer:
                    raise DataError(
                        f"question_id {qid}: prompt/answer {prompt!r}, {correct!r} differ from MMVP "
                        f"question {bench.index} ({bench.cur_prompt!r}, {bench.correct_answer!r})",
                        path=path,
                        line=lineno,
                    )
                options = bench.text_options
            else:
                tail = prompt[prompt.rfind("(a)") :] if "(a)" in prompt else prompt
                try:
                    options = give_options(tail)
                except ValueError as exc:
                    raise DataError(
                        f"question_id {qid}: cannot read the options from the prompt {prompt!r}: {exc}",
                        path=path,
                        line=lineno,
                    ) from None
            question: str | None = prompt
        else:
            response = _field(obj, "answer", str, path, lineno, "the model's output")
            correct = _field(obj, "gt_answer", str, path, lineno, "the correct answer, e.g. '(a)'")
            raw_options = _field(obj, "text_options", list, path, lineno, "the option texts")
            if not all(isinstance(o, str) for o in raw_options):
                raise DataError(
                    f"question_id {qid}: field 'text_options' must be a list of strings", path=path, line=lineno
                )
            options = list(raw_options)
            question = None
            if bench is not None:
                if correct != bench.correct_answer:
                    raise DataError(
                        f"question_id {qid}: gt_answer {correct!r} differs from MMVP question "
                        f"{bench.index}'s {bench.correct_answer!r}",
                        path=path,
                        line=lineno,
                    )
                question = bench.cur_prompt
        _check_correct_answer(correct, options, f"question_id {qid}", path, lineno)
        sample_id = bench.id if bench is not None else str(position + 1)
        out.append(
            MMVPAnswer(
                position=len(out),
                lineno=lineno,
                question_id=qid,
                sample_id=sample_id,
                response=response,
                correct_answer=correct,
                question=question,
                text_options=tuple(options),
                format=fmt,
            )
        )
    if not out:
        raise DataError("holds no answers", path=path)
    return out


# --------------------------------------------------------------------------------------------------- reviews
def read_reviews(path: str | Path) -> ReplayJudge:
    """Saved grader replies as a judge: a JSON list with one reply text (or ``null``: no reply, a failed
    judgment) per question in question order (the order of the answer file, or of the benchmark), or a JSON
    object ``{"<0-based position>": reply}``. Request ``i`` (the ``i``-th question) gets reply ``i``; a question
    beyond the saved replies is a :class:`DataError` naming the file."""
    data = read_json(path)
    if isinstance(data, list):
        replies = {str(i): text for i, text in enumerate(data)}
    elif isinstance(data, dict):
        replies = dict(data)
    else:
        raise DataError(
            f"expected a JSON list of grader replies in question order, or an object "
            f"{{position: reply}}, got {type(data).__name__}",
            path=path,
        )
    return ReplayJudge.from_replies(replies, source=path)


# --------------------------------------------------------------------------------------------------- scoring
@dataclass(frozen=True)
class _Row:
    """A question to score: ``position`` defines its pair (``position // 2``) and the judge request id."""

    id: str
    position: int
    question: str | None
    correct_answer: str
    response: str
    text_options: tuple[str, ...]


def _pairs(rows: Sequence[_Row]) -> tuple[list[tuple[_Row, _Row]], list[_Row]]:
    """Complete pairs (positions ``2k``, ``2k+1`` both present), and the rows left without their partner."""
    by_pos = {r.position: r for r in rows}
    pairs: list[tuple[_Row, _Row]] = []
    lone: list[_Row] = []
    for r in rows:
        partner = r.position + 1 if r.position % 2 == 0 else r.position - 1
        if partner not in by_pos:
            lone.append(r)
        elif r.position % 2 == 0:
            pairs.append((r, by_pos[partner]))
    return pairs, lone


def _read_grade(reply: str) -> tuple[str, bool]:
    """The official grade, and whether it is "yes" or "no" (else it is :data:`COULD_NOT_DETERMINE`)."""
    grade = parse_grade(reply)
    return grade, grade in ("yes", "no")


def _pair_breakdown(correct: int, total: int) -> dict[str, dict[str, float]]:
    return {"pairs": {"correct": correct, "total": total, "accuracy": correct / total}} if total else {}


def score_gpt(
    rows: Sequence[_Row],
    judge: Judge | None,
    *,
    task: str = "mmvp",
    extra_counts: Mapping[str, int] | None = None,
    extra_notes: Sequence[str] = (),
) -> Metrics:
    """The GPT grader over ``rows``: judge the rows of complete pairs, then ``gpt_grader.py``'s pair accuracy."""
    if judge is None:
        raise _no_judge()
    pairs, lone = _pairs(rows)
    to_judge = [r for pair in pairs for r in pair]
    missing_question = [r for r in to_judge if r.question is None]
    if missing_question:
        raise ConfigError(
            f"the GPT grader needs each question's text (Question + ' ' + Options), which a Cambrian "
            f"answer file lacks: give --data-root with MMVP's {QUESTIONS_FILE} "
            f"(questions {scaffold.id_list(missing_question)}), or use --option mmvp_method=rule"
        )
    by_key = {str(r.position): r for r in to_judge}

    def request(key: str, _: int) -> JudgeRequest:
        r = by_key[key]
        return grader_request(key, r.question or "", r.correct_answer, r.response)

    loop = scaffold.run_judge(judge, list(by_key), request, _read_grade)
    records: list[dict[str, Any]] = []
    failed = [by_key[k] for k in loop.failed]
    undetermined = [by_key[k] for k in loop.unparsed]
    num_correct = num_total = 0
    for pair in pairs:
        grades: list[str | None] = []
        recs = []
        for r in pair:
            j = loop[str(r.position)]
            grade = None if j.failed else j.value
            grades.append(grade)
            recs.append(
                {
                    "id": r.id,
                    "position": r.position,
                    "pair": r.position // 2,
                    "correct_answer": r.correct_answer,
                    "grade": grade,
                    "right": None if grade is None else grade == "yes",
                    "judge": j.reply,
                    "judge_error": j.error,
                }
            )
        if any(g is None for g in grades):
            pair_correct = None
        else:
            pair_correct = all(g == "yes" for g in grades)
            num_total += 1
            num_correct += pair_correct
        for rec in recs:
            rec["pair_correct"] = pair_correct
        records += recs
    counts: dict[str, int] = {
        "questions": len(rows),
        "pairs": num_total,
        "correct_pairs": num_correct,
        "judge_failed": len(failed),
        "undetermined": len(undetermined),
        "pairs_excluded": len(pairs) - num_total,
        "unpaired": len(lone),
        **(extra_counts or {}),
    }
    notes = [
        "method: gpt (the official GPT grader)",
        f"scorer: {GRADER_SOURCE}",
        f"judge: {judge.model}",
        "Accuracy = correct pairs / pairs, a fraction (gpt_grader.py prints num_correct/num_total)",
        *extra_notes,
    ]
    if failed:
        notes.append(
            f"{len(failed)} judgments failed; their {len(pairs) - num_total} pairs are excluded from the "
            f"accuracy (not scored wrong): ids {scaffold.id_list(failed)}"
        )
    if undetermined:
        notes.append(
            f'{len(undetermined)} grader replies are not exactly yes/no ("{COULD_NOT_DETERMINE}"): not '
            f"right, as in the official grader: ids {scaffold.id_list(undetermined)}"
        )
    if lone:
        notes.append(
            f"{len(lone)} questions have no partner in a pair and are not graded: ids {scaffold.id_list(lone)}"
        )
    if not num_total:
        notes.append("no complete pair was graded: no accuracy")
        return Metrics(task=task, headline={}, counts=counts, notes=notes, records=records)
    return Metrics(
        task=task,
        headline={"Accuracy": num_correct / num_total},
        breakdown=_pair_breakdown(num_correct, num_total),
        counts=counts,
        notes=notes,
        records=records,
    )


def score_rule(
    rows: Sequence[_Row],
    *,
    keep_unpaired: bool,
    task: str = "mmvp",
    extra_counts: Mapping[str, int] | None = None,
    extra_notes: Sequence[str] = (),
) -> Metrics:
    """``mmvp_test.py`` over ``rows``: the rows of complete pairs (and, with ``keep_unpaired``, the rows without a
    partner, as the official counter reads an odd file), in order; ``100 * counter / rows``."""
    pairs, lone = _pairs(rows)
    keep = {r.position for pair in pairs for r in pair} | ({r.position for r in lone} if keep_unpaired else set())
    scored = [r for r in rows if r.position in keep]
    records: list[dict[str, Any]] = []
    rights: list[bool] = []
    for r in scored:
        right, answer, letter, text_answer = rule_check(r.response, r.correct_answer, r.text_options)
        rights.append(right)
        records.append(
            {
                "id": r.id,
                "position": r.position,
                "pair": r.position // 2,
                "extracted": answer,
                "gt_letter": letter,
                "gt_text": text_answer,
                "right": right,
            }
        )
    right_by_pos = {r.position: ok for r, ok in zip(scored, rights)}
    correct_pairs = sum(right_by_pos[a.position] and right_by_pos[b.position] for a, b in pairs)
    for rec in records:
        pos = rec["position"]
        partner = pos + 1 if pos % 2 == 0 else pos - 1
        rec["pair_correct"] = (right_by_pos[pos] and right_by_pos[partner]) if partner in right_by_pos else None
    correct = cambrian_running_count(rights)
    total = len(scored)
    counts: dict[str, int] = {
        "questions": len(rows),
        "total": total,
        "correct": correct,
        "pairs": len(pairs),
        "correct_pairs": correct_pairs,
        "unpaired": len(lone),
        **(extra_counts or {}),
    }
    notes = [
        "method: rule (Cambrian's option-letter matching, judge-free)",
        f"scorer: {RULE_SOURCE}",
        (
            "Accuracy = 100 * correct / total, a percentage (mmvp_test.py's running counter: correct = 2 x "
            "correct pairs, total = rows)"
        ),
        *extra_notes,
    ]
    if lone:
        notes.append(
            f"{len(lone)} questions have no partner in a pair: "
            + ("counted as the official counter counts them" if keep_unpaired else "not scored")
            + f": ids {scaffold.id_list(lone)}"
        )
    if not total:
        notes.append("no question to score: no accuracy")
        return Metrics(task=task, headline={}, counts=counts, notes=notes, records=records)
    return Metrics(
        task=task,
        headline={"Accuracy": 100.0 * correct / total},
        breakdown=_pair_breakdown(correct_pairs, len(pairs)),
        counts=counts,
        notes=notes,
        records=records,
    )


def score_answer_file(
    path: str | Path,
    method: str = DEFAULT_METHOD,
    judge: Judge | None = None,
    questions: Sequence[MMVPQuestion] | None = None,
    *,
    task: str = "mmvp",
) -> Metrics:
    """Score an answer file as the official script of ``method`` does: rows paired in file order
    (``gpt``: ``gpt_grader.py`` with ``judge``; ``rule``: ``mmvp_test.py``). ``questions``: see
    :func:`read_answer_file`."""
    _check_method(method)
    answers = read_answer_file(path, questions)
    for a in answers:
        check_response_text(a.sample_id, a.response, source=path, line=a.lineno)
    rows = [_Row(a.sample_id, a.position, a.question, a.correct_answer, a.response, a.text_options) for a in answers]
    notes = [f"responses: {path} ({answers[0].format} format)"]
    if method == "gpt":
        return score_gpt(rows, judge, task=task, extra_notes=notes)
    return score_rule(rows, keep_unpaired=True, task=task, extra_notes=notes)


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ConfigError(f"unknown mmvp_method {method!r}; expected one of {', '.join(METHODS)}")


def _no_judge() -> ConfigError:
    return scaffold.no_judge(
        "mmvp with mmvp_method=gpt",
        DEFAULT_JUDGE_MODEL,
        grader=True,
        alternative="; or score judge-free with --option mmvp_method=rule",
    )


# --------------------------------------------------------------------------------------------------- task
@register_task
class MMVP(scaffold.TaskOptions, Task):
    """MMVP: 150 pairs of two-option questions, pair accuracy by the GPT grader or Cambrian's rule.

    Options: ``mmvp_method`` (``gpt``, default: tsb0601 ``gpt_grader.py`` through the judge; ``rule``: Cambrian
    ``mmvp_test.py``, judge-free), ``mmvp_prompt`` (``mmvp``, default: ``Question + " " + Options``;
    ``cambrian``: Cambrian's lettered options and answer instruction).
    """

    name = "mmvp"
    version = "1"
    description = (
        "MMVP (150 CLIP-blind pairs, 300 questions): pair accuracy by the official GPT grader "
        "(gpt_grader.py) or, with mmvp_method=rule, Cambrian's mmvp_test.py"
    )
    option_names = ("mmvp_method", "mmvp_prompt")
    data_files = (DataFile(QUESTIONS_FILE, DATA_SOURCE),)
    default_max_new_tokens = MAX_NEW_TOKENS[DEFAULT_PROMPT]
    default_judge_model: ClassVar[str] = DEFAULT_JUDGE_MODEL

    def read_options(self) -> None:
        self.method = str(self.options.get("mmvp_method", DEFAULT_METHOD)).strip().lower()
        _check_method(self.method)
        self.prompt_style = self.choice_option("mmvp_prompt", DEFAULT_PROMPT, PROMPTS)

    def default_data_root(self) -> Path:
        raise ConfigError(
            f"task {self.name} needs --data-root: the folder holding {QUESTIONS_FILE} and "
            f"'{IMAGE_FOLDERS[0]}/' ({DATA_SOURCE})"
        )

    def needs_judge(self) -> bool:
        return self.method == "gpt"

    def questions(self) -> list[MMVPQuestion]:
        """The benchmark's questions, in file order."""
        return read_questions(self.check_files()[0])

    def _image(self, index: int) -> ImageRef:
        name = f"{index}.jpg"
        candidates = [self.image_root / folder / name for folder in IMAGE_FOLDERS] + [self.image_root / name]
        for c in candidates:
            if c.is_file():
                return ImageRef(path=str(c))
        return ImageRef(path=str(candidates[0]))

    def _prompt(self, q: MMVPQuestion) -> str:
        if self.prompt_style == "cambrian":
            return cambrian_prompt(q.question, q.options)
        return q.cur_prompt

    def load_samples(self) -> list[Sample]:
        return [
            Sample(
                id=q.id,
                prompt=self._prompt(q),
                images=(self._image(q.index),),
                reference={"question": q.question, "options": q.options, "correct_answer": q.correct_answer},
                meta={"position": q.position, "pair": q.position // 2, "index": q.index},
                max_new_tokens=MAX_NEW_TOKENS[self.prompt_style],
            )
            for q in self.questions()
        ]

    def score(self, samples: Sequence[Sample], responses: Mapping[str, Response], judge: Any = None) -> Metrics:
        """Pairs are the benchmark's (``meta["position"] // 2``); a pair with a missing response is left out."""
        rows: list[_Row] = []
        missing: list[str] = []
        for i, s in enumerate(samples):
            if s.id not in responses:
                missing.append(s.id)
                continue
            ref = s.reference
            position = int(s.meta.get("position", i))
            rows.append(
                _Row(
                    s.id,
                    position,
                    ref["question"] + " " + ref["options"],
                    ref["correct_answer"],
                    responses[s.id].text,
                    tuple(give_options(ref["options"])),
                )
            )
        counts = {"no_response": len(missing)}
        source = GENERATION_SOURCE if self.prompt_style == "mmvp" else RULE_SOURCE
        notes = [f"prompt: {self.prompt_style} ({source})"]
        if missing:
            notes.append(
                f"{len(missing)} questions have no response (failed generation); their pairs are left out: "
                f"ids {scaffold.id_list(missing)}"
            )
        if self.method == "gpt":
            return score_gpt(rows, judge, task=self.name, extra_counts=counts, extra_notes=notes)
        return score_rule(rows, keep_unpaired=False, task=self.name, extra_counts=counts, extra_notes=notes)

    def _benchmark(self) -> list[MMVPQuestion] | None:
        return self.questions() if self.data_root_given is not None else None

    def read_responses(self, path: str | Path) -> dict[str, Response]:
        """An answer file (tsb0601 or Cambrian format) as responses by sample id (the benchmark ``Index``)."""
        out: dict[str, Response] = {}
        for a in read_answer_file(path, self._benchmark()):
            out[a.sample_id] = Response(a.sample_id, a.response, "stop")
        return out

    def read_reviews(self, path: str | Path) -> ReplayJudge:
        """Saved grader replies; see :func:`read_reviews`."""
        return read_reviews(path)

    def score_file(self, path: str | Path, judge: Any = None) -> tuple[Metrics, dict[str, int]]:
        """Score an answer file in file order, as the official scripts (see :func:`score_answer_file`); the data
        root is optional (with it, records are checked against the benchmark)."""
        questions = self._benchmark()
        metrics = score_answer_file(path, self.method, judge, questions, task=self.name)
        n = metrics.counts.get("questions", 0)
        samples = len(questions) if questions is not None else n
        return metrics, {"samples": samples, "responses": n, "missing": samples - n}
