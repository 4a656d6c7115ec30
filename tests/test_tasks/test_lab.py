"""The lab: planted priors at their strengths, a balanced evaluation world disjoint from training, contrast pairs
that differ in exactly their type, one-line errors for bad settings, deterministic data, the consistent/conflicting
breakdown (hand-made records, and the real AMBER and CHAIR scorers), and the lab model's training pieces."""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from pathlib import Path

import pytest

from harness.errors import ConfigError
from harness.types import Response
from tasks import lab
from tasks.lab import LabConfig

SMALL = LabConfig(n_train=400, n_eval=40, n_objhal=20, n_pairs=60)


def _hashes(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# --- the priors ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "strengths",
    [
        {"co_occurrence": 0.9, "colour": 0.9, "count": 0.9, "position": 0.9, "state": 0.9},
        {"co_occurrence": 0.6, "colour": 0.3, "count": 0.75, "position": 0.5, "state": 0.8},
    ],
)
def test_priors_hold_at_their_strengths_in_the_training_world(strengths):
    config = LabConfig(**strengths, n_train=3000)
    scenes = lab.train_scenes(config)
    for prior, p in strengths.items():
        status = [s.prior_status(prior) for s in scenes]
        n = sum(x is not None for x in status)
        k = sum(x == "consistent" for x in status)
        assert n > 500, prior
        assert abs(k / n - p) < 4 * math.sqrt(p * (1 - p) / n) + 1e-9, (prior, k / n, p)


def test_extreme_strengths_are_exact():
    ones = lab.train_scenes(LabConfig(co_occurrence=1, colour=1, count=1, position=1, state=1, n_train=500))
    zeros = lab.train_scenes(LabConfig(co_occurrence=0, colour=0, count=0, position=0, state=0, n_train=500))
    for prior in lab.PRIORS:
        assert {s.prior_status(prior) for s in ones} <= {None, "consistent"}
        assert {s.prior_status(prior) for s in zeros} <= {None, "conflicting"}


def test_the_sft_records_carry_the_priors_in_text():
    records = lab.sft_records(LabConfig(n_train=2000))
    asked = Counter((r.question, r.answer) for r in records)
    yes = asked[("Is the star yellow in this image?", "Yes")]
    no = asked[("Is the star yellow in this image?", "No")]
    assert yes > 4 * no  # the colour prior, as the question statistics show it
    captions = [r.answer for r in records if r.question in (lab.GENERATIVE_QUERY, lab.OBJHAL_QUERY)]
    with_triangle = [c for c in captions if "triangle" in c]
    assert sum("star" in c for c in with_triangle) / len(with_triangle) > 0.8
    assert all(c.index("triangle") < c.index("star") for c in with_triangle if "star" in c)  # B follows A in text


# --- the evaluation world --------------------------------------------------------------------------------------------


def test_the_evaluation_world_is_balanced_and_breaks_only_its_probe():
    config = LabConfig(n_eval=300)
    scenes = lab.eval_scenes(config)
    assert Counter((s.probe, s.label) for s in scenes) == {(p, lb): 30 for p in lab.PRIORS for lb in lab.LABELS}
    for k, s in enumerate(scenes):
        assert s.prior_status(s.probe) == s.label
        others = {s.prior_status(p) for p in lab.PRIORS if p != s.probe}
        assert others <= {None, "consistent"}, (k, s)
        assert 2 <= len(s.groups()) <= 3
        qs = lab.eval_questions(s, k, config)
        assert [q.role for q in qs] == ["probe", "probe", "control", "control"]
        assert sorted(q.truth for q in qs[:2]) == ["no", "yes"]
        for q in qs:
            assert lab.answer(s, q.query) == q.truth.capitalize(), (k, q)
    truths = Counter(q.truth for k, s in enumerate(scenes) for q in lab.eval_questions(s, k, config))
    assert truths["yes"] == truths["no"]
    objhal = lab.eval_scenes(config, "objhal")
    assert all(s.probe == "co_occurrence" and s.prior_status("co_occurrence") == s.label for s in objhal)
    assert Counter(s.label for s in objhal) == {"consistent": 100, "conflicting": 100}


