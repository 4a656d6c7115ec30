"""MMHal-Bench: 96 questions about OpenImages images, each answer rated 0-6 by a GPT-4 judge.

MMHal-Bench (Sun et al., 2023, "Aligning Large Multimodal Models with Factually Augmented RLHF";
HF dataset ``Shengcao1006/MMHal-Bench``) asks 96 questions, 12 of each of 8 types, about OpenImages images. A model's
answer is shown to a judge LLM (GPT-4) together with the image's object labels, the question and a human answer,
and the judge rates it from 0 to 6 (6-3: no hallucination, more or less informative; 2-0: with hallucination).

This module follows the official scorer ``eval_gpt4.py`` of the HF dataset, whose copy we read is
``Eval/eval_gpt_mmhal.py`` of llava-rlhf/LLaVA-RLHF @ 830a083fd83e607da3c35f2e6aef833523c1e722 (the same judge prompt
and scoring as RLHF-V/RLHF-V @ 3d35a91 ``eval/eval_gpt_mmhal.py`` and RLHF-V/RLAIF-V ``eval/eval_gpt_mmhal.py``), and
the Informativeness of RLHF-V ``eval/summarize_gpt_mmhal_review.py`` (RLHF-V/RLHF-V @
3d35a91568b237fcc9d884463d9279fd7ae10350; identical in RLAIF-V @ 8da5b48). What they do, quirks included:

- Judge request: one user message, ``template.format(', '.join(image_content), question, gt_answer, model_answer)``
  (:data:`JUDGE_PROMPT_TEMPLATE`, byte-identical to the official ``template``), model ``gpt-4-0314`` by default
  (RLAIF-V's later script defaults to ``gpt-4-1106-preview``), ``temperature=0.0``, no other parameter.
- Rating (:func:`parse_rating`): ``[s for s in range(7) if f'rating: {s}' in reply.lower()]``; exactly one hit is
  the rating, anything else is 0 (with a printed warning). So "Rating: 10" is 1 (it contains "rating: 1"),
  "Rating: 6 ... Rating: 4" is 0 (two hits), "Rating:3" is 0 (no space), "**Rating: 4**" is 4.
- ``Average score = sum(scores) / len(scores)`` printed ``{:.2f}``; a response hallucinates iff its score < 3,
  ``Hallucination rate`` = their share, printed ``{:.2f}`` (RLAIF-V @ 8fafcb2 prints ``{:.3f}``; the unrounded value
  is in ``breakdown["unrounded"]``); per question type ``round(mean, 2)`` where the type of the i-th record is
  ``i % 8`` (the file's ``question_type`` field is not read: the order of the 96 records matters);
  ``Informativeness = np.mean([s - 3 if s >= 3 else s for s in scores]) / 3 * 100`` printed ``{:.2f}``.
- ``assert len(records) == 96``.

Headline numbers are the printed ones: ``Score`` (average score), ``HalRate`` and ``Informativeness``; the per-type
averages are in ``breakdown`` under the official type names (:data:`QUESTION_TYPES`).

Where this scorer departs from the official one, it never changes a number the official code would print:

- A judgment that failed (:attr:`harness.judge.JudgeResult.failed`: the judge could not be reached, or a saved
  review is ``null``) is counted (``counts["judge_failed"]``), excluded from every mean and
  said in the notes; it is never scored 0 (the official script retries forever instead).
- A reply with zero or several ratings is scored 0 as in the official code, and counted (``counts["unparsed"]``);
  the records show its text.
- A subset of the questions (``harness run --limit``) is scored over the questions present, each keeping its type
  ``index % 8``; a type with no question has no average (the official code asserts 96 records).
  :func:`score_response_file` (MMHal's own response format) requires all 96 records, as the official code.

The model's answer in the judge prompt is the response text as the engine returned it (the engines strip it, as
LLaVA-RLHF's ``model_vqa_mmhal.py`` does).

Data: the HF dataset's ``response_template.json`` (RLHF-V and RLAIF-V ship the same 96 records as
``eval/data/mmhal-bench_answer_template.json``), a JSON list of ``{question_type, question_topic, image_id,
image_src, image_content, question, gt_answer, model_answer}``. Images are the HF dataset's ``images/`` folder,
where each image is named as the last path component of its ``image_src`` URL (e.g.
``7206072054_c53d53b97d_o.jpg``); the image root may be that folder or the dataset folder holding it.

Where the harness is stricter than the official scorer: an answer file whose record count differs from the
benchmark's 96 questions is an error, as the official assert is, but with the file named; a record whose question
differs from the benchmark's question at that index is an error (the official scorer pairs by index without
checking); a response over 100,000 characters is refused with its id.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

from harness.errors import ConfigError, DataError, MissingDataFile
from harness.io import iter_jsonl, read_json
from harness.judge import Judge, JudgeRequest, ReplayJudge
from harness.task import DataFile, Task, check_response_text, register_task
from harness.types import ImageRef, Metrics, Response, Sample
from tasks import _scaffold as scaffold

log = logging.getLogger(__name__)

OFFICIAL_SOURCE = (
    "MMHal-Bench eval_gpt4.py (HF dataset Shengcao1006/MMHal-Bench) = LLaVA-RLHF "
    "Eval/eval_gpt_mmhal.py, https://github.com/llava-rlhf/LLaVA-RLHF, "
    "commit 830a083fd83e607da3c35f2e6aef833523c1e722"
)
INFORMATIVENESS_SOURCE = (
    "RLHF-V eval/summarize_gpt_mmhal_review.py, https://github.com/RLHF-V/RLHF-V, "
    "commit 3d35a91568b237fcc9d884463d9279fd7ae10350"
)
DATA_SOURCE = (
    "MMHal-Bench: https://huggingface.co/datasets/Shengcao1006/MMHal-Bench (response_template.json and "
    "images/); the same 96 records are RLHF-V's eval/data/mmhal-bench_answer_template.json"
)

#: Names of the question file, in the order they are looked for under the data root: the HF dataset's, then
#: RLHF-V's / RLAIF-V's copy.
TEMPLATE_FILES: tuple[str, ...] = ("response_template.json", "mmhal-bench_answer_template.json")
#: ``assert len(records) == 96`` in the official scorer.
N_QUESTIONS = 96
#: Question type of record ``i`` is ``QUESTION_TYPES[i % 8]`` (official: ``question_type = i % 8``).
QUESTION_TYPES: tuple[str, ...] = (
    "attribute",
    "adversarial",
    "comparison",
    "counting",
    "relation",
    "environment",
    "holistic",
    "other",
)
#: ``--gpt-model`` default of the official scorer, and its temperature.
DEFAULT_JUDGE_MODEL = "gpt-4-0314"
JUDGE_TEMPERATURE = 0.0
#: LLaVA-RLHF's MMHal generation (``Eval/model_vqa_mmhal.py``) allows 1024 new tokens; answers are free text.
DEFAULT_MAX_NEW_TOKENS = 1024
#: Ratings the official parser looks for: ``for s in range(7)``.
RATINGS = range(7)

#: The official judge prompt (the string ``template`` of ``eval_gpt4.py``), with four ``{}`` placeholders for
#: image contents, question, human answer and the model's answer.
JUDGE_PROMPT_TEMPLATE = """Please act as an impartial and objective judge and evaluate the quality of the response provided by a Large Multimodal Model (LMM) to the user question. Your evaluation should be mainly based on whether the response is informative, and whether the response contains any hallucination. Hallucination, in this context, refers to a situation where the LMM generates a response that includes information not present or implied in the image or previous conversation. A hallucination could be a false claim about an object, action, emotion, or any other detail that is not grounded in the image.

