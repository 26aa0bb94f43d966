"""Live step-level routing: solve a new problem step by step, asking an exported router at every step.

At each step the weak model proposes the next step and the PRM scores it; the router reads the
same observation it was trained on (:func:`trim_env.features.observation_from_steps`, equal to the
tree features) and either accepts the proposal (0) or has the strong model rewrite the step (1),
which the PRM then scores too, so later observations see the rewrite as the environment does.
The solution ends when the written step ends the answer or after ``max_steps`` steps.

Budgets: ``max_strong_tokens`` is a hard cap on strong tokens per query: a rewrite's request
carries what is left of it as its ``max_tokens`` (so the cap is never exceeded; a backend that
reports more tokens than it was allowed is a :class:`~trim_env.sources.base.BackendError`), and
once it is spent the router is no longer asked; ``max_strong_steps`` caps rewrites per query as the
training data's K did. An empty or blank problem is refused.

    weak, strong = make_generator(weak_config, 512), make_generator(strong_config, 512)   # trim_env.sources.factory
    router = StepRouter(load_router("OUT/router"), weak, strong, make_prm(prm_config), max_strong_tokens=2000)
    solution = router.solve("What is 2 + 3?", answer="5")    # .steps, .strong_tokens, .to_dict()
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from agents.base import Router
from trim_env.features import observation_from_steps
from trim_env.sources.base import (
    BackendError,
    PRMRequest,
    PRMScorer,
    StepGenerator,
    StepRequest,
    solution_text,
)
from trim_env.sources.grading import boxed_answer, grade
from trim_env.sources.query_tree import request_seed
from trim_env.tree import MAX_STEPS


@dataclass
class RoutedStep:
    """One written step of a routed solution.

    :param text: the step as written (the weak proposal, or the strong rewrite).
    :param tokens: its decoded tokens.
    :param prm: its PRM score.
    :param is_strong: the strong model wrote it.
    :param proposal_prm: PRM score of the weak proposal the router judged.
    :param proposal_tokens: tokens of that proposal.
    :param asked: the router was asked (not when a budget or cap had already closed regeneration).
    :param decision_ms: time to build the observation and run the router (ms).
    :param rejected_text: the weak proposal that a rewrite replaced (``None`` when accepted).
    """

    text: str
    tokens: int
    prm: float
    is_strong: bool
    proposal_prm: float
    proposal_tokens: int
    asked: bool
    decision_ms: float
    rejected_text: str | None = None


@dataclass
class RoutedSolution:
    """A solution written under a router, with its costs.

    :param problem: the problem.
    :param steps: the written steps.
    :param strong_tokens: tokens the strong model decoded (the routing cost).
    :param weak_tokens: tokens the weak model decoded (rejected proposals included).
    :param answer: the final ``\\boxed{}`` answer, if any.
    :param correct: graded against the reference answer, when one was given.
    """

    problem: str
    steps: list[RoutedStep] = field(default_factory=list)
    strong_tokens: int = 0
    weak_tokens: int = 0
    answer: str | None = None
    correct: bool | None = None

    @property
    def text(self) -> str:
        return solution_text([step.text for step in self.steps])

    @property
    def escalations(self) -> int:
        return sum(step.is_strong for step in self.steps)

    @property
    def mean_decision_ms(self) -> float:
        asked = [step.decision_ms for step in self.steps if step.asked]
        return sum(asked) / len(asked) if asked else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "text": self.text, "escalations": self.escalations, "mean_decision_ms": self.mean_decision_ms}


class StepRouter:
    """A router plus weak, strong and PRM backends: routes new problems step by step.

    :param router: a :class:`~agents.base.Router` (e.g. from :func:`agents.load_router`).
    :param weak: the weak model.
    :param strong: the strong model.
    :param prm: the process reward model.
    :param max_steps: the solution ends after this many steps (at most 30).
    :param max_strong_tokens: hard cap on strong tokens per query (``None``: none).
    :param max_strong_steps: cap on rewrites per query (``None``: none).
    :param seed: root of the sampling seeds (a step's seed is keyed on the problem and its index).
    """

    def __init__(
        self,
        router: Router,
        weak: StepGenerator,
        strong: StepGenerator,
        prm: PRMScorer,
        max_steps: int = MAX_STEPS,
        max_strong_tokens: int | None = None,
        max_strong_steps: int | None = None,
        seed: int = 0,
    ) -> None:
        if not 1 <= max_steps <= MAX_STEPS:
            raise ValueError(f"max_steps = {max_steps} must be in [1, {MAX_STEPS}]")
        if max_strong_tokens is not None and max_strong_tokens < 0:
            raise ValueError(f"max_strong_tokens = {max_strong_tokens} must be >= 0 or None")
        if max_strong_steps is not None and max_strong_steps < 0:
            raise ValueError(f"max_strong_steps = {max_strong_steps} must be >= 0 or None")
        self.router = router
        self.weak = weak
        self.strong = strong
        self.prm = prm
        self.max_steps = max_steps
        self.max_strong_tokens = max_strong_tokens
        self.max_strong_steps = max_strong_steps
        self.seed = seed

    def _may_regenerate(self, solution: RoutedSolution) -> bool:
        tokens_left = self.max_strong_tokens is None or solution.strong_tokens < self.max_strong_tokens
        steps_left = self.max_strong_steps is None or solution.escalations < self.max_strong_steps
        return tokens_left and steps_left

    async def asolve(self, problem: str, answer: str | None = None) -> RoutedSolution:
        """Solve ``problem`` under the router (asynchronous).

        :param problem: the problem statement.
        :param answer: a reference answer to grade the solution against (optional).
        """
        if not isinstance(problem, str) or not problem.strip():
            raise ValueError(f"problem = {problem!r}: give the text of a problem to solve (it is empty)")
        solution = RoutedSolution(problem)
        texts: list[str] = []
        history: list[tuple[float, int, bool]] = []
        for index in range(self.max_steps):
            seed = request_seed(self.seed, problem, f"step{index}")
            (proposal,) = await self.weak.generate([StepRequest(problem, tuple(texts), seed)])
            solution.weak_tokens += proposal.tokens
            (scores,) = await self.prm.score([PRMRequest(problem, (*texts, proposal.text))])
            proposal_prm = scores[-1]
            asked = self._may_regenerate(solution)
            started = time.perf_counter()
            action = 0
            if asked:
                observation = observation_from_steps(history, proposal_prm, proposal.tokens, self.router.observation_kind)
                action = self.router.act(observation)
            decision_ms = 1000.0 * (time.perf_counter() - started)
            step, prm_score, rejected = proposal, proposal_prm, None
            if action == 1:
                budget = None if self.max_strong_tokens is None else self.max_strong_tokens - solution.strong_tokens
                rewrite_seed = request_seed(self.seed, problem, f"step{index}S")
                (step,) = await self.strong.generate([StepRequest(problem, tuple(texts), rewrite_seed, max_tokens=budget)])
                if budget is not None and step.tokens > budget:
                    raise BackendError(
                        f"strong model {self.strong.name!r} decoded {step.tokens} tokens for a rewrite limited to {budget} "
                        f"(max_strong_tokens = {self.max_strong_tokens}); it does not honour the request's token limit"
                    )
                solution.strong_tokens += step.tokens
                (scores,) = await self.prm.score([PRMRequest(problem, (*texts, step.text))])
                prm_score, rejected = scores[-1], proposal.text
            solution.steps.append(
                RoutedStep(step.text, step.tokens, prm_score, action == 1, proposal_prm, proposal.tokens, asked, decision_ms, rejected)
            )
            texts.append(step.text)
            history.append((prm_score, step.tokens, action == 1))
            if step.ends_solution:
                break
        solution.answer = boxed_answer(solution.text)
        if answer is not None:
            solution.correct = grade(solution.text, answer)
        return solution

    def solve(self, problem: str, answer: str | None = None) -> RoutedSolution:
        """Solve ``problem`` under the router (blocking; runs its own event loop).

        :param problem: the problem statement.
        :param answer: a reference answer to grade the solution against (optional).
        """
        return asyncio.run(self._solve_and_close(problem, answer))

    async def _solve_and_close(self, problem: str, answer: str | None) -> RoutedSolution:
        try:
            return await self.asolve(problem, answer)
        finally:
            for backend in (self.weak, self.strong, self.prm):
                await backend.aclose()  # HTTP clients belong to this call's event loop
