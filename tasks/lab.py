"""The laboratory: a world of coloured shapes with planted language priors, and benchmarks that measure them.

Hallucination in large vision-language models comes largely from priors learned from training captions: a fork is
described next to a knife that is not there, a banana is called yellow when it is green. This module builds a small
world in which such priors are planted on purpose, with a known strength, so that a model trained on it (the lab
model, :mod:`trainers.lab_model`) hallucinates from a known cause, and a preference method can be judged on whether
it removes that cause.

The world (drawn as :mod:`tasks.toy`'s: 96x96 images, a 3x3 grid of 32-pixel cells, one object centred in each used
cell, the toy colours and shapes) adds two attributes: size (small, large) and state (filled, outlined). A scene has
2 or 3 groups of distinct shapes; a group shares colour, size and state and has 1 to 3 instances. Five priors are
planted in the **training world** (the SFT captions and questions, and the contrast pairs' scenes), each with a
strength in [0, 1] (:class:`LabConfig`):

=============== ================================================ =========================================
prior           what the training world says                     strength is
=============== ================================================ =========================================
co_occurrence   a triangle comes with a star                     P(star present | triangle present)
colour          stars are yellow                                 P(yellow | star)
count           circles come in pairs                            P(two circles | circle present)
position        diamonds are in the top row                      P(every diamond in the top row | diamond)
state           squares are outlined                             P(outlined | square)
=============== ================================================ =========================================

Elsewhere the world is uniform: shapes, colours (distinct within a scene), sizes and cells drawn uniformly, other
shapes outlined half the time, other groups single three times in four. Captions list the groups in a fixed shape
order (circle, square, triangle, diamond, star: "... a large filled blue triangle and a small filled yellow star."),
so a star follows a triangle in text as a fork follows a knife, then give the position of each single shape
relative to the next one ("The diamond is above the star.").

The **evaluation world** is seeded apart and balanced: image ``k`` probes prior ``PRIORS[k % 5]`` and is
prior-consistent when ``(k // 5)`` is even, prior-conflicting when odd. A conflicting image breaks exactly its
probed prior (a purple star, one or three circles, a diamond in a lower row below another shape, a filled square, a
triangle without a star); every other prior whose trigger shape it shows holds. No evaluation image is a scene of
the training world or of the contrast pairs (scenes are compared object by object and excluded at generation).

Benchmarks, scored by the real scorers, with a consistent/conflicting breakdown from the per-sample records:

- ``lab_amber``: AMBER's file format (:mod:`tasks._amber_format`), one "Describe this image." and four yes/no
  questions per image: two *probe* questions about the probed prior (one true, one false; on a conflicting image
  the prior's answer is wrong for both, except for co-occurrence, where only "Is there a star?" is) and two
  *control* questions (existence, and an attribute or relation of another group). Scored by
  :class:`tasks.amber.AmberScorer` (word similarity ``none``).
- ``lab_objhal``: Object HalBench's layout (:mod:`tasks.object_halbench`): ``obj_halbench_300_with_image.jsonl``,
  ``synonyms_refine.txt`` and COCO-format ``coco_annotations/``; every image shows a triangle, with a star
  (consistent) or without (conflicting); scored by the official CHAIR code.

Training data from the same (training) world: SFT records (:func:`sft_records`, :func:`generate_lab_sft`) and
VTC-style contrast pairs (:func:`contrast_pairs`, :func:`generate_lab_preferences`) in the trainers' canonical
preference format. A pair's ``m_w`` breaks a prior and ``m_l`` is the same scene with the prior restored, so ``y_l``
(grounded in ``m_l``) is the prior-following answer about ``m_w``; the pair differs in exactly its recorded contrast
type (presence, colour, count, position, state, or size, which no prior touches).

Generation is deterministic: the same :class:`LabConfig` gives byte-identical files, and scene ``k`` of a split
does not depend on how many are asked for. The settings are written with the data (``lab_config.json``).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import itertools
import json
import math
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.cache import cache_dir
from harness.errors import ConfigError, DataError, MissingDataFile
from harness.io import read_json
from harness.task import DataFile, register_task
from harness.types import Metrics, Response, Sample
from tasks import _amber_format as amber
from tasks import toy
from tasks.amber import _f1, _pct
from tasks.chair import CAPTION_FILES, COCO_DIR, INSTANCE_FILES, SYNONYMS_FILE, printed_numbers
from tasks.object_halbench import QUESTION_FILE, ObjectHalBench

if TYPE_CHECKING:
    from PIL.Image import Image

# --- the world -------------------------------------------------------------------------------------------------------

IMAGE_SIZE = toy.IMAGE_SIZE  # 96
GRID = toy.GRID  # 3
CELL = toy.CELL  # 32
BACKGROUND = toy.BACKGROUND
COLOURS = toy.COLOURS
SHAPES = toy.SHAPES  # also the order in which captions list the groups
SIZES: dict[str, int] = {"small": 16, "large": 26}
STATES: tuple[str, ...] = ("filled", "outlined")
OUTLINE_WIDTH = 3
NUMBER_WORDS = toy.NUMBER_WORDS
RELATIONS = toy.RELATIONS
CONVERSE = toy.CONVERSE

#: The planted priors, in the order evaluation images probe them.
PRIORS: tuple[str, ...] = ("co_occurrence", "colour", "count", "position", "state")
CO_A, CO_B = "triangle", "star"  # co_occurrence: a triangle comes with a star
COLOUR_SHAPE, COLOUR_PRIOR = "star", "yellow"  # colour: stars are yellow
COUNT_SHAPE, COUNT_PRIOR = "circle", 2  # count: circles come in pairs
POSITION_SHAPE, POSITION_ROW = "diamond", 0  # position: diamonds are in the top row
STATE_SHAPE, STATE_PRIOR = "square", "outlined"  # state: squares are outlined
PRIOR_TEXT = {
    "co_occurrence": f"a {CO_A} comes with a {CO_B}",
    "colour": f"{COLOUR_SHAPE}s are {COLOUR_PRIOR}",
    "count": f"{COUNT_SHAPE}s come in pairs",
    "position": f"{POSITION_SHAPE}s are in the top row",
    "state": f"{STATE_SHAPE}s are {STATE_PRIOR}",
}
#: The shape whose presence makes a prior apply.
TRIGGER = {
    "co_occurrence": CO_A,
    "colour": COLOUR_SHAPE,
    "count": COUNT_SHAPE,
    "position": POSITION_SHAPE,
    "state": STATE_SHAPE,
}
LABELS: tuple[str, ...] = ("consistent", "conflicting")

#: Contrast types the pair generator draws (key -> the VTC type of the nine it stands for); the first five are the
#: priors' (a pair breaks the prior in m_w and restores it in m_l), ``size`` touches no prior.
CONTRAST_TYPES: dict[str, str] = {
    "presence": "presence of specific features",
    "colour": "color and appearance",
    "count": "quantity and count",
    "position": "positional and relational context",
    "state": "state and condition",
    "size": "structural and physical characteristics",
}
PRIOR_OF_CONTRAST = {
    "presence": "co_occurrence",
    "colour": "colour",
    "count": "count",
    "position": "position",
    "state": "state",
    "size": None,
}
DEFAULT_PAIR_TYPES: tuple[str, ...] = ("presence", "colour", "count", "position", "state")
#: Which image of a prior's pair is preferred: ``anti_prior`` (m_w always breaks the prior, so the preferred text is
#: always the anti-prior one) or ``balanced`` (every other round of pair types is turned round: m_w keeps the prior,
#: so the text alone no longer tells which response is preferred).
PAIR_DIRECTIONS: tuple[str, ...] = ("anti_prior", "balanced")

#: The largest split of each kind that can be asked for (generation is lazy: only what is asked is drawn).
TRAIN_POOL = 100_000
EVAL_POOL = 2_000
OBJHAL_POOL = 1_000
PAIR_POOL = 20_000

GENERATIVE_QUERY = toy.GENERATIVE_QUERY  # "Describe this image."
OBJHAL_QUERY = "Describe this image in detail."
GENERATIVE_MAX_NEW_TOKENS = 64
DISCRIMINATIVE_MAX_NEW_TOKENS = 8
OBJHAL_MAX_NEW_TOKENS = 64

GENERATOR = "lab"
FORMAT_VERSION = 1
CONFIG_FILE = "lab_config.json"
SCENES_FILE = "scenes.json"
META_FILE = "lab_meta.json"
IMAGE_DIR = "image"
PREFERENCE_FILE = "preferences.jsonl"
PAIRS_FILE = "pairs.json"
SFT_FILE = "sft.jsonl"
DATA_SOURCE = "generated by tasks.lab (python -m tasks.lab DIR --kind amber|objhal) or on first use"


@dataclass(frozen=True)
class LabConfig:
    """The lab's settings: the strength of each planted prior (in [0, 1]), the split sizes and the seed.

    ``n_train`` training scenes (SFT), ``n_eval`` images of ``lab_amber`` (a multiple of 10, so that every prior has
    as many consistent as conflicting images), ``n_objhal`` images of ``lab_objhal`` (even), ``n_pairs`` contrast
    pairs drawn among ``pair_types`` (keys of :data:`CONTRAST_TYPES`, in turn). Written as ``lab_config.json`` into
    every dataset folder. Invalid values raise a one-line :class:`ConfigError` naming the setting.
    """

    co_occurrence: float = 0.9
    colour: float = 0.9
    count: float = 0.9
    position: float = 0.9
    state: float = 0.9
    n_train: int = 6000
    n_eval: int = 300
    n_objhal: int = 200
    n_pairs: int = 300
    pair_types: tuple[str, ...] = DEFAULT_PAIR_TYPES
    seed: int = 0
    pair_direction: str = "anti_prior"

    def __post_init__(self) -> None:
        for name in PRIORS:
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or not 0.0 <= value <= 1.0
            ):
                raise ConfigError(f"lab setting {name} (prior strength) must be a number in [0, 1], got {value!r}")
        pools = {
            "n_train": (TRAIN_POOL, "training scenes"),
            "n_eval": (EVAL_POOL, "evaluation images"),
            "n_objhal": (OBJHAL_POOL, "Object HalBench images"),
            "n_pairs": (PAIR_POOL, "contrast pairs"),
        }
        for name, (pool, what) in pools.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"lab setting {name} must be a positive integer, got {value!r}")
            if value > pool:
                raise ConfigError(f"lab setting {name}={value} is above the generated pool of {pool} {what}")
        if self.n_eval % (2 * len(PRIORS)):
            raise ConfigError(
                f"lab setting n_eval must be a multiple of {2 * len(PRIORS)} (each prior: as many "
                f"consistent as conflicting images), got {self.n_eval}"
            )
        if self.n_objhal % 2:
            raise ConfigError(
                f"lab setting n_objhal must be even (as many consistent as conflicting images), got {self.n_objhal}"
            )
        types = self.pair_types
        if isinstance(types, str) or not isinstance(types, (tuple, list)) or not types:
            raise ConfigError(
                f"lab setting pair_types must be a non-empty list of contrast types "
                f"({', '.join(CONTRAST_TYPES)}), got {types!r}"
            )
        for t in types:
            if t not in CONTRAST_TYPES:
                raise ConfigError(
                    f"lab setting pair_types: unknown contrast type {t!r}; expected one of {', '.join(CONTRAST_TYPES)}"
                )
        object.__setattr__(self, "pair_types", tuple(types))
        if self.pair_direction not in PAIR_DIRECTIONS:
            raise ConfigError(
                f"lab setting pair_direction must be one of {', '.join(PAIR_DIRECTIONS)}, got {self.pair_direction!r}"
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(f"lab setting seed must be an integer, got {self.seed!r}")

    def strength(self, prior: str) -> float:
        return float(getattr(self, prior))

    def to_dict(self) -> dict[str, Any]:
        """The settings; ``pair_direction`` only when it is not the default (so datasets drawn before the setting
        existed keep their names and hashes)."""
        out = dataclasses.asdict(self)
        out["pair_types"] = list(self.pair_types)
        if self.pair_direction == "anti_prior":
            del out["pair_direction"]
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> LabConfig:
        """Settings read back (``lab_config.json``); an unknown key is a :class:`ConfigError` naming it."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known - {"generator", "format"})
        if unknown:
            raise ConfigError(f"unknown lab setting {unknown[0]!r}; settings: {', '.join(sorted(known))}")
        kwargs = {k: v for k, v in values.items() if k in known}
        if "pair_types" in kwargs and isinstance(kwargs["pair_types"], list):
            kwargs["pair_types"] = tuple(kwargs["pair_types"])
        return cls(**kwargs)

    def digest(self) -> str:
        """A short hash of the settings (names cached folders)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:10]


@dataclass(frozen=True)
class LabObject:
    """One drawn shape, centred in grid cell ``cell`` (0..8, row-major)."""

    shape: str
    colour: str
    size: str
    state: str
    cell: int

    @property
    def row(self) -> int:
        return self.cell // GRID

    @property
    def col(self) -> int:
        return self.cell % GRID

    @property
    def box(self) -> tuple[int, int, int, int]:
        """``(left, top, right, bottom)`` in pixels, right and bottom exclusive."""
        px = SIZES[self.size]
        left = self.col * CELL + (CELL - px) // 2
        top = self.row * CELL + (CELL - px) // 2
        return (left, top, left + px, top + px)


@dataclass(frozen=True)
class LabGroup(toy.ShapeGroup):
    """All the instances of one shape in a scene (they share colour, size and state)."""

    size: str
    state: str
    cells: tuple[int, ...]

    @property
    def count(self) -> int:
        return len(self.cells)

    @property
    def rows(self) -> tuple[int, ...]:
        return tuple(sorted({c // GRID for c in self.cells}))


@dataclass(frozen=True)
class LabScene:
    """One image of the lab world. ``probe`` and ``label`` are set on evaluation images: the prior the image probes
    and whether it is ``consistent`` with it or ``conflicting``."""

    id: int
    image: str
    objects: tuple[LabObject, ...]
    probe: str | None = None
    label: str | None = None

    def groups(self) -> list[LabGroup]:
        """Groups in caption order (:data:`SHAPES` order)."""
        by_shape: dict[str, list[LabObject]] = {}
        for obj in self.objects:
            by_shape.setdefault(obj.shape, []).append(obj)
        out = []
        for shape in SHAPES:
            objs = by_shape.get(shape)
            if objs:
                o = objs[0]
                out.append(LabGroup(shape, o.colour, o.size, o.state, tuple(sorted(x.cell for x in objs))))
        return out

    def group(self, shape: str) -> LabGroup | None:
        return next((g for g in self.groups() if g.shape == shape), None)

    def present(self) -> list[str]:
        return [g.shape for g in self.groups()]

    def absent(self) -> list[str]:
        present = set(self.present())
        return [s for s in SHAPES if s not in present]

    def signature(self) -> tuple[tuple[str, str, str, str, int], ...]:
        """What the image shows, independent of its id and file name (equal signatures: identical pixels)."""
        return tuple(sorted((o.shape, o.colour, o.size, o.state, o.cell) for o in self.objects))

    def prior_status(self, prior: str) -> str | None:
        """``consistent`` / ``conflicting`` when the prior's trigger shape is in the scene, else None."""
        g = self.group(TRIGGER[prior])
        if g is None:
            return None
        if prior == "co_occurrence":
            ok = self.group(CO_B) is not None
        elif prior == "colour":
            ok = g.colour == COLOUR_PRIOR
        elif prior == "count":
            ok = g.count == COUNT_PRIOR
        elif prior == "position":
            ok = g.rows == (POSITION_ROW,)
        else:
            ok = g.state == STATE_PRIOR
        return "consistent" if ok else "conflicting"

    def to_record(self) -> dict[str, Any]:
        rec: dict[str, Any] = {
            "id": self.id,
            "image": self.image,
            "objects": [
                {
                    "shape": o.shape,
                    "colour": o.colour,
                    "size": o.size,
                    "state": o.state,
                    "cell": o.cell,
                    "box": list(o.box),
                }
                for o in self.objects
            ],
        }
        if self.probe is not None:
            rec["probe"], rec["label"] = self.probe, self.label
        return rec

    @classmethod
    def from_record(cls, rec: Mapping[str, Any]) -> LabScene:
        objects = tuple(
            LabObject(str(o["shape"]), str(o["colour"]), str(o["size"]), str(o["state"]), int(o["cell"]))
            for o in rec["objects"]
        )
        return cls(int(rec["id"]), str(rec["image"]), objects, rec.get("probe"), rec.get("label"))


