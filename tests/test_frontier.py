"""The Pareto-frontier report (scripts/frontier.py): every number comes from a method's own points.

Synthetic results.json files in tmp_path, on a split with weak-only accuracy 0.4, strong-only 0.8
and 500 strong tokens per query, so a point at (c, PGR) has accuracy 0.4 + 0.4 PGR and 500 c
strong tokens.
"""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pytest

from agents.cli import frontier
from agents.cli.common import compose, register_schemas, settings_of
from trim_env import metrics
from trim_env.cost import CostModelError, PriceCost, rewrite_penalty_scale
from trim_env.tree import load_split

ROOT = Path(__file__).resolve().parents[1]
WEAK, STRONG, STRONG_TOKENS = 0.4, 0.8, 500.0
REFERENCE = metrics.Reference(weak_accuracy=WEAK, strong_accuracy=STRONG, strong_tokens_per_query=STRONG_TOKENS)




def point(policy: str, cost: float, pgr: float, **extra: Any) -> dict[str, Any]:
    """A results.json point at normalised cost ``cost`` and PGR ``pgr``."""
    return {"policy": policy, "accuracy": WEAK + (STRONG - WEAK) * pgr, "strong_tokens_per_query": STRONG_TOKENS * cost, **extra}


def anchors() -> list[dict[str, Any]]:
    return [point("weak-only", 0.0, 0.0, parameter=None), point("strong-only", 1.0, 1.0, parameter=None)]


def write_results(directory: Path, points: list[dict[str, Any]]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "results.json"
    path.write_text(json.dumps({"config": {}, "points": anchors() + points}))
    return path


def run_report(tmp_path: Path, *paths: str, **options: Any) -> tuple[str, dict[str, Any]]:
    """Write the report of ``paths`` (options: baseline, real_reference, title); returns frontier.md and the parsed frontier.json."""
    out = tmp_path / "report"
    frontier.write_report(list(paths), out, **options)
    return (out / "frontier.md").read_text(), json.loads((out / "frontier.json").read_text())


# A frontier that stops at PGR 0.7: (c, PGR) = (0.2, 0.5), (0.5, 0.7).
SHORT = [point("short", 0.2, 0.5, parameter=1.0), point("short", 0.5, 0.7, parameter=2.0)]


@pytest.fixture(scope="module")
def short_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, dict[str, Any]]:
    """One report on SHORT alone (read-only for tests): its directory, frontier.md and frontier.json."""
    tmp_path = tmp_path_factory.mktemp("short")
    markdown, report = run_report(tmp_path, str(write_results(tmp_path / "run", SHORT)))
    return tmp_path / "report", markdown, report


# ----------------------------------------------------------------------------------------------
# Own points only


def test_cpt_and_apgr_use_own_points_and_weak_only_never_the_strong_only_anchor() -> None:
    summary = frontier.summarize_method(SHORT, REFERENCE, None)
    # Own envelope: (0, 0) → (0.2, 0.5) → (0.5, 0.7), then flat at 0.7 up to c = 1.
    assert summary["apgr"]["value"] == pytest.approx(0.2 * 0.5 / 2 + 0.3 * (0.5 + 0.7) / 2 + 0.5 * 0.7)
    assert summary["cpt50"]["value"] == pytest.approx(0.2)
    assert summary["cpt80"]["value"] is None and summary["cpt95"]["value"] is None
    # The old report's envelope ran on to strong-only (1, 1): more area and CPTs that were never measured.
    accuracy = [WEAK, STRONG] + [p["accuracy"] for p in SHORT]
    tokens = [0.0, STRONG_TOKENS] + [p["strong_tokens_per_query"] for p in SHORT]
    with_strong_only = metrics.summarize_frontier(accuracy, tokens, REFERENCE)
    assert with_strong_only.apgr == pytest.approx(0.2 * 0.5 / 2 + 0.3 * (0.5 + 0.7) / 2 + 0.5 * (0.7 + 1.0) / 2)
    assert with_strong_only.apgr > summary["apgr"]["value"]
    assert with_strong_only.cpt80 == pytest.approx(0.5 + 0.5 * 0.1 / 0.3)


@pytest.mark.parametrize(("key", "column"), [("cpt80", "CPT(80%)"), ("cpt95", "CPT(95%)")])
def test_a_cpt_the_points_do_not_reach_is_reported_with_the_best_point(
    short_report: tuple[Path, str, dict[str, Any]], key: str, column: str
) -> None:
    _, markdown, report = short_report
    header = next(line for line in markdown.splitlines() if line.startswith("| method"))
    row = next(line for line in markdown.splitlines() if line.startswith("| short |"))
    cell = row.split(" | ")[header.split(" | ").index(column)]
    assert cell == "not reached (max PGR 0.700 at c 0.500)"
    entry = report["methods"]["short"][key]
    assert entry["value"] is None
    assert entry["max_pgr"] == pytest.approx(0.7) and entry["at_cost"] == pytest.approx(0.5)


