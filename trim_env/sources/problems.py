"""Problem sets for collection: the problems shipped with trim, JSONL files, ``datasets`` datasets.

trim ships two small public problem sets as package data (``trim_env/data/problems/``, sources
and licenses in ``trim_env/data/README.md``), so the default collection configs work in any clone
or installation: ``bundled: math500`` (MATH-500, 500 problems) and ``bundled: gsm8k`` (the first
500 problems of the GSM8K test split).

A problem's identity for resuming a collection is its id plus a digest of its statement and
answer (:func:`problem_digest`): a run resumed on a problems file that changed under the same ids
is refused instead of mixing two problem sets.

Sharding (``problems.shard = "i/n"``, :class:`Shard`): machine ``i`` of ``n`` collects the problems
at positions ``i, i + n, i + 2n, ...`` of the whole set. Every shard still loads the whole set, so
problem ids, sampling seeds and the train/test assignment are those of an unsharded run.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

#: Problem sets shipped in ``trim_env/data/problems/``: name -> file inside that folder.
BUNDLED_PROBLEMS = {"math500": "math500/test.jsonl", "gsm8k": "gsm8k/test.jsonl"}


@dataclass(frozen=True)
class Problem:
    """One problem to collect: its id, statement, reference answer and difficulty level (0 = unknown)."""

    query_id: str
    problem: str
    answer: str
    level: int = 0


@dataclass
class ProblemsSettings:
    """Where the problems come from (``conf/collect/problems/``): give exactly one of ``bundled``, ``path``, ``dataset``.

    :param bundled: a problem set shipped with trim (:data:`BUNDLED_PROBLEMS`).
    :param path: a JSONL file, one record per line (relative: from the working directory).
    :param dataset: a ``datasets`` name, e.g. ``HuggingFaceH4/MATH-500`` (needs network or a local cache).
    :param dataset_config: the dataset's configuration name, if any.
    :param split: the dataset split.
    :param problem_field: the statement's field (``None``: ``problem``, else ``question``).
    :param answer_field: the reference answer's field (GSM8K's ``#### n`` is understood).
    :param id_field: a field holding a unique id (``None``: ``<file or dataset name>-<record index>``).
    :param level_field: the difficulty level's field (missing: level 0).
    :param limit: keep at most this many problems (after ``offset``; ``None``: all).
    :param offset: skip this many records first.
    :param shard: ``"i/n"``: collect only shard ``i`` of ``n`` (:class:`Shard`); ``None``: every problem.
    """

    bundled: str | None = None
    path: str | None = None
    dataset: str | None = None
    dataset_config: str | None = None
    split: str = "test"
    problem_field: str | None = None
    answer_field: str = "answer"
    id_field: str | None = None
    level_field: str = "level"
    limit: int | None = None
    offset: int = 0
    shard: str | None = None


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count``: the problems at positions ``index, index + count, ...`` of the whole set.

    Interleaved rather than in blocks, so that a problem file sorted by difficulty gives every
    shard a similar share of hard problems (and of work).
    """

    index: int
    count: int

    @classmethod
    def parse(cls, spec: str) -> Shard:
        """Read ``"i/n"`` (``0 <= i < n``).

        :raises ValueError: naming ``problems.shard`` and the value, for anything else.
        """
        index, slash, count = str(spec).partition("/")
        if not (slash and index.strip().isdigit() and count.strip().isdigit()):
            raise ValueError(f"problems.shard = {str(spec)!r}: write the shard as i/n (e.g. 0/4: the first of 4 shards)")
        shard = cls(int(index), int(count))
        if shard.count < 1:
            raise ValueError(f"problems.shard = {str(spec)!r}: the number of shards n of i/n must be at least 1")
        if shard.index >= shard.count:
            raise ValueError(
                f"problems.shard = {str(spec)!r}: the shard index i of i/n counts from 0, so the {shard.count} shards are "
                f"0/{shard.count} .. {shard.count - 1}/{shard.count}"
            )
        return shard

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def name(self) -> str:
        """The shard's directory name, ``i-of-n``."""
        return f"{self.index}-of-{self.count}"

    def positions(self, n_problems: int) -> list[int]:
        """Positions in the whole problem set (of ``n_problems``) that this shard collects."""
        return list(range(self.index, n_problems, self.count))


