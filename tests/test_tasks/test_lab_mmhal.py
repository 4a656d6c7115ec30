"""lab_mmhal: MMHal-Bench's format and scorer over the lab world, judged by the rule-based rater served through the
OpenAI protocol on 127.0.0.1."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections import Counter

import pytest

from tasks import lab
from tasks import lab_mmhal as lm
from tasks.mmhal import QUESTION_TYPES, judge_prompt, parse_rating

CONTENTS = ["a small filled red circle", "two large outlined blue squares", "a large filled yellow star"]


def _rate(response: str, answer: str = "There is ...", question: str = "Describe this image.") -> int:
    rating, why = lm.rate(judge_prompt(CONTENTS, question, answer, response))
    assert why
    return rating


@pytest.mark.parametrize(
    "response, expected",
    [
        ("Yes", 5),
        ("yes, there is.", 5),
        ("No", 0),
        ("I cannot tell.", 3),
        ("", 3),
    ],
)
def test_yes_no_answers_are_rated_against_the_standard_answer(response, expected):
    assert _rate(response, answer="Yes", question="Is there a star in this image?") == expected


@pytest.mark.parametrize(
    "response, expected",
    [
        # every shape, every phrase right: very informative, no hallucination
        ("There are a small filled red circle, two large outlined blue squares and a large filled yellow star .", 5),
        # two of three shapes (at least half), nothing false
        ("There is a small filled red circle and a large filled yellow star .", 4),
        # one of three, nothing false; a bare shape word is a mention
        ("The star is above something .", 3),
        # a word naming a shape (synonyms of lab_objhal) is that shape: "ball" is a circle
        ("There is a ball, two boxes and a star .", 5),
        # an absent shape: hallucination, all present shapes mentioned
        ("There are a circle, two squares, a star and a triangle .", 2),
        # a wrong attribute in a full noun phrase: hallucination
        ("There are a small filled red circle, two large outlined purple squares and a large filled yellow star .", 2),
        # a wrong count
        ("There are a small filled red circle, three large outlined blue squares and a star .", 2),
        # hallucination, fewer than half of the shapes
        ("There is a small filled red triangle .", 0),
        ("There is a diamond, a circle and a star .", 1),
    ],
)
def test_descriptions_are_rated_by_objects_and_attributes(response, expected):
    assert _rate(response) == expected


def test_replies_carry_exactly_one_rating_the_official_parser_reads():
    for response, answer in [("Yes", "Yes"), ("No", "Yes"), ("There is a ball .", "There is ...")]:
        prompt = judge_prompt(CONTENTS, "Q?", answer, response)
        rating, parsed = parse_rating(lm.reply(prompt))
        assert parsed and rating == lm.rate(prompt)[0]
    assert lm.rate("not an MMHal prompt")[0] == 0


def _post(url: str, body: bytes) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_the_rater_speaks_the_openai_chat_protocol_on_localhost():
    server, url = lm.serve()
    try:
        assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
        prompt = judge_prompt(CONTENTS, "Is there a star in this image?", "Yes", "Yes")
        status, body = _post(
            url + "/chat/completions",
            json.dumps({"model": "m", "messages": [{"role": "user", "content": prompt}], "temperature": 0}).encode(),
        )
        assert status == 200 and body["object"] == "chat.completion" and body["model"] == "m"
        assert body["choices"][0]["message"]["content"].endswith("Rating: 5")
        assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
        assert _post(url + "/chat/completions", b"{not json")[0] == 400
        assert _post(url + "/completions", b"{}")[0] == 404
    finally:
        server.shutdown()
        server.server_close()


def test_the_benchmark_has_twelve_questions_of_each_type_balanced_over_labels(tmp_path):
    root = lab.generate_lab_benchmark(tmp_path / "mmhal", "mmhal")
    records = json.loads((root / lm.TEMPLATE_FILE).read_text())
    meta = lab.read_meta(root)
    assert len(records) == 96
    assert [r["question_type"] for r in records] == [QUESTION_TYPES[i % 8] for i in range(96)]
    assert Counter((r["question_type"], meta[str(i)]["label"]) for i, r in enumerate(records)) == {
        (t, label): 6 for t in QUESTION_TYPES for label in lab.LABELS
    }
    assert len({r["image_src"] for r in records}) == 96  # one image per question
    for r in records:
        assert (root / lab.IMAGE_DIR / r["image_src"]).is_file()
    # the questions and answers are lab_amber's for the same image
    amber = lab.generate_lab_benchmark(tmp_path / "amber", "amber")
    queries = json.loads((amber / "query" / "query_all.json").read_text())
    truth = {a["id"]: a["truth"] for a in json.loads((amber / "annotations.json").read_text())}
    by_image = {(q["image"], q["query"]): q["id"] for q in queries}
    for r in records:
        qid = by_image[(r["image_src"], r["question"])]
        if r["question"] == lab.GENERATIVE_QUERY:
            assert r["gt_answer"].startswith("There ")
        else:
            assert r["gt_answer"] == truth[qid].capitalize()
    probes = {meta[str(i)]["prior"] for i, r in enumerate(records) if r["question_type"] == "counting"}
    assert probes == {"count"}


def test_run_judges_through_the_local_rater_with_cache_and_ledger(tmp_path, capsys, monkeypatch):
    from harness.cli import main

    monkeypatch.setenv("OPENAI_API_KEY", "sk-lab-secret-0123456789")
    out = tmp_path / "runs"
    assert main(["run", "--tasks", "lab_mmhal", "--output-path", str(out)]) == 0
    run = out / "lab-llava-v1" / "lab_mmhal"
    judge = json.loads((run / "judge.json").read_text())
    assert judge["model"] == lm.RATER_MODEL and judge["base_url"].startswith("http://127.0.0.1:")
    assert judge["ledger"]["calls"] == 96 and judge["ledger"]["failed"] == 0
    metrics = json.loads((run / "metrics.json").read_text())
    records = [json.loads(line) for line in (run / "scores.jsonl").read_text().splitlines()]
    ratings = [r["rating"] for r in records]
    assert metrics["headline"]["Score"] == round(sum(ratings) / 96, 2)
    assert metrics["headline"]["HalRate"] == round(sum(r < 3 for r in ratings) / 96, 2)
    for label in lab.LABELS:
        mine = [r["rating"] for r in records if r["lab_label"] == label]
        assert len(mine) == 48 and metrics["headline"][f"Score ({label})"] == round(sum(mine) / 48, 2)
    for path in run.iterdir():
        assert "sk-lab-secret" not in path.read_text(errors="replace"), path

    # scoring the same responses again takes every judgment from the cache
    assert main(["run", "--tasks", "lab_mmhal", "--output-path", str(out), "--overwrite"]) == 0
    again = json.loads((run / "judge.json").read_text())
    assert again["ledger"]["cached"] == 96 and again["ledger"]["failed"] == 0
    assert json.loads((run / "metrics.json").read_text())["headline"] == metrics["headline"]
    capsys.readouterr()
