"""The task interface and registry. Each benchmark lives in its own module under ``tasks/``."""

from __future__ import annotations

import difflib
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from harness.errors import ConfigError, DataError, MissingDataFile
from harness.io import read_json
from harness.judge import ReplayJudge
from harness.types import Metrics, Response, Sample


@dataclass(frozen=True)
class DataFile:
    """A file a task needs under its data root, and where users get it."""

    relpath: str
    source: str


@dataclass(frozen=True)
class TaskFlag:
    """A task option with a command-line flag of its own (``--amber-similarity`` sets ``amber_similarity``): the
    task declares it, the CLI builds the flag from the declaration."""

    key: str
    flag: str
    help: str
    choices: tuple[str, ...] | None = None
    metavar: str | None = None


class Task(ABC):
    """A benchmark: its samples, and a scorer that follows the official one.

    Subclasses set ``name``, ``version``, ``description`` and ``data_files``, and implement
    :meth:`load_samples` and :meth:`score`.

    ``option_names`` lists every task option (``--option KEY=VALUE``) the task reads; the CLI refuses a key that
    none of the requested tasks declares, naming the closest known keys, so a typo is never silently ignored.

    Overlong responses are refused, not truncated: scoring (``harness score`` and ``harness run``) raises
    :class:`~harness.errors.DataError` naming the sample id and the length when a response holds more than
    :attr:`max_response_chars` characters (:data:`MAX_RESPONSE_CHARS`, 100,000). No benchmark answer comes near
    that, and the NLTK tokenizers of the AMBER and CHAIR scorers would take hours on a response of megabytes;
    truncating would change the official number silently.
    """

    name: ClassVar[str]
    version: ClassVar[str]
    description: ClassVar[str]
    data_files: ClassVar[tuple[DataFile, ...]] = ()
    default_max_new_tokens: ClassVar[int] = 128
    default_judge_model: ClassVar[str | None] = None  # the judge the official scorer used, if any
    option_names: ClassVar[tuple[str, ...]] = ()  # every key of ``self.options`` the task reads
    flags: ClassVar[tuple[TaskFlag, ...]] = ()  # the options among them that have a flag of their own
    max_response_chars: ClassVar[int] = 100_000  # longer responses are refused by scoring (see above)
    responses_accept_directory: ClassVar[bool] = False  # ``harness score --responses`` may name a folder

    def __init__(
        self,
        data_root: str | Path | None = None,
        image_root: str | Path | None = None,
        options: Mapping[str, Any] | None = None,
    ):
        self.data_root_given = Path(data_root) if data_root is not None else None
        self._data_root = self.data_root_given
        self._image_root = Path(image_root) if image_root is not None else None
        self.options = dict(options or {})

    @property
    def data_root(self) -> Path:
        """The benchmark files' folder: the one given, else :meth:`default_data_root` (resolved on first use)."""
        if self._data_root is None:
            self._data_root = self.default_data_root()
        return self._data_root

    @data_root.setter
    def data_root(self, value: str | Path) -> None:
        self._data_root = Path(value)

    @property
    def image_root(self) -> Path:
        if self._image_root is None:
            self._image_root = self.default_image_root()
        return self._image_root

    def choice_option(self, key: str, default: str, allowed: Sequence[str]) -> str:
        """Task option ``key`` (case-insensitive) among ``allowed``; :class:`ConfigError` naming them otherwise."""
        value = str(self.options.get(key, default)).strip().lower()
        if value not in allowed:
            raise ConfigError(f"unknown {key} {value!r}; expected one of {', '.join(allowed)}")
        return value

    def default_data_root(self) -> Path:
        raise ConfigError(f"task {self.name} needs --data-root (the folder holding {self._file_list()})")

    def default_image_root(self) -> Path:
        return self.data_root

    def _file_list(self) -> str:
        return ", ".join(f.relpath for f in self.data_files) or "its files"

    def check_files(self) -> list[Path]:
        """Paths of the required files; :class:`MissingDataFile` for the first that is missing."""
        paths = []
        for f in self.data_files:
            p = self.data_root / f.relpath
            if not p.exists():
                raise MissingDataFile(p, f.source)
            paths.append(p)
        return paths

    def samples(self, limit: int | None = None) -> list[Sample]:
        """The task's samples in their canonical order (the first ``limit`` of them)."""
        self.check_files()
        items = self.load_samples()
        return items if limit is None else items[:limit]

    @abstractmethod
    def load_samples(self) -> list[Sample]:
        """Read the benchmark files (all present) into samples."""

    @abstractmethod
    def score(self, samples: Sequence[Sample], responses: Mapping[str, Response], judge: Any = None) -> Metrics:
        """Score ``responses`` (by sample id) with the official metric. Samples without a response are failures."""

    def provenance(self) -> dict[str, Any]:
        """What the scorer depends on beyond the data files (e.g. which NLTK data it tokenizes with), recorded in
        the run's manifest so that a number can be traced to it. Empty unless a task says more."""
        return {}

    def needs_judge(self) -> bool:
        """True when scoring (with the task's current options) calls an LLM judge."""
        return False

    def default_judge_base_url(self, model: str) -> str | None:
        """The endpoint of judge ``model`` when none is given (``--judge-base-url``): None is the OpenAI API. A
        task whose judge runs locally (the lab's rater) starts it here and returns its URL."""
        return None

    def score_file(self, path: str | Path, judge: Any = None) -> tuple[Metrics, dict[str, int]]:
        """Score a response file in the benchmark's official format (``harness score``): the metrics, and the
        coverage (samples, responses, missing). Unknown ids are an error; missing ones are reported as coverage."""
        samples = self.samples()
        responses = self.read_responses(path)
        self.check_response_lengths(responses, source=path)
        known = {s.id for s in samples}
        unknown = [sid for sid in responses if sid not in known]
        if unknown:
            raise DataError(
                f"{len(unknown)} responses name samples that task {self.name} does not have (first: {unknown[0]})",
                path=path,
            )
        metrics = self.score(samples, responses, judge)
        return metrics, {"samples": len(samples), "responses": len(responses), "missing": len(samples) - len(responses)}

    def check_response_lengths(self, responses: Mapping[str, Response], source: str | Path | None = None) -> None:
        """:class:`DataError` (naming ``source``, the sample id and the length) for the first response longer than
        :attr:`max_response_chars`; see the class docstring."""
        for sid, resp in responses.items():
            check_response_text(sid, resp.text, source=source, cap=self.max_response_chars)

    def read_responses(self, path: str | Path) -> dict[str, Response]:
        """Responses produced elsewhere, in the benchmark's own official format, by sample id.

        Unknown or duplicate ids and missing fields raise :class:`DataError` naming the file and record.
        """
        raise ConfigError(f"task {self.name} has no response-file format to score; use `harness run`")

    def read_reviews(self, path: str | Path) -> ReplayJudge:
        """A :class:`harness.judge.ReplayJudge` over saved judge replies: a JSON list of reply texts in
        question order (tasks may accept their official review format too)."""

        data = read_json(path)
        if not isinstance(data, list) or not all(isinstance(x, str) or x is None for x in data):
            raise DataError("expected a JSON list of judge reply texts, in question order", path=path)
        return ReplayJudge(data, source=str(path))