For clarity, consider these examples:

### Example 1:
- Image Contents: Lynx, Cat
- Question: How many cats can you see in this image?
- Standard Human-Generated Answer: There are two cats visible in the image.
- LMM Response to Evaluate: There is one cat in the image.
- Analysis: The LMM's response is false because it claims there is only one cat in the image, when in fact there are two.
- Hallucination: Yes.

### Example 2:
- Image Contents: Tree, Plant, Panda, Animal
- Question: What can you see from this photo?
- Standard Human-Generated Answer: In this photo we can see branches. We can see a panda on a branch. The background is blurry.
- LMM Response to Evaluate: In the photo, I can see a large black and white panda sitting on a tree branch. The image captures the panda's unique appearance and its natural habitat, showcasing the beauty and rarity of these animals.
- Analysis: The LMM's response is not false because it does not make any false claims about the image contents. For example, it does not claim that the panda is eating bamboo.
- Hallucination: No.

### Example 3:
- Image Contents: Fashion accessory, Mammal, Dog, Umbrella
- Question: Describe this image in details.
- Standard Human-Generated Answer: In this picture I can see a dog laying under a yellow umbrella on a beach, and there is a rope on the right side. In the background I can see few persons talking or lying. At the top of the image, I can see the blue and clear sky.
- LMM Response to Evaluate: The image features a brown dog laying on the sand at the beach, underneath a yellow umbrella. The dog is positioned near the water, and there are people in the background. The beach is sandy, and the sun is shining, creating a pleasant atmosphere. The dog is enjoying the shade provided by the umbrella, which is a common way to protect pets from the sun's harmful rays. The presence of people in the background suggests that the beach is a popular spot for leisure activities, such as sunbathing, swimming, and relaxing.
- Analysis: The LMM's response is false because it claims that the dog is positioned near the water, but there is no water in the image.
- Hallucination: Yes.

