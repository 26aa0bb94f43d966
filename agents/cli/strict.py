"""Checks shared by the Hydra apps: strict booleans, required settings, no silent overwrite.

Hydra and OmegaConf accept ``yes``, ``on``, ``n`` or any integer for a boolean setting (``2``
becomes true). A typo then silently means "true", so every app calls
:func:`check_boolean_overrides` first: a boolean given on the command line must be written
``true``, ``false``, ``1`` or ``0`` (any case).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

#: The spellings of a boolean accepted on the command line (compared lower-case).
BOOLEAN_SPELLINGS = ("true", "false", "1", "0")


def boolean_override_errors(cfg: Any, overrides: list[str]) -> list[str]:
    """One message per override that sets a boolean setting with a spelling outside :data:`BOOLEAN_SPELLINGS`.

    :param cfg: the composed config.
    :param overrides: command-line overrides (``key=value``, ``+key=value``, ``++key=value``).
    """
    errors = []
    for override in overrides:
        key, separator, value = override.lstrip("+").partition("=")
        if not separator or "/" in key or "@" in key:  # deletions and config-group choices hold no value
            continue
        if isinstance(OmegaConf.select(cfg, key, default=None), bool) and value.strip().lower() not in BOOLEAN_SPELLINGS:
            errors.append(f"{key}={value}: a boolean setting must be one of {', '.join(BOOLEAN_SPELLINGS)}")
    return errors


def check_boolean_overrides(cfg: Any) -> None:
    """Exit with a message naming every boolean override of this run that is not true/false/1/0.

    :param cfg: the config of the running Hydra app (its overrides come from ``HydraConfig``).
    """
    errors = boolean_override_errors(cfg, list(HydraConfig.get().overrides.task))
    if errors:
        raise SystemExit("error: " + "; ".join(errors))


def require_settings(arguments: list[str], names: tuple[str, ...], usage: str) -> None:
    """Exit with the usage line when a required setting is missing from the command line.

    Apps whose run directory is a required setting (``hydra.run.dir: ${out}``) call this before
    Hydra starts: Hydra could otherwise only fail with a traceback while naming the directory.
    Hydra's own flags (``--help``, ``--cfg job`` ...) need no settings and skip the check.

    :param arguments: the command-line arguments (``sys.argv[1:]``).
    :param names: settings that must be given.
    :param usage: the usage line shown with the error.
    """
    if any(argument.startswith("-") for argument in arguments):
        return
    given = {override.key_or_group for override in OverridesParser.create().parse_overrides(arguments)}
    missing = [name for name in names if name not in given]
    if missing:
        raise SystemExit(f"error: missing required setting(s) {missing}; usage: {usage}")


def refuse_to_overwrite(directory: str | Path, outputs: tuple[str, ...], overwrite: bool) -> None:
    """Exit with a message when ``directory`` already holds one of ``outputs`` and ``overwrite`` is false.

    Called before anything is written, so a refused run leaves the earlier results as they were.

    :param directory: the run's output directory.
    :param outputs: file names the run writes there.
    :param overwrite: the run's ``overwrite`` setting.
    """
    existing = [name for name in outputs if (Path(directory) / name).exists()]
    if existing and not overwrite:
        raise SystemExit(
            f"error: {directory} already holds {', '.join(existing)}; choose another out=DIR or pass overwrite=true to replace them"
        )
