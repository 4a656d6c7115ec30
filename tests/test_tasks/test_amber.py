"""AMBER: the golden numbers of the official scorer, each documented quirk, bad input and missing resources."""

from __future__ import annotations

import json
import re
import shutil
import sys
import types
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"

from harness.errors import ConfigError, DataError, HarnessError  # noqa: E402
from harness.task import _TASKS  # noqa: E402
from harness.types import Response  # noqa: E402
from tasks import text  # noqa: E402
from tasks.amber import (  # noqa: E402
    Amber,
    AmberDiscriminative,
    AmberGenerative,
    AmberScorer,
    NoSimilarity,
    SpacySimilarity,
    TableSimilarity,
    WordSimilarity,
    load_responses,
    normalize_answer,
    parse_similarity,
)

DATA = FIXTURES / "data" / "amber"
GOLDEN = FIXTURES / "golden" / "amber"


def md_calls() -> list[dict]:
    return json.loads((GOLDEN / "sim_calls_all_md.json").read_text())["calls"]


class Recording(WordSimilarity):
    """Wraps a backend and records every call (word1, word2)."""

    def __init__(self, inner: WordSimilarity):
        self.inner = inner
        self.calls: list[tuple[str, str]] = []

    @property
    def spec(self) -> str:
        return f"recording:{self.inner.spec}"

    def similarity(self, word1: str, word2: str) -> float:
        self.calls.append((word1, word2))
        return self.inner.similarity(word1, word2)


@pytest.fixture(scope="module")
def scorers() -> dict[str, AmberScorer]:
    return {"zero": AmberScorer(DATA, "none"), "md": AmberScorer(DATA, TableSimilarity.from_records(md_calls()))}


# ------------------------------------------------------------------------------------------------ golden numbers
SECTION = {"Generative Task": "generative", "Descriminative Task": "overall", "Exsitence": "Existence"}


def parse_stdout(path: Path) -> dict[str, dict[str, float]]:
    """The official printout as {section: {metric: value}} (section names mapped to ours)."""
    out: dict[str, dict[str, float]] = {}
    section = None
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        m = re.fullmatch(r"(\w+):\t+ (\S+)\s*", line)
        if m:
            out[section][m.group(1)] = float(m.group(2))
        else:
            name = line.strip().rstrip(":")
            section = SECTION.get(name, name)
            out[section] = {}
    return out


def as_printed(result) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    if result.generative is not None:
        out["generative"] = result.generative.headline()
    if result.discriminative is not None:
        out["overall"] = result.discriminative.overall.as_dict()
        out.update({k: v.as_dict() for k, v in result.discriminative.dimensions.items()})
    return out


GOLDEN_RUNS = [
    ("all_a_zero", "amber_all_responses.json", "zero"),
    ("all_a_md", "amber_all_responses.json", "md"),
    ("generative_zero", "amber_generative_responses.json", "zero"),
    ("generative_md", "amber_generative_responses.json", "md"),
    ("discriminative_d", "amber_discriminative_responses.json", "zero"),
    ("discriminative_de", "amber_discriminative_responses.json", "zero"),
    ("discriminative_da", "amber_discriminative_responses.json", "zero"),
    ("discriminative_dr", "amber_discriminative_responses.json", "zero"),
]


@pytest.mark.parametrize("stdout,responses,sim", GOLDEN_RUNS, ids=[r[0] for r in GOLDEN_RUNS])
def test_golden_numbers(scorers, stdout, responses, sim):
    expected = parse_stdout(GOLDEN / f"{stdout}.stdout.txt")
    result = scorers[sim].score(load_responses(GOLDEN / responses), source=responses)
    got = as_printed(result)
    assert expected and {k: got[k] for k in expected} == expected


