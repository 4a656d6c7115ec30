"""TextVQA: questions that need reading the text in an image, scored by VQA accuracy over 10 human answers.

TextVQA (Singh et al., 2019, "Towards VQA Models That Can Read"; https://textvqa.org) asks 5,000 validation questions
about 3,166 OpenImages pictures; each question has 10 human answers. The number papers report (LLaVA-1.5: 58.2 for
the 7B model) is the validation accuracy computed by LLaVA's ``llava/eval/eval_textvqa.py`` with
``llava/eval/m4c_evaluator.py`` (haotian-liu/LLaVA @ 524a75b74254717057ee196b507668ebd314a280, :data:`SCORER_SOURCE`;
``m4c_evaluator.py`` is MMF's ``EvalAIAnswerProcessor`` and ``TextVQAAccuracyEvaluator``, the copy read is
pixas/LLaVA @ fbd5115, identical to upstream). This module follows it, quirks included:

Answer normalization (:func:`normalize_answer`, ``EvalAIAnswerProcessor.__call__``), applied to the prediction and
to each human answer:

1. ``word_tokenize``: lower-case; remove every ``,`` and ``?``; ``'s`` -> `` 's``; strip.
2. newlines and tabs -> spaces; strip.
3. ``process_punctuation``: for each of ``; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? !``: if the text (as it was
   before this step) has the mark followed or preceded by a space, or has a comma between digits (never, commas
   are gone after step 1), the mark is deleted, else replaced by a space ("coca-cola" -> "coca cola",
   "coca - cola" -> "coca  cola"). Then ``PERIOD_STRIP.sub("", text, re.UNICODE)``: the pattern
   ``(?!<=\\d)(\\.)(?!\\d)`` (a look-ahead where a look-behind was meant) deletes every ``.`` not followed by a
   digit ("no." -> "no", "a.m." -> "am", "3.5" stays), and ``re.UNICODE`` lands in the ``count`` argument: at
   most 32 periods are deleted.
4. ``process_digit_article``: split on whitespace; number words "none", "zero", ..., "ten" -> "0" ... "10"
   ("none" -> "0"); drop the articles "a", "an", "the"; expand the contraction table ("dont" -> "don't",
   "somebody'd" -> "somebodyd": a typo kept from the original table); join with single spaces.

Accuracy (:func:`vqa_accuracy`, ``TextVQAAccuracyEvaluator``): with the 10 normalized human answers (exactly 10:
the official code asserts it), an answer's score is the mean over the 10 leave-one-out subsets of 9 answers of
``min(1, #matches in the subset / 3)``; a prediction that matches no human answer scores 0. So 1 match -> 0.3,
2 -> 0.6, 3 -> 0.9, 4 or more -> 1.0. ``Accuracy = mean(scores)``, printed ``'Accuracy: {:.2f}%'.format(100 * acc)``:
``headline["Accuracy"]`` is that printed percentage; the unrounded one is in ``breakdown["unrounded"]``.

Prompt (option ``textvqa_ocr``):

- default (``false``): ``question.capitalize() + "\\nAnswer the question using a single word or phrase."``, the
  LLaVA-1.5 short-answer prompt as lmms-eval's ``textvqa_val`` builds it (``lmms_eval/tasks/textvqa/utils.py``,
  ``pre_prompt ""``, ``post_prompt`` the LLaVA suffix, ``ocr: false``);
- ``true``: the OCR-token variant that LLaVA-1.5's published TextVQA number used:
  ``question + "\\nReference OCR token: " + ", ".join(tokens) + suffix``. When LLaVA's question file
  ``llava_textvqa_val_v051_ocr.jsonl`` is under the data root its ``text`` is used verbatim (its OCR tokens are
  cased, e.g. "DAKOTA, DIGITAL"), matched to the annotations as ``eval_textvqa.py`` does (see below); otherwise the
  prompt is built from the record's ``ocr_tokens`` (the HF layouts carry them; lmms-eval's ``ocr: true``).

Option ``textvqa_suffix`` replaces the answer instruction (a literal ``\\n`` is a newline; ``""``/``none``: no
suffix). Default budget 128 new tokens (``model_vqa_loader.py``).

Data (under the data root; option ``textvqa_format``: ``auto``, ``json`` or ``parquet``):

- the original release: ``TextVQA_0.5.1_val.json`` (``{"data": [{"question_id", "question", "image_id",
  "answers": [10 strings], ...}]}``) with the images ``train_images/<image_id>.jpg`` (TextVQA's val images ship
  in ``train_val_images.zip``) under the image root (default: the data root; ``<image_id>.jpg`` directly under it
  also works);
- the HF layouts (``lmms-lab/textvqa``, ``facebook/textvqa`` saved as parquet): ``validation-*.parquet`` (in the
  data root or its ``data/``) with ``question_id``, ``question``, ``image_id``, ``answers``, ``ocr_tokens`` and the
  image embedded (``image.bytes``).

``auto`` takes the JSON file when present, else the parquet files. Sample ids are the ``question_id`` values.

Answer files (``harness score textvqa --responses FILE``):

- LLaVA's answers (``model_vqa_loader.py``: JSON lines ``{"question_id": <image_id>, "prompt", "text"}``), scored
  exactly as ``eval_textvqa.py``: each line is matched to the annotation ``(image_id, question.lower())`` whose
  question ``prompt_processor`` extracts from its prompt (the first line; with "Reference OCR token:" the line that
  is not the OCR line; "OCR tokens: ... Question: X Short answer:" -> X), lower-cased; when two annotations share
  that key the later one wins for both (a dict); every line is scored, unanswered questions are not counted;
- an EvalAI submission (a JSON list of ``{"question_id": int, "answer": str}``), or JSON lines of the same (the
  answer under ``answer``, ``text`` or ``response``), matched by ``question_id``.

Departures that never change a number the official code prints: a question without a response (failed
generation) is counted (``counts["no_response"]``) and left out of the mean, as it is absent from the official
answer file; a record whose answers are not 10 strings is a :class:`DataError` when the data is read (the official
code asserts while scoring).

Where the harness is stricter than the official scorer: a second answer for one question id, or an answer to a
question that is not in the data, is an error (the official evaluator scores whatever list it is given); a response
over 100,000 characters is refused with its id.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import ConfigError, DataError, MissingDataFile
from harness.io import iter_jsonl, iter_parquet_rows, read_json
from harness.task import DataFile, Task, check_response_text, register_task
from harness.types import ImageRef, Metrics, Response, Sample
from tasks import _scaffold as scaffold

log = logging.getLogger(__name__)

SCORER_SOURCE = (
    "LLaVA llava/eval/eval_textvqa.py + llava/eval/m4c_evaluator.py (MMF EvalAIAnswerProcessor, "
    "TextVQAAccuracyEvaluator), https://github.com/haotian-liu/LLaVA, "
    "commit 524a75b74254717057ee196b507668ebd314a280"
)
PROMPT_SOURCE = (
    "LLaVA-1.5 playground/data/eval/textvqa/llava_textvqa_val_v051_ocr.jsonl (OCR variant); "
    "lmms-eval lmms_eval/tasks/textvqa/utils.py textvqa_doc_to_text (capitalize + post_prompt)"
)
DATA_SOURCE = (
    "TextVQA 0.5.1: https://textvqa.org/dataset (TextVQA_0.5.1_val.json, train_val_images.zip -> "
    "train_images/), or the HF dataset lmms-lab/textvqa / facebook/textvqa saved as parquet "
    "(validation-*.parquet)"
)
LLAVA_OCR_SOURCE = (
    "LLaVA-1.5 llava_textvqa_val_v051_ocr.jsonl (https://github.com/haotian-liu/LLaVA, playground/data/eval/textvqa/)"
)

ANNOTATION_FILE = "TextVQA_0.5.1_val.json"
LLAVA_OCR_FILE = "llava_textvqa_val_v051_ocr.jsonl"
PARQUET_GLOBS: tuple[str, ...] = (
    "validation-*.parquet",
    "data/validation-*.parquet",
    "validation.parquet",
    "data/validation.parquet",
)
IMAGE_FOLDERS: tuple[str, ...] = ("train_images", "")
FORMATS: tuple[str, ...] = scaffold.format_choices("json")

#: LLaVA-1.5's short-answer instruction.
LLAVA_SUFFIX = "\nAnswer the question using a single word or phrase."
OCR_PREFIX = "\nReference OCR token: "
#: ``model_vqa_loader.py`` ``--max_new_tokens`` default.
DEFAULT_MAX_NEW_TOKENS = 128
N_ANSWERS = 10

# ------------------------------------------------------------------------------------------- EvalAI normalization
#: ``EvalAIAnswerProcessor.CONTRACTIONS`` (typos of the original table included).
CONTRACTIONS: dict[str, str] = {
    "aint": "ain't",
    "arent": "aren't",
    "cant": "can't",
    "couldve": "could've",
    "couldnt": "couldn't",
    "couldn'tve": "couldn't've",
    "couldnt've": "couldn't've",
    "didnt": "didn't",
    "doesnt": "doesn't",
    "dont": "don't",
    "hadnt": "hadn't",
    "hadnt've": "hadn't've",
    "hadn'tve": "hadn't've",
    "hasnt": "hasn't",
    "havent": "haven't",
    "hed": "he'd",
    "hed've": "he'd've",
    "he'dve": "he'd've",
    "hes": "he's",
    "howd": "how'd",
    "howll": "how'll",
    "hows": "how's",
    "Id've": "I'd've",
    "I'dve": "I'd've",
    "Im": "I'm",
    "Ive": "I've",
    "isnt": "isn't",
    "itd": "it'd",
    "itd've": "it'd've",
    "it'dve": "it'd've",
    "itll": "it'll",
    "let's": "let's",
    "maam": "ma'am",
    "mightnt": "mightn't",
    "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've",
    "mightve": "might've",
    "mustnt": "mustn't",
    "mustve": "must've",
    "neednt": "needn't",
    "notve": "not've",
    "oclock": "o'clock",
    "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at",
    "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at",
    "shant": "shan't",
    "shed've": "she'd've",
    "she'dve": "she'd've",
    "she's": "she's",
    "shouldve": "should've",
    "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll",
    "somebodys": "somebody's",
    "someoned": "someone'd",
    "someoned've": "someone'd've",
    "someone'dve": "someone'd've",
    "someonell": "someone'll",
    "someones": "someone's",
    "somethingd": "something'd",
    "somethingd've": "something'd've",
    "something'dve": "something'd've",
    "somethingll": "something'll",
    "thats": "that's",
    "thered": "there'd",
    "thered've": "there'd've",
    "there'dve": "there'd've",
    "therere": "there're",
    "theres": "there's",
    "theyd": "they'd",
    "theyd've": "they'd've",
    "they'dve": "they'd've",
    "theyll": "they'll",
    "theyre": "they're",
    "theyve": "they've",
    "twas": "'twas",
    "wasnt": "wasn't",
    "wed've": "we'd've",
    "we'dve": "we'd've",
    "weve": "we've",
    "werent": "weren't",
    "whatll": "what'll",
    "whatre": "what're",
    "whats": "what's",
    "whatve": "what've",
    "whens": "when's",
    "whered": "where'd",
    "wheres": "where's",
    "whereve": "where've",
    "whod": "who'd",
    "whod've": "who'd've",
    "who'dve": "who'd've",
    "wholl": "who'll",
    "whos": "who's",
    "whove": "who've",
    "whyll": "why'll",
    "whyre": "why're",
    "whys": "why's",
    "wont": "won't",
    "wouldve": "would've",
    "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've",
    "yall": "y'all",
    "yall'll": "y'all'll",
    "y'allll": "y'all'll",
    "yall'd've": "y'all'd've",
    "y'alld've": "y'all'd've",
    "y'all'dve": "y'all'd've",
    "youd": "you'd",
    "youd've": "you'd've",
    "you'dve": "you'd've",
    "youll": "you'll",
    "youre": "you're",
    "youve": "you've",
}
#: ``EvalAIAnswerProcessor.NUMBER_MAP``.
NUMBER_MAP: dict[str, str] = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
ARTICLES: tuple[str, ...] = ("a", "an", "the")
#: The official pattern, look-ahead ``(?!<=\d)`` where a look-behind was meant: deletes every "." not followed by a
#: digit.
PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
COMMA_STRIP = re.compile(r"(?<=\d)(\,)+(?=\d)")
PUNCTUATIONS: tuple[str, ...] = (
    ";",
    r"/",
    "[",
    "]",
    '"',
    "{",
    "}",
    "(",
    ")",
    "=",
    "+",
    "\\",
    "_",
    "-",
    ">",
    "<",
    "@",
    "`",
    ",",
    "?",
    "!",
)
#: ``PERIOD_STRIP.sub("", text, re.UNICODE)``: ``re.UNICODE`` (32) is passed as ``count``.
PERIOD_STRIP_COUNT = int(re.UNICODE)


def _word_tokenize(text: str) -> str:
    return text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()


def _process_punctuation(in_text: str) -> str:
    out = in_text
    comma_between_digits = COMMA_STRIP.search(in_text) is not None
    for p in PUNCTUATIONS:
        if (p + " " in in_text or " " + p in in_text) or comma_between_digits:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return PERIOD_STRIP.sub("", out, count=PERIOD_STRIP_COUNT)


def _process_digit_article(in_text: str) -> str:
    words = [NUMBER_MAP.get(w, w) for w in in_text.lower().split()]
    words = [w for w in words if w not in ARTICLES]
    return " ".join(CONTRACTIONS.get(w, w) for w in words)


def normalize_answer(text: str) -> str:
    """``EvalAIAnswerProcessor()(text)``: see the module docstring."""
    item = _word_tokenize(text)
    item = item.replace("\n", " ").replace("\t", " ").strip()
    item = _process_punctuation(item)
    return _process_digit_article(item)


def answer_scores(gt_answers: Sequence[str]) -> dict[str, float]:
    """``TextVQAAccuracyEvaluator._compute_answer_scores``: the score of each distinct normalized human answer, the
    mean over the leave-one-out subsets of ``min(1, matches / 3)``. Expects exactly 10 answers."""
    answers = [normalize_answer(a) for a in gt_answers]
    if len(answers) != N_ANSWERS:
        raise ValueError(f"{len(answers)} human answers; the official scorer asserts {N_ANSWERS}")
    scores: dict[str, float] = {}
    for unique in set(answers):
        accs = []
        for i in range(len(answers)):
            matching = sum(1 for j, a in enumerate(answers) if j != i and a == unique)
            accs.append(min(1, float(matching) / 3))
        scores[unique] = sum(accs) / len(accs)
    return scores


def vqa_accuracy(prediction: str, gt_answers: Sequence[str]) -> float:
    """The VQA accuracy of one prediction against its 10 human answers (0 when it matches none)."""
    return answer_scores(gt_answers).get(normalize_answer(prediction), 0.0)


def prompt_processor(prompt: str) -> str:
    """``eval_textvqa.py``'s ``prompt_processor``: the question of a LLaVA prompt, lower-cased. Raises
    ``ValueError`` where the official code asserts."""
    lines = prompt.split("\n")
    if prompt.startswith("OCR tokens: "):
        match = re.search(r"Question: (.*?) Short answer:", prompt, re.DOTALL)
        if match is None:
            raise ValueError("an 'OCR tokens:' prompt without 'Question: ... Short answer:'")
        question = match.group(1)
    elif "Reference OCR token: " in prompt and len(lines) == 3:
        question = lines[1] if prompt.startswith("Reference OCR token:") else lines[0]
    elif len(lines) == 2:
        question = lines[0]
    else:
        raise ValueError(f"prompt of {len(lines)} lines: not a format eval_textvqa.py knows")
    return question.lower()


# --------------------------------------------------------------------------------------------------- data
@dataclass(frozen=True)
class TextVQAQuestion:
    """One TextVQA question with its 10 human answers."""

    question_id: int
    question: str
    image_id: str
    answers: tuple[str, ...]
    ocr_tokens: tuple[str, ...] | None = None
    image_bytes: bytes | None = None

    @property
    def sample_id(self) -> str:
        return str(self.question_id)


def parse_record(obj: Any, path: str | Path, where: str, *, embedded: bool = False) -> TextVQAQuestion:
    """Check one TextVQA record; a missing or mistyped field raises :class:`DataError` naming ``path`` and the
    record."""
    if not isinstance(obj, Mapping):
        raise DataError(f"{where} is not an object; expected a TextVQA record", path=path)
    qid = obj.get("question_id")
    if isinstance(qid, bool) or not isinstance(qid, int):
        raise DataError(f"{where}: missing or non-integer field 'question_id'", path=path)
    where = f"{where} (question_id {qid})"
    for key in ("question", "image_id"):
        if not isinstance(obj.get(key), str):
            raise DataError(f"{where}: missing or non-string field {key!r}", path=path)
    answers = obj.get("answers")
    if not isinstance(answers, (list, tuple)) or not all(isinstance(a, str) for a in answers):
        raise DataError(
            f"{where}: field 'answers' must be a list of {N_ANSWERS} strings (the test split has no "
            f"answers: use the val split)",
            path=path,
        )
    if len(answers) != N_ANSWERS:
        raise DataError(
            f"{where}: {len(answers)} answers; expected {N_ANSWERS} (the official scorer asserts len == {N_ANSWERS})",
            path=path,
        )
    tokens = obj.get("ocr_tokens")
    if tokens is not None and (not isinstance(tokens, (list, tuple)) or not all(isinstance(t, str) for t in tokens)):
        raise DataError(f"{where}: field 'ocr_tokens' must be a list of strings", path=path)
    image_bytes = None
    if embedded:
        image = obj.get("image")
        if isinstance(image, Mapping) and isinstance(image.get("bytes"), (bytes, bytearray)):
            image_bytes = bytes(image["bytes"])
        else:
            raise DataError(f"{where}: no embedded image; expected 'image' with 'bytes'", path=path)
    return TextVQAQuestion(
        question_id=qid,
        question=obj["question"],
        image_id=obj["image_id"],
        answers=tuple(answers),
        ocr_tokens=tuple(tokens) if tokens is not None else None,
        image_bytes=image_bytes,
    )


def read_annotations(path: str | Path) -> list[TextVQAQuestion]:
    """``TextVQA_0.5.1_val.json``: ``{"data": [record, ...]}``."""
    data = read_json(path)
    if not isinstance(data, Mapping) or not isinstance(data.get("data"), list):
        raise DataError('expected TextVQA\'s {"data": [...]} (TextVQA_0.5.1_val.json)', path=path)
    out = [parse_record(rec, path, f"data[{i}]") for i, rec in enumerate(data["data"])]
    if not out:
        raise DataError("holds no questions", path=path)
    return out


def read_parquet(paths: Sequence[Path]) -> list[TextVQAQuestion]:
    """The HF layout's ``validation-*.parquet`` files, in order; images embedded."""
    out: list[TextVQAQuestion] = []
    for path in paths:
        for i, row in enumerate(iter_parquet_rows(path)):
            out.append(parse_record(row, path, f"row {i}", embedded=True))
    if not out:
        raise DataError("holds no questions", path=", ".join(str(p) for p in paths))
    return out


