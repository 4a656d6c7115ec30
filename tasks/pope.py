"""POPE: polling-based object probing of hallucination, "Is there a <object> in the image?" on COCO val2014.

POPE (Li et al., 2023, "Evaluating Object Hallucination in Large Vision-Language Models";
https://github.com/RUCAIBox/POPE, now AoiDragon/POPE) asks, for 500 COCO val2014 images, 3 questions about objects
in the image (label "yes") and 3 about objects absent from it (label "no"), the absent objects drawn at random, among
the most frequent COCO objects (popular) or among those that co-occur most with the image's objects (adversarial):
3,000 questions per split, in ``output/coco/coco_pope_{random,popular,adversarial}.json`` (JSON lines
``{"question_id", "image", "text", "label"}``).

Tasks: ``pope_random``, ``pope_popular``, ``pope_adversarial`` (one split each) and ``pope`` (the three splits,
9,000 questions; metrics per split in ``breakdown`` and their mean over the splits as the headline, as papers
report POPE). Sample ids are ``<split>-<question_id>``.

Scoring follows the official ``evaluate.py`` (AoiDragon/POPE @ f3ec604337f1d1c9723ef8d01b4accacf8badb3d), which
LLaVA's ``llava/eval/eval_pope.py`` (haotian-liu/LLaVA @ 4241f08c6368f1c5bb28dc7c8be6cb19713e324a) repeats per split:

- Answer (:func:`parse_answer`): keep the text before the first ``'.'`` (if any), remove ``','``, split on ``' '``
  (spaces only); the answer is "no" if one of the words is exactly ``'No'``, ``'not'`` or ``'no'``, else "yes". So
  "No" / "no, there is not." / "There is no dog" are no; "Yes" / "NO" / "Nope" / "" / "I don't know" are yes;
  "Yes. There is not..." is yes (only the first sentence counts); "No\\nthere..." is yes (the word is "No\\nthere").
- Positive class "yes": ``precision = TP / (TP + FP)``, ``recall = TP / (TP + FN)``,
  ``f1 = 2 * precision * recall / (precision + recall)``, ``acc = (TP + TN) / (TP + TN + FP + FN)``,
  ``yes_ratio = share of the model's answers parsed as "yes"``. Numbers are the unrounded fractions the official
  script prints (LLaVA also prints them ``%.3f``); papers usually print them x100.

Departures that never change a number the official code prints: answers are matched to labels by question id (the
official scripts zip the answer and label files by position); a question without a response is counted
(``counts["no_response"]``) and left out (the official script would misalign or crash); a precision, recall or F1
whose denominator is 0 is reported as 0.0 with a note (the official script raises ``ZeroDivisionError``).

``harness score pope_<split>|pope --responses FILE`` reads the official answer files (:meth:`_PopeTask.read_responses`).
Where the harness is stricter than the official scorer: an answer file without question ids must hold exactly as
many answers as there are questions (the official ``zip`` truncates to the shorter), and a question answered twice
is an error.

Not followed: lmms-eval's ``pope`` task (EvolvingLMMs-Lab/lmms-eval ``lmms_eval/tasks/pope/utils.py`` @ 2c03baf and
9cd42ee) compares the lower-cased, stripped response exactly with "yes"/"no" (so "Yes." is wrong and counts neither
as yes nor as no), and its ``pope_yes_ratio`` is the share of **ground-truth** labels that are "yes" (always 0.5 on
POPE), not the model's yes-ratio that POPE defines.

Prompt: the question ``text`` followed by LLaVA-1.5's short-answer instruction
``"\\nAnswer the question using a single word or phrase."`` (:data:`LLAVA_SUFFIX`; LLaVA-1.5's
``playground/data/eval/pope/llava_pope_test.jsonl`` holds the POPE questions with this suffix, read as they are by
``llava/eval/model_vqa_loader.py``; lmms-eval's ``pope_doc_to_text`` appends the same text at commit 2c03baf,
and ``"\\nAnswer the question with 'yes' or 'no'."`` at 9cd42ee). The option ``pope_suffix`` changes it (a literal
``\\n`` in it is a newline); ``pope_suffix=""`` (or ``none``) asks the bare POPE question.

Images: ``<image root>/<image>`` or ``<image root>/val2014/<image>`` (COCO val2014 file names, e.g.
``COCO_val2014_000000310196.jpg``). Default generation budget: 128 new tokens (LLaVA's ``model_vqa_loader.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from harness.errors import ConfigError, DataError, MissingDataFile
from harness.io import iter_jsonl
from harness.task import DataFile, Task, register_task
from harness.types import ImageRef, Metrics, Response, Sample
from tasks import _scaffold as scaffold

log = logging.getLogger(__name__)

OFFICIAL_SOURCE = (
    "POPE evaluate.py, https://github.com/AoiDragon/POPE (formerly RUCAIBox/POPE), "
    "commit f3ec604337f1d1c9723ef8d01b4accacf8badb3d; as LLaVA llava/eval/eval_pope.py @ 4241f08"
)
DATA_SOURCE = "POPE: https://github.com/AoiDragon/POPE (output/coco/); images: COCO val2014 (https://cocodataset.org)"

SPLITS: tuple[str, ...] = ("random", "popular", "adversarial")
#: LLaVA-1.5's POPE prompt suffix (in the questions of LLaVA's ``playground/data/eval/pope/llava_pope_test.jsonl``).
LLAVA_SUFFIX = "\nAnswer the question using a single word or phrase."
#: LLaVA's ``model_vqa_loader.py`` default (``--max_new_tokens 128``); lmms-eval's ``pope.yaml`` uses 128 too.
DEFAULT_MAX_NEW_TOKENS = 128
LABELS = ("yes", "no")
HEADLINE = ("Accuracy", "F1", "Precision", "Recall", "Yes Ratio")


def split_file_names(split: str) -> tuple[str, ...]:
    """File names of a split's questions: POPE's ``coco_pope_<split>.json``, then LLaVA-RLHF's ``.jsonl`` copy."""
    return (f"coco_pope_{split}.json", f"coco_pope_{split}.jsonl")


