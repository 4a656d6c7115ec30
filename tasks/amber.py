"""AMBER: an LLM-free multi-dimensional benchmark for hallucination in vision-language models.

AMBER (Wang et al., 2023; https://github.com/junyangwang0410/AMBER) asks 1,004 "Describe this image." questions
(generative, ids 1-1004) and 14,216 yes/no questions (discriminative, ids 1005-15220) about existence, attributes
(state, number, action) and relations of objects in 1,004 images. This module holds

- :class:`AmberScorer`, a re-implementation of the official scorer ``inference.py``
  (repository junyangwang0410/AMBER, commit 534babf6bbfcce2e735c26289dedfb21cef3c939), which prints the same numbers
  from the same responses, and also says, per response, what it found;
- a pluggable word similarity (:func:`parse_similarity`: ``spacy:<model>``, ``table:<file>``, ``none``), standing in
  for the official ``spacy.load("en_core_web_lg")`` similarity;
- the tasks ``amber_g`` (generative), ``amber_d`` (discriminative) and ``amber`` (both, plus the AMBER Score).

What the official scorer computes, and its quirks (all reproduced here):

Generative. Nouns are ``extract_nouns(response)`` (:func:`tasks.text.extract_nouns`: NLTK tokenize, tag, WordNet
lemma of every ``NN*`` token, case kept, so "Person" is not "person"), kept if they are in the hallucination vocabulary
(every key and value of ``relation.json``). For a response with truth objects T and hallucination objects H,
``safe_words`` is the associated words (``relation.json``) of each object of T followed by T itself, and
``ha_words`` likewise for H. For each kept noun, in order:

1. if it is in ``safe_words.txt``: skip it -- it is neither hallucinated nor covering, **but it still counts in the
   CHAIR denominator**;
2. if it equals a word of ``safe_words``: the first such word's truth object is covered; next noun;
3. if it equals a word of ``ha_words``: the first such word's hallucination object is "mentioned" (Cog); **no
   ``continue``**, so the noun goes on to steps 4-5;
4. the first word of ``ha_words`` that is similar to the noun (``similarity(noun, word) > 0.8``) marks its object;
5. the first word of ``safe_words`` that is similar marks its truth object and the noun is not hallucinated;
   otherwise the noun is a hallucinated mention.

``CHAIR`` = hallucinated mentions / kept mentions; ``Cover`` = covered truth objects / truth objects; ``Hal`` =
100 - % of responses without a hallucinated mention; ``Cog`` = mentioned hallucination objects / hallucination
objects. Each is ``round(score / num * 100, 1)`` where ``num`` starts at 0.001 (``metrics.txt``), so 2/3 prints
66.6, not 66.7.

Discriminative. The answer counts as "Yes" only if it is exactly ``'Yes'`` and as "No" only if exactly ``'No'``
(case-sensitive, no stripping: "yes" and "No." are wrong, and never count as a "No"). The positive class is "No":
Precision = correct "No" answers / "No" answers, Recall = correct "No" answers / questions whose truth is "no",
both rounded to one decimal, and F1 = ``round(2*(P/100)*(R/100)/((P/100)+(R/100)+eps)*100, 1)`` from the
**rounded** P and R, with ``eps`` 0.0001, except 0.001 for Existence. Dimensions: Existence is
``discriminative-hallucination``; Attribute pools state, number and action (its denominators are sums of three
counters that each start at 0.001); Relation is every other type (``discriminative-relation`` and ``relation``).
Every counter starts at 0.001 (denominators) or 0 (numerators), read from ``metrics.txt``.

The AMBER Score is ``(100 - CHAIR + F1) / 2`` (AMBER paper, Sec. 3.3: ``AMBER Score = 1/2 * (1 - CHAIR + F1)``,
in percent here), computed from the printed CHAIR and overall F1; it is not printed by ``inference.py``.

Differences from ``inference.py`` that change speed or errors, never numbers: word similarities are computed once
per word pair and cached (the official code recomputes each call; :class:`SynonymChecker` can turn the cache off);
responses with an unknown or duplicate id, or without ``id``/``response``, are rejected with a
:class:`~harness.errors.DataError` (the official code would index ``ground_truth[id-1]``, so id 0 would silently
score against the last annotation). Responses may be any subset of ids in any order, as in the official scorer.

Where the harness is stricter than the official scorer: a repeated id, or an id that is not an AMBER query, is an
error (the official ``inference.py`` scores every record it is given); a response over 100,000 characters is refused
with its id.
"""

from __future__ import annotations

import ast
import math
import re
import sys
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from harness.errors import ConfigError, DataError, HarnessError, install_command
from harness.io import read_json
from harness.task import DataFile, Task, TaskFlag, register_task
from harness.types import Metrics, Response, Sample
from tasks import _amber_format as fmt
from tasks import _scaffold as scaffold
from tasks.text import extract_nouns, load_spacy_model, nltk_provenance, require_nltk_resources

OFFICIAL_SOURCE = (
    "AMBER inference.py, https://github.com/junyangwang0410/AMBER, commit 534babf6bbfcce2e735c26289dedfb21cef3c939"
)
DATA_SOURCE = "AMBER: https://github.com/junyangwang0410/AMBER (data/)"

#: ``--similarity_score`` default of the official scorer; a pair is a synonym if its similarity is strictly greater.
SIMILARITY_THRESHOLD = 0.8
DEFAULT_SIMILARITY = "spacy:en_core_web_lg"
GENERATIVE_MAX_NEW_TOKENS = 512
DISCRIMINATIVE_MAX_NEW_TOKENS = 16


