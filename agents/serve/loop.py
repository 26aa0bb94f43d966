"""The live step loop as an asynchronous generator: each written step is yielded as soon as it is written.

This is :meth:`agents.live.StepRouter.asolve` (same observations, seeds, budgets and PRM calls),
cut open so that a server can stream a solution step by step and choose the router and the
budget per request. Every backend call goes through an :class:`Upstream`: a semaphore bounding
the calls in flight to that backend, a count of them, their wall time (the request's upstream
latency) and the translation of a backend failure into an :class:`UpstreamError` that names the
backend. A cancelled request (a client that went away) cancels its call inside ``async with``,
so its slot is released at once.

The first proposal is requested with :func:`agents.live.first_proposal` (:meth:`Upstream.first_step`),
which reads the prompt tokens the cost needs into ``solution.prompt_tokens``; a weak backend that
reports none under a cost model that charges prefill (``solution.cost_model``) fails as the weak
upstream (502), naming it.

    loop = RoutingLoop(Upstream("weak", weak, 16), Upstream("strong", strong, 16), Upstream("prm", prm, 16))
    async for event in loop.steps("What is 2 + 3?", router, StepLimits(max_strong_tokens=500)):
        print(event.step.text, event.step.is_strong, event.upstream_ms)
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import AsyncGenerator, Awaitable, Callable, TypeVar

from agents.base import Router
from agents.live import RoutedSolution, RoutedStep, first_proposal
from trim_env.cost import CostModel
from trim_env.features import observation_from_steps
from trim_env.sources.base import (
    BackendError,
    PRMRequest,
    PRMScorer,
    StepGenerator,
    StepRequest,
    StepResult,
)
from trim_env.sources.openai_http import BackendTimeoutError
from trim_env.sources.query_tree import request_seed
from trim_env.tree import MAX_STEPS

Result = TypeVar("Result")


class UpstreamError(RuntimeError):
    """A backend call failed: HTTP status 504 when it timed out, 502 otherwise.

    :param upstream: the role of the backend (``weak``, ``strong`` or ``prm``).
    :param name: the backend's model name.
    :param status: the HTTP status a server answers with.
    :param message: the backend's own error message.
    """

    def __init__(self, upstream: str, name: str, status: int, message: str) -> None:
        super().__init__(f"upstream {upstream} ({name}) {'timed out' if status == 504 else 'failed'}: {message}")
        self.upstream = upstream
        self.name = name
        self.status = status


class Upstream:
    """One backend behind a semaphore, with its calls in flight and their wall time.

    :param role: ``weak``, ``strong`` or ``prm`` (named in errors and metrics).
    :param backend: the step generator or PRM scorer.
    :param max_concurrency: calls in flight at once (further calls wait for a slot).
    :param observe: called with (role, seconds) after every finished call (metrics).
    """

    def __init__(self, role: str, backend: StepGenerator | PRMScorer, max_concurrency: int,
                 observe: Callable[[str, float], None] | None = None) -> None:
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency of upstream {role} = {max_concurrency} must be >= 1")
        self.role = role
        self.backend = backend
        self.max_concurrency = max_concurrency
        self.semaphore = asyncio.Semaphore(max_concurrency)
        self.in_flight = 0
        self.observe = observe

    async def generate(self, request: StepRequest) -> tuple[StepResult, float]:
        """The next step of ``request`` and the call's wall time (s)."""
        generator = self._generator()
        (step,), seconds = await self._timed(lambda: generator.generate([request]))
        return step, seconds

    async def first_step(self, request: StepRequest, cost_model: CostModel) -> tuple[StepResult, int | None, float]:
        """The first step of a solution, the prompt tokens its call read (:func:`agents.live.first_proposal`)
        and the call's wall time (s)."""
        generator = self._generator()
        (step, prompt_tokens), seconds = await self._timed(lambda: first_proposal(generator, request, cost_model))
        return step, prompt_tokens, seconds

    def _generator(self) -> StepGenerator:
        if not isinstance(self.backend, StepGenerator):
            raise TypeError(f"upstream {self.role} is a PRM, not a step generator")
        return self.backend

    async def score(self, request: PRMRequest) -> tuple[list[float], float]:
        """The PRM scores of ``request``'s steps and the call's wall time (s)."""
        prm = self.backend
        if not isinstance(prm, PRMScorer):
            raise TypeError(f"upstream {self.role} is a step generator, not a PRM")
        (scores,), seconds = await self._timed(lambda: prm.score([request]))
        return scores, seconds

    async def _timed(self, work: Callable[[], Awaitable[Result]]) -> tuple[Result, float]:
        """Run ``work()`` in a slot; (its result, its wall time in seconds).

        :raises UpstreamError: when the backend fails (504 if it timed out).
        """
        async with self.semaphore:
            self.in_flight += 1
            started = time.perf_counter()
            try:
                result = await work()
            except BackendTimeoutError as error:
                raise UpstreamError(self.role, self.backend.name, 504, str(error)) from error
            except BackendError as error:
                raise UpstreamError(self.role, self.backend.name, 502, str(error)) from error
            finally:
                self.in_flight -= 1
            seconds = time.perf_counter() - started
        if self.observe is not None:
            self.observe(self.role, seconds)
        return result, seconds


