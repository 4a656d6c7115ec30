"""Object HalBench: object hallucination in detailed image descriptions (CHAIR on 300 COCO images).

Object HalBench (RLHF-V, Yu et al., CVPR 2024; used again by RLAIF-V) asks a vision-language model for a detailed
description of 300 COCO val2014 images and counts the COCO objects it mentions that are not in the image. This
module holds

- the task ``object_halbench``: the 300 questions of RLHF-V's ``obj_halbench_300_with_image.jsonl`` (JSONL lines
  ``{"image_id", "question", "image"}``, the image base64-encoded), scored against COCO 2014 annotations;
- the answer files (:func:`read_answer_file`: the official preprocessing of ``load_generated_captions``);
- the GPT object-extraction path (``objhal_method=gpt``), with the spaCy step behind :class:`PhraseAnalyzer`;
- :func:`score_answer_file` / :meth:`ObjectHalBench.score_answer_file`, which score an answer file in the official
  format ``{"image_id", "question" | "prompt", "text" | "answer"}`` (``harness score object_halbench --responses``).

CHAIR itself -- :class:`~tasks.chair.CocoVocabulary` (the synonym handling and ``caption_to_words`` of the official
scorer), :class:`~tasks.chair.CocoGroundTruth` (the per-image ground truth from the COCO annotation files, read
once, only for the images asked about, and cached in the harness cache), :func:`~tasks.chair.compute_chair` and
:func:`~tasks.chair.printed_numbers` -- is in :mod:`tasks.chair`; its names are importable from here too.

Official source followed, to the letter: RLHF-V ``eval/eval_gpt_obj_halbench.py`` and
``eval/summarize_gpt_obj_halbench_review.py`` (https://github.com/RLHF-V/RLHF-V, commit
8daac8a8f30df123818ae9d3a0e3f0018497714c; the same scorer is in https://github.com/RLHF-V/RLAIF-V, commit
83d917b2e8118ca8e7877a796d72af9bb3e6b356, except for the GPT reply parser, see :data:`GPT_PARSERS`).

What the official scorer computes, with its quirks (all reproduced):

Vocabulary. Each line of ``synonyms_refine.txt`` is ``line.strip().split(', ')``, each entry stripped; the first
entry is the COCO class ("node word"), every entry maps to it (a synonym listed on two lines maps to the later
line's class). ``double_word_dict``: every multi-word synonym maps to itself, plus ``home plate``, ``train track``
(to themselves), ``baby X`` / ``adult X`` -> X for the animal words, ``passenger jet`` / ``passenger train`` ->
jet / train, ``bow tie`` -> tie, ``toilet seat`` -> toilet, ``wine glas`` -> wine glass.

``caption_to_words``. ``nltk.word_tokenize(caption.lower())``, ``WordNetLemmatizer().lemmatize(w)`` (noun), a
greedy left-to-right merge of bigrams found in ``double_word_dict`` ("hot dog", "baby bird" -> bird), then
"seat" is dropped if "toilet" is also there, then only words of the synonym vocabulary are kept, each mapped to its
node word. Every mention counts: "a dog and another dog" is two mentions.

Ground truth of an image: the classes of its COCO instances (train2014 + val2014 concatenated) mapped through the
synonyms, united with the node words of its COCO captions (same ``caption_to_words``).

Answers. ``text`` (else ``answer``) with every ``"Assistant:"`` removed, then stripped; the question is ``prompt``
(else ``question``); ``image_id`` (else the question file's, by line order). An answer file whose *path* contains
"coh" gets the official ``preprocess_coh_results`` trimming.

Metrics (``compute_chair``; one "response" per answer):

- ``CHAIRs`` = responses with a hallucinated mention / all responses;
- ``CHAIRs_refine`` = responses with a hallucinated mention / responses with at least one COCO mention;
- ``CHAIRi`` = hallucinated mentions / all COCO mentions;
- ``obj_rec`` = sum over responses of the distinct correctly mentioned classes / sum of the ground-truth classes;
- ``avg_word_len`` = mean of ``len(caption.strip().split(" "))`` (so two spaces make an extra "word").

The evaluation script prints ``CHAIRs``, ``CHAIRsr`` (= CHAIRs_refine) and ``CHAIRi`` times 100 with ``%0.001f``
(one decimal) and ``avg_len`` with ``%0.01f``; the summarizer prints ``Response Hall`` (= CHAIRs_refine),
``Object Hall`` (= CHAIRi), ``Response Correct``, ``Object Correct``, ``Object Recall`` (= obj_rec) and
``Average Length`` with two decimals. RLHF-V and RLAIF-V report the summarizer's Response Hall and Object Hall (as
"Resp." and "Ment."). The headline carries both sets under their official names (see :data:`HEADLINE_SOURCES`).

GPT path (``--use_gpt`` officially; ``objhal_method=gpt`` here; what RLHF-V and RLAIF-V report): answers of at
most 3 words (``len(caption.strip().split()) <= 3``) get no objects and no judge call; otherwise the extraction
prompt (:data:`EXTRACTION_PROMPT_TEMPLATE`, ``{question}`` then ``{answer}`` filled with ``str.replace``) is sent as
one *system* message to ``gpt-3.5-turbo-0613`` (temperature 0.2, max_tokens 512, ``gpt4_grpc.Chat`` defaults). The
reply is parsed as a JSON list (:data:`GPT_PARSERS`); each object ``o`` goes through spaCy ``en_core_web_trf`` as
``nlp("a " + o)``: if the token lemmas hold a double word, those double words are the objects, else runs of
``NN/NNS/NNP/NNPS`` lemmas joined by spaces; the objects of a response are deduplicated, then "seat" is dropped if
"toilet" is there and the objects are matched exactly against the synonym vocabulary.

Differences from the official code, which change errors and speed, never numbers:

- a failed judgment (no reply, or a reply the official parser cannot read; the official code retries up to 100
  times, then crashes on an ``assert``) is counted in ``counts["judge_failed"]`` and its answer is left out of every
  metric, never scored as "no objects";
- an image id that is not in the COCO annotation files (the official code gives it an empty ground truth, so every
  mention would be a hallucination), an answer whose image is not in the question file, a duplicate answer, and a
  missing field raise :class:`~harness.errors.DataError` naming the file and line;
- the COCO ground truth is computed only for the images scored and cached in the harness cache, keyed by the
  annotation files' names, sizes and modification times, the synonyms file's hash and the NLTK version.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import sys
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

from harness.errors import (
    ConfigError,
    DataError,
    HarnessError,
    ImageError,
    install_command,
)
from harness.io import iter_jsonl, read_json
from harness.judge import Judge, JudgeRequest, JudgeResult, ReplayJudge
from harness.task import DataFile, Task, TaskFlag, check_response_text, register_task
from harness.types import ImageRef, Metrics, Response, Sample
from tasks import _scaffold as scaffold

# CHAIR (vocabulary, COCO ground truth, compute_chair, printed numbers) lives in tasks.chair; its names are
# re-exported here, where they were first defined.
from tasks.chair import (  # noqa: F401
    ANIMAL_WORDS,
    CAPTION_FILES,
    COCO_DIR,
    COCO_FILES,
    COCO_SOURCE,
    GT_CACHE_FORMAT,
    INSTANCE_FILES,
    SYNONYMS_FILE,
    SYNONYMS_SOURCE,
    VEHICLE_WORDS,
    Answer,
    CaptionWords,
    CocoGroundTruth,
    CocoVocabulary,
    FoundObjects,
    ObjHalResult,
    caption_objects,
    compute_chair,
    missing_files,
    printed_numbers,
)
from tasks.text import (
    PUNKT_TAB,
    TAGGER_ENG,
    WORDNET,
    lemmatize,
    load_spacy_model,
    nltk_provenance,
    pos_tag,
    require_nltk_resources,
    word_tokenize,
)

log = logging.getLogger(__name__)

OFFICIAL_SOURCE = (
    "RLHF-V eval/eval_gpt_obj_halbench.py + eval/summarize_gpt_obj_halbench_review.py, "
    "https://github.com/RLHF-V/RLHF-V, commit 8daac8a8f30df123818ae9d3a0e3f0018497714c"
)
RLAIFV_SOURCE = (
    "RLAIF-V eval/eval_gpt_obj_halbench.py, https://github.com/RLHF-V/RLAIF-V, "
    "commit 83d917b2e8118ca8e7877a796d72af9bb3e6b356"
)

QUESTION_FILE = "obj_halbench_300_with_image.jsonl"
QUESTION_SOURCE = (
    "RLHF-V eval/data/obj_halbench_300_with_image.jsonl (https://github.com/RLHF-V/RLHF-V; "
    "also https://github.com/RLHF-V/RLAIF-V eval/data/)"
)

#: The judge and its settings in the official GPT path (``Chat(model="gpt-3.5-turbo-0613")``, ``chat_completion``
#: defaults of ``eval/gpt4_grpc.py``: temperature 0.2, top_p 1, max_tokens 512).
DEFAULT_JUDGE_MODEL = "gpt-3.5-turbo-0613"
JUDGE_TEMPERATURE = 0.2
JUDGE_MAX_TOKENS = 512
#: Answers of at most this many whitespace-separated words get no objects and no judge call.
SHORT_ANSWER_WORDS = 3
#: Generation budget: RLAIF-V ``muffin/eval/llava15_chair.py`` generates with ``max_new_tokens=1024``.
MAX_NEW_TOKENS = 1024

#: ``prompt_template`` of ``eval_gpt_obj_halbench.py`` (RLHF-V and RLAIF-V, verbatim; Apache-2.0 code).
EXTRACTION_PROMPT_TEMPLATE = """You are an expert in image objects extraction according to a question answer pair. \
We asked an examiner to answer a question about a picture.

