"""CHAIR, the object-hallucination metrics of Object HalBench, as RLHF-V's official scorer computes them.

- :class:`CocoVocabulary`: ``synonyms_refine.txt``, the double words and ``caption_to_words`` (NLTK
  ``word_tokenize``, WordNet lemmas, the greedy bigram merge, "toilet seat" is not a chair);
- :class:`CocoGroundTruth`: the COCO classes of an image from the 2014 instance and caption files (read once, only
  for the images asked about, and cached in the harness cache);
- :func:`compute_chair`: the official ``compute_chair`` (CHAIRs, CHAIRs_refine, CHAIRi, obj_rec, avg_word_len) over
  answers whose mentioned objects are known (from the text, or from the GPT path's extraction), and
  :func:`printed_numbers`, the numbers as the two official scripts print them.

:mod:`tasks.object_halbench` holds the task, the answer files, the GPT object-extraction path and the description
of the official scorer's quirks, all reproduced here.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.cache import cache_dir
from harness.errors import DataError, MissingDataFile
from harness.io import atomic_write_text, read_json
from tasks.text import lemmatize, word_tokenize

log = logging.getLogger(__name__)

SYNONYMS_FILE = "synonyms_refine.txt"
COCO_DIR = "coco_annotations"
INSTANCE_FILES = ("instances_val2014.json", "instances_train2014.json")
CAPTION_FILES = ("captions_val2014.json", "captions_train2014.json")
COCO_FILES = (*INSTANCE_FILES, *CAPTION_FILES)

SYNONYMS_SOURCE = "RLHF-V eval/data/synonyms_refine.txt (https://github.com/RLHF-V/RLHF-V)"
COCO_SOURCE = (
    "MSCOCO 2014 annotations (cocodataset.org): "
    "http://images.cocodataset.org/annotations/annotations_trainval2014.zip, "
    f"unzipped, its annotations/*.json placed in {COCO_DIR}/"
)

ANIMAL_WORDS = ("bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "animal", "cub")
VEHICLE_WORDS = ("jet", "train")


# --------------------------------------------------------------------------------------------------- vocabulary
@dataclass(frozen=True)
class CaptionWords:
    """What ``caption_to_words`` returns: COCO words, ``[word, node word]`` pairs, their token indices, all words."""

    words: tuple[str, ...]
    node_words: tuple[tuple[str, str], ...]
    idxs: tuple[int, ...]
    raw_words: tuple[str, ...]


class CocoVocabulary:
    """The synonym vocabulary and word matching of the official ``CHAIR`` class (``__init__``,
    ``caption_to_words``, ``caption_objects_to_coco_objects``, ``get_double_words_only``)."""

    def __init__(self, lines: Sequence[str], *, digest: str = ""):
        synonyms = [s.strip().split(", ") for s in lines]
        objects: list[str] = []
        inverse: dict[str, str] = {}
        for synonym in synonyms:
            new_synonym = [s.strip() for s in synonym]
            objects.extend(new_synonym)
            for s in new_synonym:
                inverse[s] = new_synonym[0]
        coco_double_words = [w for w in inverse if len(w.strip().split(" ")) >= 2]
        coco_double_words += ["home plate", "train track"]
        double: dict[str, str] = {w: w for w in coco_double_words}
        for animal in ANIMAL_WORDS:
            double[f"baby {animal}"] = animal
            double[f"adult {animal}"] = animal
        for vehicle in VEHICLE_WORDS:
            double[f"passenger {vehicle}"] = vehicle
        double["bow tie"] = "tie"
        double["toilet seat"] = "toilet"
        double["wine glas"] = "wine glass"
        self.mscoco_objects: frozenset[str] = frozenset(objects)
        self.inverse_synonym_dict: dict[str, str] = inverse
        self.double_word_dict: dict[str, str] = double
        #: what the official scorer prints as "double word count"
        self.double_word_count: int = len(coco_double_words)
        self.digest = digest

    @classmethod
    def from_file(cls, path: str | Path) -> CocoVocabulary:
        """Read ``synonyms_refine.txt`` as the official ``open(...).readlines()`` does."""
        path = Path(path)
        try:
            raw = path.read_bytes()
        except FileNotFoundError as exc:
            raise MissingDataFile(path, SYNONYMS_SOURCE) from exc
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(f"not UTF-8 text ({exc.reason} at byte {exc.start})", path=path) from exc
        lines = text.replace("\r\n", "\n").replace("\r", "\n").splitlines(keepends=True)
        return cls(lines, digest=hashlib.sha256(raw).hexdigest())

    def node_word(self, word: str) -> str:
        return self.inverse_synonym_dict[word]

    def _merge_double_words(self, words: Sequence[str], keep_single: bool) -> tuple[list[str], list[int]]:
        """The greedy left-to-right bigram merge; ``keep_single=False`` is ``get_double_words_only``."""
        i = 0
        merged: list[str] = []
        idxs: list[int] = []
        while i < len(words):
            idxs.append(i)
            double_word = " ".join(words[i : i + 2])
            if double_word in self.double_word_dict:
                merged.append(self.double_word_dict[double_word])
                i += 2
            else:
                if keep_single:
                    merged.append(words[i])
                i += 1
        return merged, idxs

    def double_words_only(self, tokens: Sequence[str]) -> list[str]:
        """``get_double_words_only``: only the double words found (mapped), single words dropped."""
        return self._merge_double_words(tokens, keep_single=False)[0]

    def _to_coco(self, words: list[str], idxs: Sequence[int]) -> tuple[list[str], list[tuple[str, str]], list[int]]:
        # toilet seat is not chair; note: the official code filters ``idxs`` by position in the *seat-filtered*
        # list, so after a removal they no longer line up with the words (kept: it only affects the indices).
        if "toilet" in words and "seat" in words:
            words = [w for w in words if w != "seat"]
        kept_idxs = [idxs[k] for k, w in enumerate(words) if w in self.mscoco_objects]
        kept = [w for w in words if w in self.mscoco_objects]
        return kept, [(w, self.inverse_synonym_dict[w]) for w in kept], kept_idxs

    def caption_to_words(self, caption: str) -> CaptionWords:
        """The official ``caption_to_words``: every COCO mention of ``caption`` with its node word."""
        tokens = [lemmatize(w) for w in word_tokenize(caption.lower())]
        merged, idxs = self._merge_double_words(tokens, keep_single=True)
        words, node_words, kept_idxs = self._to_coco(list(merged), idxs)
        return CaptionWords(tuple(words), tuple(node_words), tuple(kept_idxs), tuple(merged))

    def objects_to_coco(self, objects: Sequence[str]) -> CaptionWords:
        """``caption_objects_to_coco_objects``: the GPT path's object phrases matched against the vocabulary."""
        words, node_words, idxs = self._to_coco(list(objects), list(range(len(objects))))
        return CaptionWords(tuple(words), tuple(node_words), tuple(idxs), tuple(objects))