def test_a_cpt_counts_as_reached_only_if_every_seed_reaches_it() -> None:
    points = [point("agg", 0.5, 0.85, seed=0, **{"lambda": 0.01}), point("agg", 0.4, 0.75, seed=1, **{"lambda": 0.01})]
    entry = frontier.summarize_method(points, REFERENCE, None)["cpt80"]
    assert entry["value"] is None and entry["seeds_reached"] == 1 and entry["n_seeds"] == 2
    assert entry["max_pgr"] == pytest.approx(0.75) and entry["at_cost"] == pytest.approx(0.4)
    assert frontier.format_cpt(entry).startswith("not reached by every seed (1 of 2 do")


# ----------------------------------------------------------------------------------------------
# Seeds


def test_seed_spread_is_the_sd_with_ddof_1(tmp_path: Path) -> None:
    pgrs = [0.5, 0.6, 0.8]
    for seed, pgr in enumerate(pgrs):
        write_results(tmp_path / "multirun" / str(seed), [point("agg", 0.4, pgr, seed=seed, **{"lambda": 0.01})])
    markdown, report = run_report(tmp_path, str(tmp_path / "multirun"))
    apgrs = [0.4 * pgr / 2 + 0.6 * pgr for pgr in pgrs]
    summary = report["methods"]["agg"]
    assert summary["apgr"]["value"] == pytest.approx(np.mean(apgrs))
    assert summary["apgr"]["sd"] == pytest.approx(np.std(apgrs, ddof=1))
    assert f"{np.mean(apgrs):.3f} ± {np.std(apgrs, ddof=1):.3f}" in markdown
    (mean_point,) = report["mean_points"]["agg"]
    assert mean_point["accuracy_sd"] == pytest.approx(np.std([WEAK + 0.4 * p for p in pgrs], ddof=1))


def test_one_seed_has_no_spread(short_report: tuple[Path, str, dict[str, Any]]) -> None:
    _, markdown, report = short_report
    assert report["methods"]["short"]["apgr"]["sd"] is None
    assert "±" not in next(line for line in markdown.splitlines() if line.startswith("| short |"))


# ----------------------------------------------------------------------------------------------
# Mean ΔIBC on one common cost range


def test_mean_delta_ibc_is_taken_over_the_common_range_of_the_non_oracle_methods(tmp_path: Path) -> None:
    points = {
        "a": [point("a", 0.1, 0.3, parameter=1.0), point("a", 0.6, 0.8, parameter=2.0)],
        # B's point at c = 0 has no ΔIBC and does not widen its range.
        "b": [point("b", 0.0, 0.0, parameter=0.0), point("b", 0.2, 0.4, parameter=1.0), point("b", 0.8, 0.9, parameter=2.0)],
        "oracle": [point("oracle", 0.01, 0.6, parameter=1.0), point("oracle", 0.05, 1.2, parameter=2.0)],
    }
    files = [write_results(tmp_path / name, group) for name, group in points.items()]
    markdown, report = run_report(tmp_path, *map(str, files))
    assert report["delta_ibc_range"] == pytest.approx([0.2, 0.6])
    assert "mean ΔIBC, c ∈ [0.200, 0.600]" in markdown
    for name, group in points.items():
        costs = [0.0] + [p["strong_tokens_per_query"] / STRONG_TOKENS for p in group]
        pgrs = [0.0] + [metrics.pgr(p["accuracy"], REFERENCE) for p in group]
        expected = metrics.mean_envelope_delta_ibc(costs, pgrs, 0.2, 0.6)
        assert report["methods"][name]["mean_delta_ibc"]["value"] == pytest.approx(expected)
    assert report["methods"]["oracle"]["mean_delta_ibc"]["covers_range"] is False
    assert "| oracle |" in markdown and next(line for line in markdown.splitlines() if line.startswith("| oracle |")).endswith("† |")


def test_mean_delta_ibc_is_left_out_when_the_ranges_do_not_overlap(tmp_path: Path) -> None:
    points = [point("a", 0.1, 0.3, parameter=1.0), point("a", 0.2, 0.5, parameter=2.0),
              point("b", 0.5, 0.6, parameter=1.0), point("b", 0.9, 0.9, parameter=2.0)]
    markdown, report = run_report(tmp_path, str(write_results(tmp_path / "run", points)))
    assert report["delta_ibc_range"] is None
    assert "mean ΔIBC (no common c range)" in markdown
    assert report["methods"]["a"]["mean_delta_ibc"]["value"] is None


