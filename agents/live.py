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
training data's K did. An empty or blank problem is refused. Budgets are strong tokens whatever
the cost model.

**Cost** (``cost_model``, :mod:`trim_env.cost`; default :class:`~trim_env.cost.StrongTokensCost`).
A solution records what its cost needs: the prompt's tokens as the weak model read them
(:attr:`RoutedSolution.prompt_tokens`: the first proposal is requested as a one-step
:meth:`~trim_env.sources.base.StepGenerator.rollout`, the same request as ``generate`` and as
collection's call from the root, whose answer carries the server's ``usage.prompt_tokens`` or the
local tokenizer's count) and per step the weak proposal's tokens and, where regenerated, the
strong rewrite's. :meth:`RoutedSolution.priced` replays them through a
:class:`~trim_env.cost.QueryCostMeter`, which prices a live query as :func:`~trim_env.cost.path_cost`
prices the same path on a tree (prefix cache and all). A weak backend that reports no prompt
tokens under a model that charges prefill (:attr:`~trim_env.cost.CostModel.charges_prefill`) is
refused at the first step with a :class:`~trim_env.sources.base.BackendError` naming it: a cost
that leaves out the prompt would be wrong without saying so. Under ``strong_tokens``
:meth:`RoutedSolution.to_dict` is what it was before cost models; under another model it adds
``prompt_tokens`` and ``cost`` (:meth:`QueryCost.to_dict`).

    weak, strong = make_generator(weak_config, 512), make_generator(strong_config, 512)   # trim_env.sources.factory
    router = StepRouter(load_router("OUT/router"), weak, strong, make_prm(prm_config), max_strong_tokens=2000,
                        cost_model=PriceCost(prefix_cache=True))
    solution = router.solve("What is 2 + 3?", answer="5")    # .steps, .strong_tokens, .priced(), .to_dict()
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from agents.base import Router
from trim_env.cost import CostModel, QueryCostMeter, StrongTokensCost
from trim_env.features import observation_from_steps
from trim_env.sources.base import (
    BackendError,
    PRMRequest,
    PRMScorer,
    StepGenerator,
    StepRequest,
    StepResult,
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


@dataclass(frozen=True)
class QueryCost:
    """What a routed query cost under a cost model.

    :param model: the cost model's name (``price``, ...).
    :param units: cost units (natural / ``model.unit``; 480 ≈ a reference strong-only query).
    :param natural: the cost in the model's natural unit.
    :param natural_unit: that unit (``USD``, ``FLOPs``, ``s``, ``strong tokens``).
    """

    model: str
    units: float
    natural: float
    natural_unit: str

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "units": self.units, "natural": self.natural, "natural_unit": self.natural_unit}


@dataclass
class RoutedSolution:
    """A solution written under a router, with its costs.

    :param problem: the problem.
    :param steps: the written steps.
    :param strong_tokens: tokens the strong model decoded (what budgets count).
    :param weak_tokens: tokens the weak model decoded (rejected proposals included).
    :param answer: the final ``\\boxed{}`` answer, if any.
    :param correct: graded against the reference answer, when one was given.
    :param cost_model: what :meth:`priced` prices the solution with.
    :param prompt_tokens: the prompt's tokens as the weak model's first call read them (``None``
        until then, and when the backend reports none under a model that does not charge prefill).
    """

    problem: str
    steps: list[RoutedStep] = field(default_factory=list)
    strong_tokens: int = 0
    weak_tokens: int = 0
    answer: str | None = None
    correct: bool | None = None
    cost_model: CostModel = field(default_factory=StrongTokensCost)
    prompt_tokens: int | None = None

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

    @property
    def priced_by_strong_tokens(self) -> bool:
        """The cost model is ``strong_tokens``: :attr:`strong_tokens` is the cost, and records carry nothing more."""
        return isinstance(self.cost_model, StrongTokensCost)

    def priced(self) -> QueryCost:
        """The steps written so far priced by :attr:`cost_model`: a :class:`~trim_env.cost.QueryCostMeter`
        charged each step's weak proposal and, where regenerated, its strong rewrite.

        :raises ValueError: steps were written but the prompt tokens a model that charges prefill
            needs are unknown (:class:`StepRouter` and the serving loop refuse such a backend first).
        """
        model = self.cost_model
        if self.prompt_tokens is None and model.charges_prefill and self.steps:
            raise ValueError(f"cost={model.name} charges the prompt's tokens, which this solution did not record")
        meter = QueryCostMeter(model, self.prompt_tokens or 0)
        for step in self.steps:
            meter.add_step(step.proposal_tokens, step.tokens if step.is_strong else None)
        return QueryCost(model.name, meter.total, meter.total * model.unit, model.natural_unit)

    def to_dict(self) -> dict[str, Any]:
        record = {"problem": self.problem, "steps": [asdict(step) for step in self.steps], "strong_tokens": self.strong_tokens,
                  "weak_tokens": self.weak_tokens, "answer": self.answer, "correct": self.correct,
                  "text": self.text, "escalations": self.escalations, "mean_decision_ms": self.mean_decision_ms}
        if not self.priced_by_strong_tokens:
            record.update(prompt_tokens=self.prompt_tokens, cost=self.priced().to_dict())
        return record


async def first_proposal(weak: StepGenerator, request: StepRequest, cost_model: CostModel) -> tuple[StepResult, int | None]:
    """The weak model's first step of a solution and the prompt tokens its call read.

    Requested as a one-step :meth:`~trim_env.sources.base.StepGenerator.rollout` (the request
    ``generate`` sends, and collection's call from the root): its answer carries the count.

    :returns: (the step, the prompt tokens; ``None`` when the backend reports none).
    :raises BackendError: the backend reports no prompt tokens and ``cost_model`` charges prefill.
    """
    (rollout,) = await weak.rollout([request], [1])
    if rollout.prompt_tokens is None and cost_model.charges_prefill:
        raise BackendError(
            f"weak model {weak.name!r} reported no prompt token count (usage.prompt_tokens), which cost={cost_model.name} "
            "needs: it charges the tokens each call reads. Use a server that reports usage (vLLM, SGLang, llama.cpp, "
            "hosted APIs do), a local transformers backend, or cost=strong_tokens"
        )
    return rollout.steps[0], rollout.prompt_tokens


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
    :param cost_model: what solutions are priced with (default ``strong_tokens``; budgets stay strong tokens).
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
        cost_model: CostModel | None = None,
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
        self.cost_model = cost_model if cost_model is not None else StrongTokensCost()

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
        solution = RoutedSolution(problem, cost_model=self.cost_model)
        texts: list[str] = []
        history: list[tuple[float, int, bool]] = []
        for index in range(self.max_steps):
            seed = request_seed(self.seed, problem, f"step{index}")
            request = StepRequest(problem, tuple(texts), seed)
            if index == 0:
                proposal, solution.prompt_tokens = await first_proposal(self.weak, request, self.cost_model)
            else:
                (proposal,) = await self.weak.generate([request])
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
