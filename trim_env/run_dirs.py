"""Run directories that never lose results: one run per directory, no silent overwrite.

:func:`claim_run_dir` is what every entry point does before it writes anything: take a lock on
the directory (a second run given the same directory stops at once instead of interleaving its
files with the first), refuse a directory that already holds results unless ``overwrite=true``,
and with ``overwrite=true`` remove the previous run's outputs (so a TRIM-Thr run into an old
TRIM-Agg directory leaves no Agg model files beside its own results). Only then is the run's
config recorded (``.hydra/``), so a refused run changes nothing in the directory.
"""

from __future__ import annotations

import fcntl
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from trim_env import atomic

#: Held (``flock``) for as long as a run writes into its directory.
LOCK_FILE = ".run.lock"
#: Where a run's config is recorded (Hydra's ``output_subdir``; the entry points write it here).
CONFIG_SUBDIR = ".hydra"


class RunDirError(RuntimeError):
    """A run directory that is in use by another run, or that holds results and no overwrite was asked."""


def existing_outputs(directory: Path, outputs: list[str]) -> list[Path]:
    """The ``outputs`` (file or directory names) that exist in ``directory``."""
    return [directory / name for name in outputs if (directory / name).exists()]


@contextmanager
def claim_run_dir(
    directory: str | Path, outputs: list[str], overwrite: bool, config_files: dict[str, str] | None = None
) -> Iterator[Path]:
    """Hold ``directory`` for one run: locked, free of earlier results, its config recorded.

    :param directory: the run directory (created).
    :param outputs: names of the files and directories this kind of run writes (``results.json``,
        ``router``, ...): their presence means the directory holds results.
    :param overwrite: remove those earlier outputs instead of refusing.
    :param config_files: file name -> YAML text to record under ``.hydra/`` once the directory
        is claimed (written atomically).
    :raises RunDirError: naming the directory, what is in it and the override.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    lock_path = directory / LOCK_FILE
    with open(lock_path, "a") as lock:  # closing it releases the lock
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunDirError(
                f"run directory {directory} is in use by another run (it holds the lock {lock_path}); "
                "give this run its own directory (hydra.run.dir=...)"
            ) from None
        found = existing_outputs(directory, outputs)
        if found and not overwrite:
            raise RunDirError(
                f"run directory {directory} already holds results ({', '.join(path.name for path in found)}); "
                "pass overwrite=true to replace them, or give another directory (hydra.run.dir=...)"
            )
        for path in found:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        for name, text in (config_files or {}).items():
            atomic.write_text(directory / CONFIG_SUBDIR / name, text)
        yield directory
