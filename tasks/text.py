"""Shared text utilities for the official scorers: NLTK resource checks, tokenising, tagging and lemmatising.

The hallucination scorers that count objects in free text (AMBER, CHAIR / Object HalBench) use the same NLTK
pieces: ``nltk.word_tokenize`` (Punkt sentence splitter + Treebank word tokenizer), ``nltk.pos_tag`` (averaged
perceptron tagger) and ``WordNetLemmatizer().lemmatize`` (WordNet, part of speech ``'n'`` by default). This module
wraps them so that

- the NLTK data is found through NLTK's normal mechanism (the ``NLTK_DATA`` environment variable and
  ``nltk.data.path``) first; the project ships genuine copies of the three resources (``tasks/nltk_data/``, zipped
  as NLTK distributes them; provenance and licences in its ``NOTICE.md``), searched last, so the scorers work on a
  fresh offline machine and a user's own NLTK data still takes precedence;
- :func:`nltk_provenance` says which copy of each resource was used (path and sha256), for run manifests;
- a missing resource is a :class:`~harness.errors.HarnessError` that names the resource and says how to provide it,
  instead of NLTK's long ``LookupError``;
- repeated work is not repeated: the tokenizer and tagger are NLTK's cached instances, and lemmas are memoised
  (the lemmatizer is a pure function of the word and WordNet).

The scorers that use spaCy (AMBER's word similarity, Object HalBench's GPT path) load its model with
:func:`load_spacy_model`, which says how to install a model that does not load.

The functions return exactly what the NLTK calls return; caching changes speed, never output.
"""

from __future__ import annotations

import functools
import hashlib
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import HarnessError


@dataclass(frozen=True)
class NltkResource:
    """An NLTK data package: its downloader name and the path ``nltk.data.find`` looks it up by."""

    name: str
    find_path: str
    used_by: str


PUNKT_TAB = NltkResource("punkt_tab", "tokenizers/punkt_tab/english/", "nltk.word_tokenize")
TAGGER_ENG = NltkResource("averaged_perceptron_tagger_eng", "taggers/averaged_perceptron_tagger_eng/", "nltk.pos_tag")
WORDNET = NltkResource("wordnet", "corpora/wordnet/", "WordNetLemmatizer")

#: What :func:`extract_nouns` (AMBER) needs.
NOUN_RESOURCES: tuple[NltkResource, ...] = (PUNKT_TAB, TAGGER_ENG, WORDNET)


#: The project's copy of the resources (zipped, as NLTK distributes them), searched after every other folder.
PROJECT_NLTK_DATA = Path(__file__).resolve().parent / "nltk_data"


def _nltk():
    try:
        import nltk
    except ImportError as exc:  # pragma: no cover - nltk is a dependency of the project
        raise HarnessError(f"NLTK is not installed; install it with `{sys.executable} -m pip install nltk`") from exc
    project = str(PROJECT_NLTK_DATA)
    if PROJECT_NLTK_DATA.is_dir() and project not in nltk.data.path:
        nltk.data.path.append(project)
    return nltk


def missing_nltk_resources(resources: Iterable[NltkResource] = NOUN_RESOURCES) -> list[NltkResource]:
    """The resources that ``nltk.data.find`` cannot find on the current ``nltk.data.path``."""
    nltk = _nltk()
    missing = []
    for res in resources:
        try:
            nltk.data.find(res.find_path)
        except LookupError:
            missing.append(res)
    return missing


def _missing_message(missing: Sequence[NltkResource]) -> str:
    nltk = _nltk()
    names = ", ".join(f"{r.name} (for {r.used_by})" for r in missing)
    searched = ", ".join(str(p) for p in nltk.data.path) or "(nltk.data.path is empty)"
    return (
        f"NLTK data missing: {names}. The project's copy in {PROJECT_NLTK_DATA} is missing or unreadable "
        f"(reinstall halluc-harness); or set the environment variable NLTK_DATA to a folder that holds "
        f"tokenizers/punkt_tab, taggers/averaged_perceptron_tagger_eng and corpora/wordnet; or, online, "
        f"`{sys.executable} -m nltk.downloader -d ~/nltk_data {' '.join(r.name for r in missing)}`. "
        f"Searched: {searched}"
    )