def relations(a: LabGroup, b: LabGroup) -> list[str]:
    """Positions of single group ``a`` relative to single group ``b`` that hold: left, right, above, below."""
    (ca,), (cb,) = a.cells, b.cells
    ra, ka, rb, kb = ca // GRID, ca % GRID, cb // GRID, cb % GRID
    out = []
    if ka < kb:
        out.append("left")
    if ka > kb:
        out.append("right")
    if ra < rb:
        out.append("above")
    if ra > rb:
        out.append("below")
    return out


def caption_relation(a: LabGroup, b: LabGroup) -> str:
    """The relation a caption states: above/below when the rows differ, else left/right."""
    rels = relations(a, b)
    vertical = [r for r in rels if r in ("above", "below")]
    return vertical[0] if vertical else rels[0]


# --- drawing ---------------------------------------------------------------------------------------------------------


def render(scene: LabScene) -> Image:
    """Draw ``scene`` as a 96x96 RGB ``PIL.Image``: toy geometry, filled or outlined, no anti-aliasing."""
    from PIL import Image as PILImage
    from PIL import ImageDraw

    img = PILImage.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), BACKGROUND)
    draw = ImageDraw.Draw(img)
    for obj in scene.objects:
        rgb = COLOURS[obj.colour]
        kw: dict[str, Any] = {"fill": rgb} if obj.state == "filled" else {"outline": rgb, "width": OUTLINE_WIDTH}
        left, top, right, bottom = obj.box
        if obj.shape == "circle":
            draw.ellipse((left, top, right - 1, bottom - 1), **kw)
        elif obj.shape == "square":
            draw.rectangle((left, top, right - 1, bottom - 1), **kw)
        else:
            draw.polygon(toy.polygon_points(obj.shape, obj.box), **kw)
    return img


def png_bytes(scene: LabScene) -> bytes:
    buf = io.BytesIO()
    render(scene).save(buf, format="PNG")
    return buf.getvalue()


# --- sampling scenes -------------------------------------------------------------------------------------------------

_OTHER_COUNTS = ((1, 2, 3), (0.75, 0.15, 0.10))


def _rng(kind: str, seed: int, index: int) -> random.Random:
    return random.Random(f"{GENERATOR}/{kind}/{seed}/{index}")


@dataclass
class _Spec:
    """A group being drawn: its attributes, its count and, optionally, the rows its cells must be in."""

    shape: str
    colour: str | None = None
    count: int | None = None
    size: str | None = None
    state: str | None = None
    rows: tuple[int, ...] | None = None