# --------------------------------------------------------------------------------------------------- ground truth
GT_CACHE_FORMAT = 1


def _read_coco_file(path: Path, kind: str) -> dict[str, Any]:
    if not path.is_file():
        raise MissingDataFile(path, COCO_SOURCE)
    size_mb = path.stat().st_size / 1e6
    if size_mb > 20:
        log.info("Object HalBench: reading %s (%.0f MB; once, the derived ground truth is cached)", path, size_mb)
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise DataError(f"expected a COCO {kind} file (a JSON object with an 'annotations' list)", path=path)
    return data


class CocoGroundTruth:
    """The ground-truth COCO classes of images, as the official ``get_annotations`` builds them.

    ``objects(image_ids)`` reads the four annotation files (one at a time, keeping only what the requested images
    need) the first time an image is asked for, and caches the derived ground truth in
    ``$HARNESS_CACHE/object_halbench/`` keyed by the files' names, sizes and modification times, the synonyms file's
    hash and the NLTK version. Later calls read the small cache file only.
    """

    def __init__(self, coco_dir: str | Path, vocab: CocoVocabulary, *, cache: bool = True):
        self.coco_dir = Path(coco_dir)
        self.vocab = vocab
        self.cache = cache
        self.files_read = 0  # annotation files parsed by this instance (tests check the cache with it)

    def paths(self) -> list[Path]:
        return [self.coco_dir / name for name in COCO_FILES]

    def check_files(self) -> None:
        missing = [p for p in self.paths() if not p.is_file()]
        if missing:
            raise missing_files([(p, COCO_SOURCE) for p in missing])

    def _cache_path(self) -> tuple[Path, dict[str, Any]]:
        import nltk

        files = []
        for p in self.paths():
            st = p.stat()
            files.append([p.name, st.st_size, st.st_mtime_ns])
        key = {
            "format": GT_CACHE_FORMAT,
            "files": files,
            "synonyms_sha256": self.vocab.digest,
            "nltk": nltk.__version__,
        }
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
        return cache_dir() / "object_halbench" / f"gt-{digest}.json", key

    def objects(self, image_ids: Collection[int]) -> dict[int, frozenset[str] | None]:
        """Ground-truth node words per image; ``None`` for an image the annotation files do not have."""
        self.check_files()
        wanted = set(image_ids)
        known: dict[int, frozenset[str] | None] = {}
        cache_path, key = self._cache_path()
        if self.cache and cache_path.is_file():
            try:
                cached = json.loads(cache_path.read_text(encoding="utf-8"))
                if cached.get("key") == key:
                    for sid, objs in cached["images"].items():
                        known[int(sid)] = None if objs is None else frozenset(objs)
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                log.warning("Object HalBench: ignoring unreadable ground-truth cache %s", cache_path)
                known = {}
        missing = wanted - known.keys()
        if missing:
            known.update(self._build(missing))
            if self.cache:
                cache_path.parent.mkdir(parents=True, exist_ok=True)
                images = {str(i): (None if v is None else sorted(v)) for i, v in sorted(known.items())}
                atomic_write_text(cache_path, json.dumps({"key": key, "images": images}, sort_keys=True) + "\n")
        return {i: known[i] for i in wanted}

    def _build(self, wanted: set[int]) -> dict[int, frozenset[str] | None]:
        """``get_annotations_from_segments`` + ``get_annotations_from_captions`` for the ``wanted`` images only.

        Each file is parsed once and dropped as soon as the requested images' entries are taken from it. Category
        names come from ``instances_train2014.json`` (as the official ``combine_coco_instances``). An image is
        known if an annotation file lists it in ``images`` or annotates it.
        """
        objects: dict[int, set[str]] = {i: set() for i in wanted}
        seen: set[int] = set()
        id_to_name: dict[Any, str] = {}
        instance_hits: list[tuple[Path, int, Any]] = []  # (file, image id, category id)
        for name in INSTANCE_FILES:
            path = self.coco_dir / name
            data = _read_coco_file(path, "instances")
            self.files_read += 1
            if name == "instances_train2014.json":
                try:
                    id_to_name = {cat["id"]: cat["name"] for cat in data["categories"]}
                except (TypeError, KeyError) as exc:
                    raise DataError(
                        f"expected a 'categories' list of {{id, name}} objects ({exc!r})", path=path
                    ) from exc
            seen.update(_image_ids(data, path) & wanted)
            for index, ann in enumerate(data["annotations"]):
                try:
                    if ann["image_id"] in objects:
                        instance_hits.append((path, ann["image_id"], ann["category_id"]))
                except (TypeError, KeyError) as exc:
                    raise DataError(f"annotation {index}: missing field {exc}", path=path) from exc
            del data
        for path, imid, cat_id in instance_hits:
            if cat_id not in id_to_name:
                raise DataError(
                    f"an annotation of image {imid} names category {cat_id!r}, which is not in the "
                    f"categories of instances_train2014.json",
                    path=path,
                )
            cat_name = id_to_name[cat_id]
            if cat_name not in self.vocab.inverse_synonym_dict:
                raise DataError(f"COCO category {cat_name!r} is not in {SYNONYMS_FILE}", path=path)
            objects[imid].add(self.vocab.node_word(cat_name))
            seen.add(imid)
        for name in CAPTION_FILES:
            path = self.coco_dir / name
            data = _read_coco_file(path, "captions")
            self.files_read += 1
            seen.update(_image_ids(data, path) & wanted)
            for index, ann in enumerate(data["annotations"]):
                try:
                    imid = ann["image_id"]
                    if imid in objects:
                        words = self.vocab.caption_to_words(ann["caption"])
                        objects[imid].update(node for _, node in words.node_words)
                        seen.add(imid)
                except (TypeError, KeyError, AttributeError) as exc:
                    raise DataError(f"annotation {index}: malformed caption annotation ({exc!r})", path=path) from exc
            del data
        return {i: (frozenset(objects[i]) if i in seen else None) for i in wanted}