# ----------------------------------------------------------------------------------------------
# Matched cost against the baseline


def test_matched_cost_compares_only_inside_the_baselines_measured_range(tmp_path: Path) -> None:
    thr = [point("thr", 0.1, 0.3, parameter=0.1), point("thr", 0.5, 0.7, parameter=0.5)]
    agg = [point("agg", 0.3, 0.6, **{"lambda": 0.01}), point("agg", 0.8, 0.9, **{"lambda": 0.002})]
    markdown, report = run_report(tmp_path, str(write_results(tmp_path / "run", thr + agg)), baseline="thr")
    inside, outside = report["matched_cost"]["agg"]["points"]
    assert inside["baseline_accuracy"] == pytest.approx(WEAK + 0.4 * 0.5)  # halfway from (0.1, 0.3) to (0.5, 0.7)
    assert outside["baseline_accuracy"] is None
    assert outside["note"] == "outside thr's measured c range [0.100, 0.500]"
    assert report["matched_cost"]["agg"]["n_compared"] == 1
    assert report["matched_cost"]["agg"]["share_at_least_baseline"] == 1.0
    assert "| 0.800 | 0.760 | outside thr's measured c range [0.100, 0.500] |" in markdown


# ----------------------------------------------------------------------------------------------
# Gathering and robustness


def test_gathers_run_dirs_multirun_dirs_and_files_together(tmp_path: Path) -> None:
    single = write_results(tmp_path / "thr_run", [point("thr", 0.3, 0.6, parameter=0.5)])
    for seed in (0, 1):
        write_results(tmp_path / "multirun" / str(seed), [point("agg", 0.3, 0.5 + 0.1 * seed, seed=seed, **{"lambda": 0.01})])
    file = write_results(tmp_path / "loose", [point("random", 0.5, 0.5, parameter=0.5)])
    # The thr file is named twice (through its run dir and itself) and counted once.
    _, report = run_report(tmp_path, str(tmp_path / "thr_run"), str(single), str(tmp_path / "multirun"), str(file))
    assert set(report["methods"]) == {"thr", "agg", "random"}
    assert report["methods"]["thr"]["n_points"] == 1
    assert report["methods"]["agg"]["seeds"] == [0, 1]
    assert str(single) in report["files"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"points": [{"policy": "thr", "accur', "not valid JSON, perhaps half-written"),
        ('{"config": {}}', "field 'points' is missing, empty or not a list"),
        ('{"points": [{"policy": "thr", "strong_tokens_per_query": 10.0}]}', "points[0] (thr): field 'accuracy' is None"),
        ('{"points": [{"policy": "thr", "accuracy": "0.5", "strong_tokens_per_query": 1}]}', "field 'accuracy' is '0.5'"),
        ('{"points": [{"policy": "thr", "accuracy": 0.5, "strong_tokens_per_query": -1}]}', "field 'strong_tokens_per_query' is -1"),
        ('[1, 2]', "field 'points' is missing, empty or not a list"),
        ('{"config": {"cost": {"name": "dollars"}}, "points": [{"policy": "thr", "accuracy": 0.5, "strong_tokens_per_query": 1}]}',
         "field 'config.cost' is not a valid cost model (cost.name = 'dollars' is not a cost model"),
        ('{"config": {"cost": "price"}, "points": [{"policy": "thr", "accuracy": 0.5, "strong_tokens_per_query": 1}]}',
         "field 'config.cost' is 'price', expected a cost model's settings"),
    ],
    ids=["half_written", "no_points", "missing_accuracy", "accuracy_not_a_number", "negative_tokens", "not_an_object",
         "unknown_cost_model", "cost_not_a_mapping"],
)
def test_an_unusable_results_file_is_named_on_stderr_and_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, message: str
) -> None:
    good = write_results(tmp_path / "good", SHORT)
    bad = tmp_path / "bad" / "results.json"
    bad.parent.mkdir()
    bad.write_text(content)
    markdown, report = run_report(tmp_path, str(good), str(bad))
    stderr = capsys.readouterr().err
    assert f"skipped {bad}" in stderr and message in stderr
    assert report["skipped_files"] == [{"file": str(bad), "reason": report["skipped_files"][0]["reason"]}]
    assert message in report["skipped_files"][0]["reason"] and str(bad) in markdown
    assert set(report["methods"]) == {"short"}


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("only_bad", "no weak-only or strong-only point in the 0 usable results files (1 skipped)"),
        ("only_anchors", "no method points (only anchors)"),
        ("missing_path", "no results.json under"),
    ],
)
def test_the_report_fails_with_a_clear_message_only_when_nothing_usable_remains(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], setup: str, message: str
) -> None:
    target = tmp_path / "runs" / "results.json"
    if setup == "only_bad":
        target.parent.mkdir()
        target.write_text("{")
    elif setup == "only_anchors":
        write_results(target.parent, [])
    with pytest.raises(SystemExit) as exit_info:
        frontier.write_report([str(target if setup != "missing_path" else tmp_path / "nowhere")], tmp_path / "report")
    assert "frontier.py: error:" in str(exit_info.value) and message in str(exit_info.value)
    assert not (tmp_path / "report").exists()


