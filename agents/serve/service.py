"""The routing service behind the server and the controller: checks a chat request, routes it, and answers in OpenAI's format.

**Request** (``POST /v1/chat/completions`` body, or :meth:`Controller.chat.completions.create` arguments):

- ``model``: a served router's name (``GET /v1/models`` lists them);
- ``messages``: the conversation; its one user message is the problem (text, or a list of
  ``{"type": "text"}`` parts). A system message is refused: the backends use the system prompt
  the router's data was collected with. Assistant turns are refused: a problem is solved from
  scratch;
- ``stream`` (default false), ``stream_options.include_usage``;
- ``max_strong_tokens``: hard cap on the strong model's tokens for this request (a rewrite is sent
  with ``max_tokens`` = what is left; the server's own cap, if lower, wins);
- ``threshold`` (TRIM-Thr) or ``lambda`` (TRIM-POMDP): the router's operating point;
- ``seed``: root of the sampling seeds (default the server's); ``n`` (1 only) and ``user`` are accepted.

Anything else is refused with 400 naming the field: a silently ignored field would make a
caller believe, for example, that ``temperature`` or ``max_tokens`` applied.

**Response**: a ``chat.completion`` whose message is the solution (steps joined by a blank line),
``finish_reason`` ``stop`` (the answer ended) or ``length`` (the step limit), ``usage`` with
``completion_tokens`` = ``weak_tokens`` + ``strong_tokens`` (decoded tokens; rejected weak
proposals included; ``prompt_tokens`` is 0: three models read the prompt, every step; ``cost`` below
counts those reads) and a ``trim`` field:
the router, operating point, caps, per-step trace (writer, model, PRM score, tokens, decision,
decision latency, upstream time) and totals. Streaming sends a role chunk, then one chunk per
written step (its text, with the separator before every step but the first, and its trace entry
under ``trim.step``), a final chunk with ``finish_reason`` and the ``trim`` summary, and, when asked,
a usage chunk.

**Cost** (``cost=`` of ``conf/serve.yaml``, :attr:`ServiceSettings.cost_model`; default
``strong_tokens``). Under another model ``usage`` adds ``cost`` (the streamed usage chunk too): ``{"model": "price", "units": x,
"natural": y, "natural_unit": "USD"}``, the request's weak, strong and PRM calls priced as
:func:`trim_env.cost.path_cost` prices the same path on a tree (:meth:`agents.live.RoutedSolution.priced`;
``units`` are cost units, ``natural`` is in ``natural_unit``), and the metrics count it
(``trim_cost_total``). Under ``strong_tokens`` answers are exactly as before. Budgets
(``max_strong_tokens``) are strong tokens under every model.

**Errors**: :class:`RequestError` (400) for bad requests; :class:`~agents.serve.loop.UpstreamError`
(502, or 504 when the backend timed out) naming the backend.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, AsyncGenerator, Mapping

from agents.live import QueryCost, RoutedSolution
from agents.serve.loop import (
    RoutingLoop,
    StepEvent,
    StepLimits,
    Upstream,
    UpstreamError,
)
from agents.serve.metrics import ServeMetrics
from agents.serve.routers import OperatingPoint, ServedRouter
from trim_env.cost import CostModel, StrongTokensCost, cost_model_from_dict
from trim_env.sources.base import STEP_SEPARATOR, PRMScorer, StepGenerator
from trim_env.sources.factory import make_generator, make_prm
from trim_env.sources.grading import boxed_answer
from trim_env.tree import MAX_STEPS

#: Request fields a chat request may carry (anything else is a 400).
REQUEST_FIELDS = ("model", "messages", "stream", "stream_options", "max_strong_tokens", "threshold", "lambda", "seed", "n", "user")


class RequestError(ValueError):
    """A bad request: HTTP 400 with an OpenAI-style error naming the field.

    :param message: what was wrong and what to send instead.
    :param param: the offending field.
    """

    status = 400

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def error_body(message: str, kind: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """An OpenAI-style error answer."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