def _image_ids(data: Mapping[str, Any], path: Path) -> set[int]:
    images = data.get("images", [])
    if not isinstance(images, list):
        raise DataError("'images' is not a list", path=path)
    return {img["id"] for img in images if isinstance(img, dict) and "id" in img}


def missing_files(missing: Sequence[tuple[Path, str]]) -> MissingDataFile:
    """One :class:`MissingDataFile` for the first missing file that also names every other one and its source."""
    first, source = missing[0]
    if len(missing) > 1:
        others = "; ".join(f"{p} (from: {src})" for p, src in missing[1:])
        source = f"{source}. Also missing: {others}"
    return MissingDataFile(first, source)


# --------------------------------------------------------------------------------------------------- answers
@dataclass(frozen=True)
class Answer:
    """One answer as the official ``load_generated_captions`` builds it (``caption`` already preprocessed)."""

    id: str
    image_id: int
    question: str
    caption: str
    line: int | None = None


# --------------------------------------------------------------------------------------------------- scoring
@dataclass
class ObjHalResult:
    """Official ``overall_metrics`` (fractions; ``None`` where the official code would divide by zero), the
    per-answer records, and counts."""

    overall: dict[str, float | None]
    records: list[dict[str, Any]]
    counts: dict[str, int]
    notes: list[str] = field(default_factory=list)


