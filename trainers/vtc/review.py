"""The lightweight human check between labelling and writing: HTML review pages and the decisions read back.

:func:`write_review_pages` writes ``DIR/review/review-0001.html``, ``review-0002.html``, ... (``page_size`` pairs
each, so that thousands of pairs stay openable): self-contained files (both images side by side as data URIs, no
external resource) showing for every labelled pair its chosen contrast type, the difference sentence and the nine
scores with their rationales. Each pair has accept / reject controls (accept is preselected: the reviewer only acts
on bad labels) and a menu to change its type; choices are kept in the browser's local storage while the page is open,
and the **Export decisions** button downloads them as ``decisions-review-0001.json``::

    {"format": "vtc-review-decisions", "version": 1, "page": "review-0001",
     "decisions": [{"pair_id": "vtc-...", "decision": "accept", "contrast_type": "color and appearance",
                    "labelled_type": "color and appearance"}, ...]}

``harness build-vtc --stage write --decisions FILE [--decisions FILE ...]`` reads them back
(:func:`read_decisions`, :func:`apply_decisions`): accepted pairs are written with their (possibly changed) type,
rejected ones are not, and labelled pairs that no file mentions count as *undecided* and are not written either.
Without ``--decisions`` every labelled pair is written.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from harness.errors import DataError
from harness.io import atomic_write_text, read_json
from trainers.vtc import TEMPLATE_DIR, ContrastType, contrast_type, contrast_types, find_contrast_type
from trainers.vtc.label import Label, image_data_url

log = logging.getLogger("harness.vtc.review")

DECISIONS_FORMAT = "vtc-review-decisions"
DEFAULT_PAGE_SIZE = 250
THUMBNAIL_SIDE = 384


def render_page(title: str, page: str, pairs: Sequence[dict[str, Any]], page_index: int, page_count: int) -> str:
    """The HTML of one review page (``pairs``: the template's pair entries)."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return env.get_template("review.html.j2").render(
        title=title,
        page=page,
        pairs=pairs,
        types=[t.name for t in contrast_types()],
        page_index=page_index,
        page_count=page_count,
        format=DECISIONS_FORMAT,
    )


def _entry(label: Label, pair: Any, pool: Any, thumb_side: int) -> dict[str, Any]:
    def url(image_id: str) -> str | None:
        try:
            return image_data_url(pool.open(pool.item(image_id)), thumb_side, quality=85)
        except Exception as exc:  # noqa: BLE001 - the page still shows the pair's labels
            log.warning("review page: cannot read image %s: %s", image_id, exc)
            return None

    return {
        "pair_id": label.pair_id,
        "id_a": pair.id_a,
        "id_b": pair.id_b,
        "source": pair.source,
        "clip": pair.clip,
        "dino": pair.dino,
        "image_a": url(pair.id_a),
        "image_b": url(pair.id_b),
        "contrast_type": label.contrast_type,
        "difference": label.difference,
        "scores": [{**s.to_record(), "chosen": s.type == label.contrast_type} for s in label.scores],
    }


def write_review_pages(
    out_dir: str | os.PathLike[str],
    labels: Sequence[Label],
    pairs: Iterable[Any],
    pool: Any,
    *,
    page_size: int = DEFAULT_PAGE_SIZE,
    thumb_side: int = THUMBNAIL_SIDE,
) -> list[Path]:
    """Write the review pages of the labelled pairs to ``DIR/review/`` (old pages there are replaced)."""

    review_dir = Path(out_dir) / "review"
    review_dir.mkdir(parents=True, exist_ok=True)
    for old in review_dir.glob("review-*.html"):
        old.unlink()
    by_id = {p.pair_id: p for p in pairs}
    labelled = [lab for lab in labels if lab.labelled]
    pages = [labelled[s : s + page_size] for s in range(0, len(labelled), page_size)] or [[]]
    written = []
    for k, chunk in enumerate(pages, start=1):
        page = f"review-{k:04d}"
        entries = [_entry(lab, by_id[lab.pair_id], pool, thumb_side) for lab in chunk]
        html = render_page(f"VTC review {k} / {len(pages)}", page, entries, k, len(pages))
        path = review_dir / f"{page}.html"
        atomic_write_text(path, html)
        written.append(path)
    return written


