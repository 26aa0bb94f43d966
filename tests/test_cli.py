"""The command-line surface: every console script is a Hydra app with a working --help and strict booleans."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from agents.cli.strict import BOOLEAN_SPELLINGS, boolean_override_errors

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
#: Console scripts whose modules are written on another branch (plug-11); the lead empties this
#: set when merging, so that every declared script is checked.
PENDING: set[str] = set()


def run_module(module: str, *arguments: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", module, *arguments], cwd=cwd, capture_output=True, text=True)


def test_every_console_script_is_a_main_function_in_agents_cli() -> None:
    assert {"trim-simulate", "trim-collect", "trim-route"} <= set(SCRIPTS)
    for name, target in SCRIPTS.items():
        module, _, function = target.partition(":")
        assert module == f"agents.cli.{name.removeprefix('trim-').replace('-', '_')}" and function == "main", (name, target)


@pytest.mark.parametrize("name", sorted(set(SCRIPTS) - PENDING))
def test_help_of_every_console_script_shows_its_settings(name: str, tmp_path: Path) -> None:
    result = run_module(SCRIPTS[name].partition(":")[0], "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "== Config ==" in result.stdout and "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []  # --help writes nothing


@pytest.mark.parametrize(
    ("module", "arguments"),
    [
        ("agents.cli.collect", ["progress_bar=yes"]),
        ("agents.cli.route", ["router=ROUTER", "problem=1 + 1", "print_json=2"]),
        ("agents.cli.simulate", ["preset=math500-qwen1.5b-7b", "n_queries=4", "seed=0", "out=OUT", "overwrite=on"]),
    ],
    ids=["collect", "route", "simulate"],
)
def test_a_boolean_that_is_not_true_false_1_or_0_is_an_error_naming_the_setting(module: str, arguments: list[str], tmp_path: Path) -> None:
    arguments = [argument.replace("OUT", str(tmp_path / "out")).replace("ROUTER", str(tmp_path / "router")) for argument in arguments]
    if module == "agents.cli.collect":
        arguments.append(f"out={tmp_path / 'out'}")
    result = run_module(module, *arguments)
    assert result.returncode != 0
    bad = next(a for a in arguments if a.split("=")[0] in ("progress_bar", "print_json", "overwrite"))
    assert f"{bad}: a boolean setting must be one of true, false, 1, 0" in result.stderr
    assert not (tmp_path / "out" / "manifest.json").exists()


@pytest.mark.parametrize(
    ("module", "missing"),
    [("agents.cli.collect", "['out']"), ("agents.cli.route", "['router', 'problem']"), ("agents.cli.simulate", "['preset', 'n_queries', 'seed', 'out']")],
    ids=["collect", "route", "simulate"],
)
def test_missing_required_settings_are_named_without_a_traceback(module: str, missing: str, tmp_path: Path) -> None:
    result = run_module(module, cwd=tmp_path)
    assert result.returncode != 0
    assert f"missing required setting(s) {missing}" in result.stderr and "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("spelling", [*BOOLEAN_SPELLINGS, "True", "FALSE"])
def test_boolean_spellings_true_false_1_0_are_accepted_in_any_case(spelling: str) -> None:
    cfg = OmegaConf.create({"flag": spelling.lower() in ("true", "1"), "name": "x"})
    assert boolean_override_errors(cfg, [f"flag={spelling}"]) == []


@pytest.mark.parametrize("spelling", ["yes", "no", "on", "off", "2", "None", "y", ""])
def test_other_boolean_spellings_are_refused(spelling: str) -> None:
    cfg = OmegaConf.create({"nested": {"flag": True}})
    assert boolean_override_errors(cfg, [f"++nested.flag={spelling}"]) == [
        f"nested.flag={spelling}: a boolean setting must be one of true, false, 1, 0"
    ]


def test_string_settings_and_group_choices_are_not_read_as_booleans() -> None:
    cfg = OmegaConf.create({"name": "yes", "weak": {"model": "on"}})
    assert boolean_override_errors(cfg, ["name=yes", "weak.model=on", "collect/generator@weak=openai", "~name"]) == []


@pytest.mark.parametrize("script", ["collect_rollouts", "route", "transfer", "calibration_report", "real_signal_check"])
def test_scripts_are_hydra_apps_with_a_working_help(script: str, tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(REPO / "scripts" / f"{script}.py"), "--help"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "== Config ==" in result.stdout
    assert list(tmp_path.iterdir()) == []


def test_no_file_edits_sys_path() -> None:
    offenders = [
        f"{path.relative_to(REPO)}:{number}"
        for path in sorted(REPO.glob("**/*.py"))
        if not {".git", "build"} & set(path.relative_to(REPO).parts)
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if "sys.path." + "insert" in line or "sys.path." + "append" in line
    ]
    assert offenders == [] or set(offenders) <= PENDING_SYS_PATH, offenders


#: sys.path edits in scripts of the plug-11 branch (evaluate, baselines, frontier); the lead empties
#: this set when merging, after which no file may edit sys.path.
PENDING_SYS_PATH: set[str] = set()


def test_an_existing_report_is_refused_unless_overwrite_and_left_unchanged(tmp_path: Path) -> None:
    (tmp_path / "transfer.md").write_text("earlier")
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "transfer.py"), f"out={tmp_path}"], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode != 0
    assert f"{tmp_path} already holds transfer.md" in result.stderr and "overwrite=true" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["transfer.md"] and (tmp_path / "transfer.md").read_text() == "earlier"