@dataclass(frozen=True)
class ServiceSettings:
    """Server-wide settings of the routing loop.

    :param max_steps: a solution ends after this many steps (at most 30).
    :param max_strong_tokens: the server's hard cap on strong tokens per request (``None``: none);
        a request may ask for less, never more.
    :param max_strong_steps: cap on rewrites per request (``None``: none).
    :param seed: default root of the sampling seeds.
    :param upstream_concurrency: backend calls in flight at once, per upstream (``weak``, ``strong``, ``prm``).
    :param cost_model: what requests are priced with in ``usage.cost`` and the metrics (``strong_tokens``: nothing added).
    """

    max_steps: int = MAX_STEPS
    max_strong_tokens: int | None = None
    max_strong_steps: int | None = None
    seed: int = 0
    upstream_concurrency: Mapping[str, int] = field(default_factory=lambda: {"weak": 16, "strong": 16, "prm": 16})
    cost_model: CostModel = field(default_factory=StrongTokensCost)


@dataclass
class ChatRequest:
    """A checked chat request.

    :param served: the router asked for.
    :param problem: the user message.
    :param stream: answer as server-sent events.
    :param include_usage: send a usage chunk at the end of a stream.
    :param limits: the loop's limits for this request (caps already combined with the server's).
    :param point: the operating point asked for (``None``: the router's default).
    """

    served: ServedRouter
    problem: str
    stream: bool
    include_usage: bool
    limits: StepLimits
    point: OperatingPoint | None


@dataclass
class RoutingRun:
    """One request being routed: its solution so far and what the response reports.

    :param cost_model: what the solution is priced with; :attr:`cost` is set when the routing ends
        (``None`` under ``strong_tokens``).
    """

    request: ChatRequest
    cost_model: CostModel = field(default_factory=StrongTokensCost)
    id: str = field(default_factory=lambda: f"chatcmpl-trim-{uuid.uuid4().hex}")
    created: int = field(default_factory=lambda: int(time.time()))
    point: OperatingPoint | None = None
    trace: list[dict[str, Any]] = field(default_factory=list)
    finish_reason: str = "length"
    upstream_ms: float = 0.0
    cost: QueryCost | None = None

    def __post_init__(self) -> None:
        self.solution = RoutedSolution(self.request.problem, cost_model=self.cost_model)


