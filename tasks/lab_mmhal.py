"""The lab's MMHal-Bench: 96 questions about lab images, each answer rated 0-6 by a rule-based judge served through
the OpenAI protocol on 127.0.0.1.

``lab_mmhal`` is MMHal-Bench's format and scorer (:class:`tasks.mmhal.MMHalBench`: the official judge prompt, the
official rating parser, Score, HalRate, Informativeness, the type of record ``i`` is ``i % 8``) over images of the
lab's evaluation world (:mod:`tasks.lab`), so the judged path runs on the embedded default: the OpenAI client,
retries, the on-disk judgment cache and the ledger in ``judge.json``. The judge is :class:`LabRater`, which reads the
official prompt as GPT-4 would (the image contents, the question, the standard answer, the response) and rates the
response from the exact ground truth the prompt carries:

- a yes/no question: the response's first word is the standard answer ("Yes"/"No") -> 5 (very informative, no
  hallucination); the other one -> 0 (not informative, with hallucination); neither -> 3 (not informative, no
  hallucination);
- a description: every shape word (or a word naming the shape, as in the synonyms file of ``lab_objhal``) must name
  a shape of the image contents, and every full noun phrase ("two small filled red circles") must agree with that
  shape's count, size, state and colour; otherwise the response hallucinates. Informativeness is the share of the
  image's shapes mentioned: all -> 5 / 2, at least half -> 4 / 1, fewer -> 3 / 0 (without / with hallucination).
  Relation sentences are not rated.

No rating is 6 (the rubric's "good analysis or reasoning"), so Informativeness is at most 66.67.

The 96 questions (``response_template.json`` in MMHal's layout, images in ``image/``) are 12 of each official type,
6 on prior-consistent and 6 on prior-conflicting images, each from a different evaluation image of ``lab_amber``
and with ``lab_amber``'s question for that image: attribute (the colour and state probes), adversarial (the
co-occurrence probe: is the star there), counting (the count probe), relation (the position probe), holistic
("Describe this image."), and the control questions for comparison and other (an attribute) and environment (an
object's presence). The score adds ``Score`` and ``HalRate`` on prior-consistent and prior-conflicting images.

Without ``--judge-base-url`` the rater is started in this process on a free port of 127.0.0.1 (:func:`serve`); it
answers ``POST /v1/chat/completions`` and nothing else, and logs nothing (an API key sent to it goes nowhere).
"""

from __future__ import annotations

import dataclasses
import json
import re
import threading
import time
from collections.abc import Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from harness.errors import ConfigError
from harness.task import DataFile, register_task
from harness.types import Metrics, Response, Sample
from tasks import lab, toy
from tasks.mmhal import QUESTION_TYPES, TEMPLATE_FILES, MMHalBench

#: The rater's model name (part of the judgment cache's key: a change of rule changes the version).
RATER_MODEL = "lab-rater-v1"
N_PER_TYPE = 12
TEMPLATE_FILE = TEMPLATE_FILES[0]

#: The type of each record position (``i % 8``) and where its question comes from: the probe of these priors, or
#: a control question (``existence`` / ``attribute``), or the description.
_SOURCES: dict[str, tuple[str, tuple[str, ...]]] = {
    "attribute": ("probe", ("colour", "state")),
    "adversarial": ("probe", ("co_occurrence",)),
    "comparison": ("control", ("attribute",)),
    "counting": ("probe", ("count",)),
    "relation": ("probe", ("position",)),
    "environment": ("control", ("existence",)),
    "holistic": ("describe", ()),
    "other": ("control", ("attribute",)),
}


