"""Live routing: observations equal the tree features, StepRouter's decisions and budgets, the route.py CLI, exported routers.

The backends are the scripted models behind the OpenAI-compatible test server on 127.0.0.1
(deterministic and fast); ``tests/test_collect.py`` routes with real SmolLM2.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from agents import load_router
from agents.base import Router
from agents.export import write_router
from agents.live import StepRouter
from agents.networks import ActorNetwork
from agents.threshold import ThresholdRouter
from trim_env.features import (
    AGG_FEATURES,
    SEQ_CHANNELS,
    agg_features,
    observation_from_steps,
    seq_features,
)
from trim_env.sources.base import BackendError
from trim_env.sources.factory import make_generator, make_prm
from trim_env.sources.testing import ScriptedModel, ScriptedPRM, TestingServer
from trim_env.tree import MAX_STEPS

ROOT = Path(__file__).resolve().parents[1]
PROBLEM = "What is 20 + 22?"

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def server():
    with TestingServer({"weak": ScriptedModel("weak", ("42", "41")), "strong": ScriptedModel("strong", ("42",))}, pooling=ScriptedPRM()) as running:
        yield running


def step_router(server: TestingServer, router: Router, **options) -> StepRouter:
    common = {"kind": "openai", "base_url": server.base_url, "api_key_env": None}
    weak = make_generator({**common, "model": "weak"}, 64, "weak")
    strong = make_generator({**common, "model": "strong"}, 64, "strong")
    prm = make_prm({"kind": "vllm_pooling", "base_url": server.root_url, "model": "prm", "api_key_env": None})
    return StepRouter(router, weak, strong, prm, **options)


class RecordingRouter(Router):
    """Regenerates every other decision and keeps the observations it was shown."""

    def __init__(self, kind: str) -> None:
        self.observation_kind = kind  # type: ignore[misc]
        self.seen: list[np.ndarray] = []

    def predict(self, observations: np.ndarray) -> np.ndarray:
        self.seen.extend(observations)
        return np.array([len(self.seen) % 2 for _ in observations])


# ----------------------------------------------------------------------------------------------
# Observations


@pytest.mark.parametrize("kind", ["agg", "seq"])
def test_observation_from_steps_equals_the_tree_features_at_every_decision_node(tiny_trees, kind):
    nodes = np.flatnonzero(~tiny_trees.terminal)
    expected = (agg_features if kind == "agg" else seq_features)(tiny_trees, nodes)
    for row, node in enumerate(nodes):
        steps = [(float(tiny_trees.step_prm[n]), int(tiny_trees.step_tokens[n]), bool(tiny_trees.step_is_strong[n])) for n in tiny_trees.path(node)]
        proposal_prm, proposal_tokens = tiny_trees.proposal(node)
        np.testing.assert_array_equal(observation_from_steps(steps, proposal_prm, proposal_tokens, kind), expected[row])


def test_observation_from_steps_rejects_a_full_prefix_and_unknown_kinds():
    with pytest.raises(ValueError, match="shorter than MAX_STEPS"):
        observation_from_steps([(0.5, 10, False)] * MAX_STEPS, 0.5, 10)
    with pytest.raises(ValueError, match="kind = 'mlp'"):
        observation_from_steps([], 0.5, 10, "mlp")


@pytest.mark.parametrize("kind", ["agg", "seq"])
def test_the_router_is_shown_the_observation_of_the_steps_actually_written(server, kind):
    recorder = RecordingRouter(kind)
    solution = step_router(server, recorder).solve(PROBLEM)
    assert len(recorder.seen) == len(solution.steps)
    for index, seen in enumerate(recorder.seen):
        history = [(step.prm, step.tokens, step.is_strong) for step in solution.steps[:index]]
        step = solution.steps[index]
        np.testing.assert_array_equal(seen, observation_from_steps(history, step.proposal_prm, step.proposal_tokens, kind))
    assert [step.is_strong for step in solution.steps] == [(i + 1) % 2 == 1 for i in range(len(solution.steps))]


# ----------------------------------------------------------------------------------------------
# Decisions and budgets


def test_a_router_that_never_regenerates_writes_the_weak_solution(server):
    solution = step_router(server, ThresholdRouter(0.0)).solve(PROBLEM, answer="42")
    assert solution.steps and not any(step.is_strong for step in solution.steps)
    assert solution.strong_tokens == 0 and solution.escalations == 0
    assert solution.weak_tokens == sum(step.tokens for step in solution.steps)
    assert "\\boxed" in solution.steps[-1].text and solution.answer in ("41", "42")
    assert solution.correct == (solution.answer == "42")


def test_a_router_that_always_regenerates_marks_every_step_strong_and_counts_its_tokens(server):
    solution = step_router(server, ThresholdRouter(2.0)).solve(PROBLEM, answer="42")
    assert all(step.is_strong and step.rejected_text is not None for step in solution.steps)
    assert solution.strong_tokens == sum(step.tokens for step in solution.steps)
    assert solution.answer == "42" and solution.correct is True
    assert all(0.0 <= step.prm <= 1.0 and 0.0 <= step.proposal_prm <= 1.0 for step in solution.steps)


def test_the_hard_cap_on_strong_tokens_is_never_exceeded(server):
    solution = step_router(server, ThresholdRouter(2.0), max_strong_tokens=10).solve(PROBLEM)
    assert 0 < solution.strong_tokens <= 10
    spent = np.cumsum([step.tokens if step.is_strong else 0 for step in solution.steps])
    # once the cap is spent the router is no longer asked and the weak steps stand
    for step, before in zip(solution.steps, np.concatenate([[0], spent[:-1]])):
        assert step.asked == (before < 10)


def test_the_strong_token_cap_is_carried_by_each_rewrite_request():
    strong_requests = []

    def record(body, answer):
        if body["model"] == "strong":
            strong_requests.append(body["max_tokens"])
        return answer

    with TestingServer({"weak": ScriptedModel("weak", ("42", "41")), "strong": ScriptedModel("strong", ("42",))},
                       pooling=ScriptedPRM(), tamper=record) as running:
        solution = step_router(running, ThresholdRouter(2.0), max_strong_tokens=10).solve(PROBLEM)
    assert strong_requests and strong_requests[0] == 10
    spent = 0
    for step, limit in zip([step for step in solution.steps if step.is_strong], strong_requests):
        assert limit == 10 - spent  # the request may decode only what is left of the cap
        spent += step.tokens


def test_a_server_reporting_more_strong_tokens_than_the_cap_allows_is_an_error_not_an_overrun():
    def overreport(body, answer):
        if body["model"] == "strong":
            answer["usage"]["completion_tokens"] = 10**6
        return answer

    with TestingServer({"weak": ScriptedModel("weak", ("42", "41")), "strong": ScriptedModel("strong", ("42",))},
                       pooling=ScriptedPRM(), tamper=overreport) as running:
        with pytest.raises(BackendError, match=r"usage.completion_tokens = 1000000 exceeds the request's max_tokens = 10"):
            step_router(running, ThresholdRouter(2.0), max_strong_tokens=10).solve(PROBLEM)


@pytest.mark.parametrize("problem", ["", "   ", "\n\t"])
def test_an_empty_problem_is_refused_before_any_model_is_asked(server, problem):
    asked_before = len(server.requests)
    with pytest.raises(ValueError, match="it is empty"):
        step_router(server, ThresholdRouter(0.0)).solve(problem)
    assert len(server.requests) == asked_before


def test_max_strong_steps_caps_rewrites_per_query(server):
    solution = step_router(server, ThresholdRouter(2.0), max_strong_steps=1).solve(PROBLEM)
    assert solution.escalations == 1 and solution.steps[0].is_strong
    assert [step.asked for step in solution.steps] == [True] + [False] * (len(solution.steps) - 1)


def test_max_steps_ends_the_solution(server):
    solution = step_router(server, ThresholdRouter(0.0), max_steps=1).solve(PROBLEM)
    assert len(solution.steps) == 1


# ----------------------------------------------------------------------------------------------
# Exported routers and the CLI


@pytest.mark.parametrize("kind", ["agg", "seq"])
def test_an_exported_learned_router_routes_live(server, tmp_path: Path, kind):
    seq = {"d_model": 16, "n_layers": 1, "n_heads": 2, "ff_dim": 16} if kind == "seq" else None
    dim = len(AGG_FEATURES) if kind == "agg" else MAX_STEPS * len(SEQ_CHANNELS)
    network = ActorNetwork(kind, dim, [16], "tanh", seq)
    config = {"policy": kind, "lambda": 0.01, "cost_unit_tokens": 10.0, "dataset_content_hash": "test", "kind": "actor",
              "observation": kind, "network": {"observation_dim": dim, "hidden": [16], "activation": "tanh", "seq": seq}}
    write_router(tmp_path / "router", config, network.state_dict())
    solution = step_router(server, load_router(tmp_path / "router")).solve(PROBLEM)
    assert solution.steps and all(step.asked for step in solution.steps)
    assert solution.mean_decision_ms > 0.0  # timed (scripts/bench_live.py measures it; tests do not assert speed)


def test_route_cli_prints_each_step_marked_weak_or_strong(server, tmp_path: Path):
    write_router(tmp_path / "router", {"policy": "thr", "lambda": 0.01, "cost_unit_tokens": 10.0, "dataset_content_hash": "test",
                                       "kind": "threshold", "observation": "agg", "threshold": 0.5})
    overrides = [
        "collect/generator@weak=openai", f"weak.base_url={server.base_url}", "weak.model=weak", "weak.api_key_env=null",
        "collect/generator@strong=openai", f"strong.base_url={server.base_url}", "strong.model=strong", "strong.api_key_env=null",
        "collect/prm@prm=vllm_pooling", f"prm.base_url={server.root_url}", "prm.model=prm", "prm.api_key_env=null",
        "max_strong_tokens=30",
    ]
    command = [sys.executable, "-m", "agents.cli.route", f"router={tmp_path / 'router'}", f'problem="{PROBLEM}"', "answer=42"]
    text = subprocess.run([*command, *overrides], capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert text.returncode == 0, text.stderr[-3000:]
    assert "[ 1 " in text.stdout and "prm=" in text.stdout and "strong tokens" in text.stdout
    record = subprocess.run([*command, "print_json=true", *overrides], capture_output=True, text=True, timeout=900, cwd=ROOT)
    solution = json.loads(record.stdout)
    assert solution["strong_tokens"] <= 30
    marks = {line.split()[2] for line in text.stdout.splitlines() if line.startswith("[")}
    assert marks <= {"W", "S"} and len(solution["steps"]) == sum(line.startswith("[") for line in text.stdout.splitlines())


def test_route_cli_refuses_an_api_key_given_as_a_variable_name_without_printing_it(server, tmp_path: Path):
    write_router(tmp_path / "router", {"policy": "thr", "lambda": 0.01, "cost_unit_tokens": 10.0, "dataset_content_hash": "test",
                                       "kind": "threshold", "observation": "agg", "threshold": 0.5})
    key = "sk-proj-Zq8xTESTKEY0000000000"
    command = [sys.executable, "-m", "agents.cli.route", f"router={tmp_path / 'router'}", f'problem="{PROBLEM}"',
               "collect/generator@weak=openai", f"weak.base_url={server.base_url}", "weak.model=weak", f"weak.api_key_env={key}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert result.returncode != 0
    assert "not the name of an environment variable" in result.stderr
    assert key not in result.stderr and key not in result.stdout
