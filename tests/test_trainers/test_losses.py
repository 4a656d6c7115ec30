"""The preference losses: closed-form values, gradients, stability, the method table and the logged metrics."""

from __future__ import annotations

import math

import pytest
import torch

from harness.errors import ConfigError
from trainers.losses import (
    METHODS,
    TERMS,
    LossConfig,
    compute_loss,
    dpo_loss,
    get_method,
    plackett_luce_nll,
    required_rows,
)

ALL_ROWS = [(c, r) for c in ("w", "l", "none", "rej") for r in ("w", "l")]


def _equal_logps(batch: int = 3, seed: int = 0) -> dict[tuple[str, str], torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {row: -torch.rand(batch, generator=g, dtype=torch.float64) * 50 for row in ALL_ROWS}


def _pl_reference(scores: list[float]) -> float:
    """Plackett-Luce NLL from the definition, in float64 with a max-shifted log-sum-exp."""
    total = 0.0
    for k in range(len(scores)):
        tail = scores[k:]
        m = max(tail)
        total += m + math.log(sum(math.exp(x - m) for x in tail)) - scores[k]
    return total


# --------------------------------------------------------------------------------------------------------------------
# primitives


def test_plackett_luce_two_items_equals_dpo():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(7, generator=g) * 5, torch.randn(7, generator=g) * 5
    torch.testing.assert_close(plackett_luce_nll(torch.stack([a, b], dim=-1)), dpo_loss(a, b))


def test_plackett_luce_gradient_at_equal_scores():
    scores = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    loss = plackett_luce_nll(scores)
    assert loss.item() == pytest.approx(math.log(6))
    loss.backward()
    torch.testing.assert_close(scores.grad, torch.tensor([-2 / 3, -1 / 6, 5 / 6], dtype=torch.float64))


@pytest.mark.parametrize(
    "scores",
    [[1e4, -1e4, 0.0], [-1e4, 0.0, 1e4], [1e4, 1e4 - 3.0, -1e4], [3e4, 2e4, -5e3, 1.5e4], [0.3, -1.2, 2.5]],
)
def test_plackett_luce_stable_for_large_scores(scores):
    expected = _pl_reference(scores)
    for dtype in (torch.float32, torch.float64):
        t = torch.tensor(scores, dtype=dtype, requires_grad=True)
        loss = plackett_luce_nll(t)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(t.grad).all()
        assert loss.item() == pytest.approx(expected, rel=1e-6, abs=1e-3 if dtype == torch.float32 else 1e-9)


def test_plackett_luce_batched_shape_and_values():
    scores = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 2.0]], dtype=torch.float64)
    out = plackett_luce_nll(scores)
    assert out.shape == (2,)
    assert out[0].item() == pytest.approx(_pl_reference([2.0, 1.0, 0.0]))
    assert out[1].item() == pytest.approx(_pl_reference([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError):
        plackett_luce_nll(torch.zeros(4, 1))


def test_dpo_loss_stable_and_elementwise():
    out = dpo_loss(torch.tensor([1e4, -1e4, 0.0]), torch.tensor([0.0, 0.0, 0.0]))
    assert torch.isfinite(out).all()
    assert out.tolist() == pytest.approx([0.0, 1e4, math.log(2)])


# --------------------------------------------------------------------------------------------------------------------
# methods


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        ("jompo", math.log(144)),  # 2 ln 2 + 2 ln 6
        ("dpo", math.log(2)),
        ("mpo", 2 * math.log(2)),
        ("jompo_no_ranking", 4 * math.log(2)),
        ("jompo_no_symmetry", math.log(2) + math.log(6)),
        ("jompo_no_both", 2 * math.log(2)),
        ("jompo_no_ranking_text", 2 * math.log(2)),
        ("jompo_no_ranking_noimage", 4 * math.log(2)),
    ],
)
def test_loss_when_policy_equals_reference(method, expected):
    logps = _equal_logps()
    loss, metrics = compute_loss(METHODS[method], logps, {k: v.clone() for k, v in logps.items()})
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    assert float(metrics["loss"]) == pytest.approx(expected, abs=1e-12)