# --------------------------------------------------------------------------------------------------- the data
def _records(config: lab.LabConfig) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]], list[lab.LabScene]]:
    scenes = lab.eval_scenes(config, "eval")
    used: set[int] = set()
    slots: dict[str, list[tuple[int, lab.LabScene, str]]] = {}
    for qtype in QUESTION_TYPES:
        kind, what = _SOURCES[qtype]
        chosen: list[tuple[int, lab.LabScene, str]] = []
        for label in lab.LABELS:
            want = N_PER_TYPE // 2
            for k, scene in enumerate(scenes):
                if want == 0:
                    break
                if k in used or scene.label != label or (kind == "probe" and scene.probe not in what):
                    continue
                used.add(k)
                chosen.append((k, scene, label))
                want -= 1
            if want:
                raise ConfigError(
                    f"lab_mmhal needs {N_PER_TYPE // 2} {label} images for its {qtype} questions; the lab setting "
                    f"n_eval={config.n_eval} gives fewer"
                )
        # consistent and conflicting alternate within a type
        half = N_PER_TYPE // 2
        slots[qtype] = [x for pair in zip(chosen[:half], chosen[half:]) for x in pair]
    records: list[dict[str, Any]] = []
    meta: dict[str, dict[str, Any]] = {}
    for i in range(N_PER_TYPE * len(QUESTION_TYPES)):
        qtype = QUESTION_TYPES[i % 8]
        k, scene, label = slots[qtype][i // 8]
        kind, what = _SOURCES[qtype]
        questions = lab.eval_questions(scene, k, config)
        if kind == "describe":
            question, answer, role = lab.GENERATIVE_QUERY, lab.caption(scene), "generative"
        elif kind == "probe":
            q = questions[(i // 8) % 2]  # the true and the false probe in turn
            question, answer, role = q.query, q.truth.capitalize(), "probe"
        else:
            q = questions[2 if what == ("existence",) else 3]
            question, answer, role = q.query, q.truth.capitalize(), "control"
        records.append(
            {
                "question_type": qtype,
                "question_topic": scene.probe or "",
                "image_id": str(scene.id),
                "image_src": scene.image,
                "image_content": [lab.noun_phrase(g) for g in scene.groups()],
                "question": question,
                "gt_answer": answer,
                "model_answer": "",
            }
        )
        meta[str(i)] = {"image": scene.image, "prior": scene.probe, "label": label, "role": role}
    return records, meta, [slots[t][j][1] for t in QUESTION_TYPES for j in range(N_PER_TYPE)]


def write_mmhal(root: Path, config: lab.LabConfig) -> None:
    """Write ``lab_mmhal``'s files into the new folder ``root``."""
    records, meta, scenes = _records(config)
    (root / lab.IMAGE_DIR).mkdir(parents=True)
    for scene in {s.image: s for s in scenes}.values():
        lab.render(scene).save(root / lab.IMAGE_DIR / scene.image)
    (root / TEMPLATE_FILE).write_text(json.dumps(records, indent=1), encoding="utf-8")
    (root / lab.META_FILE).write_text(
        json.dumps({"generator": lab.GENERATOR, "kind": "mmhal", "samples": meta}, indent=1), encoding="utf-8"
    )
    lab.write_config(root, config)


lab.register_writer("mmhal", write_mmhal)


# --------------------------------------------------------------------------------------------------- the rater
_PROMPT = re.compile(
    r"### Image Contents\n(?P<contents>.*?)\n\n### Question\n(?P<question>.*?)\n\n"
    r"### Standard Human-Generated Answer\n(?P<answer>.*?)\n\n### LMM Response to Evaluate\n(?P<response>.*)\Z",
    re.S,
)
_WORD = re.compile(r"[a-z]+")


def _shape_words() -> dict[str, str]:
    out: dict[str, str] = {}
    for shape in lab.SHAPES:
        for word in (shape, toy._plural(shape), *toy.ASSOCIATED[shape], *map(toy._plural, toy.ASSOCIATED[shape])):
            out[word] = shape
    return out


_SHAPE_OF = _shape_words()
_COUNT_OF = {"a": 1, "an": 1, **{w: n for n, w in lab.NUMBER_WORDS.items()}}
_PHRASE = re.compile(
    r"\b(?P<count>a|an|{counts})\s+(?P<size>{sizes})\s+(?P<state>{states})\s+(?P<colour>{colours})\s+"
    r"(?P<shape>{shapes})\b".format(
        counts="|".join(lab.NUMBER_WORDS.values()),
        sizes="|".join(lab.SIZES),
        states="|".join(lab.STATES),
        colours="|".join(lab.COLOURS),
        shapes="|".join(sorted(_SHAPE_OF, key=len, reverse=True)),
    )
)


@dataclasses.dataclass(frozen=True)
class _Truth:
    count: int
    size: str
    state: str
    colour: str


def _phrases(text: str) -> list[tuple[str, _Truth]]:
    return [
        (
            _SHAPE_OF[m["shape"]],
            _Truth(_COUNT_OF[m["count"]], m["size"], m["state"], m["colour"]),
        )
        for m in _PHRASE.finditer(text.lower())
    ]


def rate(prompt: str) -> tuple[int, str]:
    """The rating (0-6) and a one-line explanation of the response in the official MMHal judge ``prompt``."""
    m = _PROMPT.search(prompt)
    if m is None:
        return 0, "the request is not MMHal-Bench's judge prompt (no Image Contents ... LMM Response sections)"
    truth = {shape: t for shape, t in _phrases(m["contents"])}
    answer, response = m["answer"].strip(), m["response"].strip()
    if answer in ("Yes", "No"):
        words = _WORD.findall(response.lower())
        first = words[0] if words else ""
        if first not in ("yes", "no"):
            return 3, f"the response answers neither yes nor no (standard answer: {answer})"
        if first == answer.lower():
            return 5, f"the response answers {answer}, as the standard answer"
        return 0, f"the response answers {first.capitalize()}; the image contents give {answer}"
    mentioned = {_SHAPE_OF[w] for w in _WORD.findall(response.lower()) if w in _SHAPE_OF}
    false = sorted(s for s in mentioned if s not in truth)
    wrong = sorted({shape for shape, t in _phrases(response) if shape in truth and t != truth[shape]})
    covered = len(mentioned & set(truth)) / len(truth) if truth else 0.0
    level = 2 if covered == 1 else 1 if covered >= 0.5 else 0
    parts = [f"mentions {len(mentioned & set(truth))} of the {len(truth)} shapes of the image"]
    if false:
        parts.append(f"names absent shapes: {', '.join(false)}")
    if wrong:
        parts.append(f"gets the count, size, state or colour of: {', '.join(wrong)}")
    hallucination = bool(false or wrong)
    return (level if hallucination else level + 3), "; ".join(parts)


def reply(prompt: str) -> str:
    """The rater's reply: an explanation, then ``Rating: N`` as the official prompt asks."""
    rating, why = rate(prompt)
    return f"Explanation: {why}.\nRating: {rating}"


class _Handler(BaseHTTPRequestHandler):
    server_version = "lab-rater"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
        pass  # nothing is logged: requests may carry an API key

    def _send(self, status: int, body: Mapping[str, Any]) -> None:
        data = json.dumps(body).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
            self._send(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
            return
        try:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            messages = body["messages"]
            prompt = next(m["content"] for m in reversed(messages) if m.get("role") == "user")
            if isinstance(prompt, list):  # content parts
                prompt = "".join(p.get("text", "") for p in prompt if isinstance(p, Mapping))
        except (ValueError, KeyError, TypeError, StopIteration):
            self._send(400, {"error": {"message": "expected a chat completion request", "type": "invalid_request"}})
            return
        text = reply(str(prompt))
        prompt_tokens, completion_tokens = len(str(prompt).split()), len(text.split())
        self._send(
            200,
            {
                "id": f"lab-rater-{abs(hash(text)) % 10**12}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model") or RATER_MODEL,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            },
        )


_SERVER: tuple[ThreadingHTTPServer, str] | None = None
_LOCK = threading.Lock()


def serve(host: str = "127.0.0.1", port: int = 0) -> tuple[ThreadingHTTPServer, str]:
    """Start the rater on ``host:port`` (0: a free port) in a daemon thread; return the server and its base URL
    (``http://127.0.0.1:PORT/v1``)."""
    server = ThreadingHTTPServer((host, port), _Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="lab-rater", daemon=True).start()
    return server, f"http://{host}:{server.server_address[1]}/v1"


def rater_url() -> str:
    """The base URL of this process's rater, started on first use."""
    global _SERVER
    with _LOCK:
        if _SERVER is None:
            _SERVER = serve()
        return _SERVER[1]


# --------------------------------------------------------------------------------------------------- the task
def mmhal_numbers(records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Score and HalRate (as MMHal's, rounded to 2 places) and the count of rated records."""
    ratings = [r["rating"] for r in records if r.get("rating") is not None]
    if not ratings:
        return {"n": 0}
    return {
        "Score": round(sum(ratings) / len(ratings), 2),
        "HalRate": round(sum(1 for s in ratings if s < 3) / len(ratings), 2),
        "n": len(ratings),
    }


@register_task
class LabMMHal(lab._LabTask, MMHalBench):
    """MMHal-Bench over the lab world, judged by the rule-based :class:`LabRater` served on 127.0.0.1 (see the
    module docstring); ``--judge-base-url`` points it at another judge instead."""

    name = "lab_mmhal"
    version = "1"
    description = (
        "Lab MMHal-Bench: 96 questions of MMHal's 8 types on lab images, official prompt and scorer, judged by a "
        "rule-based rater over the exact ground truth served through the OpenAI protocol on 127.0.0.1"
    )
    data_files = (DataFile(TEMPLATE_FILE, lab.DATA_SOURCE), DataFile(lab.META_FILE, lab.DATA_SOURCE))
    default_max_new_tokens = lab.GENERATIVE_MAX_NEW_TOKENS
    default_judge_model = RATER_MODEL
    lab_kind = "mmhal"

    def default_image_root(self) -> Path:
        return self.data_root / lab.IMAGE_DIR

    def default_judge_base_url(self, model: str) -> str | None:
        return rater_url() if model == RATER_MODEL else None

    def load_samples(self) -> list[Sample]:
        out = []
        for s in super().load_samples():
            tokens = (
                lab.GENERATIVE_MAX_NEW_TOKENS if s.prompt == lab.GENERATIVE_QUERY else lab.DISCRIMINATIVE_MAX_NEW_TOKENS
            )
            out.append(dataclasses.replace(s, max_new_tokens=tokens))
        return out

    def score(self, samples: Sequence[Sample], responses: Mapping[str, Response], judge: Any = None) -> Metrics:
        metrics = super().score(samples, responses, judge)
        meta = self.lab_meta()
        breakdown = lab.prior_breakdown(metrics.records, meta, mmhal_numbers)
        lab.tag_records(metrics.records, meta)
        metrics.breakdown.update({f"lab/{k}": v for k, v in breakdown.items()})
        for label in lab.LABELS:
            for key in ("Score", "HalRate"):
                value = breakdown.get(label, {}).get(key)
                if value is not None:
                    metrics.headline[f"{key} ({label})"] = value
        metrics.notes.append(
            "lab breakdown (breakdown lab/*): questions on prior-consistent or prior-conflicting images (tasks.lab)"
        )
        return metrics