def read_llava_questions(path: str | Path) -> dict[tuple[str, str], str]:
    """LLaVA's ``llava_textvqa_val_v051_ocr.jsonl``: ``{(image_id, question.lower()): text}`` (the key
    ``eval_textvqa.py`` matches on: ``question_id`` holds the image id)."""
    out: dict[tuple[str, str], str] = {}
    for lineno, obj in iter_jsonl(path):
        qid, text = obj.get("question_id"), obj.get("text")
        if not isinstance(qid, str) or not isinstance(text, str):
            raise DataError('expected LLaVA\'s {"question_id": <image_id>, "text": <prompt>}', path=path, line=lineno)
        try:
            out[(qid, prompt_processor(text))] = text
        except ValueError as exc:
            raise DataError(f"prompt: {exc}", path=path, line=lineno) from None
    return out


# --------------------------------------------------------------------------------------------------- scoring
def _fmt2(value: float) -> float:
    """The official ``'{:.2f}'.format(value)``, as a number."""
    return float(f"{value:.2f}")


@dataclass(frozen=True)
class _Scored:
    id: str
    prediction: str
    gt_answers: tuple[str, ...]


def _metrics(items: Sequence[_Scored], *, task: str, counts: Mapping[str, int], notes: Sequence[str]) -> Metrics:
    records = []
    scores = []
    for it in items:
        score = vqa_accuracy(it.prediction, it.gt_answers)
        scores.append(score)
        records.append({"id": it.id, "answer": normalize_answer(it.prediction), "score": score})
    all_counts = {"scored": len(scores), **counts}
    all_notes = [f"scorer: {SCORER_SOURCE}", "Accuracy is the printed percentage ({:.2f}%)", *notes]
    if not scores:
        all_notes.append("no response to score: no accuracy")
        return Metrics(task=task, headline={}, counts=all_counts, notes=all_notes, records=records)
    acc = sum(scores) / len(scores)
    return Metrics(
        task=task,
        headline={"Accuracy": _fmt2(100.0 * acc)},
        breakdown={"unrounded": {"Accuracy": 100.0 * acc}},
        counts=all_counts,
        notes=all_notes,
        records=records,
    )


