"""Load test of trim-serve against stub upstreams on loopback: completeness, per-step server overhead, throughput, cancellation.

    python scripts/bench_serve.py [--requests 1000] [--clients 32] [--cancelled 1000] [--json OUT.json]
    python scripts/bench_serve.py --server cost=price --server cost.prefix_cache=true   # priced requests (usage.cost)

Three processes on 127.0.0.1: the stub upstream (:class:`trim_env.sources.testing.TestingServer`
with scripted weak/strong models and PRM), ``trim-serve`` itself (``python -m agents.cli.serve``,
a TRIM-Thr router at k = 0.5), and the clients here (asyncio + httpx).

1. ``--requests`` chat requests, one unique problem each, from ``--clients`` concurrent clients:
   every request must be answered once with 200 (ids unique, the server's ok count equal to the
   requests sent), and a sample is asked again one at a time and must get the same solution
   (answers were not swapped between clients). The server's own overhead per step is
   (client-measured latency − the upstream time the server reports in ``trim.upstream_ms``) / steps.
2. ``--cancelled`` streaming requests, each closed by its client right after the first step:
   afterwards no request and no upstream slot may still be held (``/health``), and a final batch
   must be served.

``--server KEY=VALUE`` passes further settings to ``trim-serve`` (e.g. a cost model: the figures
then include the mean ``usage.cost`` per request, to compare the overhead with and without metering).
The figures depend on the machine's load (the clients, the server and the stub share its cores).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from agents.export import write_router
from trim_env.sources.testing import ScriptedModel, ScriptedPRM, TestingServer

PATIENCE_S = 120.0


def run_stub(connection: Any) -> None:
    """Serve the stub upstream until told to stop (runs in its own process)."""
    with TestingServer({"weak": ScriptedModel("weak", ("42", "41")), "strong": ScriptedModel("strong", ("42",))},
                       pooling=ScriptedPRM()) as server:
        connection.send((server.base_url, server.root_url))
        connection.recv()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(router_dir: Path, base_url: str, root_url: str, port: int, settings: list[str]) -> subprocess.Popen:
    arguments = [
        sys.executable, "-m", "agents.cli.serve", f"routers.trim.path={router_dir}", f"port={port}", "log_level=warning",
        *(f"{role}.{field}" for role in ("weak", "strong")
          for field in (f"base_url={base_url}", "api_key_env=null", "max_retries=0", "max_concurrency=64")),
        "weak.model=weak", "strong.model=strong", f"prm.base_url={root_url}", "prm.model=prm", "prm.api_key_env=null",
        "prm.max_concurrency=64", "max_tokens_per_step=64", "upstream_concurrency.weak=64", "upstream_concurrency.strong=64",
        "upstream_concurrency.prm=64", "hydra.run.dir=.", "hydra.output_subdir=null", *settings,
    ]
    return subprocess.Popen(arguments, cwd=tempfile.mkdtemp(prefix="trim-serve-bench-"), env={**os.environ})


def wait_ready(root: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + PATIENCE_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"trim-serve exited with {process.returncode}")
        try:
            if httpx.get(root + "/health", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError("trim-serve did not come up")


def problem(index: int) -> str:
    return f"Problem {index}: what is {index} + {2 * index}?"


async def load(url: str, n_requests: int, n_clients: int) -> tuple[list[dict[str, Any]], float]:
    """Send the requests from ``n_clients`` workers; (one record per answer, wall seconds)."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(n_requests):
        queue.put_nowait(index)
    records: list[dict[str, Any]] = []
    limits = httpx.Limits(max_connections=n_clients, max_keepalive_connections=n_clients)

    async def client(http: httpx.AsyncClient) -> None:
        while not queue.empty():
            index = queue.get_nowait()
            body = {"model": "trim", "messages": [{"role": "user", "content": problem(index)}]}
            started = time.perf_counter()
            response = await http.post(url, json=body)
            latency_ms = 1000.0 * (time.perf_counter() - started)
            answer = response.json()
            records.append({"index": index, "status": response.status_code, "latency_ms": latency_ms, "answer": answer})

    async with httpx.AsyncClient(timeout=PATIENCE_S, limits=limits) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(n_clients)))
        return records, time.perf_counter() - started