# --------------------------------------------------------------------------------------------------- similarity
class WordSimilarity(ABC):
    """A word-pair similarity in [0, 1]: AMBER calls ``similarity(noun, word)`` with the response noun first."""

    @property
    @abstractmethod
    def spec(self) -> str:
        """The string :func:`parse_similarity` turns into this backend (recorded in the metrics notes)."""

    @abstractmethod
    def similarity(self, word1: str, word2: str) -> float:
        """The similarity of two words."""

    def check(self) -> None:
        """Raise :class:`HarnessError` if the backend cannot be used (cheap; loads nothing large)."""


class NoSimilarity(WordSimilarity):
    """Similarity 0.0 for every pair: only exact word matches count (the golden ``zero`` run)."""

    @property
    def spec(self) -> str:
        return "none"

    def similarity(self, word1: str, word2: str) -> float:
        return 0.0


class TableSimilarity(WordSimilarity):
    """Similarities read from a table; pairs not in it have similarity 0.0.

    A pair is looked up as given, then reversed: the similarity AMBER uses (spaCy's cosine of word vectors) is
    symmetric, and the official call order is ``(noun from the response, word from the annotation)``.
    """

    def __init__(self, pairs: Mapping[tuple[str, str], float], name: str = "table"):
        self._pairs = dict(pairs)
        self._name = name

    @property
    def spec(self) -> str:
        return self._name

    def __len__(self) -> int:
        return len(self._pairs)

    def similarity(self, word1: str, word2: str) -> float:
        value = self._pairs.get((word1, word2))
        if value is None:
            value = self._pairs.get((word2, word1), 0.0)
        return value

    @classmethod
    def from_records(
        cls, records: Any, *, source: str | Path = "similarity table", name: str | None = None
    ) -> TableSimilarity:
        """Build from a list of ``{"word1", "word2", "similarity"}`` objects (other keys are ignored).

        A malformed entry, or one pair listed twice with different similarities, raises :class:`DataError`
        naming ``source`` and the entry.
        """
        if not isinstance(records, list):
            raise DataError(
                f'expected a JSON list of {{"word1", "word2", "similarity"}} objects, got {type(records).__name__}',
                path=source,
            )
        pairs: dict[tuple[str, str], float] = {}
        for index, rec in enumerate(records):
            if not isinstance(rec, dict):
                raise DataError(f"entry {index} is not a JSON object", path=source)
            w1, w2, sim = rec.get("word1"), rec.get("word2"), rec.get("similarity")
            if not isinstance(w1, str) or not isinstance(w2, str):
                raise DataError(f"entry {index}: fields 'word1' and 'word2' must be strings", path=source)
            if isinstance(sim, bool) or not isinstance(sim, (int, float)) or not math.isfinite(sim):
                raise DataError(
                    f"entry {index} ({w1!r}, {w2!r}): field 'similarity' must be a number, got {sim!r}", path=source
                )
            old = pairs.get((w1, w2))
            if old is not None and old != sim:
                raise DataError(
                    f"entry {index}: pair ({w1!r}, {w2!r}) listed twice with different similarities ({old} and {sim})",
                    path=source,
                )
            pairs[(w1, w2)] = float(sim)
        return cls(pairs, name=name or f"table:{source}")

    @classmethod
    def from_file(cls, path: str | Path) -> TableSimilarity:
        """Read a JSON table file (see :meth:`from_records`)."""
        return cls.from_records(read_json(path), source=path, name=f"table:{path}")


def _spacy_hint(model: str) -> str:
    return (
        f"install it with {install_command('spacy')} and `{sys.executable} -m spacy download {model}` "
        f"(online), or `{sys.executable} -m pip install {model}-<version>.whl` from a downloaded model wheel"
    )


def _import_spacy(model: str):
    try:
        import spacy
    except ImportError as exc:
        raise HarnessError(
            f"AMBER similarity spacy:{model} needs spaCy, which is not installed; {_spacy_hint(model)}"
            f" (or choose another similarity: table:<file.json> or none)"
        ) from exc
    return spacy


class SpacySimilarity(WordSimilarity):
    """``nlp(word1).similarity(nlp(word2))`` with a spaCy model, as the official ``check_synonyms_word``.

    The model is loaded on the first call (the official scorer loads ``en_core_web_lg`` at import). Each word's
    ``Doc`` is built once. spaCy's warnings about words without vectors are silenced, as the official scorer does
    (``warnings.filterwarnings("ignore", category=UserWarning)``).
    """

    def __init__(self, model: str):
        self.model = model
        self._nlp: Any = None
        self._docs: dict[str, Any] = {}

    @property
    def spec(self) -> str:
        return f"spacy:{self.model}"

    def check(self) -> None:
        spacy = _import_spacy(self.model)
        if not (Path(self.model).is_dir() or spacy.util.is_package(self.model)):
            raise HarnessError(
                f"spaCy model {self.model!r} is not installed; install it with `python -m spacy download {self.model}`"
            )

    def _doc(self, word: str) -> Any:
        doc = self._docs.get(word)
        if doc is None:
            if self._nlp is None:
                self._nlp = load_spacy_model(_import_spacy(self.model), self.model, _spacy_hint(self.model))
            doc = self._docs[word] = self._nlp(word)
        return doc

    def similarity(self, word1: str, word2: str) -> float:
        doc1, doc2 = self._doc(word1), self._doc(word2)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return float(doc1.similarity(doc2))