def test_training_and_pair_images_are_never_evaluation_images():
    config = LabConfig(n_train=3000, n_pairs=300)
    held = {s.signature() for s in lab.eval_scenes(LabConfig(n_eval=lab.EVAL_POOL))}
    held |= {s.signature() for s in lab.eval_scenes(LabConfig(n_objhal=lab.OBJHAL_POOL), "objhal")}
    assert held == lab.held_out_signatures(config)
    assert not {s.signature() for s in lab.train_scenes(config)} & held
    for p in lab.contrast_pairs(config):
        assert p.m_w.signature() not in held and p.m_l.signature() not in held


# --- contrast pairs --------------------------------------------------------------------------------------------------


def test_contrast_pairs_differ_in_exactly_their_type():
    config = LabConfig(n_pairs=120, pair_types=tuple(lab.CONTRAST_TYPES))
    pairs = lab.contrast_pairs(config)
    assert Counter(p.contrast for p in pairs) == {t: 20 for t in lab.CONTRAST_TYPES}
    for p in pairs:
        assert lab.differences(p.m_w, p.m_l) == {p.contrast}, p.id
        if p.question == lab.GENERATIVE_QUERY:
            assert (p.y_w, p.y_l) == (lab.caption(p.m_w), lab.caption(p.m_l))
        else:
            assert (p.y_w, p.y_l) == (lab.answer(p.m_w, p.question), lab.answer(p.m_l, p.question))
            assert {p.y_w, p.y_l} == {"Yes", "No"}
        prior = lab.PRIOR_OF_CONTRAST[p.contrast]
        if prior is not None:  # m_w breaks the prior, m_l follows it: y_l is the prior-following answer
            assert p.m_w.prior_status(prior) == "conflicting" and p.m_l.prior_status(prior) == "consistent"


def test_balanced_pairs_turn_every_other_round_round_and_keep_the_rest():
    """pair_direction balanced: the same pairs, those of every other round of types turned round (m_w keeps the
    prior, y_w follows it), so that among the prior pairs the preferred text is the anti-prior one exactly half the
    time; the default settings and their hash are unchanged by the setting's existence."""
    anti = lab.contrast_pairs(LabConfig(n_pairs=100))
    balanced = lab.contrast_pairs(LabConfig(n_pairs=100, pair_direction="balanced"))
    assert [p.id for p in anti] == [p.id for p in balanced]
    for a, b in zip(anti, balanced):
        prior = lab.PRIOR_OF_CONTRAST[b.contrast]
        assert b.turned == ((int(b.id.rsplit("-", 1)[1]) // 10) % 2 == 1)
        if b.turned:
            assert (b.y_w, b.y_l) == (a.y_l, a.y_w) and b.m_w.objects == a.m_l.objects
            assert b.m_w.image == a.m_w.image  # file names follow the roles
            assert b.m_w.prior_status(prior) == "consistent" and b.m_l.prior_status(prior) == "conflicting"
        else:
            assert (b.y_w, b.y_l, b.m_w, b.m_l) == (a.y_w, a.y_l, a.m_w, a.m_l)
    assert sum(b.turned for b in balanced) == 50
    assert "pair_direction" not in LabConfig().to_dict()
    assert LabConfig(pair_direction="balanced").digest() != LabConfig().digest()
    with pytest.raises(ConfigError, match="pair_direction must be one of anti_prior, balanced, got 'sideways'"):
        LabConfig(pair_direction="sideways")


def test_preference_file_is_canonical_and_reads_back(tmp_path):
    from trainers.data import read_preferences

    path = lab.generate_lab_preferences(tmp_path / "pairs", SMALL)
    examples = read_preferences(path)
    assert len(examples) == SMALL.n_pairs
    assert {e.contrast_type for e in examples} == {lab.CONTRAST_TYPES[t] for t in lab.DEFAULT_PAIR_TYPES}
    assert all(Path(e.image_w).is_file() and Path(e.image_l).is_file() for e in examples)
    recorded = json.loads((tmp_path / "pairs" / lab.PAIRS_FILE).read_text())["pairs"]
    for rec in recorded:
        m_w, m_l = lab.LabScene.from_record(rec["m_w"]), lab.LabScene.from_record(rec["m_l"])
        assert lab.differences(m_w, m_l) == {rec["contrast"]}
    assert lab.read_config(tmp_path / "pairs") == SMALL


# --- settings --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"colour": 1.5}, "colour"),
        ({"co_occurrence": -0.1}, "co_occurrence"),
        ({"state": "high"}, "state"),
        ({"n_pairs": lab.PAIR_POOL + 1}, "n_pairs"),
        ({"n_train": lab.TRAIN_POOL + 1}, "n_train"),
        ({"n_eval": lab.EVAL_POOL + 10}, "n_eval"),
        ({"n_eval": 15}, "n_eval"),
        ({"n_objhal": 0}, "n_objhal"),
        ({"pair_types": ("presence", "texture")}, "pair_types"),
        ({"pair_types": ()}, "pair_types"),
        ({"seed": 1.5}, "seed"),
    ],
)
def test_bad_settings_are_one_line_config_errors_naming_the_setting(kwargs, name):
    with pytest.raises(ConfigError) as err:
        LabConfig(**kwargs)
    message = str(err.value)
    assert name in message and "\n" not in message


