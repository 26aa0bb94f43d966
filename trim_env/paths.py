"""Where trim finds its configs, its default-data recipe and its cache, in a checkout or an installed package.

A checkout (the repository, installed editable or put on ``PYTHONPATH``) keeps everything at the
top of the repository: ``conf/`` and ``cached_rollouts/``. A plain ``pip install`` ships the
configs as the package ``trim_conf`` and the recipe as ``trim_cached_rollouts`` (see
``pyproject.toml``), and keeps generated data in the user's cache directory, since site-packages
may be read-only and is not the place for a 100 MB dataset.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

#: Environment variable naming the cache directory (default data and its recipe), as before.
CACHE_ENV = "TRIM_CACHE_DIR"
#: File name of the default-data recipe.
RECIPE_FILE = "default.json"


def checkout_root() -> Path | None:
    """The repository this package was imported from, or ``None`` for an installed package.

    A checkout is recognised by ``pyproject.toml`` and ``conf/`` next to the ``trim_env`` package.
    """
    root = Path(__file__).resolve().parents[1]
    if (root / "pyproject.toml").is_file() and (root / "conf").is_dir():
        return root
    return None


def _installed_package_dir(package: str, marker: str) -> Path:
    """The directory of an installed data package holding ``marker`` (a plain directory in site-packages).

    The data packages have no ``__init__.py`` (they are namespace packages), so their directory
    is read from the import spec: the first location that holds ``marker``.
    """
    spec = importlib.util.find_spec(package)
    locations = [Path(location) for location in (spec.submodule_search_locations or [])] if spec is not None else []
    for location in locations:
        if (location / marker).is_file():
            return location
    raise FileNotFoundError(
        f"trim's package data {package!r} (with {marker}) is not installed and no checkout was found next to "
        f"{Path(__file__).parent}; reinstall trim (pip install <checkout>)"
    )


def config_dir() -> Path:
    """The Hydra config directory: the checkout's ``conf/``, else the installed ``trim_conf`` package."""
    root = checkout_root()
    return root / "conf" if root is not None else _installed_package_dir("trim_conf", "config.yaml")


def user_cache_dir() -> Path:
    """The platform's per-user cache directory for trim (``$XDG_CACHE_HOME/trim`` or ``~/.cache/trim`` on Linux)."""
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
        return base / "trim" / "Cache"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "trim"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "trim"


def cache_dir() -> Path:
    """Where the default data lives: ``$TRIM_CACHE_DIR``, else the checkout's ``cached_rollouts/``, else :func:`user_cache_dir`."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    root = checkout_root()
    return root / "cached_rollouts" if root is not None else user_cache_dir()


def recipe_file(cache: Path) -> Path:
    """The default-data recipe: ``cache/default.json`` when present, else the one shipped with trim."""
    if (cache / RECIPE_FILE).is_file():
        return cache / RECIPE_FILE
    root = checkout_root()
    shipped = root / "cached_rollouts" if root is not None else _installed_package_dir("trim_cached_rollouts", RECIPE_FILE)
    return shipped / RECIPE_FILE