def parse_similarity(spec: str) -> WordSimilarity:
    """Turn a similarity spec into a backend: ``none``, ``spacy:<model>`` or ``table:<file.json>``.

    ``spacy:<model>`` loads the model lazily; ``table:<file>`` reads the file now (a JSON list of
    ``{"word1", "word2", "similarity"}``). Anything else raises :class:`ConfigError`.
    """
    expected = "expected none, spacy:<model> (e.g. spacy:en_core_web_lg) or table:<file.json>"
    if not isinstance(spec, str):
        raise ConfigError(f"AMBER similarity must be a string ({expected}), got {spec!r}")
    text = spec.strip()
    kind, sep, arg = text.partition(":")
    if text == "none":
        return NoSimilarity()
    if kind == "spacy" and sep:
        if not arg.strip():
            raise ConfigError(f"AMBER similarity {spec!r} names no spaCy model; {expected}")
        return SpacySimilarity(arg.strip())
    if kind == "table" and sep:
        if not arg.strip():
            raise ConfigError(f"AMBER similarity {spec!r} names no table file; {expected}")
        path = Path(arg.strip())
        if not path.is_file():
            raise ConfigError(
                f"AMBER similarity table {path} does not exist (a JSON list of "
                f'{{"word1", "word2", "similarity"}} objects)'
            )
        return TableSimilarity.from_file(path)
    raise ConfigError(f"unknown AMBER similarity {spec!r}; {expected}")


class SynonymChecker:
    """The official ``check_synonyms_word(word1, word2, similarity_score)``: ``similarity > threshold``.

    With ``cache=True`` each ordered pair's similarity is computed once (the official code recomputes it on every
    call); the answers are the same either way. ``calls`` counts the backend calls made.
    """

    def __init__(self, backend: WordSimilarity, threshold: float = SIMILARITY_THRESHOLD, cache: bool = True):
        self.backend = backend
        self.threshold = threshold
        self.cache = cache
        self.calls = 0
        self._memo: dict[tuple[str, str], bool] = {}

    def __call__(self, word1: str, word2: str) -> bool:
        if self.cache:
            hit = self._memo.get((word1, word2))
            if hit is not None:
                return hit
        self.calls += 1
        answer = self.backend.similarity(word1, word2) > self.threshold
        if self.cache:
            self._memo[(word1, word2)] = answer
        return answer


# --------------------------------------------------------------------------------------------------- data
#: The counters of ``metrics.txt``; the scorer needs all of them.
COUNTER_NAMES: tuple[str, ...] = (
    "chair_score",
    "chair_num",
    "safe_cover_score",
    "safe_cover_num",
    "hallu_cover_score",
    "hallu_cover_num",
    "non_hallu_score",
    "non_hallu_num",
    *(
        f"{p}qa_{kind}_{sn}"
        for p in ("", "as_", "an_", "aa_", "asso_", "ha_")
        for kind in ("correct", "no", "ans_no")
        for sn in ("score", "num")
    ),
)

#: Counter prefix per discriminative type, as in ``inference.py`` (any other type is a relation question).
_TYPE_PREFIX = {fmt.ATTRIBUTE_STATE: "as", fmt.ATTRIBUTE_NUMBER: "an", fmt.ATTRIBUTE_ACTION: "aa", fmt.EXISTENCE: "ha"}


_PREFIX_DIMENSION = {"ha": "Existence", "as": "State", "an": "Number", "aa": "Action", "asso": "Relation"}


def dimension_counts(records: Iterable[DiscriminativeRecord]) -> dict[str, int]:
    """Questions per dimension of :data:`DISCRIMINATIVE_DIMENSIONS` (``Attribute`` = State + Number + Action). The
    official scorer prints a dimension without questions as 0 (its counters start at 0.001); ``n`` tells them apart."""
    n = dict.fromkeys(DISCRIMINATIVE_DIMENSIONS, 0)
    for r in records:
        dim = _PREFIX_DIMENSION[_TYPE_PREFIX.get(r.type, "asso")]
        n[dim] += 1
        if dim in ("State", "Number", "Action"):
            n["Attribute"] += 1
    return n


def read_counters(path: str | Path) -> dict[str, float]:
    """Read ``metrics.txt`` as the official ``init()`` does: ``name=value`` lines, other lines ignored.

    Values are Python literals (the official code ``eval``s them; here ``ast.literal_eval``). A missing counter or a
    non-numeric value raises :class:`DataError` naming the file.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise DataError("file not found", path=path) from exc
    counters: dict[str, float] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        parts = line.strip().split("=")
        if len(parts) != 2:
            continue
        name = parts[0].strip()
        try:
            value = ast.literal_eval(parts[1].strip())
        except (ValueError, SyntaxError) as exc:
            raise DataError(
                f"counter {name!r}: value {parts[1].strip()!r} is not a number", path=path, line=lineno
            ) from exc
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise DataError(f"counter {name!r}: value {value!r} is not a number", path=path, line=lineno)
        counters[name] = value
    missing = [n for n in COUNTER_NAMES if n not in counters]
    if missing:
        raise DataError(f"missing counters: {', '.join(missing)}", path=path)
    return counters


def load_responses(path: str | Path) -> list[dict[str, Any]]:
    """Read a response file in AMBER's format, ``[{"id": int, "response": str}, ...]`` (checked when scored)."""
    data = read_json(path)
    if not isinstance(data, list):
        raise DataError(f'expected a JSON list of {{"id", "response"}} objects, got {type(data).__name__}', path=path)
    return data