def test_unknown_settings_and_benchmarks_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown lab setting 'colur'"):
        LabConfig.from_dict({"colur": 0.5})
    with pytest.raises(ConfigError, match="unknown lab benchmark"):
        lab.generate_lab_benchmark(tmp_path / "x", "pope", SMALL)
    with pytest.raises(ConfigError, match="unknown contrast type"):
        lab._make_pair(SMALL, "texture", lab._rng("pairs", 0, 0), 0)


# --- determinism -----------------------------------------------------------------------------------------------------


def test_generation_is_deterministic_and_prefix_stable(tmp_path):
    a = lab.generate_lab_benchmark(tmp_path / "a", "amber", SMALL)
    b = lab.generate_lab_benchmark(tmp_path / "b", "amber", SMALL)
    assert _hashes(a) == _hashes(b)
    assert json.loads((a / lab.CONFIG_FILE).read_text())["colour"] == 0.9
    small = lab.generate_lab_benchmark(tmp_path / "s", "amber", LabConfig(n_eval=10))
    for k in range(1, 11):
        assert (small / f"image/LAB_{k}.png").read_bytes() == (a / f"image/LAB_{k}.png").read_bytes()
    assert lab.generate_lab_benchmark(a, "amber", SMALL) == a  # idempotent
    o1 = lab.generate_lab_benchmark(tmp_path / "o1", "objhal", SMALL)
    o2 = lab.generate_lab_benchmark(tmp_path / "o2", "objhal", SMALL)
    assert _hashes(o1) == _hashes(o2)
    assert lab.sft_records(SMALL) == lab.sft_records(SMALL)
    assert lab.contrast_pairs(SMALL) == lab.contrast_pairs(SMALL)
    other = lab.eval_scenes(LabConfig(seed=1, n_eval=10))
    assert [s.signature() for s in other] != [s.signature() for s in lab.eval_scenes(LabConfig(n_eval=10))]


# --- the breakdown ---------------------------------------------------------------------------------------------------


def _gen(rid, mentions, hallucinated, truth, hallu, covered=(), hallu_mentioned=()):
    return {
        "id": str(rid),
        "kind": "generative",
        "mentions": list(mentions),
        "hallucinated": list(hallucinated),
        "truth": list(truth),
        "hallu": list(hallu),
        "covered": list(covered),
        "hallu_mentioned": list(hallu_mentioned),
    }


def _disc(rid, truth, answer):
    return {
        "id": str(rid),
        "kind": "discriminative",
        "truth": truth,
        "answer": answer,
        "correct": answer == truth.capitalize(),
    }


