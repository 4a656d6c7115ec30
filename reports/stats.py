"""Statistics over the per-sample scoring records (``scores.jsonl``): bootstrap confidence intervals and paired tests.

These are statistics *about* a metric, never the metric itself: the value a report prints is always the one in
``metrics.json``; the records only give its sampling uncertainty.

- :func:`bootstrap_ci`: percentile bootstrap over samples (fixed seed, 1000 resamples by default, numpy only). A
  statistic is a per-sample mean (AMBER discriminative accuracy from each record's ``correct``, POPE accuracy, the
  share of hallucinating responses) or a ratio of per-sample sums (CHAIR-type rates: hallucinated mentions over
  mentions), or an F1 computed from resampled answers.
- :func:`mcnemar_exact`: McNemar's exact (binomial) test on paired binary outcomes of two runs on the same samples,
  e.g. AMBER discriminative answers right/wrong. Two-sided ``p = min(1, 2 * P[X <= min(b, c)])`` with
  ``X ~ Binomial(b + c, 1/2)``, computed exactly with integers.

:data:`SAMPLE_STATS` says which metric of which task has a CI and how it is computed from the records;
:data:`PAIRED_OUTCOMES` which binary outcome of which task gets a paired test.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from harness.errors import DataError
from harness.io import iter_jsonl

Columns = Mapping[str, np.ndarray]
#: A statistic over resampled columns: every array has shape (resamples, n); the result has shape (resamples,).
Statistic = Callable[[Columns], np.ndarray]

DEFAULT_RESAMPLES = 1000
DEFAULT_SEED = 0
DEFAULT_LEVEL = 0.95


# --------------------------------------------------------------------------------------------------- statistics
def mean_of(column: str) -> Statistic:
    """The mean of ``column`` (e.g. accuracy from 0/1 correctness)."""
    return lambda c: c[column].mean(axis=-1)


def ratio_of(numerator: str, denominator: str) -> Statistic:
    """``sum(numerator) / sum(denominator)`` (e.g. CHAIR: hallucinated mentions / mentions); NaN when 0/0."""

    def stat(c: Columns) -> np.ndarray:
        den = c[denominator].sum(axis=-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, c[numerator].sum(axis=-1) / np.where(den > 0, den, 1), np.nan)

    return stat


def f1_of(predicted: str, actual: str) -> Statistic:
    """F1 of the positive class from 0/1 columns ``predicted`` and ``actual``; 0 when undefined."""

    def stat(c: Columns) -> np.ndarray:
        tp = (c[predicted] * c[actual]).sum(axis=-1)
        pp = c[predicted].sum(axis=-1)
        ap = c[actual].sum(axis=-1)
        den = pp + ap
        return np.where(den > 0, 2 * tp / np.where(den > 0, den, 1), 0.0)

    return stat


@dataclass(frozen=True)
class CI:
    """A percentile bootstrap interval ``[low, high]`` of a statistic over ``n`` samples."""

    low: float
    high: float
    estimate: float  # the statistic on the samples as given (for checks; reports print metrics.json's value)
    n: int
    resamples: int
    level: float
    seed: int


def bootstrap_ci(
    data: Columns | Sequence[float] | np.ndarray,
    statistic: Statistic | None = None,
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    level: float = DEFAULT_LEVEL,
    scale: float = 1.0,
    chunk: int = 0,
) -> CI | None:
    """Percentile bootstrap CI of ``statistic`` over the samples (the rows of ``data``), times ``scale``.

    ``data`` is a mapping of equally long 1-D columns, or one sequence (then ``statistic`` defaults to its mean).
    Resampling is with replacement, ``n_resamples`` times, from ``numpy.random.default_rng(seed)``: the same
    input gives the same interval. Resamples where the statistic is undefined (NaN) are dropped. None when there
    are no samples.
    """
    if not isinstance(data, Mapping):
        data = {"x": np.asarray(data, dtype=float)}
        statistic = statistic or mean_of("x")
    if statistic is None:
        raise ValueError("bootstrap_ci needs a statistic for a mapping of columns")
    cols = {k: np.asarray(v, dtype=float) for k, v in data.items()}
    lengths = {len(v) for v in cols.values()}
    if len(lengths) != 1:
        raise ValueError(f"columns of different lengths: {sorted(lengths)}")
    n = lengths.pop()
    if n == 0:
        return None
    rng = np.random.default_rng(seed)
    # chunks keep the (resamples x n) index matrix small for large benchmarks (AMBER: 14,216 questions)
    chunk = chunk or max(1, min(n_resamples, 4_000_000 // n))
    stats: list[np.ndarray] = []
    done = 0
    while done < n_resamples:
        b = min(chunk, n_resamples - done)
        idx = rng.integers(0, n, size=(b, n))
        stats.append(np.asarray(statistic({k: v[idx] for k, v in cols.items()}), dtype=float))
        done += b
    values = np.concatenate(stats)
    values = values[~np.isnan(values)]
    estimate = float(np.asarray(statistic({k: v[None, :] for k, v in cols.items()}))[0]) * scale
    if values.size == 0:
        return None
    alpha = (1 - level) / 2
    low, high = np.quantile(values, [alpha, 1 - alpha])
    return CI(
        low=float(low) * scale,
        high=float(high) * scale,
        estimate=estimate,
        n=n,
        resamples=n_resamples,
        level=level,
        seed=seed,
    )


# --------------------------------------------------------------------------------------------------- seeds
#: Student's t quantile 0.975 for 1..30 degrees of freedom (two-sided 95%); 1.96 beyond.
_T975 = (
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
)


def seed_interval(values: Sequence[float]) -> tuple[float, float] | None:
    """Mean and half-width of the 95% t-interval of ``values`` (one per seed); None for fewer than two."""
    n = len(values)
    if n < 2:
        return None
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    t = _T975[n - 2] if n - 1 <= len(_T975) else 1.96
    return mean, t * sd / math.sqrt(n)


# --------------------------------------------------------------------------------------------------- McNemar
@dataclass(frozen=True)
class McNemar:
    """McNemar's exact test on paired binary outcomes of runs A and B over ``n`` samples."""

    n: int
    both: int  # outcome true for A and B
    only_a: int  # true for A only (b)
    only_b: int  # true for B only (c)
    neither: int
    p_value: float

    @property
    def rate_a(self) -> float:
        return (self.both + self.only_a) / self.n if self.n else math.nan

    @property
    def rate_b(self) -> float:
        return (self.both + self.only_b) / self.n if self.n else math.nan


