"""The lmms-eval bridge (``lmms:<task>``): the missing-extra error, and a user task YAML over a local JSON dataset
scored end to end through ``evaluate()`` with a fake engine (skipped unless lmms-eval is installed)."""

from __future__ import annotations

import importlib.util
import json
import sys
import textwrap
from collections.abc import Iterator, Sequence

import pytest
from PIL import Image

from harness.engines.base import Engine, EngineOptions
from harness.errors import ConfigError, install_command
from harness.runner import evaluate
from harness.store import RunStore
from harness.task import get_task
from harness.types import Decoding, Request, Response

HAVE_LMMS = importlib.util.find_spec("lmms_eval") is not None


def test_missing_extra_names_the_extra(monkeypatch):
    import tasks.lmms as bridge

    monkeypatch.setattr(bridge, "lmms_eval_installed", lambda: False)
    with pytest.raises(ConfigError) as err:
        get_task("lmms:mme")
    assert str(err.value) == (
        f"lmms:mme needs the package lmms-eval, which is not installed; install it with {install_command('extra:lmms')}"
    )
    assert f"`{sys.executable} -m pip install " in str(err.value) and "[lmms]" in str(err.value)


def test_empty_lmms_name_is_a_config_error():
    with pytest.raises(ConfigError, match="name an lmms-eval task"):
        get_task("lmms:")


def test_cli_reports_missing_extra_without_traceback(monkeypatch, capsys):
    import tasks.lmms as bridge
    from harness.cli import main

    monkeypatch.setattr(bridge, "lmms_eval_installed", lambda: False)
    assert main(["run", "--tasks", "lmms:mme"]) == 2
    err = capsys.readouterr().err
    assert install_command("extra:lmms") in err
    assert "Traceback" not in err


# ------------------------------------------------------------------------------------------- with lmms-eval
UTILS = """
from PIL import Image


def doc_to_visual(doc):
    return [Image.open(doc["image_path"]).convert("RGB")]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    kw = lmms_eval_specific_kwargs or {}
    return f"{kw.get('pre_prompt', '')}{doc['question']}{kw.get('post_prompt', '')}"


def process_results(doc, results):
    pred = results[0].strip().lower().rstrip(".")
    return {"acc": float(pred == doc["answer"]), "yes_share": float(pred == "yes")}
"""

YAML = """
task: tiny_yesno
dataset_path: json
dataset_kwargs:
  data_files: {data}
test_split: train
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_target: answer
generation_kwargs:
  max_new_tokens: 7
process_results: !function utils.process_results
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: yes_share
    aggregation: mean
    higher_is_better: true
lmms_eval_specific_kwargs:
  default:
    pre_prompt: "Q: "
    post_prompt: "\\nAnswer yes or no."
metadata:
  version: 0.0
"""

DOCS = [
    ("Is the square red?", "yes"),
    ("Is the square blue?", "no"),
    ("Is there a cat?", "no"),
    ("Is it a square?", "yes"),
]
ANSWERS = {"0": "Yes.", "1": "yes", "2": " No", "3": "yes"}  # right, wrong, right, right


class ScriptedEngine(Engine):
    """Answers each sample id with a fixed text and records the requests."""

    name = "scripted"

    def __init__(self, answers: dict[str, str]):
        super().__init__("m", Decoding(), EngineOptions(batch_size=2))
        self.answers = answers
        self.requests: list[Request] = []

    def generate(self, requests: Sequence[Request]) -> Iterator[Response]:
        for r in requests:
            self.requests.append(r)
            yield Response(r.sample_id, self.answers[r.sample_id], "stop", 1, 1)

    def describe(self):
        return {"engine": self.name}


@pytest.fixture
def yaml_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("LMMS_EVAL_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    img = tmp_path / "red.png"
    Image.new("RGB", (6, 4), (255, 0, 0)).save(img)
    data = tmp_path / "docs.json"
    data.write_text("\n".join(json.dumps({"question": q, "answer": a, "image_path": str(img)}) for q, a in DOCS))
    folder = tmp_path / "yamls"
    folder.mkdir()
    (folder / "utils.py").write_text(textwrap.dedent(UTILS))
    (folder / "tiny_yesno.yaml").write_text(YAML.format(data=json.dumps(str(data))))
    return folder


@pytest.mark.skipif(
    not HAVE_LMMS, reason="needs lmms-eval (.venv/bin/pip install -c requirements/lock.txt -e '.[lmms]')"
)
def test_user_yaml_task_scored_end_to_end(tmp_path, yaml_dir):
    cls = get_task("lmms:tiny_yesno")
    assert cls.name == "lmms:tiny_yesno"
    task = cls(options={"lmms_include_path": str(yaml_dir)})
    task.check_files()
    samples = task.samples()
    assert [s.id for s in samples] == ["0", "1", "2", "3"]
    assert samples[0].prompt == "Q: Is the square red?\nAnswer yes or no."
    assert samples[0].max_new_tokens == 7
    assert samples[1].reference == "no"
    image = samples[0].images[0].load("0")
    assert image.size == (6, 4) and image.getpixel((0, 0)) == (255, 0, 0)

    store = RunStore(tmp_path / "run")
    store.open({}, {"x": 1})
    engine = ScriptedEngine(ANSWERS)
    result = evaluate(task, engine, store, samples, progress=False)
    assert [r.max_new_tokens for r in engine.requests] == [7] * 4
    metrics = result.metrics
    assert metrics.headline == {"acc": 0.75, "yes_share": 0.75}
    assert {k: metrics.counts[k] for k in ("questions", "scored", "no_response")} == {
        "questions": 4,
        "scored": 4,
        "no_response": 0,
    }
    assert metrics.records[1] == {"id": "1", "doc_id": 1, "acc": 0.0, "yes_share": 1.0}

    limited = cls(options={"lmms_include_path": str(yaml_dir)}).samples(limit=2)
    assert [s.id for s in limited] == ["0", "1"]
    partial = task.score(samples, {k: Response(k, v, "stop") for k, v in ANSWERS.items() if k != "1"})
    assert partial.headline["acc"] == 1.0 and partial.counts["no_response"] == 1


@pytest.mark.skipif(
    not HAVE_LMMS, reason="needs lmms-eval (.venv/bin/pip install -c requirements/lock.txt -e '.[lmms]')"
)
def test_unknown_lmms_task_is_a_config_error(yaml_dir):
    task = get_task("lmms:tiny_yesnoo")(options={"lmms_include_path": str(yaml_dir)})
    with pytest.raises(ConfigError, match="did you mean lmms:tiny_yesno"):
        task.check_files()