def test_breakdown_from_hand_made_records():
    meta = {
        "1": {"prior": "co_occurrence", "label": "consistent", "role": "generative"},
        "2": {"prior": "co_occurrence", "label": "conflicting", "role": "generative"},
        "3": {"prior": "colour", "label": "consistent", "role": "probe"},
        "4": {"prior": "colour", "label": "consistent", "role": "probe"},
        "5": {"prior": "colour", "label": "conflicting", "role": "probe"},
        "6": {"prior": "colour", "label": "conflicting", "role": "probe"},
        "7": {"prior": "colour", "label": "conflicting", "role": "control"},
    }
    records = [
        _gen(1, ["triangle", "star"], [], ["triangle", "star"], ["circle"], covered=["triangle", "star"]),
        _gen(
            2,
            ["triangle", "star", "circle"],
            ["star"],
            ["triangle", "circle"],
            ["star", "square"],
            covered=["triangle", "circle"],
            hallu_mentioned=["star"],
        ),
        _disc(3, "yes", "Yes"),
        _disc(4, "no", "No"),
        _disc(5, "yes", "No"),
        _disc(6, "no", "Yes"),
        _disc(7, "no", "No"),
    ]
    out = lab.prior_breakdown(records, meta, lab.amber_numbers)
    assert out["consistent"]["CHAIR"] == 0.0
    assert out["consistent"]["Hal"] == 0.1  # 100 - 1/1.001 * 100: the official 0.001 start, rounded
    assert out["conflicting"]["CHAIR"] == 33.3  # 1/3, official rounding (0.001 start)
    assert out["conflicting"]["Hal"] == 100.0 and out["conflicting"]["Cog"] == 50.0
    assert out["conflicting"]["Cover"] == 100.0
    assert out["probe:consistent"]["Accuracy"] == 100.0 and out["probe:consistent"]["error"] == 0.0
    assert out["probe:conflicting"]["Accuracy"] == 0.0 and out["probe:conflicting"]["error"] == 100.0
    assert out["conflicting"]["Accuracy"] == 33.3 and out["conflicting"]["questions"] == 3
    assert out["probe:gap"]["error"] == 100.0 and out["gap"]["CHAIR"] == 33.3
    assert out["colour:probe:conflicting"]["error"] == 100.0
    assert "co_occurrence:probe:consistent" not in out

    objhal_meta = {
        "1": {"label": "consistent", "prior": "co_occurrence"},
        "2": {"label": "conflicting", "prior": "co_occurrence"},
        "3": {"label": "conflicting", "prior": "co_occurrence"},
    }
    objhal_records = [
        {
            "id": "1",
            "status": "scored",
            "caption": "a triangle and a star",
            "mentioned": [["triangle", "triangle"], ["star", "star"]],
            "hallucinated": [],
            "gt_objects": ["star", "triangle"],
        },
        {
            "id": "2",
            "status": "scored",
            "caption": "a triangle and a star",
            "mentioned": [["triangle", "triangle"], ["star", "star"]],
            "hallucinated": [["star", "star"]],
            "gt_objects": ["circle", "triangle"],
        },
        {
            "id": "3",
            "status": "scored",
            "caption": "a triangle",
            "mentioned": [["triangle", "triangle"]],
            "hallucinated": [],
            "gt_objects": ["triangle"],
        },
    ]
    ob = lab.prior_breakdown(objhal_records, objhal_meta, lab.objhal_numbers)
    assert ob["consistent"]["CHAIRi"] == 0.0 and ob["consistent"]["Object Recall"] == 100.0
    assert ob["conflicting"]["CHAIRs"] == 50.0 and ob["conflicting"]["CHAIRi"] == pytest.approx(33.3)
    assert ob["conflicting"]["Object Recall"] == pytest.approx(66.67)
    assert ob["gap"]["CHAIRs"] == 50.0


def _answers(task, samples, policy):
    scenes = {s.image: s for s in lab.read_scenes(task.data_root)}
    out = {}
    for sample in samples:
        image = Path(sample.images[0].path).name if sample.images[0].path else None
        out[sample.id] = Response(sample.id, policy(sample, scenes.get(image)), "stop")
    return out