def test_anchors_that_differ_across_files_are_an_error(tmp_path: Path) -> None:
    first = write_results(tmp_path / "a", SHORT)
    other = tmp_path / "b" / "results.json"
    other.parent.mkdir()
    other.write_text(json.dumps({"points": [point("weak-only", 0.0, 0.1), point("strong-only", 1.0, 1.0)]}))
    with pytest.raises(SystemExit, match="weak-only accuracy .* differs .* different splits"):
        frontier.write_report([str(first), str(other)], tmp_path / "report")


def test_outputs_are_replaced_atomically_and_no_temporary_file_is_left(tmp_path: Path) -> None:
    run_report(tmp_path, str(write_results(tmp_path / "run", SHORT)))
    out = tmp_path / "report"
    assert sorted(path.name for path in out.iterdir()) == sorted(frontier.OUTPUTS)
    before = (out / "frontier.md").read_text()

    def fail_half_way(path: Path) -> None:
        path.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        frontier.write_atomic(out / "frontier.md", fail_half_way)
    assert (out / "frontier.md").read_text() == before
    assert sorted(path.name for path in out.iterdir()) == sorted(frontier.OUTPUTS)


# ----------------------------------------------------------------------------------------------
# Figure


def test_png_and_pdf_are_written(short_report: tuple[Path, str, dict[str, Any]]) -> None:
    out, _, report = short_report
    assert (out / "frontier.png").read_bytes().startswith(b"\x89PNG")
    assert (out / "frontier.pdf").read_bytes().startswith(b"%PDF")
    assert report["figure"]["files"] == ["frontier.png", "frontier.pdf"]


def _legend_labels(axis: Any) -> list[str]:
    return [text.get_text() for text in axis.get_legend().get_texts()]


def test_the_oracle_gets_its_own_panel(tmp_path: Path) -> None:
    methods = {"short": SHORT, "oracle": [point("oracle", 0.02, 0.9, parameter=1.0), point("oracle", 0.05, 1.4, parameter=2.0)]}
    figure, panels = frontier.draw_figure(methods, REFERENCE, "title", None)
    try:
        main_axis, oracle_axis = figure.axes
        assert panels == {"main": ["short"], "oracle": ["oracle"]}
        assert "short" in _legend_labels(main_axis) and "oracle" not in _legend_labels(main_axis)
        assert "oracle" in _legend_labels(oracle_axis) and "short" not in _legend_labels(oracle_axis)
        assert "oracle" in oracle_axis.get_title()
        assert all(axis.get_xlabel() == "c(π) = strong tokens / strong-only tokens" for axis in figure.axes)
    finally:
        plt.close(figure)
    _, report = run_report(tmp_path, str(write_results(tmp_path / "run", [p for group in methods.values() for p in group])))
    assert report["figure"]["panels"] == {"main": ["short"], "oracle": ["oracle"]}


def test_no_oracle_means_one_panel() -> None:
    figure, panels = frontier.draw_figure({"short": SHORT}, REFERENCE, "title", None)
    try:
        assert len(figure.axes) == 1 and panels["oracle"] == []
    finally:
        plt.close(figure)


def test_the_envelope_is_solid_to_the_last_point_and_the_line_to_strong_only_is_dashed_interpolation() -> None:
    figure, _ = frontier.draw_figure({"short": SHORT}, REFERENCE, "title", None)
    try:
        lines = {line.get_label(): line for line in figure.axes[0].get_lines()}
        solid = lines["short"]
        assert solid.get_linestyle() == "-"
        np.testing.assert_allclose(solid.get_xdata(), [0.0, 0.2, 0.5])
        dashed = lines[frontier.INTERPOLATION_LABEL]
        assert dashed.get_linestyle() == "--" and "interpolation" in dashed.get_label()
        np.testing.assert_allclose(dashed.get_xdata(), [0.5, 1.0])
        np.testing.assert_allclose(dashed.get_ydata(), [WEAK + 0.4 * 0.7, STRONG])
    finally:
        plt.close(figure)