# --------------------------------------------------------------------------------------------------- data
@dataclass(frozen=True)
class PopeQuestion:
    """One line of a POPE question file."""

    split: str
    question_id: int
    image: str
    text: str
    label: str  # "yes" | "no"

    @property
    def sample_id(self) -> str:
        return f"{self.split}-{self.question_id}"


def read_questions(path: str | Path, split: str) -> list[PopeQuestion]:
    """Read a POPE question file (JSON lines). A malformed line, a missing field, a label other than "yes"/"no" or a
    repeated ``question_id`` raises :class:`DataError` naming the file, the line and the field."""
    out: list[PopeQuestion] = []
    seen = scaffold.UniqueIds(path)
    for lineno, obj in iter_jsonl(path):
        qid = obj.get("question_id")
        if isinstance(qid, bool) or not isinstance(qid, int):
            raise DataError(f"field 'question_id' must be an integer, got {qid!r}", path=path, line=lineno)
        for key in ("image", "text"):
            if not isinstance(obj.get(key), str):
                raise DataError(f"question {qid}: missing or non-string field {key!r}", path=path, line=lineno)
        label = obj.get("label")
        if label not in LABELS:
            raise DataError(
                f'question {qid}: field \'label\' must be "yes" or "no", got {label!r}', path=path, line=lineno
            )
        seen.add(qid, f"question_id {qid} appears twice", line=lineno, cite_first=True)
        out.append(PopeQuestion(split=split, question_id=qid, image=obj["image"], text=obj["text"], label=label))
    if not out:
        raise DataError("holds no questions", path=path)
    return out


def find_split_file(data_root: str | Path, split: str) -> Path:
    """The question file of ``split`` under ``data_root`` (:func:`split_file_names`); :class:`MissingDataFile`."""
    root = Path(data_root)
    names = split_file_names(split)
    for name in names:
        if (root / name).is_file():
            return root / name
    raise MissingDataFile(root / names[0], DATA_SOURCE)