### Example 4:
- Image Contents: Clothing, Luggage and bags, Man, Building, Woman, Person
- Question: Where is this photo taken?
- Standard Human-Generated Answer: From the slogan "Welcome to Houston, Texas", we can infer that this photo is taken at an airport in Houston, Texas.
- LMM Response to Evaluate: This photo is taken at an airport, specifically at the entrance of a terminal. However, the specific location of this airport cannot be determined from the image.
- Analysis: Although the LMM's response does not explicitly mention the location "Houston, Texas" and does not perfectly answer the question, it makes no false claims about the image contents. Therefore, this response is not considered hallucination. It is OK if the LMM fails to directly answer the question, expresses uncertainty, or cannot include all the objects or details in the human-generated answer.
- Hallucination: No.

### Example 5:
- Image Contents: Tree, Tower
- Question: What environmental concerns are involved in this photo?
- Standard Human-Generated Answer: This photo shows a smokestack emitting smoke. It may cause severe air pollution which threatens human health.
- LMM Response to Evaluate: In the photo, there are several environmental concerns related to the smokestack emitting smoke. The smoke from the smokestack is a byproduct of industrial processes, which can contribute to air pollution, climate change, and negative impacts on human health. The smoke contains harmful pollutants, such as particulate matter, sulfur dioxide, nitrogen oxides, and carbon monoxide, which can lead to respiratory problems, heart disease, and other health issues. Additionally, the smoke contributes to the greenhouse effect, which can lead to global warming and climate change. The smokestack's emissions also affect the environment, as they can harm wildlife, vegetation, and ecosystems. Therefore, it is essential to address these environmental concerns by implementing measures to reduce emissions and promote sustainable practices in industrial processes.
- Analysis: Although the LMM's response is significantly longer than the standard human-generated answer, it does not contain any false claims about the image contents. Instead, it provides additional general information about the environmental concerns, which can be inferred from the smoke emission. Such detailed analysis or reasoning should be considered as a positive aspect, as long as it contains no false claims.
- Hallucination: No.

With these examples in mind, please help me evaluate whether the response by the LMM is informative, and whether hallucination exists in it, based on the comparison between the LMM's response and the factual information provided in the image contents, question, and the standard human-generated answer below.

Please note that the standard human-generated answer may only contain factual information but may not give a detailed analysis. Also, the standard human-generated answer may not be completely comprehensive in describing all the objects and their attributes, so please be a bit more cautious during evalutation. LMM's detailed analysis or reasoning should be encouraged.

To evaluate the LMM responses, first, begin your evaluation by providing a short explanation. Second, after providing your explanation, you must rate the response by choosing from the following options:
- Rating: 6, very informative with good analysis or reasoning, no hallucination
- Rating: 5, very informative, no hallucination
- Rating: 4, somewhat informative, no hallucination
- Rating: 3, not informative, no hallucination
- Rating: 2, very informative, with hallucination
- Rating: 1, somewhat informative, with hallucination
- Rating: 0, not informative, with hallucination

### Image Contents
{}

### Question
{}

### Standard Human-Generated Answer
{}