def test_seed_spread_is_drawn_as_a_band() -> None:
    points = [point("agg", 0.3 + 0.1 * lam, pgr, seed=seed, **{"lambda": lam}) for seed, pgr in enumerate((0.5, 0.6)) for lam in (1.0, 2.0)]
    figure, _ = frontier.draw_figure({"agg": points}, REFERENCE, "title", None)
    try:
        axis = figure.axes[0]
        assert len(axis.collections) == 1  # the fill_between band
        assert "accuracy mean ± SD over seeds (ddof = 1)" in _legend_labels(axis)
    finally:
        plt.close(figure)


def _real_reference_file(tmp_path: Path) -> Path:
    path = tmp_path / "real.json"
    frontier_points = [
        {"threshold": 0.0, "accuracy": 0.3, "avg_target_tokens_per_question": 0.0},
        {"threshold": 0.5, "accuracy": 0.6, "avg_target_tokens_per_question": 200.0},
    ]
    path.write_text(json.dumps({
        "math500_weak_only": {"accuracy": 0.3},
        "math500_strong_only": {"accuracy": 0.7, "strong_tokens_per_question": 400.0},
        "math500_trim_thr_frontier": frontier_points,
    }))
    return path


@pytest.mark.parametrize("given", ["absent", "packaged", "file"])
def test_the_real_overlay_is_drawn_only_when_asked_and_labelled_as_real(tmp_path: Path, given: str) -> None:
    options = {"packaged": {"real_reference": "packaged"},  # the file shipped in trim_env/references/
               "file": {"real_reference": str(_real_reference_file(tmp_path))}}.get(given, {})
    markdown, report = run_report(tmp_path, str(write_results(tmp_path / "run", SHORT)), **options)
    assert "simulated, not real model results" in markdown
    if given == "absent":
        assert report["real_reference"] is None and "is real" not in markdown
        return
    real = report["real_reference"]
    assert real["label"] == "real TRIM-Thr (Qwen2.5-1.5B→7B, authors' release)"
    assert f"\"{real['label']}\" is real" in markdown
    if given == "packaged":
        assert Path(real["file"]) == frontier.PACKAGED_REFERENCE and real["strong_accuracy"] == pytest.approx(0.73)
        assert len(real["points"]) == 21
    else:
        assert [p["normalized_cost"] for p in real["points"]] == pytest.approx([0.0, 0.5])
    figure, _ = frontier.draw_figure({"short": SHORT}, REFERENCE, "title", None, frontier.load_real_reference(Path(real["file"])))
    try:
        labels = _legend_labels(figure.axes[0])
        assert real["label"] in labels and "real weak-only / strong-only (authors' release)" in labels
    finally:
        plt.close(figure)


def test_a_bad_real_reference_file_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "real.json"
    bad.write_text(json.dumps({"math500_weak_only": {"accuracy": 0.3}}))
    with pytest.raises(SystemExit, match="real reference .*real.json: missing or invalid field 'math500_strong_only'"):
        frontier.write_report([str(write_results(tmp_path / "run", SHORT))], tmp_path / "report", real_reference=str(bad))


def test_the_packaged_reference_is_the_one_calibration_reads() -> None:
    from trim_env.calibration import DEFAULT_REFERENCE

    assert frontier.PACKAGED_REFERENCE.resolve() == DEFAULT_REFERENCE.resolve()
    assert DEFAULT_REFERENCE.exists() and math.isclose(json.loads(DEFAULT_REFERENCE.read_text())["math500_weak_only"]["accuracy"], 0.364)


# ------------------------------------------------------------------------------------------------
# The study driver (scripts/run_frontier.py, a Hydra app: conf/run_frontier.yaml)

RUN_FRONTIER = ROOT / "scripts" / "run_frontier.py"


