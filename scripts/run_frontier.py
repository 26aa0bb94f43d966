"""The whole frontier study on a dataset in one command: sweeps, baselines and the report.

Runs, each in its own run dir under ``out/runs``: the TRIM-Thr threshold sweep
(``scripts/evaluate.py``), all baselines and the hindsight oracle (``scripts/baselines.py``), and
for each learned policy a Hydra multirun of ``train.py`` over the policy's λ grid
(``sweep_lambdas`` in ``conf/policy/<name>.yaml``) and the seeds, jobs in parallel on the local
cores; a λ-conditioned policy (``lambda_range`` set, e.g. ``agg_conditioned``) is one run per
seed. A grid is then extended to smaller λ (the next value is half the smallest) until the
policy's own points reach PGR ≥ 0.95 (mean over seeds at one λ) or stop improving (less than
0.01 PGR gained by the last extension). Finally
``scripts/frontier.py`` writes the report with the real TRIM-Thr frontier drawn beside the
simulated ones (in strong tokens only: the real figures count nothing else). Prints the wall time
of each stage and writes them to ``out/study_times.json``.

The ``cost=`` group (and its keys, e.g. ``cost.prefix_cache=true``) is passed on to every stage,
so the whole study is trained, evaluated and reported in that cost model. A cost unit is 1/480 of
a strong-only query in every model, but a rewrite costs more units under some (``price`` and
``flops`` also pay its prefill and its scoring), so one λ grid sweeps different parts of the
frontier in different models; ``match_rewrite_penalty=true`` multiplies the grids by
:func:`trim_env.cost.rewrite_penalty_scale` (measured on the train split) so that a λ charges a
rewrite as much, on average, as in strong tokens. A stage whose run dir
already holds all its results (``results.json`` of every job) is skipped, so an interrupted study
resumes where it stopped; delete a run dir to run it again.

Usage (a Hydra app, ``conf/run_frontier.yaml``; ``--help`` lists the settings)::

    python scripts/run_frontier.py out=cached_rollouts/frontier                        # Thr, baselines, Agg, Seq, POMDP
    python scripts/run_frontier.py out=report/ 'policies=[agg]' 'seeds=[0]'            # a quick look
    python scripts/run_frontier.py out=report/ data_path=DIR                           # another dataset
    python scripts/run_frontier.py out=report/ cost=price cost.prefix_cache=true       # in dollars
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import hydra
from hydra import compose
from omegaconf import DictConfig, OmegaConf

from agents.cli.common import read_bool, read_int, register_schemas, settings_of
from agents.registry import registry
from trim_env import atomic
from trim_env.cost import rewrite_penalty_scale
from trim_env.data import load_trees
from trim_env.paths import config_dir

ROOT = Path(__file__).resolve().parents[1]
#: A grid stops being extended once its best point recovers this much of the gap...
TARGET_PGR = 0.95
#: ...or once an extension gains less than this.
MIN_GAIN = 0.01
MAX_EXTENSIONS = 4


def stage(name: str, command: list[str], times: dict[str, float], done: Path | None = None, expected_results: int = 1) -> None:
    """Run one stage, stream its output, stop everything if it fails; adds its wall time to ``times``.

    :param done: the stage's run dir: if it already holds ``expected_results`` results.json files,
        the stage is skipped (a resumed study).
    """
    if done is not None and len(list(done.rglob("results.json"))) >= expected_results:
        print(f"\n== {name}: skipped, {done} holds its results", flush=True)
        return
    print(f"\n== {name}: {' '.join(command)}", flush=True)
    started = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True)
    elapsed = time.perf_counter() - started
    times[name] = times.get(name, 0.0) + elapsed
    print(f"== {name} took {elapsed:.1f} s", flush=True)


def best_mean_pgr(sweep_dirs: list[Path], policy: str) -> tuple[float, float]:
    """(best PGR of the per-λ means over seeds, the λ where it is reached) of ``policy``'s runs."""
    by_lambda: dict[float, list[float]] = defaultdict(list)
    for sweep_dir in sweep_dirs:
        for path in sweep_dir.rglob("results.json"):
            try:
                points = json.loads(path.read_text())["points"]
                pgrs = [(float(p["lambda"]), float(p["pgr"])) for p in points if p["policy"] == policy]
            except (OSError, ValueError, KeyError, TypeError) as error:
                print(f"run_frontier.py: skipping unreadable {path} ({error!r})", file=sys.stderr, flush=True)
                continue
            for lam, pgr in pgrs:
                by_lambda[lam].append(pgr)
    if not by_lambda:
        raise RuntimeError(f"no {policy} results under {[str(d) for d in sweep_dirs]}")
    best_lambda, best_pgrs = max(by_lambda.items(), key=lambda item: sum(item[1]) / len(item[1]))
    return sum(best_pgrs) / len(best_pgrs), best_lambda


