"""Preference losses as pure functions of per-row log-probabilities.

A training example is rendered as several *rows*: one image condition paired with one response. Conditions are
``"w"`` (the chosen image ``m_w``), ``"l"`` (the paired image ``m_l`` of a contrast record), ``"none"`` (the prompt
without any image: no placeholder and no pixels) and ``"rej"`` (a rejected image made from ``m_w`` by a strategy of
:mod:`trainers.data`, e.g. a random crop). Responses are ``"w"`` (``y_w``, grounded in ``m_w``) and ``"l"`` (``y_l``,
grounded in ``m_l``). A row is the pair ``(condition, response)``, e.g. ``("none", "w")``.

Every row gets a score ``s(m, y) = beta * (log pi_theta(y | x, m) - log pi_ref(y | x, m))`` (log-probabilities summed
over response tokens). The loss terms compare scores:

========== ======================================================================= ==========================
term       per-example loss                                                        mirror (when ``sym > 0``)
========== ======================================================================= ==========================
dpo        ``-log sigmoid(s(w, y_w) - s(w, y_l))``                                 --
sym        ``-log sigmoid(s(l, y_l) - s(l, y_w))``                                 --
image_cond ``-log sigmoid(s(w, y_w) - s(rej, y_w))``                               --
vrpo       ``PL([s(w, y_w), s(none, y_w), s(l, y_w)])``                            ``PL([s(l, y_l), s(none, y_l), s(w, y_l)])``
img_pair   ``-log sigmoid(s(w, y_w) - s(l, y_w))``                                 ``-log sigmoid(s(l, y_l) - s(w, y_l))``
none_pair  ``-log sigmoid(s(w, y_w) - s(none, y_w))``                              ``-log sigmoid(s(l, y_l) - s(none, y_l))``
sft        ``-log pi_theta(y_w | x, m_w) / n_tokens(y_w)``                         --
========== ======================================================================= ==========================

``PL`` is the Plackett-Luce negative log-likelihood of an ordering (:func:`plackett_luce_nll`). The image-ranking
terms (``vrpo``, ``img_pair``, ``none_pair``) also rank the images for ``y_l`` when the configuration is symmetric,
that is when the ``sym`` weight is positive: symmetry is one switch for the whole ``y_l`` side.

DPO, MPO (the JoMPO paper's image-conditional baseline, not TRL's "Mixed Preference Optimization"), JoMPO and the
paper's ablations are weight settings of these terms: see :data:`METHODS` and ``docs/methods.md``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from harness.errors import ConfigError

Row = tuple[str, str]
"""A ``(condition, response)`` pair, e.g. ``("w", "w")`` for ``y_w`` under ``m_w``."""

CONDITIONS: tuple[str, ...] = ("w", "l", "none", "rej")
RESPONSES: tuple[str, ...] = ("w", "l")
TERMS: tuple[str, ...] = ("dpo", "sym", "image_cond", "vrpo", "img_pair", "none_pair", "sft")
MIRRORED_TERMS: frozenset[str] = frozenset({"vrpo", "img_pair", "none_pair"})


# --------------------------------------------------------------------------------------------------------------------
# the two primitives


def dpo_loss(chosen: Tensor, rejected: Tensor) -> Tensor:
    """Elementwise Bradley-Terry loss ``-log sigmoid(chosen - rejected)`` of two scores ``s = beta * log-ratio``."""
    return -F.logsigmoid(chosen - rejected)


def plackett_luce_nll(scores: Tensor) -> Tensor:
    """Plackett-Luce negative log-likelihood of the ordering of ``scores[..., K]`` (best first), over the last axis.

    ``NLL = sum_k (logsumexp(scores[k:]) - scores[k])``. The tail log-sum-exps come from one reversed
    ``logcumsumexp``, so the result stays finite and exact for scores of any magnitude. With two items it equals
    :func:`dpo_loss`.
    """
    if scores.shape[-1] < 2:
        raise ValueError(f"a ranking needs at least 2 items, got shape {tuple(scores.shape)}")
    tail_lse = torch.logcumsumexp(scores.flip(-1), dim=-1).flip(-1)  # [..., k] = logsumexp(scores[..., k:])
    # the last position contributes logsumexp(s[K-1:]) - s[K-1] = 0 exactly; leave it out
    return (tail_lse[..., :-1] - scores[..., :-1]).sum(dim=-1)


# --------------------------------------------------------------------------------------------------------------------
# configuration


@dataclass(frozen=True)
class LossConfig:
    """Weights of the loss terms and the DPO temperature ``beta``; a method is one of these.

    The total loss is ``sum_t weight_t * mean_over_batch(term_t)``. The ``sym`` weight also switches on the ``y_l``
    side (mirror) of the image-ranking terms ``vrpo``, ``img_pair`` and ``none_pair``, each mirror with its term's
    weight. ``LossConfig()`` is plain DPO.
    """

    beta: float = 0.05
    dpo: float = 1.0
    sym: float = 0.0
    image_cond: float = 0.0
    vrpo: float = 0.0
    img_pair: float = 0.0
    none_pair: float = 0.0
    sft: float = 0.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.beta) and self.beta > 0):
            raise ConfigError(f"beta must be a positive number, got {self.beta!r}")
        for name in TERMS:
            w = getattr(self, name)
            if not (isinstance(w, (int, float)) and math.isfinite(w) and w >= 0):
                raise ConfigError(f"loss weight {name!r} must be a finite number >= 0, got {w!r}")
        if not self.terms:
            raise ConfigError("a loss configuration needs at least one term with a positive weight")

    @property
    def terms(self) -> tuple[str, ...]:
        """The enabled terms (positive weight), in :data:`TERMS` order."""
        return tuple(t for t in TERMS if getattr(self, t) > 0)

    @property
    def symmetric(self) -> bool:
        """Whether the ``y_l`` side is trained too: the ``sym`` term and the mirrors of the image-ranking terms."""
        return self.sym > 0

    def weight(self, term: str) -> float:
        if term not in TERMS:
            raise KeyError(f"unknown loss term {term!r}; terms: {', '.join(TERMS)}")
        return float(getattr(self, term))

    def to_dict(self) -> dict[str, float]:
        """Plain values, for manifests and logs."""
        return {k: float(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> LossConfig:
        """Build from a mapping (a YAML recipe); an unknown key raises :class:`ConfigError` naming it."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown loss option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        try:
            return cls(**{k: float(v) for k, v in values.items()})
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"invalid loss options {dict(values)!r}: {exc}") from exc