### LMM Response to Evaluate
{}
"""


# --------------------------------------------------------------------------------------------------- data
@dataclass(frozen=True)
class MMHalRecord:
    """One record of an MMHal-Bench file (``index`` is its position: its question type is ``index % 8``)."""

    index: int
    question: str
    gt_answer: str
    image_content: tuple[str, ...]
    image_src: str | None = None
    image_id: str | None = None
    question_type: str | None = None  # the file's field; the scorer uses ``index % 8`` instead
    question_topic: str | None = None
    model_answer: str | None = None

    @property
    def type_name(self) -> str:
        """The question type the official scorer assigns: ``QUESTION_TYPES[index % 8]``."""
        return QUESTION_TYPES[self.index % 8]

    @property
    def image_name(self) -> str | None:
        """The image's file name in the HF dataset's ``images/``: the last path component of ``image_src``."""
        if self.image_src:
            name = self.image_src.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
            if name:
                return name
        return None


def _optional_str(rec: Mapping[str, Any], key: str, path: str | Path, index: int) -> str | None:
    value = rec.get(key)
    if value is not None and not isinstance(value, str):
        raise DataError(f"record {index}: field {key!r} must be a string, got {type(value).__name__}", path=path)
    return value


def parse_record(rec: Any, index: int, path: str | Path, *, require_answer: bool = False) -> MMHalRecord:
    """Check one record of an MMHal-Bench file; a missing or mistyped field raises :class:`DataError` naming
    ``path`` and the record's index (0-based, its position in the file)."""
    if not isinstance(rec, Mapping):
        raise DataError(f"record {index} is not a JSON object", path=path)
    for key in ("question", "gt_answer"):
        if not isinstance(rec.get(key), str):
            raise DataError(f"record {index}: missing or non-string field {key!r}", path=path)
    content = rec.get("image_content")
    if not isinstance(content, list) or not all(isinstance(c, str) for c in content):
        raise DataError(f"record {index}: field 'image_content' must be a list of strings", path=path)
    answer = _optional_str(rec, "model_answer", path, index)
    if require_answer and answer is None:
        raise DataError(f"record {index}: missing or non-string field 'model_answer' (the model's response)", path=path)
    image_id = rec.get("image_id")
    return MMHalRecord(
        index=index,
        question=rec["question"],
        gt_answer=rec["gt_answer"],
        image_content=tuple(content),
        image_src=_optional_str(rec, "image_src", path, index),
        image_id=None if image_id is None else str(image_id),
        question_type=_optional_str(rec, "question_type", path, index),
        question_topic=_optional_str(rec, "question_topic", path, index),
        model_answer=answer,
    )


def read_records(
    path: str | Path, *, require_answer: bool = False, expect: int | None = N_QUESTIONS
) -> list[MMHalRecord]:
    """Read a JSON list of MMHal-Bench records (the template, or a response file with ``model_answer``).

    ``expect``: the number of records required (the official ``assert len(records) == 96``), or ``None``.
    """
    data = read_json(path)
    if not isinstance(data, list):
        raise DataError(f"expected a JSON list of MMHal-Bench records, got {type(data).__name__}", path=path)
    if expect is not None and len(data) != expect:
        raise DataError(
            f"holds {len(data)} records; MMHal-Bench has {expect} (the official scorer asserts "
            f"len(records) == {expect}, and reads the question type from the position)",
            path=path,
        )
    records = [parse_record(rec, i, path, require_answer=require_answer) for i, rec in enumerate(data)]
    _warn_type_order(records, path)
    return records


def _warn_type_order(records: Sequence[MMHalRecord], path: str | Path) -> None:
    """Warn when a record's ``question_type`` field disagrees with the type its position gives (``index % 8``)."""
    off = [r.index for r in records if r.question_type is not None and r.question_type != r.type_name]
    if off:
        log.warning(
            "%s: %d records have a question_type other than the one their position gives (first: record "
            "%d, %r at position type %r); the official scorer uses the position (index %% 8)",
            path,
            len(off),
            off[0],
            records[off[0]].question_type,
            records[off[0]].type_name,
        )