def test_method_term_sets():
    terms = {name: set(config.terms) for name, config in METHODS.items()}
    assert terms == {
        "dpo": {"dpo"},
        "mpo": {"dpo", "image_cond"},
        "jompo": {"dpo", "sym", "vrpo"},
        "jompo_no_ranking": {"dpo", "sym", "img_pair"},
        "jompo_no_symmetry": {"dpo", "vrpo"},
        "jompo_no_both": {"dpo", "img_pair"},
        "jompo_no_ranking_text": {"dpo", "sym"},
        "jompo_no_ranking_noimage": {"dpo", "sym", "none_pair"},
    }
    for name, config in METHODS.items():
        assert config.beta == 0.05, name
        assert all(config.weight(t) in (0.0, 1.0) for t in TERMS), name
    assert METHODS["jompo"].symmetric and not METHODS["jompo_no_symmetry"].symmetric
    assert not METHODS["jompo_no_both"].symmetric


def test_required_rows():
    counts = {name: len(required_rows(config)) for name, config in METHODS.items()}
    assert counts == {
        "dpo": 2,
        "mpo": 3,
        "jompo": 6,
        "jompo_no_ranking": 4,
        "jompo_no_symmetry": 4,
        "jompo_no_both": 3,
        "jompo_no_ranking_text": 4,
        "jompo_no_ranking_noimage": 6,
    }
    assert required_rows(METHODS["jompo"]) == (
        ("w", "w"), ("w", "l"), ("l", "w"), ("l", "l"), ("none", "w"), ("none", "l"),
    )  # fmt: skip
    assert required_rows(METHODS["dpo"]) == (("w", "w"), ("w", "l"))
    assert required_rows(METHODS["mpo"]) == (("w", "w"), ("w", "l"), ("rej", "w"))
    assert required_rows(METHODS["jompo_no_symmetry"]) == (("w", "w"), ("w", "l"), ("l", "w"), ("none", "w"))
    assert required_rows(LossConfig(dpo=0, sft=1)) == (("w", "w"),)


def test_config_validation_and_overrides():
    assert LossConfig() == METHODS["dpo"]
    with pytest.raises(ConfigError):
        LossConfig(dpo=0.0)
    with pytest.raises(ConfigError):
        LossConfig(vrpo=-1.0)
    with pytest.raises(ConfigError):
        LossConfig(beta=0.0)
    assert get_method("jompo", beta=0.1).beta == 0.1
    with pytest.raises(ConfigError, match="unknown method"):
        get_method("jompoo")
    assert LossConfig.from_dict(METHODS["mpo"].to_dict()) == METHODS["mpo"]
    with pytest.raises(ConfigError, match="betta"):
        LossConfig.from_dict({"betta": 0.1})


def test_missing_row_names_it():
    logps = _equal_logps()
    del logps[("none", "l")]
    with pytest.raises(KeyError, match="none"):
        compute_loss(METHODS["jompo"], logps, _equal_logps())


# --------------------------------------------------------------------------------------------------------------------
# metrics on a hand-computed example


def _logsig_loss(x: float) -> float:
    return math.log1p(math.exp(-x))