METHODS: dict[str, LossConfig] = {
    # baselines
    "dpo": LossConfig(dpo=1.0),
    "mpo": LossConfig(dpo=1.0, image_cond=1.0),
    # JoMPO: text DPO under m_w and (mirrored) under m_l, plus the 3-image ranking for y_w and y_l
    "jompo": LossConfig(dpo=1.0, sym=1.0, vrpo=1.0),
    # Table 2 ablations (definitions: docs/methods.md)
    "jompo_no_ranking": LossConfig(dpo=1.0, sym=1.0, img_pair=1.0),
    "jompo_no_symmetry": LossConfig(dpo=1.0, vrpo=1.0),
    "jompo_no_both": LossConfig(dpo=1.0, img_pair=1.0),
    "jompo_no_ranking_text": LossConfig(dpo=1.0, sym=1.0),
    "jompo_no_ranking_noimage": LossConfig(dpo=1.0, sym=1.0, none_pair=1.0),
}
"""Every preference method and ablation by name, with the paper's ``beta = 0.05``."""


def get_method(name: str, **overrides: float) -> LossConfig:
    """The configuration of method ``name`` (a key of :data:`METHODS`), with fields overridden (e.g. ``beta``)."""
    try:
        config = METHODS[name]
    except KeyError:
        raise ConfigError(f"unknown method {name!r}; methods: {', '.join(METHODS)}") from None
    try:
        return replace(config, **overrides) if overrides else config
    except TypeError as exc:
        raise ConfigError(f"invalid override for method {name!r}: {exc}") from exc


