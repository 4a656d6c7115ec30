"""The lmms-eval bridge: ``harness run --tasks lmms:<task>`` runs a task of lmms-eval's registry in the harness.

lmms-eval (EvolvingLMMs-Lab/lmms-eval, an optional extra: ``pip install 'halluc-harness[lmms]'``) defines each
benchmark as a task YAML plus a ``utils.py``: the dataset (``dataset_path`` / ``dataset_name`` /
``dataset_kwargs``, loaded with Hugging Face ``datasets``; ``dataset_path: json`` with
``dataset_kwargs: {data_files: ...}`` reads local files), the prompt (``doc_to_text``, with the task's
``lmms_eval_specific_kwargs`` ``default`` entry), the images (``doc_to_visual``), the answer processing (``filter_list``
and ``process_results``) and the metrics (``metric_list``: one aggregation function per metric). The bridge takes all
of that from lmms-eval and leaves generation to the harness: its engines, run store, resume and decoding settings.

- Samples: the task's evaluation docs (``test_split``, else ``validation_split``) in dataset order; sample id = the doc
  index (``"0"``, ``"1"``, ...). Prompt = ``doc_to_text(doc)``; images = ``doc_to_visual(doc)`` (PIL images are
  encoded as PNG bytes, strings are image file paths); token budget = the task's
  ``generation_kwargs.max_new_tokens`` (``--max-new-tokens`` overrides it, as for every task).
- Scoring, as lmms-eval's evaluator does it: each response goes through each of the task's filter pipelines (default:
  ``none`` = take the response as it is), then ``process_results(doc, [response])`` per doc (responses stripped, as
  lmms-eval does for ``generate_until``) and per metric the task's aggregation function over the docs' values
  (``agg(items)``, or ``agg(items, args=...)`` where it takes ``args``; ``args.output_path`` is the option
  ``lmms_output_path``, else a temporary folder, where some tasks write submission files).
- Headline: the aggregated metrics under lmms-eval's names (``<metric>`` for the ``none`` filter, else
  ``<metric>,<filter>``); aggregates that are not numbers are left out with a note. ``records``: per sample the
  doc id and the values ``process_results`` returned (made JSON-safe).
- Departures: a doc without a response (failed generation) is counted (``counts["no_response"]``) and left out of the
  aggregation (lmms-eval would have scored an empty answer); no stderr/bootstrap; one response per doc
  (``repeats: 1``). Only ``output_type: generate_until`` tasks are supported (no loglikelihood or multiple-choice
  ranking, no multi-round/agentic tasks, no video/audio inputs); groups and tags are not expanded: name their tasks.

Options: ``lmms_include_path`` (a folder of user task YAMLs, several separated by ``,``, indexed with
``TaskManager(include_path=...)`` besides lmms-eval's own tasks), ``lmms_output_path`` (see above).
"""

from __future__ import annotations

import difflib
import importlib.util
import io
import json
import logging
import math
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

from harness.errors import ConfigError, DataError, MissingPackage, install_command
from harness.task import Task
from harness.types import ImageRef, Metrics, Response, Sample
from tasks import _scaffold as scaffold

log = logging.getLogger(__name__)

PREFIX = "lmms:"
EXTRA = "lmms"
SUPPORTED_OUTPUT_TYPES = ("generate_until",)


def missing_extra_error(task_name: str) -> ConfigError:
    """The error for an ``lmms:`` task when lmms-eval is not installed: it names the extra to install."""
    return MissingPackage("lmms-eval", f"{PREFIX}{task_name}", f"extra:{EXTRA}")


def lmms_eval_installed() -> bool:
    """True when the ``lmms_eval`` package can be imported (without importing it: that is slow)."""
    return importlib.util.find_spec("lmms_eval") is not None


def _import_lmms_tasks(task_name: str) -> Any:
    """``lmms_eval.tasks`` (TaskManager); a :class:`ConfigError` if lmms-eval is absent or fails to import."""
    if not lmms_eval_installed():
        raise missing_extra_error(task_name)
    try:
        import lmms_eval.tasks as lmms_tasks
    except ImportError as exc:
        raise ConfigError(
            f"{PREFIX}{task_name}: lmms-eval is installed but cannot be imported ({exc}); "
            f"reinstall it with {install_command(f'extra:{EXTRA}')}"
        ) from exc
    return lmms_tasks


def _include_paths(options: Mapping[str, Any]) -> list[str] | None:
    value = options.get("lmms_include_path")
    if value in (None, ""):
        return None
    items = [str(v) for v in value] if isinstance(value, (list, tuple)) else [p.strip() for p in str(value).split(",")]
    paths = [p for p in items if p]
    for p in paths:
        if not Path(p).is_dir():
            raise ConfigError(f"lmms_include_path {p} is not a directory (expected a folder of lmms-eval task YAMLs)")
    # lmms-eval joins paths as strings: a folder needs its trailing separator
    return [str(Path(p).resolve()) + "/" for p in paths]