def test_lab_amber_is_scored_by_amber_scorer_with_the_breakdown(tmp_path):
    from harness.task import get_task

    root = lab.generate_lab_benchmark(tmp_path / "amber", "amber", SMALL)
    task = get_task("lab_amber")(data_root=root)
    samples = task.samples()
    assert len(samples) == 5 * SMALL.n_eval

    def truthful(sample, scene):
        return (
            lab.caption(scene) if sample.reference["type"] == "generative" else sample.reference["truth"].capitalize()
        )

    m = task.score(samples, _answers(task, samples, truthful))
    assert m.headline["CHAIR"] == 0.0 and m.headline["Cover"] == 100.0 and m.headline["Accuracy"] == 100.0
    assert m.headline["Yes/No error (conflicting)"] == 0.0 and m.headline["CHAIR (conflicting)"] == 0.0

    def prior_follower(sample, scene):  # describes and answers the prior's world: a triangle always has its star
        if sample.reference["type"] == "generative":
            text = lab.caption(scene)
            return (
                text
                if "star" in text or "triangle" not in text
                else text.replace(".", " and a small filled yellow star.", 1)
            )
        world = lab.LabScene(
            scene.id,
            scene.image,
            tuple(
                lab.LabObject(
                    o.shape,
                    lab.COLOUR_PRIOR if o.shape == lab.COLOUR_SHAPE else o.colour,
                    o.size,
                    lab.STATE_PRIOR if o.shape == lab.STATE_SHAPE else o.state,
                    o.cell,
                )
                for o in scene.objects
            )
            + (
                (lab.LabObject(lab.CO_B, "yellow", "small", "filled", 8),)
                if scene.group(lab.CO_A) and not scene.group(lab.CO_B)
                else ()
            ),
        )
        return lab.answer(world, sample.prompt)

    m = task.score(samples, _answers(task, samples, prior_follower))
    lab_bd = {k[len("lab/") :]: v for k, v in m.breakdown.items() if k.startswith("lab/")}
    assert m.headline["CHAIR (consistent)"] == 0.0 < m.headline["CHAIR (conflicting)"]
    assert lab_bd["co_occurrence:probe:conflicting"]["error"] == 50.0  # "Is there a star?" wrong, the other right
    assert lab_bd["colour:probe:conflicting"]["error"] == 100.0
    assert lab_bd["state:probe:conflicting"]["error"] == 100.0
    assert lab_bd["probe:consistent"]["error"] == 0.0
    # the breakdown's numbers over every record are the scorer's own
    everything = lab.amber_numbers(m.records)
    for key in ("CHAIR", "Cover", "Hal", "Cog", "Accuracy", "Precision", "Recall", "F1"):
        assert everything[key] == m.headline[key], key

    # the records carry the split, so the report's intervals and paired tests take it
    from reports import stats

    assert {r["lab_label"] for r in m.records} == {"consistent", "conflicting"}
    cis = stats.task_cis("lab_amber", m.records, n_resamples=200)
    for label in ("conflicting", "consistent"):
        key = f"Yes/No error ({label})"
        assert cis[key].low <= m.headline[key] <= cis[key].high, key
    assert cis["Yes/No error (consistent)"].high == 0.0 < cis["Yes/No error (conflicting)"].low
    truthful_records = task.score(samples, _answers(task, samples, truthful)).records
    tests = {oc.name: t for oc, t, _, _ in stats.paired_outcomes("lab_amber", truthful_records, m.records)}
    conflict = tests["probe answer correct, prior-conflicting image"]
    n_probe_conflicting = sum(1 for r in m.records if r.get("lab_probe") and r["lab_label"] == "conflicting")
    assert conflict.n == n_probe_conflicting and conflict.only_b == 0
    assert conflict.only_a == round(n_probe_conflicting * m.headline["Yes/No error (conflicting)"] / 100)
    assert tests["probe answer correct, prior-consistent image"].only_a == 0