# --------------------------------------------------------------------------------------------------- results
@dataclass(frozen=True)
class GenerativeRecord:
    """What the scorer found in one generative response."""

    id: int
    mentions: tuple[str, ...]  # nouns kept: lemmas in the hallucination vocabulary, in text order
    safe_listed: tuple[str, ...]  # mentions skipped because they are in safe_words.txt (still counted)
    hallucinated: tuple[str, ...]  # mentions counted as hallucinated (CHAIR numerator)
    covered: tuple[str, ...]  # truth objects covered (Cover numerator)
    hallu_mentioned: tuple[str, ...]  # hallucination-list objects mentioned (Cog numerator)
    similar: tuple[tuple[str, str], ...]  # (noun, annotation word) pairs matched by similarity, not exactly
    truth: tuple[str, ...]
    hallu: tuple[str, ...]

    @property
    def hallucinates(self) -> bool:
        return bool(self.hallucinated)


@dataclass(frozen=True)
class DiscriminativeRecord:
    """One yes/no answer: the response, the answer compared (after the chosen normalisation) and the verdict."""

    id: int
    type: str
    dimension: str  # Existence | Attribute | Relation
    truth: str  # "yes" | "no"
    response: str
    answer: str  # what was compared with 'Yes' / 'No'
    correct: bool


@dataclass(frozen=True)
class GenerativeScores:
    CHAIR: float
    Cover: float
    Hal: float
    Cog: float
    responses: int
    mentions: int
    hallucinated_mentions: int
    truth_objects: int
    covered_objects: int
    hallu_objects: int
    hallu_mentioned: int

    def headline(self) -> dict[str, float]:
        return {"CHAIR": self.CHAIR, "Cover": self.Cover, "Hal": self.Hal, "Cog": self.Cog}


@dataclass(frozen=True)
class PRF:
    """Accuracy, Precision, Recall and F1 of one dimension ("No" is the positive class)."""

    Accuracy: float
    Precision: float
    Recall: float
    F1: float

    def as_dict(self) -> dict[str, float]:
        return {"Accuracy": self.Accuracy, "Precision": self.Precision, "Recall": self.Recall, "F1": self.F1}


#: Dimensions the official scorer prints, in its order (``Attribute`` pools State, Number and Action).
DISCRIMINATIVE_DIMENSIONS = ("Existence", "Attribute", "State", "Number", "Action", "Relation")


@dataclass(frozen=True)
class DiscriminativeScores:
    overall: PRF
    dimensions: dict[str, PRF]  # keys: DISCRIMINATIVE_DIMENSIONS
    questions: int
    answered_yes: int
    answered_no: int
    answered_other: int


@dataclass
class AmberResult:
    """The official numbers, plus one record per scored response (in the order given)."""

    generative: GenerativeScores | None = None
    discriminative: DiscriminativeScores | None = None
    records: list[GenerativeRecord | DiscriminativeRecord] = field(default_factory=list)

    @property
    def amber_score(self) -> float | None:
        """``(100 - CHAIR + F1) / 2`` when both halves were scored (AMBER paper), rounded to 2 decimals."""
        if self.generative is None or self.discriminative is None:
            return None
        return amber_score(self.generative.CHAIR, self.discriminative.overall.F1)


def amber_score(chair: float, f1: float) -> float:
    """AMBER Score = (100 - CHAIR + F1) / 2, from the rounded CHAIR and F1; rounded to 2 decimals (exact)."""
    return round((100 - chair + f1) / 2, 2)


# --------------------------------------------------------------------------------------------------- answers
#: Discriminative answer normalisations: what is compared with ``'Yes'`` / ``'No'``.
ANSWER_MODES = {
    "official": "response compared as is with 'Yes'/'No' (official inference.py: exact, case-sensitive, no strip)",
    "strip": "response stripped of surrounding whitespace, then compared exactly with 'Yes'/'No' (not official)",
    "yes-no": "answer extracted from the response's first word, case-insensitive ('yes, there is...' -> 'Yes'), "
    "then compared with 'Yes'/'No' (not official)",
}

_FIRST_WORD = re.compile(r"^\W*([A-Za-z]+)")


def normalize_answer(response: str, mode: str = "official") -> str:
    """The string compared with ``'Yes'``/``'No'`` under ``mode`` (see :data:`ANSWER_MODES`)."""
    if mode == "official":
        return response
    if mode == "strip":
        return response.strip()
    if mode == "yes-no":
        m = _FIRST_WORD.match(response)
        word = m.group(1).lower() if m else ""
        return {"yes": "Yes", "no": "No"}.get(word, response)
    raise ConfigError(f"unknown AMBER answer mode {mode!r}; expected one of {', '.join(ANSWER_MODES)}")


# --------------------------------------------------------------------------------------------------- scorer
def _pct(score: float, num: float) -> float:
    """``round(score / num * 100, 1)``, the official rounding (``num`` starts at 0.001)."""
    return round(score / num * 100, 1)


def _f1(precision: float, recall: float, eps: float) -> float:
    """The official F1 from the *rounded* percentages ``precision`` and ``recall``."""
    return round(2 * (precision / 100) * (recall / 100) / ((precision / 100) + (recall / 100) + eps) * 100, 1)