# --------------------------------------------------------------------------------------------------- scoring
def parse_answer(text: str) -> str:
    """The official answer parsing: "no" if the first sentence has the word 'No', 'not' or 'no', else "yes"."""
    if text.find(".") != -1:
        text = text.split(".")[0]
    text = text.replace(",", "")
    words = text.split(" ")
    if "No" in words or "not" in words or "no" in words:
        return "no"
    return "yes"


@dataclass(frozen=True)
class PopeScores:
    """The official confusion counts and metrics ("yes" is the positive class); metrics are fractions in [0, 1]."""

    TP: int
    FP: int
    TN: int
    FN: int
    Accuracy: float
    Precision: float
    Recall: float
    F1: float
    yes_ratio: float
    undefined: tuple[str, ...] = ()  # metrics whose denominator was 0 (reported as 0.0)

    @property
    def total(self) -> int:
        return self.TP + self.FP + self.TN + self.FN

    def headline(self) -> dict[str, float]:
        return {
            "Accuracy": self.Accuracy,
            "F1": self.F1,
            "Precision": self.Precision,
            "Recall": self.Recall,
            "Yes Ratio": self.yes_ratio,
        }

    def counts(self) -> dict[str, int]:
        return {"TP": self.TP, "FP": self.FP, "TN": self.TN, "FN": self.FN}


def _div(num: float, den: float, name: str, undefined: list[str]) -> float:
    if den == 0:
        undefined.append(name)
        return 0.0
    return num / den


def pope_scores(predictions: Sequence[str], labels: Sequence[str]) -> PopeScores:
    """Metrics of parsed answers against labels (both "yes"/"no", paired in order), as the official script."""
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    if not predictions:
        raise ValueError("no predictions to score")
    tp = fp = tn = fn = 0
    for pred, label in zip(predictions, labels):
        if pred == "yes" and label == "yes":
            tp += 1
        elif pred == "yes" and label == "no":
            fp += 1
        elif pred == "no" and label == "no":
            tn += 1
        elif pred == "no" and label == "yes":
            fn += 1
        else:
            raise ValueError(f"prediction {pred!r} / label {label!r}: expected 'yes' or 'no'")
    undefined: list[str] = []
    precision = _div(float(tp), float(tp + fp), "Precision", undefined)
    recall = _div(float(tp), float(tp + fn), "Recall", undefined)
    f1 = _div(2 * precision * recall, precision + recall, "F1", undefined)
    acc = (tp + tn) / (tp + tn + fp + fn)
    yes_ratio = [p == "yes" for p in predictions].count(True) / len(predictions)
    return PopeScores(
        TP=tp,
        FP=fp,
        TN=tn,
        FN=fn,
        Accuracy=acc,
        Precision=precision,
        Recall=recall,
        F1=f1,
        yes_ratio=yes_ratio,
        undefined=tuple(undefined),
    )


def score_answer_file(answers_path: str | Path, label_path: str | Path) -> PopeScores:
    """Score a POPE answer file the way ``evaluate.py`` does: JSON lines with the response under ``answer`` (POPE)
    or ``text`` (LLaVA's answer files), paired **by position** with the labels of the question file."""
    labels = [q.label for q in read_questions(label_path, split="file")]
    answers: list[str] = []
    for lineno, obj in iter_jsonl(answers_path):
        value = obj.get("answer", obj.get("text"))
        if not isinstance(value, str):
            raise DataError("missing or non-string field 'answer' (or 'text')", path=answers_path, line=lineno)
        answers.append(value)
    if len(answers) != len(labels):
        raise DataError(
            f"holds {len(answers)} answers for the {len(labels)} questions of {label_path} (answers are "
            f"paired with questions by position)",
            path=answers_path,
        )
    return pope_scores([parse_answer(a) for a in answers], labels)


