"""A collection's state on disk: finished queries, the pinned settings and problems, the writer's lock.

- ``OUT/records/<index>.json``: one finished query each, written atomically and durably
  (:class:`RecordStore`), so a run killed at any moment loses only the queries in flight;
- ``OUT/collect.json``: what the run was started with (:func:`pin_run`): settings, backends and,
  for every problem, its id and a digest of its statement and answer. A restart must find all of
  it unchanged; a changed, reordered, added or removed problem is refused with its id named, so a
  resumed dataset never mixes two problem sets;
- ``OUT/.lock``: held by the running collector (:class:`~trim_env.atomic.DirectoryLock`), so a
  second collector on the same directory is refused instead of interleaving records.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from trim_env.atomic import write_json, write_text
from trim_env.sources.problems import Problem, problem_digest
from trim_env.sources.query_tree import QueryTree
from trim_env.tree import MANIFEST

RECORDS = "records"
SETTINGS_FILE = "collect.json"
LOCK_FILE = ".lock"


class RecordStore:
    """Finished queries as ``records/<index>.json`` (``index``: the problem's position), each written atomically.

    :param directory: the collection's output directory.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory) / RECORDS
        self.directory.mkdir(parents=True, exist_ok=True)
        for leftover in self.directory.glob(".*.tmp"):  # from a run killed mid-write
            leftover.unlink(missing_ok=True)

    def path(self, index: int) -> Path:
        return self.directory / f"{index:06d}.json"

    def done(self) -> set[int]:
        """Indices of finished queries."""
        return {int(path.stem) for path in self.directory.glob("[0-9]*.json")}

    def write(self, index: int, tree: QueryTree) -> None:
        """Write one query's record: temporary file, fsync, rename (a record exists whole or not at all)."""
        write_text(self.path(index), json.dumps(tree.to_json()), durable=True)

    def read(self, index: int, problem: Problem) -> QueryTree:
        """The record of ``problem`` (at ``index``), checked to hold that very problem."""
        path = self.path(index)
        try:
            tree = QueryTree.from_json(json.loads(path.read_text()))
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise ValueError(f"{path}: not a valid query record ({error}); delete it to collect that query again") from error
        if tree.problem != problem:
            raise ValueError(
                f"{path}: holds problem {tree.problem.query_id!r}, but position {index} of the problems is {problem.query_id!r} "
                "(or its text or answer differs); the records belong to another problem set: collect into another directory"
            )
        return tree


    def read_pinned(self, index: int, pin: Sequence[str]) -> QueryTree:
        """The record at ``index``, checked against its problem's pin ``[query id, digest]`` (see :func:`problem_pins`)."""
        path = self.path(index)
        try:
            tree = QueryTree.from_json(json.loads(path.read_text()))
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise ValueError(f"{path}: not a valid query record ({error}); delete it and run the collection again") from error
        if [tree.problem.query_id, problem_digest(tree.problem)] != list(pin):
            raise ValueError(
                f"{path}: holds problem {tree.problem.query_id!r}, but position {index} of the pinned problems is {pin[0]!r} "
                "(or its text or answer differs); the records belong to another problem set"
            )
        return tree


def problem_pins(problems: Sequence[Problem]) -> list[list[str]]:
    """``[query id, digest of statement and answer]`` per problem, in order: what a resumed run must find again."""
    return [[problem.query_id, problem_digest(problem)] for problem in problems]


def pin_run(out: Path, pinned: dict[str, Any], problems: Sequence[Problem]) -> None:
    """Record the run's settings and problems in ``out/collect.json``, or check a resumed run against them.

    :param out: the collection's output directory.
    :param pinned: settings and backend descriptions (JSON-serialisable).
    :param problems: the problem set, in order.
    :raises ValueError: a setting or a problem differs from the pinned run's (naming which).
    :raises FileExistsError: ``out`` holds a dataset that no collector pinned.
    """
    path = out / SETTINGS_FILE
    pins = problem_pins(problems)
    if not path.exists():
        if (out / MANIFEST).exists():
            raise FileExistsError(f"{out / MANIFEST} exists but {path} does not: {out} holds a dataset this collector did not write")
        write_json(path, {**pinned, "problems": pins}, durable=True)
        return
    previous = json.loads(path.read_text())
    for key, value in pinned.items():
        if previous.get(key) != json.loads(json.dumps(value)):
            raise ValueError(
                f"{path}: field {key!r} differs from this run's ({previous.get(key)!r} before, {value!r} now); "
                "resume with the same settings, or collect into another directory"
            )
    _check_same_problems(path, previous.get("problems"), pins)


def _check_same_problems(path: Path, before: Any, now: list[list[str]]) -> None:
    """Refuse a problems file that changed since the pinned run: name the first problem that differs."""
    advice = "resume with the problems file the run started with, or collect into another directory"
    if not isinstance(before, list):
        raise ValueError(f"{path}: field 'problems' is missing or not a list; this collection cannot be checked, {advice}")
    digests_before = {query_id: digest for query_id, digest in before}
    positions_before = {query_id: position for position, (query_id, _) in enumerate(before)}
    for position, (query_id, digest) in enumerate(now):
        if query_id not in digests_before:
            raise ValueError(f"{path}: problem {query_id!r} (position {position}) was not in the pinned run's problems; {advice}")
        if digests_before[query_id] != digest:
            raise ValueError(
                f"{path}: problem {query_id!r} changed since the pinned run (its statement, answer or level differs: "
                f"the problems file was edited or reordered); {advice}"
            )
        if positions_before[query_id] != position:
            raise ValueError(
                f"{path}: problem {query_id!r} moved from position {positions_before[query_id]} to {position} "
                f"(the problems file was reordered); {advice}"
            )
    missing = [query_id for query_id, _ in before if query_id not in {query_id for query_id, _ in now}]
    if missing:
        raise ValueError(f"{path}: problem {missing[0]!r} of the pinned run is missing ({len(missing)} in all); {advice}")
