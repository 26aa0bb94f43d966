"""Exported routers: a directory with weights (safetensors) and a JSON config, loadable with torch alone.

Layout of an exported router directory::

    config.json        format version, policy name and kind, feature spec and scaling, lambda,
                       cost unit, dataset content hash, trim version, network shape
    model.safetensors  the actor's weights (learned routers only)

:func:`load_router` imports neither stable-baselines3 nor Hydra.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors.torch import load_file, save_file

import trim_env
from agents.base import Router
from agents.networks import ActorNetwork
from agents.threshold import ThresholdRouter
from trim_env import features
from trim_env.tree import MAX_STEPS

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


class ActorRouter(Router):
    """A learned router: argmax of an :class:`~agents.networks.ActorNetwork`'s action logits."""

    def __init__(self, network: ActorNetwork, observation: str) -> None:
        self.network = network.eval()
        self.observation_kind = observation  # type: ignore[misc]

    @torch.no_grad()
    def predict(self, observations: np.ndarray) -> np.ndarray:
        logits = self.network(torch.as_tensor(np.asarray(observations, dtype=np.float32)))
        return logits.argmax(-1).numpy()


def write_router(directory: str | Path, config: dict[str, Any], weights: dict[str, torch.Tensor] | None = None) -> Path:
    """Write ``config.json`` (completed with format, feature spec and version) and optional weights."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    full = {"format": "trim-router", "format_version": FORMAT_VERSION, "trim_version": trim_env.__version__,
            "feature_spec": feature_spec(), **config}
    if weights is not None:
        save_file({name: tensor.detach().contiguous().cpu() for name, tensor in weights.items()}, str(directory / WEIGHTS_FILE))
    (directory / CONFIG_FILE).write_text(json.dumps(full, indent=2) + "\n")
    return directory


def write_training_queries(directory: str | Path, query_ids: list[str]) -> Path:
    """Record the identity of a router's training data: the ids of every query it saw."""
    path = Path(directory) / TRAINING_QUERIES_FILE
    path.write_text(json.dumps({"query_ids": sorted(query_ids)}) + "\n")
    return path


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


def _load_actor(directory: Path, config: dict[str, Any]) -> Router:
    network_config = config["network"]
    network = ActorNetwork(
        config["observation"],
        network_config["observation_dim"],
        network_config["hidden"],
        network_config["activation"],
        network_config.get("seq"),
    )
    weights_path = directory / WEIGHTS_FILE
    if not weights_path.exists():
        raise FileNotFoundError(f"{weights_path}: missing; the router directory is incomplete")
    try:
        network.load_state_dict(load_file(str(weights_path)))
    except RuntimeError as error:
        raise ValueError(
            f"{weights_path}: weights do not fit the network in {directory / CONFIG_FILE} (field network = {network_config}): {error}"
        ) from error
    return ActorRouter(network, config["observation"])


def _load_threshold(directory: Path, config: dict[str, Any]) -> Router:
    return ThresholdRouter(config["threshold"])


#: Loader for each router kind recorded in ``config.json``.
LOADERS: dict[str, Callable[[Path, dict[str, Any]], Router]] = {"actor": _load_actor, "threshold": _load_threshold}


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
    if config.get("kind") not in LOADERS:
        raise ValueError(f"{config_path}: field kind = {config.get('kind')!r}; known kinds: {sorted(LOADERS)}")
    return config


def load_router(path: str | Path) -> Router:
    """Load an exported router directory as a :class:`~agents.base.Router`.

    :param path: the directory written by ``train.py`` (``OUT/router``).
    """
    config = read_router_config(path)
    router = LOADERS[config["kind"]](Path(path), config)
    router.config = config  # type: ignore[attr-defined]
    return router
