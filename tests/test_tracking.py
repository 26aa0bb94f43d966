"""W&B tracking, offline: the exported router as an artifact, sweep groups and the frontier report.

Every run here is offline with a dead W&B address, and is read back from its ``.wandb`` transaction
log (:mod:`wandb_offline`). One Hydra multirun of two TRIM-Thr jobs (no env steps) serves the
artifact and group tests; the frontier report is drawn from it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import wandb
from wandb_offline import history_rows, item_key, of_type, offline_run_dir, wandb_records

from agents.cli.frontier import TABLE_COLUMNS
from agents.tracking import WandbTracker, artifact_name, sweep_group

ROOT = Path(__file__).resolve().parents[1]
LAMBDAS = (0.01, 0.02)


def offline_env(home: Path) -> dict[str, str]:
    """The environment of an offline W&B run that cannot reach any server and writes only under ``home``."""
    dead = "http://127.0.0.1:9"  # the discard port: any network attempt fails at once
    env = {
        **os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
        "WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_CONFIG_DIR": str(home / "config"),
        "WANDB_CACHE_DIR": str(home / "cache"), "WANDB_DATA_DIR": str(home / "data"), "WANDB_ARTIFACT_DIR": str(home / "artifacts"),
        "WANDB_BASE_URL": dead, "HTTP_PROXY": dead, "HTTPS_PROXY": dead, "http_proxy": dead, "https_proxy": dead,
        "NO_PROXY": "", "no_proxy": "", "WANDB_DISABLE_GIT": "true", "WANDB_DISABLE_CODE": "true",
    }
    for name in ("WANDB_API_KEY", "WANDB_SWEEP_ID", "WANDB_DIR", "HYDRA_FULL_ERROR"):
        env.pop(name, None)
    return env


def run(script: str, *arguments: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, script, *arguments], cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    return result


@pytest.fixture(scope="module")
def sweep(tiny_dataset_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``train.py -m`` over two λ with logger=wandb into ``sweeps/thr-grid``, then trim-frontier on it with logger=wandb."""
    base = tmp_path_factory.mktemp("wandb_sweep")
    env = offline_env(base / "wandb_home")
    sweep_dir = base / "sweeps" / "thr-grid"
    run("train.py", "-m", "policy=thr", f"lambda={','.join(map(str, LAMBDAS))}", f"data.path={tiny_dataset_dir}",
        "data.persist_growth=false", "progress_bar=false", "logger=wandb", f"hydra.sweep.dir={sweep_dir}", env=env)
    report = base / "report"
    run("scripts/frontier.py", f"paths=[{sweep_dir}]", f"out={report}", "logger=wandb", env=env)
    jobs = {json.loads(path.read_text())["points"][-1]["lambda"]: path.parent for path in sweep_dir.glob("*/results.json")}
    assert sorted(jobs) == list(LAMBDAS)
    return {**{f"job-{lam}": out for lam, out in jobs.items()}, "sweep": sweep_dir, "report": report}


def md5_base64(path: Path) -> str:
    """W&B's manifest digest of a file."""
    return base64.b64encode(hashlib.md5(path.read_bytes()).digest()).decode()


@pytest.mark.parametrize("lam", LAMBDAS)
def test_router_artifact_holds_every_exported_file_with_its_config_and_test_metrics(sweep, lam: float) -> None:
    out = sweep[f"job-{lam}"]
    records = wandb_records(next(offline_run_dir(out).glob("*.wandb")))
    [artifact] = of_type(records, "artifact")
    assert (artifact.type, artifact.name) == ("router", f"thr-lambda-{lam}-seed-0")
    router = out / "router"
    files = {entry.path: entry for entry in artifact.manifest.contents}
    assert set(files) == {path.name for path in router.iterdir()} >= {"config.json", "training_queries.json", "README.md"}
    for name, entry in files.items():  # the staged copy W&B uploads on sync is the exported file
        assert entry.digest == md5_base64(router / name) == md5_base64(Path(entry.local_path)), name
    metadata = json.loads(artifact.metadata)
    assert metadata["router_config"] == json.loads((router / "config.json").read_text())
    assert metadata["test_points"] == json.loads((out / "results.json").read_text())["points"][2:]  # after the two anchors
    assert metadata["run_config"]["lambda"] == lam and metadata["run_config"]["policy"]["name"] == "thr"