class RoutingService:
    """Served routers and the weak/strong/PRM upstreams they share.

    :param routers: name -> served router.
    :param weak: the weak model.
    :param strong: the strong model.
    :param prm: the PRM.
    :param settings: server-wide limits and upstream concurrency.
    """

    def __init__(self, routers: Mapping[str, ServedRouter], weak: StepGenerator, strong: StepGenerator, prm: PRMScorer,
                 settings: ServiceSettings | None = None) -> None:
        if not routers:
            raise ValueError("a routing service needs at least one router")
        self.routers = dict(routers)
        self.settings = settings or ServiceSettings()
        StepLimits(self.settings.max_steps, self.settings.max_strong_tokens, self.settings.max_strong_steps)  # checks them
        self.metrics = ServeMetrics(self.settings.cost_model)
        concurrency = dict(self.settings.upstream_concurrency)
        unknown = sorted(set(concurrency) - {"weak", "strong", "prm"})
        if unknown:
            raise ValueError(f"upstream_concurrency: unknown upstream {unknown[0]!r}; the upstreams are weak, strong, prm")
        upstreams = {role: Upstream(role, backend, int(concurrency.get(role, 16)), self.metrics.observe_upstream)
                     for role, backend in (("weak", weak), ("strong", strong), ("prm", prm))}
        for role, upstream in upstreams.items():
            self.metrics.watch_upstream(role, upstream)
        self.loop = RoutingLoop(upstreams["weak"], upstreams["strong"], upstreams["prm"])
        self.in_flight = 0

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> RoutingService:
        """A service from a ``conf/serve.yaml``-shaped mapping: ``routers`` (name -> ``path``,
        ``operating_point``), ``weak``/``strong``/``prm`` backend configs (:mod:`trim_env.sources.factory`),
        ``max_tokens_per_step``, the :class:`ServiceSettings` fields and ``cost`` (the ``cost=`` group's
        settings; none: ``strong_tokens``).

        :raises trim_env.cost.CostModelError: a bad ``cost`` setting, naming its key."""
        routers_config = config.get("routers") or {}
        if not isinstance(routers_config, Mapping) or not routers_config:
            raise ValueError("routers: give at least one router, e.g. routers.trim.path=OUT/router")
        routers = {}
        for name, entry in routers_config.items():
            if not isinstance(entry, Mapping) or not entry.get("path"):
                raise ValueError(f"routers.{name}: needs a path (an exported router directory)")
            routers[str(name)] = ServedRouter.from_directory(str(name), entry["path"], entry.get("operating_point"))
        max_tokens = int(config["max_tokens_per_step"])
        settings = ServiceSettings(
            max_steps=int(config.get("max_steps", MAX_STEPS)),
            max_strong_tokens=config.get("max_strong_tokens"),
            max_strong_steps=config.get("max_strong_steps"),
            seed=int(config.get("seed", 0)),
            upstream_concurrency={str(role): int(value) for role, value in (config.get("upstream_concurrency") or {}).items()},
            cost_model=cost_model_from_dict(dict(config["cost"])) if config.get("cost") else StrongTokensCost(),
        )
        return cls(routers, make_generator(config["weak"], max_tokens, "weak"), make_generator(config["strong"], max_tokens, "strong"),
                   make_prm(config["prm"], "prm"), settings)

    # ------------------------------------------------------------------------------------------
    # Requests

    def parse(self, body: Any) -> ChatRequest:
        """Check a chat request body.

        :raises RequestError: naming the field that is wrong.
        """
        if not isinstance(body, Mapping):
            raise RequestError("the request body must be a JSON object")
        unknown = sorted(set(body) - set(REQUEST_FIELDS))
        if unknown:
            raise RequestError(f"field {unknown[0]!r} is not supported by the trim routing server; supported fields: "
                               f"{', '.join(REQUEST_FIELDS)}", unknown[0])
        name = body.get("model")
        if name not in self.routers:
            raise RequestError(f"model = {name!r} is not a served router; served: {sorted(self.routers)}", "model")
        served = self.routers[name]
        problem = _problem(body.get("messages"))
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise RequestError(f"stream = {stream!r} must be true or false", "stream")
        options = body.get("stream_options") or {}
        if not isinstance(options, Mapping) or set(options) - {"include_usage"}:
            raise RequestError(f"stream_options = {options!r}: only {{\"include_usage\": bool}} is supported", "stream_options")
        if body.get("n", 1) != 1:
            raise RequestError(f"n = {body.get('n')!r}: a routed solution is one choice; send n = 1 or leave it out", "n")
        requested = _optional_int(body, "max_strong_tokens")
        ceiling = self.settings.max_strong_tokens
        cap = requested if ceiling is None else ceiling if requested is None else min(requested, ceiling)
        seed = _optional_int(body, "seed")
        point = None
        parameters = [name for name in ("threshold", "lambda") if body.get(name) is not None]
        if len(parameters) > 1:
            raise RequestError("give threshold or lambda, not both (a router has one operating-point parameter)", parameters[1])
        if parameters:
            value = body[parameters[0]]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise RequestError(f"{parameters[0]} = {value!r} must be a finite number >= 0", parameters[0])
            point = OperatingPoint(parameters[0], float(value))
            try:
                served.check(point)
            except ValueError as error:
                raise RequestError(str(error), parameters[0]) from error
        limits = StepLimits(self.settings.max_steps, cap, self.settings.max_strong_steps, self.settings.seed if seed is None else seed)
        return ChatRequest(served, problem, stream, bool(options.get("include_usage", False)), limits, point)

    def _checked(self, body: Any) -> ChatRequest:
        """:meth:`parse`, counting refused requests in the metrics."""
        try:
            return self.parse(body)
        except RequestError:
            model = body.get("model") if isinstance(body, Mapping) else None
            self.metrics.requests.labels(router=model if model in self.routers else "", outcome="bad_request").inc()
            raise

    async def complete(self, body: Any) -> dict[str, Any]:
        """Route a non-streaming request; the ``chat.completion`` answer."""
        run = RoutingRun(self._checked(body), self.settings.cost_model)
        async for _ in self._events(run):
            pass
        return self.completion(run)

    async def stream(self, body: Any) -> AsyncGenerator[dict[str, Any], None]:
        """Route a streaming request: returns once the first step is written (so that a request that
        fails before it gets a plain error answer), then yields the chunks."""
        run = RoutingRun(self._checked(body), self.settings.cost_model)
        events = self._events(run)
        try:
            first = await events.__anext__()
        except StopAsyncIteration:
            first = None
        except BaseException:
            await events.aclose()
            raise
        return self._chunks(run, events, first)

    async def _chunks(self, run: RoutingRun, events: AsyncGenerator[StepEvent, None],
                      first: StepEvent | None) -> AsyncGenerator[dict[str, Any], None]:
        try:
            yield self._chunk(run, {"role": "assistant", "content": ""})
            if first is not None:
                yield self._step_chunk(run, first)
                async for event in events:
                    yield self._step_chunk(run, event)
            yield {**self._chunk(run, {}, run.finish_reason), "trim": self._summary(run)}
            if run.request.include_usage:
                yield {**self._chunk(run, {}), "choices": [], "usage": self._usage(run)}
        finally:
            await events.aclose()

    async def _events(self, run: RoutingRun) -> AsyncGenerator[StepEvent, None]:
        """The loop's steps for ``run``, with the metrics and the run's trace kept up to date."""
        request = run.request
        name = request.served.name
        started = last = time.perf_counter()
        outcome = "error"
        self.in_flight += 1
        self.metrics.in_flight.inc()
        try:
            router, run.point = await request.served.at(request.point)
            async for event in self.loop.steps(request.problem, router, request.limits, run.solution):
                now = time.perf_counter()
                self.metrics.observe_step(name, event.step.is_strong, event.step.decision_ms,
                                          (now - last) - event.upstream_ms / 1000.0)
                last = now
                run.trace.append(self._trace_entry(event))
                run.upstream_ms += event.upstream_ms
                if event.ends_solution:
                    run.finish_reason = "stop"
                yield event
            outcome = "ok"
        except UpstreamError:
            outcome = "upstream_error"
            raise
        except (asyncio.CancelledError, GeneratorExit):
            outcome = "cancelled"
            raise
        finally:
            self.in_flight -= 1
            self.metrics.in_flight.dec()
            if not run.solution.priced_by_strong_tokens:
                run.cost = run.solution.priced()
            self.metrics.observe_request(name, outcome, time.perf_counter() - started, run.solution.weak_tokens,
                                         run.solution.strong_tokens, None if run.cost is None else run.cost.natural)

    # ------------------------------------------------------------------------------------------
    # Answers

    def _trace_entry(self, event: StepEvent) -> dict[str, Any]:
        step = event.step
        writer = self.loop.strong if step.is_strong else self.loop.weak
        decision = ("regenerate" if step.is_strong else "continue") if step.asked else "not_asked"
        return {"index": event.index, "writer": writer.role, "model": writer.backend.name, "prm": step.prm,
                "tokens": step.tokens, "decision": decision, "decision_ms": step.decision_ms,
                "proposal_prm": step.proposal_prm, "proposal_tokens": step.proposal_tokens,
                "rejected_text": step.rejected_text, "upstream_ms": event.upstream_ms}

    def _usage(self, run: RoutingRun) -> dict[str, Any]:
        weak, strong = run.solution.weak_tokens, run.solution.strong_tokens
        usage: dict[str, Any] = {"prompt_tokens": 0, "completion_tokens": weak + strong, "total_tokens": weak + strong,
                                 "weak_tokens": weak, "strong_tokens": strong}
        if run.cost is not None:
            usage["cost"] = run.cost.to_dict()
        return usage

    def _summary(self, run: RoutingRun, with_steps: bool = True) -> dict[str, Any]:
        request, solution = run.request, run.solution
        summary: dict[str, Any] = {
            "router": request.served.name,
            "router_kind": request.served.kind,
            "operating_point": None if run.point is None else {run.point.parameter: run.point.value},
            "max_strong_tokens": request.limits.max_strong_tokens,
            "max_strong_steps": request.limits.max_strong_steps,
            "weak_tokens": solution.weak_tokens,
            "strong_tokens": solution.strong_tokens,
            "escalations": solution.escalations,
            "answer": boxed_answer(solution.text),
            "upstream_ms": run.upstream_ms,
        }
        if with_steps:
            summary["steps"] = run.trace
        return summary

    def completion(self, run: RoutingRun) -> dict[str, Any]:
        """The ``chat.completion`` answer of a finished run."""
        return {
            "id": run.id,
            "object": "chat.completion",
            "created": run.created,
            "model": run.request.served.name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": run.solution.text},
                         "finish_reason": run.finish_reason, "logprobs": None}],
            "usage": self._usage(run),
            "trim": self._summary(run),
        }

    def _chunk(self, run: RoutingRun, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        return {"id": run.id, "object": "chat.completion.chunk", "created": run.created, "model": run.request.served.name,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}]}

    def _step_chunk(self, run: RoutingRun, event: StepEvent) -> dict[str, Any]:
        text = (STEP_SEPARATOR if event.index else "") + event.step.text
        return {**self._chunk(run, {"content": text}), "trim": {"step": run.trace[event.index]}}

    def models(self) -> dict[str, Any]:
        """The ``GET /v1/models`` answer: one entry per served router."""
        return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "trim",
                                            "trim": served.describe()} for name, served in self.routers.items()]}

    def health(self) -> dict[str, Any]:
        """The ``GET /health`` answer."""
        return {"status": "ok", "routers": sorted(self.routers), "requests_in_flight": self.in_flight,
                "upstreams": {upstream.role: {"model": upstream.backend.name, "in_flight": upstream.in_flight,
                                              "max_concurrency": upstream.max_concurrency} for upstream in self.loop.upstreams}}

    async def aclose(self) -> None:
        """Close the backends' connections."""
        for upstream in self.loop.upstreams:
            await upstream.backend.aclose()