# --------------------------------------------------------------------------------------------------------------------
# which rows a configuration needs


def _term_rows(term: str, symmetric: bool) -> tuple[Row, ...]:
    rows: tuple[Row, ...]
    if term == "dpo":
        rows = (("w", "w"), ("w", "l"))
    elif term == "sym":
        rows = (("l", "l"), ("l", "w"))
    elif term == "image_cond":
        rows = (("w", "w"), ("rej", "w"))
    elif term == "vrpo":
        rows = (("w", "w"), ("none", "w"), ("l", "w"))
        if symmetric:
            rows += (("l", "l"), ("none", "l"), ("w", "l"))
    elif term == "img_pair":
        rows = (("w", "w"), ("l", "w"))
        if symmetric:
            rows += (("l", "l"), ("w", "l"))
    elif term == "none_pair":
        rows = (("w", "w"), ("none", "w"))
        if symmetric:
            rows += (("l", "l"), ("none", "l"))
    elif term == "sft":
        rows = (("w", "w"),)
    else:  # pragma: no cover - TERMS is closed
        raise KeyError(term)
    return rows


def _row_key(row: Row) -> tuple[int, int]:
    return CONDITIONS.index(row[0]), RESPONSES.index(row[1])


def required_rows(config: LossConfig) -> tuple[Row, ...]:
    """The unique ``(condition, response)`` rows the enabled terms read, in canonical order.

    The order is by condition (``w``, ``l``, ``none``, ``rej``), then response (``w``, ``l``). JoMPO needs 6 rows per
    example (``{w, l, none} x {y_w, y_l}``), DPO 2 and MPO 3 (``(w, w)``, ``(w, l)``, ``(rej, w)``).
    """
    needed: set[Row] = set()
    for term in config.terms:
        needed.update(_term_rows(term, config.symmetric))
    return tuple(sorted(needed, key=_row_key))


# --------------------------------------------------------------------------------------------------------------------
# the loss


def _fetch(values: Mapping[Row, Tensor], row: Row, what: str) -> Tensor:
    try:
        t = values[row]
    except KeyError:
        raise KeyError(f"{what} log-probs lack row {row!r} (condition {row[0]!r}, response y_{row[1]})") from None
    if t.dim() != 1:
        raise ValueError(f"{what} log-probs of row {row!r} must have shape [batch], got {tuple(t.shape)}")
    return t