# --------------------------------------------------------------------------------------------------- tasks
class _PopeTask(scaffold.TaskOptions, Task):
    """Shared by the POPE tasks. Option ``pope_suffix``: text appended to each question (default
    :data:`LLAVA_SUFFIX`; ``""`` or ``none``: the bare question; a literal ``\\n`` in it is a newline)."""

    version: ClassVar[str] = "1"
    splits: ClassVar[tuple[str, ...]]
    default_max_new_tokens: ClassVar[int] = DEFAULT_MAX_NEW_TOKENS
    option_names: ClassVar[tuple[str, ...]] = ("pope_suffix",)

    def read_options(self) -> None:
        self.suffix = scaffold.suffix_text(self.options.get("pope_suffix", LLAVA_SUFFIX), "pope_suffix")

    def default_data_root(self) -> Path:
        raise ConfigError(f"task {self.name} needs --data-root: the folder holding {self._file_list()} ({DATA_SOURCE})")

    def check_files(self) -> list[Path]:
        return [find_split_file(self.data_root, split) for split in self.splits]

    def questions(self) -> list[PopeQuestion]:
        """The questions of the task's splits, split by split, each in file order."""
        out: list[PopeQuestion] = []
        for split, path in zip(self.splits, self.check_files()):
            out += read_questions(path, split)
        return out

    def _image(self, name: str) -> ImageRef:
        direct = self.image_root / name
        if not direct.is_file() and (self.image_root / "val2014" / name).is_file():
            return ImageRef(path=str(self.image_root / "val2014" / name))
        return ImageRef(path=str(direct))

    def load_samples(self) -> list[Sample]:
        images: dict[str, ImageRef] = {}
        out = []
        for q in self.questions():
            if q.image not in images:
                images[q.image] = self._image(q.image)
            ref = images[q.image]
            out.append(
                Sample(
                    id=q.sample_id,
                    prompt=q.text + self.suffix,
                    images=(ref,),
                    reference=q.label,
                    meta={"split": q.split, "question_id": q.question_id, "question": q.text, "image": q.image},
                )
            )
        return out

    def read_responses(self, path: str | Path) -> dict[str, Response]:
        """An answer file in the official layouts (``harness score``), scored by the same code as ``harness run``.

        JSON lines with the response under ``text`` (LLaVA's ``model_vqa_loader.py`` answers) or ``answer`` (POPE's).
        With a ``question_id`` on every line, answers are matched to questions by id, within the split named by the
        line's ``category`` (or ``split``) field, which task ``pope`` needs; a single-split task takes its own split.
        Without ids, answers are paired with the task's questions by position, as ``evaluate.py`` pairs them, and
        their count must equal the questions' (the official ``zip`` would silently drop the surplus). A repeated
        question is an error.
        """
        questions = self.questions()
        known = {q.sample_id for q in questions}
        rows = list(iter_jsonl(path))
        if not rows:
            raise DataError("holds no answers", path=path)
        by_id = all("question_id" in rec for _, rec in rows)
        if not by_id and len(rows) != len(questions):
            raise DataError(
                f"holds {len(rows)} answers without question ids for the {len(questions)} questions of "
                f"{self.name} (answers are then paired with questions by position)",
                path=path,
            )
        out: dict[str, Response] = {}
        answered = scaffold.UniqueIds(path)
        for index, (lineno, rec) in enumerate(rows):
            text = rec.get("text", rec.get("answer"))
            if not isinstance(text, str):
                raise DataError("missing or non-string field 'text' (or 'answer')", path=path, line=lineno)
            if by_id:
                split = rec.get("category", rec.get("split"))
                if split is None:
                    if len(self.splits) > 1:
                        raise DataError(
                            f"no 'category' field: task {self.name} holds the splits "
                            f"{', '.join(self.splits)}, so each answer must name its split (or score "
                            f"each split with pope_<split>)",
                            path=path,
                            line=lineno,
                        )
                    split = self.splits[0]
                sid = f"{split}-{rec['question_id']}"
                if sid not in known:
                    raise DataError(
                        f"question_id {rec['question_id']!r} is not a question of split {split!r} of {self.name}",
                        path=path,
                        line=lineno,
                    )
            else:
                sid = questions[index].sample_id
            answered.add(sid, f"question {sid} is answered twice", line=lineno, cite_first=True)
            out[sid] = Response(sid, text, "stop")
        return out

    def score(self, samples: Sequence[Sample], responses: Mapping[str, Response], judge: Any = None) -> Metrics:
        records: list[dict[str, Any]] = []
        per_split: dict[str, tuple[list[str], list[str]]] = {}
        missing = 0
        for s in samples:
            split = s.meta.get("split", self.splits[0])
            if s.id not in responses:
                missing += 1
                continue
            answer = parse_answer(responses[s.id].text)
            preds, labels = per_split.setdefault(split, ([], []))
            preds.append(answer)
            labels.append(s.reference)
            records.append(
                {"id": s.id, "split": split, "answer": answer, "label": s.reference, "correct": answer == s.reference}
            )
        notes = [
            f"scorer: {OFFICIAL_SOURCE}",
            f"prompt suffix: {self.suffix!r}",
            (
                "metrics are fractions (the official script prints them unrounded); yes = positive class; "
                "Yes Ratio = share of the model's answers parsed as yes"
            ),
        ]
        counts: dict[str, int] = {"questions": len(samples), "scored": len(records), "no_response": missing}
        if missing:
            notes.append(f"{missing} questions have no response (failed generation) and are not scored")
        scores = {split: pope_scores(*per_split[split]) for split in self.splits if split in per_split}
        for split, sc in scores.items():
            if sc.undefined:
                notes.append(
                    f"{split}: {', '.join(sc.undefined)} undefined (denominator 0), reported as 0.0 "
                    f"(the official script raises ZeroDivisionError)"
                )
        if not scores:
            notes.append("no response to score")
            return Metrics(task=self.name, headline={}, counts=counts, notes=notes, records=records)
        answered_yes = sum(r["answer"] == "yes" for r in records)
        counts.update(answered_yes=answered_yes, answered_no=len(records) - answered_yes)
        if len(self.splits) == 1:
            sc = next(iter(scores.values()))
            counts.update(sc.counts())
            return Metrics(task=self.name, headline=sc.headline(), counts=counts, notes=notes, records=records)
        breakdown = {split: {**sc.headline(), **sc.counts()} for split, sc in scores.items()}
        headline = {key: sum(sc.headline()[key] for sc in scores.values()) / len(scores) for key in HEADLINE}
        for split, sc in scores.items():
            counts.update({f"{split}_{k}": v for k, v in sc.counts().items()})
        notes.append(f"headline: mean over the splits {', '.join(scores)} of each split's metric")
        absent = [s for s in self.splits if s not in scores]
        if absent:
            notes.append(f"no scored question of split {', '.join(absent)}: the mean covers the splits present")
        return Metrics(
            task=self.name, headline=headline, breakdown=breakdown, counts=counts, notes=notes, records=records
        )