def _problem(messages: Any) -> str:
    """The problem of a chat request: its one user message."""
    if not isinstance(messages, list) or not messages:
        raise RequestError("messages must be a non-empty list of {role, content} objects", "messages")
    users = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, Mapping) or "role" not in message:
            raise RequestError(f"{where} must be an object with a role and a content", "messages")
        role = message["role"]
        if role in ("system", "developer"):
            raise RequestError(f"{where}: role {role!r} is not supported: the backends use the system prompt the router's "
                               "data was collected with (the server's weak.system_prompt / strong.system_prompt)", "messages")
        if role != "user":
            raise RequestError(f"{where}: role {role!r} is not supported: send the problem as one user message "
                               "(a routed solution is written from scratch)", "messages")
        users.append(_text(message.get("content"), where))
    if len(users) != 1:
        raise RequestError(f"messages hold {len(users)} user messages; send the problem as one user message", "messages")
    if not users[0].strip():
        raise RequestError("the user message is empty; it should hold the problem to solve", "messages")
    return users[0]


def _text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(part, Mapping) and part.get("type") == "text"
                                         and isinstance(part.get("text"), str) for part in content):
        return "".join(part["text"] for part in content)
    raise RequestError(f"{where}.content must be text or a list of {{\"type\": \"text\", \"text\": ...}} parts", "messages")


def _optional_int(body: Mapping[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise RequestError(f"{name} = {value!r} must be an integer >= 0", name)
    return value