def _prf(c: Mapping[str, float], p: str, eps: float = 0.0001) -> PRF:
    precision = _pct(c[f"{p}qa_ans_no_score"], c[f"{p}qa_ans_no_num"])
    recall = _pct(c[f"{p}qa_no_score"], c[f"{p}qa_no_num"])
    return PRF(_pct(c[f"{p}qa_correct_score"], c[f"{p}qa_correct_num"]), precision, recall, _f1(precision, recall, eps))


def _pooled_attribute(c: Mapping[str, float]) -> PRF:
    def pool(name: str) -> float:
        return c[f"as_{name}"] + c[f"an_{name}"] + c[f"aa_{name}"]

    precision = round(pool("qa_ans_no_score") / pool("qa_ans_no_num") * 100, 1)
    recall = round(pool("qa_no_score") / pool("qa_no_num") * 100, 1)
    accuracy = round(pool("qa_correct_score") / pool("qa_correct_num") * 100, 1)
    return PRF(accuracy, precision, recall, _f1(precision, recall, 0.0001))


class AmberScorer:
    """The official AMBER scorer (``inference.py``, junyangwang0410/AMBER @ 534babf) as reusable code.

    ``data_root`` holds ``annotations.json``, ``relation.json``, ``safe_words.txt`` and ``metrics.txt`` (AMBER's
    ``data/``). ``similarity`` is a :class:`WordSimilarity` or a spec for :func:`parse_similarity`. Responses are
    ``[{"id": int, "response": str}, ...]`` in any order and any subset of ids; each call scores its responses from
    fresh counters, like one run of ``inference.py``.
    """

    def __init__(
        self,
        data_root: str | Path,
        similarity: WordSimilarity | str,
        *,
        threshold: float = SIMILARITY_THRESHOLD,
        cache: bool = True,
    ):
        self.data_root = Path(data_root)
        backend = parse_similarity(similarity) if isinstance(similarity, str) else similarity
        self.synonym = SynonymChecker(backend, threshold=threshold, cache=cache)
        self.counters_init = read_counters(self.data_root / "metrics.txt")
        self.association = fmt.read_relation(self.data_root / "relation.json")
        self.vocabulary: frozenset[str] = frozenset(
            [*self.association, *(w for words in self.association.values() for w in words)]
        )
        self.global_safe_words: frozenset[str] = frozenset(fmt.read_safe_words(self.data_root / "safe_words.txt"))
        self.annotations = self._read_annotations()

    @property
    def similarity(self) -> WordSimilarity:
        return self.synonym.backend

    def _read_annotations(self) -> list[dict[str, Any]]:
        path = self.data_root / "annotations.json"
        by_id = fmt.read_annotations(path)
        entries = list(by_id.values())
        for index, entry in enumerate(entries):
            if entry["id"] != index + 1:
                raise DataError(
                    f"entry {index} has id {entry['id']}, expected {index + 1}: the official scorer "
                    f"reads the annotation of id i at position i-1",
                    path=path,
                )
            if entry["type"] == fmt.GENERATIVE:
                for word in (*entry["truth"], *entry["hallu"]):
                    if word not in self.association:
                        raise DataError(
                            f"annotation id {entry['id']}: object {word!r} is not a key of relation.json", path=path
                        )
        return entries

    # ---------------------------------------------------------------- input checks
    def _check_responses(
        self, responses: Sequence[Mapping[str, Any]], source: str | Path, only: str | None
    ) -> list[tuple[dict[str, Any], str]]:
        """``(annotation, response text)`` per response, in order; a bad record raises :class:`DataError`."""
        if isinstance(responses, (str, bytes)) or not isinstance(responses, Sequence):
            raise DataError(
                f'expected a list of {{"id", "response"}} records, got {type(responses).__name__}', path=source
            )
        out = []
        seen = scaffold.UniqueIds(source)
        n = len(self.annotations)
        for index, rec in enumerate(responses):
            if not isinstance(rec, Mapping):
                raise DataError(f"record {index} is not an object", path=source)
            rid = rec.get("id")
            if "id" not in rec or isinstance(rid, bool) or not isinstance(rid, int):
                raise DataError(f"record {index}: missing or non-integer field 'id' (got {rid!r})", path=source)
            if "response" not in rec or not isinstance(rec["response"], str):
                raise DataError(f"record {index} (id {rid}): missing or non-string field 'response'", path=source)
            if not 1 <= rid <= n:
                raise DataError(f"record {index}: unknown id {rid} (AMBER ids are 1-{n})", path=source)
            seen.add(rid, f"record {index}: id {rid} appears twice", at=f"in record {index}", cite_first=True)
            entry = self.annotations[rid - 1]
            is_gen = entry["type"] == fmt.GENERATIVE
            if (only == "generative" and not is_gen) or (only == "discriminative" and is_gen):
                raise DataError(f"record {index}: id {rid} is a {entry['type']} question, not {only}", path=source)
            out.append((entry, rec["response"]))
        return out

    # ---------------------------------------------------------------- scoring
    def score_generative(
        self, responses: Sequence[Mapping[str, Any]], *, source: str | Path = "responses"
    ) -> AmberResult:
        """Score generative responses (ids 1-1004): CHAIR, Cover, Hal, Cog. Other ids raise :class:`DataError`."""
        return self._score(self._check_responses(responses, source, "generative"), "official")

    def score_discriminative(
        self, responses: Sequence[Mapping[str, Any]], *, answer_mode: str = "official", source: str | Path = "responses"
    ) -> AmberResult:
        """Score yes/no responses: Accuracy, Precision, Recall, F1 overall and per dimension."""
        normalize_answer("", answer_mode)  # validate the mode
        return self._score(self._check_responses(responses, source, "discriminative"), answer_mode)

    def score(
        self, responses: Sequence[Mapping[str, Any]], *, answer_mode: str = "official", source: str | Path = "responses"
    ) -> AmberResult:
        """Score a mix of responses; each half is computed when it has responses, and the AMBER Score when both do."""
        normalize_answer("", answer_mode)
        return self._score(self._check_responses(responses, source, None), answer_mode)

    def _score(self, items: list[tuple[dict[str, Any], str]], answer_mode: str) -> AmberResult:
        counters = dict(self.counters_init)
        records: list[GenerativeRecord | DiscriminativeRecord] = []
        n_gen = n_disc = 0
        if any(entry["type"] == fmt.GENERATIVE for entry, _ in items):
            require_nltk_resources()
        for entry, text in items:
            if entry["type"] == fmt.GENERATIVE:
                n_gen += 1
                records.append(self._generative_one(entry, text, counters))
            else:
                n_disc += 1
                records.append(self._discriminative_one(entry, text, counters, answer_mode))
        result = AmberResult(records=records)
        if n_gen:
            result.generative = self._generative_scores(counters, records)
        if n_disc:
            result.discriminative = self._discriminative_scores(counters, records)
        return result

    def _generative_one(self, entry: Mapping[str, Any], text: str, c: dict[str, float]) -> GenerativeRecord:
        """One generative response, following the per-noun loop of ``inference.py`` step by step."""
        truth: list[str] = entry["truth"]
        hallu: list[str] = entry["hallu"]
        mentions = [noun for noun in extract_nouns(text) if noun in self.vocabulary]

        # safe_words / ha_words: the associated words of each object, then the objects themselves; *_owner[j] is
        # the object that word j stands for (the official code's safe_list/ha_list index trick).
        safe_words: list[str] = []
        safe_owner: list[int] = []
        for idx, word in enumerate(truth):
            safe_words += self.association[word]
            safe_owner += [idx] * len(self.association[word])
        safe_words += truth
        safe_owner += range(len(truth))
        ha_words: list[str] = []
        ha_owner: list[int] = []
        for idx, word in enumerate(hallu):
            ha_words += self.association[word]
            ha_owner += [idx] * len(self.association[word])
        ha_words += hallu
        ha_owner += range(len(hallu))

        covered = [False] * len(truth)
        mentioned = [False] * len(hallu)
        hallucinated: list[str] = []
        safe_listed: list[str] = []
        similar: list[tuple[str, str]] = []
        for noun in mentions:
            if noun in self.global_safe_words:
                safe_listed.append(noun)
                continue
            if noun in safe_words:
                covered[safe_owner[safe_words.index(noun)]] = True
                continue
            if noun in ha_words:  # no `continue` here in the official code
                mentioned[ha_owner[ha_words.index(noun)]] = True
            for j, check_word in enumerate(ha_words):
                if self.synonym(noun, check_word):
                    mentioned[ha_owner[j]] = True
                    if noun != check_word:
                        similar.append((noun, check_word))
                    break
            safe_match = None
            for j, check_word in enumerate(safe_words):
                if self.synonym(noun, check_word):
                    safe_match = j
                    break
            if safe_match is not None:
                covered[safe_owner[safe_match]] = True
                similar.append((noun, safe_words[safe_match]))
                continue
            hallucinated.append(noun)

        c["chair_score"] += len(hallucinated)
        c["chair_num"] += len(mentions)
        c["safe_cover_score"] += sum(covered)
        c["safe_cover_num"] += len(truth)
        c["hallu_cover_score"] += sum(mentioned)
        c["hallu_cover_num"] += len(hallu)
        if not hallucinated:
            c["non_hallu_score"] += 1
        c["non_hallu_num"] += 1
        return GenerativeRecord(
            id=entry["id"],
            mentions=tuple(mentions),
            safe_listed=tuple(safe_listed),
            hallucinated=tuple(hallucinated),
            covered=tuple(w for w, hit in zip(truth, covered) if hit),
            hallu_mentioned=tuple(w for w, hit in zip(hallu, mentioned) if hit),
            similar=tuple(similar),
            truth=tuple(truth),
            hallu=tuple(hallu),
        )

    @staticmethod
    def _discriminative_one(
        entry: Mapping[str, Any], response: str, c: dict[str, float], answer_mode: str
    ) -> DiscriminativeRecord:
        """One yes/no answer, counted as in ``inference.py`` (positive class "No")."""
        p = _TYPE_PREFIX.get(entry["type"], "asso")
        answer = normalize_answer(response, answer_mode)
        truth = entry["truth"]
        c["qa_correct_num"] += 1
        c[f"{p}_qa_correct_num"] += 1
        if truth == "yes":
            correct = answer == "Yes"
            if correct:
                c["qa_correct_score"] += 1
                c[f"{p}_qa_correct_score"] += 1
        else:
            c["qa_no_num"] += 1
            c[f"{p}_qa_no_num"] += 1
            correct = answer == "No"
            if correct:
                c["qa_correct_score"] += 1
                c["qa_no_score"] += 1
                c[f"{p}_qa_correct_score"] += 1
                c[f"{p}_qa_no_score"] += 1
        if answer == "No":
            c["qa_ans_no_num"] += 1
            c[f"{p}_qa_ans_no_num"] += 1
            if truth == "no":
                c["qa_ans_no_score"] += 1
                c[f"{p}_qa_ans_no_score"] += 1
        dim = {"ha": "Existence", "asso": "Relation"}.get(p, "Attribute")
        return DiscriminativeRecord(
            id=entry["id"],
            type=entry["type"],
            dimension=dim,
            truth=truth,
            response=response,
            answer=answer,
            correct=correct,
        )

    @staticmethod
    def _generative_scores(c: Mapping[str, float], records: Sequence[Any]) -> GenerativeScores:
        gen = [r for r in records if isinstance(r, GenerativeRecord)]
        return GenerativeScores(
            CHAIR=_pct(c["chair_score"], c["chair_num"]),
            Cover=_pct(c["safe_cover_score"], c["safe_cover_num"]),
            Hal=round(100 - c["non_hallu_score"] / c["non_hallu_num"] * 100, 1),
            Cog=_pct(c["hallu_cover_score"], c["hallu_cover_num"]),
            responses=len(gen),
            mentions=sum(len(r.mentions) for r in gen),
            hallucinated_mentions=sum(len(r.hallucinated) for r in gen),
            truth_objects=sum(len(r.truth) for r in gen),
            covered_objects=sum(len(r.covered) for r in gen),
            hallu_objects=sum(len(r.hallu) for r in gen),
            hallu_mentioned=sum(len(r.hallu_mentioned) for r in gen),
        )

    @staticmethod
    def _discriminative_scores(c: Mapping[str, float], records: Sequence[Any]) -> DiscriminativeScores:
        disc = [r for r in records if isinstance(r, DiscriminativeRecord)]
        dims = {
            "Existence": _prf(c, "ha_", eps=0.001),  # the official Existence F1 uses 0.001
            "Attribute": _pooled_attribute(c),
            "State": _prf(c, "as_"),
            "Number": _prf(c, "an_"),
            "Action": _prf(c, "aa_"),
            "Relation": _prf(c, "asso_"),
        }
        yes = sum(r.answer == "Yes" for r in disc)
        no = sum(r.answer == "No" for r in disc)
        return DiscriminativeScores(
            overall=_prf(c, ""),
            dimensions=dims,
            questions=len(disc),
            answered_yes=yes,
            answered_no=no,
            answered_other=len(disc) - yes - no,
        )