def test_compute_loss_metrics_hand_computed():
    beta = 0.5
    config = LossConfig(beta=beta, dpo=1.0, sym=1.0, vrpo=1.0)
    # scores s = beta * (policy - reference); reference 0, so s = policy / 2
    s = {
        ("w", "w"): [2.0, 0.0],
        ("w", "l"): [0.0, 1.0],
        ("l", "w"): [-2.0, 0.5],
        ("l", "l"): [1.0, 0.0],
        ("none", "w"): [0.0, 1.0],
        ("none", "l"): [0.0, -1.0],
    }
    policy = {row: torch.tensor(v, dtype=torch.float64) / beta for row, v in s.items()}
    reference = {row: torch.zeros(2, dtype=torch.float64) for row in s}
    loss, m = compute_loss(config, policy, reference)

    dpo = [_logsig_loss(2.0 - 0.0), _logsig_loss(0.0 - 1.0)]
    sym = [_logsig_loss(1.0 - (-2.0)), _logsig_loss(0.0 - 0.5)]
    vrpo_w = [_pl_reference([2.0, 0.0, -2.0]), _pl_reference([0.0, 1.0, 0.5])]
    vrpo_l = [_pl_reference([1.0, 0.0, 0.0]), _pl_reference([0.0, -1.0, 1.0])]

    def mean(xs: list[float]) -> float:
        return sum(xs) / len(xs)

    expected = mean(dpo) + mean(sym) + mean(vrpo_w) + mean(vrpo_l)
    assert loss.item() == pytest.approx(expected)
    assert float(m["loss"]) == pytest.approx(expected)
    assert float(m["loss/dpo"]) == pytest.approx(mean(dpo))
    assert float(m["loss/sym"]) == pytest.approx(mean(sym))
    assert float(m["loss/vrpo"]) == pytest.approx(mean(vrpo_w) + mean(vrpo_l))
    assert float(m["loss/vrpo/y_w"]) == pytest.approx(mean(vrpo_w))
    assert float(m["loss/vrpo/y_l"]) == pytest.approx(mean(vrpo_l))

    assert float(m["rewards/m_w/y_w"]) == pytest.approx(1.0)
    assert float(m["rewards/m_none/y_l"]) == pytest.approx(-0.5)
    assert float(m["margins/dpo"]) == pytest.approx(mean([2.0, -1.0]))
    assert float(m["accuracy/dpo"]) == pytest.approx(0.5)
    assert float(m["margins/sym"]) == pytest.approx(mean([3.0, -0.5]))
    assert float(m["accuracy/sym"]) == pytest.approx(0.5)
    # y_w ranking [w, none, l]: example 0 = [2, 0, -2] ordered; example 1 = [0, 1, 0.5] not
    assert float(m["accuracy/vrpo/y_w"]) == pytest.approx(0.5)
    assert float(m["margins/vrpo/y_w/w>none"]) == pytest.approx(mean([2.0, -1.0]))
    assert float(m["margins/vrpo/y_w/none>l"]) == pytest.approx(mean([2.0, 0.5]))
    # y_l ranking [l, none, w]: [1, 0, 0] has a tie (not strictly ordered); [0, -1, 1] not ordered
    assert float(m["accuracy/vrpo/y_l"]) == pytest.approx(0.0)
    assert all(not t.requires_grad for t in m.values())
    assert {k for k in m if k.startswith("rewards/")} == {f"rewards/m_{c}/y_{r}" for c, r in s}


def test_compute_loss_weights_image_cond_and_sft():
    config = LossConfig(beta=1.0, dpo=2.0, image_cond=0.5, sft=0.1)
    policy = {
        ("w", "w"): torch.tensor([-4.0]),
        ("w", "l"): torch.tensor([-6.0]),
        ("rej", "w"): torch.tensor([-3.0]),
    }
    reference = {("w", "w"): torch.tensor([-5.0]), ("w", "l"): torch.tensor([-5.0]), ("rej", "w"): torch.tensor([-3.0])}
    loss, m = compute_loss(config, policy, reference, n_tokens={("w", "w"): torch.tensor([8])})
    dpo = _logsig_loss(1.0 - (-1.0))
    image_cond = _logsig_loss(1.0 - 0.0)
    sft = 4.0 / 8
    assert loss.item() == pytest.approx(2.0 * dpo + 0.5 * image_cond + 0.1 * sft, rel=1e-6)
    assert float(m["loss/sft"]) == pytest.approx(sft)
    assert float(m["accuracy/image_cond"]) == 1.0
    assert float(m["margins/image_cond"]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="n_tokens"):
        compute_loss(config, policy, reference)


def test_gradients_flow_to_policy_only():
    logps = _equal_logps(batch=2)
    policy = {k: v.clone().requires_grad_(True) for k, v in logps.items()}
    reference = {k: v.clone().requires_grad_(True) for k, v in logps.items()}
    loss, _ = compute_loss(METHODS["jompo"], policy, reference)
    loss.backward()
    beta = METHODS["jompo"].beta
    # at equal scores, d loss / d s: s(w, y_w) wins dpo (-1/2) and heads the y_w ranking (-2/3);
    # s(w, y_l) loses dpo (+1/2) and ends the y_l ranking (+5/6); batch mean over 2, chain rule beta
    expected = {("w", "w"): -0.5 - 2 / 3, ("w", "l"): 0.5 + 5 / 6, ("none", "w"): -1 / 6, ("l", "l"): -0.5 - 2 / 3}
    for row, grad in expected.items():
        torch.testing.assert_close(policy[row].grad, torch.full((2,), beta * grad / 2, dtype=torch.float64))
    assert all(reference[r].grad is None for r in reference)
    assert policy[("rej", "w")].grad is None  # not a JoMPO row