def _bool_option(options: Mapping[str, Any], key: str) -> bool:
    value = options.get(key, False)
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{key} must be true or false, got {value!r}")


# --------------------------------------------------------------------------------------------------- task
@register_task
class TextVQA(scaffold.DataLayout, Task):
    """TextVQA val (5,000 questions): VQA accuracy over 10 human answers (LLaVA's ``eval_textvqa.py``).

    Options: ``textvqa_ocr`` (``false``, default: the question and the LLaVA-1.5 short-answer instruction; ``true``:
    with the "Reference OCR token:" line, from LLaVA's ``llava_textvqa_val_v051_ocr.jsonl`` when present),
    ``textvqa_suffix`` (the answer instruction; ``none`` for the bare question), ``textvqa_format`` (``auto``,
    ``json``, ``parquet``).
    """

    name = "textvqa"
    version = "1"
    description = (
        "TextVQA val (5,000 questions, 10 human answers each): VQA accuracy with the EvalAI answer "
        "normalization (LLaVA eval_textvqa.py / m4c_evaluator.py)"
    )
    option_names = ("textvqa_format", "textvqa_ocr", "textvqa_suffix")
    data_files = (DataFile(ANNOTATION_FILE, DATA_SOURCE),)
    default_max_new_tokens = DEFAULT_MAX_NEW_TOKENS
    format_option = "textvqa_format"
    release_format = "json"
    release_names = (ANNOTATION_FILE,)
    layout_source = DATA_SOURCE
    parquet_globs = PARQUET_GLOBS

    def read_options(self) -> None:
        self.ocr = _bool_option(self.options, "textvqa_ocr")
        self.suffix = scaffold.suffix_text(self.options.get("textvqa_suffix", LLAVA_SUFFIX), "textvqa_suffix")
        self.read_format_option()

    def default_data_root(self) -> Path:
        raise ConfigError(
            f"task {self.name} needs --data-root: the folder holding {ANNOTATION_FILE} (with "
            f"train_images/) or validation-*.parquet ({DATA_SOURCE})"
        )

    def missing_layout_error(self) -> MissingDataFile:
        globs = " or ".join(PARQUET_GLOBS)
        return scaffold.missing_layout(
            self.format,
            self.release_paths(),
            f"{DATA_SOURCE}; looked for {ANNOTATION_FILE}",
            (self.data_root / PARQUET_GLOBS[0], f"{DATA_SOURCE}; looked for {globs}"),
            auto_source=f"{DATA_SOURCE}; looked for {ANNOTATION_FILE} or {globs}",
        )

    def read_layout(self, fmt: str, files: list[Path]) -> list[TextVQAQuestion]:
        questions = read_annotations(files[0]) if fmt == "json" else read_parquet(files)
        scaffold.require_unique(
            questions,
            lambda q: q.question_id,
            lambda q: f"question_id {q.question_id} appears twice; expected unique ids",
            path=", ".join(str(p) for p in files),
        )
        return questions

    def questions(self) -> list[TextVQAQuestion]:
        """The benchmark's questions in file order (read once); a repeated ``question_id`` is a :class:`DataError`."""
        return self.layout_records()

    def _image(self, q: TextVQAQuestion) -> ImageRef:
        if q.image_bytes is not None:
            return ImageRef(data=q.image_bytes)
        name = f"{q.image_id}.jpg"
        return scaffold.first_file(
            [self.image_root / folder / name if folder else self.image_root / name for folder in IMAGE_FOLDERS]
        )

    def _prompts(self, questions: Sequence[TextVQAQuestion]) -> tuple[dict[str, str], str]:
        """Each question's prompt by sample id, and where the prompts come from."""
        if not self.ocr:
            return (
                {q.sample_id: q.question.capitalize() + self.suffix for q in questions},
                f"question + {self.suffix!r} ({PROMPT_SOURCE})",
            )
        llava_file = self.data_root / LLAVA_OCR_FILE
        if llava_file.is_file():
            texts = read_llava_questions(llava_file)
            out = {}
            for q in questions:
                text = texts.get((q.image_id, q.question.lower()))
                if text is None:
                    raise DataError(
                        f"no prompt for question {q.question_id} (image {q.image_id}, "
                        f"{q.question!r}); expected LLaVA's prompts of {ANNOTATION_FILE}",
                        path=llava_file,
                    )
                out[q.sample_id] = text if self.suffix == LLAVA_SUFFIX else text.replace(LLAVA_SUFFIX, self.suffix)
            return out, f"OCR variant: LLaVA's prompts, {llava_file}"
        missing = [q for q in questions if q.ocr_tokens is None]
        if missing:
            raise MissingDataFile(
                llava_file,
                f"{LLAVA_OCR_SOURCE}; textvqa_ocr=true needs LLaVA's OCR prompts or "
                f"records with 'ocr_tokens' (the HF parquet layout); question "
                f"{missing[0].question_id} has none",
            )
        return (
            {
                q.sample_id: q.question.capitalize() + OCR_PREFIX + ", ".join(q.ocr_tokens or ()) + self.suffix
                for q in questions
            },
            "OCR variant: the records' ocr_tokens (lmms-eval ocr: true)",
        )

    def load_samples(self) -> list[Sample]:
        questions = self.questions()
        prompts, _ = self._prompts(questions)
        return [
            Sample(
                id=q.sample_id,
                prompt=prompts[q.sample_id],
                images=(self._image(q),),
                reference={"answers": list(q.answers)},
                meta={"question_id": q.question_id, "image_id": q.image_id, "question": q.question},
            )
            for q in questions
        ]

    def score(self, samples: Sequence[Sample], responses: Mapping[str, Response], judge: Any = None) -> Metrics:
        items = [
            _Scored(s.id, responses[s.id].text, tuple(s.reference["answers"])) for s in samples if s.id in responses
        ]
        missing = len(samples) - len(items)
        notes = [f"prompt: {'OCR variant' if self.ocr else 'no OCR tokens'}, suffix {self.suffix!r}"]
        if missing:
            notes.append(f"{missing} questions have no response (failed generation) and are not scored")
        return _metrics(items, task=self.name, counts={"questions": len(samples), "no_response": missing}, notes=notes)

    # ------------------------------------------------------------------------------------------- answer files
    def read_responses(self, path: str | Path) -> dict[str, Response]:
        """An EvalAI submission (JSON list) or JSON lines with ``question_id`` (int) and the answer under
        ``answer``, ``text`` or ``response``; unknown or repeated ids raise :class:`DataError`."""
        path = Path(path)
        answers = scaffold.Answers(
            path, {q.sample_id for q in self.questions()}, f"a TextVQA question of {self.data_root}"
        )
        entries: list[tuple[int | None, str, Any]] = []
        if path.suffix == ".json":
            data = read_json(path)
            if not isinstance(data, list):
                raise DataError('expected an EvalAI submission: a JSON list of {"question_id", "answer"}', path=path)
            entries = [(None, f"entry {i}: ", obj) for i, obj in enumerate(data)]
        else:
            entries = [(lineno, "", obj) for lineno, obj in iter_jsonl(path)]
        for line, where, obj in entries:
            if not isinstance(obj, Mapping):
                raise DataError(f"{where}not an object", path=path, line=line)
            qid = obj.get("question_id")
            text = next((obj[k] for k in ("answer", "text", "response") if k in obj), None)
            if isinstance(qid, bool) or not isinstance(qid, int) or not isinstance(text, str):
                raise DataError(
                    f"{where}expected an integer 'question_id' and the answer under 'answer', 'text' or 'response'",
                    path=path,
                    line=line,
                )
            answers.add(str(qid), text, line, name=f"question_id {qid}", where=where)
        return answers.responses

    def score_llava_answers(self, path: str | Path) -> Metrics:
        """LLaVA's answer file, scored exactly as ``eval_textvqa.py`` (see the module docstring)."""
        annotations = {(q.image_id, q.question.lower()): q for q in self.questions()}
        items: list[_Scored] = []
        for lineno, obj in iter_jsonl(path):
            image_id, prompt, text = obj.get("question_id"), obj.get("prompt"), obj.get("text")
            if not isinstance(image_id, str) or not isinstance(prompt, str) or not isinstance(text, str):
                raise DataError(
                    'expected LLaVA\'s answer {"question_id": <image_id>, "prompt", "text"}', path=path, line=lineno
                )
            try:
                key = (image_id, prompt_processor(prompt))
            except ValueError as exc:
                raise DataError(f"prompt: {exc}", path=path, line=lineno) from None
            q = annotations.get(key)
            if q is None:
                raise DataError(
                    f"no TextVQA question {key[1]!r} on image {image_id} in {self.data_root}", path=path, line=lineno
                )
            check_response_text(q.sample_id, text, source=path, line=lineno)
            items.append(_Scored(q.sample_id, text, q.answers))
        if not items:
            raise DataError("holds no answers", path=path)
        return _metrics(
            items,
            task=self.name,
            counts={"questions": len(self.questions())},
            notes=[f"responses: {path} (LLaVA format, matched as eval_textvqa.py)"],
        )

    def score_file(self, path: str | Path, judge: Any = None) -> tuple[Metrics, dict[str, int]]:
        """LLaVA's answer JSONL (``question_id`` = image id, with ``prompt``) as ``eval_textvqa.py``; else an EvalAI
        submission or JSONL by ``question_id``."""
        path = Path(path)
        n = len(self.questions())
        if path.suffix != ".json":
            first = next((obj for _, obj in iter_jsonl(path)), None)
            if first is None:
                raise DataError("holds no answers", path=path)
            if isinstance(first.get("question_id"), str) and "prompt" in first:
                metrics = self.score_llava_answers(path)
                scored = metrics.counts["scored"]
                return metrics, {"samples": n, "responses": scored, "missing": max(n - scored, 0)}
        return super().score_file(path, judge)