#: Responses longer than this many characters are refused by scoring (:attr:`Task.max_response_chars`).
MAX_RESPONSE_CHARS = Task.max_response_chars


def check_response_text(
    sample_id: str,
    text: str | None,
    *,
    source: str | Path | None = None,
    line: int | None = None,
    cap: int = MAX_RESPONSE_CHARS,
) -> None:
    """:class:`DataError` when the response ``text`` of ``sample_id`` is longer than ``cap`` characters."""
    if text is not None and len(text) > cap:
        raise DataError(
            f"sample {sample_id}: response is {len(text):,} characters, over the {cap:,}-character "
            f"limit for scoring (overlong responses are refused, not truncated); shorten or remove it",
            path=source,
            line=line,
        )


def check_option_keys(
    classes: Sequence[type[Task]], options: Mapping[str, Any], flags: Mapping[str, str] | None = None
) -> None:
    """:class:`ConfigError` for the first key of ``options`` that none of the task ``classes`` reads
    (:attr:`Task.option_names`), naming the closest known keys. ``flags`` maps option keys set by a dedicated
    command-line flag to that flag, for the message."""
    flags = flags or {}
    known = sorted({k for cls in classes for k in cls.option_names})
    names = ("task " if len(classes) == 1 else "tasks ") + ", ".join(cls.name for cls in classes)
    for key in options:
        if key in known:
            continue
        what = f"{flags[key]} (task option {key})" if key in flags else f"task option {key!r}"
        listing = (
            f"options of {names}: {', '.join(known)}"
            if known
            else f"{names} take{'s' if len(classes) == 1 else ''} no options"
        )
        owners = sorted(name for name, cls in all_tasks().items() if key in cls.option_names)
        if owners:
            raise ConfigError(f"{what} is not used by {names}; it is an option of {', '.join(owners)} ({listing})")
        close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        raise ConfigError(f"unknown {what} for {names}{hint} ({listing})")