@dataclass(frozen=True)
class StepLimits:
    """Per-request limits of the loop.

    :param max_steps: the solution ends after this many steps (at most 30).
    :param max_strong_tokens: hard cap on strong tokens (a rewrite decodes at most what is left; ``None``: none).
    :param max_strong_steps: cap on rewrites (``None``: none).
    :param seed: root of the sampling seeds (as :class:`agents.live.StepRouter`'s).
    """

    max_steps: int = MAX_STEPS
    max_strong_tokens: int | None = None
    max_strong_steps: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.max_steps <= MAX_STEPS:
            raise ValueError(f"max_steps = {self.max_steps} must be in [1, {MAX_STEPS}]")
        for name in ("max_strong_tokens", "max_strong_steps"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} = {value} must be >= 0 or null")


@dataclass
class StepEvent:
    """One written step as the loop yields it.

    :param index: the step's position (0-based).
    :param step: the step, its PRM score, tokens, decision and decision latency.
    :param ends_solution: the step ended the answer (otherwise the loop may go on).
    :param upstream_ms: wall time of this step's backend calls (proposal, scores, rewrite), ms.
    """

    index: int
    step: RoutedStep
    ends_solution: bool
    upstream_ms: float


class RoutingLoop:
    """The weak, strong and PRM upstreams of a router, and the loop that writes a solution with them.

    :param weak: the weak model's upstream.
    :param strong: the strong model's upstream.
    :param prm: the PRM's upstream.
    """

    def __init__(self, weak: Upstream, strong: Upstream, prm: Upstream) -> None:
        self.weak = weak
        self.strong = strong
        self.prm = prm

    @property
    def upstreams(self) -> tuple[Upstream, ...]:
        return (self.weak, self.strong, self.prm)

    async def steps(self, problem: str, router: Router, limits: StepLimits,
                    solution: RoutedSolution | None = None) -> AsyncGenerator[StepEvent, None]:
        """Write ``problem``'s solution under ``router``, yielding each step once written.

        :param problem: the problem statement.
        :param router: decides at each step (1: the strong model rewrites it).
        :param limits: steps, strong-token and rewrite caps, seed.
        :param solution: filled in as the loop goes (steps, token counts, prompt tokens), for the caller's
            totals; its ``cost_model`` decides whether a backend without prompt token counts is refused.
        """
        solution = solution if solution is not None else RoutedSolution(problem)
        texts: list[str] = []
        history: list[tuple[float, int, bool]] = []
        for index in range(limits.max_steps):
            seed = request_seed(limits.seed, problem, f"step{index}")
            request = StepRequest(problem, tuple(texts), seed)
            if index == 0:
                proposal, solution.prompt_tokens, weak_s = await self.weak.first_step(request, solution.cost_model)
            else:
                proposal, weak_s = await self.weak.generate(request)
            solution.weak_tokens += proposal.tokens
            scores, prm_s = await self.prm.score(PRMRequest(problem, (*texts, proposal.text)))
            upstream_s = weak_s + prm_s
            proposal_prm = scores[-1]
            tokens_left = limits.max_strong_tokens is None or solution.strong_tokens < limits.max_strong_tokens
            rewrites_left = limits.max_strong_steps is None or solution.escalations < limits.max_strong_steps
            asked = tokens_left and rewrites_left
            started = time.perf_counter()
            action = 0
            if asked:
                observation = observation_from_steps(history, proposal_prm, proposal.tokens, router.observation_kind)
                action = router.act(observation)
            decision_ms = 1000.0 * (time.perf_counter() - started)
            step, prm_score, rejected = proposal, proposal_prm, None
            if action == 1:
                budget = None if limits.max_strong_tokens is None else limits.max_strong_tokens - solution.strong_tokens
                rewrite = StepRequest(problem, tuple(texts), request_seed(limits.seed, problem, f"step{index}S"), max_tokens=budget)
                step, strong_s = await self.strong.generate(rewrite)
                solution.strong_tokens += step.tokens
                scores, rescore_s = await self.prm.score(PRMRequest(problem, (*texts, step.text)))
                prm_score, rejected = scores[-1], proposal.text
                upstream_s += strong_s + rescore_s
            written = RoutedStep(step.text, step.tokens, prm_score, action == 1, proposal_prm, proposal.tokens, asked,
                                 decision_ms, rejected)
            solution.steps.append(written)
            texts.append(step.text)
            history.append((prm_score, step.tokens, action == 1))
            yield StepEvent(index, written, step.ends_solution, 1000.0 * upstream_s)
            if step.ends_solution:
                return