def sweep_policy(policy: str, lambdas: list[float], seeds: list[str], runs: Path, data: list[str], times: dict[str, float]) -> None:
    """The policy's λ grid over the seeds, extended to smaller λ while that still recovers more of the gap."""
    python = sys.executable
    sweep_dirs: list[Path] = []

    def run(values: list[float], label: str) -> None:
        sweep_dir = runs / f"{policy}-{label}"
        sweep_dirs.append(sweep_dir)
        stage(
            f"{policy} {label}",
            [python, "train.py", "-m", f"policy={policy}", "lambda=" + ",".join(f"{v:g}" for v in values),
             f"seed={','.join(seeds)}", "progress_bar=false", f"hydra.sweep.dir={sweep_dir}", *data],
            times, sweep_dir, len(values) * len(seeds),
        )

    run(lambdas, "grid")
    best, _ = best_mean_pgr(sweep_dirs, policy)
    smallest = min(lambdas)
    for extension in range(1, MAX_EXTENSIONS + 1):
        if best >= TARGET_PGR:
            print(f"== {policy}: own points reach PGR {best:.3f} >= {TARGET_PGR}", flush=True)
            return
        smallest /= 2
        run([smallest], f"extension{extension}")
        previous, (best, _) = best, best_mean_pgr(sweep_dirs, policy)
        if best - previous < MIN_GAIN:
            print(f"== {policy}: stopped improving at PGR {best:.3f} (λ = {smallest:g} gained {best - previous:+.3f})", flush=True)
            return
    print(f"== {policy}: PGR {best:.3f} after {MAX_EXTENSIONS} extensions", flush=True)


def train_conditioned(policy: str, seeds: list[str], runs: Path, data: list[str], times: dict[str, float],
                      scaled: list[str] | None = None) -> None:
    """A λ-conditioned policy: one run per seed gives its whole curve (a test point per λ of its grid).

    :param scaled: overrides of its λ range and grid when they are scaled (``match_rewrite_penalty``).
    """
    sweep_dir = runs / f"{policy}-seeds"
    stage(f"{policy} seeds", [sys.executable, "train.py", "-m", f"policy={policy}", f"seed={','.join(seeds)}", "progress_bar=false",
                              f"hydra.sweep.dir={sweep_dir}", *(scaled or []), *data], times, sweep_dir, len(seeds))


def _values(values: list[float]) -> str:
    return "[" + ",".join(f"{v:g}" for v in values) + "]"


def lambda_scale(cfg: DictConfig) -> float:
    """The factor of every λ grid: :func:`~trim_env.cost.rewrite_penalty_scale` on the train split
    with ``match_rewrite_penalty``, else 1."""
    if not read_bool(cfg, "match_rewrite_penalty") or cfg.cost.name == "strong_tokens":
        return 1.0
    trees = load_trees(path=cfg.data_path, split="train", grow=False)
    scale = rewrite_penalty_scale(settings_of(cfg.cost), trees)
    print(f"== λ grids x {scale:.4g}: a rewrite costs {1 / scale:.3g} x its strong tokens in cost={cfg.cost.name} units "
          "on average (train split)", flush=True)
    return scale