# --------------------------------------------------------------------------------------------------- tasks
class _AmberTask(scaffold.TaskOptions, Task):
    """Shared by the three AMBER tasks. Options: ``amber_similarity`` (a :func:`parse_similarity` spec, default
    ``spacy:en_core_web_lg``) and ``amber_answer`` (a key of :data:`ANSWER_MODES`, default ``official``).

    A response longer than :data:`harness.task.MAX_RESPONSE_CHARS` (100,000) characters is refused with its sample
    id, not truncated (NLTK's tokenizer would take hours on megabytes; see :class:`harness.task.Task`)."""

    version: ClassVar[str] = "1"
    query_file: ClassVar[str]
    generative: ClassVar[bool]
    discriminative: ClassVar[bool]
    default_max_new_tokens: ClassVar[int] = GENERATIVE_MAX_NEW_TOKENS
    option_names: ClassVar[tuple[str, ...]] = ("amber_answer", "amber_similarity")
    flags: ClassVar[tuple[TaskFlag, ...]] = (
        TaskFlag(
            "amber_similarity",
            "--amber-similarity",
            "AMBER word similarity: spacy:MODEL (default spacy:en_core_web_lg), none, or table:FILE",
            metavar="SPEC",
        ),
        TaskFlag(
            "amber_answer",
            "--amber-answer",
            "AMBER yes/no answers: official (exact 'Yes'/'No', default), strip, or yes-no",
            metavar="MODE",
        ),
    )

    def read_options(self) -> None:
        self.answer_mode = str(self.options.get("amber_answer", "official"))
        if self.answer_mode not in ANSWER_MODES:
            raise ConfigError(f"unknown amber_answer {self.answer_mode!r}; expected one of {', '.join(ANSWER_MODES)}")
        self.similarity: WordSimilarity | None = None
        if self.data_root_given is None and type(self).default_data_root is _AmberTask.default_data_root:
            self.default_data_root()  # the missing data root is the first thing to say, before any backend
        if self.generative:  # fail before any generation: similarity backend and NLTK data must be usable
            self.similarity = parse_similarity(self.options.get("amber_similarity", DEFAULT_SIMILARITY))
            self.similarity.check()
            require_nltk_resources()
        self._scorer: AmberScorer | None = None

    def default_data_root(self) -> Path:
        raise ConfigError(
            f"task {self.name} needs --data-root: the folder holding {self._file_list()} "
            f"(the data/ folder of {DATA_SOURCE.split(': ', 1)[1]})"
        )

    def default_image_root(self) -> Path:
        return self.data_root / "image"

    def provenance(self) -> dict[str, Any]:
        return {"nltk_data": nltk_provenance()} if self.generative else {}

    def load_samples(self) -> list[Sample]:
        return fmt.load_samples(
            self.data_root,
            self.image_root,
            query_file=self.query_file,
            generative_tokens=GENERATIVE_MAX_NEW_TOKENS,
            discriminative_tokens=DISCRIMINATIVE_MAX_NEW_TOKENS,
        )

    def scorer(self) -> AmberScorer:
        if self._scorer is None:
            self._scorer = AmberScorer(self.data_root, self.similarity or NoSimilarity())
        return self._scorer

    def read_responses(self, path: str | Path) -> dict[str, Response]:
        """AMBER's response format ``[{"id": int, "response": str}]``; ids must belong to this task's half."""
        only = (
            None
            if (self.generative and self.discriminative)
            else ("generative" if self.generative else "discriminative")
        )
        rows = self.scorer()._check_responses(load_responses(path), path, only)
        return {str(entry["id"]): Response(str(entry["id"]), text, "stop") for entry, text in rows}

    def score_detailed(self, samples: Sequence[Sample], responses: Mapping[str, Response]) -> AmberResult:
        """The full result (per-response records included) for the samples that have a response."""
        rows = [{"id": int(s.id), "response": responses[s.id].text} for s in samples if s.id in responses]
        return self.scorer().score(rows, answer_mode=self.answer_mode, source=f"{self.name} responses")

    def score(self, samples: Sequence[Sample], responses: Mapping[str, Response], judge: Any = None) -> Metrics:
        result = self.score_detailed(samples, responses)
        scored = sum(1 for s in samples if s.id in responses)
        counts: dict[str, int] = {"samples": len(samples), "scored": scored, "failed": len(samples) - scored}
        headline: dict[str, float] = {}
        breakdown: dict[str, dict[str, float]] = {}
        notes = [f"scorer: {OFFICIAL_SOURCE}"]
        if self.generative:
            notes.append(f"similarity: {self.scorer().similarity.spec} (synonym if > {SIMILARITY_THRESHOLD})")
            g = result.generative
            if g is not None:
                headline.update(g.headline())
                counts.update(
                    generative=g.responses,
                    mentions=g.mentions,
                    hallucinated_mentions=g.hallucinated_mentions,
                    truth_objects=g.truth_objects,
                    covered_objects=g.covered_objects,
                    hallu_objects=g.hallu_objects,
                    hallu_mentioned=g.hallu_mentioned,
                )
            else:
                notes.append("no generative responses: CHAIR, Cover, Hal and Cog not computed")
        if self.discriminative:
            notes.append(f"answers: {self.answer_mode}: {ANSWER_MODES[self.answer_mode]}")
            d = result.discriminative
            if d is not None:
                headline.update(d.overall.as_dict())
                asked = dimension_counts(r for r in result.records if isinstance(r, DiscriminativeRecord))
                # the official numbers of every dimension; "n": 0 marks one without a question (printed as 0)
                breakdown.update(
                    {
                        name: {**prf.as_dict(), **({"n": 0} if not asked[name] else {})}
                        for name, prf in d.dimensions.items()
                    }
                )
                counts.update(
                    discriminative=d.questions,
                    answered_yes=d.answered_yes,
                    answered_no=d.answered_no,
                    answered_other=d.answered_other,
                )
            else:
                notes.append("no discriminative responses: Accuracy, Precision, Recall and F1 not computed")
        if self.generative and self.discriminative:
            if result.amber_score is not None:
                headline["AMBER Score"] = result.amber_score
            else:
                notes.append("AMBER Score needs both generative and discriminative responses")
        records = [
            {
                **asdict(r),
                "id": str(r.id),
                "kind": "generative" if isinstance(r, GenerativeRecord) else "discriminative",
            }
            for r in result.records
        ]
        return Metrics(
            task=self.name, headline=headline, breakdown=breakdown, counts=counts, notes=notes, records=records
        )


