"""Scaffolding the scorers share: the judge loop, the data-format switch and the unique-id check.

- :func:`run_judge` asks the judge once per sample (again, for a task with retries, while a reply does not parse) in
  batches, and gives a :class:`JudgeLoop`: one :class:`Judged` per sample (the reply, the failure, the task's reading
  of the reply) and the failed and unparsed ids. A task turns each :class:`Judged` into its own per-sample record
  and its official numbers; a failed judgment (no reply) is never scored.
- :func:`select_layout` is the ``auto|jsonl|parquet`` option of the tasks whose data comes as the official release
  files or as the HF dataset saved as parquet (``json`` stands for ``jsonl`` where the release is one JSON file);
  :class:`DataLayout` gives a task that option and its ``check_files``.
- :class:`UniqueIds` (:func:`require_unique`, :class:`Answers`) refuses a repeated id (a question, an answer, a
  review) with a :class:`DataError` naming the file and line.
- :class:`TaskOptions` reads a task's options when it is made (:meth:`TaskOptions.read_options`);
  :func:`suffix_text` is the answer-instruction option (text appended to each prompt).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

from harness.errors import ConfigError, DataError, MissingDataFile
from harness.io import first_glob
from harness.judge import Judge, JudgeRequest, JudgeResult
from harness.types import ImageRef, Metrics, Response

T = TypeVar("T")

#: The error of a request the judge gave no result for, and of a failed result that says nothing.
NO_RESULT = "the judge returned no result"
JUDGMENT_FAILED = "judgment failed"
#: How many ids a note lists.
NOTE_IDS = 20


# --------------------------------------------------------------------------------------------------- judge loop
@dataclass
class Judged(Generic[T]):
    """One sample's judgment after the loop.

    ``reply``: the judge's last reply (``None`` when none came); ``error``: why the last call failed (``None``: it
    did not); ``value`` and ``parsed``: what the task's parser read from ``reply`` (``value`` is the official
    fallback when ``parsed`` is false); ``calls``: judge calls made for the sample.
    """

    id: str
    reply: str | None = None
    error: str | None = None
    value: T | None = None
    parsed: bool = False
    calls: int = 0

    @property
    def failed(self) -> bool:
        return self.error is not None

    @property
    def unparsed(self) -> bool:
        return not self.failed and not self.parsed


@dataclass
class JudgeLoop(Generic[T]):
    """Every sample's :class:`Judged`, in the order asked."""

    judged: list[Judged[T]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._by_id = {j.id: j for j in self.judged}

    def __iter__(self) -> Iterator[Judged[T]]:
        return iter(self.judged)

    def __getitem__(self, sample_id: str) -> Judged[T]:
        return self._by_id[sample_id]

    @property
    def failed(self) -> list[str]:
        """Ids of the failed judgments (left out of every number)."""
        return [j.id for j in self.judged if j.failed]

    @property
    def unparsed(self) -> list[str]:
        """Ids of the replies the task's parser could not read (scored as the official fallback)."""
        return [j.id for j in self.judged if j.unparsed]


def run_judge(
    judge: Judge,
    ids: Sequence[str],
    request: Callable[[str, int], JudgeRequest],
    parse: Callable[[str], tuple[T, bool]],
    *,
    attempts: int = 1,
) -> JudgeLoop[T]:
    """Judge every id of ``ids``: call ``attempt`` (0 first) of sample ``id`` is ``request(id, attempt)``, all the
    samples of one call in one batch, in ``ids`` order. ``parse(reply)`` is ``(value, parsed)``; a sample whose reply
    does not parse is asked again while calls remain (``attempts`` in all). A failed call ends the sample's loop.
    The judge is not called for an empty batch."""
    out: dict[str, Judged[T]] = {sid: Judged(sid) for sid in ids}
    pending = list(out)
    for attempt in range(attempts):
        if not pending:
            break
        requests = [request(sid, attempt) for sid in pending]
        results = judge.judge(requests)
        still: list[str] = []
        for sid, req in zip(pending, requests):
            j = out[sid]
            res = results.get(req.id) or JudgeResult(req.id, None, NO_RESULT)
            j.calls = attempt + 1
            if res.failed:
                j.error = res.error or JUDGMENT_FAILED
                continue
            j.reply = res.text
            j.value, j.parsed = parse(res.text or "")
            if not j.parsed:
                still.append(sid)
        pending = still
    return JudgeLoop(list(out.values()))


def fmt2(value: float) -> float:
    """The official scorers' ``'{:.2f}'.format(value)``, as a number."""
    return float(f"{value:.2f}")


def id_list(ids: Sequence[Any], limit: int = NOTE_IDS) -> str:
    """The first ``limit`` ids (strings, or objects with an ``id``) joined for a note, `` ...`` when there are more."""
    names = [i if isinstance(i, str) else i.id for i in ids]
    return ", ".join(names[:limit]) + (" ..." if len(names) > limit else "")


def failed_note(failed: Sequence[str], how: str = "left out of every mean (not scored)") -> str:
    """The note on failed judgments."""
    return f"{len(failed)} judgments failed and are {how}: ids {id_list(failed)}"


def no_judge(who: str, model: str, *, grader: bool = False, about: str = "", alternative: str = "") -> ConfigError:
    """The error of scoring without a judge: ``who`` needs one; the official ``model`` (a ``grader`` or a judge),
    ``about`` said before it, ``alternative`` after the message."""
    role = "grader" if grader else "judge"
    return ConfigError(
        f"{who} needs a judge: give --judge-model ({about}the official {'grader' if grader else 'one'} "
        f"is {model}) or --reviews FILE with saved {role} replies{alternative}"
    )


def replies_in_order(
    data: Sequence[Any], ids: Sequence[str], path: str | Path, *, expected: str = ""
) -> dict[str, Any]:
    """Saved judge replies given as a JSON list, one per id of ``ids`` in that order: ``{id: reply}``. A list of
    another length is a :class:`DataError` (``expected``: what the message says it should hold)."""
    if len(data) != len(ids):
        raise DataError(
            f"holds {len(data)} replies for {len(ids)} questions; "
            f"expected {expected or 'one per question in question order'}",
            path=path,
        )
    return dict(zip(ids, data))


def loop_counts(loop: JudgeLoop[Any], scored: tuple[str, int], **more: int) -> dict[str, int]:
    """The counts of a judge loop: ``scored`` (its name and number), ``judge_failed``, ``unparsed``, then ``more``."""
    return {scored[0]: scored[1], "judge_failed": len(loop.failed), "unparsed": len(loop.unparsed), **more}


def loop_notes(notes: list[str], loop: JudgeLoop[Any], unparsed: str) -> None:
    """Add to ``notes`` the notes on the loop's failed judgments and on its unparsed replies (``unparsed``: what the
    official scorer makes of them, after their number), each with the first ids."""
    if loop.failed:
        notes.append(failed_note(loop.failed))
    if loop.unparsed:
        notes.append(f"{len(loop.unparsed)} {unparsed}: ids {', '.join(loop.unparsed[:NOTE_IDS])}")


def no_score(task: str, counts: dict[str, int], notes: list[str], records: list[dict[str, Any]]) -> Metrics:
    """The metrics when no judgment succeeded: no number, the counts, notes and records."""
    notes.append("no judgment succeeded: no score computed")
    return Metrics(task=task, headline={}, counts=counts, notes=notes, records=records)


# --------------------------------------------------------------------------------------------------- options
class TaskOptions:
    """For a :class:`~harness.task.Task` (listed before it among the bases) that reads and checks its options when it
    is made: the task's constructor, then :meth:`read_options` (a bad option fails there, before any work)."""

    def __init__(
        self,
        data_root: str | Path | None = None,
        image_root: str | Path | None = None,
        options: Mapping[str, Any] | None = None,
    ):
        super().__init__(data_root, image_root, options)  # type: ignore[call-arg]
        self.read_options()

    def read_options(self) -> None:
        """Read the task's options (``self.options``) into attributes; a bad value is a :class:`ConfigError`."""


def suffix_text(value: Any, option: str) -> str:
    """The value of the text option ``option`` that a task appends to each prompt (its answer instruction): ``None``,
    ``""`` or ``none`` for no text; a literal ``\\n`` in it is a newline; a value not a string is a
    :class:`ConfigError`."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
        return ""
    if not isinstance(value, str):
        raise ConfigError(f"{option} must be a string, got {value!r}")
    return value.replace("\\n", "\n")


# --------------------------------------------------------------------------------------------------- data layout
#: Where the HF datasets saved as parquet keep their files (the data root or ``data/``).
PARQUET_GLOBS: tuple[str, ...] = ("*.parquet", "data/*.parquet")


def format_choices(release_format: str = "jsonl") -> tuple[str, ...]:
    """The values of a task's format option: ``auto``, the release's format and ``parquet``."""
    return ("auto", release_format, "parquet")


def select_layout(
    fmt: str,
    *,
    release: Sequence[Path] | Callable[[], Sequence[Path] | None],
    parquet: Callable[[], Sequence[Path] | None],
    missing: Callable[[], Exception],
    release_format: str = "jsonl",
) -> tuple[str, list[Path]]:
    """The format option ``auto|<release_format>|parquet``: ``(format, files)``, the release files (``release``: all
    of these paths, or what the callable finds) when the option allows them and they are there, else the parquet
    files found; else ``missing()`` is raised."""
    if fmt in ("auto", release_format):
        if callable(release):
            found = release()
        else:
            found = list(release) if all(p.is_file() for p in release) else None
        if found:
            return release_format, list(found)
    if fmt in ("auto", "parquet"):
        found = parquet()
        if found:
            return "parquet", list(found)
    raise missing()


def missing_layout(
    fmt: str, release: Sequence[Path], release_source: str, parquet: tuple[Path, str], *, auto_source: str | None = None
) -> MissingDataFile:
    """What :func:`select_layout` raises when nothing is found: with ``parquet`` asked for, ``parquet``'s
    ``(path, source)``; else the first missing release file, from ``release_source`` (``auto_source`` under
    ``auto``)."""
    if fmt == "parquet":
        return MissingDataFile(*parquet)
    first = next((p for p in release if not p.is_file()), release[0])
    return MissingDataFile(first, auto_source if fmt == "auto" and auto_source is not None else release_source)


class DataLayout(TaskOptions):
    """For a :class:`~harness.task.Task` (listed before it among the bases) whose data is the official release files
    (:attr:`release_names` under the data root, format :attr:`release_format`) or the HF dataset saved as parquet
    (:meth:`parquet_paths`): the task's option :attr:`format_option` (``auto``, :attr:`release_format`,
    ``parquet``; read by :meth:`read_format_option`) picks them (:func:`select_layout`). :meth:`layout` gives the
    format and the files, ``check_files`` the files; a missing layout is :meth:`missing_layout_error`;
    :meth:`layout_records` is the task's :meth:`read_layout` of them, read once. :meth:`read_options` reads the
    format option; a task with more options reads them there too."""

    format_option: ClassVar[str]
    release_format: ClassVar[str] = "jsonl"
    release_names: ClassVar[tuple[str, ...]]
    #: Where the data comes from (the ``MissingDataFile`` source).
    layout_source: ClassVar[str]
    parquet_globs: ClassVar[tuple[str, ...]] = PARQUET_GLOBS

    data_root: Path
    format: str
    choice_option: Callable[[str, str, Sequence[str]], str]

    def read_options(self) -> None:
        self.read_format_option()

    def read_format_option(self) -> str:
        self.format = self.choice_option(self.format_option, "auto", format_choices(self.release_format))
        return self.format

    def release_paths(self) -> list[Path]:
        return [self.data_root / name for name in self.release_names]

    def parquet_paths(self) -> list[Path]:
        return first_glob(self.data_root, self.parquet_globs)

    def missing_layout_error(self) -> MissingDataFile:
        return missing_layout(
            self.format, self.release_paths(), self.layout_source, (self.data_root / "*.parquet", self.layout_source)
        )

    def layout(self) -> tuple[str, list[Path]]:
        """``(format, files)``: :attr:`release_format` and the release files, or ``parquet`` and the parquet files."""
        return select_layout(
            self.format,
            release=self.release_paths(),
            parquet=self.parquet_paths,
            missing=self.missing_layout_error,
            release_format=self.release_format,
        )

    def check_files(self) -> list[Path]:
        return self.layout()[1]

    def read_layout(self, fmt: str, files: list[Path]) -> list[Any]:
        """The records of the files :meth:`layout` found, in format ``fmt``."""
        raise NotImplementedError

    def layout_records(self) -> list[Any]:
        """:meth:`read_layout` of :meth:`layout`, read the first time only."""
        records: list[Any] | None = getattr(self, "_layout_records", None)
        if records is None:
            records = self._layout_records = self.read_layout(*self.layout())
        return records


def first_file(candidates: Sequence[Path]) -> ImageRef:
    """An image at the first of ``candidates`` that exists, else at the first (loading it then fails naming the
    sample)."""
    return ImageRef(path=str(next((c for c in candidates if c.is_file()), candidates[0])))


# --------------------------------------------------------------------------------------------------- unique ids
class UniqueIds:
    """The ids of one file seen so far, each with where it was (``at``, by default ``on line N``).

    :meth:`add` of an id already seen raises :class:`DataError` with ``message`` (followed, with ``cite_first``, by
    `` (first <where the id was first>)``), naming the file and the line.
    """

    def __init__(self, path: str | Path | None = None):
        self.path = path
        self._first: dict[Hashable, str] = {}

    def __contains__(self, key: Hashable) -> bool:
        return key in self._first

    def __len__(self) -> int:
        return len(self._first)

    def add(
        self,
        key: Hashable,
        message: str,
        *,
        line: int | None = None,
        at: str | None = None,
        cite_first: bool = False,
        path: str | Path | None = None,
    ) -> None:
        if key in self._first:
            raise DataError(
                f"{message} (first {self._first[key]})" if cite_first else message,
                path=path if path is not None else self.path,
                line=line,
            )
        self._first[key] = at if at is not None else f"on line {line}"


class Answers:
    """The responses read from the answer file ``path``, by sample id (:attr:`responses`).

    :meth:`add` of an id not in ``known`` (``<name> is not <question>``, ``question`` saying which questions are
    known, e.g. ``a POPE question of DIR``) or already answered (``a second answer for <name>``) raises
    :class:`DataError` naming the file and line; ``name`` is how the message names the id (the id itself by default)
    and ``where`` comes before either message.
    """

    def __init__(self, path: str | Path, known: Collection[str], question: str):
        self.path = path
        self.known = known
        self.question = question
        self.responses: dict[str, Response] = {}

    def add(self, sample_id: str, text: str, line: int | None, *, name: str | None = None, where: str = "") -> None:
        name = sample_id if name is None else name
        if sample_id not in self.known:
            raise DataError(f"{where}{name} is not {self.question}", path=self.path, line=line)
        if sample_id in self.responses:
            raise DataError(f"{where}a second answer for {name}", path=self.path, line=line)
        self.responses[sample_id] = Response(sample_id, text, "stop")


def require_unique(
    items: Iterable[T], key: Callable[[T], Hashable], message: Callable[[T], str], *, path: str | Path | None = None
) -> None:
    """:class:`DataError` ``message(item)`` naming ``path`` for the first item whose ``key`` an earlier one had."""
    seen: set[Hashable] = set()
    for item in items:
        k = key(item)
        if k in seen:
            raise DataError(message(item), path=path)
        seen.add(k)