[Start of Question]

<image> {question}

[End of Question]

[Start of Examiner's Answer]

{answer}

[End of Examiner's Answer]


Assume that the answer is correct, please identify all visible objects that are directly shown in the image. \
Please following the instructions in below:

1. You should only mention objects that are explicitly mentioned in the examiner's answer.
2. You should only extract the object names without the attributes of the objects.
3. You should not include the properties of the object, like the color, material, etc. as part of the object name \
in your result.
4. Make your answer precise. Present the results in a JSON list format: ["object_1", ..., "object_n"].
5. You should return an empty JSON list () if no visible objects can be found.
"""

#: Penn tags whose lemmas the official ``postagging`` joins into object phrases.
NOUN_TAGS = frozenset({"NNP", "NNPS", "NN", "NNS"})

METHODS = {
    "chair": "judge-free CHAIR: objects read from the answer text by caption_to_words (NLTK word_tokenize, "
    "WordNet lemmas, synonyms_refine.txt)",
    "gpt": "GPT object extraction (official --use_gpt, as reported by RLHF-V/RLAIF-V): objects listed by the judge, "
    "lemmatised phrase by phrase, matched against synonyms_refine.txt",
}

#: Where each headline number comes from (official script, printed label, formula).
HEADLINE_SOURCES = {
    "CHAIRs": "eval_gpt_obj_halbench.py column CHAIRs: hallucinated responses / all responses x100, %0.001f",
    "CHAIRs_refine": "eval_gpt_obj_halbench.py column CHAIRsr: hallucinated responses / responses with a COCO "
    "mention x100, %0.001f",
    "CHAIRi": "eval_gpt_obj_halbench.py column CHAIRi: hallucinated mentions / COCO mentions x100, %0.001f",
    "Response Hall": "summarize_gpt_obj_halbench_review.py 'Response Hall' = CHAIRs_refine x100, .2f "
    "(RLHF-V/RLAIF-V 'Resp.')",
    "Object Hall": "summarize_gpt_obj_halbench_review.py 'Object Hall' = CHAIRi x100, .2f (RLHF-V/RLAIF-V 'Ment.')",
    "Object Recall": "summarize_gpt_obj_halbench_review.py 'Object Recall' = obj_rec x100, .2f",
    "Average Length": "summarize_gpt_obj_halbench_review.py 'Average Length' = avg_word_len, .2f "
    "(eval script avg_len: %0.01f)",
}


# --------------------------------------------------------------------------------------------------- answers
def clean_answer(text: str) -> str:
    """The official answer preprocessing: every ``"Assistant:"`` removed, then ``strip()``."""
    return text.replace("Assistant:", "").strip()


_COH_RULES = (
    ("The following is a response without hallucination.", -1),
    ("The following is a response with hallucination.", 0),
    ("Generate a response without errors.", -1),
    ("Generate a response with errors.", 0),
)


def trim_coh(caption: str) -> str:
    """The official ``preprocess_coh_results`` on one caption (applied to answer files whose path contains "coh")."""
    for marker, part in _COH_RULES:
        if marker in caption:
            return caption.split(marker)[part].strip()
    return caption


def _as_image_id(value: Any, *, path: Path, line: int, field_name: str = "image_id") -> int:
    """``int(value)`` as the official code does; anything ``int`` refuses (or a bool) is a :class:`DataError`."""
    if isinstance(value, bool):
        raise DataError(f"field {field_name!r} must be an integer image id, got {value!r}", path=path, line=line)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise DataError(
            f"field {field_name!r} must be an integer image id, got {value!r}", path=path, line=line
        ) from None


@dataclass(frozen=True)
class QuestionEntry:
    """One line of the question file (without its image)."""

    sample_id: str
    image_id: int
    question: str
    line: int


def read_answer_file(path: str | Path, questions: Sequence[QuestionEntry] | None = None) -> list[Answer]:
    """Read an answer file in the official format, as ``load_generated_captions`` (``.jsonl`` branch).

    Each line: ``image_id`` (else the image of the question file's line with the same position), ``prompt`` (else
    ``question``), ``text`` (else ``answer``). ``"Assistant:"`` is removed and the text stripped; if the path
    contains "coh", ``preprocess_coh_results`` is applied. With ``questions``, an image id not in the question file
    is an error. An image may be answered several times, for different questions (the paper protocol asks eight
    prompts per image): every line is a response, as in the official scorer; such answers get the ids
    ``IMAGE_ID#k`` (k-th answer of that image, from 1), an image answered once keeps its image id. The same image
    and question answered twice is an error (stricter than the official scorer, which would count both). Errors
    name the file and line.
    """
    path = Path(path)
    by_image = {q.image_id: q for q in questions} if questions is not None else None
    coh = "coh" in str(path)
    answers: list[Answer] = []
    asked = scaffold.UniqueIds(path)
    for index, (lineno, rec) in enumerate(iter_jsonl(path)):
        if "image_id" in rec:
            image_id = _as_image_id(rec["image_id"], path=path, line=lineno)
        else:
            if questions is None:
                raise DataError(
                    f"no 'image_id', and the question file ({QUESTION_FILE}) that gives it by line order "
                    f"is not available",
                    path=path,
                    line=lineno,
                )
            if index >= len(questions):
                raise DataError(
                    f"no 'image_id', and the question file has only {len(questions)} questions to take "
                    f"it from by line order",
                    path=path,
                    line=lineno,
                )
            image_id = questions[index].image_id
        if by_image is not None and image_id not in by_image:
            raise DataError(f"image_id {image_id} is not in the question file {QUESTION_FILE}", path=path, line=lineno)
        q_field = "prompt" if "prompt" in rec else "question" if "question" in rec else None
        if q_field is None:
            raise DataError("missing field 'question' (or 'prompt')", path=path, line=lineno)
        asked.add(
            (image_id, str(rec[q_field])),
            f"image_id {image_id} is answered twice with the same question",
            line=lineno,
            cite_first=True,
        )
        a_field = "text" if "text" in rec else "answer" if "answer" in rec else None
        if a_field is None:
            raise DataError("missing field 'text' (or 'answer')", path=path, line=lineno)
        question, text = rec[q_field], rec[a_field]
        if not isinstance(question, str):
            raise DataError(
                f"field {q_field!r} must be a string, got {type(question).__name__}", path=path, line=lineno
            )
        if not isinstance(text, str):
            raise DataError(f"field {a_field!r} must be a string, got {type(text).__name__}", path=path, line=lineno)
        caption = clean_answer(text)
        if coh:
            caption = trim_coh(caption)
        answers.append(Answer(id=str(image_id), image_id=image_id, question=question, caption=caption, line=lineno))
    if not answers:
        raise DataError("no answers in the file", path=path)
    ids = _occurrence_ids([a.image_id for a in answers])
    return [replace(a, id=i) for a, i in zip(answers, ids)]


def _occurrence_ids(image_ids: Sequence[int]) -> list[str]:
    """Sample ids for items keyed by image: the image id where an image occurs once, else ``IMAGE_ID#k``."""
    counts = Counter(image_ids)
    seen: Counter[int] = Counter()
    out = []
    for image_id in image_ids:
        seen[image_id] += 1
        out.append(str(image_id) if counts[image_id] == 1 else f"{image_id}#{seen[image_id]}")
    return out


# --------------------------------------------------------------------------------------------------- GPT path
class UnusableReply(ValueError):
    """A judge reply the official code cannot turn into an object list (it would retry, then crash)."""


#: What ``json.loads`` of a string raises (the official code catches everything with a bare ``except``).
_JSON_ERRORS = (ValueError, RecursionError)


def _last_line_list(content: str) -> Any:
    """The official fallback: if the reply contains ``["``, ``json.loads`` of its last line."""
    if '["' in content:
        try:
            return json.loads(content.strip().split("\n")[-1])
        except _JSON_ERRORS:
            pass
    raise UnusableReply("Content is not json interpretable")


def _parse_rlhfv(content: str) -> Any:
    """RLHF-V ``parse_object_list``: ``json.loads``, else the last line if the reply contains ``["``."""
    try:
        return json.loads(content)
    except _JSON_ERRORS:
        return _last_line_list(content)


_JSON_FENCE = re.compile(r"```json\n(.*?)\n```", re.DOTALL)


def _parse_rlaifv(content: str) -> Any:
    """RLAIF-V ``parse_object_list``: a ```` ```json ```` fenced block, else the last line if the reply contains
    ``["`` (RLAIF-V dropped RLHF-V's plain ``json.loads`` of the whole reply)."""
    match = _JSON_FENCE.search(content)
    if match:
        try:
            return json.loads(match.group(1))
        except _JSON_ERRORS:
            pass
    return _last_line_list(content)


#: Reply parsers: ``rlhf-v`` (default, :data:`OFFICIAL_SOURCE`) and ``rlaif-v`` (:data:`RLAIFV_SOURCE`).
GPT_PARSERS: dict[str, Callable[[str], Any]] = {"rlhf-v": _parse_rlhfv, "rlaif-v": _parse_rlaifv}


def parse_object_list(content: str, parser: str = "rlhf-v") -> list[Any]:
    """The judge's object list, as the official code reads it: :data:`GPT_PARSERS`, then iterated as the official
    ``for text in caps_gpt_objs`` does (a JSON string gives its characters, an object its keys).

    Raises :class:`UnusableReply` for a reply the official code cannot use (it would retry, then crash on
    ``for text in caps_gpt_objs`` for a number, boolean or null).
    """
    value = GPT_PARSERS[parser](content)
    if isinstance(value, (list, str, dict)):
        return list(value)
    raise UnusableReply(f"reply is JSON {type(value).__name__}, not a list")


def build_extraction_prompt(question: str, answer: str) -> str:
    """``prompt_template`` with ``{question}`` then ``{answer}`` replaced (``str.replace``, as the official code)."""
    return EXTRACTION_PROMPT_TEMPLATE.replace("{question}", question).replace("{answer}", answer)


def is_short_answer(caption: str) -> bool:
    """Official: ``len(caption.strip().split()) <= 3`` -> no objects, no judge call."""
    return len(caption.strip().split()) <= SHORT_ANSWER_WORDS


class PhraseAnalyzer(ABC):
    """Tokens of a short phrase as ``(lemma, Penn tag)`` pairs: the official spaCy step ``nlp("a " + obj)``."""

    @property
    @abstractmethod
    def spec(self) -> str:
        """The option value that selects this analyzer (recorded in the notes)."""

    official: ClassVar[bool] = False

    def check(self) -> None:
        """Raise :class:`HarnessError` if the analyzer cannot be used (cheap; loads nothing large)."""

    @abstractmethod
    def analyse(self, text: str) -> list[tuple[str, str]]:
        """``[(token.lemma_, token.tag_) for token in nlp(text)]``."""


def _spacy_install_hint(model: str) -> str:
    return (
        f"install it with {install_command('spacy==3.7.2')} and `{sys.executable} -m spacy download {model}` "
        f"(online; RLAIF-V pins "
        f"spacy==3.7.2), or choose the non-official NLTK approximation with objhal_lemmatizer=nltk "
        f"(`--option objhal_lemmatizer=nltk`)"
    )


class SpacyPhraseAnalyzer(PhraseAnalyzer):
    """spaCy, as the official code: ``spacy.load("en_core_web_trf")``, ``token.lemma_`` and ``token.tag_``."""

    official = True

    def __init__(self, model: str = "en_core_web_trf"):
        self.model = model
        self._nlp: Any = None
        self._memo: dict[str, list[tuple[str, str]]] = {}

    @property
    def spec(self) -> str:
        return f"spacy:{self.model}"

    def _import(self) -> Any:
        try:
            import spacy
        except ImportError as exc:
            raise HarnessError(
                f"Object HalBench's GPT path lemmatises objects with spaCy {self.model}, and spaCy is "
                f"not installed; {_spacy_install_hint(self.model)}"
            ) from exc
        return spacy

    def check(self) -> None:
        spacy = self._import()
        if not (Path(self.model).is_dir() or spacy.util.is_package(self.model)):
            raise HarnessError(
                f"spaCy model {self.model!r} (Object HalBench's GPT path) is not installed; "
                f"{_spacy_install_hint(self.model)}"
            )

    def analyse(self, text: str) -> list[tuple[str, str]]:
        hit = self._memo.get(text)
        if hit is None:
            if self._nlp is None:
                self._nlp = load_spacy_model(self._import(), self.model, _spacy_install_hint(self.model))
            hit = self._memo[text] = [(t.lemma_, t.tag_) for t in self._nlp(text)]
        return list(hit)


_WORDNET_POS = {"N": "n", "V": "v", "J": "a", "R": "r"}


class NltkPhraseAnalyzer(PhraseAnalyzer):
    """NOT official: an approximation of spaCy ``en_core_web_trf`` with NLTK.

    ``nltk.word_tokenize``, ``nltk.pos_tag`` (Penn tags, as spaCy's ``tag_``) and the WordNet lemma of the
    lower-cased token for its part of speech (noun, verb, adjective, adverb; other tokens lower-cased). Tokenisation,
    tags and lemmas can differ from spaCy's transformer pipeline (e.g. hyphenated words, proper nouns), so numbers
    may differ from the official ones.
    """

    official = False

    @property
    def spec(self) -> str:
        return "nltk"

    def check(self) -> None:
        require_nltk_resources((PUNKT_TAB, TAGGER_ENG, WORDNET))

    def analyse(self, text: str) -> list[tuple[str, str]]:
        out = []
        for token, tag in pos_tag(word_tokenize(text)):
            low = token.lower()
            wn_pos = _WORDNET_POS.get(tag[:1])
            out.append((lemmatize(low, wn_pos) if wn_pos else low, tag))
        return out


def parse_analyzer(spec: str | PhraseAnalyzer) -> PhraseAnalyzer:
    """``spacy`` / ``spacy:<model>`` (official, default ``en_core_web_trf``), ``nltk`` (approximation), or an
    analyzer instance."""
    if isinstance(spec, PhraseAnalyzer):
        return spec
    text = str(spec).strip()
    if text == "nltk":
        return NltkPhraseAnalyzer()
    kind, sep, model = text.partition(":")
    if kind == "spacy":
        model = model.strip()
        if sep and not model:
            raise ConfigError(f"objhal_lemmatizer {spec!r} names no spaCy model")
        return SpacyPhraseAnalyzer(model or "en_core_web_trf")
    raise ConfigError(
        f"unknown objhal_lemmatizer {spec!r}; expected spacy (official, en_core_web_trf), "
        f"spacy:<model> or nltk (approximation)"
    )


def postagging(tokens: Sequence[tuple[str, str]]) -> list[str]:
    """The official ``postagging``: runs of ``NN/NNS/NNP/NNPS`` lemmas, joined by spaces."""
    phrases: list[str] = []
    current = ""
    for lemma, tag in tokens:
        if tag in NOUN_TAGS:
            current += f" {lemma}"
        elif current != "":
            phrases.append(current.strip())
            current = ""
    if current != "":
        phrases.append(current.strip())
    return phrases


def refine_objects(extracted: Sequence[Any], analyzer: PhraseAnalyzer, vocab: CocoVocabulary) -> list[str]:
    """The official ``get_pred_objs_match`` for one response: each object through ``nlp("a " + obj)``, double
    words first, else noun phrases; duplicates removed, first occurrence kept."""
    refined: list[str] = []
    for obj in extracted:
        tokens = analyzer.analyse(f"a {obj}")
        doubles = vocab.double_words_only([lemma for lemma, _ in tokens])
        refined += doubles if doubles else postagging(tokens)
    unique: list[str] = []
    for obj in refined:
        if obj not in unique:
            unique.append(obj)
    return unique


# --------------------------------------------------------------------------------------------------- scoring
def score_answers(
    answers: Sequence[Answer],
    gt: Mapping[int, frozenset[str]],
    vocab: CocoVocabulary,
    *,
    method: str = "chair",
    judge: Judge | None = None,
    analyzer: PhraseAnalyzer | None = None,
    parser: str = "rlhf-v",
) -> ObjHalResult:
    """The official ``compute_chair`` over ``answers`` (ground truth ``gt`` by image id)."""
    if method not in METHODS:
        raise ConfigError(f"unknown objhal_method {method!r}; expected one of {', '.join(METHODS)}")
    counts: dict[str, int] = {}
    if method == "chair":
        require_nltk_resources((PUNKT_TAB, WORDNET))
        found = caption_objects(answers, vocab)
    else:
        if judge is None:
            raise ConfigError(
                "Object HalBench with objhal_method=gpt needs a judge (--judge-model, or saved replies with --reviews)"
            )
        if analyzer is None:
            raise ConfigError("Object HalBench with objhal_method=gpt needs a phrase analyzer (objhal_lemmatizer)")
        found = _gpt_objects(answers, judge, analyzer, vocab, parser, counts)
    return compute_chair(answers, gt, found, counts)


def _gpt_objects(
    answers: Sequence[Answer],
    judge: Judge,
    analyzer: PhraseAnalyzer,
    vocab: CocoVocabulary,
    parser: str,
    counts: dict[str, int],
) -> dict[str, FoundObjects]:
    """Judge calls for the answers longer than 3 words, then the official parsing and phrase refinement."""
    if parser not in GPT_PARSERS:
        raise ConfigError(f"unknown objhal_gpt_parser {parser!r}; expected one of {', '.join(GPT_PARSERS)}")
    requests = [
        JudgeRequest(
            id=a.id,
            messages=({"role": "system", "content": build_extraction_prompt(a.question, a.caption)},),
            temperature=JUDGE_TEMPERATURE,
            max_tokens=JUDGE_MAX_TOKENS,
        )
        for a in answers
        if not is_short_answer(a.caption)
    ]
    results: dict[str, JudgeResult] = judge.judge(requests) if requests else {}
    counts.update(
        judge_calls=len(requests), judge_skipped_short=len(answers) - len(requests), judge_failed=0, judge_unparsed=0
    )
    out: dict[str, FoundObjects] = {}
    for a in answers:
        if is_short_answer(a.caption):
            out[a.id] = FoundObjects(vocab.objects_to_coco([]), {"judge": "skipped_short", "extracted_objects": []})
            continue
        res = results.get(a.id)
        if res is None or res.failed or res.text is None:
            counts["judge_failed"] += 1
            error = "no result" if res is None else (res.error or "failed")
            out[a.id] = FoundObjects(None, {"judge": "failed", "judge_error": error}, failure="judge_failed")
            continue
        try:
            extracted = parse_object_list(res.text, parser)
        except UnusableReply as exc:
            counts["judge_failed"] += 1
            counts["judge_unparsed"] += 1
            out[a.id] = FoundObjects(
                None, {"judge": "unparsed", "judge_error": str(exc), "judge_reply": res.text}, failure="judge_unparsed"
            )
            continue
        objs = refine_objects(extracted, analyzer, vocab)
        out[a.id] = FoundObjects(
            vocab.objects_to_coco(objs),
            {"judge": "called", "extracted_objects": [str(o) if not isinstance(o, str) else o for o in extracted]},
        )
    return out


# --------------------------------------------------------------------------------------------------- task
def _option_bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"option {name}={value!r}: expected true or false")


@register_task
class ObjectHalBench(scaffold.TaskOptions, Task):
    """Object HalBench: 300 detailed descriptions of COCO val2014 images, CHAIR metrics (RLHF-V's scorer).

    Data root: ``obj_halbench_300_with_image.jsonl`` and ``synonyms_refine.txt`` (RLHF-V ``eval/data/``) and the
    COCO 2014 annotation files in ``coco_annotations/``. Options:

    - ``objhal_method``: ``chair`` (default, judge-free) or ``gpt`` (GPT object extraction through the judge);
    - ``objhal_lemmatizer`` (gpt only): ``spacy`` (official ``en_core_web_trf``, default), ``spacy:<model>`` or
      ``nltk`` (approximation, not official), or a :class:`PhraseAnalyzer`;
    - ``objhal_gpt_parser`` (gpt only): ``rlhf-v`` (default) or ``rlaif-v`` (:data:`GPT_PARSERS`);
    - ``objhal_gt_cache``: cache the derived ground truth in the harness cache (default true).

    Sample ids are the image ids (``str(image_id)``); a question file that asks several prompts per image (the
    JoMPO protocol: eight per image) gives one sample per line with ids ``IMAGE_ID#k``. ``harness score`` scores
    every line of an answer file, as the official scorer (CHAIRs over responses, CHAIRi over all mentions); the
    question file is needed only for answers without an ``image_id``.

    Where the harness is stricter than the official scorer: the same image with the same question twice (in the
    question file or an answer file) is an error, where the official code would count it twice; an answer's image
    id missing from the COCO annotations is an error naming it, where the official code raises a ``KeyError``; a
    response longer than :data:`harness.task.MAX_RESPONSE_CHARS` (100,000) characters is refused with its sample
    id, not truncated.
    """

    name = "object_halbench"
    version = "1"
    description = (
        "Object HalBench (300 COCO image descriptions): CHAIRs, CHAIRi, Response/Object Hall "
        "(RLHF-V eval_gpt_obj_halbench.py; judge-free CHAIR or --objhal-method gpt)"
    )
    option_names = ("objhal_gpt_parser", "objhal_gt_cache", "objhal_lemmatizer", "objhal_method")
    flags = (
        TaskFlag(
            "objhal_method",
            "--objhal-method",
            "Object HalBench: judge-free CHAIR (default) or GPT object extraction through the judge",
            choices=tuple(METHODS),
        ),
    )
    data_files = (
        DataFile(QUESTION_FILE, QUESTION_SOURCE),
        DataFile(SYNONYMS_FILE, SYNONYMS_SOURCE),
        *(DataFile(f"{COCO_DIR}/{name}", COCO_SOURCE) for name in COCO_FILES),
    )
    default_max_new_tokens = MAX_NEW_TOKENS
    default_judge_model = DEFAULT_JUDGE_MODEL

    def read_options(self) -> None:
        self.method = str(self.options.get("objhal_method", "chair"))
        if self.method not in METHODS:
            raise ConfigError(f"unknown objhal_method {self.method!r}; expected one of {', '.join(METHODS)}")
        self.parser = str(self.options.get("objhal_gpt_parser", "rlhf-v"))
        if self.parser not in GPT_PARSERS:
            raise ConfigError(f"unknown objhal_gpt_parser {self.parser!r}; expected one of {', '.join(GPT_PARSERS)}")
        self.coco_dir = self.data_root / COCO_DIR
        self.gt_cache = _option_bool(self.options.get("objhal_gt_cache", True), "objhal_gt_cache")
        self.analyzer: PhraseAnalyzer | None = None
        require_nltk_resources((PUNKT_TAB, WORDNET))  # fail before any generation
        if self.method == "gpt":
            self.analyzer = parse_analyzer(self.options.get("objhal_lemmatizer", "spacy"))
            self.analyzer.check()
        self._vocab: CocoVocabulary | None = None
        self._gt: CocoGroundTruth | None = None
        self._questions: list[QuestionEntry] | None = None

    # ----------------------------------------------------------------------------------------- files and samples
    def default_data_root(self) -> Path:
        raise ConfigError(
            f"task {self.name} needs --data-root: the folder holding {QUESTION_FILE} and "
            f"{SYNONYMS_FILE} (RLHF-V eval/data/) and {COCO_DIR}/ with the COCO 2014 annotations"
        )

    def _required(self) -> list[tuple[Path, str]]:
        return [
            (self.data_root / QUESTION_FILE, QUESTION_SOURCE),
            (self.data_root / SYNONYMS_FILE, SYNONYMS_SOURCE),
            *((self.coco_dir / name, COCO_SOURCE) for name in COCO_FILES),
        ]

    def check_files(self, *, need_questions: bool = True) -> list[Path]:
        """The required files; one :class:`MissingDataFile` naming every missing file and where it comes from."""
        required = self._required()
        if not need_questions:
            required = required[1:]
        missing = [(p, src) for p, src in required if not p.is_file()]
        if missing:
            raise missing_files(missing)
        return [p for p, _ in required]

    def vocab(self) -> CocoVocabulary:
        if self._vocab is None:
            self._vocab = CocoVocabulary.from_file(self.data_root / SYNONYMS_FILE)
        return self._vocab

    def ground_truth(self) -> CocoGroundTruth:
        if self._gt is None:
            self._gt = CocoGroundTruth(self.coco_dir, self.vocab(), cache=self.gt_cache)
        return self._gt

    def load_samples(self) -> list[Sample]:
        """Read the question file: ``{"image_id", "question", "image"}`` lines (image base64-encoded).

        A malformed line or field is a :class:`DataError` naming the file and line; an image that is not valid
        base64 becomes an image that raises :class:`ImageError` (naming the sample) when it is loaded.
        """
        path = self.data_root / QUESTION_FILE
        samples: list[Sample] = []
        questions: list[QuestionEntry] = []
        asked = scaffold.UniqueIds(path)
        for lineno, rec in iter_jsonl(path):
            if "image_id" not in rec:
                raise DataError("missing field 'image_id'", path=path, line=lineno)
            image_id = _as_image_id(rec["image_id"], path=path, line=lineno)
            question = rec.get("question")
            if not isinstance(question, str):
                raise DataError("missing or non-string field 'question'", path=path, line=lineno)
            asked.add(
                (image_id, question),
                f"image_id {image_id} appears twice with the same question",
                line=lineno,
                cite_first=True,
            )
            image = rec.get("image")
            if not isinstance(image, str):
                raise DataError(
                    "missing or non-string field 'image' (the base64-encoded image)", path=path, line=lineno
                )
            sid = str(image_id)
            try:
                ref: ImageRef = ImageRef(data=base64.b64decode(image))
            except (binascii.Error, ValueError) as exc:
                ref = _InvalidImage(detail=f"{path}, line {lineno}: field 'image' is not valid base64 ({exc})")
            samples.append(
                Sample(
                    id=sid,
                    prompt=question,
                    images=(ref,),
                    reference=image_id,
                    meta={"image_id": image_id, "line": lineno},
                    max_new_tokens=MAX_NEW_TOKENS,
                )
            )
            questions.append(QuestionEntry(sid, image_id, question, lineno))
        if not samples:
            raise DataError("no questions in the file", path=path)
        # several prompts per image (RLAIF-V's eight-prompt file): ids IMAGE_ID#k, one sample per line
        ids = _occurrence_ids([q.image_id for q in questions])
        samples = [replace(s, id=i) for s, i in zip(samples, ids)]
        self._questions = [replace(q, sample_id=i) for q, i in zip(questions, ids)]
        return samples

    def questions(self) -> list[QuestionEntry] | None:
        """The question file's entries (read once), or ``None`` if the file is absent."""
        if self._questions is None and (self.data_root / QUESTION_FILE).is_file():
            self.load_samples()
        return self._questions

    # ----------------------------------------------------------------------------------------- scoring
    def provenance(self) -> dict[str, Any]:
        used = (PUNKT_TAB, TAGGER_ENG, WORDNET) if self.method == "gpt" else (PUNKT_TAB, WORDNET)
        return {"nltk_data": nltk_provenance(used)}

    def needs_judge(self) -> bool:
        return self.method == "gpt"

    def _gt_for(self, answers: Sequence[Answer], source: str) -> dict[int, frozenset[str]]:
        gt = self.ground_truth().objects({a.image_id for a in answers})
        unknown = [a for a in answers if gt[a.image_id] is None]
        if unknown:
            first = unknown[0]
            where = f", line {first.line}" if first.line is not None else ""
            raise DataError(
                f"{len(unknown)} image ids are not in the COCO 2014 annotation files in {self.coco_dir} "
                f"(first: {first.image_id}, {source}{where})"
            )
        return {i: v for i, v in gt.items() if v is not None}

    def score_answers(
        self,
        answers: Sequence[Answer],
        judge: Judge | None = None,
        *,
        source: str = "responses",
        extra_notes: Sequence[str] = (),
    ) -> Metrics:
        """Score preprocessed answers (see :func:`score_answers`) into :class:`Metrics`."""
        self.check_files(need_questions=False)
        if self.method == "gpt" and judge is None:
            raise ConfigError(
                "Object HalBench with objhal_method=gpt needs a judge (--judge-model, or saved replies with --reviews)"
            )
        gt = self._gt_for(answers, source)  # before any judge call: bad ids fail for free
        result = score_answers(
            answers, gt, self.vocab(), method=self.method, judge=judge, analyzer=self.analyzer, parser=self.parser
        )
        return self._metrics(result, judge, extra_notes)

    def score(self, samples: Sequence[Sample], responses: Mapping[str, Response], judge: Any = None) -> Metrics:
        answers = [
            Answer(
                id=s.id,
                image_id=int(s.reference),
                question=_asked(responses[s.id], s.prompt),
                caption=clean_answer(responses[s.id].text),
            )
            for s in samples
            if s.id in responses
        ]
        metrics = self.score_answers(answers, judge, source=f"{self.name} responses")
        metrics.counts.update(samples=len(samples), scored=len(answers), failed=len(samples) - len(answers))
        return metrics

    def score_answer_file(self, path: str | Path, judge: Judge | None = None) -> Metrics:
        """Score an answer file in the official format (see :func:`read_answer_file`), every line of it.

        The question file, when present under the data root, gives missing image ids (by line order) and the ids
        allowed; without it every line needs an ``image_id``.
        """
        return self._score_answer_file(path, judge)[0]

    def _score_answer_file(self, path: str | Path, judge: Judge | None) -> tuple[Metrics, list[Answer]]:
        path = Path(path)
        self.check_files(need_questions=False)
        answers = read_answer_file(path, self.questions())
        for a in answers:
            check_response_text(a.id, a.caption, source=path)
        notes = []
        if "coh" in str(path):
            notes.append("answer file path contains 'coh': official preprocess_coh_results trimming applied")
        repeated = len(answers) - len({a.image_id for a in answers})
        if repeated:
            notes.append(
                f"{len(answers)} answers for {len(answers) - repeated} images: every answer is a response "
                "(CHAIRs over responses, CHAIRi over all mentions), as the official scorer counts them"
            )
        metrics = self.score_answers(answers, judge, source=str(path), extra_notes=notes)
        metrics.counts.update(samples=len(answers), scored=len(answers), failed=0)
        return metrics, answers

    def score_file(self, path: str | Path, judge: Any = None) -> tuple[Metrics, dict[str, int]]:
        """``harness score``: every line of the answer file scored (:meth:`score_answer_file`); the question file is
        needed only when an answer has no ``image_id``. Coverage counts the question file's (image, question) pairs
        that have no answer, when the file is present."""
        metrics, answers = self._score_answer_file(path, judge)
        questions = self.questions()
        if questions is None:
            return metrics, {"samples": len(answers), "responses": len(answers), "missing": 0}
        answered = {(a.image_id, a.question) for a in answers}
        missing = sum(1 for q in questions if (q.image_id, q.question) not in answered)
        return metrics, {"samples": len(questions), "responses": len(answers), "missing": missing}

    def read_responses(self, path: str | Path) -> dict[str, Response]:
        """An official answer file as responses by sample id (image id); see :func:`read_answer_file`.

        Each response is an :class:`AnswerResponse`, which carries the answer file's question for the GPT path's
        prompt (the official code uses it, not the question file's); a "coh" file is trimmed here, as the official
        loader does. The texts returned are already preprocessed; :meth:`score` preprocesses again, which leaves
        them unchanged.
        """
        questions = self.questions()
        if questions is None:
            self.check_files()  # names the missing question file
        answers = read_answer_file(path, questions)
        return {a.id: AnswerResponse(a.id, a.caption, "stop", question=a.question) for a in answers}

    def read_reviews(self, path: str | Path) -> ReplayJudge:
        """Saved judge replies: a JSON object ``{sample id: reply}``, or a JSON list with one reply (or null) per
        question of the question file, in its order (replies of answers of at most 3 words are never used)."""
        data = read_json(path)
        if isinstance(data, dict):
            replies = data
        elif isinstance(data, list):
            ids = [s.id for s in self.samples()]
            if len(data) != len(ids):
                raise DataError(
                    f"holds {len(data)} replies for {len(ids)} questions; expected one reply (or null) "
                    f"per question, in question order",
                    path=path,
                )
            replies = dict(zip(ids, data))
        else:
            raise DataError(
                "expected a JSON list of reply texts in question order, or an object {id: reply}", path=path
            )
        bad = [k for k, v in replies.items() if v is not None and not isinstance(v, str)]
        if bad:
            raise DataError(f"reply for {bad[0]} is not a string", path=path)
        return ReplayJudge(replies, source=str(path), model=f"replay:{DEFAULT_JUDGE_MODEL}", strict=True)

    def _metrics(self, result: ObjHalResult, judge: Judge | None, extra_notes: Sequence[str]) -> Metrics:
        eval_row, summary = printed_numbers(result.overall)
        headline_all: dict[str, float | None] = {
            "CHAIRs": eval_row["CHAIRs"],
            "CHAIRs_refine": eval_row["CHAIRsr"],
            "CHAIRi": eval_row["CHAIRi"],
            "Response Hall": summary["Response Hall"],
            "Object Hall": summary["Object Hall"],
            "Object Recall": summary["Object Recall"],
            "Average Length": summary["Average Length"],
        }
        headline = {k: v for k, v in headline_all.items() if v is not None}
        notes = [f"scorer: {OFFICIAL_SOURCE}", f"method: {self.method}: {METHODS[self.method]}"]
        if self.method == "gpt":
            assert self.analyzer is not None
            judge_model = getattr(judge, "model", "?")
            notes.append(
                f"judge: {judge_model} (official {DEFAULT_JUDGE_MODEL}), one system message, temperature "
                f"{JUDGE_TEMPERATURE}, max_tokens {JUDGE_MAX_TOKENS}; reply parser: {self.parser}"
            )
            if self.analyzer.official:
                notes.append(f"phrase lemmas: {self.analyzer.spec} (official spaCy step)")
            else:
                notes.append(
                    f"phrase lemmas: {self.analyzer.spec}: NOT the official spaCy en_core_web_trf step "
                    f"(an approximation; numbers may differ from the official ones)"
                )
            failed = result.counts.get("judge_failed", 0)
            if failed:
                notes.append(
                    f"{failed} answers left out of every metric: failed judgments "
                    f"({result.counts.get('judge_unparsed', 0)} with an unreadable reply)"
                )
        notes.append("headline: " + "; ".join(f"{k} = {v}" for k, v in HEADLINE_SOURCES.items()))
        missing = [k for k, v in headline_all.items() if v is None]
        if missing:
            notes.append(f"not computed (the official code would divide by zero): {', '.join(missing)}")
        notes.extend(extra_notes)
        breakdown = {
            "overall_metrics": {k: v for k, v in result.overall.items() if v is not None},
            "eval_script": {k: v for k, v in eval_row.items() if v is not None},
            "summary": {k: v for k, v in summary.items() if v is not None},
        }
        return Metrics(
            task=self.name,
            headline=headline,
            breakdown=breakdown,
            counts=dict(result.counts),
            notes=notes,
            records=result.records,
        )


@dataclass(frozen=True)
class AnswerResponse(Response):
    """A response read from an official answer file, with the question it answers there: the GPT path's prompt
    uses the answer file's question, as the official code does, not the question file's."""

    question: str | None = None


def _asked(response: Response, prompt: str) -> str:
    """The question a response answers: its answer file's (:class:`AnswerResponse`), else the sample's prompt."""
    question = getattr(response, "question", None)
    return question if isinstance(question, str) else prompt


@dataclass(frozen=True)
class _InvalidImage(ImageRef):
    """An image whose base64 text could not be decoded: loading it raises :class:`ImageError`."""

    detail: str = ""

    def load(self, sample_id: str):
        raise ImageError(sample_id, self.detail)


def score_answer_file(
    path: str | Path, data_root: str | Path, *, options: Mapping[str, Any] | None = None, judge: Judge | None = None
) -> Metrics:
    """Score an official-format answer file (``{"image_id", "question", "text"}`` JSONL) against ``data_root``."""
    return ObjectHalBench(data_root=data_root, options=options).score_answer_file(path, judge)