def find_question_file(data_root: str | Path, name: str | None = None) -> Path:
    """The MMHal-Bench question file under ``data_root``: ``name`` if given (a path relative to the data root), else
    the first of :data:`TEMPLATE_FILES` that exists. :class:`MissingDataFile` if none."""
    root = Path(data_root)
    if name:
        path = root / name
        if not path.resolve().is_relative_to(root.resolve()):
            raise ConfigError(
                f"mmhal_file {name!r} is not under the data root {root}: give the data root holding "
                f"it and its name relative to that folder"
            )
        if not path.is_file():
            raise MissingDataFile(path, DATA_SOURCE)
        return path
    for candidate in TEMPLATE_FILES:
        if (root / candidate).is_file():
            return root / candidate
    raise DataError(
        f"no MMHal-Bench question file: looked for {' or '.join(TEMPLATE_FILES)}. It comes from: {DATA_SOURCE}",
        path=root,
    )


def image_path(record: MMHalRecord, image_root: str | Path) -> Path:
    """Where a record's image is: ``<name>`` or ``images/<name>`` under ``image_root``, where ``<name>`` is the file
    name of ``image_src`` (the HF dataset's naming), else ``<image_id>.jpg``/``.png``. The first that exists; when
    none does, the first candidate (reading it then fails naming the sample)."""
    root = Path(image_root)
    names = [record.image_name] if record.image_name else []
    if record.image_id:
        names += [f"{record.image_id}.jpg", f"{record.image_id}.png"]
    candidates = [folder / n for n in names for folder in (root, root / "images")]
    for c in candidates:
        if c.is_file():
            return c
    return candidates[0] if candidates else root / f"mmhal-{record.index}"


# --------------------------------------------------------------------------------------------------- judge
def judge_prompt(
    image_content: Sequence[str],
    question: str,
    gt_answer: str,
    model_answer: str,
    template: str = JUDGE_PROMPT_TEMPLATE,
) -> str:
    """The official judge prompt: ``template.format(', '.join(image_content), question, gt_answer, model_answer)``."""
    return template.format(", ".join(image_content), question, gt_answer, model_answer)


def judge_request(request_id: str, prompt: str) -> JudgeRequest:
    """One official judge call: a single user message, temperature 0.0, no token limit."""
    return JudgeRequest(id=request_id, messages=({"role": "user", "content": prompt},), temperature=JUDGE_TEMPERATURE)


def ratings_found(reply: str) -> list[int]:
    """Every rating the official parser finds: ``[s for s in range(7) if f'rating: {s}' in reply.lower()]``."""
    low = reply.lower()
    return [s for s in RATINGS if f"rating: {s}" in low]


def parse_rating(reply: str) -> tuple[int, bool]:
    """``(score, parsed)``: the one rating found, else ``(0, False)`` as the official scorer (which warns)."""
    found = ratings_found(reply)
    if len(found) == 1:
        return found[0], True
    return 0, False


def _review_text(item: Any, index: int, path: str | Path) -> str | None:
    """The judge's reply in one entry of a review file (see :func:`read_reviews`)."""
    if item is None or isinstance(item, str):
        return item
    if isinstance(item, Mapping):
        if "choices" in item:  # an OpenAI chat completion, as the official eval_gpt4.py saves them
            try:
                content = item["choices"][0]["message"]["content"]
            except (KeyError, IndexError, TypeError) as exc:
                raise DataError(
                    f"entry {index}: an OpenAI response without choices[0].message.content", path=path
                ) from exc
            if content is not None and not isinstance(content, str):
                raise DataError(
                    f"entry {index}: choices[0].message.content is a {type(content).__name__}, expected text", path=path
                )
            return content
        if "gpt4_review" in item:  # RLHF-V merge_mmhal_review_with_predict.py / RLAIF-V *.merge_gpt4_score.json
            review = item["gpt4_review"]
            if review is not None and not isinstance(review, str):
                raise DataError(
                    f"entry {index}: field 'gpt4_review' is a {type(review).__name__}, expected text", path=path
                )
            return review
    raise DataError(
        f"entry {index}: expected the judge's reply as text, an OpenAI chat completion "
        f'({{"choices": [{{"message": {{"content": ...}}}}]}}) or a record with \'gpt4_review\', '
        f"got {type(item).__name__}",
        path=path,
    )


def read_reviews(path: str | Path) -> list[str | None]:
    """Saved judge replies, in question order, from a JSON list of any of:

    - reply texts (``null``: no reply, a failed judgment);
    - OpenAI chat completions, the file the official ``eval_gpt4.py --evaluation`` writes (the reply is
      ``choices[0].message.content``);
    - MMHal records with the reply under ``gpt4_review`` (RLHF-V ``merge_mmhal_review_with_predict.py``, RLAIF-V's
      ``*.merge_gpt4_score.json``).

    A malformed entry raises :class:`DataError` naming the file and the entry.
    """
    return _reviews(read_json(path), path)


