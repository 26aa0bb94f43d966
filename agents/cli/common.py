"""What every entry point shares: the structured configs, strict scalars, run-dir claiming and exporting.

- :func:`register_schemas` stores each registered kind's settings dataclass (``schema/policy/<Class>``,
  which ``conf/policy/<name>.yaml`` extends), each cost model's (``schema/cost/<Class>``, which
  ``conf/cost/<name>.yaml`` extends) and PPO's (``ppo/default``) in Hydra's ConfigStore;
  every ``main()`` calls it before Hydra composes, so OmegaConf checks types (``policy.bins=x``
  is an error naming the key) and the dataclasses are the only home of the defaults.
- :func:`read_bool` / :func:`read_int` / :func:`read_float` parse the untyped top-level keys strictly.
- :func:`run_dir` claims the Hydra run directory (:mod:`trim_env.run_dirs`) and records the config.
- :func:`settings_of` turns a composed group into its dataclass instance.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from agents.actor import PPO_OPTIONS, PPOSettings
from agents.base import Router
from agents.cli import config_dir
from agents.export import write_training_queries
from agents.registry import registry
from trim_env import atomic
from trim_env.cost import COST_MODELS, CostModel, StrongTokensCost, cost_model_from_dict
from trim_env.run_dirs import RunDirError, claim_run_dir
from trim_env.store import GrowthBudgetSpent


def register_schemas() -> None:
    """Store the settings dataclasses in Hydra's ConfigStore (idempotent)."""
    store = ConfigStore.instance()
    store.store(group="ppo", name="default", node=PPOSettings)
    for name, option in PPO_OPTIONS.items():
        store.store(group="ppo", name=name, node=option)
    for name, settings in registry().schemas().items():
        store.store(group="schema/policy", name=name, node=settings)
    for model in COST_MODELS.values():
        store.store(group="schema/cost", name=model.__name__, node=model)


def compose(config_name: str, overrides: list[str]) -> DictConfig:
    """The config an entry point would run with (schemas registered, composed from :func:`config_dir`),
    for calling its work function directly, e.g. ``train(compose("config", ["policy=thr"]), out)``."""
    register_schemas()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3", job_name=config_name):
        return hydra_compose(config_name=config_name, overrides=list(overrides))


def settings_of(node: DictConfig) -> Any:
    """The dataclass instance of a structured config node (``cfg.policy``, ``cfg.ppo``)."""
    return OmegaConf.to_object(node)


def read_bool(cfg: DictConfig, key: str) -> bool:
    """``cfg.<key>`` as a bool: true/false (or 1/0); anything else is an error naming the key."""
    value = OmegaConf.select(cfg, key)
    if isinstance(value, bool):
        return value
    if value in (0, 1) and not isinstance(value, float):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ValueError(f"{key} = {value!r} must be true or false")


def read_int(cfg: DictConfig, key: str, minimum: int | None = None) -> int:
    """``cfg.<key>`` as an int (at least ``minimum``); an error naming the key otherwise."""
    value = OmegaConf.select(cfg, key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{key} = {value!r} must be an integer")
    if minimum is not None and value < minimum:
        raise ValueError(f"{key} = {value} must be at least {minimum}")
    return value


def read_float(cfg: DictConfig, key: str, check: Callable[[float], bool], requirement: str) -> float:
    """``cfg.<key>`` as a finite float satisfying ``check``; ``requirement`` describes it in the error."""
    value = OmegaConf.select(cfg, key)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{key} = {value!r} must be {requirement}") from None
    if isinstance(value, bool) or not math.isfinite(number) or not check(number):
        raise ValueError(f"{key} = {value!r} must be {requirement}")
    return number


def read_simulated_selection(cfg: DictConfig) -> tuple[int, int]:
    """``(data.seed, data.n_queries)`` for ``data.preset`` runs: a seed >= 0 and at least one query."""
    return read_int(cfg, "data.seed", minimum=0), read_int(cfg, "data.n_queries", minimum=1)


def read_cost_model(cfg: DictConfig) -> CostModel:
    """``cost``: the cost model of the ``cost=`` group (checked by its dataclass; strong tokens if the config has none)."""
    if cfg.get("cost") is None:
        return StrongTokensCost()
    return cost_model_from_dict(dict(OmegaConf.to_container(cfg.cost, resolve=True)))  # type: ignore[arg-type]


def read_cost_unit_tokens(cfg: DictConfig) -> float:
    """``env.cost_unit_tokens``: strong tokens per cost unit, a finite number > 0."""
    return read_float(cfg, "env.cost_unit_tokens", lambda x: x > 0, "a finite number > 0 (strong tokens per cost unit)")


@contextmanager
def run_dir(cfg: DictConfig, outputs: list[str], command: str) -> Iterator[Path]:
    """Claim Hydra's output directory for this run (see :func:`trim_env.run_dirs.claim_run_dir`).

    The run's config is recorded under ``.hydra/`` only once the directory is claimed (the
    configs set ``hydra.output_subdir: null`` so that Hydra does not write it before): a refused
    run leaves the directory as it was. A refused directory or a spent growth budget ends the
    run with a message prefixed by ``command`` instead of a traceback (every grown batch is on
    disk already: it was persisted as it was grown).
    """
    hydra_config = HydraConfig.get()
    config_files = {
        "config.yaml": OmegaConf.to_yaml(cfg),
        "hydra.yaml": OmegaConf.to_yaml({"hydra": hydra_config}),
        "overrides.yaml": OmegaConf.to_yaml(hydra_config.overrides.task),
    }
    try:
        with claim_run_dir(hydra_config.runtime.output_dir, outputs, read_bool(cfg, "overwrite"), config_files) as directory:
            yield directory
    except GrowthBudgetSpent as spent:
        raise SystemExit(f"{command}: {spent}") from spent
    except RunDirError as error:
        raise SystemExit(f"{command}: {error}") from None


def export_router(directory: Path, router: Router, training_query_ids: list[str]) -> Path:
    """Write ``router`` and the ids of its training queries to ``directory``, swapped in whole."""

    def fill(scratch: Path) -> None:
        router.save(scratch)
        write_training_queries(scratch, training_query_ids)

    return atomic.replace_directory(directory, fill)