def test_golden_all_values_spelled_out(scorers):
    """The headline figures of golden/README.md, written out."""
    rows = load_responses(GOLDEN / "amber_all_responses.json")
    zero, md = scorers["zero"].score(rows), scorers["md"].score(rows)
    assert zero.generative.headline() == {"CHAIR": 17.4, "Cover": 71.3, "Hal": 60.0, "Cog": 16.2}
    assert md.generative.headline() == {"CHAIR": 16.5, "Cover": 71.3, "Hal": 60.0, "Cog": 16.2}
    overall = {"Accuracy": 62.5, "Precision": 76.2, "Recall": 57.1, "F1": 65.3}
    assert zero.discriminative.overall.as_dict() == md.discriminative.overall.as_dict() == overall
    assert zero.amber_score == 73.95 and md.amber_score == 74.4  # (100 - CHAIR + F1) / 2


def test_golden_order_and_subset_do_not_matter(scorers):
    rows = load_responses(GOLDEN / "amber_all_responses.json")
    forward = as_printed(scorers["md"].score(rows))
    assert as_printed(scorers["md"].score(rows[::-1])) == forward
    assert as_printed(scorers["md"].score_generative(rows[:20])) == {"generative": forward["generative"]}


@pytest.mark.parametrize("sim", ["zero", "md"])
def test_similarity_calls_follow_the_official_order(sim):
    """Without the cache, the scorer asks for exactly the similarities the official scorer asked for, in order."""
    log = json.loads((GOLDEN / f"sim_calls_all_{sim}.json").read_text())
    inner = NoSimilarity() if sim == "zero" else TableSimilarity.from_records(log["calls"])
    rec = Recording(inner)
    AmberScorer(DATA, rec, cache=False).score(load_responses(GOLDEN / "amber_all_responses.json"))
    assert rec.calls == [(c["word1"], c["word2"]) for c in log["calls"]]
    assert len(rec.calls) == log["n_calls"]
    # with the cache, each distinct pair once
    cached = Recording(inner)
    AmberScorer(DATA, cached).score(load_responses(GOLDEN / "amber_all_responses.json"))
    assert cached.calls == list(dict.fromkeys(rec.calls))


def test_records_explain_the_numbers(scorers):
    rows = load_responses(GOLDEN / "amber_all_responses.json")
    result = scorers["md"].score(rows)
    gen = [r for r in result.records if hasattr(r, "mentions")]
    g = result.generative
    assert sum(len(r.hallucinated) for r in gen) == g.hallucinated_mentions
    assert round(g.hallucinated_mentions / (g.mentions + 0.001) * 100, 1) == g.CHAIR
    first = gen[0]
    assert first.id == 1 and "person" in first.covered and "dog" in first.hallu_mentioned
    disc = [r for r in result.records if hasattr(r, "answer")]
    lower = next(r for r in disc if r.id == 1012)
    assert lower.response == "no" and not lower.correct
    # the md table makes some words similar; the records name those pairs
    assert any(r.similar for r in gen)


# ------------------------------------------------------------------------------------------------ quirks, by hand
@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A small data root in AMBER's formats with hand-picked objects and questions."""
    root = tmp_path_factory.mktemp("amber_tiny")
    relation = {
        "dog": ["puppy"],
        "cat": ["kitten"],
        "grass": ["lawn"],
        "car": ["truck"],
        "sign": [],
        "person": ["man"],
        "TV": [],
    }
    no = "no"
    annotations = [
        {"id": 1, "type": "generative", "truth": ["dog", "grass"], "hallu": ["cat", "car"]},
        {"id": 2, "type": "generative", "truth": ["person"], "hallu": ["TV"]},
        *({"id": i, "type": "discriminative-hallucination", "truth": no} for i in (3, 4, 5, 6)),
        *({"id": i, "type": "relation", "truth": no} for i in (7, 8, 9, 10)),
        {"id": 11, "type": "discriminative-relation", "truth": "yes"},
        {"id": 12, "type": "discriminative-attribute-state", "truth": "yes"},
        {"id": 13, "type": "discriminative-attribute-number", "truth": "no"},
        {"id": 14, "type": "discriminative-attribute-number", "truth": "yes"},
        {"id": 15, "type": "discriminative-attribute-action", "truth": "yes"},
    ]
    (root / "relation.json").write_text(json.dumps(relation))
    (root / "annotations.json").write_text(json.dumps(annotations))
    (root / "safe_words.txt").write_text("sign\nlight\n")
    shutil.copy(DATA / "metrics.txt", root / "metrics.txt")
    return root