def _reviews(data: Any, path: str | Path) -> list[str | None]:
    if not isinstance(data, list):
        raise DataError(f"expected a JSON list of judge replies, got {type(data).__name__}", path=path)
    if not data:
        raise DataError("holds no judge replies", path=path)
    return [_review_text(item, i, path) for i, item in enumerate(data)]


def replay_judge(path: str | Path) -> ReplayJudge:
    """A :class:`ReplayJudge` answering question ``i`` (request id ``str(i)``) with the ``i``-th saved reply of
    :func:`read_reviews`, so that any subset of the questions can be scored.

    The judge model is the one the replies name (``model`` of saved OpenAI responses) when they agree, else
    ``"replay"``. A question beyond the saved replies is a :class:`DataError` naming the file.
    """
    data = read_json(path)
    replies = _reviews(data, path)
    models = {item.get("model") for item in data if isinstance(item, Mapping) and "choices" in item}
    model = models.pop() if len(models) == 1 else None
    return ReplayJudge(
        {str(i): text for i, text in enumerate(replies)},
        source=str(path),
        model=model if isinstance(model, str) and model else "replay",
        strict=True,
    )


# --------------------------------------------------------------------------------------------------- scoring
@dataclass(frozen=True)
class _Item:
    """A response to judge: the sample id, its index in the benchmark (type = index % 8) and the judge prompt."""

    id: str
    index: int
    prompt: str


def _read_ratings(reply: str) -> tuple[list[int], bool]:
    """The ratings the official parser finds, and whether there is exactly one."""
    found = ratings_found(reply)
    return found, len(found) == 1


def _score_items(
    items: Sequence[_Item],
    judge: Judge,
    *,
    n_questions: int,
    task: str = "mmhal",
    extra_counts: Mapping[str, int] | None = None,
    extra_notes: Sequence[str] = (),
) -> Metrics:
    """Judge ``items`` and compute the official numbers over the successful judgments (see the module docstring)."""
    by_id = {it.id: it for it in items}
    loop = scaffold.run_judge(judge, list(by_id), lambda sid, _: judge_request(sid, by_id[sid].prompt), _read_ratings)
    records: list[dict[str, Any]] = []
    scores: list[int] = []
    by_type: dict[str, list[int]] = {name: [] for name in QUESTION_TYPES}
    for j in loop:
        it = by_id[j.id]
        qtype = QUESTION_TYPES[it.index % 8]
        rec: dict[str, Any] = {"id": it.id, "index": it.index, "question_type": qtype}
        if j.failed:
            rec.update(
                rating=None,
                parsed=None,
                ratings_found=None,
                hallucination=None,
                informativeness=None,
                judge=None,
                judge_error=j.error,
            )
            records.append(rec)
            continue
        text = j.reply or ""
        found = j.value or []
        score = found[0] if j.parsed else 0
        if not j.parsed:
            log.warning(
                "MMHal-Bench question %d: multiple or zero ratings in the judge's reply (scored 0, as the "
                "official scorer): %r",
                it.index,
                text[:200],
            )
        scores.append(score)
        by_type[qtype].append(score)
        rec.update(
            rating=score,
            parsed=j.parsed,
            ratings_found=found,
            hallucination=score < 3,
            informativeness=score - 3 if score >= 3 else score,
            judge=text,
            judge_error=None,
        )
        records.append(rec)
    failed, unparsed = loop.failed, loop.unparsed

    counts: dict[str, int] = {
        "questions": n_questions,
        "scored": len(scores),
        "judge_failed": len(failed),
        "unparsed": len(unparsed),
        **(extra_counts or {}),
    }
    notes = [
        f"scorer: {OFFICIAL_SOURCE}",
        f"Informativeness: {INFORMATIVENESS_SOURCE}",
        f"judge: {judge.model}",
        *extra_notes,
    ]
    if failed:
        notes.append(scaffold.failed_note(failed, "excluded from every mean (not scored 0)"))
    if unparsed:
        notes.append(
            f"{len(unparsed)} judge replies hold zero or several ratings and are scored 0, as the official "
            f"scorer does: ids {scaffold.id_list(unparsed)}"
        )
    if len(scores) < N_QUESTIONS:
        notes.append(
            f"scored {len(scores)} of the {N_QUESTIONS} MMHal-Bench questions: the numbers are not "
            f"comparable with published ones (per-type averages cover the questions present)"
        )
    if not scores:
        return scaffold.no_score(task, counts, notes, records)

    mean = sum(scores) / len(scores)
    hal_rate = sum(1 for s in scores if s < 3) / len(scores)
    informativeness = sum(s - 3 if s >= 3 else s for s in scores) / len(scores) / 3 * 100
    headline = {
        "Score": scaffold.fmt2(mean),
        "HalRate": scaffold.fmt2(hal_rate),
        "Informativeness": scaffold.fmt2(informativeness),
    }
    breakdown: dict[str, dict[str, float]] = {
        name: {"Score": round(sum(vals) / len(vals), 2), "n": len(vals)} for name, vals in by_type.items() if vals
    }
    breakdown["unrounded"] = {"Score": mean, "HalRate": hal_rate, "Informativeness": informativeness}
    missing_types = [name for name, vals in by_type.items() if not vals]
    if missing_types:
        notes.append(f"no scored question of type {', '.join(missing_types)}: no average for it")
    return Metrics(task=task, headline=headline, breakdown=breakdown, counts=counts, notes=notes, records=records)


