"""Exported routers: a self-describing directory, loaded through the registry with torch alone.

Layout of an exported router directory::

    config.json           format version, kind (which class loads it), policy name, settings,
                          feature spec and scaling, lambda, cost unit, dataset content hash and
                          split, trim version, and the kind's own fields (e.g. network shape)
    training_queries.json the ids of the queries the router was fitted on (data identity)
    ...                   the kind's own files (model.safetensors, pomdp_model.json, ...)

:func:`load_router` reads ``config.json``, checks format and features, and hands the directory to
the class the registry (:mod:`agents.registry`) names for its ``kind``. It imports neither
stable-baselines3 nor Hydra. :class:`SavedRouter` is the ``policy=router`` entry of the registry:
it evaluates an exported directory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Optional

import torch
from safetensors.torch import save_file

import trim_env
from agents.base import Fitted, Router, RouterSettings, SweepPoint, TrainingData
from trim_env import atomic, features
from trim_env.evaluation import run_episodes
from trim_env.tree import MAX_STEPS, RolloutTrees

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
#: The ids of the queries a router was trained (and had its checkpoint chosen) on.
TRAINING_QUERIES_FILE = "training_queries.json"


def feature_spec() -> dict[str, Any]:
    """The observation layout and scaling a router was trained with (checked on load)."""
    return {
        "agg_features": list(features.AGG_FEATURES),
        "seq_channels": list(features.SEQ_CHANNELS),
        "token_scale": features.TOKEN_SCALE,
        "token_feature_high": features.TOKEN_FEATURE_HIGH,
        "strong_step_scale": features.STRONG_STEP_SCALE,
        "max_steps": MAX_STEPS,
    }


def write_router(directory: str | Path, config: dict[str, Any], weights: dict[str, torch.Tensor] | None = None) -> Path:
    """Write ``config.json`` (completed with format, feature spec and version) and optional weights.

    Each file is written atomically; :func:`agents.cli.common.export_router` swaps a whole new
    directory in, so no file of an older router survives beside the new one.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if "kind" not in config:
        raise ValueError(f"router config for {directory} has no field kind (which class loads it)")
    full = {"format": "trim-router", "format_version": FORMAT_VERSION, "trim_version": trim_env.__version__,
            "feature_spec": feature_spec(), **config}
    if weights is not None:
        tensors = {name: tensor.detach().contiguous().cpu() for name, tensor in weights.items()}
        atomic.write_atomic(directory / WEIGHTS_FILE, lambda scratch: save_file(tensors, str(scratch)))
    atomic.write_json(directory / CONFIG_FILE, full)
    return directory


def write_training_queries(directory: str | Path, query_ids: list[str]) -> Path:
    """Record the identity of a router's training data: the ids of every query it saw."""
    return atomic.write_text(Path(directory) / TRAINING_QUERIES_FILE, json.dumps({"query_ids": sorted(query_ids)}) + "\n")


def check_not_trained_on(directory: str | Path, query_ids: list[str], allow: bool = False) -> None:
    """Refuse to score the router in ``directory`` on queries it was trained on.

    :param directory: the exported router.
    :param query_ids: the ids of the queries about to be evaluated.
    :param allow: score anyway (e.g. to measure the fit on the training data on purpose).
    :raises ValueError: naming the router, how many queries overlap, one of them and the override.
    """
    path = Path(directory) / TRAINING_QUERIES_FILE
    if allow or not path.exists():  # routers exported before training data was recorded carry no ids
        return
    try:
        trained = set(json.loads(path.read_text())["query_ids"])
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(f"{path}: not a list of training query ids ({error})") from error
    overlap = sorted(trained.intersection(query_ids))
    if overlap:
        raise ValueError(
            f"the router in {directory} was trained on {len(overlap)} of the {len(query_ids)} evaluated queries "
            f"(e.g. {overlap[0]!r}, listed in {path}): its score there measures memorisation, not routing. Evaluate on "
            "other queries, or pass policy.allow_training_queries=true to score it anyway"
        )


def read_router_config(path: str | Path) -> dict[str, Any]:
    """Read and check an exported router's ``config.json``."""
    directory = Path(path)
    config_path = directory / CONFIG_FILE
    if not config_path.exists():
        raise FileNotFoundError(f"{config_path}: missing; {directory} is not an exported router directory")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{config_path}: not valid JSON ({error})") from error
    if config.get("format") != "trim-router" or config.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{config_path}: format {config.get('format')!r} version {config.get('format_version')!r}; "
            f"this trim reads trim-router version {FORMAT_VERSION}"
        )
    if config.get("feature_spec") != feature_spec():
        raise ValueError(
            f"{config_path}: field feature_spec differs from this trim's features ({feature_spec()}); "
            "the router was trained on other observations and would be fed the wrong inputs"
        )
    return config


def load_router(path: str | Path) -> Router:
    """Load an exported router directory as a :class:`~agents.base.Router`.

    :param path: the directory written by ``trim-train`` (``OUT/router``).
    :returns: the router of the class the registry names for the directory's ``kind``; its
        ``config`` is the directory's ``config.json``.
    """
    from agents.registry import RegistryError, registry  # noqa: PLC0415  (the registry imports the router modules, which import this one)

    directory = Path(path)
    config = read_router_config(directory)
    try:
        router_class = registry().loader(str(config.get("kind")))
    except RegistryError as error:
        raise ValueError(f"{directory / CONFIG_FILE}: {error}") from None
    return router_class.load(directory, config)


@dataclass
class SavedRouterSettings(RouterSettings):
    """``policy=router`` (evaluation only): an exported router directory.

    :param path: the directory written by ``trim-train`` into ``OUT/router``.
    :param allow_training_queries: score it on queries it was trained on anyway (refused by default).
    :param operating_points: evaluate it at each of these operating points (TRIM-Thr's threshold,
        λ of TRIM-POMDP or of a λ-conditioned router), one point each; ``null``: once, as exported.
    """

    path: str = "???"
    allow_training_queries: bool = False
    operating_points: Optional[list[float]] = None


class SavedRouter:
    """The ``router`` policy: evaluates an exported router; there is nothing to train."""

    Settings: ClassVar[type[RouterSettings] | None] = SavedRouterSettings
    config_groups: ClassVar[dict[str, type]] = {}
    sweep_trains: ClassVar[bool] = False

    @classmethod
    def fit(cls, settings: SavedRouterSettings, data: TrainingData, **groups: Any) -> Fitted:
        raise ValueError(
            f"policy.name {settings.name!r} evaluates an exported router (trim-evaluate policy=router policy.path=DIR); "
            "trim-train trains the other policies"
        )

    @classmethod
    def sweep(cls, settings: SavedRouterSettings, trees: RolloutTrees) -> list[SweepPoint]:
        """One point: the exported router on ``trees`` (refused on its own training queries unless allowed)."""
        check_not_trained_on(settings.path, trees.query_id, settings.allow_training_queries)
        router = load_router(settings.path)
        label = f"router:{router.config['policy']}"
        if settings.operating_points is None:
            return [SweepPoint(label, router.config.get("lambda"), run_episodes(trees, router))]
        points = []
        for index, value in enumerate(settings.operating_points):
            try:
                moved = router.at_operating_point(float(value))
            except ValueError as error:
                raise ValueError(f"policy.operating_points[{index}] = {value}: {error}") from None
            points.append(SweepPoint(label, float(value), run_episodes(trees, moved)))
        return points