async def cancel(url: str, n_requests: int, n_clients: int) -> int:
    """Streaming requests closed right after their first step; how many got a first step."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(n_requests):
        queue.put_nowait(index)
    first_steps = 0

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal first_steps
        while not queue.empty():
            index = queue.get_nowait()
            body = {"model": "trim", "stream": True, "messages": [{"role": "user", "content": problem(100_000 + index)}]}
            async with http.stream("POST", url, json=body) as response:
                async for line in response.aiter_lines():
                    if '"step"' in line:
                        first_steps += 1
                        break  # leaving the block closes the connection mid-solution

    # One connection per request, so that closing it is a disconnect the server sees.
    async with httpx.AsyncClient(timeout=PATIENCE_S, limits=httpx.Limits(max_keepalive_connections=0)) as http:
        await asyncio.gather(*(client(http) for _ in range(n_clients)))
    return first_steps


def counter(metrics: str, name: str, **labels: str) -> float:
    label_text = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    match = re.search(rf"^{name}\{{{re.escape(label_text)}\}} ([0-9.e+]+)$", metrics, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--cancelled", type=int, default=1000)
    parser.add_argument("--recheck", type=int, default=50, help="answers asked again one at a time and compared")
    parser.add_argument("--json", default=None, help="write the figures here")
    parser.add_argument("--server", action="append", default=[], metavar="KEY=VALUE", help="a further trim-serve setting (repeatable)")
    options = parser.parse_args()

    router_dir = write_router(Path(tempfile.mkdtemp(prefix="trim-bench-router-")) / "router",
                              {"kind": "threshold", "observation": "agg", "threshold": 0.5, "policy": "thr"})
    parent, child = multiprocessing.Pipe()
    stub = multiprocessing.Process(target=run_stub, args=(child,), daemon=True)
    stub.start()
    base_url, root_url = parent.recv()
    port = free_port()
    server = start_server(router_dir, base_url, root_url, port, options.server)
    root = f"http://127.0.0.1:{port}"
    url = root + "/v1/chat/completions"
    try:
        wait_ready(root, server)
        asyncio.run(load(url, options.clients, options.clients))  # warm-up: connections, the continuation probe
        warm_ok = counter(httpx.get(root + "/metrics").text, "trim_requests_total", outcome="ok", router="trim")

        records, wall_s = asyncio.run(load(url, options.requests, options.clients))
        metrics = httpx.get(root + "/metrics").text
        statuses = [record["status"] for record in records]
        ids = {record["answer"].get("id") for record in records}
        served_ok = counter(metrics, "trim_requests_total", outcome="ok", router="trim") - warm_ok
        indices = sorted(record["index"] for record in records)
        complete = (statuses.count(200) == options.requests and len(ids) == options.requests
                    and indices == list(range(options.requests)) and served_ok == options.requests)
        by_index = {record["index"]: record["answer"] for record in records}
        mismatched = 0
        with httpx.Client(timeout=PATIENCE_S) as http:
            for index in np.random.default_rng(0).choice(options.requests, size=min(options.recheck, options.requests), replace=False):
                again = http.post(url, json={"model": "trim", "messages": [{"role": "user", "content": problem(int(index))}]}).json()
                mismatched += again["choices"][0]["message"]["content"] != by_index[int(index)]["choices"][0]["message"]["content"]
        steps = np.array([len(record["answer"]["trim"]["steps"]) for record in records])
        latency = np.array([record["latency_ms"] for record in records])
        upstream = np.array([record["answer"]["trim"]["upstream_ms"] for record in records])
        overhead = (latency - upstream) / steps
        decisions = np.array([entry["decision_ms"] for record in records for entry in record["answer"]["trim"]["steps"]])
        costs = [record["answer"]["usage"]["cost"] for record in records if "cost" in record["answer"].get("usage", {})]

        first_steps = asyncio.run(cancel(url, options.cancelled, options.clients))
        deadline = time.monotonic() + PATIENCE_S
        while (status := httpx.get(root + "/health").json())["requests_in_flight"] and time.monotonic() < deadline:
            time.sleep(0.1)
        held_slots = {role: entry["in_flight"] for role, entry in status["upstreams"].items()}
        metrics = httpx.get(root + "/metrics").text
        cancelled = counter(metrics, "trim_requests_total", outcome="cancelled", router="trim")
        after, _ = asyncio.run(load(url, options.clients, options.clients))
        figures = {
            "requests": options.requests, "clients": options.clients, "answered_200": statuses.count(200),
            "unique_ids": len(ids), "server_ok_count": served_ok, "complete": complete, "recheck_mismatches": mismatched,
            "requests_per_s": options.requests / wall_s, "steps_per_request_mean": float(steps.mean()),
            "latency_ms_p50": float(np.percentile(latency, 50)), "latency_ms_p99": float(np.percentile(latency, 99)),
            "overhead_ms_per_step_p50": float(np.percentile(overhead, 50)),
            "overhead_ms_per_step_p99": float(np.percentile(overhead, 99)),
            "decision_ms_p50": float(np.percentile(decisions, 50)), "decision_ms_p99": float(np.percentile(decisions, 99)),
            "server_settings": options.server,
            **({"cost_natural_per_request_mean": statistics.fmean(cost["natural"] for cost in costs),
                "cost_natural_unit": costs[0]["natural_unit"]} if costs else {}),
            "cancelled_requests": options.cancelled, "cancelled_after_first_step": first_steps,
            "server_cancelled_count": cancelled, "requests_in_flight_after": status["requests_in_flight"],
            "upstream_slots_held_after": held_slots,
            "served_after_cancellations": sum(record["status"] == 200 for record in after),
            "failed_after_cancellations": [{"status": record["status"], "answer": record["answer"]} for record in after
                                           if record["status"] != 200],
            "load_average": os.getloadavg(),
        }
    finally:
        server.terminate()
        server.wait(PATIENCE_S)
        parent.send("stop")
        stub.join(PATIENCE_S)
    print(json.dumps(figures, indent=2))
    if options.json:
        Path(options.json).write_text(json.dumps(figures, indent=2) + "\n")
    ok = (figures["complete"] and not mismatched and status["requests_in_flight"] == 0 and not any(held_slots.values())
          and figures["served_after_cancellations"] == options.clients)
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