# --------------------------------------------------------------------------------------------------------------------
# decisions


@dataclass(frozen=True)
class Decision:
    """A reviewer's decision on one pair; ``contrast_type`` is the type to write it with (None: keep the label's)."""

    pair_id: str
    decision: Literal["accept", "reject"]
    contrast_type: str | None = None
    source: str = ""


def read_decisions(paths: Sequence[str | os.PathLike[str]]) -> dict[str, Decision]:
    """The decisions of exported files (later files win for a pair decided twice); a malformed file is a
    :class:`DataError` naming the file and the pair."""
    out: dict[str, Decision] = {}
    for path in paths:
        data = read_json(path)
        if isinstance(data, dict):
            if data.get("format") not in (None, DECISIONS_FORMAT):
                raise DataError(f"not a review decisions file (format {data.get('format')!r})", path=path)
            entries = data.get("decisions")
        else:
            entries = data
        if not isinstance(entries, list):
            raise DataError("expected a 'decisions' list", path=path)
        for k, entry in enumerate(entries, start=1):
            if not isinstance(entry, dict) or not isinstance(entry.get("pair_id"), str):
                raise DataError(f"decision {k}: expected an object with a 'pair_id'", path=path)
            pid = entry["pair_id"]
            decision = entry.get("decision")
            if decision not in ("accept", "reject"):
                raise DataError(
                    f"decision {k} ({pid}): 'decision' must be accept or reject, got {decision!r}", path=path
                )
            ctype = entry.get("contrast_type")
            if ctype is not None:
                found = find_contrast_type(ctype) if isinstance(ctype, str) else None
                if found is None:
                    raise DataError(f"decision {k} ({pid}): unknown contrast type {ctype!r}", path=path)
                ctype = found.name
            if pid in out:
                log.info("%s: pair %s decided again; this decision replaces the earlier one", path, pid)
            out[pid] = Decision(pid, decision, ctype, str(path))
    return out


@dataclass
class ReviewOutcome:
    """The labelled pairs to write, each with its contrast type, and the counts of the review."""

    accepted: list[tuple[Label, ContrastType]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)


def apply_decisions(labels: Sequence[Label], decisions: dict[str, Decision] | None) -> ReviewOutcome:
    """The pairs to write: every labelled pair without decisions; with them, the accepted ones (type as decided)."""

    outcome = ReviewOutcome(
        counts={"labelled": 0, "accepted": 0, "rejected": 0, "changed": 0, "undecided": 0, "not_labelled": 0}
    )
    labelled_ids = set()
    for lab in labels:
        if not lab.labelled or lab.contrast_type is None:
            continue
        labelled_ids.add(lab.pair_id)
        outcome.counts["labelled"] += 1
        if decisions is None:
            outcome.accepted.append((lab, contrast_type(lab.contrast_type)))
            outcome.counts["accepted"] += 1
            continue
        d = decisions.get(lab.pair_id)
        if d is None:
            outcome.counts["undecided"] += 1
        elif d.decision == "reject":
            outcome.counts["rejected"] += 1
        else:
            chosen = d.contrast_type or lab.contrast_type
            outcome.counts["changed"] += chosen != lab.contrast_type
            outcome.accepted.append((lab, contrast_type(chosen)))
            outcome.counts["accepted"] += 1
    if decisions is not None:
        unknown = sorted(set(decisions) - labelled_ids)
        outcome.counts["not_labelled"] = len(unknown)
        if unknown:
            log.warning(
                "%d decisions name pairs that are not labelled (first: %s); they are ignored", len(unknown), unknown[0]
            )
    return outcome


__all__ = [
    "DECISIONS_FORMAT",
    "Decision",
    "ReviewOutcome",
    "apply_decisions",
    "read_decisions",
    "render_page",
    "write_review_pages",
]