def require_nltk_resources(resources: Iterable[NltkResource] = NOUN_RESOURCES) -> None:
    """Raise :class:`HarnessError` naming every missing resource and how to provide it. Checks afresh each call."""
    missing = missing_nltk_resources(resources)
    if missing:
        raise HarnessError(_missing_message(missing))


def _sha256_of(path: Path) -> str:
    """sha256 of a file, or of a folder's files (relative path and bytes of each, in sorted order)."""
    digest = hashlib.sha256()
    if path.is_file():
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        digest.update(bytes.fromhex(_sha256_of(file)))
    return digest.hexdigest()


@functools.cache
def _hashed(path: str) -> str:
    return _sha256_of(Path(path))


def nltk_provenance(resources: Iterable[NltkResource] = NOUN_RESOURCES) -> dict[str, dict[str, str]]:
    """Which copy of each resource NLTK uses: ``{name: {"path", "sha256"}}``.

    ``path`` is the zip file or folder that ``nltk.data.find`` resolved (a zipped resource's archive is hashed
    whole, a folder by its files), so a score can be traced to the tokenizer, tagger and WordNet behind it.
    A missing resource raises :class:`HarnessError`, as :func:`require_nltk_resources`.
    """
    resources = tuple(resources)
    require_nltk_resources(resources)
    nltk = _nltk()
    out = {}
    for res in resources:
        found = str(nltk.data.find(res.find_path))
        if ".zip" in found:
            found = found[: found.index(".zip") + len(".zip")]
        out[res.name] = {"path": found, "sha256": _hashed(found)}
    return out


def _translate_lookup(resources: Sequence[NltkResource]) -> HarnessError:
    missing = missing_nltk_resources(resources) or list(resources)
    return HarnessError(_missing_message(missing))


def word_tokenize(text: str) -> list[str]:
    """``nltk.word_tokenize(text)`` (English Punkt + Treebank); a missing model raises :class:`HarnessError`."""
    nltk = _nltk()
    try:
        return nltk.word_tokenize(text)
    except LookupError as exc:
        raise _translate_lookup((PUNKT_TAB,)) from exc


def pos_tag(tokens: Sequence[str]) -> list[tuple[str, str]]:
    """``nltk.pos_tag(tokens)`` (Penn Treebank tags); a missing tagger raises :class:`HarnessError`."""
    nltk = _nltk()
    try:
        return nltk.pos_tag(list(tokens))
    except LookupError as exc:
        raise _translate_lookup((TAGGER_ENG,)) from exc


@functools.cache
def _lemmatize(word: str, pos: str) -> str:
    _nltk()
    from nltk.stem import WordNetLemmatizer

    return WordNetLemmatizer().lemmatize(word, pos)


def lemmatize(word: str, pos: str = "n") -> str:
    """``WordNetLemmatizer().lemmatize(word, pos)`` (shortest WordNet lemma, else the word), memoised.

    Case is kept as given ("Person" is looked up as is), as in NLTK.
    """
    try:
        return _lemmatize(word, pos)
    except LookupError as exc:
        raise _translate_lookup((WORDNET,)) from exc


def load_spacy_model(spacy: Any, model: str, hint: str) -> Any:
    """``spacy.load(model)`` (``spacy``: the imported module); a model that does not load is a
    :class:`~harness.errors.HarnessError` naming it, followed by ``hint`` (how to install it)."""
    try:
        return spacy.load(model)
    except OSError as exc:
        raise HarnessError(f"cannot load spaCy model {model!r}: {exc}; {hint}") from exc


def extract_nouns(text: str) -> list[str]:
    """AMBER's ``extract_nouns``: lemmas of the tokens whose Penn tag starts with ``NN``, in text order.

    Follows ``extract_nouns`` in AMBER ``inference.py`` (https://github.com/junyangwang0410/AMBER, commit 534babf):
    ``nltk.word_tokenize`` on the original-case text, ``nltk.pos_tag``, then ``WordNetLemmatizer().lemmatize(word)``
    (default part of speech ``'n'``) for every word tagged ``NN*``. No lower-casing: "Person" stays "Person".
    """
    return [lemmatize(word) for word, tag in pos_tag(word_tokenize(text)) if tag.startswith("NN")]
