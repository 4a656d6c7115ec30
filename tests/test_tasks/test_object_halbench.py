"""Object HalBench: the golden numbers of RLHF-V's scorer, each documented quirk, the GPT path, bad input."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest

from harness.errors import ConfigError, DataError, HarnessError, ImageError, MissingDataFile
from harness.judge import Judge, JudgeRequest, JudgeResult
from harness.task import get_task
from harness.types import Response
from tasks.object_halbench import (
    EXTRACTION_PROMPT_TEMPLATE,
    Answer,
    CocoGroundTruth,
    CocoVocabulary,
    NltkPhraseAnalyzer,
    ObjectHalBench,
    PhraseAnalyzer,
    UnusableReply,
    build_extraction_prompt,
    clean_answer,
    parse_object_list,
    postagging,
    read_answer_file,
    refine_objects,
    score_answer_file,
    score_answers,
    trim_coh,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
DATA = FIXTURES / "data" / "object_halbench"
GOLDEN = FIXTURES / "golden" / "object_halbench"
QUESTION = "Provide a thorough description of the given image."
IMAGE_IDS = list(range(900001, 900013))


# --------------------------------------------------------------------------------------------------- fixtures
def png_b64(colour: tuple[int, int, int], size: int = 8) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def write_questions(path: Path, image_ids: Sequence[int] = IMAGE_IDS) -> None:
    lines = [json.dumps({"image_id": i, "question": QUESTION, "image": png_b64((i % 256, 40, 90))}) for i in image_ids]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def make_root(root: Path, *, questions: bool = True) -> Path:
    """A data root: synonyms_refine.txt, the golden synthetic COCO annotations, a question file with drawn images."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(DATA / "synonyms_refine.txt", root / "synonyms_refine.txt")
    shutil.copytree(GOLDEN / "coco_annotations", root / "coco_annotations")
    for p in (root / "coco_annotations").iterdir():
        p.chmod(0o644)
    if questions:
        write_questions(root / "obj_halbench_300_with_image.jsonl")
    return root


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return make_root(tmp_path_factory.mktemp("objhal") / "data")


@pytest.fixture(scope="module")
def vocab() -> CocoVocabulary:
    return CocoVocabulary.from_file(DATA / "synonyms_refine.txt")


@pytest.fixture(scope="module")
def golden_metrics(root):
    return score_answer_file(GOLDEN / "obj_halbench_answer.jsonl", root)


def golden_lines() -> list[dict[str, Any]]:
    return [json.loads(line) for line in (GOLDEN / "obj_halbench_answer.jsonl").read_text().splitlines()]


def printed_eval_row() -> dict[str, float]:
    """The row under ``CHAIRs CHAIRsr CHAIRi sent_num coco_num avg_len`` in the official stdout."""
    lines = (GOLDEN / "objhal_rlhfv.stdout.txt").read_text().splitlines()
    i = next(k for k, line in enumerate(lines) if line.startswith("CHAIRs\tCHAIRsr"))
    return dict(zip(lines[i].split("\t"), map(float, lines[i + 1].split("\t"))))


