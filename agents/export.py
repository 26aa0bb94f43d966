"""Exported routers: a self-describing directory, loaded through the registry with torch alone.

Layout of an exported router directory::

    config.json           format version, kind (which class loads it), policy name, settings,
                          feature spec and scaling, lambda, cost unit, dataset content hash and
                          split, trim version, and the kind's own fields (e.g. network shape)
    training_queries.json the ids of the queries the router was fitted on (data identity)
    README.md             model card written by ``trim-train`` (:func:`write_model_card`): YAML front
                          matter and what the router was trained on, λ, test metrics, how to load it;
                          for people and the Hub, never read when loading
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
import yaml
from safetensors.torch import save_file

import trim_env
from agents.base import Fitted, Router, RouterSettings, SweepPoint, TrainingData
from trim_env import atomic, features
from trim_env.evaluation import run_episodes
from trim_env.hf import HubDataset, is_hub_path
from trim_env.tree import MAX_STEPS, RolloutTrees, describe_source

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
#: The ids of the queries a router was trained (and had its checkpoint chosen) on.
TRAINING_QUERIES_FILE = "training_queries.json"
#: The model card (Hugging Face convention): for readers, never read by :func:`load_router`.
MODEL_CARD_FILE = "README.md"
#: The test figures a model card lists, in this order, with their row label.
CARD_METRICS = {
    "accuracy": "accuracy (fraction of queries solved)",
    "strong_tokens_per_query": "strong tokens / query",
    "normalized_cost": "c(π) = strong tokens / strong-only tokens",
    "pgr": "PGR (share of the weak→strong accuracy gap recovered)",
    "escalations_per_query": "escalations / query",
    "cap_binding_rate": "cap binding rate",
}


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


def _numbers(values: dict[str, Any]) -> dict[str, float | int]:
    """The int and float fields of ``values`` (booleans and non-numbers left out)."""
    return {key: value for key, value in values.items() if isinstance(value, (int, float)) and not isinstance(value, bool)}


def model_card(
    config: dict[str, Any],
    test_points: list[dict[str, Any]],
    anchors: list[dict[str, Any]],
    manifest: dict[str, Any],
    data_path: str | None,
    test_split: str,
    n_test_queries: int,
) -> str:
    """The model card (``README.md``) of an exported router: YAML front matter, then prose and a table.

    :param config: the router's ``config.json`` (policy, kind, λ, cost unit, dataset hash and train split).
    :param test_points: the router's ``results.json`` points (test metrics, ``lambda``, ``seed``, training
        figures): one, or one per λ of a λ-conditioned router's grid.
    :param anchors: the weak-only and strong-only points of the test split.
    :param manifest: the training dataset's manifest (its source: simulator preset or models).
    :param data_path: ``data.path`` as given (``None``: trim's bundled default data).
    :param test_split: the split the test metrics were measured on.
    :param n_test_queries: how many queries that split has.
    """
    simulated = manifest["source"].get("kind") == "simulator"
    test_point = test_points[0]
    per_point = [{key: point[key] for key in CARD_METRICS if key in point} for point in test_points]
    conditioning = config.get("lambda_conditioning")
    test_metrics: Any = per_point[0] if len(test_points) == 1 else [
        {"lambda": point.get("lambda"), **metrics} for point, metrics in zip(test_points, per_point)]
    training = {key: value for key, value in _numbers(test_point).items()
                if key not in CARD_METRICS and key not in ("lambda", "seed", "parameter")}
    front: dict[str, Any] = {
        "library_name": "trim",
        "tags": ["trim", "llm-routing", "step-level-routing", *(["synthetic-data"] if simulated else [])],
    }
    if data_path is not None and is_hub_path(data_path):
        front["datasets"] = [HubDataset.parse(data_path).repo_id]
    front["trim"] = {
        "policy": config.get("policy"),
        "kind": config.get("kind"),
        "lambda": config.get("lambda") if len(test_points) > 1 else test_point.get("lambda", config.get("lambda")),
        **({"lambda_range": [conditioning["low"], conditioning["high"]]} if conditioning else {}),
        "seed": test_point.get("seed"),
        "cost_unit_tokens": config.get("cost_unit_tokens"),
        "dataset": {
            "path": data_path if data_path is not None else "default",
            "source": manifest["source"].get("kind"),
            "simulated": simulated,
            "content_hash": config.get("dataset_content_hash"),
            "train_split": config.get("train_split"),
        },
        "test_split": test_split,
        "test_metrics": test_metrics,
        "training": training,
    }
    lam = front["trim"]["lambda"]
    dataset = "trim's bundled default data" if data_path is None else f"`{data_path}`"
    columns = ["this router"] if len(test_points) == 1 else [f"λ = {point.get('lambda')}" for point in test_points]
    rows = [f"| {label} | " + " | ".join(_cell(metrics.get(key)) for metrics in per_point)
            + f" | {_cell(anchors[0].get(key))} | {_cell(anchors[1].get(key))} |" for key, label in CARD_METRICS.items()]
    if conditioning:
        trained_for = (f"for every λ in [{conditioning['low']}, {conditioning['high']}] (λ-conditioned: each training episode drew "
                       f"its λ and the policy reads it; default operating point λ = {lam}, move it with "
                       "`router.set_operating_point(λ)`)")
    else:
        trained_for = f"with λ = {lam}"
    lines = [
        "---",
        yaml.safe_dump(front, sort_keys=False, allow_unicode=True).rstrip(),
        "---",
        "",
        f"# trim router: policy `{config.get('policy')}` " + (f"for λ in [{conditioning['low']}, {conditioning['high']}]"
                                                               if conditioning else f"at λ = {lam}"),
        "",
        "A step-level router between a weak and a strong LLM, trained with trim: at each step of the weak model's "
        "solution it decides whether the strong model rewrites the step. It was trained for the reward "
        f"accuracy − λ · strong tokens / {config.get('cost_unit_tokens')} {trained_for} "
        f"(seed {test_point.get('seed')}).",
        "",
        "## Training data",
        "",
        f"{describe_source(manifest['source'])} Dataset: {dataset}, split `{config.get('train_split')}` (content hash "
        f"`{config.get('dataset_content_hash')}`); the checkpoint (or threshold) was chosen on a validation part of that "
        f"split. The ids of the training queries are in `{TRAINING_QUERIES_FILE}`.",
        "",
        "## Test metrics",
        "",
        f"Split `{test_split}` of the same dataset ({n_test_queries} queries), evaluated once after training"
        + (" — simulated figures, not real model results:" if simulated else ":"),
        "",
        "| figure | " + " | ".join(columns) + " | weak-only | strong-only |",
        "|---|" + "---|" * (len(columns) + 2),
        *rows,
        "",
        "## How to load it",
        "",
        "```python",
        "from agents.export import load_router",
        'router = load_router("DIR")  # this directory; torch only (no stable-baselines3, no Hydra)',
        "```",
        "",
        "Evaluate it on other queries with `trim-evaluate policy=router policy.path=DIR data.path=DATA` "
        "(its own training queries are refused). `config.json` holds its settings and feature spec; "
        "this card is not read when loading.",
        "",
    ]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    """A table cell: a number to four decimals, or ``—`` where there is none."""
    return "—" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def write_model_card(
    directory: str | Path,
    test_points: list[dict[str, Any]],
    anchors: list[dict[str, Any]],
    manifest: dict[str, Any],
    data_path: str | None,
    test_split: str,
    n_test_queries: int,
) -> Path:
    """Write the model card (:func:`model_card`) into the exported router ``directory`` atomically; returns its path.

    The router's own ``config.json`` supplies policy, kind, λ and the dataset identity.
    """
    config = read_router_config(directory)
    card = model_card(config, test_points, anchors, manifest, data_path, test_split, n_test_queries)
    return atomic.write_text(Path(directory) / MODEL_CARD_FILE, card)


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
    :param seed: the router's training seed, recorded on its points so a report over several seeds'
        routers averages seeds instead of pooling their points (``null``: not recorded).
    """

    path: str = "???"
    allow_training_queries: bool = False
    operating_points: Optional[list[float]] = None
    seed: Optional[int] = None


class SavedRouter:
    """The ``router`` policy: evaluates an exported router; there is nothing to train."""

    Settings: ClassVar[type[RouterSettings] | None] = SavedRouterSettings
    config_groups: ClassVar[dict[str, type]] = {}
    sweep_trains: ClassVar[bool] = False
    #: Any exported router plays step-level episodes, which the evaluator prices by their paths under
    #: any ``cost=`` model, whatever unit it was trained in (e.g. a strong-token router under price).
    supports_cost_models: ClassVar[bool] = True

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
        seed = {"seed": settings.seed} if settings.seed is not None else {}
        if settings.operating_points is None:
            return [SweepPoint(label, router.config.get("lambda"), run_episodes(trees, router), seed)]
        points = []
        for index, value in enumerate(settings.operating_points):
            try:
                moved = router.at_operating_point(float(value))
            except ValueError as error:
                raise ValueError(f"policy.operating_points[{index}] = {value}: {error}") from None
            points.append(SweepPoint(label, float(value), run_episodes(trees, moved), seed))
        return points
