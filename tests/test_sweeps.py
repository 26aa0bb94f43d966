"""Hydra multirun sweeps: in parallel on the local cores (joblib) and on a Ray cluster."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
# One thread per job: the jobs run side by side on the 2 cores.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0"}


def _sweep(prefix: list[str], sweep_dir: Path, data_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    command = [
        *prefix, sys.executable, "train.py", "-m", "policy=thr", "lambda=0.01,0.05",
        f"data.path={data_dir}", "data.persist_growth=false", f"hydra.sweep.dir={sweep_dir}", "progress_bar=false", *overrides,
    ]
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=600)


def _check_two_results(sweep_dir: Path) -> None:
    results = sorted(sweep_dir.glob("*/results.json"))
    # Job directories are named from every override of the job (paths and progress_bar aside).
    assert [path.parent.name for path in results] == [
        "data.persist_growth=False,lambda=0.01,policy=thr", "data.persist_growth=False,lambda=0.05,policy=thr"]
    lambdas = [json.loads(path.read_text())["points"][-1]["lambda"] for path in results]
    assert lambdas == [0.01, 0.05]


def test_multirun_runs_jobs_in_parallel_with_the_joblib_launcher(tiny_dataset_dir, tmp_path):
    result = _sweep([], tmp_path, tiny_dataset_dir)
    assert result.returncode == 0, result.stderr
    _check_two_results(tmp_path)
    launcher = yaml.safe_load((tmp_path / "multirun.yaml").read_text())["hydra"]["launcher"]
    assert "JoblibLauncher" in launcher["_target_"] and launcher["n_jobs"] == 2


def _can_make_network_namespaces() -> bool:
    return os.geteuid() == 0 and shutil.which("ip") is not None and shutil.which("ray") is not None


@pytest.mark.slow
@pytest.mark.skipif(not _can_make_network_namespaces(), reason="needs root, iproute2 and ray for a loopback-only namespace")
def test_the_same_sweep_runs_on_a_local_ray_cluster(tiny_dataset_dir, tmp_path):
    # Ray binds every interface it sees; a network namespace with only loopback keeps it on 127.0.0.1.
    namespace = f"trim-ray-{os.getpid()}"
    inside = ["ip", "netns", "exec", namespace]
    subprocess.run(["ip", "netns", "add", namespace], check=True)
    try:
        subprocess.run([*inside, "ip", "link", "set", "lo", "up"], check=True)
        started = subprocess.run(
            [*inside, "ray", "start", "--head", "--node-ip-address=127.0.0.1", "--port=6390",
             "--include-dashboard=false", "--num-cpus=2", "--disable-usage-stats"],
            capture_output=True, text=True, env=ENV, timeout=180,
        )
        assert started.returncode == 0, started.stderr
        result = _sweep([*inside, "env", "RAY_ADDRESS=127.0.0.1:6390"], tmp_path, tiny_dataset_dir, "hydra/launcher=ray_cluster")
        assert result.returncode == 0, result.stderr
        _check_two_results(tmp_path)
        launcher = yaml.safe_load((tmp_path / "multirun.yaml").read_text())["hydra"]["launcher"]
        assert "RayLauncher" in launcher["_target_"]
    finally:
        subprocess.run([*inside, "ray", "stop", "--force"], capture_output=True, env=ENV, timeout=120)
        subprocess.run(["ip", "netns", "delete", namespace], capture_output=True)
