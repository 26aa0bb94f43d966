"""The one registry of router kinds: policy name -> class, read from ``conf/policy/*.yaml``.

Each policy config names the class that implements it (``router: module:Class``); nothing is
registered by importing a module. The registry is built on first use (:func:`registry`) from the
config directory of :func:`agents.cli.config_dir`, and serves three look-ups:

- :meth:`Registry.policy` — the class of a policy name (``train``, ``evaluate``);
- :meth:`Registry.loader` — the class that loads an exported router's ``kind`` (``load_router``);
- :meth:`Registry.schemas` — each kind's settings dataclass, stored in Hydra's ConfigStore by the
  entry points (:func:`agents.cli.common.register_schemas`) so that the YAML files can extend it.

It reads YAML with PyYAML and imports router modules only, so loading an exported router needs
neither Hydra nor stable-baselines3.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from agents.base import PolicyKind, Router


class RegistryError(ValueError):
    """A policy config or a router reference that does not resolve to a router class."""


def import_class(reference: str, source: str) -> type:
    """The class named by ``module:Class``; ``source`` (file and field) is named in errors."""
    module_name, _, class_name = str(reference).partition(":")
    if not module_name or not class_name:
        raise RegistryError(f"{source} = {reference!r} must be 'module:Class'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise RegistryError(f"{source} = {reference!r}: cannot import {module_name} ({error})") from error
    found = getattr(module, class_name, None)
    if not isinstance(found, type):
        raise RegistryError(f"{source} = {reference!r}: {module_name} has no class {class_name}")
    for member in ("Settings", "fit", "sweep"):
        if not hasattr(found, member):
            raise RegistryError(f"{source} = {reference!r}: {class_name} has no {member} (see agents.base.Router)")
    return found


@dataclass(frozen=True)
class Registry:
    """Policy names and the ``module:Class`` implementing each, with the file that says so.

    :param references: policy name -> (``module:Class``, the config file naming it).
    """

    references: dict[str, tuple[str, Path]]

    @property
    def names(self) -> list[str]:
        """The registered policy names."""
        return sorted(self.references)

    def policy(self, name: str) -> type[PolicyKind]:
        """The class implementing policy ``name``."""
        if name not in self.references:
            raise RegistryError(f"unknown policy.name {name!r}; registered policies (conf/policy/*.yaml): {self.names}")
        reference, path = self.references[name]
        return import_class(reference, f"{path}: field router")

    def router_classes(self) -> list[type[Router]]:
        """Every registered :class:`~agents.base.Router` subclass (each once)."""
        classes: list[type[Router]] = []
        for name in self.names:
            found = self.policy(name)
            if isinstance(found, type) and issubclass(found, Router) and found not in classes:
                classes.append(found)
        return classes

    def loader(self, kind: str) -> type[Router]:
        """The router class whose exported directories have ``config.json`` field ``kind``."""
        for found in self.router_classes():
            if found.kind == kind:
                return found
        known = sorted(found.kind for found in self.router_classes())
        raise RegistryError(f"field kind = {kind!r}; known kinds: {known}")

    def schemas(self) -> dict[str, type]:
        """Schema name (the settings class's name) -> settings dataclass, for every registered policy."""
        found: dict[str, type] = {}
        for name in self.names:
            settings = self.policy(name).Settings
            if settings is not None:
                found[settings.__name__] = settings
        return found


def read_registry(policy_dir: str | Path) -> Registry:
    """The registry of the ``*.yaml`` policy configs in ``policy_dir`` (each with a ``router`` field)."""
    policy_dir = Path(policy_dir)
    if not policy_dir.is_dir():
        raise RegistryError(f"{policy_dir}: no policy config directory")
    references: dict[str, tuple[str, Path]] = {}
    for path in sorted(policy_dir.glob("*.yaml")):
        try:
            content: Any = yaml.safe_load(path.read_text())
        except yaml.YAMLError as error:
            raise RegistryError(f"{path}: not valid YAML ({error})") from error
        if not isinstance(content, dict) or "router" not in content:
            raise RegistryError(f"{path}: field router (module:Class of the policy's router) is missing")
        if content.get("name", path.stem) != path.stem:
            raise RegistryError(f"{path}: field name = {content['name']!r} must be the file's name {path.stem!r}")
        references[path.stem] = (str(content["router"]), path)
    return Registry(references)


@cache
def registry() -> Registry:
    """The registry of this checkout's (or installation's) ``conf/policy``."""
    from agents.cli import config_dir  # noqa: PLC0415  (agents.cli's apps import the registry)

    return read_registry(config_dir() / "policy")


def make_router(name: str, **arguments: Any) -> Router:
    """Build policy ``name``'s router class with ``arguments`` (e.g. ``make_router("thr", threshold=0.3)``)."""
    router_class = registry().policy(name)
    if not (isinstance(router_class, type) and issubclass(router_class, Router)):
        raise RegistryError(f"policy {name!r} is not a router class ({router_class.__name__})")
    return router_class(**arguments)