_COMMON_FILES = (
    DataFile("annotations.json", DATA_SOURCE),
    DataFile("relation.json", DATA_SOURCE),
    DataFile("safe_words.txt", DATA_SOURCE),
    DataFile("metrics.txt", DATA_SOURCE),
)


@register_task
class AmberGenerative(_AmberTask):
    """AMBER generative: "Describe this image." for 1,004 images; CHAIR, Cover, Hal, Cog."""

    name = "amber_g"
    description = "AMBER generative (1,004 image descriptions): CHAIR, Cover, Hal, Cog (official inference.py)"
    query_file = fmt.QUERY_FILES["generative"]
    data_files = (*_COMMON_FILES, DataFile(query_file, DATA_SOURCE))
    generative = True
    discriminative = False


@register_task
class AmberDiscriminative(_AmberTask):
    """AMBER discriminative: 14,216 yes/no questions; Accuracy, Precision, Recall, F1 ("No" positive)."""

    name = "amber_d"
    description = (
        "AMBER discriminative (14,216 yes/no questions): Accuracy, Precision, Recall, F1 per dimension "
        "(official inference.py)"
    )
    query_file = fmt.QUERY_FILES["discriminative"]
    data_files = (*_COMMON_FILES, DataFile(query_file, DATA_SOURCE))
    generative = False
    discriminative = True
    default_max_new_tokens = DISCRIMINATIVE_MAX_NEW_TOKENS


@register_task
class Amber(_AmberTask):
    """AMBER, both halves (15,220 questions) and the AMBER Score (100 - CHAIR + F1) / 2."""

    name = "amber"
    description = "AMBER generative + discriminative (15,220 questions) and the AMBER Score (official inference.py)"
    query_file = fmt.QUERY_FILES["all"]
    data_files = (*_COMMON_FILES, DataFile(query_file, DATA_SOURCE))
    generative = True
    discriminative = True
