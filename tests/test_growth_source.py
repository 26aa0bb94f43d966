"""Growing collected trees with real-model backends: only missing children are asked for, each batch is on
disk before it is used, grown nodes equal breadth-first collection's, a token budget stops a run cleanly,
a backend failure loses nothing, entry points exit with the budget's message and reruns replay.

Datasets are collected with K = 1 (and K = 2 for comparison) from the deterministic scripted models
behind the OpenAI-compatible test server on 127.0.0.1, as in ``tests/test_collect.py``; growth asks
the same kind of server. Server request logs and the source's stats count the backend calls.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agents.threshold import ThresholdRouter
from trim_env.data import growth_source, open_split
from trim_env.evaluation import reference, run_episodes, summarize
from trim_env.sources.base import BackendError
from trim_env.sources.collect import collect
from trim_env.sources.factory import make_backends
from trim_env.sources.growth import BackendSource, backend_source
from trim_env.sources.problems import Problem
from trim_env.sources.query_tree import CollectSettings, path_actions
from trim_env.sources.testing import ScriptedModel, ScriptedPRM, TestingServer
from trim_env.store import GrowingTrees, GrowthBudgetSpent, GrowthJournal
from trim_env.tree import TreeFormatError, load_split, read_manifest, save_dataset

ROOT = Path(__file__).resolve().parents[1]
PROBLEMS = [Problem(f"q{i}", f"Problem number {i}: what is {i} + 1?", f"#### {i % 2 + 1}") for i in range(8)]
SEED = 3


def scripted_server() -> TestingServer:
    return TestingServer({"weak": ScriptedModel("weak"), "strong": ScriptedModel("strong")}, pooling=ScriptedPRM())


def backend_configs(generators: TestingServer, prm: TestingServer | None = None, prm_retries: int = 5) -> dict[str, Any]:
    """``data.backends`` of the scripted servers: the weak model over /completions, the strong one over chat."""
    prm = prm or generators
    common = {"kind": "openai", "base_url": generators.base_url, "api_key_env": None, "backoff_s": 0.01}
    return {
        "weak": {**common, "model": "weak", "api": "completions", "prompt_template": "chatml"},
        "strong": {**common, "model": "strong"},
        "prm": {"kind": "vllm_pooling", "base_url": prm.root_url, "model": "prm", "api_key_env": None,
                "max_retries": prm_retries, "backoff_s": 0.01},
    }


def collect_scripted(out: Path, max_strong_steps: int) -> None:
    with scripted_server() as server:
        config = backend_configs(server)
        weak, strong, prm = make_backends({**config, "max_tokens_per_step": 64})
        asyncio.run(collect(PROBLEMS, weak, strong, prm, CollectSettings(max_strong_steps, seed=SEED), out,
                            test_fraction=0.25, progress_bar=False))


@pytest.fixture(scope="module")
def collected(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """The same problems collected with K = 1 and K = 2 (read-only: tests copy them)."""
    base = tmp_path_factory.mktemp("collected")
    for k in (1, 2):
        collect_scripted(base / f"k{k}", k)
    return {1: base / "k1", 2: base / "k2"}


@pytest.fixture
def k1_copy(collected: dict[int, Path], tmp_path: Path) -> Path:
    copy = tmp_path / "k1"
    shutil.copytree(collected[1], copy)
    return copy


@pytest.fixture(scope="module")
def server():
    with scripted_server() as running:
        yield running


def generator_requests(server: TestingServer) -> list[dict[str, Any]]:
    return [request for request in server.requests if request["path"] != "/pooling"]


def open_growing(directory: Path, server: TestingServer, split: str = "train", **settings: Any) -> GrowingTrees:
    store = open_split(directory, split, source=backend_source(directory, {**backend_configs(server), **settings}))
    assert isinstance(store, GrowingTrees)
    return store


def nodes_by_path(trees) -> dict[tuple[str, str], int]:
    """Node id of each (query id, path letters)."""
    return {(trees.query_id[trees.query[node]], path_actions(trees.step_is_strong[trees.path(node)])): node
            for node in range(trees.num_nodes)}


def open_strong_nodes(trees, strong_steps: int) -> np.ndarray:
    """Non-terminal nodes with ``strong_steps`` strong steps on their path and no strong child."""
    return np.flatnonzero(~trees.terminal & (trees.strong_steps == strong_steps) & (trees.strong_child < 0))


# ----------------------------------------------------------------------------------------------
# Growing and persisting


def test_growth_asks_only_for_missing_children_and_persists_them_past_the_cap(k1_copy: Path, server: TestingServer):
    store = open_growing(k1_copy, server)
    stored = store.num_nodes
    asked_before = len(generator_requests(server))
    store.grow_complete(max_strong_steps=2)
    grown = store.num_nodes - stored
    source = store.source
    assert isinstance(source, BackendSource)
    # one generator request and one PRM request per new node: nothing stored was asked for again
    assert grown > 0 and len(generator_requests(server)) - asked_before == grown
    assert source.stats.nodes_grown == grown == source.stats.weak_calls + source.stats.strong_calls == source.stats.prm_calls
    assert (store.strong_steps == 2).any()  # past the collection's K = 1
    assert GrowthJournal(k1_copy / "train").read().num_rows == grown
    frozen = open_split(k1_copy, "train", grow=False)
    assert frozen.num_nodes == store.num_nodes and not frozen.can_grow
    assert set(nodes_by_path(frozen)) == set(nodes_by_path(store))
    assert all(text for text, parent in zip(frozen.step_text, frozen.parent) if parent >= 0)


def test_a_grown_node_is_on_disk_before_the_call_that_grew_it_returns(k1_copy: Path, server: TestingServer):
    store = open_growing(k1_copy, server)
    parents = open_strong_nodes(store, strong_steps=1)[:3]
    store.grow_strong(parents)
    grown_keys = set(store.key[store.strong_child[parents]].tolist())
    assert store.journal is not None and store.journal.pending_rows == 0
    on_disk = GrowthJournal(k1_copy / "train").read()  # a reader that shares nothing with the store
    assert grown_keys <= set(on_disk.column("key").to_pylist())


def test_a_grown_node_equals_the_node_breadth_first_collection_with_a_larger_k_wrote(
    collected: dict[int, Path], k1_copy: Path, server: TestingServer
):
    store = open_growing(k1_copy, server)
    rewritten = open_strong_nodes(store, strong_steps=1)
    store.grow_strong(rewritten)
    strong_children = store.strong_child[rewritten]
    store.grow_weak(strong_children[~store.terminal[strong_children]])
    # the strong rewrites past K = 1 and the first weak step after each: the requests collection sent
    grown = np.concatenate([strong_children, store.weak_child[strong_children[~store.terminal[strong_children]]]])
    k2 = load_split(collected[2], "train")
    k2_nodes, grown_nodes = nodes_by_path(k2), nodes_by_path(store)
    compared = 0
    for path, node in grown_nodes.items():
        if node not in grown:
            continue
        twin = k2_nodes[path]
        assert store.step_text[node] == k2.step_text[twin], path
        assert (store.step_tokens[node], store.step_prm[node]) == (k2.step_tokens[twin], k2.step_prm[twin]), path
        assert (store.terminal[node], store.correct[node]) == (k2.terminal[twin], k2.correct[twin]), path
        compared += 1
    assert compared == grown.size > 0


# ----------------------------------------------------------------------------------------------
# Budget and failures


def test_a_spent_token_budget_stops_growth_with_its_message_and_a_rerun_continues_without_asking_again(
    collected: dict[int, Path], tmp_path: Path, server: TestingServer
):
    uninterrupted = tmp_path / "uninterrupted"
    shutil.copytree(collected[1], uninterrupted)
    whole = open_growing(uninterrupted, server)
    whole.grow_complete(max_strong_steps=2)
    assert isinstance(whole.source, BackendSource)
    calls_needed = whole.source.stats.weak_calls + whole.source.stats.strong_calls

    stopped = tmp_path / "stopped"
    shutil.copytree(collected[1], stopped)
    first = open_growing(stopped, server, max_new_tokens=150)
    with pytest.raises(GrowthBudgetSpent, match=r"max_new_tokens = 150.*nodes grown so far are kept on disk") as spent:
        first.grow_complete(max_strong_steps=2)
    source = first.source
    assert isinstance(source, BackendSource)
    assert str(source.stats.decoded_tokens) in str(spent.value)
    assert source.stats.decoded_tokens >= 150 and not source.available() and not first.can_grow
    assert 0 < source.stats.nodes_grown < whole.source.stats.nodes_grown
    assert GrowthJournal(stopped / "train").read().num_rows == source.stats.nodes_grown

    second = open_growing(stopped, server)
    second.grow_complete(max_strong_steps=2)
    assert isinstance(second.source, BackendSource)
    # the rerun asked only for what the first run had not grown
    assert source.stats.weak_calls + source.stats.strong_calls + second.source.stats.weak_calls + second.source.stats.strong_calls == calls_needed
    assert set(nodes_by_path(second)) == set(nodes_by_path(whole))


def test_a_prm_failing_mid_batch_loses_nothing_persisted_and_the_batch_grows_again(k1_copy: Path, server: TestingServer):
    parents = open_strong_nodes(load_split(k1_copy, "train"), strong_steps=1)
    first_parents, failing_parents = parents[:2], parents[2:]
    with TestingServer({}, pooling=ScriptedPRM()) as prm_server:
        store = open_split(k1_copy, "train", source=backend_source(k1_copy, backend_configs(server, prm_server, prm_retries=1)))
        store.grow_strong(first_parents)
        persisted = GrowthJournal(k1_copy / "train").read().num_rows
        prm_server.inject(*["500"] * (2 * len(failing_parents)))  # every attempt of every request of the batch
        with pytest.raises(BackendError, match="failed 2 attempts"):
            store.grow_strong(failing_parents)
    assert persisted == len(first_parents)
    assert GrowthJournal(k1_copy / "train").read().num_rows == persisted  # nothing half-written, nothing lost
    frozen = open_split(k1_copy, "train", grow=False)
    assert frozen.num_nodes == load_split(k1_copy, "train").num_nodes + persisted

    with TestingServer({}, pooling=ScriptedPRM()) as prm_server:
        rerun = open_split(k1_copy, "train", source=backend_source(k1_copy, backend_configs(server, prm_server)))
        rerun.grow_strong(parents)
    assert isinstance(rerun.source, BackendSource)
    assert rerun.source.stats.strong_calls == len(failing_parents)  # the persisted ones are replayed
    assert (rerun.strong_child[parents] >= 0).all()


# ----------------------------------------------------------------------------------------------
# What the source refuses


@pytest.mark.parametrize(("field", "file_name"), [("step_text", "nodes.parquet"), ("problem", "queries.parquet")])
def test_a_split_without_its_text_is_refused_naming_file_and_field(
    collected: dict[int, Path], tmp_path: Path, server: TestingServer, field: str, file_name: str
):
    splits = {split: load_split(collected[1], split) for split in ("train", "test")}
    for trees in splits.values():
        setattr(trees, field, None)
    manifest = read_manifest(collected[1])
    save_dataset(tmp_path / "textless", splits, manifest["source"], manifest["max_strong_steps"], None)
    weak, strong, prm = make_backends({**backend_configs(server), "max_tokens_per_step": 64})
    with pytest.raises(TreeFormatError, match=rf"train/{file_name}: field '{field}' is missing or null"):
        open_split(tmp_path / "textless", "train", source=BackendSource(weak, strong, prm, seed=SEED))


def test_backends_are_refused_for_a_simulated_dataset_and_for_other_models(
    collected: dict[int, Path], tiny_dataset_dir: Path, server: TestingServer
):
    with pytest.raises(ValueError, match=r"source.kind is 'simulator'; data.backends grows datasets collected from real models"):
        backend_source(tiny_dataset_dir, backend_configs(server))
    warmer = backend_configs(server)
    warmer["strong"]["temperature"] = 1.0
    with pytest.raises(ValueError, match=r"source.strong.sampling is .* data.backends.strong gives"):
        backend_source(collected[1], warmer)
    with pytest.raises(ValueError, match="field 'max_new_token' is not a setting"):
        backend_source(collected[1], {**backend_configs(server), "max_new_token": 10})
    assert growth_source(collected[1], None) is None


# ----------------------------------------------------------------------------------------------
# The batch evaluator and the entry points


def test_the_batch_evaluator_over_a_growing_collected_split_never_binds_the_cap_and_replays_from_disk(
    k1_copy: Path, server: TestingServer
):
    router = ThresholdRouter(0.6)
    frozen = open_split(k1_copy, "train")  # no backends: frozen at K = 1, as before
    assert summarize(run_episodes(frozen, router), reference(frozen))["cap_binding_rate"] > 0

    growing = open_growing(k1_copy, server)
    outcomes = run_episodes(growing, router)
    assert summarize(outcomes, reference(growing))["cap_binding_rate"] == 0.0
    assert isinstance(growing.source, BackendSource) and growing.source.stats.nodes_grown > 0

    asked_before = len(server.requests)
    replayed = open_growing(k1_copy, server)
    again = run_episodes(replayed, router)
    assert len(server.requests) == asked_before and replayed.source.stats.nodes_grown == 0  # type: ignore[union-attr]
    for name in ("correct", "strong_tokens", "escalations", "steps"):
        assert np.array_equal(getattr(again, name), getattr(outcomes, name)), name


def backend_overrides(server: TestingServer, max_new_tokens: int) -> list[str]:
    """``+data/backends=openai`` pointed at the scripted server, as the collection's backends were."""
    return [
        "+data/backends=openai", f"data.backends.max_new_tokens={max_new_tokens}",
        f"data.backends.weak.base_url={server.base_url}", "data.backends.weak.model=weak", "data.backends.weak.api=completions",
        "data.backends.weak.api_key_env=null", f"data.backends.strong.base_url={server.base_url}", "data.backends.strong.model=strong",
        "data.backends.strong.api_key_env=null", f"data.backends.prm.base_url={server.root_url}", "data.backends.prm.model=prm",
        "data.backends.prm.api_key_env=null",
    ]