def gen_one(root: Path, sid: int, response: str, sim: WordSimilarity | str = "none"):
    result = AmberScorer(root, sim).score_generative([{"id": sid, "response": response}])
    return result.generative, result.records[0]


def test_safe_words_txt_still_counts_in_the_chair_denominator(tiny):
    g, rec = gen_one(tiny, 1, "A car, a sign and a dog.")
    assert rec.mentions == ("car", "sign", "dog") and rec.safe_listed == ("sign",) and rec.hallucinated == ("car",)
    assert g.CHAIR == 33.3  # 1 / 3 mentions, not 1 / 2
    assert (g.Cover, g.Hal, g.Cog) == (50.0, 100.0, 50.0)


def test_exact_hallu_hit_does_not_continue(tiny):
    """'cat' is a hallucination object, yet a similarity > 0.8 with the truth 'dog' keeps it from being hallucinated;
    and after the exact hit the scorer still walks ha_words and safe_words through the similarity."""
    rec_sim = Recording(TableSimilarity({("cat", "dog"): 0.9}))
    g, rec = gen_one(tiny, 1, "A cat.", rec_sim)
    assert rec.hallu_mentioned == ("cat",) and rec.covered == ("dog",) and rec.hallucinated == ()
    assert (g.CHAIR, g.Cover, g.Cog) == (0.0, 50.0, 50.0)
    assert g.Hal == 0.1  # 100 - 1/1.001*100: no hallucination still prints 0.1
    assert rec_sim.calls == [
        ("cat", "kitten"),
        ("cat", "truck"),
        ("cat", "cat"),
        ("cat", "car"),
        ("cat", "puppy"),
        ("cat", "lawn"),
        ("cat", "dog"),
    ]
    # with no similarity the same noun is a hallucination that is also counted by Cog
    g, rec = gen_one(tiny, 1, "A cat.")
    assert rec.hallucinated == ("cat",) and rec.hallu_mentioned == ("cat",) and g.CHAIR == 99.9


def test_similarity_threshold_is_strict_and_table_is_symmetric(tiny):
    _, rec = gen_one(tiny, 1, "A truck.", TableSimilarity({("dog", "truck"): 0.8}))
    assert rec.hallucinated == ("truck",)  # 0.8 is not > 0.8
    _, rec = gen_one(tiny, 1, "A truck.", TableSimilarity({("dog", "truck"): 0.81}))
    assert rec.hallucinated == () and rec.covered == ("dog",) and rec.similar == (("truck", "dog"),)


def test_case_sensitive_nouns(tiny):
    g, rec = gen_one(tiny, 2, "A Person watches a TV.")
    assert rec.mentions == ("TV",)  # "Person" is not in the vocabulary; "TV" is
    assert (g.CHAIR, g.Cover) == (99.9, 0.0)  # 1/1 prints 99.9: the counters start at 0.001
    g, rec = gen_one(tiny, 2, "A person watches a tv.")
    assert rec.mentions == ("person",) and (g.CHAIR, g.Cover) == (0.0, 99.9)


def disc(root: Path, answers: dict[int, str], mode: str = "official"):
    return (
        AmberScorer(root, "none")
        .score_discriminative([{"id": i, "response": a} for i, a in answers.items()], answer_mode=mode)
        .discriminative
    )


def test_existence_f1_epsilon_and_no_is_the_positive_class(tiny):
    answers = {3: "No", 4: "No", 5: "Yes", 6: "Yes", 7: "No", 8: "No", 9: "Yes", 10: "Yes"}
    d = disc(tiny, answers)
    ex, rel = d.dimensions["Existence"], d.dimensions["Relation"]
    assert (ex.Precision, ex.Recall) == (rel.Precision, rel.Recall) == (100.0, 50.0)
    assert ex.F1 == 66.6 and rel.F1 == 66.7  # eps 0.001 for Existence, 0.0001 elsewhere
    assert ex.Accuracy == 50.0


