"""Strict reading of command-line overrides, shared by the Hydra apps.

Hydra and OmegaConf accept ``yes``, ``on``, ``n`` or any integer for a boolean setting (``2``
becomes true). A typo then silently means "true", so every app calls
:func:`check_boolean_overrides` first: a boolean given on the command line must be written
``true``, ``false``, ``1`` or ``0`` (any case).
"""

from __future__ import annotations

from typing import Any

from hydra.core.hydra_config import HydraConfig
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