def compute_loss(
    config: LossConfig,
    policy: Mapping[Row, Tensor],
    reference: Mapping[Row, Tensor],
    n_tokens: Mapping[Row, Tensor] | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The weighted loss of a batch and what to log about it.

    ``policy`` and ``reference`` map each row of :func:`required_rows` to summed response log-probs of shape
    ``[B]`` (extra rows are ignored); ``n_tokens`` maps ``("w", "w")`` to response lengths when ``sft`` is on. Scores
    are computed in float32 (or float64 when given). Returns ``(loss, metrics)``; the metrics are detached 0-dim
    tensors (no device sync), named:

    - ``loss`` (the total) and ``loss/<term>`` (each enabled term, batch mean, before its weight); mirrored terms
      also report their sides as ``loss/<term>/y_w`` and ``loss/<term>/y_l``;
    - ``rewards/m_<c>/y_<r>``: batch mean of the score of each row;
    - ``margins/<comparison>`` and ``accuracy/<comparison>``: mean score difference and share of examples ordered
      correctly, for each comparison of the enabled terms (``dpo``, ``sym``, ``image_cond``, ``img_pair/y_w``,
      ``none_pair/y_l``...); a ranking ``vrpo/y_w`` reports the margins of its adjacent pairs
      (``margins/vrpo/y_w/w>none``, ``margins/vrpo/y_w/none>l``) and the share fully ordered (``accuracy/vrpo/y_w``).
    """
    rows = required_rows(config)
    dtype = torch.float64 if any(policy[r].dtype == torch.float64 for r in rows if r in policy) else torch.float32
    scores: dict[Row, Tensor] = {}
    batch: int | None = None
    for row in rows:
        p = _fetch(policy, row, "policy").to(dtype)
        r = _fetch(reference, row, "reference").to(device=p.device, dtype=dtype)
        if p.shape != r.shape or (batch is not None and p.shape[0] != batch):
            raise ValueError(f"row {row!r}: policy {tuple(p.shape)} and reference {tuple(r.shape)} disagree in batch")
        batch = p.shape[0]
        scores[row] = config.beta * (p - r.detach())

    def s(c: str, resp: str) -> Tensor:
        return scores[(c, resp)]

    metrics: dict[str, Tensor] = {}
    total: Tensor | None = None

    def pair(name: str, better: Tensor, worse: Tensor) -> Tensor:
        metrics[f"margins/{name}"] = (better - worse).detach().mean()
        metrics[f"accuracy/{name}"] = (better > worse).to(dtype).detach().mean()
        return dpo_loss(better, worse)

    def ranking(name: str, ordered: list[Tensor], labels: list[str]) -> Tensor:
        stacked = torch.stack(ordered, dim=-1)  # [B, K], best first
        diffs = stacked[:, :-1] - stacked[:, 1:]
        for k in range(len(ordered) - 1):
            metrics[f"margins/{name}/{labels[k]}>{labels[k + 1]}"] = diffs[:, k].detach().mean()
        metrics[f"accuracy/{name}"] = (diffs > 0).all(dim=-1).to(dtype).detach().mean()
        return plackett_luce_nll(stacked)

    for term in config.terms:
        if term == "dpo":
            per_example = pair("dpo", s("w", "w"), s("w", "l"))
        elif term == "sym":
            per_example = pair("sym", s("l", "l"), s("l", "w"))
        elif term == "image_cond":
            per_example = pair("image_cond", s("w", "w"), s("rej", "w"))
        elif term == "sft":
            if n_tokens is None or ("w", "w") not in n_tokens:
                raise ValueError("the sft term needs n_tokens[('w', 'w')]: the number of response tokens of y_w")
            logp = policy[("w", "w")].to(dtype)
            per_example = -logp / n_tokens[("w", "w")].to(device=logp.device, dtype=dtype).clamp_min(1)
        else:  # image-ranking terms, y_w side and (when symmetric) y_l side
            sides: dict[str, Tensor] = {}
            if term == "vrpo":
                sides["y_w"] = ranking("vrpo/y_w", [s("w", "w"), s("none", "w"), s("l", "w")], ["w", "none", "l"])
                if config.symmetric:
                    sides["y_l"] = ranking("vrpo/y_l", [s("l", "l"), s("none", "l"), s("w", "l")], ["l", "none", "w"])
            elif term == "img_pair":
                sides["y_w"] = pair("img_pair/y_w", s("w", "w"), s("l", "w"))
                if config.symmetric:
                    sides["y_l"] = pair("img_pair/y_l", s("l", "l"), s("w", "l"))
            else:  # none_pair
                sides["y_w"] = pair("none_pair/y_w", s("w", "w"), s("none", "w"))
                if config.symmetric:
                    sides["y_l"] = pair("none_pair/y_l", s("l", "l"), s("none", "l"))
            if len(sides) > 1:
                for side, value in sides.items():
                    metrics[f"loss/{term}/{side}"] = value.detach().mean()
            per_example = sum(sides.values())  # type: ignore[assignment]
        value = per_example.mean()
        metrics[f"loss/{term}"] = value.detach()
        weighted = config.weight(term) * value
        total = weighted if total is None else total + weighted

    for row in rows:
        metrics[f"rewards/m_{row[0]}/y_{row[1]}"] = scores[row].detach().mean()
    assert total is not None  # a LossConfig has at least one term
    metrics["loss"] = total.detach()
    return total, metrics