def bundled_problems_path(name: str) -> Path:
    """The file of a problem set shipped with trim (:data:`BUNDLED_PROBLEMS`)."""
    if name not in BUNDLED_PROBLEMS:
        raise ValueError(f"problems.bundled = {name!r}; the problem sets shipped with trim are {sorted(BUNDLED_PROBLEMS)}")
    return Path(str(resources.files("trim_env") / "data" / "problems" / BUNDLED_PROBLEMS[name]))


def problem_digest(problem: Problem) -> str:
    """SHA-256 of a problem's statement, answer and level: what a resumed collection must find unchanged."""
    return hashlib.sha256(json.dumps([problem.problem, problem.answer, problem.level]).encode()).hexdigest()


def _level(value: Any) -> int:
    """A MATH level as an int: 3, "3" or "Level 3"; 0 when absent or unreadable."""
    match = re.search(r"\d+", str(value)) if value is not None else None
    return int(match.group()) if match else 0


def _read_jsonl(source: Path) -> list[dict[str, Any]]:
    records = []
    for number, line in enumerate(source.read_text().splitlines(), start=1):
        if line.strip():
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{source}:{number}: not a JSON record ({error})") from error
            if not isinstance(record, dict):
                raise ValueError(f"{source}:{number}: a record must be a JSON object, got {type(record).__name__}")
            records.append(record)
    return records


def load_problems(settings: ProblemsSettings) -> list[Problem]:
    """The problems ``settings`` names, each with a non-empty statement and answer and a unique id.

    :param settings: the problem source and its fields.
    :raises ValueError: naming the record and field of the first bad problem.
    """
    given = [name for name in ("bundled", "path", "dataset") if getattr(settings, name) is not None]
    if len(given) != 1:
        raise ValueError(
            f"problems: give exactly one of bundled, path or dataset (given: {given or 'none'}); for a file of your own "
            "choose collect/problems@problems=file problems.path=FILE"
        )
    if settings.offset < 0 or (settings.limit is not None and settings.limit < 0):
        raise ValueError(f"problems.offset = {settings.offset} and problems.limit = {settings.limit} must be >= 0")
    if settings.dataset is None:
        source = bundled_problems_path(settings.bundled) if settings.bundled is not None else Path(str(settings.path))
        if not source.is_file():
            raise FileNotFoundError(f"problems.{given[0]} = {getattr(settings, given[0])}: no such file {source}")
        records = _read_jsonl(source)
        name = source.stem if source.stem not in ("test", "train") else f"{source.parent.name}-{source.stem}"
        where_file = str(source)
    else:
        import datasets  # noqa: PLC0415  (only for hub datasets)

        records = list(datasets.load_dataset(settings.dataset, settings.dataset_config, split=settings.split))
        name = f"{settings.dataset.rsplit('/', 1)[-1]}-{settings.split}"
        where_file = settings.dataset
    end = len(records) if settings.limit is None else min(len(records), settings.offset + settings.limit)
    problems = []
    for index in range(settings.offset, end):
        record = records[index]
        where = f"{where_file}: record {index}"
        key = settings.problem_field or ("problem" if "problem" in record else "question")
        for wanted in (key, settings.answer_field, *([settings.id_field] if settings.id_field else [])):
            if wanted not in record:
                raise ValueError(f"{where} has no field {wanted!r} (fields: {sorted(record)})")
            if record[wanted] is None or not str(record[wanted]).strip():
                raise ValueError(f"{where}: field {wanted!r} is empty")
        query_id = str(record[settings.id_field]) if settings.id_field else f"{name}-{index:05d}"
        problems.append(Problem(query_id, str(record[key]), str(record[settings.answer_field]), _level(record.get(settings.level_field))))
    seen: dict[str, int] = {}
    for index, problem in enumerate(problems, start=settings.offset):
        if problem.query_id in seen:
            raise ValueError(
                f"{where_file}: records {seen[problem.query_id]} and {index} share the id {problem.query_id!r} "
                f"(problems.id_field = {settings.id_field!r}); ids must be unique"
            )
        seen[problem.query_id] = index
    return problems
