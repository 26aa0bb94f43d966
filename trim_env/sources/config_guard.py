"""A Hydra callback that removes API keys given as settings before a run writes anything.

Backends read their key from the environment variable that ``api_key_env`` names
(:func:`~trim_env.sources.api_keys.check_api_key_env` refuses a value that looks like a key).
That check runs when the backends are built, but a Hydra app has by then written its config and
overrides to ``.hydra/``. This callback runs at the start of the run, before any file is written:
an ``api_key_env`` that looks like a key (``weak.api_key_env=sk-...``) is replaced by
:data:`~trim_env.sources.api_keys.REMOVED_SECRET` in the config and in the recorded overrides,
so the key is never stored, and building the backends then stops the run with a message naming
the field. (Hydra turns exceptions of callbacks into warnings, so the callback scrubs rather than
raises.) Apps enable it in their config::

    hydra:
      callbacks:
        refuse_secrets:
          _target_: trim_env.sources.config_guard.RefuseSecretSettings
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, ListConfig, read_write

from trim_env.sources.api_keys import REMOVED_SECRET, check_api_key_env


def api_key_settings(config: Any, where: str = "") -> Iterator[tuple[Any, str, str]]:
    """``(parent node, key, dotted path)`` of every ``api_key_env`` field of a config (the ``hydra`` node excluded)."""
    if isinstance(config, DictConfig):
        for key in map(str, config):
            if not where and key == "hydra":
                continue
            path = f"{where}.{key}" if where else key
            if key == "api_key_env":
                yield config, key, path
            else:
                yield from api_key_settings(config._get_node(key), path)
    elif isinstance(config, ListConfig):
        for index in range(len(config)):
            yield from api_key_settings(config._get_node(index), f"{where}[{index}]")


def remove_secrets(config: DictConfig) -> list[str]:
    """Replace every ``api_key_env`` value that looks like a key, in ``config`` and its recorded overrides; the paths replaced."""
    removed = []
    for parent, key, path in list(api_key_settings(config)):
        value = parent._get_node(key)._value()
        try:
            check_api_key_env(value if isinstance(value, str) else None)
        except ValueError:
            with read_write(parent):
                parent[key] = REMOVED_SECRET
            removed.append((path, str(value)))
    secrets = [secret for _, secret in removed if secret]
    if secrets and "hydra" in config:
        _replace_in_strings(config._get_node("hydra"), secrets)  # recorded overrides, override_dirname, ...
    return [path for path, _ in removed]


def _replace_in_strings(node: Any, secrets: list[str]) -> None:
    """Replace each secret by :data:`REMOVED_SECRET` in every string value under ``node``."""
    keys = list(node) if isinstance(node, DictConfig) else range(len(node)) if isinstance(node, ListConfig) else []
    for key in keys:
        child = node._get_node(key)
        if isinstance(child, (DictConfig, ListConfig)):
            _replace_in_strings(child, secrets)
            continue
        value = child._value()
        if isinstance(value, str) and any(secret in value for secret in secrets):
            for secret in secrets:
                value = value.replace(secret, REMOVED_SECRET)
            with read_write(node):
                node[key] = value


class RefuseSecretSettings(Callback):
    """Removes API keys given as settings from a run's config before Hydra writes it (see the module docstring)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        remove_secrets(config)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        remove_secrets(config)