def test_f1_from_rounded_precision_and_recall(tiny):
    # truth-no 7, 8, 9 and truth-yes 11: "No" answers 7, 8 (right) and 11 (wrong) -> P = R = 2/3
    d = disc(tiny, {7: "No", 8: "No", 9: "Yes", 11: "No"})
    rel = d.dimensions["Relation"]
    assert (rel.Precision, rel.Recall) == (66.6, 66.6)  # 2/3.001, not 66.7
    assert rel.F1 == 66.6  # from the rounded 66.6s; from 2/3 and 2/3 it would be 66.7
    assert d.overall.as_dict() == {"Accuracy": 50.0, "Precision": 66.6, "Recall": 66.6, "F1": 66.6}


def test_lower_case_answers_are_wrong_unless_extraction_is_asked(tiny):
    answers = {12: "yes", 13: "no", 14: "Yes", 15: "Yes"}
    d = disc(tiny, answers)
    assert d.answered_other == 2 and d.answered_no == 0
    assert d.dimensions["Number"].Accuracy == 50.0 and d.dimensions["State"].Accuracy == 0.0
    assert d.dimensions["Number"].Recall == 0.0  # "no" does not count as a "No"
    # Attribute pools three counters that each start at 0.001: 2 / 4.003
    assert d.dimensions["Attribute"].Accuracy == round(2 / 4.003 * 100, 1) == 50.0
    e = disc(tiny, {12: "Yes", 14: "Yes", 15: "Yes"})
    assert e.dimensions["Attribute"].Accuracy == 99.9  # 3 / 3.003 (3 / 3.001 would print 100.0)
    f = disc(tiny, {12: " yes, there is.", 13: "No.", 14: "Yes", 15: "**Yes**"}, mode="yes-no")
    assert f.dimensions["Attribute"].Accuracy == 99.9 and f.answered_other == 0
    assert normalize_answer(" Yes\n", "official") == " Yes\n"
    assert normalize_answer(" Yes\n", "strip") == "Yes"
    assert normalize_answer("Maybe", "yes-no") == "Maybe"
    with pytest.raises(ConfigError, match="answer mode"):
        normalize_answer("Yes", "loose")


# ------------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    "records,needle",
    [
        ([{"id": 1, "response": "A dog."}, {"id": 99, "response": "x"}], "record 1: unknown id 99"),
        ([{"id": 0, "response": "x"}], "record 0: unknown id 0"),
        ([{"id": 3, "response": "No"}, {"id": 3, "response": "Yes"}], "record 1: id 3 appears twice"),
        ([{"id": 3}], "record 0 (id 3): missing or non-string field 'response'"),
        ([{"response": "Yes"}], "record 0: missing or non-integer field 'id'"),
        ([{"id": "3", "response": "Yes"}], "record 0: missing or non-integer field 'id'"),
        (["Yes"], "record 0 is not an object"),
    ],
)
def test_bad_responses_name_file_and_record(tiny, tmp_path, records, needle):
    path = tmp_path / "responses.json"
    path.write_text(json.dumps(records))
    with pytest.raises(DataError) as err:
        AmberScorer(tiny, "none").score(load_responses(path), source=path)
    assert str(path) in str(err.value) and needle in str(err.value)


def test_wrong_half_and_non_list(tiny, tmp_path):
    scorer = AmberScorer(tiny, "none")
    with pytest.raises(DataError, match="id 3 is a discriminative-hallucination question, not generative"):
        scorer.score_generative([{"id": 3, "response": "No"}])
    with pytest.raises(DataError, match="id 1 is a generative question"):
        scorer.score_discriminative([{"id": 1, "response": "A dog."}])
    (tmp_path / "r.json").write_text('{"id": 1}')
    with pytest.raises(DataError, match="r.json.*expected a JSON list"):
        load_responses(tmp_path / "r.json")