_TASKS: dict[str, type[Task]] = {}


def register_task(cls: type[Task]) -> type[Task]:
    if cls.name in _TASKS and _TASKS[cls.name] is not cls:
        raise ValueError(f"task {cls.name} registered twice")
    _TASKS[cls.name] = cls
    return cls


#: Entry-point groups through which benchmark packages register themselves (this project's own in pyproject.toml):
#: a module of ``TASK_GROUP`` registers its tasks when imported; a ``PREFIX_GROUP`` entry ``NAME`` is a function
#: that makes the task class of ``NAME:<task>`` (``lmms:<task>``: lmms-eval's registry).
TASK_GROUP = "halluc_harness.tasks"
PREFIX_GROUP = "halluc_harness.task_prefixes"


def _entry_points(group: str) -> list[Any]:
    from importlib.metadata import entry_points

    found = list(entry_points(group=group))
    if not found:
        raise ConfigError(
            f"no entry point in group {group}: halluc-harness is not installed in this environment "
            "(or its metadata is stale); install it with `bash scripts/install.sh`"
        )
    return found


def all_tasks() -> dict[str, type[Task]]:
    """Every registered task by name: the modules of the :data:`TASK_GROUP` entry points are imported first."""
    for ep in _entry_points(TASK_GROUP):
        ep.load()
    return dict(sorted(_TASKS.items()))


def task_flags() -> list[TaskFlag]:
    """The flags every registered task declares (:attr:`Task.flags`), each once, in task order."""
    seen: dict[str, TaskFlag] = {}
    for cls in all_tasks().values():
        for f in cls.flags:
            seen.setdefault(f.flag, f)
    return list(seen.values())


def get_task(name: str) -> type[Task]:
    """The task class named ``name``; ``PREFIX:<task>`` is made by the :data:`PREFIX_GROUP` entry point ``PREFIX``
    (``lmms:<task>``: a task of lmms-eval's registry)."""
    prefix, sep, _ = name.partition(":")
    if sep:
        makers = {ep.name: ep for ep in _entry_points(PREFIX_GROUP)}
        if prefix not in makers:
            raise ConfigError(f"unknown task prefix {prefix!r} in {name!r}; expected one of {', '.join(makers)}")
        return makers[prefix].load()(name)
    registry = all_tasks()
    if name in registry:
        return registry[name]
    by_lower = {n.lower(): n for n in registry}
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=3, cutoff=0.5)
    close = [by_lower[c] for c in close]
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise ConfigError(f"unknown task {name!r}{hint} (`harness tasks` lists them)")
