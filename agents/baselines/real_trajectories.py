"""Real MATH-500 solutions with per-step PRM scores (``../shared/data/real_trajectories``), graded.

Two file layouts are read:

- compute-optimal-tts (Qwen2.5-1.5B, Math-Shepherd PRM): ``question``, ``result.majority_vote``
  (1 = correct), ``output[0].value`` (one PRM score per step); several samples per question.
- search-and-learn (Llama, RLHFlow PRM): ``problem``, ``answer``, ``level``, ``scores[0]`` (one
  score per step) and ``pred`` (the completion), graded here against ``answer`` with math-verify
  (``pip install -e ".[real]"``).

The files are read in place and never copied into the project.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trim_env.sources.grading import grade


@dataclass
class RealSolutions:
    """One weak solution per row.

    :param name: the file's stem.
    :param problem: problem statement per solution.
    :param level: MATH difficulty level 1–5 per solution (0 where unknown).
    :param min_score: minimum PRM step score of the solution.
    :param last_score: PRM score of its last step.
    :param correct: 1 where the final answer is right.
    """

    name: str
    problem: list[str]
    level: np.ndarray
    min_score: np.ndarray
    last_score: np.ndarray
    correct: np.ndarray

    @property
    def accuracy(self) -> float:
        return float(np.mean(self.correct))


def load_real_solutions(path: str | Path, levels: dict[str, int] | None = None) -> RealSolutions:
    """Read one real-trajectory file (either layout) into :class:`RealSolutions`.

    :param path: a ``.jsonl`` file of ``../shared/data/real_trajectories``.
    :param levels: problem text -> MATH level, for files that do not record the level.
    :raises ValueError: naming the line and field of a malformed record.
    """
    path = Path(path)
    problems: list[str] = []
    level: list[int] = []
    scores: list[list[float]] = []
    correct: list[int] = []
    with open(path) as handle:
        for number, line in enumerate(handle, start=1):
            record = json.loads(line)
            try:
                if "output" in record:
                    problem = record["question"]
                    step_scores = record["output"][0]["value"]
                    is_correct = int(record["result"]["majority_vote"])
                    problem_level = int((levels or {}).get(problem, 0))
                else:
                    problem = record["problem"]
                    step_scores = record["scores"][0]
                    is_correct = int(grade(record["pred"], record["answer"]))
                    problem_level = int(record["level"])
            except (KeyError, IndexError, TypeError) as error:
                raise ValueError(f"{path}:{number}: missing or malformed field ({error!r}); not a real-trajectory record") from error
            if not step_scores:
                raise ValueError(f"{path}:{number}: the solution has no step scores")
            problems.append(problem)
            level.append(problem_level)
            scores.append([float(s) for s in step_scores])
            correct.append(is_correct)
    if not problems:
        raise ValueError(f"{path}: no records")
    return RealSolutions(
        name=path.stem,
        problem=problems,
        level=np.asarray(level, dtype=np.int64),
        min_score=np.array([min(s) for s in scores]),
        last_score=np.array([s[-1] for s in scores]),
        correct=np.asarray(correct, dtype=np.int64),
    )


def math500_levels(path: str | Path) -> dict[str, int]:
    """Problem text -> level from a MATH-500 problem file (``problems/math500/test.jsonl``)."""
    with open(path) as handle:
        return {record["problem"]: int(record["level"]) for record in map(json.loads, handle)}