def _jsonable(value: Any) -> Any:
    """``value`` made JSON-safe for ``scores.jsonl`` (numpy scalars to numbers, other objects to strings)."""
    return json.loads(json.dumps(value, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def _as_float(value: Any) -> float | None:
    """A numeric aggregate as ``float``; None for anything else (dicts, strings, None)."""
    if hasattr(value, "item") and not isinstance(value, (list, dict)):
        try:
            value = value.item()
        except (TypeError, ValueError):
            return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _png(image: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


@dataclass
class _Filtered:
    """The two attributes of an lmms-eval ``Instance`` that a ``FilterEnsemble`` reads and writes."""

    resps: list[Any]
    filtered_resps: dict[str, Any] = field(default_factory=dict)


class LmmsTask(scaffold.TaskOptions, Task):
    """A task of lmms-eval's registry (``lmms_task``), run by the harness; see the module docstring.

    Subclasses are made by :func:`lmms_task_class` (``harness.task.get_task("lmms:<task>")``).
    """

    lmms_task: ClassVar[str]
    version: ClassVar[str] = "1"
    option_names: ClassVar[tuple[str, ...]] = ("lmms_include_path", "lmms_output_path")

    def read_options(self) -> None:
        self.include_path = _include_paths(self.options)
        self._manager: Any = None
        self._task: Any = None

    # ------------------------------------------------------------------------------------------- lmms-eval
    def task_manager(self) -> Any:
        """lmms-eval's ``TaskManager`` over its own tasks and ``lmms_include_path`` (built once)."""
        if self._manager is None:
            lmms_tasks = _import_lmms_tasks(self.lmms_task)
            self._manager = lmms_tasks.TaskManager(include_path=self.include_path)
        return self._manager

    def check_files(self) -> list[Path]:
        """Checks that lmms-eval knows the task (and that it is a task, not a group or tag); no files of its own."""
        manager = self.task_manager()
        index = manager.task_index
        if self.lmms_task not in index:
            close = difflib.get_close_matches(self.lmms_task, list(index), n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(PREFIX + c for c in close)}?" if close else ""
            where = f" or in {', '.join(self.include_path)}" if self.include_path else ""
            raise ConfigError(
                f"lmms-eval has no task {self.lmms_task!r} in its registry{where}{hint} "
                f"(option lmms_include_path adds a folder of task YAMLs)"
            )
        kind = index[self.lmms_task].get("type")
        if kind != "task":
            raise ConfigError(f"{self.name} is an lmms-eval {kind}, not a task: name its tasks one by one")
        return []

    def lmms(self) -> Any:
        """The lmms-eval ``ConfigurableTask`` (loads its dataset on first use)."""
        if self._task is None:
            self.check_files()
            try:
                loaded = self.task_manager().load_task_or_group(self.lmms_task)
            except FileNotFoundError as exc:
                raise DataError(f"{self.name}: lmms-eval cannot load the task's dataset: {exc}") from exc
            task = loaded.get(self.lmms_task)
            if task is None or isinstance(task, dict):
                raise ConfigError(f"{self.name}: lmms-eval loaded no single task for this name")
            output_type = getattr(task, "OUTPUT_TYPE", None)
            if output_type not in SUPPORTED_OUTPUT_TYPES:
                raise ConfigError(
                    f"{self.name}: output_type {output_type!r} is not supported by the bridge "
                    f"(only {', '.join(SUPPORTED_OUTPUT_TYPES)})"
                )
            self._task = task
        return self._task

    def _docs(self, *, media: bool = True) -> Any:
        task = self.lmms()
        if not media and hasattr(task, "eval_docs_no_media"):
            return task.eval_docs_no_media
        return task.eval_docs

    # ------------------------------------------------------------------------------------------- samples
    def samples(self, limit: int | None = None) -> list[Sample]:
        """The first ``limit`` eval docs as samples (only those are turned into prompts and images)."""
        docs = self._docs()
        n = len(docs) if limit is None else min(limit, len(docs))
        return [self._sample(i, docs[i]) for i in range(n)]

    def load_samples(self) -> list[Sample]:
        return self.samples()

    def _sample(self, index: int, doc: Mapping[str, Any]) -> Sample:
        task = self.lmms()
        sid = str(index)
        prompt = task.doc_to_text(doc)
        if not isinstance(prompt, str):
            raise DataError(f"{self.name}: doc {index}: doc_to_text returned {type(prompt).__name__}, expected text")
        visuals = task.doc_to_visual(doc) or []
        if not isinstance(visuals, (list, tuple)):
            visuals = [visuals]
        images = tuple(self._image_ref(sid, v) for v in visuals if v is not None)
        gen = getattr(task.config, "generation_kwargs", None) or {}
        budget = gen.get("max_new_tokens")
        try:
            target = _jsonable(task.doc_to_target(doc))
        except Exception:  # noqa: BLE001  (a target is informative only; scoring does not use it)
            target = None
        return Sample(
            id=sid,
            prompt=prompt,
            images=images,
            reference=target,
            meta={"doc_id": index, "lmms_task": self.lmms_task},
            max_new_tokens=int(budget) if isinstance(budget, (int, float)) and budget > 0 else None,
        )

    def _image_ref(self, sample_id: str, visual: Any) -> ImageRef:
        if hasattr(visual, "save") and hasattr(visual, "mode"):  # PIL.Image.Image
            return ImageRef(data=_png(visual))
        if isinstance(visual, (str, Path)):
            return ImageRef(path=str(visual))
        raise ConfigError(
            f"{self.name}: sample {sample_id}: doc_to_visual gave a {type(visual).__name__}; the bridge "
            f"takes images only (PIL images or image paths)"
        )

    # ------------------------------------------------------------------------------------------- scoring
    def _aggregation_args(self) -> SimpleNamespace:
        out = self.options.get("lmms_output_path") or tempfile.mkdtemp(prefix="lmms-eval-")
        Path(out).mkdir(parents=True, exist_ok=True)
        return SimpleNamespace(output_path=str(out))

    def score(self, samples: Sequence[Sample], responses: Mapping[str, Response], judge: Any = None) -> Metrics:
        import inspect

        task = self.lmms()
        docs = self._docs(media=False)
        filters = list(getattr(task, "_filters", []) or [])
        answered = [s for s in samples if s.id in responses]
        missing = len(samples) - len(answered)
        doc_ids = [int(s.meta.get("doc_id", s.id)) for s in answered]
        items: dict[tuple[str, str], list[Any]] = {}
        records: list[dict[str, Any]] = [{"id": s.id, "doc_id": d} for s, d in zip(answered, doc_ids)]
        pipelines = [(f.name, f) for f in filters] or [("none", None)]
        for key, ensemble in pipelines:
            insts = [_Filtered(resps=[responses[s.id].text]) for s in answered]
            if ensemble is not None and insts:
                ensemble.apply(insts, [docs[d] for d in doc_ids])
            for inst, d, rec in zip(insts, doc_ids, records):
                value = inst.filtered_resps.get(key, inst.resps[0]) if ensemble is not None else inst.resps[0]
                result = task.process_results(docs[d], [value])
                for metric, v in result.items():
                    items.setdefault((metric, key), []).append(v)
                    rec[metric if key == "none" else f"{metric},{key}"] = _jsonable(v)
                if key != "none" or len(pipelines) > 1:
                    rec[f"response,{key}"] = _jsonable(value)
        aggregation = task.aggregation()
        headline: dict[str, float] = {}
        notes = [
            (
                f"task definition: lmms-eval {self._lmms_version()} task {self.lmms_task!r} (doc_to_text, "
                f"doc_to_visual, filters, process_results, aggregation); generation: the harness engine"
            )
        ]
        args: SimpleNamespace | None = None
        for (metric, key), values in items.items():
            fn = aggregation.get(metric)
            if fn is None:
                continue
            if "args" in inspect.signature(fn).parameters:
                args = args or self._aggregation_args()
                value = fn(values, args=args)
            else:
                value = fn(values)
            name = metric if key == "none" else f"{metric},{key}"
            number = _as_float(value)
            if number is None or math.isnan(number):
                notes.append(f"aggregate {name} is not a number ({_jsonable(value)!r}); not in the headline")
                continue
            headline[name] = number
        if args is not None:
            notes.append(f"aggregation files (lmms-eval args.output_path): {args.output_path}")
        counts = {"questions": len(samples), "scored": len(answered), "no_response": missing}
        if missing:
            notes.append(f"{missing} docs have no response (failed generation) and are not scored")
        if not answered:
            notes.append("no response to score")
        return Metrics(task=self.name, headline=headline, counts=counts, notes=notes, records=records)

    @staticmethod
    def _lmms_version() -> str:
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("lmms_eval")
        except PackageNotFoundError:
            return "(version unknown)"


_CLASSES: dict[str, type[LmmsTask]] = {}


def lmms_task_class(name: str) -> type[LmmsTask]:
    """The Task class for ``lmms:<task>`` (made once per name). Raises :class:`ConfigError` when the name is empty
    or lmms-eval is not installed; whether lmms-eval knows the task is checked by ``check_files`` (it depends on
    the ``lmms_include_path`` option)."""
    task_name = name.removeprefix(PREFIX)
    if not task_name.strip():
        raise ConfigError(f"{name!r}: name an lmms-eval task after {PREFIX!r}, e.g. {PREFIX}pope")
    if not lmms_eval_installed():
        raise missing_extra_error(task_name)
    cls = _CLASSES.get(task_name)
    if cls is None:
        attrs = {
            "name": PREFIX + task_name,
            "lmms_task": task_name,
            "description": f"lmms-eval task {task_name} (definition and metrics from lmms-eval)",
            "__doc__": f"lmms-eval's {task_name} task run through the harness.",
            "__module__": __name__,
        }
        cls = type(f"Lmms_{task_name}", (LmmsTask,), attrs)
        _CLASSES[task_name] = cls
    return cls
