"""VTC (Visual-Textual Contrast) data construction: from an image pool to JoMPO's contrastive preference records.

JoMPO's training data pairs images that a CLIP image encoder sees as nearly the same while a self-supervised vision
model (DINOv2) sees them as different: "CLIP-blind" pairs, the pairs a CLIP-based vision-language model is most
likely to confuse. Each pair gets one prompt and two responses, each grounded in its own image, so the model learns
to let the image decide the answer. ``harness build-vtc`` builds such data from a user's own image pool in stages,
each resumable and cached, all under one output folder ``DIR``:

==========  ===========================================  ==========================================================
stage       module                                       writes
==========  ===========================================  ==========================================================
embed       :mod:`trainers.vtc.embed`                    ``DIR/embed/``: the image index, sharded CLIP and DINOv2
                                                         embeddings (``.npy``) with ids, the unreadable images
mine        :mod:`trainers.vtc.mine`                     ``DIR/mine/pairs.jsonl``: CLIP cosine > 0.95 and DINOv2
                                                         cosine < 0.6, duplicates dropped, per-source counts
label       :mod:`trainers.vtc.label`                    ``DIR/label/labels.jsonl``: the LLM's Importance and
                                                         Hallucination-Likelihood scores and rationales for each of
                                                         the nine contrast types; the chosen type
review      :mod:`trainers.vtc.review`                   ``DIR/review/review-NNNN.html``: pages for the human check
                                                         whose exported decisions ``--decisions`` reads back
write       :mod:`trainers.vtc.write`                    ``DIR/vtc.jsonl``: canonical preference records
                                                         (:class:`trainers.data.PreferenceExample`)
report      :mod:`trainers.vtc.pipeline`                 ``DIR/report/``: the contrast-type distribution (the
                                                         paper's Table 6) and per-source counts, CSV and JSON
==========  ===========================================  ==========================================================

:mod:`trainers.vtc.pipeline` ties the stages together for the CLI. The nine contrast types
(:func:`contrast_types`) and the writer's in-context exemplars are data files under ``trainers/vtc/data/``.

This module imports nothing heavy: torch, transformers and faiss load only in the stages that need them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from harness.errors import ConfigError

DATA_DIR = Path(__file__).resolve().parent / "data"
TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"


@dataclass(frozen=True)
class ContrastType:
    """One of the nine contrast types: ``name`` is what records carry, ``key`` a short handle."""

    key: str
    name: str
    definition: str


@cache
def contrast_types() -> tuple[ContrastType, ...]:
    """The nine contrast types, in the paper's order (``data/contrast_types.json``)."""
    data = json.loads((DATA_DIR / "contrast_types.json").read_text(encoding="utf-8"))
    return tuple(ContrastType(t["key"], t["name"], t["definition"]) for t in data["types"])


def _normalise(text: str) -> str:
    return " ".join(text.lower().replace("colour", "color").split())


def find_contrast_type(name: str) -> ContrastType | None:
    """The type whose name or key is ``name`` (case and spacing ignored; "colour" reads as "color"), or None."""
    wanted = _normalise(name)
    for t in contrast_types():
        if wanted in (_normalise(t.name), t.key):
            return t
    return None


def contrast_type(name: str) -> ContrastType:
    """Like :func:`find_contrast_type`, but an unknown name is a :class:`ConfigError` listing the nine."""
    found = find_contrast_type(name)
    if found is None:
        names = "; ".join(t.name for t in contrast_types())
        raise ConfigError(f"unknown contrast type {name!r}; the types are: {names}")
    return found


__all__ = ["DATA_DIR", "TEMPLATE_DIR", "ContrastType", "contrast_type", "contrast_types", "find_contrast_type"]
