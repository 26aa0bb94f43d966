"""Packaging: every package is declared, data is found in a checkout or an install, and a plain install works anywhere."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from trim_env import paths

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
DATA_PACKAGES = {"trim_conf": "conf", "trim_cached_rollouts": "cached_rollouts"}


def test_every_package_of_the_checkout_is_declared() -> None:
    found = {
        ".".join(init.parent.relative_to(REPO).parts)
        for top in ("trim_env", "agents")
        for init in (REPO / top).rglob("__init__.py")
    }
    declared = set(PYPROJECT["tool"]["setuptools"]["packages"])
    assert declared - set(DATA_PACKAGES) == found
    assert PYPROJECT["tool"]["setuptools"]["package-dir"] == DATA_PACKAGES


def test_in_a_checkout_configs_recipe_and_cache_are_the_checkouts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(paths.CACHE_ENV, raising=False)
    assert paths.checkout_root() == REPO
    assert paths.config_dir() == REPO / "conf" and (paths.config_dir() / "config.yaml").is_file()
    assert paths.cache_dir() == REPO / "cached_rollouts"
    assert paths.recipe_file(paths.cache_dir()) == REPO / "cached_rollouts" / "default.json"


def test_trim_cache_dir_overrides_the_cache_and_its_recipe_is_used_when_present(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(paths.CACHE_ENV, str(tmp_path))
    assert paths.cache_dir() == tmp_path
    assert paths.recipe_file(tmp_path) == REPO / "cached_rollouts" / "default.json"  # none there: the shipped one
    (tmp_path / "default.json").write_text("{}")
    assert paths.recipe_file(tmp_path) == tmp_path / "default.json"


def test_without_a_checkout_the_cache_is_the_user_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(paths.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(paths, "checkout_root", lambda: None)
    expected = tmp_path / "trim" if sys.platform.startswith("linux") else paths.user_cache_dir()
    assert paths.cache_dir() == expected


def test_without_a_checkout_or_installed_data_the_error_says_to_reinstall(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(paths, "checkout_root", lambda: None)
    # Neither a checkout nor the data package (an editable install maps trim_conf to a checkout's conf/).
    monkeypatch.setattr(paths.importlib.util, "find_spec", lambda name, *args: None)
    with pytest.raises(FileNotFoundError, match=r"'trim_conf'.*reinstall trim"):
        paths.config_dir()


@pytest.mark.slow
def test_a_plain_install_works_from_an_unrelated_directory(tmp_path: Path) -> None:
    """`pip install <checkout>` (not editable) into a fresh venv; then, elsewhere, the console scripts and the data.

    The venv sees the system site-packages (torch and the other dependencies are not downloaded
    again), but trim itself must come from the venv, not from an editable install of a checkout.
    """
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    python, bin_dir = venv / "bin" / "python", venv / "bin"
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", str(REPO)], capture_output=True, text=True)
    assert install.returncode == 0, install.stderr[-3000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", paths.CACHE_ENV)}
    env["XDG_CACHE_HOME"] = str(tmp_path / "xdg")

    def run(*command: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(command, cwd=elsewhere, env=env, capture_output=True, text=True)
        assert result.returncode == 0, (command, result.stderr[-3000:])
        return result

    site = run(str(python), "-c", "import trim_env, agents.cli; print(trim_env.__file__); print(agents.cli.__file__)").stdout
    assert all(line.startswith(str(venv)) for line in site.split()), site
    located = run(
        str(python), "-c",
        "from trim_env.paths import config_dir, cache_dir, recipe_file; print(config_dir()); print(cache_dir()); print(recipe_file(cache_dir()))",
    ).stdout.split()
    assert located[0].startswith(str(venv)) and located[0].endswith("trim_conf")
    assert located[1] == str(tmp_path / "xdg" / "trim")
    assert located[2].startswith(str(venv)) and located[2].endswith("default.json")
    for script in PYPROJECT["project"]["scripts"]:
        assert (bin_dir / script).is_file(), script
    assert "== Config ==" in run(str(bin_dir / "trim-simulate"), "--help").stdout
    run(str(bin_dir / "trim-simulate"), "preset=math500-qwen1.5b-7b", "n_queries=6", "seed=0", f"out={tmp_path / 'dataset'}")
    assert (tmp_path / "dataset" / "manifest.json").is_file()
    assert sorted(p.name for p in elsewhere.iterdir()) == []


#: Packages of the optional extras (real, serve, serve-llama, tensorboard); a plain `pip install .` has none of them.
OPTIONAL_PACKAGES = ("httpx", "fastapi", "uvicorn", "prometheus_client", "openai", "llama_cpp", "math_verify", "gguf", "accelerate", "tensorboard")


@pytest.mark.parametrize("module", ["agents.cli.train", "agents.cli.evaluate"])
def test_training_and_evaluation_need_none_of_the_optional_extras(module: str, tiny_dataset_dir: Path, tmp_path: Path) -> None:
    """The README's first command runs after `pip install -e .` alone: no app imports an extra's package on its way."""
    blocker = (
        "import runpy, sys\n"
        "class Blocked:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.split('.')[0] in {OPTIONAL_PACKAGES!r}:\n"
        "            raise ImportError(f'{name} belongs to an optional extra')\n"
        "sys.meta_path.insert(0, Blocked())\n"
        f"runpy.run_module({module!r}, run_name='__main__')\n"
    )
    overrides = ["policy=thr", "lambda=0.01", f"data.path={tiny_dataset_dir}", "data.persist_growth=false", "progress_bar=false",
                 f"hydra.run.dir={tmp_path / 'run'}"]
    if module.endswith("evaluate"):
        overrides.remove("lambda=0.01")
        overrides.remove("progress_bar=false")
    result = subprocess.run([sys.executable, "-c", blocker, *overrides], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "run" / "results.json").is_file()
