"""Live routing and serving priced in the chosen cost model's unit (issue #14): ``StepRouter``, ``trim-route``, ``trim-serve``.

The backends are the scripted models behind the OpenAI-compatible test server (deterministic and
fast) and, to compare with the tree costs, a generator and PRM that replay a simulated tree. Costs
are checked against calls priced by hand from the recorded tokens (as ``trim_env/cost.py``'s
module docstring lists them) and against :func:`trim_env.cost.path_cost`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

import httpx
import numpy as np
import pytest
import torch
from hydra.core.config_store import ConfigStore
from hydra.errors import ConfigCompositionException

from agents.base import Router
from agents.cli.common import compose
from agents.cli.route import RouteConfig, format_solution, route
from agents.export import write_router
from agents.live import RoutedSolution, StepRouter
from agents.serve.app import BackgroundServer, create_app
from agents.serve.controller import Controller
from agents.serve.routers import ServedRouter
from agents.serve.service import RoutingService, ServiceSettings
from agents.threshold import ThresholdRouter
from trim_env.cost import CostModel, CostModelError, FlopsCost, LatencyCost, PriceCost, TokenPrice, path_cost
from trim_env.evaluation import run_episodes
from trim_env.sources.base import (
    CHATML_TEMPLATE,
    DEFAULT_SYSTEM_PROMPT,
    BackendError,
    PRMRequest,
    PRMScorer,
    Rollout,
    StepGenerator,
    StepRequest,
    StepResult,
)
from trim_env.sources.factory import make_generator, make_prm
from trim_env.sources.testing import ScriptedModel, ScriptedPRM, TestingServer
from trim_env.tree import RolloutTrees

ROOT = Path(__file__).resolve().parents[1]
PROBLEM = "What is 20 + 22?"
#: Round test prices (USD per million tokens: input, output, cached input), not the presets.
PRICES = {"weak": TokenPrice(1.0, 2.0, 0.5), "strong": TokenPrice(3.0, 10.0, 1.5), "prm": TokenPrice(4.0, 0.0, 2.0)}
#: The cost unit of those prices: the reference strong-only query (96 prompt tokens, 480 decoded) / 480.
PRICE_UNIT = (96 * 3.0 + 480 * 10.0) / 480 / 1e6
#: The keys of a live routing record before cost models, in order (strong_tokens must not change them).
STRONG_TOKEN_RECORD = ["problem", "steps", "strong_tokens", "weak_tokens", "answer", "correct", "text", "escalations",
                       "mean_decision_ms"]

torch.set_num_threads(1)


def round_price(prefix_cache: bool = False) -> PriceCost:
    """:class:`PriceCost` at :data:`PRICES`."""
    return PriceCost(prefix_cache=prefix_cache, **PRICES)


@pytest.fixture(scope="module")
def upstream():
    with TestingServer({"weak": ScriptedModel("weak", ("42", "41")), "strong": ScriptedModel("strong", ("42",))},
                       pooling=ScriptedPRM()) as server:
        yield server


def backend_configs(server: TestingServer) -> dict[str, dict[str, Any]]:
    common = {"kind": "openai", "base_url": server.base_url, "api_key_env": None, "max_retries": 0}
    return {"weak": {**common, "model": "weak"}, "strong": {**common, "model": "strong"},
            "prm": {"kind": "vllm_pooling", "base_url": server.root_url, "model": "prm", "api_key_env": None, "max_retries": 0}}


def step_router(server: TestingServer, router: Router, **options: Any) -> StepRouter:
    configs = backend_configs(server)
    return StepRouter(router, make_generator(configs["weak"], 64, "weak"), make_generator(configs["strong"], 64, "strong"),
                      make_prm(configs["prm"]), **options)


class AlternatingRouter(Router):
    """Regenerates the first decision, continues the next, and so on: both kinds of step on one path."""

    observation_kind = "agg"

    def __init__(self) -> None:
        self.decisions = 0

    def predict(self, observations: np.ndarray) -> np.ndarray:
        actions = (np.arange(self.decisions, self.decisions + len(observations)) % 2 == 0).astype(np.int64)
        self.decisions += len(observations)
        return actions


def hand_priced(solution: RoutedSolution, prices: dict[str, TokenPrice], prefix_cache: bool) -> float:
    """USD of ``solution`` worked out call by call from its recorded tokens (trim_env/cost.py's module docstring).

    Each call is (fresh input, cached input, output). Without a cache every call reads its whole
    input fresh. With one, each model reads fresh only what it has not processed for the query: the
    weak model what follows its last step (or the prefix before its discarded proposal), the strong
    model what follows its last rewrite, the PRM what follows the step it scored last; scoring a
    rewrite re-reads only the rewrite.
    """
    assert solution.prompt_tokens is not None
    prefix = solution.prompt_tokens
    seen = {"weak": 0, "strong": 0, "prm": 0}
    usd = 0.0

    def call(role: str, read: int, output: int, cached: int) -> None:
        nonlocal usd
        cached = cached if prefix_cache else 0
        price = prices[role]
        usd += ((read - cached) * price.input_per_mtok + cached * price.cached_input_per_mtok + output * price.output_per_mtok) / 1e6

    for step in solution.steps:
        proposal = step.proposal_tokens
        call("weak", prefix, proposal, seen["weak"])
        call("prm", prefix + proposal, 0, seen["prm"])
        if step.is_strong:
            call("strong", prefix, step.tokens, seen["strong"])
            call("prm", prefix + step.tokens, 0, prefix)
            seen["weak"] = prefix
            prefix += step.tokens
            seen["strong"] = prefix
        else:
            prefix += proposal
            seen["weak"] = prefix
        seen["prm"] = prefix
    return usd


# ----------------------------------------------------------------------------------------------
# StepRouter


@pytest.mark.parametrize("prefix_cache", [False, True])
def test_a_routed_querys_price_is_its_calls_priced_by_hand_from_the_recorded_tokens(upstream, prefix_cache):
    solution = step_router(upstream, AlternatingRouter(), cost_model=round_price(prefix_cache)).solve(PROBLEM)
    assert {step.is_strong for step in solution.steps} == {True, False}  # both kinds of event are priced
    # The prompt's tokens are the weak server's usage.prompt_tokens (the stub counts the words of the rendered prompt).
    assert solution.prompt_tokens == len(CHATML_TEMPLATE.format(system=DEFAULT_SYSTEM_PROMPT, problem=PROBLEM).split())
    cost = solution.priced()
    expected = hand_priced(solution, PRICES, prefix_cache)
    assert (cost.model, cost.natural_unit) == ("price", "USD")
    assert cost.natural == pytest.approx(expected, rel=1e-12)
    assert cost.units == pytest.approx(expected / PRICE_UNIT, rel=1e-12)
    record = solution.to_dict()
    assert record["prompt_tokens"] == solution.prompt_tokens and record["cost"] == cost.to_dict()
    assert list(record)[:len(STRONG_TOKEN_RECORD)] == STRONG_TOKEN_RECORD


def test_a_prefix_cache_makes_the_same_query_cheaper(upstream):
    fresh = step_router(upstream, AlternatingRouter(), cost_model=round_price(False)).solve(PROBLEM)
    cached = step_router(upstream, AlternatingRouter(), cost_model=round_price(True)).solve(PROBLEM)
    assert [step.text for step in fresh.steps] == [step.text for step in cached.steps]
    assert 0 < cached.priced().natural < fresh.priced().natural


def test_under_strong_tokens_the_record_is_as_before_cost_models(upstream):
    solution = step_router(upstream, AlternatingRouter()).solve(PROBLEM)
    assert list(solution.to_dict()) == STRONG_TOKEN_RECORD
    cost = solution.priced()
    assert (cost.model, cost.units, cost.natural) == ("strong_tokens", solution.strong_tokens, solution.strong_tokens)
    # The same routing under a priced model writes the same solution: cost models price, they do not steer.
    priced = step_router(upstream, AlternatingRouter(), cost_model=round_price()).solve(PROBLEM)
    assert untimed(priced.to_dict(), STRONG_TOKEN_RECORD) == untimed(solution.to_dict(), STRONG_TOKEN_RECORD)


def untimed(record: dict[str, Any], keys: list[str]) -> dict[str, Any]:
    """``record``'s ``keys`` without the decision latencies (which differ between two runs)."""
    steps = [{key: value for key, value in step.items() if key != "decision_ms"} for step in record["steps"]]
    return {**{key: record[key] for key in keys if key != "mean_decision_ms"}, "steps": steps}


def drop_prompt_tokens(body: dict[str, Any], answer: dict[str, Any]) -> dict[str, Any]:
    answer.get("usage", {}).pop("prompt_tokens", None)
    return answer


def test_a_weak_backend_without_prompt_token_counts_is_refused_under_a_model_that_charges_prefill():
    with TestingServer({"weak": ScriptedModel("weak"), "strong": ScriptedModel("strong")}, pooling=ScriptedPRM(),
                       tamper=drop_prompt_tokens) as running:
        with pytest.raises(BackendError, match=r"weak model 'weak' reported no prompt token count .* cost=price"):
            step_router(running, ThresholdRouter(0.5), cost_model=round_price()).solve(PROBLEM)
        # Strong tokens need no prompt tokens: the same backend routes as before.
        solution = step_router(running, ThresholdRouter(0.5)).solve(PROBLEM)
        assert solution.steps and solution.prompt_tokens is None


# ----------------------------------------------------------------------------------------------
# A live query over a replayed tree costs what the tree's path costs


class TreeGenerator(StepGenerator):
    """Replays one model's children of simulated trees: the problem names the query, each step its node."""

    def __init__(self, trees: RolloutTrees, role: str) -> None:
        super().__init__(role, 10**6)
        self.trees = trees
        self.children = trees.strong_child if role == "strong" else trees.weak_child

    def node(self, problem: str, steps: Sequence[str]) -> int:
        node = int(self.trees.root[int(problem.removeprefix("query "))])
        for text in steps:
            child = int(text.removeprefix("node "))
            assert self.trees.parent[child] == node, f"{text} does not follow node {node}"
            node = child
        return node

    async def generate(self, requests: Sequence[StepRequest]) -> list[StepResult]:
        steps = []
        for request in requests:
            child = int(self.children[self.node(request.problem, request.steps)])
            assert child >= 0, f"{self.name} has no child at {request.steps}"
            steps.append(StepResult(f"node {child}", int(self.trees.step_tokens[child]), bool(self.trees.terminal[child])))
        return steps

    async def rollout(self, requests: Sequence[StepRequest], max_steps: Sequence[int]) -> list[Rollout]:
        assert list(max_steps) == [1] * len(requests)
        prompt_tokens = self.trees.prompt_tokens
        assert prompt_tokens is not None
        return [Rollout([step], step.tokens, 1, int(prompt_tokens[int(request.problem.removeprefix("query "))]))
                for step, request in zip(await self.generate(requests), requests)]


class TreePRM(PRMScorer):
    """The trees' PRM scores of the steps named in the request."""

    def __init__(self, trees: RolloutTrees) -> None:
        super().__init__("prm")
        self.trees = trees

    async def score(self, requests: Sequence[PRMRequest]) -> list[list[float]]:
        return [[float(self.trees.step_prm[int(text.removeprefix("node "))]) for text in request.steps] for request in requests]


@pytest.mark.parametrize("model", [round_price(), round_price(prefix_cache=True), PriceCost(prefix_cache=True),
                                   FlopsCost(prefix_cache=True), LatencyCost()], ids=lambda model: repr(model)[:40])
def test_a_live_query_replaying_a_tree_costs_the_path_cost_of_the_node_it_ends_at(tiny_trees, model: CostModel):
    threshold, queries = 0.6, np.arange(6)
    episodes = run_episodes(tiny_trees, ThresholdRouter(threshold), queries, cost_model=model)
    for index, query in enumerate(queries):
        live = StepRouter(ThresholdRouter(threshold), TreeGenerator(tiny_trees, "weak"), TreeGenerator(tiny_trees, "strong"),
                          TreePRM(tiny_trees), max_strong_steps=tiny_trees.max_strong_steps, cost_model=model)
        solution = live.solve(f"query {query}")
        final = int(solution.steps[-1].text.removeprefix("node "))
        assert final == episodes.final_node[index]  # the same path as the batch evaluator's episode
        assert solution.priced().units == pytest.approx(path_cost(model, tiny_trees, np.array([final]))[0], rel=1e-12)
        assert solution.priced().units == pytest.approx(episodes.cost[index], rel=1e-12)
    assert len({int(n) for n in episodes.escalations}) > 1  # the queries mix escalations


# ----------------------------------------------------------------------------------------------
# trim-serve


@pytest.fixture(scope="module")
def router_dir(tmp_path_factory) -> Path:
    return write_router(tmp_path_factory.mktemp("routers") / "trim",
                        {"kind": "threshold", "observation": "agg", "threshold": 0.5, "policy": "thr"})


def service(server: TestingServer, router_dir: Path, cost_model: CostModel | None = None) -> RoutingService:
    configs = backend_configs(server)
    settings = ServiceSettings() if cost_model is None else ServiceSettings(cost_model=cost_model)
    return RoutingService({"trim": ServedRouter.from_directory("trim", router_dir)}, make_generator(configs["weak"], 64, "weak"),
                          make_generator(configs["strong"], 64, "strong"), make_prm(configs["prm"]), settings)


def post(server: BackgroundServer, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(server.base_url + "/chat/completions", json=body, timeout=60.0)


def metrics(server: BackgroundServer) -> str:
    return httpx.get(server.base_url.removesuffix("/v1") + "/metrics", timeout=60.0).text


@pytest.mark.parametrize("prefix_cache", [False, True])
def test_a_served_answers_usage_carries_its_cost_and_the_metrics_count_it(upstream, router_dir, prefix_cache):
    model = round_price(prefix_cache)
    body = {"model": "trim", "messages": [{"role": "user", "content": PROBLEM}], "seed": 3}
    with BackgroundServer(create_app(service(upstream, router_dir, model))) as served:
        answer = post(served, body).json()
        events = []
        with httpx.stream("POST", served.base_url + "/chat/completions", timeout=60.0,
                          json={**body, "stream": True, "stream_options": {"include_usage": True}}) as response:
            for line in response.iter_lines():
                if line.startswith("data: {"):
                    events.append(json.loads(line.removeprefix("data: ")))
        exposition = metrics(served)
    live = step_router(upstream, ThresholdRouter(0.5), seed=3, cost_model=model).solve(PROBLEM)
    expected = hand_priced(live, PRICES, prefix_cache)
    assert answer["choices"][0]["message"]["content"] == live.text
    cost = answer["usage"]["cost"]
    assert (cost["model"], cost["natural_unit"]) == ("price", "USD")
    assert cost["natural"] == pytest.approx(expected, rel=1e-12) and cost["units"] == pytest.approx(expected / PRICE_UNIT, rel=1e-12)
    assert events[-1]["usage"]["cost"] == cost  # the streamed answer's usage chunk
    # Two requests of the same solution were counted.
    (line,) = [line for line in exposition.splitlines() if line.startswith('trim_cost_total{router="trim"}')]
    assert float(line.split()[-1]) == pytest.approx(2 * expected, rel=1e-9)
    assert "# HELP trim_cost_total Cost of requests in USD (cost=price" in exposition
    assert ("prefix cache" in exposition) == prefix_cache


def test_under_strong_tokens_served_answers_and_metrics_are_as_before_cost_models(upstream, router_dir):
    with BackgroundServer(create_app(service(upstream, router_dir))) as served:
        answer = post(served, {"model": "trim", "messages": [{"role": "user", "content": PROBLEM}]}).json()
        exposition = metrics(served)
    assert list(answer["usage"]) == ["prompt_tokens", "completion_tokens", "total_tokens", "weak_tokens", "strong_tokens"]
    assert "trim_cost" not in exposition and "trim_strong_tokens_total" in exposition


def test_a_served_request_on_a_backend_without_prompt_token_counts_is_a_502_naming_the_weak_upstream(router_dir):
    with TestingServer({"weak": ScriptedModel("weak"), "strong": ScriptedModel("strong")}, pooling=ScriptedPRM(),
                       tamper=drop_prompt_tokens) as running:
        with BackgroundServer(create_app(service(running, router_dir, round_price()))) as served:
            response = post(served, {"model": "trim", "messages": [{"role": "user", "content": PROBLEM}]})
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["code"] == "upstream_weak" and "reported no prompt token count" in error["message"] and "cost=price" in error["message"]


def test_the_controller_prices_its_answers_as_the_server_does(upstream, router_dir):
    settings = ServiceSettings(cost_model=round_price(True))
    with Controller(router_dir, max_tokens_per_step=64, settings=settings, **backend_configs(upstream)) as controller:
        answer = controller.chat.completions.create(messages=[{"role": "user", "content": PROBLEM}], seed=3)
    live = step_router(upstream, ThresholdRouter(0.5), seed=3, cost_model=round_price(True)).solve(PROBLEM)
    assert answer["usage"]["cost"]["natural"] == pytest.approx(hand_priced(live, PRICES, prefix_cache=True), rel=1e-12)


def serve_config(server: TestingServer, router_dir: Path, cost: dict[str, Any]) -> dict[str, Any]:
    return {"routers": {"trim": {"path": str(router_dir)}}, "max_tokens_per_step": 64, **backend_configs(server), "cost": cost}


def test_trim_serve_takes_a_cost_model_from_its_config_and_refuses_a_bad_value_naming_the_key(upstream, router_dir):
    built = RoutingService.from_config(serve_config(upstream, router_dir, {"name": "flops", "prefix_cache": True}))
    assert built.settings.cost_model == FlopsCost(prefix_cache=True)
    with pytest.raises(CostModelError, match=r"cost\.weak\.input_per_mtok = -1\.0 must be a finite price >= 0"):
        RoutingService.from_config(serve_config(upstream, router_dir, {"name": "price", "weak": {"input_per_mtok": -1.0}}))
    with pytest.raises(CostModelError, match=r"cost: unknown key\(s\) \['prefix_caching'\]"):
        RoutingService.from_config(serve_config(upstream, router_dir, {"name": "latency", "prefix_caching": True}))


def test_trim_serve_exits_naming_a_bad_cost_key(router_dir):
    command = [sys.executable, "-m", "agents.cli.serve", f"routers.trim.path={router_dir}", "cost=price",
               "cost.strong.output_per_mtok=0", "hydra.run.dir=.", "hydra.output_subdir=null",
               *(f"{role}.{field}" for role in ("weak", "strong")
                 for field in ("base_url=http://127.0.0.1:9/v1", "model=m", "api_key_env=null")),
               "prm.base_url=http://127.0.0.1:9", "prm.model=prm", "prm.api_key_env=null"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=router_dir.parent)
    assert result.returncode != 0
    assert "trim-serve: cost.strong.output_per_mtok = 0.0 must be > 0" in result.stderr


# ----------------------------------------------------------------------------------------------
# trim-route


def route_overrides(server: TestingServer, router_dir: Path) -> list[str]:
    return [f"router={router_dir}", f'problem="{PROBLEM}"', "seed=3",
            "collect/generator@weak=openai", f"weak.base_url={server.base_url}", "weak.model=weak", "weak.api_key_env=null",
            "collect/generator@strong=openai", f"strong.base_url={server.base_url}", "strong.model=strong", "strong.api_key_env=null",
            "collect/prm@prm=vllm_pooling", f"prm.base_url={server.root_url}", "prm.model=prm", "prm.api_key_env=null",
            "max_tokens_per_step=64"]


def test_trim_route_prints_the_cost_in_the_chosen_unit_beside_the_strong_tokens(upstream, router_dir):
    prices = [f"cost.{role}.{name}={getattr(PRICES[role], name)}" for role in PRICES
              for name in ("input_per_mtok", "output_per_mtok", "cached_input_per_mtok")]
    overrides = [*route_overrides(upstream, router_dir), "cost=price", "cost.prefix_cache=true", *prices]
    record = subprocess.run([sys.executable, "-m", "agents.cli.route", *overrides, "print_json=true"],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert record.returncode == 0, record.stderr[-3000:]
    solution = json.loads(record.stdout)
    live = step_router(upstream, ThresholdRouter(0.5), seed=3, cost_model=round_price(True)).solve(PROBLEM)
    expected = hand_priced(live, PRICES, prefix_cache=True)
    assert solution["cost"]["natural"] == pytest.approx(expected, rel=1e-12) and solution["prompt_tokens"] == live.prompt_tokens
    ConfigStore.instance().store(name="route_schema", node=RouteConfig)  # as trim-route's main does
    text = format_solution(route(compose("route", overrides)))
    assert f"strong tokens {live.strong_tokens}," in text
    assert f"cost {expected:.6g} USD = {expected / PRICE_UNIT:.2f} cost units (cost=price, prefix cache)" in text


def test_trim_route_refuses_a_bad_cost_value_naming_the_key(upstream, router_dir):
    ConfigStore.instance().store(name="route_schema", node=RouteConfig)  # as trim-route's main does
    with pytest.raises(CostModelError, match=r"cost\.prm\.output_per_mtok = -2\.0 must be a finite price >= 0"):
        route(compose("route", [*route_overrides(upstream, router_dir), "cost=price", "cost.prm.output_per_mtok=-2"]))
    with pytest.raises(ConfigCompositionException, match="prefix_cache"):
        compose("route", [*route_overrides(upstream, router_dir), "cost=latency", "cost.prefix_cache=sometimes"])