def check_study(cfg: DictConfig) -> tuple[list[str], list[str]]:
    """``(policies, seeds)`` of the config, refusing what the stages would fail on late (before any stage runs)."""
    if OmegaConf.is_missing(cfg, "out"):
        raise ValueError("out is missing: give the study's directory, e.g. python scripts/run_frontier.py out=cached_rollouts/frontier")
    policies = [str(name) for name in cfg.policies]
    for index, name in enumerate(policies):
        registry().policy(name)  # an unknown name is an error listing the registered policies
        if compose("config", [f"policy={name}"]).policy.get("sweep_lambdas") is None:
            raise ValueError(f"policies[{index}] = {name!r} has no sweep_lambdas (λ grid) in its settings to sweep")
    if not cfg.seeds:
        raise ValueError("seeds is empty; give at least one training seed")
    seeds = [str(read_int(cfg, f"seeds[{index}]", minimum=0)) for index in range(len(cfg.seeds))]
    return policies, seeds


def cost_overrides(cost: DictConfig) -> list[str]:
    """The study's cost model as overrides of a stage: ``cost=<name>`` and ``cost.<key>=<value>`` for
    each setting that differs from that option's default (few keys: they name multirun job dirs)."""
    model = settings_of(cost)  # refuses a bad value here, naming the key, before any stage runs
    default = type(model)().to_dict()  # each conf/cost option is its dataclass's defaults
    leaves: list[str] = [f"cost={cost.name}"]

    def differing(prefix: str, node: Any, default: Any) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                differing(f"{prefix}{key}.", value, default[key])
            elif value != default[key]:
                leaves.append(f"{prefix}{key}={json.dumps(value)}")

    differing("cost.", model.to_dict(), default)
    return leaves


@hydra.main(config_path=str(config_dir()), config_name="run_frontier", version_base="1.3")
def _app(cfg: DictConfig) -> None:
    try:
        policies, seeds = check_study(cfg)
    except ValueError as error:  # RegistryError included
        raise SystemExit(f"run_frontier.py: {error}") from None
    out = Path(str(cfg.out)).resolve()
    runs = out / "runs"
    data = [f"data.path={cfg.data_path}"] if cfg.data_path is not None else []
    data += cost_overrides(cfg.cost)
    python = sys.executable
    times: dict[str, float] = {}
    started = time.perf_counter()
    scale = lambda_scale(cfg)
    stage("thr", [python, "scripts/evaluate.py", "policy=thr", f"hydra.run.dir={runs / 'thr'}", *data], times, runs / "thr")
    stage("baselines", [python, "scripts/baselines.py", f"hydra.run.dir={runs / 'baselines'}", *data], times, runs / "baselines")
    for policy in policies:
        config = compose("config", [f"policy={policy}"]).policy  # with the settings dataclass's defaults
        # A policy that is solved, not trained (TRIM-POMDP), gives the same router for every seed.
        policy_seeds = seeds if config.get("total_timesteps") is not None else seeds[:1]
        if config.get("lambda_range") is not None:
            scaled = None if scale == 1.0 else [f"policy.lambda_range={_values([scale * float(v) for v in config.lambda_range])}",
                                                 f"policy.sweep_lambdas={_values([scale * float(v) for v in config.sweep_lambdas])}"]
            train_conditioned(policy, policy_seeds, runs, data, times, scaled)
        else:
            sweep_policy(policy, [scale * float(v) for v in config.sweep_lambdas], policy_seeds, runs, data, times)
    # The real overlay counts strong tokens: only a strong-token study is drawn beside it.
    real = ["real_reference=packaged"] if cfg.cost.name == "strong_tokens" else []
    stage("report", [python, "scripts/frontier.py", f"paths=[{runs}]", f"out={out}", *real], times)
    total = time.perf_counter() - started
    print("\nwall time: " + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in times.items()) + f"; total {total:.0f} s")
    atomic.write_json(out / "study_times.json", {"stages_s": times, "total_s": total, "lambda_scale": scale})


def main() -> None:
    """Register the policies' settings dataclasses (the study reads their λ grids), then run."""
    register_schemas()
    _app()


if __name__ == "__main__":
    main()