def printed_summary() -> dict[str, float]:
    out = {}
    for line in (GOLDEN / "objhal_summary.txt").read_text().splitlines():
        m = re.match(r"^(.+?)\s*:\s*([\d.]+)$", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


# --------------------------------------------------------------------------------------------------- golden
def test_golden_printed_numbers(golden_metrics):
    m = golden_metrics
    assert m.headline == {
        "CHAIRs": 66.7,
        "CHAIRs_refine": 72.7,
        "CHAIRi": 23.4,
        "Response Hall": 72.73,
        "Object Hall": 23.40,
        "Object Recall": 96.55,
        "Average Length": 20.58,
    }
    assert m.breakdown["eval_script"] == printed_eval_row()  # 66.7 72.7 23.4 12 11 20.6
    assert m.breakdown["summary"] == printed_summary()  # Response Hall 72.73 ... GT Word Number 29.0
    assert m.counts["responses"] == 12 and m.counts["coco_responses"] == 11
    assert m.counts["mentions"] == 47 and m.counts["hallucinated_mentions"] == 11
    assert m.counts["hallucinated_responses"] == 8


def test_golden_overall_metrics_bit_exact(golden_metrics):
    official = json.loads((GOLDEN / "hall_obj_halbench_answer_-1.json").read_text())["overall_metrics"]
    official = {k: v for k, v in official.items() if not k.startswith("all_gpt")}
    assert golden_metrics.breakdown["overall_metrics"] == official


def test_golden_per_image(golden_metrics):
    sentences = json.loads((GOLDEN / "hall_obj_halbench_answer_-1.json").read_text())["sentences"]
    assert len(golden_metrics.records) == len(sentences) == 12
    for rec, off in zip(golden_metrics.records, sentences):
        assert rec["id"] == str(off["image_id"]) and rec["image_id"] == off["image_id"]
        assert rec["caption"] == off["caption"]  # "Assistant:" removed and stripped (900001)
        assert rec["mentioned"] == off["mscoco_generated_words"]
        assert rec["hallucinated"] == [pair for _, pair in off["mscoco_hallucinated_words"]]
        assert rec["gt_objects"] == sorted(off["mscoco_gt_words"])
        assert rec["words"] == off["words"]
        assert rec["hallucination_idxs"] == off["hallucination_idxs"]
        assert rec["CHAIRs"] == off["metrics"]["CHAIRs"] and rec["CHAIRi"] == off["metrics"]["CHAIRi"]


def test_double_word_count(vocab):
    assert vocab.double_word_count == 30  # the official "double word count: 30"
    assert "double word count: 30" in (GOLDEN / "objhal_rlhfv.stdout.txt").read_text()


def test_golden_through_the_task_and_engine_responses(root, golden_metrics):
    """Same numbers from samples + read_responses + score (``harness score``) and from raw engine responses."""
    task = get_task("object_halbench")(data_root=root)
    assert isinstance(task, ObjectHalBench) and not task.needs_judge()
    samples = task.samples()
    assert [s.id for s in samples] == [str(i) for i in IMAGE_IDS]
    assert samples[0].prompt == QUESTION and samples[0].reference == 900001
    assert samples[0].images[0].load(samples[0].id).size == (8, 8)
    via_file = task.score(samples, task.read_responses(GOLDEN / "obj_halbench_answer.jsonl"))
    raw = {str(r["image_id"]): Response(str(r["image_id"]), r["text"], "stop") for r in golden_lines()}
    via_engine = ObjectHalBench(data_root=root).score(samples, raw)
    for m in (via_file, via_engine):
        assert m.headline == golden_metrics.headline
        assert m.breakdown == golden_metrics.breakdown
        assert [r["mentioned"] for r in m.records] == [r["mentioned"] for r in golden_metrics.records]
    assert via_engine.counts["failed"] == 0
    partial = ObjectHalBench(data_root=root).score(samples, dict(list(raw.items())[:3]))
    assert partial.counts["scored"] == 3 and partial.counts["failed"] == 9


def test_answer_file_variants_pair_by_line_order(root, tmp_path, golden_metrics):
    """No image_id (taken from the question file by line order), ``answer`` and ``prompt`` fields."""
    path = tmp_path / "answers.jsonl"
    path.write_text("".join(json.dumps({"prompt": r["question"], "answer": r["text"]}) + "\n" for r in golden_lines()))
    m = score_answer_file(path, root)
    assert m.headline == golden_metrics.headline
    assert [r["image_id"] for r in m.records] == IMAGE_IDS


# --------------------------------------------------------------------------------------------------- quirks
def score(answers: Sequence[tuple[str, set[str]]], vocab: CocoVocabulary):
    """Score captions against hand-written ground truths (one image per answer)."""
    items = [
        Answer(id=str(i), image_id=i, question=QUESTION, caption=clean_answer(text))
        for i, (text, _) in enumerate(answers)
    ]
    gt = {i: frozenset(objs) for i, (_, objs) in enumerate(answers)}
    return score_answers(items, gt, vocab)


def test_every_mention_counts(vocab):
    r = score([("A dog chases another dog and two dogs near a cat.", {"dog"})], vocab)
    assert r.records[0]["mentioned"] == [["dog", "dog"]] * 3 + [["cat", "cat"]]
    assert r.records[0]["hallucinated"] == [["cat", "cat"]]
    assert r.overall["CHAIRi"] == 1 / 4  # no dedup: 4 mentions
    assert r.overall["coco_word_count"] == 1  # but recall counts distinct correct classes
    # synonyms of one class are separate mentions too
    r = score([("A man, a woman and a child.", set())], vocab)
    assert r.records[0]["mentioned"] == [["man", "person"], ["woman", "person"], ["child", "person"]]
    assert r.overall["CHAIRi"] == 1.0


def test_bigram_merge(vocab):
    cases = {
        "A hot dog.": [["hot dog", "hot dog"]],  # not "dog"
        "A baby bird and an adult cat.": [["bird", "bird"], ["cat", "cat"]],
        "A passenger jet and a passenger train.": [["jet", "airplane"], ["train", "train"]],
        "A man in a bow tie.": [["man", "person"], ["tie", "tie"]],
        "Two wine glasses.": [["wine glass", "wine glass"]],  # plural lemmatised, then merged
        "A train track near home plate.": [],  # merged into non-COCO words: no train
        "A teddy bear.": [["teddy bear", "teddy bear"]],
    }
    for text, expected in cases.items():
        assert [list(p) for p in vocab.caption_to_words(text).node_words] == expected, text


def test_toilet_seat(vocab):
    assert vocab.caption_to_words("The toilet seat is up.").words == ("toilet",)
    assert vocab.caption_to_words("A seat.").node_words == (("seat", "chair"),)
    cw = vocab.caption_to_words("A seat next to the toilet and a dog.")
    assert cw.words == ("toilet", "dog")  # "seat" dropped because "toilet" is there
    # official quirk: indices are taken by position in the seat-filtered list, so they shift by one
    assert cw.raw_words[5] == "toilet" and cw.raw_words[8] == "dog"
    assert cw.idxs == (4, 7)


def test_plural_lemmatization_and_case(vocab):
    cw = vocab.caption_to_words("Three KNIVES, two mice and some people.")
    assert cw.node_words == (("knife", "knife"), ("mouse", "mouse"), ("people", "person"))


def test_assistant_removal_and_length(vocab):
    assert clean_answer("Assistant: A cat sits. Assistant:  ") == "A cat sits."
    r = score([("Assistant: A cat sits.", {"cat"}), ("A  cat.", {"cat"})], vocab)
    assert [rec["caption"] for rec in r.records] == ["A cat sits.", "A  cat."]
    assert r.overall["avg_word_len"] == (3 + 3) / 2  # split(" "): a double space is one more "word"


def test_chairs_vs_chairs_refine(vocab):
    r = score([("A dog and a cat.", {"dog"}), ("A sunny beach.", set()), ("A bus.", {"bus"})], vocab)
    assert r.overall["CHAIRs"] == 1 / 3  # every response
    assert r.overall["CHAIRs_refine"] == 1 / 2  # only responses with a COCO mention
    assert r.overall["CHAIRi"] == 1 / 3
    assert r.overall["obj_rec"] == 2 / 2


def test_nothing_to_divide_by(vocab, root):
    r = score([("A sunny beach.", set())], vocab)
    assert r.overall["CHAIRs"] == 0.0 and r.overall["CHAIRs_refine"] is None and r.overall["CHAIRi"] is None
    task = ObjectHalBench(data_root=root)
    m = task.score_answers([Answer("900011", 900011, QUESTION, "A sunny beach.")])
    assert m.headline == {"CHAIRs": 0.0, "Average Length": 3.0}  # image 900011 has no ground-truth object either
    assert any("divide by zero" in n and "CHAIRs_refine" in n and "Object Recall" in n for n in m.notes)


def test_answer_file_trimming(tmp_path):
    """Official preprocess_coh_results, applied when the answer file's *path* contains "coh" (any part of it)."""
    assert "coh" not in str(tmp_path)
    assert trim_coh("bad. The following is a response without hallucination. A dog.") == "A dog."
    assert trim_coh("A dog. The following is a response with hallucination. A cat.") == "A dog."
    line = {
        "image_id": 900001,
        "question": QUESTION,
        "text": "A cat. Generate a response without errors. A dog and a man with a frisbee.",
    }
    (tmp_path / "cohort").mkdir()
    for name, caption in (
        ("coh_answers.jsonl", "A dog and a man with a frisbee."),
        ("cohort/answers.jsonl", "A dog and a man with a frisbee."),
        ("answers.jsonl", line["text"]),
    ):
        path = tmp_path / name
        path.write_text(json.dumps(line) + "\n")
        assert read_answer_file(path)[0].caption == caption, name


# --------------------------------------------------------------------------------------------------- GPT path
class RecordingJudge(Judge):
    """Replies by request id; records every request."""

    model = "fake-gpt"

    def __init__(self, replies: dict[str, str | None]):
        self.replies = replies
        self.requests: list[JudgeRequest] = []

    def judge(self, requests: Sequence[JudgeRequest]) -> dict[str, JudgeResult]:
        self.requests += requests
        return {
            r.id: JudgeResult(r.id, self.replies.get(r.id), None if self.replies.get(r.id) else "no reply")
            for r in requests
        }

    def describe(self) -> dict[str, Any]:
        return {"judge": "recording"}


GPT_ANSWERS = {
    900001: "The image shows a man playing with his dogs in a park, and a child on a bench.",
    900003: "A bathroom with a toilet, a sink and a mirror.",
    900007: "A passenger jet.",  # 3 words: no judge call, no objects
    900009: "A hot dog next to a bottle of soda and a bowl of chips.",  # judge fails
    900011: "A beach at sunset with waves on the sand.",  # unreadable reply
    900012: "A woman rides a horse with a dog while people watch.",
}
GPT_REPLIES = {
    "900001": '["man", "dogs", "frisbee", "child", "bench"]',
    "900003": 'Here are the objects:\n["toilet seat", "sink", "mirror"]',
    "900009": None,
    "900011": "There are no objects.",
    "900012": '["woman", "horse", "dog", "people", "hot dogs"]',
}


def gpt_answer_file(tmp_path: Path) -> Path:
    path = tmp_path / "gpt_answers.jsonl"
    path.write_text(
        "".join(json.dumps({"image_id": i, "question": QUESTION, "text": t}) + "\n" for i, t in GPT_ANSWERS.items())
    )
    return path


def test_gpt_path_with_replayed_judge(root, tmp_path):
    task = ObjectHalBench(data_root=root, options={"objhal_method": "gpt", "objhal_lemmatizer": "nltk"})
    assert task.needs_judge() and task.default_judge_model == "gpt-3.5-turbo-0613"
    judge = RecordingJudge(GPT_REPLIES)
    m = task.score_answer_file(gpt_answer_file(tmp_path), judge)

    # requests: all but the 3-word answer, one system message with the official prompt, temperature 0.2
    assert [r.id for r in judge.requests] == ["900001", "900003", "900009", "900011", "900012"]
    req = judge.requests[0]
    assert req.messages == ({"role": "system", "content": build_extraction_prompt(QUESTION, GPT_ANSWERS[900001])},)
    assert req.temperature == 0.2 and req.max_tokens == 512
    assert "<image> " + QUESTION in req.messages[0]["content"] and GPT_ANSWERS[900001] in req.messages[0]["content"]

    assert m.counts["judge_calls"] == 5 and m.counts["judge_skipped_short"] == 1
    assert m.counts["judge_failed"] == 2 and m.counts["judge_unparsed"] == 1
    assert m.counts["responses"] == 4  # failed judgments are left out, not scored as empty
    by_id = {r["id"]: r for r in m.records}
    assert by_id["900009"]["status"] == "judge_failed" and by_id["900011"]["status"] == "judge_unparsed"
    assert by_id["900007"]["judge"] == "skipped_short" and by_id["900007"]["mentioned"] == []
    assert by_id["900001"]["words"] == ["man", "dog", "frisbee", "child", "bench"]
    assert by_id["900003"]["mentioned"] == [["toilet", "toilet"], ["sink", "sink"]]  # "toilet seat" -> toilet
    assert by_id["900012"]["hallucinated"] == [["dog", "dog"], ["hot dog", "hot dog"]]
    # hand-computed: hallucinated responses 900001 (bench) and 900012 (dog, hot dog) of 4 scored, 3 with mentions;
    # mentions 5 + 2 + 0 + 5 = 12, hallucinated 1 + 0 + 0 + 2 = 3; recall (3 + 2 + 0 + 2) / (3 + 2 + 1 + 2)
    lengths = [len(GPT_ANSWERS[i].split(" ")) for i in (900001, 900003, 900007, 900012)]
    assert m.headline == {
        "CHAIRs": 50.0,
        "CHAIRs_refine": 66.7,
        "CHAIRi": 25.0,
        "Response Hall": 66.67,
        "Object Hall": 25.0,
        "Object Recall": 87.5,
        "Average Length": float("%.2f" % (sum(lengths) / 4)),
    }
    assert any("method: gpt" in n for n in m.notes)
    assert any("NOT the official spaCy" in n for n in m.notes)
    assert any("2 answers left out" in n for n in m.notes)


def test_gpt_reviews_in_question_order(root, tmp_path):
    """``--reviews`` as a list over the question file; replies for short answers are never used."""
    task = ObjectHalBench(data_root=root, options={"objhal_method": "gpt", "objhal_lemmatizer": "nltk"})
    reviews = tmp_path / "reviews.json"
    reviews.write_text(json.dumps([GPT_REPLIES.get(str(i), "unused") for i in IMAGE_IDS]))
    judge = task.read_reviews(reviews)
    samples = task.samples()
    responses = task.read_responses(gpt_answer_file(tmp_path))
    m = task.score(samples, responses, judge)
    assert m.headline["CHAIRs"] == 50.0 and m.counts["judge_failed"] == 2
    assert m.counts["scored"] == 6 and m.counts["failed"] == 6  # questions without an answer


class SpacyLike(PhraseAnalyzer):
    """Stands in for en_core_web_trf with fixed (lemma, tag) analyses."""

    official = True
    table: ClassVar[dict[str, list[tuple[str, str]]]] = {
        "a coffee cup": [("a", "DT"), ("coffee", "NN"), ("cup", "NN")],
        "a red car": [("a", "DT"), ("red", "JJ"), ("car", "NN")],
        "a cars": [("a", "DT"), ("car", "NNS")],
        "a teddy bears": [("a", "DT"), ("teddy", "NN"), ("bear", "NNS")],
        "a man on a bench": [("a", "DT"), ("man", "NN"), ("on", "IN"), ("a", "DT"), ("bench", "NN")],
        "a seat": [("a", "DT"), ("seat", "NN")],
        "a toilet": [("a", "DT"), ("toilet", "NN")],
    }

    @property
    def spec(self) -> str:
        return "spacy-like"

    def analyse(self, text: str) -> list[tuple[str, str]]:
        return self.table[text]


def test_official_phrase_refinement(vocab):
    assert postagging([("a", "DT"), ("coffee", "NN"), ("cup", "NN"), ("on", "IN"), ("table", "NN")]) == [
        "coffee cup",
        "table",
    ]
    objs = refine_objects(["coffee cup", "red car", "cars", "teddy bears", "man on a bench"], SpacyLike(), vocab)
    # compound nouns stay joined (and then match nothing); duplicates dropped; double words win
    assert objs == ["coffee cup", "car", "teddy bear", "man", "bench"]
    assert [w for w, _ in vocab.objects_to_coco(objs).node_words] == ["car", "teddy bear", "man", "bench"]
    seat = refine_objects(["seat", "toilet"], SpacyLike(), vocab)
    assert vocab.objects_to_coco(seat).words == ("toilet",)  # toilet/seat rule on the object list


def test_reply_parsers():
    assert parse_object_list('["cat", "dog"]') == ["cat", "dog"]
    assert parse_object_list('Objects:\n["cat", "dog"]') == ["cat", "dog"]
    multi = '[\n  "cat",\n  "dog"\n]'
    fenced = '```json\n["cat", "dog"]\n```'
    assert parse_object_list(multi, "rlhf-v") == ["cat", "dog"]
    with pytest.raises(UnusableReply):
        parse_object_list(multi, "rlaif-v")  # RLAIF-V dropped the plain json.loads
    assert parse_object_list(fenced, "rlaif-v") == ["cat", "dog"]
    with pytest.raises(UnusableReply):
        parse_object_list(fenced, "rlhf-v")
    assert parse_object_list('"cat"') == ["c", "a", "t"]  # official: iterating a JSON string
    for bad in ("42", "null", "no objects", ""):
        with pytest.raises(UnusableReply):
            parse_object_list(bad)


def test_prompt_template_is_verbatim():
    assert EXTRACTION_PROMPT_TEMPLATE == (DATA / "gpt_object_extraction_prompt_template.txt").read_text()
    # str.replace, question first: a "{answer}" in the question is filled too (as officially)
    assert build_extraction_prompt("Q {answer}", "A").count("Q A") == 1


def test_gpt_needs_spacy_or_explicit_approximation(root, monkeypatch):
    monkeypatch.setitem(sys.modules, "spacy", None)  # spaCy not importable
    with pytest.raises(HarnessError, match=r"en_core_web_trf.*pip install spacy.*objhal_lemmatizer=nltk"):
        ObjectHalBench(data_root=root, options={"objhal_method": "gpt"})
    task = ObjectHalBench(data_root=root, options={"objhal_method": "gpt", "objhal_lemmatizer": "nltk"})
    assert isinstance(task.analyzer, NltkPhraseAnalyzer)
    with pytest.raises(ConfigError, match="needs a judge"):
        task.score_answers([Answer("900001", 900001, QUESTION, "A dog runs in a park.")])
    with pytest.raises(ConfigError, match="objhal_method"):
        ObjectHalBench(data_root=root, options={"objhal_method": "llm"})


# --------------------------------------------------------------------------------------------------- bad input
def test_malformed_question_line(tmp_path):
    root = make_root(tmp_path / "d")
    path = root / "obj_halbench_300_with_image.jsonl"
    lines = path.read_text().splitlines()
    lines[2] = lines[2][:-5]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as err:
        ObjectHalBench(data_root=root).samples()
    assert err.value.path == str(path) and err.value.line == 3


def test_question_file_fields_and_duplicates(tmp_path):
    root = make_root(tmp_path / "d")
    path = root / "obj_halbench_300_with_image.jsonl"
    path.write_text(json.dumps({"image_id": 1, "question": QUESTION}) + "\n")
    with pytest.raises(DataError, match="'image'") as err:
        ObjectHalBench(data_root=root).samples()
    assert err.value.line == 1
    write_questions(path, [5, 6, 5])
    with pytest.raises(DataError, match="appears twice") as err:
        ObjectHalBench(data_root=root).samples()
    assert err.value.line == 3


def test_bad_base64_image_fails_when_loaded(tmp_path):
    root = make_root(tmp_path / "d")
    path = root / "obj_halbench_300_with_image.jsonl"
    path.write_text(
        json.dumps({"image_id": 7, "question": QUESTION, "image": "abc"})
        + "\n"
        + json.dumps({"image_id": 8, "question": QUESTION, "image": base64.b64encode(b"junk").decode()})
        + "\n"
    )
    samples = ObjectHalBench(data_root=root).samples()  # loading the file works
    for sample in samples:
        with pytest.raises(ImageError) as err:
            sample.images[0].load(sample.id)
        assert err.value.sample_id == sample.id
    with pytest.raises(ImageError, match="line 1.*base64"):
        samples[0].images[0].load("7")


def test_missing_coco_files_are_named(tmp_path):
    root = make_root(tmp_path / "d")
    (root / "coco_annotations" / "instances_train2014.json").unlink()
    (root / "coco_annotations" / "captions_val2014.json").unlink()
    for call in (
        lambda: ObjectHalBench(data_root=root).samples(),
        lambda: score_answer_file(GOLDEN / "obj_halbench_answer.jsonl", root),
    ):
        with pytest.raises(MissingDataFile) as err:
            call()
        msg = str(err.value)
        assert "instances_train2014.json" in msg and "captions_val2014.json" in msg
        assert "annotations_trainval2014.zip" in msg and "cocodataset.org" in msg
    names = [f.relpath for f in ObjectHalBench.data_files]
    assert names == [
        "obj_halbench_300_with_image.jsonl",
        "synonyms_refine.txt",
        *(
            f"coco_annotations/{n}"
            for n in (
                "instances_val2014.json",
                "instances_train2014.json",
                "captions_val2014.json",
                "captions_train2014.json",
            )
        ),
    ]
    (root / "obj_halbench_300_with_image.jsonl").unlink()
    with pytest.raises(MissingDataFile, match="RLHF-V"):
        ObjectHalBench(data_root=root).samples()


def test_unknown_image_ids(root, tmp_path):
    path = tmp_path / "answers.jsonl"
    path.write_text(
        json.dumps({"image_id": 900001, "question": QUESTION, "text": "A dog."})
        + "\n"
        + json.dumps({"image_id": 123, "question": QUESTION, "text": "A cat."})
        + "\n"
    )
    with pytest.raises(DataError, match="not in the question file") as err:
        score_answer_file(path, root)
    assert err.value.path == str(path) and err.value.line == 2
    with pytest.raises(DataError, match="not in the question file") as err:
        ObjectHalBench(data_root=root).read_responses(path)
    assert err.value.line == 2
    # without a question file, an image that the COCO annotations do not have is an error too
    bare = make_root(tmp_path / "bare", questions=False)
    with pytest.raises(DataError, match=r"not in the COCO 2014 annotation files.*first: 123.*line 2"):
        score_answer_file(path, bare)


def test_answer_file_fields(root, tmp_path):
    path = tmp_path / "answers.jsonl"
    cases = [
        ({"image_id": 900001, "question": QUESTION}, "'text'"),
        ({"image_id": 900001, "text": "A dog."}, "'question'"),
        ({"image_id": "x", "question": QUESTION, "text": "A dog."}, "image_id"),
        ({"image_id": 900001, "question": QUESTION, "text": 5}, "'text' must be a string"),
    ]
    for rec, match in cases:
        path.write_text(
            json.dumps({"image_id": 900002, "question": QUESTION, "text": "A cup."}) + "\n" + json.dumps(rec) + "\n"
        )
        with pytest.raises(DataError, match=match) as err:
            score_answer_file(path, root)
        assert err.value.line == 2 and err.value.path == str(path)
    path.write_text("{not json\n")
    with pytest.raises(DataError) as err:
        score_answer_file(path, root)
    assert err.value.line == 1
    path.write_text(
        json.dumps({"image_id": 900001, "question": QUESTION, "text": "A dog."})
        + "\n" * 2
        + json.dumps({"image_id": 900001, "question": QUESTION, "text": "A cat."})
        + "\n"
    )
    with pytest.raises(DataError, match="answered twice"):
        score_answer_file(path, root)
    path.write_text(json.dumps({"question": QUESTION, "text": "A dog."}) + "\n")
    with pytest.raises(DataError, match="question file"):
        score_answer_file(path, make_root(tmp_path / "bare", questions=False))


# --------------------------------------------------------------------------------------------------- GT cache
def test_ground_truth_is_lazy_and_cached(tmp_path, monkeypatch, vocab):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    coco = make_root(tmp_path / "d", questions=False) / "coco_annotations"
    first = CocoGroundTruth(coco, vocab)
    gt = first.objects({900001, 900012, 42})
    assert first.files_read == 4
    assert gt == {900001: frozenset({"dog", "frisbee", "person"}), 900012: frozenset({"horse", "person"}), 42: None}
    cache_files = list((tmp_path / "cache" / "object_halbench").glob("gt-*.json"))
    assert len(cache_files) == 1
    assert set(json.loads(cache_files[0].read_text())["images"]) == {"900001", "900012", "42"}  # only those asked

    again = CocoGroundTruth(coco, vocab)
    assert again.objects({900012, 42}) == {900012: gt[900012], 42: None}
    assert again.files_read == 0  # from the cache
    assert again.objects({900003})[900003] == frozenset({"toilet", "sink"})
    assert again.files_read == 4  # a new image: the files are read again, the cache grows
    assert CocoGroundTruth(coco, vocab).objects({900001, 900003})[900003] == frozenset({"toilet", "sink"})

    st = (coco / "captions_train2014.json").stat()
    os.utime(coco / "captions_train2014.json", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    changed = CocoGroundTruth(coco, vocab)
    changed.objects({900001})
    assert changed.files_read == 4  # a changed annotation file invalidates the cache
    uncached = CocoGroundTruth(coco, vocab, cache=False)
    uncached.objects({900001})
    uncached.objects({900001})
    assert uncached.files_read == 8


# --------------------------------------------------------------------------------------------------- CLI
def test_cli_score(root, tmp_path, capsys, golden_metrics):
    """``harness score object_halbench --responses FILE`` (judge-free, then GPT with saved replies)."""
    from harness.cli import main

    assert (
        main(
            [
                "score",
                "object_halbench",
                "--responses",
                str(GOLDEN / "obj_halbench_answer.jsonl"),
                "--data-root",
                str(root),
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["headline"] == golden_metrics.headline and out["counts"]["responses"] == 12

    reviews = tmp_path / "reviews.json"
    reviews.write_text(json.dumps([GPT_REPLIES.get(str(i)) for i in IMAGE_IDS]))
    assert (
        main(
            [
                "score",
                "object_halbench",
                "--responses",
                str(gpt_answer_file(tmp_path)),
                "--data-root",
                str(root),
                "--objhal-method",
                "gpt",
                "--option",
                "objhal_lemmatizer=nltk",
                "--reviews",
                str(reviews),
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["headline"]["CHAIRs"] == 50.0 and out["counts"]["judge_failed"] == 2
    assert out["judge"]["ledger"]["calls"] == 5


# --------------------------------------------------------------------------------------------------- several prompts
def test_several_answers_per_image_are_each_a_response(root, tmp_path):
    """The paper's protocol: several prompts per image. Every line is a response (RLHF-V scores every line):
    CHAIRs over the responses, CHAIRi over all their mentions; ids IMAGE_ID#k keep the answers apart."""
    golden = [json.loads(line) for line in (GOLDEN / "obj_halbench_answer.jsonl").read_text().splitlines()]
    first, second = golden[0], golden[1]
    again = {**second, "image_id": first["image_id"], "question": "Describe the image in detail."}
    path = tmp_path / "eight.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in (first, again, second)))
    m = score_answer_file(path, root)
    assert [r["id"] for r in m.records] == [f"{first['image_id']}#1", f"{first['image_id']}#2", str(second["image_id"])]
    assert m.counts["scored"] == 3
    # hand-computed from the per-response records: CHAIRs = hallucinating responses / responses,
    # CHAIRi = hallucinated mentions / mentions, over the three responses
    hallucinating = sum(1 for r in m.records if r["hallucinated"])
    mentions = sum(len(r["mentioned"]) for r in m.records)
    hallucinated = sum(len(r["hallucinated"]) for r in m.records)
    assert m.headline["CHAIRs"] == round(100 * hallucinating / 3, 1)
    assert m.headline["CHAIRi"] == round(100 * hallucinated / mentions, 1)
    # the repeated answer is scored against its own image's ground truth, the same text as line 2 of the golden
    alone = {r["id"]: r for r in score_answer_file(GOLDEN / "obj_halbench_answer.jsonl", root).records}
    assert m.records[2]["hallucinated"] == alone[str(second["image_id"])]["hallucinated"]
    assert any("every answer is a response" in n for n in m.notes)


def test_score_cli_needs_no_question_file_when_answers_carry_image_ids(tmp_path, capsys):
    from harness.cli import main

    bare = make_root(tmp_path / "bare", questions=False)
    code = main(
        [
            "--log-level",
            "WARNING",
            "score",
            "object_halbench",
            "--responses",
            str(GOLDEN / "obj_halbench_answer.jsonl"),
            "--data-root",
            str(bare),
        ]
    )
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["headline"]["CHAIRs"] == 66.7 and out["headline"]["CHAIRi"] == 23.4
    assert out["coverage"] == {"samples": 12, "responses": 12, "missing": 0}


def test_question_file_with_several_prompts_per_image(tmp_path):
    root = make_root(tmp_path / "d", questions=False)
    path = root / "obj_halbench_300_with_image.jsonl"
    lines = [
        json.dumps({"image_id": i, "question": f"{QUESTION} ({k})", "image": png_b64((9, 9, 9))})
        for i in (900001, 900002)
        for k in range(8)
    ]
    path.write_text("\n".join(lines) + "\n")
    samples = ObjectHalBench(data_root=root).samples()
    assert [s.id for s in samples[:2]] == ["900001#1", "900001#2"] and len({s.id for s in samples}) == 16
    assert {s.reference for s in samples} == {900001, 900002}