def _read_answer_lines(path: Path, template: Sequence[MMHalRecord]) -> list[MMHalRecord]:
    """RLAIF-V's ``--is_jsonl`` answers: one JSON object a line with ``answer``, ``text`` or ``model_answer``,
    merged in line order onto the template (``.replace("Assistant:", "").strip()``, as RLAIF-V's
    ``merge_template_answer``)."""
    lines = list(iter_jsonl(path))
    if len(lines) != len(template):
        raise DataError(
            f"holds {len(lines)} answers; MMHal-Bench has {len(template)} (the official scorer asserts "
            f"len(records) == {N_QUESTIONS})",
            path=path,
        )
    out = []
    for (lineno, obj), rec in zip(lines, template):
        for key in ("answer", "text", "model_answer"):
            if key in obj:
                value = obj[key]
                break
        else:
            raise DataError("no field 'answer', 'text' or 'model_answer'", path=path, line=lineno)
        if not isinstance(value, str):
            raise DataError(f"field {key!r} must be a string", path=path, line=lineno)
        out.append(replace(rec, model_answer=value.replace("Assistant:", "").strip()))
    return out


def score_response_file(responses_path: str | Path, data_root: str | Path | None, judge: Judge | None) -> Metrics:
    """Score a response file in MMHal-Bench's own format, as ``eval_gpt4.py --response FILE`` does.

    ``responses_path`` is the 96-record template with ``model_answer`` filled in (the judge prompt uses the file's
    own ``image_content``, ``question`` and ``gt_answer``, as the official script), or a ``.jsonl`` file of answers
    in question order (RLAIF-V's ``--is_jsonl``; then the questions come from the template under ``data_root``).
    With ``data_root``, a JSON response file is also checked against the benchmark's questions, position by
    position (the question type is the position). ``judge``: e.g. :func:`replay_judge` of saved reviews.
    """
    if judge is None:
        raise _no_judge()
    path = Path(responses_path)
    template: list[MMHalRecord] | None = None
    if data_root is not None:
        template = read_records(find_question_file(data_root))
    if path.suffix == ".jsonl":
        if template is None:
            raise ConfigError(
                f"{path}: a .jsonl answer file is merged onto the MMHal-Bench questions in order; "
                f"give the data root holding {' or '.join(TEMPLATE_FILES)}"
            )
        records = _read_answer_lines(path, template)
    else:
        records = read_records(path, require_answer=True)
        if template is not None:
            for rec, ref in zip(records, template):
                if rec.question != ref.question:
                    raise DataError(
                        f"record {rec.index}: question {rec.question!r} is not the benchmark's question "
                        f"{ref.index} ({ref.question!r}); the official scorer takes the question type "
                        f"from the position, so the records must keep the benchmark's order",
                        path=path,
                    )
    for r in records:
        check_response_text(str(r.index), r.model_answer, source=path)
    items = [
        _Item(str(r.index), r.index, judge_prompt(r.image_content, r.question, r.gt_answer, r.model_answer or ""))
        for r in records
    ]
    return _score_items(items, judge, n_questions=len(records), extra_notes=[f"responses: {path}"])


