"""Answer grading for collected solutions: math-verify's verdict on a solution against a reference answer.

References come as problem sets write them: plain LaTeX (MATH: ``\\frac{1}{2}``) or GSM8K's worked
solution ending ``#### 18``, of which only the number after ``####`` counts. math-verify reads
the model's ``\\boxed{}`` answer, or its last expression when nothing is boxed.

math-verify bounds its parsing time with ``signal.alarm``, which only works in the main thread:
grade from the main thread (the collector and :class:`agents.live.StepRouter` do).
"""

from __future__ import annotations

import re

_BOXED = re.compile(r"\\boxed\s*\{")


def reference_answer(answer: str) -> str:
    """The gradable part of a reference: the text after GSM8K's ``####``, else the whole, stripped."""
    _, marker, tail = answer.rpartition("####")
    # GSM8K writes thousands separators ("1,000"), which LaTeX parsing would read as a tuple.
    return tail.strip().replace(",", "") if marker else answer.strip()


def boxed_answer(solution: str) -> str | None:
    """The contents of the last ``\\boxed{…}`` in ``solution`` (braces balanced), or ``None``."""
    matches = list(_BOXED.finditer(solution))
    if not matches:
        return None
    start = matches[-1].end()
    depth = 1
    for index in range(start, len(solution)):
        depth += {"{": 1, "}": -1}.get(solution[index], 0)
        if depth == 0:
            return solution[start:index].strip()
    return None


def grade(solution: str, answer: str) -> bool:
    """Whether ``solution``'s final answer equals the reference ``answer`` (math-verify).

    :param solution: the model's whole solution text.
    :param answer: the reference answer (LaTeX without ``$``, or a GSM8K solution with ``####``).
    """
    from math_verify import parse, verify  # noqa: PLC0415  (optional dependency: extra "real")

    # Wrapped in $…$ so that math-verify reads the reference as LaTeX rather than as plain text.
    gold = parse(f"${reference_answer(answer)}$")
    predicted = parse(solution)
    return bool(gold and predicted and verify(gold, predicted))