def load_script(name: str) -> Any:
    """scripts/<name>.py as a module (scripts/ is no package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run_frontier(*arguments: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(RUN_FRONTIER), *arguments], cwd=cwd, capture_output=True, text=True, check=False)


def test_run_frontier_help_lists_its_settings_and_writes_nothing(tmp_path):
    result = _run_frontier("--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for setting in ("out: ???", "policies:", "seeds:", "data_path: null"):
        assert setting in result.stdout
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ([], "out is missing"),
        (["out=OUT", "policies=[thr]"], "policies[0] = 'thr' has no sweep_lambdas"),
        (["out=OUT", "policies=[nope]"], "unknown policy.name 'nope'"),
        (["out=OUT", "seeds=[zero]"], "seeds[0] = 'zero' must be an integer"),
    ],
    ids=["no-out", "untrained-policy", "unknown-policy", "bad-seed"],
)
def test_run_frontier_refuses_bad_settings_before_any_stage(arguments, message, tmp_path):
    result = _run_frontier(*[a.replace("OUT", str(tmp_path / "study")) for a in arguments], cwd=tmp_path)
    assert result.returncode != 0 and message in result.stderr, result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("pgr_at", "swept"),
    [
        # grid best 0.85; λ = 0.05 gains 0.05; λ = 0.025 gains nothing (< MIN_GAIN): stop
        (lambda lam: min(0.9, 0.95 - lam), ["0.2,0.1", "0.05", "0.025"]),
        # grid best 0.9; λ = 0.05 reaches PGR 0.95 = TARGET_PGR: stop
        (lambda lam: 1.0 - lam, ["0.2,0.1", "0.05"]),
        # every halving gains 2 λ: stops after MAX_EXTENSIONS = 4
        (lambda lam: 0.9 - 4 * lam, ["0.2,0.1", "0.05", "0.025", "0.0125", "0.00625"]),
    ],
    ids=["stops-improving", "reaches-target", "max-extensions"],
)
def test_run_frontier_extends_a_grid_to_half_the_smallest_lambda_while_that_pays(pgr_at, swept, tmp_path, monkeypatch):
    """Each fake train stage writes one point per λ (one seed) with PGR ``pgr_at(λ)``."""
    module = load_script("run_frontier")
    commands: list[list[str]] = []

    def fake_stage(name: str, command: list[str], times: dict[str, float], *done: Any) -> None:
        commands.append(command)
        lambdas = [float(v) for v in next(a for a in command if a.startswith("lambda=")).removeprefix("lambda=").split(",")]
        sweep_dir = Path(next(a for a in command if a.startswith("hydra.sweep.dir=")).removeprefix("hydra.sweep.dir="))
        for lam in lambdas:
            write_results(sweep_dir / f"lambda={lam}", [{**point("agg", lam, pgr_at(lam)), "pgr": pgr_at(lam), "lambda": lam}])
        times[name] = times.get(name, 0.0) + 1.0

    monkeypatch.setattr(module, "stage", fake_stage)
    times: dict[str, float] = {}
    module.sweep_policy("agg", [0.2, 0.1], ["0"], tmp_path, [], times)
    assert [next(a for a in c if a.startswith("lambda=")) for c in commands] == [f"lambda={v}" for v in swept]
    assert list(times) == ["agg grid"] + [f"agg extension{i}" for i in range(1, len(swept))]
    assert module.best_mean_pgr([tmp_path / "agg-grid"], "agg") == (pytest.approx(pgr_at(0.1)), 0.1)


@pytest.mark.slow
def test_run_frontier_runs_every_stage_and_records_their_wall_times(tiny_dataset_dir, tmp_path):
    dataset, study = tmp_path / "dataset", tmp_path / "study"
    shutil.copytree(tiny_dataset_dir, dataset)  # the stages persist growth into the dataset they run on
    result = _run_frontier(f"out={study}", "policies=[pomdp]", "seeds=[0,1]", f"data_path={dataset}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    times = json.loads((study / "study_times.json").read_text())
    assert list(times["stages_s"])[:3] == ["thr", "baselines", "pomdp grid"] and list(times["stages_s"])[-1] == "report"
    assert sorted(path.name for path in (study / "runs").iterdir())[:2] == ["baselines", "pomdp-grid"]
    seeds = {json.loads(p.read_text())["points"][-1]["seed"] for p in (study / "runs" / "pomdp-grid").rglob("results.json")}
    assert seeds == {0}  # solved, not trained: the first seed only
    assert "| pomdp |" in (study / "frontier.md").read_text()


def test_run_frontier_trains_a_conditioned_policy_once_per_seed(tmp_path, monkeypatch):
    module = load_script("run_frontier")
    commands: list[tuple[str, list[str]]] = []
    monkeypatch.setattr(module, "stage", lambda name, command, times, *done: commands.append((name, command)))
    module.train_conditioned("agg_conditioned", ["0", "1"], tmp_path, [], {})
    ((name, command),) = commands
    assert name == "agg_conditioned seeds" and "seed=0,1" in command and "policy=agg_conditioned" in command
    assert not any(argument.startswith("lambda=") for argument in command)  # its λ grid is its test points, not a sweep


def test_run_frontier_passes_its_cost_model_to_every_stage_as_overrides() -> None:
    module = load_script("run_frontier")
    register_schemas()
    study = compose("run_frontier", ["out=x", "cost=price", "cost.prefix_cache=true", "cost.strong.output_per_mtok=2.5"])
    overrides = module.cost_overrides(study.cost)
    assert overrides == ["cost=price", "cost.prefix_cache=true", "cost.strong.output_per_mtok=2.5"]  # only what differs from the option
    # A stage composing its own config with these overrides gets the same cost model.
    assert settings_of(compose("evaluate", overrides).cost) == settings_of(study.cost)
    assert module.cost_overrides(compose("run_frontier", ["out=x"]).cost) == ["cost=strong_tokens"]
    with pytest.raises(CostModelError, match="cost.weak.input_per_mtok = -1.0"):
        module.cost_overrides(compose("run_frontier", ["out=x", "cost=price", "cost.weak.input_per_mtok=-1"]).cost)


def test_run_frontier_scales_the_grids_to_match_a_rewrites_penalty_only_when_asked(tiny_dataset_dir: Path) -> None:
    module = load_script("run_frontier")
    register_schemas()
    asked = compose("run_frontier", ["out=x", "cost=price", "match_rewrite_penalty=true", f"data_path={tiny_dataset_dir}"])
    scale = module.lambda_scale(asked)
    assert scale == pytest.approx(rewrite_penalty_scale(PriceCost(), load_split(tiny_dataset_dir, "train"))) and 0 < scale < 1
    assert module.lambda_scale(compose("run_frontier", ["out=x", "cost=price", f"data_path={tiny_dataset_dir}"])) == 1.0
    assert module.lambda_scale(compose("run_frontier", ["out=x", "match_rewrite_penalty=true", f"data_path={tiny_dataset_dir}"])) == 1.0


def test_run_frontier_skips_a_stage_whose_run_dir_holds_its_results(tmp_path: Path) -> None:
    module = load_script("run_frontier")
    failing = [sys.executable, "-c", "raise SystemExit(3)"]
    write_results(tmp_path / "sweep" / "lambda=0.1", [point("agg", 0.3, 0.5)])
    times: dict[str, float] = {}
    module.stage("agg grid", failing, times, tmp_path / "sweep", 1)  # done: not run
    assert times == {}
    with pytest.raises(subprocess.CalledProcessError):  # one job's results of two: run again
        module.stage("agg grid", failing, times, tmp_path / "sweep", 2)


# ----------------------------------------------------------------------------------------------
# A weak anchor that costs something (c_w > 0, as under cost=price, flops or latency)

PRICED_WEAK_COST = 0.2  # weak-only costs a fifth of strong-only
PRICED_REFERENCE = metrics.Reference(WEAK, STRONG, STRONG_TOKENS, weak_strong_tokens_per_query=STRONG_TOKENS * PRICED_WEAK_COST)
# As (c, PGR): a (0.4, 0.5), (0.6, 0.9); b (0.3, 0.2), (0.8, 0.95).
PRICED = [point("a", 0.4, 0.5, parameter=1.0), point("a", 0.6, 0.9, parameter=2.0),
          point("b", 0.3, 0.2, parameter=1.0), point("b", 0.8, 0.95, parameter=2.0)]


def write_priced_results(directory: Path, points: list[dict[str, Any]], cost: dict[str, Any] | None = None) -> Path:
    """A results.json measured under ``cost`` (default cost=price) whose weak-only point sits at c_w = 0.2."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "results.json"
    anchors = [point("weak-only", PRICED_WEAK_COST, 0.0, parameter=None), point("strong-only", 1.0, 1.0, parameter=None)]
    # Under a cost model a point's cost is its cost_per_query (trim_env.evaluation); the strong tokens are not read.
    priced = [{**p, "cost_per_query": p["strong_tokens_per_query"], "strong_tokens_per_query": 0.0} for p in anchors + points]
    path.write_text(json.dumps({"config": {"cost": cost or {"name": "price"}}, "points": priced}))
    return path