def _no_judge() -> ConfigError:
    return scaffold.no_judge("mmhal", DEFAULT_JUDGE_MODEL, about="an OpenAI-compatible judge; ")


# --------------------------------------------------------------------------------------------------- task
@register_task
class MMHalBench(scaffold.TaskOptions, Task):
    """MMHal-Bench: 96 free-form questions, answers rated 0-6 by a judge LLM (official ``eval_gpt4.py``).

    Options: ``mmhal_file`` (the question file's path relative to the data root; default: the first of
    :data:`TEMPLATE_FILES` found). Scoring needs a judge (:class:`harness.judge.Judge`); the official one is
    :data:`DEFAULT_JUDGE_MODEL` at temperature 0.
    """

    name = "mmhal"
    version = "1"
    description = (
        "MMHal-Bench (96 questions, GPT-4 judge): Score, HalRate, Informativeness and per-type scores "
        "(official eval_gpt4.py)"
    )
    option_names = ("mmhal_file",)
    data_files = (DataFile(TEMPLATE_FILES[0], DATA_SOURCE),)
    default_max_new_tokens = DEFAULT_MAX_NEW_TOKENS
    default_judge_model: ClassVar[str] = DEFAULT_JUDGE_MODEL

    def needs_judge(self) -> bool:
        return True

    def read_reviews(self, path: str | Path) -> ReplayJudge:
        """Saved judge replies: a list of texts in question order, the official review file, or RLHF-V's."""
        return replay_judge(path)

    def score_file(self, path: str | Path, judge: Any = None) -> tuple[Metrics, dict[str, int]]:
        """MMHal's own response format (the 96-record template with ``model_answer``); see
        :func:`score_response_file`. The data root is optional, as for the official script."""
        metrics = score_response_file(path, self.data_root_given, judge)
        n = metrics.counts.get("questions", 0)
        return metrics, {"samples": n, "responses": n, "missing": 0}

    def read_options(self) -> None:
        file_option = self.options.get("mmhal_file")
        if file_option is not None and not isinstance(file_option, (str, Path)):
            raise ConfigError(f"mmhal_file must be a file name or path, got {file_option!r}")
        self.question_file = str(file_option) if file_option else None

    def default_data_root(self) -> Path:
        raise ConfigError(
            f"task {self.name} needs --data-root: the folder holding {' or '.join(TEMPLATE_FILES)} ({DATA_SOURCE})"
        )

    def check_files(self) -> list[Path]:
        return [find_question_file(self.data_root, self.question_file)]

    def records(self) -> list[MMHalRecord]:
        """The 96 benchmark records, in file order."""
        return read_records(self.check_files()[0])

    def load_samples(self) -> list[Sample]:
        out = []
        for rec in self.records():
            out.append(
                Sample(
                    id=str(rec.index),
                    prompt=rec.question,
                    images=(ImageRef(path=str(image_path(rec, self.image_root))),),
                    reference={
                        "question": rec.question,
                        "gt_answer": rec.gt_answer,
                        "image_content": list(rec.image_content),
                    },
                    meta={
                        "question_type": rec.type_name,
                        "question_topic": rec.question_topic,
                        "image_id": rec.image_id,
                        "image_src": rec.image_src,
                    },
                )
            )
        return out

    def score(self, samples: Sequence[Sample], responses: Mapping[str, Response], judge: Any = None) -> Metrics:
        """Judge every sample that has a response; samples without one are counted (``no_response``), not judged."""
        if judge is None:
            raise _no_judge()
        items = []
        for s in samples:
            if s.id not in responses:
                continue
            ref = s.reference
            items.append(
                _Item(
                    s.id,
                    int(s.id),
                    judge_prompt(ref["image_content"], ref["question"], ref["gt_answer"], responses[s.id].text),
                )
            )
        missing = len(samples) - len(items)
        notes = [f"{missing} questions have no response (failed generation) and are not judged"] if missing else []
        return _score_items(
            items,
            judge,
            n_questions=len(samples),
            task=self.name,
            extra_counts={"no_response": missing},
            extra_notes=notes,
        )