def run_script(script: str, *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, script, *arguments], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_entry_points_exit_with_the_budget_message_and_a_rerun_replays_what_was_grown(
    collected: dict[int, Path], k1_copy: Path, tmp_path: Path, server: TestingServer
):
    evaluate = ["policy=thr", "policy.thresholds=[0.6,1.1]", f"data.path={k1_copy}", "data.split=train"]
    asked_before = len(generator_requests(server))
    spent = run_script("scripts/evaluate.py", *evaluate, *backend_overrides(server, 100), f"hydra.run.dir={tmp_path / 'spent'}")
    assert spent.returncode == 1
    assert "trim-evaluate: growth budget spent" in spent.stderr and "max_new_tokens = 100" in spent.stderr
    first_run = generator_requests(server)[asked_before:]
    assert first_run and GrowthJournal(k1_copy / "train").read().num_rows == len(first_run)

    done = run_script("scripts/evaluate.py", *evaluate, *backend_overrides(server, 100_000), f"hydra.run.dir={tmp_path / 'done'}")
    assert done.returncode == 0, done.stderr[-3000:]
    second_run = generator_requests(server)[asked_before + len(first_run):]
    assert second_run and not {json.dumps(r["body"], sort_keys=True) for r in first_run} & {
        json.dumps(r["body"], sort_keys=True) for r in second_run
    }  # what the first run grew is replayed from disk, never asked again
    points = json.loads((tmp_path / "done" / "results.json").read_text())["points"]
    assert [point["cap_binding_rate"] for point in points[2:]] == [0.0, 0.0]

    untouched = tmp_path / "untouched"
    shutil.copytree(collected[1], untouched)
    trained = run_script("train.py", "policy=thr", f"data.path={untouched}", "progress_bar=false",
                         *backend_overrides(server, 0), f"hydra.run.dir={tmp_path / 'train'}")
    assert trained.returncode == 1 and "trim-train: growth budget spent" in trained.stderr
    assert not (tmp_path / "train" / "results.json").exists()