def test_bad_data_files(tiny, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(tiny, root)
    (root / "metrics.txt").write_text("chair_num=0.001\n")
    with pytest.raises(DataError, match="metrics.txt: missing counters: chair_score"):
        AmberScorer(root, "none")
    shutil.copy(tiny / "metrics.txt", root / "metrics.txt")
    (root / "annotations.json").write_text(json.dumps([{"id": 2, "type": "relation", "truth": "no"}]))
    with pytest.raises(DataError, match="entry 0 has id 2, expected 1"):
        AmberScorer(root, "none")


# ------------------------------------------------------------------------------------------------ similarity specs
def test_parse_similarity(tmp_path):
    assert isinstance(parse_similarity("none"), NoSimilarity)
    sp = parse_similarity("spacy:en_core_web_md")
    assert isinstance(sp, SpacySimilarity) and sp.spec == "spacy:en_core_web_md"
    table = tmp_path / "t.json"
    table.write_text(json.dumps([{"word1": "a", "word2": "b", "similarity": 0.9}]))
    t = parse_similarity(f"table:{table}")
    assert t.similarity("a", "b") == t.similarity("b", "a") == 0.9 and t.similarity("a", "c") == 0.0
    for bad, needle in [
        ("spacy", "unknown AMBER similarity"),
        ("spacy:", "names no spaCy model"),
        ("table:", "names no table file"),
        (f"table:{tmp_path}/nope.json", "does not exist"),
        ("cosine", "unknown AMBER similarity"),
        ("", "unknown AMBER similarity"),
    ]:
        with pytest.raises(ConfigError, match=needle):
            parse_similarity(bad)
    table.write_text(
        json.dumps([{"word1": "a", "word2": "b", "similarity": 0.9}, {"word1": "a", "word2": "b", "similarity": 0.1}])
    )
    with pytest.raises(DataError, match="t.json: entry 1: pair"):
        parse_similarity(f"table:{table}")
    table.write_text(json.dumps([{"word1": "a", "word2": "b", "similarity": "high"}]))
    with pytest.raises(DataError, match="entry 0 .* must be a number"):
        parse_similarity(f"table:{table}")


def test_missing_spacy_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "spacy", None)  # `import spacy` raises ImportError
    backend = SpacySimilarity("en_core_web_lg")
    for call in (backend.check, lambda: backend.similarity("dog", "cat")):
        with pytest.raises(
            HarnessError, match=r"python3?\S* -m pip install spacy` and `\S+ -m spacy download en_core_web_lg`"
        ):
            call()
    with pytest.raises(HarnessError, match="needs spaCy"):
        AmberGenerative(data_root=DATA)  # default similarity spacy:en_core_web_lg


def test_missing_spacy_model_is_a_clear_error(monkeypatch):
    fake = types.ModuleType("spacy")
    fake.util = types.SimpleNamespace(is_package=lambda name: False)

    def load(name):
        raise OSError(f"[E050] Can't find model '{name}'.")

    fake.load = load
    monkeypatch.setitem(sys.modules, "spacy", fake)
    backend = SpacySimilarity("en_core_web_lg")
    with pytest.raises(HarnessError, match=r"not installed; install it with `python -m spacy download en_core_web_lg`"):
        backend.check()
    with pytest.raises(HarnessError, match=r"cannot load spaCy model 'en_core_web_lg'.*python -m spacy download"):
        backend.similarity("dog", "cat")