def _files(*splits: str) -> tuple[DataFile, ...]:
    return tuple(DataFile(split_file_names(split)[0], DATA_SOURCE) for split in splits)


@register_task
class PopeRandom(_PopeTask):
    """POPE random split (3,000 questions): absent objects drawn at random."""

    name = "pope_random"
    description = (
        "POPE random (COCO, 3,000 yes/no object questions): Accuracy, F1, Precision, Recall, Yes Ratio "
        "(official evaluate.py)"
    )
    data_files = _files("random")
    splits = ("random",)


@register_task
class PopePopular(_PopeTask):
    """POPE popular split (3,000 questions): absent objects among the most frequent COCO objects."""

    name = "pope_popular"
    description = (
        "POPE popular (COCO, 3,000 yes/no object questions): Accuracy, F1, Precision, Recall, Yes Ratio "
        "(official evaluate.py)"
    )
    data_files = _files("popular")
    splits = ("popular",)


@register_task
class PopeAdversarial(_PopeTask):
    """POPE adversarial split (3,000 questions): absent objects that co-occur most with the image's objects."""

    name = "pope_adversarial"
    description = (
        "POPE adversarial (COCO, 3,000 yes/no object questions): Accuracy, F1, Precision, Recall, "
        "Yes Ratio (official evaluate.py)"
    )
    data_files = _files("adversarial")
    splits = ("adversarial",)


@register_task
class Pope(_PopeTask):
    """POPE, the three splits (9,000 questions): per-split metrics and their mean over the splits."""

    name = "pope"
    description = (
        "POPE random + popular + adversarial (COCO, 9,000 questions): per-split metrics and their mean "
        "(official evaluate.py)"
    )
    data_files = _files(*SPLITS)
    splits = SPLITS