def test_every_metric_of_the_report_starts_from_the_priced_weak_anchor(tmp_path: Path) -> None:
    markdown, report = run_report(tmp_path, str(write_priced_results(tmp_path / "run", PRICED)))
    assert report["reference"]["weak_strong_tokens_per_query"] == pytest.approx(100.0)
    a = report["methods"]["a"]
    # Nothing below c_w; then (0.2, 0) → (0.4, 0.5) → (0.6, 0.9), flat to c = 1.
    assert a["apgr"]["value"] == pytest.approx(0.2 * 0.5 / 2 + 0.2 * (0.5 + 0.9) / 2 + 0.4 * 0.9)
    assert a["cpt50"]["value"] == pytest.approx(0.4) and a["cpt80"]["value"] == pytest.approx(0.4 + 0.2 * 0.3 / 0.4)
    # Measured ranges a [0.4, 0.6], b [0.3, 0.8]; on it a's ΔIBC = 0.8·PGR/(c − 0.2) − 1 = 0.08/(c − 0.2) + 0.6.
    assert report["delta_ibc_range"] == pytest.approx([0.4, 0.6])
    assert a["mean_delta_ibc"]["value"] == pytest.approx(0.6 + 0.4 * math.log(2.0))
    b_costs, b_pgrs = [0.2, 0.3, 0.8], [0.0, 0.2, 0.95]
    expected_b = metrics.mean_envelope_delta_ibc(b_costs, b_pgrs, 0.4, 0.6, weak_cost=0.2)
    assert report["methods"]["b"]["mean_delta_ibc"]["value"] == pytest.approx(expected_b)
    assert report["cost_unit"] == "c(π) = cost / strong-only cost (cost=price, USD)"
    assert "under cost=price (natural unit: USD)" in markdown and "(c_w = 0.200)" in markdown
    assert "weak-only anchor (c = c_w = 0.200, PGR 0)" in markdown and "PGR_env(c)·(1 − c_w)/(c − c_w) − 1" in markdown
    assert "the straight weak→strong line scores (1 − c_w)/2 = 0.400" in markdown
    assert "strong tokens/query" not in markdown and "cost less than weak-only" not in markdown