def _div(a: float, b: float) -> float | None:
    return a / b if b else None


@dataclass(frozen=True)
class FoundObjects:
    """Objects of one answer for the scorer: from the text (chair) or from the judge (gpt), or a failure."""

    words: CaptionWords | None
    extra: dict[str, Any]
    failure: str | None = None  # "judge_failed" | "judge_unparsed"


def caption_objects(answers: Sequence[Answer], vocab: CocoVocabulary) -> dict[str, FoundObjects]:
    """Judge-free CHAIR: each answer's objects read from its text by ``caption_to_words``."""
    return {a.id: FoundObjects(vocab.caption_to_words(a.caption), {}) for a in answers}


def compute_chair(
    answers: Sequence[Answer],
    gt: Mapping[int, frozenset[str]],
    found: Mapping[str, FoundObjects],
    before: Mapping[str, int] | None = None,
) -> ObjHalResult:
    """The official ``compute_chair`` over ``answers`` (ground truth ``gt`` by image id), each answer's objects
    ``found`` by its id; an answer whose objects failed is recorded and left out of every metric. ``before``: counts
    reported ahead of CHAIR's own."""
    counts: dict[str, int] = dict(before or {})
    num_caps = num_coco_caps = num_hallucinated_caps = 0.0
    hallucinated_word_count = coco_word_count = gt_word_count = coco_obj_cls_count = 0.0
    total_cap_word_num = 0
    records: list[dict[str, Any]] = []
    for ans in answers:
        obj = found[ans.id]
        base = {"id": ans.id, "image_id": ans.image_id, "caption": ans.caption, **obj.extra}
        if obj.failure is not None or obj.words is None:
            records.append({**base, "status": obj.failure})
            continue
        cw = obj.words
        total_cap_word_num += len(ans.caption.strip().split(" "))
        gt_objects = gt[ans.image_id]
        gt_word_count += len(gt_objects)
        coco_word_count += len(cw.node_words)
        hallucinated: list[tuple[str, str]] = []
        hallucination_idxs: list[int] = []
        correct_classes: list[str] = []
        for _word, node_word, idx in zip(cw.words, cw.node_words, cw.idxs):
            if node_word[-1] not in gt_objects:
                hallucinated_word_count += 1
                hallucinated.append(node_word)
                hallucination_idxs.append(idx)
            else:
                correct_classes.append(node_word[-1])
        coco_obj_cls_count += len(set(correct_classes))
        num_caps += 1
        num_hallucinated_caps += bool(hallucinated)
        chair_i = 0.0
        if len(cw.words) > 0:
            num_coco_caps += 1
            chair_i = len(hallucinated) / float(len(cw.words))
        records.append(
            {
                **base,
                "status": "scored",
                "mentioned": [list(p) for p in cw.node_words],
                "hallucinated": [list(p) for p in hallucinated],
                "gt_objects": sorted(gt_objects),
                "hallucination_idxs": hallucination_idxs,
                "words": list(cw.raw_words),
                "CHAIRs": int(bool(hallucinated)),
                "CHAIRi": chair_i,
            }
        )
    chair_s = _div(num_hallucinated_caps, num_caps)
    chair_s_refine = _div(num_hallucinated_caps, num_coco_caps)
    chair_i_all = _div(hallucinated_word_count, coco_word_count)
    overall: dict[str, float | None] = {
        "CHAIRs": chair_s,
        "CHAIRs_refine": chair_s_refine,
        "CHAIRi": chair_i_all,
        "obj_rec": _div(coco_obj_cls_count, gt_word_count),
        "sentence_num": num_caps,
        "coco_sentence_num": num_coco_caps,
        "coco_word_count": coco_obj_cls_count,  # official name; it counts distinct correct classes per response
        "gt_word_count": gt_word_count,
        "avg_word_len": _div(float(total_cap_word_num), num_caps),
        "correct_rate": None if chair_s_refine is None else 1 - chair_s_refine,
        "object_correct_rate": None if chair_i_all is None else 1 - chair_i_all,
    }
    counts.update(
        {
            "responses": int(num_caps),
            "coco_responses": int(num_coco_caps),
            "hallucinated_responses": int(num_hallucinated_caps),
            "mentions": int(coco_word_count),
            "hallucinated_mentions": int(hallucinated_word_count),
            "correct_classes": int(coco_obj_cls_count),
            "gt_classes": int(gt_word_count),
        }
    )
    return ObjHalResult(overall=overall, records=records, counts=counts)


