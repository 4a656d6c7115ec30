"""Readers and writers for files in AMBER's format, shared by the AMBER-format tasks.

AMBER (https://github.com/junyangwang0410/AMBER, ``data/``) ships:

- ``annotations.json``: a JSON list of entries ``{"id", "type", "truth"[, "hallu"]}``. Generative entries
  (``type == "generative"``) come first and hold object lists ``truth`` and ``hallu``; discriminative entries hold
  ``truth`` ``"yes"`` or ``"no"``, with ``type`` one of ``discriminative-attribute-{state,number,action}``,
  ``discriminative-hallucination`` (existence), ``discriminative-relation`` and ``relation``.
- ``query/query_*.json``: JSON lists of ``{"id", "image", "query"}``; ``query_all.json`` holds every id.
- ``relation.json``: object word -> associated words (keys and values form the hallucination vocabulary).
- ``safe_words.txt``: one word a line, words never counted as hallucinations.
- ``metrics.txt``: the scorer's counters, ``name=initial value`` a line.

The official scorer groups discriminative types into dimensions: Existence is ``discriminative-hallucination``,
Attribute pools the three ``discriminative-attribute-*`` types, and Relation is every other type.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import DataError
from harness.io import read_json
from harness.types import ImageRef, Sample
from tasks import _scaffold as scaffold

GENERATIVE = "generative"
EXISTENCE = "discriminative-hallucination"
ATTRIBUTE_STATE = "discriminative-attribute-state"
ATTRIBUTE_NUMBER = "discriminative-attribute-number"
ATTRIBUTE_ACTION = "discriminative-attribute-action"
RELATION = "discriminative-relation"
RELATION_NO = "relation"  # AMBER's type for relation questions whose truth is "no"

KNOWN_TYPES = (GENERATIVE, ATTRIBUTE_STATE, ATTRIBUTE_NUMBER, ATTRIBUTE_ACTION, EXISTENCE, RELATION, RELATION_NO)

#: Query files, by the name of their subset, relative to the data root.
QUERY_FILES = {
    "all": "query/query_all.json",
    "generative": "query/query_generative.json",
    "discriminative": "query/query_discriminative.json",
    "discriminative-existence": "query/query_discriminative-existence.json",
    "discriminative-attribute": "query/query_discriminative-attribute.json",
    "discriminative-relation": "query/query_discriminative-relation.json",
}


def dimension(entry_type: str) -> str:
    """The scoring dimension of an annotation type: generative, existence, attribute or relation."""
    if entry_type == GENERATIVE:
        return "generative"
    if entry_type == EXISTENCE:
        return "existence"
    if entry_type.startswith("discriminative-attribute"):
        return "attribute"
    return "relation"


@dataclass(frozen=True)
class AmberQuery:
    """One entry of a query file: the question asked about one image."""

    id: int
    image: str
    query: str


def dumps(obj: Any) -> str:
    """Serialise as AMBER's files are: ``json.dump(obj, indent=4)``, no trailing newline."""
    return json.dumps(obj, indent=4)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _entries(path: Path, what: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """The ``(id, entry)`` of a JSON list of ``what`` (queries, annotations) whose every entry is an object with an
    integer ``id``; else :class:`DataError` naming the file and the entry's index."""
    data = read_json(path)
    if not isinstance(data, list):
        raise DataError(f"expected a JSON list of {what}, got {type(data).__name__}", path=path)
    for index, entry in enumerate(data):
        if not isinstance(entry, dict):
            raise DataError(f"entry {index} is not a JSON object", path=path)
        eid = entry.get("id")
        if not _is_int(eid):
            raise DataError(f"entry {index} has no integer field 'id'", path=path)
        yield eid, entry


def read_queries(path: str | Path) -> list[AmberQuery]:
    """Read a query file; a malformed entry raises :class:`DataError` naming the file and the id (or index)."""
    path = Path(path)
    out: list[AmberQuery] = []
    seen = scaffold.UniqueIds(path)
    for qid, entry in _entries(path, "queries"):
        for key in ("image", "query"):
            if not isinstance(entry.get(key), str):
                raise DataError(f"query id {qid}: missing or non-string field {key!r}", path=path)
        seen.add(qid, f"query id {qid} appears twice")
        out.append(AmberQuery(id=qid, image=entry["image"], query=entry["query"]))
    return out


def read_annotations(path: str | Path) -> dict[int, dict[str, Any]]:
    """Read ``annotations.json`` into ``{id: entry}``, checking each entry's fields for its type.

    A malformed entry raises :class:`DataError` naming the file and the id.
    """
    path = Path(path)
    out: dict[int, dict[str, Any]] = {}
    annotated = scaffold.UniqueIds(path)
    for aid, entry in _entries(path, "annotations"):
        kind = entry.get("type")
        if kind not in KNOWN_TYPES:
            raise DataError(
                f"annotation id {aid}: field 'type' is {kind!r}, expected one of {', '.join(KNOWN_TYPES)}", path=path
            )
        if kind == GENERATIVE:
            for key in ("truth", "hallu"):
                value = entry.get(key)
                if not isinstance(value, list) or not all(isinstance(w, str) for w in value):
                    raise DataError(f"annotation id {aid}: field {key!r} must be a list of words", path=path)
        elif entry.get("truth") not in ("yes", "no"):
            raise DataError(
                f'annotation id {aid}: field \'truth\' must be "yes" or "no", got {entry.get("truth")!r}', path=path
            )
        annotated.add(aid, f"annotation id {aid} appears twice")
        out[aid] = entry
    return out


def read_relation(path: str | Path) -> dict[str, list[str]]:
    """Read ``relation.json`` (object word -> associated words)."""
    path = Path(path)
    data = read_json(path)
    if not isinstance(data, dict):
        raise DataError(f"expected a JSON object, got {type(data).__name__}", path=path)
    for key, words in data.items():
        if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
            raise DataError(f"entry {key!r} must be a list of words", path=path)
    return data


def read_safe_words(path: str | Path) -> list[str]:
    """Read ``safe_words.txt``: one word a line, stripped; blank lines ignored."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise DataError("file not found", path=path) from exc
    return [line.strip() for line in text.splitlines() if line.strip()]


def load_samples(
    data_root: Path,
    image_dir: Path,
    *,
    query_file: str = QUERY_FILES["all"],
    generative_tokens: int | None = None,
    discriminative_tokens: int | None = None,
) -> list[Sample]:
    """Join a query file with ``annotations.json`` into samples, in the query file's order.

    Each sample has ``id = str(AMBER id)``, the query as prompt, one image under ``image_dir``, the annotation
    entry as ``reference`` and ``meta = {"type": entry type}``. A query without an annotation raises
    :class:`DataError` naming the query file and the id.
    """
    query_path = data_root / query_file
    annotations = read_annotations(data_root / "annotations.json")
    samples: list[Sample] = []
    for q in read_queries(query_path):
        entry = annotations.get(q.id)
        if entry is None:
            raise DataError(f"query id {q.id} has no entry in annotations.json", path=query_path)
        generative = entry["type"] == GENERATIVE
        samples.append(
            Sample(
                id=str(q.id),
                prompt=q.query,
                images=(ImageRef(path=str(image_dir / q.image)),),
                reference=entry,
                meta={"type": entry["type"]},
                max_new_tokens=generative_tokens if generative else discriminative_tokens,
            )
        )
    return samples