def test_missing_nltk_data_is_a_clear_error(monkeypatch, tmp_path, tiny):
    import nltk

    monkeypatch.setattr(nltk.data, "path", [str(tmp_path)])
    monkeypatch.setattr(text, "PROJECT_NLTK_DATA", tmp_path / "not-shipped")
    with pytest.raises(HarnessError) as err:
        text.require_nltk_resources()
    msg = str(err.value)
    for needle in (
        "punkt_tab",
        "averaged_perceptron_tagger_eng",
        "wordnet",
        "NLTK_DATA",
        "not-shipped",
        f"`{sys.executable} -m nltk.downloader -d ~/nltk_data punkt_tab averaged_perceptron_tagger_eng wordnet`",
        str(tmp_path),
    ):
        assert needle in msg
    with pytest.raises(HarnessError, match="NLTK data missing"):
        AmberScorer(tiny, "none").score_generative([{"id": 1, "response": "A dog."}])
    with pytest.raises(HarnessError, match="NLTK data missing"):
        AmberGenerative(data_root=DATA, options={"amber_similarity": "none"})
    # the discriminative half needs no NLTK data
    assert AmberScorer(tiny, "none").score_discriminative([{"id": 3, "response": "No"}]).discriminative


# ------------------------------------------------------------------------------------------------ tasks
def test_tasks_are_registered_and_load_samples():
    assert {"amber", "amber_g", "amber_d"} <= set(_TASKS)
    g = AmberGenerative(data_root=DATA, options={"amber_similarity": "none"})
    s = g.samples(limit=2)
    assert [x.id for x in s] == ["1", "2"] and s[0].prompt == "Describe this image."
    assert s[0].images[0].path == str(DATA / "image" / "AMBER_1.jpg") and s[0].max_new_tokens == 512
    assert s[0].meta == {"type": "generative"}
    d = AmberDiscriminative(data_root=DATA, image_root="/imgs")
    s = d.samples(limit=1)
    assert s[0].id == "1005" and s[0].max_new_tokens == 16 and s[0].images[0].path == "/imgs/AMBER_1.jpg"
    with pytest.raises(ConfigError, match="needs --data-root.*annotations.json.*junyangwang0410/AMBER"):
        AmberDiscriminative().check_files()  # the data root is resolved on first use
    with pytest.raises(ConfigError, match="unknown amber_answer"):
        AmberDiscriminative(data_root=DATA, options={"amber_answer": "fuzzy"})


def test_amber_task_scores_the_golden_run(tmp_path):
    table = tmp_path / "md.json"
    table.write_text(json.dumps([{k: c[k] for k in ("word1", "word2", "similarity")} for c in md_calls()]))
    task = Amber(data_root=DATA, options={"amber_similarity": f"table:{table}"})
    samples = task.samples()
    rows = load_responses(GOLDEN / "amber_all_responses.json")
    responses = {str(r["id"]): Response(str(r["id"]), r["response"], "stop") for r in rows}
    m = task.score(samples, responses)
    assert m.headline == {
        "CHAIR": 16.5,
        "Cover": 71.3,
        "Hal": 60.0,
        "Cog": 16.2,
        "Accuracy": 62.5,
        "Precision": 76.2,
        "Recall": 57.1,
        "F1": 65.3,
        "AMBER Score": 74.4,
    }
    assert m.breakdown["Existence"] == {"Accuracy": 62.5, "Precision": 100.0, "Recall": 62.5, "F1": 76.9}
    assert m.breakdown["Relation"]["F1"] == 66.6
    assert m.counts["scored"] == 68 and m.counts["failed"] == 15220 - 68
    assert any("answers: official" in n for n in m.notes) and any(f"table:{table}" in n for n in m.notes)

    g = AmberGenerative(data_root=DATA, options={"amber_similarity": "none"})
    gm = g.score(g.samples(), responses)
    assert gm.headline == {"CHAIR": 17.4, "Cover": 71.3, "Hal": 60.0, "Cog": 16.2}
    assert gm.counts["scored"] == 20 and gm.counts["failed"] == 984

    d = AmberDiscriminative(data_root=DATA, options={"amber_answer": "yes-no"})
    dm = d.score(d.samples(), responses)
    assert dm.headline["Accuracy"] > 62.5  # "no" (id 1012) is now read as "No"
    assert any("answers: yes-no" in n for n in dm.notes)