def _fmt(value: float | None, spec: str) -> float | None:
    """The number as the official script prints it (``spec % value``), read back as a float."""
    return None if value is None else float(spec % value)


def printed_numbers(overall: Mapping[str, float | None]) -> tuple[dict[str, float | None], dict[str, float | None]]:
    """What the two official scripts print: the eval script's row and the summarizer's lines."""

    def pct(key: str) -> float | None:
        v = overall[key]
        return None if v is None else v * 100

    eval_row = {
        "CHAIRs": _fmt(pct("CHAIRs"), "%0.001f"),
        "CHAIRsr": _fmt(pct("CHAIRs_refine"), "%0.001f"),
        "CHAIRi": _fmt(pct("CHAIRi"), "%0.001f"),
        "sent_num": _fmt(overall["sentence_num"], "%d"),
        "coco_num": _fmt(overall["coco_sentence_num"], "%d"),
        "avg_len": _fmt(overall["avg_word_len"], "%0.01f"),
    }
    summary = {
        "Response Hall": _fmt(pct("CHAIRs_refine"), "%.2f"),
        "Object Hall": _fmt(pct("CHAIRi"), "%.2f"),
        "Response Correct": _fmt(pct("correct_rate"), "%.2f"),
        "Object Correct": _fmt(pct("object_correct_rate"), "%.2f"),
        "Object Recall": _fmt(pct("obj_rec"), "%.2f"),
        "Average Length": _fmt(overall["avg_word_len"], "%.2f"),
        "COCO Sent Number": overall["coco_sentence_num"],
        "COCO Word Number": overall["coco_word_count"],
        "GT Word Number": overall["gt_word_count"],
    }
    return eval_row, summary