def test_the_figure_draws_the_weak_anchor_and_every_envelope_from_c_w() -> None:
    figure, _ = frontier.draw_figure({"a": PRICED[:2]}, PRICED_REFERENCE, "title", None, None, "cost axis")
    try:
        axis = figure.axes[0]
        lines = {line.get_label(): line for line in axis.get_lines()}
        np.testing.assert_allclose(lines["weak-only (simulated)"].get_xdata(), [0.2])
        np.testing.assert_allclose(lines["weak→strong line (ΔIBC = 0)"].get_xdata(), [0.2, 1.0])
        np.testing.assert_allclose(lines["a"].get_xdata(), [0.2, 0.4, 0.6])
        assert axis.get_xlabel() == "cost axis"
    finally:
        plt.close(figure)


def test_a_point_cheaper_than_weak_only_is_kept_and_counted(tmp_path: Path) -> None:
    points = [point("a", 0.1, 0.3, parameter=1.0), point("a", 0.6, 0.9, parameter=2.0)]
    markdown, report = run_report(tmp_path, str(write_priced_results(tmp_path / "run", points)))
    # (0.1, 0.3) dominates weak-only (0.2, 0): the envelope starts there.
    assert report["methods"]["a"]["apgr"]["value"] == pytest.approx(0.5 * (0.3 + 0.9) / 2 + 0.4 * 0.9)
    assert report["methods"]["a"]["cpt50"]["value"] == pytest.approx(0.1 + 0.5 * 0.2 / 0.6)
    # ΔIBC is undefined at c ≤ c_w, so only the point above it measures a range.
    assert report["delta_ibc_range"] == pytest.approx([0.6, 0.6])
    assert "1 method point(s) cost less than weak-only (c < c_w): kept as measured" in markdown


def test_a_weak_only_point_without_a_cost_costs_nothing(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    weak = {"policy": "weak-only", "accuracy": WEAK}
    path.write_text(json.dumps({"config": {}, "points": [weak, point("strong-only", 1.0, 1.0)] + SHORT}))
    _, report = run_report(tmp_path, str(path))
    assert report["reference"]["weak_strong_tokens_per_query"] == 0.0
    assert report["methods"]["short"]["apgr"]["value"] == pytest.approx(0.2 * 0.5 / 2 + 0.3 * (0.5 + 0.7) / 2 + 0.5 * 0.7)


def test_a_weak_only_point_as_dear_as_strong_only_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"points": [point("weak-only", 1.0, 0.0), point("strong-only", 1.0, 1.0)] + SHORT}))
    with pytest.raises(SystemExit, match=r"weak-only strong_tokens_per_query 500.0 is not below strong-only's 500.0 .*c_w < 1"):
        frontier.write_report([str(path)], tmp_path / "report")


def test_results_of_different_cost_models_are_not_mixed(tmp_path: Path) -> None:
    tokens = write_results(tmp_path / "tokens", SHORT)
    priced = write_priced_results(tmp_path / "priced", PRICED)
    with pytest.raises(SystemExit, match="cost=price, .* with cost=strong_tokens; costs in different units cannot share one frontier"):
        frontier.write_report([str(tokens), str(priced)], tmp_path / "report")


def test_the_real_overlay_is_refused_over_results_in_another_unit(tmp_path: Path) -> None:
    priced = write_priced_results(tmp_path / "priced", PRICED, {"name": "latency"})
    with pytest.raises(SystemExit, match=r"the real overlay counts strong tokens, these results cost=latency \(s\)"):
        frontier.write_report([str(priced)], tmp_path / "report", real_reference="packaged")


def test_a_priced_point_without_its_cost_per_query_is_skipped_naming_the_field(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"config": {"cost": {"name": "price"}}, "points": [point("thr", 0.5, 0.5)]}))
    with pytest.raises(frontier.MalformedResults, match=r"points\[0\] \(thr\): field 'cost_per_query' is missing, .* cost=price"):
        frontier.read_points(path)