def binomial_two_sided_p(k: int, n: int) -> float:
    """Exact two-sided p-value of ``k`` successes in ``n`` fair coin flips: ``min(1, 2 * P[X <= min(k, n-k)])``."""
    if n == 0:
        return 1.0
    k = min(k, n - k)
    tail = 0
    term = 1  # C(n, 0)
    for i in range(k + 1):
        tail += term
        term = term * (n - i) // (i + 1)
    return min(1.0, float(Fraction(2 * tail, 2**n)))


def mcnemar_exact(a: Sequence[bool], b: Sequence[bool]) -> McNemar:
    """McNemar's exact test of paired outcomes ``a[i]``, ``b[i]`` (e.g. run A / run B answered sample i right)."""
    if len(a) != len(b):
        raise ValueError(f"paired outcomes of different lengths: {len(a)} and {len(b)}")
    both = sum(1 for x, y in zip(a, b) if x and y)
    only_a = sum(1 for x, y in zip(a, b) if x and not y)
    only_b = sum(1 for x, y in zip(a, b) if y and not x)
    neither = len(a) - both - only_a - only_b
    return McNemar(
        n=len(a),
        both=both,
        only_a=only_a,
        only_b=only_b,
        neither=neither,
        p_value=binomial_two_sided_p(only_a, only_a + only_b),
    )