def test_multirun_jobs_are_grouped_by_their_sweep_directory(sweep) -> None:
    groups = {of_type(wandb_records(next(offline_run_dir(sweep[f"job-{lam}"]).glob("*.wandb"))), "run")[0].run_group
              for lam in LAMBDAS}
    assert groups == {"thr-grid"}


def test_frontier_logs_its_figure_method_table_and_apgr(sweep) -> None:
    report = sweep["report"]
    run_dir = offline_run_dir(report)
    records = wandb_records(next(run_dir.glob("*.wandb")))
    assert of_type(records, "run")[0].job_type == "frontier"
    logged = {key: value for row in history_rows(records) for key, value in row.items()}
    assert logged["frontier/_type"] == "image-file"
    image = run_dir / "files" / logged["frontier/path"]
    assert hashlib.sha256(image.read_bytes()).hexdigest() == hashlib.sha256((report / "frontier.png").read_bytes()).hexdigest()
    assert logged["frontier_methods/_type"] == "table-file"
    table = json.loads((run_dir / "files" / logged["frontier_methods/path"]).read_text())
    content = json.loads((report / "frontier.json").read_text())
    assert table["columns"] == TABLE_COLUMNS
    assert [(row[0], row[1], row[3]) for row in table["data"]] == [("thr", 2, content["methods"]["thr"]["apgr"]["value"])]
    summary = {item_key(item): json.loads(item.value_json) for record in of_type(records, "summary") for item in record.update}
    assert summary["frontier/thr/apgr"] == content["methods"]["thr"]["apgr"]["value"]


def test_artifact_name_setting_wins_and_nan_metadata_becomes_null(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in offline_env(tmp_path / "home").items():
        monkeypatch.setenv(name, value)
    router = tmp_path / "router"
    router.mkdir()
    (router / "config.json").write_text("{}\n")
    tracker = WandbTracker({"mode": "offline", "artifact_name": "my router"}, {}, tmp_path, "unit")
    tracker.log_router(router, "thr-lambda-0.01-seed-0", {"test_point": {"pgr": float("nan"), "accuracy": 0.5}})
    tracker.finish()
    wandb.teardown()  # stops the wandb-core service, which closes the transaction log (a subprocess run does this at exit)
    [artifact] = of_type(wandb_records(next(offline_run_dir(tmp_path).glob("*.wandb"))), "artifact")
    assert artifact.name == "my-router"
    assert json.loads(artifact.metadata) == {"test_point": {"pgr": None, "accuracy": 0.5}}


@pytest.mark.parametrize(
    ("settings", "environ", "sweep_dir", "expected"),
    [
        ({"group": "mine"}, {"WANDB_SWEEP_ID": "abc123"}, "/runs/multirun/2026-12-02_10-00-00", "mine"),
        ({"group": None}, {"WANDB_SWEEP_ID": "abc123"}, None, "sweep-abc123"),
        ({"group": None}, {}, "/shared/sweeps/run1", "run1"),
        ({"group": None}, {"WANDB_SWEEP_ID": ""}, None, None),
    ],
    ids=["explicit-group-wins", "wandb-sweep-agent", "hydra-multirun", "single-run"],
)
def test_sweep_group(settings: dict[str, Any], environ: dict[str, str], sweep_dir: str | None, expected: str | None) -> None:
    assert sweep_group(settings, environ, sweep_dir) == expected


def test_artifact_names_keep_only_what_wandb_allows() -> None:
    assert artifact_name("agg-lambda-0.01-seed-0") == "agg-lambda-0.01-seed-0"
    assert artifact_name("agg lambda=1e-3/x") == "agg-lambda-1e-3-x"
    with pytest.raises(ValueError, match="'///'"):
        artifact_name("///")