def _build(
    specs: list[_Spec],
    rng: random.Random,
    *,
    sid: int,
    image: str,
    probe: str | None = None,
    label: str | None = None,
    fixed_cells: Mapping[str, Sequence[int]] | None = None,
) -> LabScene:
    """Complete the specs (unset colours distinct and uniform, sizes and states uniform, counts by the world's
    default) and place them: constrained groups first, then the others in uniformly drawn free cells."""
    used = {s.colour for s in specs if s.colour is not None}
    for s in specs:
        if s.colour is None:
            s.colour = rng.choice([c for c in COLOURS if c not in used])
            used.add(s.colour)
        if s.count is None:
            s.count = rng.choices(*_OTHER_COUNTS)[0]
        if s.size is None:
            s.size = rng.choice(list(SIZES))
        if s.state is None:
            s.state = rng.choice(STATES)
    free = set(range(GRID * GRID))
    cells: dict[str, list[int]] = {}
    for shape, fixed in (fixed_cells or {}).items():
        cells[shape] = list(fixed)
        free -= set(fixed)
    for s in sorted(specs, key=lambda s: s.rows is None):  # constrained rows first
        if s.shape in cells:
            continue
        pool = sorted(c for c in free if s.rows is None or c // GRID in s.rows)
        assert s.count is not None
        if len(pool) < s.count:
            raise RuntimeError(f"no room for {s.count} {s.shape}(s)")  # excluded by construction
        chosen = rng.sample(pool, s.count)
        cells[s.shape] = chosen
        free -= set(chosen)
    objects = [
        LabObject(s.shape, s.colour, s.size, s.state, c)  # type: ignore[arg-type]
        for s in specs
        for c in sorted(cells[s.shape])
    ]
    objects.sort(key=lambda o: o.cell)
    return LabScene(sid, image, tuple(objects), probe, label)


def sample_train_scene(config: LabConfig, rng: random.Random, *, sid: int = 0, image: str = "") -> LabScene:
    """A scene of the training world: 2-3 groups of distinct shapes with the five priors at their strengths."""
    shapes = rng.sample(SHAPES, rng.choice((2, 3)))
    if CO_A in shapes:  # co-occurrence: P(star | triangle) = strength
        want = rng.random() < config.co_occurrence
        if want and CO_B not in shapes:
            shapes[rng.choice([i for i, s in enumerate(shapes) if s != CO_A])] = CO_B
        elif not want and CO_B in shapes:
            shapes[shapes.index(CO_B)] = rng.choice([s for s in SHAPES if s not in shapes and s != CO_B])
    specs = []
    for shape in sorted(shapes, key=lambda s: (s != COLOUR_SHAPE, SHAPES.index(s))):  # the star's colour first
        spec = _Spec(shape)
        if shape == COLOUR_SHAPE:
            spec.colour = (
                COLOUR_PRIOR if rng.random() < config.colour else rng.choice([c for c in COLOURS if c != COLOUR_PRIOR])
            )
        if shape == COUNT_SHAPE:
            spec.count = COUNT_PRIOR if rng.random() < config.count else rng.choice((1, 3))
        if shape == STATE_SHAPE:
            spec.state = STATE_PRIOR if rng.random() < config.state else "filled"
        if shape == POSITION_SHAPE:
            spec.rows = (POSITION_ROW,) if rng.random() < config.position else (1, 2)
        specs.append(spec)
    # colours: fixed ones reserved first, then the others drawn from what is left
    fixed = {s.colour for s in specs if s.colour is not None}
    for s in specs:
        if s.colour is None:
            s.colour = rng.choice([c for c in COLOURS if c not in fixed])
            fixed.add(s.colour)
    return _build(specs, rng, sid=sid, image=image)


def _consistent_spec(shape: str, rng: random.Random) -> _Spec:
    """A group that satisfies its own prior (an evaluation image breaks only the prior it probes)."""
    spec = _Spec(shape)
    if shape == COLOUR_SHAPE:
        spec.colour = COLOUR_PRIOR
    if shape == COUNT_SHAPE:
        spec.count = COUNT_PRIOR
    if shape == STATE_SHAPE:
        spec.state = STATE_PRIOR
    if shape == POSITION_SHAPE:
        spec.rows = (POSITION_ROW,)
    return spec


def _fill(specs: list[_Spec], rng: random.Random, n_groups: int, banned: set[str]) -> None:
    """Add prior-consistent filler groups up to ``n_groups``; a triangle only with a star (co-occurrence holds)."""
    while len(specs) < n_groups:
        present = {s.shape for s in specs}
        options = [s for s in SHAPES if s not in present and s not in banned]
        if CO_B not in present and (CO_B in banned or len(specs) + 2 > n_groups):
            options = [s for s in options if s != CO_A]
        if not options:
            return
        shape = rng.choice(options)
        specs.append(_consistent_spec(shape, rng))
        if shape == CO_A and CO_B not in present:
            specs.append(_consistent_spec(CO_B, rng))


def eval_scene(config: LabConfig, index: int, *, kind: str = "eval") -> LabScene:
    """Image ``index`` (0-based) of the evaluation world (``kind`` ``eval``: ``lab_amber``; ``objhal``:
    ``lab_objhal``, every image a co-occurrence probe). See the module docstring for the balance."""
    rng = _rng(kind, config.seed, index)
    if kind == "objhal":
        prior, label = "co_occurrence", LABELS[index % 2]
        name = f"LABOBJ_{index + 1}.png"
    else:
        prior, label = PRIORS[index % len(PRIORS)], LABELS[(index // len(PRIORS)) % 2]
        name = f"LAB_{index + 1}.png"
    conflict = label == "conflicting"
    n_groups = rng.choice((2, 3))
    specs: list[_Spec] = []
    banned: set[str] = set()
    fixed_cells: dict[str, list[int]] = {}
    if prior == "co_occurrence":
        specs.append(_consistent_spec(CO_A, rng))
        if conflict:
            banned.add(CO_B)
        else:
            specs.append(_consistent_spec(CO_B, rng))
    elif prior == "colour":
        spec = _consistent_spec(COLOUR_SHAPE, rng)
        if conflict:
            spec.colour = rng.choice([c for c in COLOURS if c != COLOUR_PRIOR])
        specs.append(spec)
    elif prior == "count":
        spec = _consistent_spec(COUNT_SHAPE, rng)
        if conflict:
            spec.count = rng.choice((1, 3))
        specs.append(spec)
    elif prior == "position":
        # a single diamond and a single other shape in another row: the diamond above it (consistent: top row) or
        # below it (conflicting: a lower row)
        other = rng.choice([STATE_SHAPE, COLOUR_SHAPE])
        d_row = rng.choice((1, 2)) if conflict else POSITION_ROW
        o_row = rng.choice([r for r in range(GRID) if r < d_row]) if conflict else rng.choice((1, 2))
        fixed_cells[POSITION_SHAPE] = [d_row * GRID + rng.randrange(GRID)]
        fixed_cells[other] = [o_row * GRID + rng.randrange(GRID)]
        d = _consistent_spec(POSITION_SHAPE, rng)
        d.count, d.rows = 1, None
        o = _consistent_spec(other, rng)
        o.count = 1
        specs += [d, o]
    else:  # state
        spec = _consistent_spec(STATE_SHAPE, rng)
        if conflict:
            spec.state = "filled"
        specs.append(spec)
    _fill(specs, rng, n_groups, banned)
    return _build(specs, rng, sid=index + 1, image=name, probe=prior, label=label, fixed_cells=fixed_cells)


def _held_out(config: LabConfig) -> frozenset[tuple]:
    """Signatures of every image the evaluation pools can hold (whatever their sizes): excluded from training."""
    return frozenset(eval_scene(config, k).signature() for k in range(EVAL_POOL)) | frozenset(
        eval_scene(config, k, kind="objhal").signature() for k in range(OBJHAL_POOL)
    )


_HELD_OUT_CACHE: dict[tuple, frozenset[tuple]] = {}


def held_out_signatures(config: LabConfig) -> frozenset[tuple]:
    key = (config.seed,)
    if key not in _HELD_OUT_CACHE:
        _HELD_OUT_CACHE[key] = _held_out(config)
    return _HELD_OUT_CACHE[key]


def _from_pool(n: int, pool: int, setting: str, what: str) -> int:
    """``n``, how many of the generated pool of ``pool`` ``what`` the lab setting ``setting`` asks for; more than the
    pool holds is a :class:`ConfigError`."""
    if n > pool:
        raise ConfigError(f"lab setting {setting}={n} is above the generated pool of {pool} {what}")
    return n


def train_scenes(config: LabConfig, n: int | None = None) -> list[LabScene]:
    """The first ``n`` (default ``config.n_train``) scenes of the training world; a scene that an evaluation image
    shows is skipped (the next one is drawn in its place)."""
    n = _from_pool(config.n_train if n is None else n, TRAIN_POOL, "n_train", "training scenes")
    held = held_out_signatures(config)
    out: list[LabScene] = []
    k = 0
    while len(out) < n:
        scene = sample_train_scene(
            config, _rng("train", config.seed, k), sid=len(out) + 1, image=f"TRAIN_{len(out) + 1}.png"
        )
        k += 1
        if scene.signature() not in held:
            out.append(scene)
    return out


def eval_scenes(config: LabConfig, kind: str = "eval") -> list[LabScene]:
    n = config.n_eval if kind == "eval" else config.n_objhal
    return [eval_scene(config, k, kind=kind) for k in range(n)]


# --- text: captions and questions ------------------------------------------------------------------------------------

_plural = toy._plural


def noun_phrase(g: LabGroup) -> str:
    """ "a small filled red circle" / "two large outlined blue squares"."""
    words = f"{g.size} {g.state} {g.colour}"
    if g.count == 1:
        return f"a {words} {g.shape}"
    return f"{NUMBER_WORDS[g.count]} {words} {_plural(g.shape)}"


def caption(scene: LabScene) -> str:
    """The correct description: the groups in :data:`SHAPES` order, then the position of each single shape
    relative to the next single one."""
    groups = scene.groups()
    phrases = [noun_phrase(g) for g in groups]
    listing = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    sentences = [f"{'There is' if groups[0].count == 1 else 'There are'} {listing}."]
    singles = [g for g in groups if g.count == 1]
    for a, b in itertools.pairwise(singles):
        sentences.append(f"The {a.shape} is {RELATIONS[caption_relation(a, b)]} the {b.shape}.")
    return " ".join(sentences)


def existence_query(shape: str) -> str:
    return f"Is there a {shape} in this image?"


def attribute_query(shape: str, value: str) -> str:
    """Colour, size or state: "Is the star yellow in this image?"."""
    return f"Is the {shape} {value} in this image?"


number_query = toy._number_query  # "Is there one circle in this image?" / "Are there two circles in this image?"
relation_query = toy._relation_query  # "Is the diamond above the star?"


@dataclass(frozen=True)
class LabQuestion:
    """A yes/no question about one scene: AMBER ``type``, ``truth``, text, and what it measures: the ``prior`` it
    probes (None for a control question) and its ``role`` (``probe`` or ``control``)."""

    type: str
    truth: str
    query: str
    prior: str | None = None
    role: str = "control"
    topic: str = ""  # existence | colour | count | size | state | relation


def _yn(flag: bool) -> str:
    return "yes" if flag else "no"


def _attribute_question(g: LabGroup, topic: str, yes: bool, rng: random.Random, **kw: Any) -> LabQuestion:
    if topic == "count":
        n = g.count if yes else rng.choice([k for k in NUMBER_WORDS if k != g.count])
        return LabQuestion(amber.ATTRIBUTE_NUMBER, _yn(yes), number_query(g.shape, n), topic=topic, **kw)
    values = {"colour": list(COLOURS), "size": list(SIZES), "state": list(STATES)}[topic]
    true = {"colour": g.colour, "size": g.size, "state": g.state}[topic]
    value = true if yes else rng.choice([v for v in values if v != true])
    return LabQuestion(amber.ATTRIBUTE_STATE, _yn(yes), attribute_query(g.shape, value), topic=topic, **kw)


def _relation_question(a: LabGroup, b: LabGroup, rel: str, yes: bool, **kw: Any) -> LabQuestion:
    if yes:
        return LabQuestion(amber.RELATION, "yes", relation_query(a.shape, rel, b.shape), topic="relation", **kw)
    return LabQuestion(amber.RELATION_NO, "no", relation_query(a.shape, CONVERSE[rel], b.shape), topic="relation", **kw)


def random_question(
    scene: LabScene, rng: random.Random, yes: bool | None = None, topic: str | None = None, exclude: Iterable[str] = ()
) -> LabQuestion:
    """A control question of a random topic (existence, colour, count, size, state, relation) and answer."""
    yes = rng.random() < 0.5 if yes is None else yes
    groups = [g for g in scene.groups() if g.shape not in set(exclude)] or scene.groups()
    singles = [g for g in scene.groups() if g.count == 1]
    topics = ["existence", "colour", "count", "size", "state"] + (["relation"] if len(singles) >= 2 else [])
    topic = topic if topic in topics else rng.choice(topics)
    if topic == "existence":
        pool = [s for s in (scene.present() if yes else scene.absent()) if s not in set(exclude)]
        pool = pool or (scene.present() if yes else scene.absent())
        return LabQuestion(amber.EXISTENCE, _yn(yes), existence_query(rng.choice(pool)), topic="existence")
    if topic == "relation":
        a, b = rng.sample(singles, 2)
        return _relation_question(a, b, rng.choice(relations(a, b)), yes)
    return _attribute_question(rng.choice(groups), topic, yes, rng)


def probe_questions(scene: LabScene, rng: random.Random) -> list[LabQuestion]:
    """The two probe questions of an evaluation image: about its probed prior, one true and one false."""
    prior = scene.probe
    kw = {"prior": prior, "role": "probe"}
    if prior == "co_occurrence":
        has_b = scene.group(CO_B) is not None
        star = LabQuestion(amber.EXISTENCE, _yn(has_b), existence_query(CO_B), topic="existence", **kw)
        if has_b:  # the false one: a shape that is absent
            other = LabQuestion(
                amber.EXISTENCE, "no", existence_query(rng.choice(scene.absent())), topic="existence", **kw
            )
        else:
            other = LabQuestion(amber.EXISTENCE, "yes", existence_query(CO_A), topic="existence", **kw)
        return [star, other] if has_b else [other, star]
    if prior == "position":
        # the diamond and a single shape below it (consistent) or above it (conflicting)
        d = scene.group(POSITION_SHAPE)
        assert d is not None
        conflict = scene.label == "conflicting"
        o = next(
            g
            for g in scene.groups()
            if g.shape != POSITION_SHAPE
            and g.count == 1
            and (g.rows[0] < d.rows[0] if conflict else g.rows[0] > d.rows[0])
        )
        rel = "below" if conflict else "above"
        return [_relation_question(d, o, rel, True, **kw), _relation_question(d, o, rel, False, **kw)]
    g = scene.group(TRIGGER[prior])  # type: ignore[index]
    assert g is not None
    topic = {"colour": "colour", "count": "count", "state": "state"}[prior]  # type: ignore[index]
    if prior == "colour":
        # true: "Is the star <its colour>?"; false: the prior's colour on a conflicting image, else another
        false_value = (
            COLOUR_PRIOR if g.colour != COLOUR_PRIOR else rng.choice([c for c in COLOURS if c != COLOUR_PRIOR])
        )
        return [
            LabQuestion(amber.ATTRIBUTE_STATE, "yes", attribute_query(g.shape, g.colour), topic=topic, **kw),
            LabQuestion(amber.ATTRIBUTE_STATE, "no", attribute_query(g.shape, false_value), topic=topic, **kw),
        ]
    if prior == "count":
        false_n = COUNT_PRIOR if g.count != COUNT_PRIOR else rng.choice((1, 3))
        return [
            LabQuestion(amber.ATTRIBUTE_NUMBER, "yes", number_query(g.shape, g.count), topic=topic, **kw),
            LabQuestion(amber.ATTRIBUTE_NUMBER, "no", number_query(g.shape, false_n), topic=topic, **kw),
        ]
    other_state = next(s for s in STATES if s != g.state)
    return [
        LabQuestion(amber.ATTRIBUTE_STATE, "yes", attribute_query(g.shape, g.state), topic=topic, **kw),
        LabQuestion(amber.ATTRIBUTE_STATE, "no", attribute_query(g.shape, other_state), topic=topic, **kw),
    ]


def eval_questions(scene: LabScene, index: int, config: LabConfig) -> list[LabQuestion]:
    """The four yes/no questions of evaluation image ``index``: two probes, then two controls (an existence
    question, "yes" on even images, and an attribute or relation question about a group the probes do not ask
    about, "yes" on every other pair of images)."""
    rng = _rng("eval-questions", config.seed, index)
    probes = probe_questions(scene, rng)
    probed = {TRIGGER[scene.probe]} if scene.probe else set()
    if scene.probe == "co_occurrence":
        probed |= {CO_B}
    if scene.probe == "position":
        probed = {POSITION_SHAPE} | {g.shape for g in scene.groups() if g.count == 1}
    existence = random_question(scene, rng, yes=index % 2 == 0, topic="existence", exclude=probed)
    attribute = random_question(
        scene, rng, yes=(index // 2) % 2 == 0, topic=rng.choice(["colour", "count", "size", "state"]), exclude=probed
    )
    return [*probes, existence, attribute]


def train_questions(scene: LabScene, rng: random.Random, n: int) -> list[LabQuestion]:
    """``n`` yes/no questions about a training scene, topics and answers drawn uniformly."""
    return [random_question(scene, rng) for _ in range(n)]


# --- SFT records -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SFTExample:
    """One supervised example: a training scene, a question and its correct answer."""

    id: str
    scene: LabScene
    question: str
    answer: str


def sft_records(config: LabConfig, questions_per_scene: int = 3, n: int | None = None) -> list[SFTExample]:
    """The SFT data of the training world: for each of the first ``n`` (default ``config.n_train``) scenes, its
    caption (asked "Describe this image." or, one scene in two, "Describe this image in detail.") and
    ``questions_per_scene`` yes/no questions answered "Yes" / "No" (the exact words AMBER's scorer accepts)."""
    out = []
    for k, scene in enumerate(train_scenes(config, n)):
        rng = _rng("sft", config.seed, k)
        query = GENERATIVE_QUERY if k % 2 == 0 else OBJHAL_QUERY
        out.append(SFTExample(f"lab-sft-{k}", scene, query, caption(scene)))
        for j, q in enumerate(train_questions(scene, rng, questions_per_scene)):
            out.append(SFTExample(f"lab-sft-{k}-q{j}", scene, q.query, q.truth.capitalize()))
    return out


def generate_lab_sft(out_dir: str | Path, config: LabConfig | None = None, questions_per_scene: int = 3) -> Path:
    """Write the SFT data (:func:`sft_records`) as ``out_dir/sft.jsonl`` (``{id, image, question, answer}``, for
    ``harness train --method sft``) with its images and ``lab_config.json``; returns the JSONL path."""
    config = config or LabConfig()
    out = Path(out_dir)
    (out / IMAGE_DIR).mkdir(parents=True, exist_ok=True)
    lines = []
    written: set[str] = set()
    for ex in sft_records(config, questions_per_scene):
        if ex.scene.image not in written:
            render(ex.scene).save(out / IMAGE_DIR / ex.scene.image)
            written.add(ex.scene.image)
        lines.append(
            json.dumps(
                {"id": ex.id, "image": f"{IMAGE_DIR}/{ex.scene.image}", "question": ex.question, "answer": ex.answer},
                sort_keys=True,
            )
        )
    (out / SFT_FILE).write_text("\n".join(lines) + "\n", encoding="utf-8")
    _write_config(out, config)
    return out / SFT_FILE


# --- contrast pairs --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ContrastPair:
    """A VTC-style pair: ``m_w`` and ``m_l`` differ in exactly ``contrast`` (a key of :data:`CONTRAST_TYPES`);
    ``y_w`` is grounded in ``m_w`` and ``y_l`` in ``m_l``. For a prior's type, ``m_w`` breaks the prior and ``m_l``
    keeps it, so ``y_l`` is the prior-following answer; with ``pair_direction`` ``balanced``, the pairs of every
    other round of types are turned round (``m_w`` keeps the prior)."""

    id: str
    contrast: str
    question: str
    m_w: LabScene
    m_l: LabScene
    y_w: str
    y_l: str
    turned: bool = False  # m_w keeps the prior (pair_direction balanced)


def _with(scene: LabScene, shape: str, **changes: Any) -> tuple[LabObject, ...]:
    return tuple(
        sorted(
            (dataclasses.replace(o, **changes) if o.shape == shape else o for o in scene.objects), key=lambda o: o.cell
        )
    )


def _pair_scene(config: LabConfig, contrast: str, rng: random.Random) -> LabScene:
    """A training-world scene that holds the contrast's trigger (drawn until one does)."""
    need = {
        "presence": CO_A,
        "colour": COLOUR_SHAPE,
        "count": COUNT_SHAPE,
        "position": POSITION_SHAPE,
        "state": STATE_SHAPE,
    }.get(contrast)
    while True:
        scene = sample_train_scene(config, rng)
        if need is None or scene.group(need) is not None:
            return scene


def _make_pair(config: LabConfig, contrast: str, rng: random.Random, k: int) -> tuple[LabScene, LabScene] | None:
    """(m_w, m_l) for one pair, or None when the drawn scene cannot be edited so (another is drawn)."""
    scene = _pair_scene(config, contrast, rng)
    w_name, l_name = f"PAIR_{k + 1}_w.png", f"PAIR_{k + 1}_l.png"

    def scenes(w_objects: Iterable[LabObject], l_objects: Iterable[LabObject]) -> tuple[LabScene, LabScene]:
        return (
            LabScene(k + 1, w_name, tuple(sorted(w_objects, key=lambda o: o.cell))),
            LabScene(k + 1, l_name, tuple(sorted(l_objects, key=lambda o: o.cell))),
        )

    used_cells = {o.cell for o in scene.objects}
    free = [c for c in range(GRID * GRID) if c not in used_cells]
    if contrast == "presence":  # m_w: a triangle without the star; m_l: the same with a star added
        base = [o for o in scene.objects if o.shape != CO_B]
        free = [c for c in range(GRID * GRID) if c not in {o.cell for o in base}]
        colours = {o.colour for o in base}
        if not free or len({o.shape for o in base}) < 2:  # m_w keeps two groups, as every scene of the world
            return None
        star_colour = (
            COLOUR_PRIOR if COLOUR_PRIOR not in colours else rng.choice([c for c in COLOURS if c not in colours])
        )
        star = LabObject(CO_B, star_colour, rng.choice(list(SIZES)), rng.choice(STATES), rng.choice(free))
        return scenes(base, [*base, star])
    if contrast == "colour":  # m_w: a star of another colour; m_l: yellow
        others = {o.colour for o in scene.objects if o.shape != COLOUR_SHAPE}
        if COLOUR_PRIOR in others:
            return None
        new = rng.choice([c for c in COLOURS if c != COLOUR_PRIOR and c not in others])
        return scenes(_with(scene, COLOUR_SHAPE, colour=new), _with(scene, COLOUR_SHAPE, colour=COLOUR_PRIOR))
    if contrast == "count":  # m_w: one or three circles; m_l: two
        g = scene.group(COUNT_SHAPE)
        assert g is not None
        rest = [o for o in scene.objects if o.shape != COUNT_SHAPE]
        proto = next(o for o in scene.objects if o.shape == COUNT_SHAPE)
        free_rest = [c for c in range(GRID * GRID) if c not in {o.cell for o in rest}]
        target = rng.choice((1, 3))
        if len(free_rest) < 3:
            return None
        cells2 = (
            list(g.cells[:2]) if g.count >= 2 else [g.cells[0], rng.choice([c for c in free_rest if c != g.cells[0]])]
        )
        if target == 1:
            cells_w = [rng.choice(cells2)]
        else:
            cells_w = cells2 + [rng.choice([c for c in free_rest if c not in cells2])]
        w = rest + [dataclasses.replace(proto, cell=c) for c in cells_w]
        lo = rest + [dataclasses.replace(proto, cell=c) for c in cells2]
        return scenes(w, lo)
    if contrast == "position":  # m_w: the (single) diamond in a lower row; m_l: moved to the top row
        g = scene.group(POSITION_SHAPE)
        assert g is not None
        if g.count != 1:
            return None
        rest = [o for o in scene.objects if o.shape != POSITION_SHAPE]
        proto = next(o for o in scene.objects if o.shape == POSITION_SHAPE)
        taken = {o.cell for o in rest}
        top = [c for c in range(GRID) if c not in taken]
        # a single shape in the middle row, so that the diamond's relation to it flips (below it -> above it)
        bottom = [c for c in range(2 * GRID, GRID * GRID) if c not in taken]
        if (
            not top
            or not bottom
            or not any(g.count == 1 and g.rows == (1,) for g in scene.groups() if g.shape != POSITION_SHAPE)
        ):
            return None
        return scenes(
            rest + [dataclasses.replace(proto, cell=rng.choice(bottom))],
            rest + [dataclasses.replace(proto, cell=rng.choice(top))],
        )
    if contrast == "state":  # m_w: a filled square; m_l: outlined
        return scenes(_with(scene, STATE_SHAPE, state="filled"), _with(scene, STATE_SHAPE, state=STATE_PRIOR))
    if contrast == "size":  # no prior: one group's size flipped
        g = rng.choice(scene.groups())
        other = next(s for s in SIZES if s != g.size)
        return scenes(scene.objects, _with(scene, g.shape, size=other))
    raise ConfigError(f"unknown contrast type {contrast!r}; expected one of {', '.join(CONTRAST_TYPES)}")


def _pair_question(contrast: str, m_w: LabScene, m_l: LabScene, rng: random.Random) -> tuple[str, str, str]:
    """A yes/no question about the difference, and its answers on m_w and on m_l."""
    if contrast == "presence":
        q = existence_query(CO_B)
    elif contrast == "colour":
        colour = rng.choice([m_w.group(COLOUR_SHAPE).colour, COLOUR_PRIOR])  # type: ignore[union-attr]
        q = attribute_query(COLOUR_SHAPE, colour)
    elif contrast == "count":
        n = rng.choice([m_w.group(COUNT_SHAPE).count, COUNT_PRIOR])  # type: ignore[union-attr]
        q = number_query(COUNT_SHAPE, n)
    elif contrast == "position":
        other = next(g for g in m_w.groups() if g.count == 1 and g.shape != POSITION_SHAPE and g.rows == (1,))
        q = relation_query(POSITION_SHAPE, rng.choice(["above", "below"]), other.shape)
    elif contrast == "state":
        q = attribute_query(STATE_SHAPE, rng.choice(STATES))
    else:  # size
        diff = next(g.shape for g, h in zip(m_w.groups(), m_l.groups()) if g.size != h.size)
        q = attribute_query(diff, rng.choice(list(SIZES)))
    return q, answer(m_w, q), answer(m_l, q)


def answer(scene: LabScene, query: str) -> str:
    """The correct "Yes" / "No" to a lab question about ``scene`` (the question's wording is parsed back)."""
    words = query.rstrip("?").split()
    present = {g.shape: g for g in scene.groups()}
    if words[:3] == ["Is", "there", "a"]:
        return "Yes" if words[3] in present else "No"
    if words[:3] == ["Is", "there", "one"] or words[0] == "Are":
        n = 1 if words[2] == "one" else next(k for k, w in NUMBER_WORDS.items() if w == words[2])
        shape = words[3] if n == 1 else next(s for s in SHAPES if _plural(s) == words[3])
        g = present.get(shape)
        return "Yes" if g is not None and g.count == n else "No"
    if words[:2] == ["Is", "the"] and words[-2:] == ["this", "image"]:
        shape, value = words[2], words[3]
        g = present.get(shape)
        return "Yes" if g is not None and value in (g.colour, g.size, g.state) else "No"
    if words[:2] == ["Is", "the"]:
        a, b = present.get(words[2]), present.get(words[-1])
        rel = {"left": "left", "right": "right", "above": "above", "below": "below"}[
            next(w for w in words[3:] if w in ("left", "right", "above", "below"))
        ]
        if a is None or b is None or a.count != 1 or b.count != 1:
            return "No"
        return "Yes" if rel in relations(a, b) else "No"
    raise ValueError(f"not a lab question: {query!r}")


def contrast_pairs(config: LabConfig, n: int | None = None) -> list[ContrastPair]:
    """The first ``n`` (default ``config.n_pairs``) contrast pairs of the training world, their types in turn
    (``config.pair_types``). Even pairs are descriptions ("Describe this image.", the two captions), odd pairs a
    yes/no question about the difference (bare "Yes" / "No" answers). Scenes an evaluation image shows are skipped."""
    n = _from_pool(config.n_pairs if n is None else n, PAIR_POOL, "n_pairs", "contrast pairs")
    held = held_out_signatures(config)
    out: list[ContrastPair] = []
    attempt = 0
    while len(out) < n:
        k = len(out)
        contrast = config.pair_types[k % len(config.pair_types)]
        rng = _rng("pairs", config.seed, attempt)
        attempt += 1
        made = _make_pair(config, contrast, rng, k)
        if made is None:
            continue
        m_w, m_l = made
        if m_w.signature() in held or m_l.signature() in held or m_w.signature() == m_l.signature():
            continue
        if k % 2 == 0:
            question, y_w, y_l = GENERATIVE_QUERY, caption(m_w), caption(m_l)
        else:
            question, y_w, y_l = _pair_question(contrast, m_w, m_l, rng)
        if y_w == y_l:
            continue
        turned = config.pair_direction == "balanced" and (k // (2 * len(config.pair_types))) % 2 == 1
        if turned:  # the prior-keeping image and its response are preferred (image names follow the roles)
            m_w, m_l = dataclasses.replace(m_l, image=m_w.image), dataclasses.replace(m_w, image=m_l.image)
            y_w, y_l = y_l, y_w
        out.append(ContrastPair(f"lab-pair-{k}", contrast, question, m_w, m_l, y_w, y_l, turned))
    return out


def differences(a: LabScene, b: LabScene) -> set[str]:
    """The contrast types in which two scenes differ (presence, colour, count, position, state, size)."""
    ga, gb = {g.shape: g for g in a.groups()}, {g.shape: g for g in b.groups()}
    out: set[str] = set()
    if set(ga) != set(gb):
        out.add("presence")
    for shape in set(ga) & set(gb):
        x, y = ga[shape], gb[shape]
        if x.colour != y.colour:
            out.add("colour")
        if x.size != y.size:
            out.add("size")
        if x.state != y.state:
            out.add("state")
        if x.count != y.count:
            out.add("count")
        elif x.cells != y.cells:
            out.add("position")
    if "presence" in out:  # the shared groups may not move when one is added or removed
        shared = set(ga) & set(gb)
        if any(ga[s].cells != gb[s].cells for s in shared):
            out.add("position")
    return out


def generate_lab_preferences(out_dir: str | Path, config: LabConfig | None = None) -> Path:
    """Write the contrast pairs as ``out_dir/preferences.jsonl`` (the trainers' canonical preference format:
    ``{id, question, image_w, image_l, y_w, y_l, contrast_type, source}``), their images, ``pairs.json`` (the two
    scenes and the contrast key of each pair) and ``lab_config.json``; returns the JSONL path."""
    config = config or LabConfig()
    out = Path(out_dir)
    (out / IMAGE_DIR).mkdir(parents=True, exist_ok=True)
    lines, records = [], []
    for p in contrast_pairs(config):
        render(p.m_w).save(out / IMAGE_DIR / p.m_w.image)
        render(p.m_l).save(out / IMAGE_DIR / p.m_l.image)
        lines.append(
            json.dumps(
                {
                    "id": p.id,
                    "question": p.question,
                    "image_w": f"{IMAGE_DIR}/{p.m_w.image}",
                    "image_l": f"{IMAGE_DIR}/{p.m_l.image}",
                    "y_w": p.y_w,
                    "y_l": p.y_l,
                    "contrast_type": CONTRAST_TYPES[p.contrast],
                    "source": "lab",
                },
                sort_keys=True,
            )
        )
        records.append(
            {
                "id": p.id,
                "contrast": p.contrast,
                "prior": PRIOR_OF_CONTRAST[p.contrast],
                "m_w": p.m_w.to_record(),
                "m_l": p.m_l.to_record(),
                "m_w_keeps_prior": p.turned,
            }
        )
    (out / PREFERENCE_FILE).write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out / PAIRS_FILE).write_text(json.dumps({"generator": GENERATOR, "pairs": records}, indent=1), encoding="utf-8")
    _write_config(out, config)
    return out / PREFERENCE_FILE


# --- writing the benchmarks ------------------------------------------------------------------------------------------


def _write_config(root: Path, config: LabConfig) -> None:
    (root / CONFIG_FILE).write_text(
        json.dumps({"generator": GENERATOR, "format": FORMAT_VERSION, **config.to_dict()}, indent=2, sort_keys=True)
        + "\n",
        encoding="utf-8",
    )


def read_config(root: str | Path) -> LabConfig:
    """The :class:`LabConfig` recorded in ``root/lab_config.json``."""
    path = Path(root) / CONFIG_FILE
    if not path.is_file():
        raise MissingDataFile(path, DATA_SOURCE)
    data = read_json(path)
    if not isinstance(data, dict) or data.get("generator") != GENERATOR:
        raise DataError("not a lab settings file", path=path)
    return LabConfig.from_dict(data)


def _write_amber(root: Path, config: LabConfig) -> None:
    scenes = eval_scenes(config, "eval")
    (root / IMAGE_DIR).mkdir(parents=True)
    (root / "query").mkdir()
    n = len(scenes)
    annotations: list[dict[str, Any]] = []
    queries: list[dict[str, Any]] = []
    meta: dict[str, dict[str, Any]] = {}
    for scene in scenes:
        render(scene).save(root / IMAGE_DIR / scene.image)
        annotations.append(
            {"id": scene.id, "type": amber.GENERATIVE, "truth": scene.present(), "hallu": scene.absent()}
        )
        queries.append({"id": scene.id, "image": scene.image, "query": GENERATIVE_QUERY})
        meta[str(scene.id)] = {"image": scene.image, "prior": scene.probe, "label": scene.label, "role": "generative"}
    next_id = n + 1
    for k, scene in enumerate(scenes):
        for q in eval_questions(scene, k, config):
            annotations.append({"id": next_id, "type": q.type, "truth": q.truth})
            queries.append({"id": next_id, "image": scene.image, "query": q.query})
            meta[str(next_id)] = {
                "image": scene.image,
                "prior": scene.probe,
                "label": scene.label,
                "role": q.role,
                "topic": q.topic,
            }
            next_id += 1
    toy.write_amber_files(root, queries, annotations)
    (root / SCENES_FILE).write_text(
        json.dumps({"generator": GENERATOR, "scenes": [s.to_record() for s in scenes]}, indent=1), encoding="utf-8"
    )
    (root / META_FILE).write_text(
        json.dumps({"generator": GENERATOR, "kind": "amber", "samples": meta}, indent=1), encoding="utf-8"
    )
    _write_config(root, config)


#: synonyms_refine.txt of the lab: each shape (the COCO "class") and the words that name it too.
def synonyms_lines() -> list[str]:
    return [", ".join([shape, *toy.ASSOCIATED[shape]]) for shape in SHAPES]


CATEGORY_IDS = {shape: k + 1 for k, shape in enumerate(SHAPES)}


def _write_objhal(root: Path, config: LabConfig) -> None:
    scenes = eval_scenes(config, "objhal")
    coco = root / COCO_DIR
    coco.mkdir(parents=True)
    categories = [{"id": i, "name": s, "supercategory": "shape"} for s, i in CATEGORY_IDS.items()]
    images = [{"id": s.id, "file_name": s.image, "width": IMAGE_SIZE, "height": IMAGE_SIZE} for s in scenes]
    instances, captions_ = [], []
    lines = []
    meta: dict[str, dict[str, Any]] = {}
    for s in scenes:
        for o in s.objects:
            left, top, right, bottom = o.box
            instances.append(
                {
                    "id": len(instances) + 1,
                    "image_id": s.id,
                    "category_id": CATEGORY_IDS[o.shape],
                    "bbox": [left, top, right - left, bottom - top],
                    "area": (right - left) * (bottom - top),
                    "iscrowd": 0,
                }
            )
        captions_.append({"id": len(captions_) + 1, "image_id": s.id, "caption": caption(s)})
        lines.append(
            json.dumps(
                {"image_id": s.id, "question": OBJHAL_QUERY, "image": base64.b64encode(png_bytes(s)).decode("ascii")}
            )
        )
        meta[str(s.id)] = {"image": s.image, "prior": s.probe, "label": s.label}
    info = {"description": "lab Object HalBench (tasks.lab)", "version": str(FORMAT_VERSION)}
    files = {
        INSTANCE_FILES[0]: {"info": info, "images": images, "annotations": instances, "categories": categories},
        INSTANCE_FILES[1]: {"info": info, "images": [], "annotations": [], "categories": categories},
        CAPTION_FILES[0]: {"info": info, "images": images, "annotations": captions_},
        CAPTION_FILES[1]: {"info": info, "images": [], "annotations": []},
    }
    for name, data in files.items():
        (coco / name).write_text(json.dumps(data), encoding="utf-8")
    (root / QUESTION_FILE).write_text("\n".join(lines) + "\n", encoding="utf-8")
    (root / SYNONYMS_FILE).write_text("\n".join(synonyms_lines()) + "\n", encoding="utf-8")
    (root / SCENES_FILE).write_text(
        json.dumps({"generator": GENERATOR, "scenes": [s.to_record() for s in scenes]}, indent=1), encoding="utf-8"
    )
    (root / META_FILE).write_text(
        json.dumps({"generator": GENERATOR, "kind": "objhal", "samples": meta}, indent=1), encoding="utf-8"
    )
    _write_config(root, config)


_WRITERS = {"amber": _write_amber, "objhal": _write_objhal}


def register_writer(kind: str, writer: Callable[[Path, LabConfig], None]) -> None:
    """Add a lab benchmark ``kind`` to :func:`generate_lab_benchmark` (``writer(root, config)`` fills the new folder
    ``root`` and ends with :func:`write_config`)."""
    _WRITERS[kind] = writer


def write_config(root: Path, config: LabConfig) -> None:
    """Record the settings a lab folder was generated with (the stamp :func:`generate_lab_benchmark` checks)."""
    _write_config(root, config)


def _stamp(root: Path) -> dict[str, Any] | None:
    return toy.read_stamp(root / CONFIG_FILE, GENERATOR)


def generate_lab_benchmark(out_dir: str | Path, kind: str = "amber", config: LabConfig | None = None) -> Path:
    """Write the lab benchmark ``kind`` (``amber``: ``lab_amber``'s files; ``objhal``: ``lab_objhal``'s; ``mmhal``:
    ``lab_mmhal``'s, :mod:`tasks.lab_mmhal`) into
    ``out_dir`` and return it. Atomic and idempotent as :func:`tasks.toy.generate_toy_amber`: a folder that holds
    the same benchmark is left as is, one of other settings is replaced, anything else is refused."""
    if kind not in _WRITERS:
        raise ConfigError(f"unknown lab benchmark {kind!r}; expected one of {', '.join(_WRITERS)}")
    config = config or LabConfig()
    want = {"generator": GENERATOR, "format": FORMAT_VERSION, **config.to_dict()}

    def complete(root: Path) -> bool:
        return _stamp(root) == want and (root / META_FILE).is_file() and read_json(root / META_FILE).get("kind") == kind

    return toy.write_folder(
        Path(out_dir),
        lambda root: _WRITERS[kind](root, config),
        complete=complete,
        stamp=_stamp,
        what="a lab dataset",
        recheck=False,
    )


def default_root(kind: str, config: LabConfig | None = None) -> Path:
    """The cached lab benchmark of the default settings: ``<cache>/data/lab-v1-<settings hash>/<kind>``."""
    config = config or LabConfig()
    return generate_lab_benchmark(
        cache_dir() / "data" / f"{GENERATOR}-v{FORMAT_VERSION}-{config.digest()}" / kind, kind, config
    )


def read_meta(root: str | Path) -> dict[str, dict[str, Any]]:
    """Per-sample labels (``{sample id: {"prior", "label", "role", ...}}``) of a lab benchmark folder."""
    path = Path(root) / META_FILE
    if not path.is_file():
        raise MissingDataFile(path, DATA_SOURCE)
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("samples"), dict):
        raise DataError('expected {"samples": {id: labels}}', path=path)
    return data["samples"]


def read_scenes(root: str | Path) -> list[LabScene]:
    path = Path(root) / SCENES_FILE
    if not path.is_file():
        raise MissingDataFile(path, DATA_SOURCE)
    try:
        return [LabScene.from_record(r) for r in read_json(path)["scenes"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"malformed scene record ({exc!r})", path=path) from exc


# --- the breakdown ---------------------------------------------------------------------------------------------------


def _group_records(
    records: Iterable[Mapping[str, Any]],
    meta: Mapping[str, Mapping[str, Any]],
    key: Callable[[Mapping[str, Any]], Iterable[str]],
) -> dict[str, list[Mapping[str, Any]]]:
    out: dict[str, list[Mapping[str, Any]]] = {}
    for rec in records:
        m = meta.get(str(rec["id"]))
        if m is None:
            continue
        for name in key(m):
            out.setdefault(name, []).append(rec)
    return out


def amber_numbers(records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """AMBER's numbers over a subset of per-sample records (as :meth:`tasks.amber.Amber.score` writes them), with
    the official formulas and rounding (every denominator starts at 0.001, as ``metrics.txt``): CHAIR, Cover, Hal
    and Cog from the generative records; Accuracy, Precision, Recall, F1 ("No" positive) and the error rate
    (100 - Accuracy) from the yes/no records; the counts of each."""
    gen = [r for r in records if r.get("kind") == "generative"]
    disc = [r for r in records if r.get("kind") == "discriminative"]
    out: dict[str, float] = {}
    if gen:
        out["CHAIR"] = _pct(sum(len(r["hallucinated"]) for r in gen), 0.001 + sum(len(r["mentions"]) for r in gen))
        out["Cover"] = _pct(sum(len(r["covered"]) for r in gen), 0.001 + sum(len(r["truth"]) for r in gen))
        out["Hal"] = round(100 - sum(not r["hallucinated"] for r in gen) / (0.001 + len(gen)) * 100, 1)
        out["Cog"] = _pct(sum(len(r["hallu_mentioned"]) for r in gen), 0.001 + sum(len(r["hallu"]) for r in gen))
        out["responses"] = len(gen)
    if disc:
        correct = sum(bool(r["correct"]) for r in disc)
        ans_no = sum(r["answer"] == "No" for r in disc)
        ans_no_right = sum(r["answer"] == "No" and r["truth"] == "no" for r in disc)
        truth_no = sum(r["truth"] == "no" for r in disc)
        accuracy = _pct(correct, 0.001 + len(disc))
        precision = _pct(ans_no_right, 0.001 + ans_no)
        recall = _pct(ans_no_right, 0.001 + truth_no)
        out.update(
            Accuracy=accuracy,
            Precision=precision,
            Recall=recall,
            F1=_f1(precision, recall, 0.0001),
            error=round(100 - correct / (0.001 + len(disc)) * 100, 1),
            questions=len(disc),
        )
    return out


def objhal_numbers(records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Object HalBench's printed numbers (:func:`tasks.object_halbench.printed_numbers`: CHAIRs, CHAIRi, Response
    Hall, Object Hall, Object Recall, Average Length) over a subset of per-answer records of its scorer."""
    scored = [r for r in records if r.get("status") == "scored"]
    n = len(scored)
    coco = [r for r in scored if r["mentioned"]]
    halluc_caps = sum(bool(r["hallucinated"]) for r in scored)
    mentions = sum(len(r["mentioned"]) for r in scored)
    halluc_words = sum(len(r["hallucinated"]) for r in scored)
    correct_classes = sum(len({p[-1] for p in r["mentioned"] if p[-1] in set(r["gt_objects"])}) for r in scored)
    gt = sum(len(r["gt_objects"]) for r in scored)

    def div(a: float, b: float) -> float | None:
        return a / b if b else None

    chair_s_refine = div(halluc_caps, len(coco))
    chair_i = div(halluc_words, mentions)
    overall = {
        "CHAIRs": div(halluc_caps, n),
        "CHAIRs_refine": chair_s_refine,
        "CHAIRi": chair_i,
        "obj_rec": div(correct_classes, gt),
        "sentence_num": n,
        "coco_sentence_num": len(coco),
        "coco_word_count": correct_classes,
        "gt_word_count": gt,
        "avg_word_len": div(sum(len(r["caption"].strip().split(" ")) for r in scored), n),
        "correct_rate": None if chair_s_refine is None else 1 - chair_s_refine,
        "object_correct_rate": None if chair_i is None else 1 - chair_i,
    }
    row, summary = printed_numbers(overall)
    out = {
        "CHAIRs": row["CHAIRs"],
        "CHAIRi": row["CHAIRi"],
        "Response Hall": summary["Response Hall"],
        "Object Hall": summary["Object Hall"],
        "Object Recall": summary["Object Recall"],
        "Average Length": summary["Average Length"],
        "responses": n,
    }
    return {k: v for k, v in out.items() if v is not None}


def _gap(breakdown: Mapping[str, Mapping[str, float]], a: str, b: str) -> dict[str, float]:
    x, y = breakdown.get(a, {}), breakdown.get(b, {})
    return {k: round(y[k] - x[k], 2) for k in x if k in y and k not in ("responses", "questions")}


def prior_breakdown(
    records: Sequence[Mapping[str, Any]],
    meta: Mapping[str, Mapping[str, Any]],
    numbers: Callable[[Sequence[Mapping[str, Any]]], dict[str, float]],
) -> dict[str, dict[str, float]]:
    """The consistent/conflicting breakdown of per-sample ``records`` (labels from ``meta``, the benchmark's
    ``lab_meta.json``), each group's numbers computed by ``numbers`` (:func:`amber_numbers`,
    :func:`objhal_numbers`):

    - ``consistent`` / ``conflicting``: every sample of the prior-consistent / prior-conflicting images;
    - ``probe:consistent`` / ``probe:conflicting``: only the probe questions (yes/no) of those images;
    - ``gap`` and ``probe:gap``: conflicting minus consistent, per number;
    - ``<prior>:consistent`` / ``<prior>:conflicting``: the images probing one prior (all their samples), and
      ``<prior>:probe:<label>``: their probe questions.
    """
    out: dict[str, dict[str, float]] = {}

    def by_label(m: Mapping[str, Any]) -> list[str]:
        label, prior = m.get("label"), m.get("prior")
        names = [str(label), f"{prior}:{label}"]
        if m.get("role") == "probe":
            names += [f"probe:{label}", f"{prior}:probe:{label}"]
        return names

    groups = _group_records(records, meta, by_label)
    order = ["consistent", "conflicting", "probe:consistent", "probe:conflicting"]
    order += [f"{p}:{part}{label}" for p in PRIORS for part in ("", "probe:") for label in LABELS]
    for name in order:
        if name in groups:
            out[name] = numbers(groups[name])
    if "consistent" in out and "conflicting" in out:
        out["gap"] = _gap(out, "consistent", "conflicting")
    if "probe:consistent" in out and "probe:conflicting" in out:
        out["probe:gap"] = _gap(out, "probe:consistent", "probe:conflicting")
    return out


def tag_records(records: Iterable[dict[str, Any]], meta: Mapping[str, Mapping[str, Any]]) -> None:
    """Add the lab's labels to per-sample ``records`` in place (``scores.jsonl``), so intervals and paired tests can
    take the prior-consistent / prior-conflicting split: ``lab_label`` (consistent or conflicting), ``lab_prior``
    (the probed prior) and ``lab_probe`` (whether the sample is one of the probe questions)."""
    for rec in records:
        m = meta.get(str(rec.get("id")))
        if m is not None:
            rec["lab_label"] = m.get("label")
            rec["lab_prior"] = m.get("prior")
            rec["lab_probe"] = m.get("role") == "probe"


def _lab_headline(
    breakdown: Mapping[str, Mapping[str, float]], keys: Mapping[str, tuple[str, str]]
) -> dict[str, float]:
    out = {}
    for name, (group, number) in keys.items():
        value = breakdown.get(group, {}).get(number)
        if value is not None:
            out[name] = value
    return out


# --- the tasks -------------------------------------------------------------------------------------------------------


class _LabTask:
    """Shared by the lab tasks: the default data root (generated on first use) and the lab breakdown."""

    lab_kind: str

    def default_data_root(self) -> Path:  # type: ignore[override]
        return default_root(self.lab_kind)

    def lab_meta(self) -> dict[str, dict[str, Any]]:
        cached = getattr(self, "_lab_meta", None)
        if cached is None:
            cached = read_meta(self.data_root)  # type: ignore[attr-defined]
            self._lab_meta = cached
        return cached

    def with_lab_breakdown(
        self,
        metrics: Metrics,
        numbers: Callable[[Sequence[Mapping[str, Any]]], dict[str, float]],
        headline: Sequence[tuple[str, str, str]],
        note: str,
    ) -> Metrics:
        """``metrics`` with the lab breakdown of its records (:func:`prior_breakdown`, each group's ``numbers``) under
        ``lab/*``, the records tagged (:func:`tag_records`) and ``note`` added. Each ``(title, part, number)`` of
        ``headline`` adds ``<title> (conflicting)`` and ``<title> (consistent)``: ``number`` of the groups
        ``<part>conflicting`` and ``<part>consistent``."""
        lab = prior_breakdown(metrics.records, self.lab_meta(), numbers)
        tag_records(metrics.records, self.lab_meta())
        metrics.breakdown.update({f"lab/{k}": v for k, v in lab.items()})
        keys = {
            f"{title} ({label})": (f"{part}{label}", number)
            for title, part, number in headline
            for label in ("conflicting", "consistent")
        }
        metrics.headline.update(_lab_headline(lab, keys))
        metrics.notes.append(note)
        return metrics


@register_task
class LabAmber(_LabTask, toy.GeneratedAmber):
    """The lab's AMBER: images of the evaluation world (balanced prior-consistent / prior-conflicting) in AMBER's
    format, a description and four yes/no questions each, scored by AMBER's official scorer
    (:class:`tasks.amber.AmberScorer`, word similarity ``none``), plus the breakdown of :func:`prior_breakdown`.

    Headline: AMBER's numbers, and ``CHAIR (conflicting)``, ``CHAIR (consistent)``, ``Hal (conflicting)``,
    ``Hal (consistent)``, ``Yes/No error (conflicting)`` and ``Yes/No error (consistent)`` (probe questions only).
    """

    name = "lab_amber"
    version = "1"
    description = (
        "Lab AMBER: shapes with planted priors, balanced prior-consistent/conflicting images; AMBER's "
        "scorer plus the conflict breakdown"
    )
    data_files = tuple(
        DataFile(rel, DATA_SOURCE)
        for rel in (
            "annotations.json",
            "relation.json",
            "safe_words.txt",
            "metrics.txt",
            amber.QUERY_FILES["all"],
            META_FILE,
        )
    )
    default_max_new_tokens = GENERATIVE_MAX_NEW_TOKENS
    discriminative_max_new_tokens = DISCRIMINATIVE_MAX_NEW_TOKENS
    image_dir = IMAGE_DIR
    lab_kind = "amber"

    def score(self, samples: Sequence[Sample], responses: Mapping[str, Response], judge: Any = None) -> Metrics:
        return self.with_lab_breakdown(
            super().score(samples, responses, judge),
            amber_numbers,
            [("CHAIR", "", "CHAIR"), ("Hal", "", "Hal"), ("Yes/No error", "probe:", "error")],
            "lab breakdown (breakdown lab/*): images labelled prior-consistent or prior-conflicting "
            "(tasks.lab); probe = the two questions about the probed prior",
        )


@register_task
class LabObjectHalBench(_LabTask, ObjectHalBench):
    """The lab's Object HalBench: evaluation-world images that each show a triangle, with a star (prior-consistent)
    or without (prior-conflicting), in Object HalBench's layout (question file, synonyms, COCO-format annotations),
    scored by the official CHAIR code (:class:`tasks.object_halbench.ObjectHalBench`), plus the breakdown of
    :func:`prior_breakdown`. Headline adds ``CHAIRi (conflicting)``, ``CHAIRi (consistent)``, ``CHAIRs
    (conflicting)`` and ``CHAIRs (consistent)``."""

    name = "lab_objhal"
    version = "1"
    description = (
        "Lab Object HalBench: triangles with or without their co-occurring star; official CHAIR plus "
        "the conflict breakdown"
    )
    data_files = (
        *(DataFile(f.relpath, DATA_SOURCE) for f in ObjectHalBench.data_files),
        DataFile(META_FILE, DATA_SOURCE),
    )
    default_max_new_tokens = OBJHAL_MAX_NEW_TOKENS
    default_judge_model = None
    lab_kind = "objhal"

    def _required(self) -> list[tuple[Path, str]]:
        return [(path, DATA_SOURCE) for path, _ in super()._required()] + [(self.data_root / META_FILE, DATA_SOURCE)]

    def load_samples(self) -> list[Sample]:
        return [dataclasses.replace(s, max_new_tokens=OBJHAL_MAX_NEW_TOKENS) for s in super().load_samples()]

    def _metrics(self, result: Any, judge: Any, extra_notes: Sequence[str]) -> Metrics:
        return self.with_lab_breakdown(
            super()._metrics(result, judge, extra_notes),
            objhal_numbers,
            [("CHAIRi", "", "CHAIRi"), ("CHAIRs", "", "CHAIRs")],
            "lab breakdown (breakdown lab/*): triangle images with their star (prior-consistent) "
            "or without (prior-conflicting)",
        )


# --- the tokenizer's corpus ------------------------------------------------------------------------------------------


def corpus() -> list[str]:
    """Sentences that use every word of the lab world: the llava_v1 template, queries, answers, every noun phrase,
    question and relation sentence, and the vocabulary files. Deterministic; no duplicates."""
    out: list[str] = [*toy.LLAVA_TEMPLATE, GENERATIVE_QUERY, OBJHAL_QUERY, "Yes", "No", "There is", "There are", "and"]
    for shape in SHAPES:
        out.append(existence_query(shape))
        for n in NUMBER_WORDS:
            out.append(number_query(shape, n))
        for value in [*COLOURS, *SIZES, *STATES]:
            out.append(attribute_query(shape, value))
        for size in SIZES:
            for state in STATES:
                for colour in COLOURS:
                    for n in NUMBER_WORDS:
                        out.append(noun_phrase(LabGroup(shape, colour, size, state, tuple(range(n)))) + ",")
        for word in toy.ASSOCIATED[shape]:
            out.append(f"A {word} is a {shape}.")
        for other in SHAPES:
            if other != shape:
                for rel in RELATIONS:
                    out.append(relation_query(shape, rel, other))
                    out.append(f"The {shape} is {RELATIONS[rel]} the {other}.")
    out += [f"A {word} is an object." for word in toy.SAFE_WORDS]
    return list(dict.fromkeys(out))


# --- command line ----------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tasks.lab DIR --kind amber|objhal|sft|preferences [--set key=value ...]``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tasks.lab", description="write a lab dataset")
    parser.add_argument("output")
    parser.add_argument("--kind", choices=["amber", "objhal", "mmhal", "sft", "preferences"], default="amber")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a LabConfig setting (e.g. colour=0.8, n_pairs=200)",
    )
    args = parser.parse_args(argv)
    values: dict[str, Any] = {}
    for item in args.set:
        key, _, raw = item.partition("=")
        values[key] = json.loads(raw) if raw[:1] in "[{" or raw.replace(".", "", 1).lstrip("-").isdigit() else raw
    try:
        config = LabConfig.from_dict(values)
        if args.kind in ("amber", "objhal", "mmhal"):
            from tasks import lab as registered  # ``python -m tasks.lab``: the writers live in the imported module

            print(registered.generate_lab_benchmark(args.output, args.kind, config))
        elif args.kind == "sft":
            print(generate_lab_sft(args.output, config))
        else:
            print(generate_lab_preferences(args.output, config))
    except ConfigError as exc:
        print(f"error: {exc}")
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