# --------------------------------------------------------------------------------------------------- per task
Extractor = Callable[[Sequence[Mapping[str, Any]]], dict[str, np.ndarray]]


@dataclass(frozen=True)
class SampleStat:
    """How the CI of a task's headline ``metric`` is computed from its ``scores.jsonl`` records."""

    metric: str
    description: str
    extract: Extractor
    statistic: Statistic
    scale: float = 1.0


def _cols(
    records: Iterable[Mapping[str, Any]], **getters: Callable[[Mapping[str, Any]], float]
) -> dict[str, np.ndarray]:
    recs = list(records)
    return {name: np.array([float(g(r)) for r in recs], dtype=float) for name, g in getters.items()}


def _amber_disc(records: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [r for r in records if r.get("kind") == "discriminative" and "correct" in r]


def _amber_gen(records: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [r for r in records if r.get("kind") == "generative" and "mentions" in r]


def _objhal_scored(records: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [r for r in records if r.get("status") == "scored"]


def _mmhal_rated(records: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [r for r in records if r.get("rating") is not None]


def _pope(records: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [r for r in records if "correct" in r and "answer" in r]


_AMBER_STATS: tuple[SampleStat, ...] = (
    SampleStat(
        "Accuracy",
        "mean of the discriminative records' correct",
        lambda rs: _cols(_amber_disc(rs), x=lambda r: bool(r["correct"])),
        mean_of("x"),
        100.0,
    ),
    SampleStat(
        "F1",
        "F1 of answer 'No' against truth 'no' (unrounded P and R)",
        lambda rs: _cols(_amber_disc(rs), p=lambda r: r.get("answer") == "No", t=lambda r: r.get("truth") == "no"),
        f1_of("p", "t"),
        100.0,
    ),
    SampleStat(
        "CHAIR",
        "hallucinated mentions / kept mentions",
        lambda rs: _cols(_amber_gen(rs), h=lambda r: len(r["hallucinated"]), m=lambda r: len(r["mentions"])),
        ratio_of("h", "m"),
        100.0,
    ),
    SampleStat(
        "Cover",
        "covered truth objects / truth objects",
        lambda rs: _cols(_amber_gen(rs), c=lambda r: len(r["covered"]), t=lambda r: len(r["truth"])),
        ratio_of("c", "t"),
        100.0,
    ),
    SampleStat(
        "Hal",
        "share of descriptions with a hallucinated mention",
        lambda rs: _cols(_amber_gen(rs), x=lambda r: len(r["hallucinated"]) > 0),
        mean_of("x"),
        100.0,
    ),
    SampleStat(
        "Cog",
        "mentioned hallucination-list objects / hallucination-list objects",
        lambda rs: _cols(_amber_gen(rs), c=lambda r: len(r["hallu_mentioned"]), t=lambda r: len(r["hallu"])),
        ratio_of("c", "t"),
        100.0,
    ),
)
_POPE_STATS: tuple[SampleStat, ...] = (
    SampleStat(
        "Accuracy",
        "mean of the records' correct",
        lambda rs: _cols(_pope(rs), x=lambda r: bool(r["correct"])),
        mean_of("x"),
    ),
    SampleStat(
        "F1",
        "F1 of answer yes against label yes",
        lambda rs: _cols(_pope(rs), p=lambda r: r["answer"] == "yes", t=lambda r: r.get("label") == "yes"),
        f1_of("p", "t"),
    ),
)
_OBJHAL_STATS: tuple[SampleStat, ...] = (
    SampleStat(
        "CHAIRs",
        "share of responses with a hallucinated object",
        lambda rs: _cols(_objhal_scored(rs), x=lambda r: r["CHAIRs"]),
        mean_of("x"),
        100.0,
    ),
    SampleStat(
        "CHAIRi",
        "hallucinated mentions / COCO mentions",
        lambda rs: _cols(_objhal_scored(rs), h=lambda r: len(r["hallucinated"]), m=lambda r: len(r["mentioned"])),
        ratio_of("h", "m"),
        100.0,
    ),
)
_MMHAL_STATS: tuple[SampleStat, ...] = (
    SampleStat("Score", "mean judge rating", lambda rs: _cols(_mmhal_rated(rs), x=lambda r: r["rating"]), mean_of("x")),
    SampleStat(
        "HalRate",
        "share of ratings below 3",
        lambda rs: _cols(_mmhal_rated(rs), x=lambda r: bool(r["hallucination"])),
        mean_of("x"),
    ),
)


def _lab_probe(label: str) -> Callable[[Sequence[Mapping[str, Any]]], list[Mapping[str, Any]]]:
    return lambda rs: [r for r in _amber_disc(rs) if r.get("lab_probe") and r.get("lab_label") == label]


def _lab_objhal(label: str) -> Callable[[Sequence[Mapping[str, Any]]], list[Mapping[str, Any]]]:
    return lambda rs: [r for r in _objhal_scored(rs) if r.get("lab_label") == label]


# The laboratory's tasks (tasks.lab) write AMBER's and Object HalBench's records, tagged lab_label / lab_probe.
_LAB_AMBER_STATS: tuple[SampleStat, ...] = (
    *_AMBER_STATS,
    *(
        SampleStat(
            f"Yes/No error ({label})",
            f"share of wrong probe answers on prior-{label} images",
            lambda rs, sel=_lab_probe(label): _cols(sel(rs), x=lambda r: not r["correct"]),  # noqa: B008 (binds label)
            mean_of("x"),
            100.0,
        )
        for label in ("conflicting", "consistent")
    ),
)
_LAB_OBJHAL_STATS: tuple[SampleStat, ...] = (
    *_OBJHAL_STATS,
    *(
        SampleStat(
            f"CHAIRs ({label})",
            f"share of responses with a hallucinated object, prior-{label} images",
            lambda rs, sel=_lab_objhal(label): _cols(sel(rs), x=lambda r: r["CHAIRs"]),  # noqa: B008 (binds label)
            mean_of("x"),
            100.0,
        )
        for label in ("conflicting", "consistent")
    ),
)

#: Task name -> the metrics whose CI the records allow (on the scale of the task's headline numbers).
SAMPLE_STATS: dict[str, tuple[SampleStat, ...]] = {
    **{t: _AMBER_STATS for t in ("amber", "amber_g", "amber_d", "toy_amber")},
    **{t: _POPE_STATS for t in ("pope", "pope_random", "pope_popular", "pope_adversarial")},
    "object_halbench": _OBJHAL_STATS,
    "mmhal": _MMHAL_STATS,
    "lab_amber": _LAB_AMBER_STATS,
    "lab_objhal": _LAB_OBJHAL_STATS,
}


@dataclass(frozen=True)
class PairedOutcome:
    """A binary per-sample outcome a paired test compares (``outcome(record)`` is None for records it skips)."""

    name: str
    outcome: Callable[[Mapping[str, Any]], bool | None]


def _when(cond: Callable[[Mapping[str, Any]], bool], value: Callable[[Mapping[str, Any]], bool]):
    return lambda r: value(r) if cond(r) else None


_AMBER_OUTCOMES = (
    PairedOutcome(
        "discriminative answer correct",
        _when(lambda r: r.get("kind") == "discriminative" and "correct" in r, lambda r: bool(r["correct"])),
    ),
    PairedOutcome(
        "description without hallucination",
        _when(lambda r: r.get("kind") == "generative" and "hallucinated" in r, lambda r: len(r["hallucinated"]) == 0),
    ),
)
#: Task name -> the binary outcomes McNemar's test compares between two runs.
PAIRED_OUTCOMES: dict[str, tuple[PairedOutcome, ...]] = {
    **{t: _AMBER_OUTCOMES for t in ("amber", "amber_g", "amber_d", "toy_amber")},
    **{
        t: (PairedOutcome("answer correct", _when(lambda r: "correct" in r, lambda r: bool(r["correct"]))),)
        for t in ("pope", "pope_random", "pope_popular", "pope_adversarial")
    },
    "object_halbench": (
        PairedOutcome(
            "response without hallucination", _when(lambda r: r.get("status") == "scored", lambda r: not r["CHAIRs"])
        ),
    ),
    "mmhal": (
        PairedOutcome(
            "rating >= 3 (no hallucination)",
            _when(lambda r: r.get("rating") is not None, lambda r: not r["hallucination"]),
        ),
    ),
    "lab_amber": (
        *_AMBER_OUTCOMES,
        *(
            PairedOutcome(
                f"probe answer correct, prior-{label} image",
                _when(
                    lambda r, label=label: (
                        r.get("kind") == "discriminative"
                        and "correct" in r
                        and bool(r.get("lab_probe"))
                        and r.get("lab_label") == label
                    ),
                    lambda r: bool(r["correct"]),
                ),
            )
            for label in ("conflicting", "consistent")
        ),
    ),
    "lab_objhal": (
        PairedOutcome(
            "response without hallucination", _when(lambda r: r.get("status") == "scored", lambda r: not r["CHAIRs"])
        ),
        *(
            PairedOutcome(
                f"response without hallucination, prior-{label} image",
                _when(
                    lambda r, label=label: r.get("status") == "scored" and r.get("lab_label") == label,
                    lambda r: not r["CHAIRs"],
                ),
            )
            for label in ("conflicting", "consistent")
        ),
    ),
}


class RecordsError(Exception):
    """``scores.jsonl`` is missing (``missing``) or unreadable."""

    def __init__(self, message: str, missing: bool = False):
        super().__init__(message)
        self.missing = missing


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of a ``scores.jsonl``; :class:`RecordsError` names the file (and line) when it cannot be read."""
    if not path.is_file():
        raise RecordsError(f"{path}: no per-sample records", missing=True)
    try:
        return [rec for _, rec in iter_jsonl(path)]
    except DataError as exc:
        raise RecordsError(str(exc)) from exc


def task_cis(
    task: str,
    records: Sequence[Mapping[str, Any]],
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    level: float = DEFAULT_LEVEL,
) -> dict[str, CI]:
    """The CIs the records of ``task`` allow, by metric name (metrics with no usable record are absent)."""
    out: dict[str, CI] = {}
    for stat in SAMPLE_STATS.get(task, ()):
        try:
            cols = stat.extract(records)
        except (KeyError, TypeError, ValueError):
            continue  # records without the fields this statistic needs
        ci = bootstrap_ci(cols, stat.statistic, n_resamples=n_resamples, seed=seed, level=level, scale=stat.scale)
        if ci is not None:
            out[stat.metric] = ci
    return out


def paired_outcomes(
    task: str, records_a: Sequence[Mapping[str, Any]], records_b: Sequence[Mapping[str, Any]]
) -> list[tuple[PairedOutcome, McNemar, int, int]]:
    """McNemar's test for each binary outcome of ``task`` over the sample ids both runs have.

    Returns ``(outcome, test, ids only in A, ids only in B)`` for each outcome with at least one common sample.
    """
    results = []
    for oc in PAIRED_OUTCOMES.get(task, ()):
        a = _by_id(records_a, oc)
        b = _by_id(records_b, oc)
        common = [i for i in a if i in b]
        if not common:
            continue
        test = mcnemar_exact([a[i] for i in common], [b[i] for i in common])
        results.append((oc, test, len(a) - len(common), len(b) - len(common)))
    return results


def _by_id(records: Sequence[Mapping[str, Any]], oc: PairedOutcome) -> dict[str, bool]:
    out: dict[str, bool] = {}
    for r in records:
        if "id" not in r:
            continue
        try:
            v = oc.outcome(r)
        except (KeyError, TypeError):
            v = None
        if v is not None:
            out[str(r["id"])] = bool(v)
    return out