def test_lab_objhal_is_scored_by_the_chair_code_with_the_breakdown(tmp_path):
    from harness.task import get_task

    root = lab.generate_lab_benchmark(tmp_path / "objhal", "objhal", SMALL)
    task = get_task("lab_objhal")(data_root=root)
    samples = task.samples()
    assert len(samples) == SMALL.n_objhal
    scenes = {s.id: s for s in lab.read_scenes(root)}

    def answers(add_star):
        out = {}
        for s in samples:
            text = lab.caption(scenes[int(s.id)])
            if add_star and "star" not in text:
                text = text.replace(".", " and a small filled yellow star.", 1)
            out[s.id] = Response(s.id, text, "stop")
        return out

    m = task.score(samples, answers(False))
    assert m.headline["CHAIRi"] == 0.0 and m.headline["Object Recall"] == 100.0
    m = task.score(samples, answers(True))
    assert m.headline["CHAIRs (consistent)"] == 0.0 and m.headline["CHAIRs (conflicting)"] == 100.0
    overall = lab.objhal_numbers(m.records)
    assert overall["CHAIRi"] == m.headline["CHAIRi"] and overall["CHAIRs"] == m.headline["CHAIRs"]

    from reports import stats

    cis = stats.task_cis("lab_objhal", m.records, n_resamples=200)
    assert cis["CHAIRs (conflicting)"].low == 100.0 and cis["CHAIRs (consistent)"].high == 0.0
    clean = task.score(samples, answers(False)).records
    tests = {oc.name: t for oc, t, _, _ in stats.paired_outcomes("lab_objhal", clean, m.records)}
    n_conflicting = sum(1 for r in m.records if r["lab_label"] == "conflicting")
    assert tests["response without hallucination, prior-conflicting image"].only_a == n_conflicting
    assert tests["response without hallucination, prior-consistent image"].only_a == 0


# --- the lab model ---------------------------------------------------------------------------------------------------


def test_lab_model_records_are_tokenized_as_the_trainers_do_and_the_prefix_loss_is_exact(tmp_path):
    import torch
    import transformers

    from harness.models.llava import LlavaFamily
    from trainers import lab_model as lm
    from trainers.logprobs import Row, tokenize_rows

    settings = lm.LabModelSettings(steps=2, warmup_steps=1, batch_size=4)
    out = lm.build_lab_base(tmp_path / "base", settings)
    records = lab.sft_records(SMALL, n=3)
    enc = lm.encode_records(out, records)
    processor = transformers.AutoProcessor.from_pretrained(str(out))
    rows = [Row(r.question, r.answer, lab.render(r.scene), image_id=r.scene.image) for r in records]
    batch = tokenize_rows(LlavaFamily(out), processor, rows)
    for i in range(len(records)):
        n = int(batch.attention_mask[i].sum())
        assert batch.input_ids[i, :n].tolist() == enc.input_ids[i]
        assert batch.labels[i, :n].tolist() == enc.labels[i]
    pixels = processor.image_processor([lab.render(records[0].scene)], return_tensors="pt")["pixel_values"]
    assert torch.allclose(enc.pixels([0]), pixels, atol=1e-6)
    model = transformers.AutoModelForImageTextToText.from_pretrained(str(out))
    b = lm._batch(enc, list(range(len(records))), processor.tokenizer.pad_token_id)
    prefix = lm.shared_prefix(enc, model.config.image_token_index)
    assert prefix > 20
    for record_mean in (False, True):
        full = lm.answer_loss(model, b, 0, record_mean=record_mean)
        cached = lm.answer_loss(model, b, prefix, record_mean=record_mean)
        assert torch.allclose(full, cached, atol=1e-6)
    assert torch.allclose(lm.answer_loss(model, b, 0), model(**b).loss, atol=1e-6)


