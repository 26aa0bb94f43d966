"""Tests for scripts/cost_study.py: settings checks, the re-scored routers it finds, and its report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from test_frontier import load_script

from agents.cli import frontier

ROOT = Path(__file__).resolve().parents[1]
COST_STUDY = ROOT / "scripts" / "cost_study.py"
WEAK, STRONG = 0.4, 0.8


def _point(policy: str, cost: float, pgr: float, seed: int | None = None) -> dict[str, Any]:
    point = {"policy": policy, "accuracy": WEAK + (STRONG - WEAK) * pgr, "strong_tokens_per_query": 480.0 * cost, "cost_per_query": 480.0 * cost,
             "parameter": cost}
    return point if seed is None else {**point, "seed": seed}


def _study(out: Path, name: str, cost: dict[str, Any], weak_cost: float, points: list[dict[str, Any]]) -> dict[str, Any]:
    """A cost model's run dir with one results.json and its frontier report, as run_frontier leaves them."""
    run = out / name / "runs" / "thr"
    run.mkdir(parents=True)
    anchors = [_point("weak-only", weak_cost, 0.0), _point("strong-only", 1.0, 1.0)]
    (run / "results.json").write_text(json.dumps({"config": {"cost": cost}, "points": anchors + points}))
    frontier.write_report([str(out / name / "runs")], out / name)
    return json.loads((out / name / "frontier.json").read_text())


def test_the_report_tabulates_each_models_frontier_apgr(tmp_path: Path) -> None:
    module = load_script("cost_study")
    # Under strong tokens (weak-only free) and under price (weak-only at c_w = 0.25).
    free = _study(tmp_path, "strong_tokens", {"name": "strong_tokens"}, 0.0,
                  [_point("thr", 0.2, 0.5), _point("thr", 0.5, 0.9), _point("agg", 0.3, 0.8, seed=0), _point("agg", 0.3, 0.6, seed=1)])
    priced = _study(tmp_path, "price", {"name": "price"}, 0.25, [_point("thr", 0.5, 0.5), _point("router:agg", 1.5, 1.0)])
    overrides = {"strong_tokens": ["cost=strong_tokens"], "price": ["cost=price"]}
    models = module.write_report(tmp_path, overrides, ["thr", "agg", "router:agg"])
    assert models["price"]["anchors"]["weak_cost"] == pytest.approx(0.25)
    assert models["strong_tokens"]["methods"]["agg"]["apgr"] == pytest.approx(free["methods"]["agg"]["apgr"]["value"])
    assert models["strong_tokens"]["methods"]["agg"]["apgr_sd"] is not None  # two seeds
    markdown = (tmp_path / "cost_study.md").read_text()
    assert "simulated" in markdown
    thr_row = next(line for line in markdown.splitlines() if line.startswith("| thr |"))
    assert f"{free['methods']['thr']['apgr']['value']:.3f}" in thr_row and f"{priced['methods']['thr']['apgr']['value']:.3f}" in thr_row
    # A method measured under one model only has a dash in the other column.
    assert next(line for line in markdown.splitlines() if line.startswith("| router:agg |")) == "| router:agg | — | 0.225 |"
    assert "| price | `cost=price` | 0.250 |" in markdown
    assert (tmp_path / "cost_study.png").stat().st_size > 0
    figure = module.draw(models, ["thr", "agg", "router:agg"])
    assert [text.get_text() for text in figure.legends[0].get_texts()] == ["thr", "agg", "router:agg"]  # from every panel
    content = json.loads((tmp_path / "cost_study.json").read_text())
    assert content["overrides"] == overrides and set(content["models"]) == {"strong_tokens", "price"}


def test_the_routers_rescored_are_the_first_studys_exports_of_the_policy(tmp_path: Path) -> None:
    module = load_script("cost_study")
    for job in ("agg-grid/lambda=0.01,seed=0", "agg-extension1/lambda=0.0005,seed=0", "pomdp-grid/lambda=0.01,seed=0"):
        (tmp_path / "runs" / job / "router").mkdir(parents=True)
        (tmp_path / "runs" / job / "router" / "config.json").write_text("{}")
    found = module.trained_routers(tmp_path, "agg")
    assert [path.parent.name for path in found] == ["lambda=0.0005,seed=0", "lambda=0.01,seed=0"]


def test_rescoring_skips_routers_already_evaluated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = load_script("cost_study")
    commands: list[list[str]] = []
    monkeypatch.setattr(module, "run", lambda name, command, times: commands.append(command))
    (tmp_path / "target" / "000").mkdir(parents=True)
    (tmp_path / "target" / "000" / "results.json").write_text("{}")
    (tmp_path / "lambda=0.01,seed=1").mkdir()
    (tmp_path / "lambda=0.01,seed=1" / "results.json").write_text(json.dumps({"points": [{"policy": "agg", "seed": 1}]}))
    module.rescore([tmp_path / "a" / "router", tmp_path / "lambda=0.01,seed=1" / "router"], tmp_path / "target", ["cost=price"], [], {}, "price")
    (command,) = commands
    assert f"policy.path='{tmp_path / 'lambda=0.01,seed=1' / 'router'}'" in command and "cost=price" in command
    assert "policy.seed=1" in command  # the training run's seed
    assert f"hydra.run.dir={tmp_path / 'target' / '001'}" in command


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ([], "out is missing"),
        (["out=OUT", "costs=[price]"], "costs[0] = 'price' must count strong tokens"),
        (["out=OUT", "costs=[strong_tokens,dollars]"], "costs[1] = 'dollars' is not in cost_options"),
        (["out=OUT", "costs=[strong_tokens,bad]", "+cost_options.bad=['cost=price','cost.weak.input_per_mtok=-1']"],
         "cost.weak.input_per_mtok = -1"),
        (["out=OUT", "costs=[strong_tokens,bad]", "+cost_options.bad=['cost=dollars']"], "cost_options.bad"),
    ],
    ids=["no-out", "first-not-strong-tokens", "unknown-name", "bad-value", "unknown-model"],
)
def test_bad_settings_are_refused_before_any_stage(arguments: list[str], message: str, tmp_path: Path) -> None:
    command = [sys.executable, str(COST_STUDY), *[a.replace("OUT", str(tmp_path / "study")) for a in arguments]]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, check=False)
    assert result.returncode != 0 and message in result.stderr, result.stderr
    assert list(tmp_path.iterdir()) == []