def test_lab_model_training_is_deterministic(tmp_path):
    from safetensors.torch import load_file

    from trainers import lab_model as lm

    settings = lm.LabModelSettings(steps=3, warmup_steps=1, batch_size=4)
    config = LabConfig(n_train=8)
    a = lm.train_lab_model(tmp_path / "a", settings, config, progress=False)
    b = lm.train_lab_model(tmp_path / "b", settings, config, progress=False)
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys() and any(k.startswith("vision_tower.vision_model.") for k in wa)
    assert all((wa[k] == wb[k]).all() for k in wa)
    log = [json.loads(line) for line in (a / lm.TRAIN_LOG).read_text().splitlines()]
    assert log[0]["step"] == 0 and log[-1]["step"] == 2
    assert lm.lab_model_dir(settings, config) != lm.lab_model_dir(settings, LabConfig(n_train=9))


def test_the_default_lab_model_is_the_shipped_checkpoint_copied_not_trained(tmp_path, monkeypatch):
    """The package ships the lab model of the default settings; the cache gets a byte-identical copy and nothing is
    trained. Changing a default setting without rebuilding the shipped checkpoint fails here."""
    from trainers import lab_model as lm

    assert lm.shipped_matches(), (
        "the shipped lab model is not the default settings': python -m trainers.lab_model --rebuild-shipped"
    )
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))

    def no_training(*args, **kwargs):
        raise AssertionError("the default lab model was trained instead of copied")

    monkeypatch.setattr(lm, "train_lab_model", no_training)
    out = lm.default_model(progress=False)
    assert out == lm.lab_model_dir() and out.is_relative_to(tmp_path / "cache")
    for name in lm.SHIPPED_FILES:
        assert (out / name).read_bytes() == (lm.SHIPPED_DIR / name).read_bytes(), name
    assert lm.default_model(progress=False) == out  # cached
    # other settings are not the shipped model: they are trained
    assert not lm.shipped_matches(lm.LabModelSettings(steps=3))
    with pytest.raises(AssertionError, match="trained instead"):
        lm.ensure_lab_model(lm.LabModelSettings(steps=3), progress=False)


@pytest.mark.slow
def test_rebuilding_the_lab_model_reproduces_the_shipped_weights(tmp_path):
    """The shipped checkpoint is what the recipe trains (about 6 minutes on one CPU thread)."""
    from trainers import lab_model as lm

    out = lm.train_lab_model(tmp_path / "lab", progress=False)
    for name in lm.SHIPPED_FILES:
        if name not in (lm.SETTINGS_FILE, lm.TRAIN_LOG):  # those two record the seconds the build took
            assert (out / name).read_bytes() == (lm.SHIPPED_DIR / name).read_bytes(), name


@pytest.mark.parametrize(
    "setting, expected",
    [
        ("colour=1.5", "lab setting colour (prior strength) must be a number in [0, 1], got 1.5"),
        ("count=-0.1", "lab setting count (prior strength) must be a number in [0, 1], got -0.1"),
        ("n_pairs=999999", "lab setting n_pairs=999999 is above the generated pool"),
        ("pair_types=presence,texture", "unknown contrast type 'texture'"),
        ("colur=0.5", "unknown lab setting 'colur'"),
        ("colour", "--set 'colour': expected KEY=VALUE"),
    ],
)
def test_lab_data_bad_settings_are_one_line_errors(setting, expected, tmp_path, capsys):
    from harness.cli import main

    code = main(["lab-data", str(tmp_path / "d"), "--set", setting])
    err = capsys.readouterr().err
    assert code == 2 and expected in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert not (tmp_path / "d").exists()


def test_lab_data_writes_the_pairs_with_their_settings(tmp_path, capsys):
    from harness.cli import main

    code = main(["lab-data", str(tmp_path / "d"), "--set", "n_pairs=12", "--set", "pair_types=colour,count"])
    assert code == 0
    lines = (tmp_path / "d" / "preferences.jsonl").read_text().splitlines()
    assert len(lines) == 12
    assert {json.loads(x)["contrast_type"] for x in lines} == {"color and appearance", "quantity and count"}
    saved = json.loads((tmp_path / "d" / "lab_config.json").read_text())
    assert saved["n_pairs"] == 12 and saved["pair_types"] == ["colour", "count"]
