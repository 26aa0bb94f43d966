"""Fitted TRIM-POMDP models cached across λ: :func:`fit_or_load`.

Fitting does not depend on λ, so a sweep fits once: the fitted model is saved as JSON under a key
made of the data's identity, the fitting queries, :data:`~agents.pomdp.fit.FIT_VERSION` and the
:class:`FitSettings` (plus the content hash of the observation records, if any, and the cost
model's settings when it is not strong tokens: a priced model carries its rewrite costs). Parallel
multirun jobs share one fit through a file lock.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from agents.pomdp.fit import FIT_VERSION, fit_model
from agents.pomdp.model import PomdpModel, uniform_bin_edges
from agents.pomdp.observation import observation_samples_from_processbench
from trim_env import atomic
from trim_env.cost import CostModel, StrongTokensCost
from trim_env.tree import RolloutTrees


@dataclass
class FitSettings:
    """What a fitted model depends on besides the data (part of its cache key); the values come
    from :class:`~agents.pomdp.router.PomdpSettings` (its ``fit_settings()``), which documents each field."""

    bins: int
    token_bins: int
    floor: float
    token_evidence: bool
    observation_data: str | None
    score_field: str


def fit_or_load(trees: RolloutTrees, queries: np.ndarray, settings: FitSettings, data_key: str,
                cache_dir: str | Path | None, cost_model: CostModel | None = None) -> tuple[PomdpModel, float, bool]:
    """The model fitted on ``queries`` of ``trees`` with ``settings``, from the cache when fitted before.

    :param trees: the train split.
    :param queries: the query indices to fit on (the train split minus its validation part).
    :param settings: fit settings.
    :param data_key: identifies the dataset (its content hash and split).
    :param cache_dir: where fitted models are kept (``None``: always fit).
    :param cost_model: prices a rewrite (:func:`~agents.pomdp.fit.fit_model`; ``None``: strong tokens).
    :returns: (model, seconds spent fitting or loading it, whether it came from the cache).
    """
    queries = np.asarray(queries, dtype=np.int64)
    records_path = Path(settings.observation_data) if settings.observation_data else None
    key_source = {"data": data_key, "queries": hashlib.sha256(queries.tobytes()).hexdigest(), "fit_version": FIT_VERSION,
                  **settings.__dict__}
    if records_path is not None:
        if not records_path.exists():
            raise FileNotFoundError(f"policy.observation_data = {records_path}: file not found")
        key_source["observation_data"] = atomic.file_sha256(records_path)
    if cost_model is not None and not isinstance(cost_model, StrongTokensCost):  # strong-token keys stay what they were
        key_source["cost"] = cost_model.to_dict()
    key = hashlib.sha256(json.dumps(key_source, sort_keys=True).encode()).hexdigest()[:20]
    start = time.perf_counter()
    if cache_dir is None:
        return _fit(trees, queries, settings, data_key, records_path, cost_model), time.perf_counter() - start, False
    cached = Path(cache_dir) / f"pomdp-model-{key}.json"
    cached.parent.mkdir(parents=True, exist_ok=True)
    # Parallel multirun jobs (one per λ) share the fit: the first takes the lock and fits, the others wait and load.
    with open(cached.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if cached.exists():
            return PomdpModel.load(cached), time.perf_counter() - start, True
        model = _fit(trees, queries, settings, data_key, records_path, cost_model)
        model.save(cached)
    return model, time.perf_counter() - start, False


def _fit(trees: RolloutTrees, queries: np.ndarray, settings: FitSettings, data_key: str, records_path: Path | None,
         cost_model: CostModel | None) -> PomdpModel:
    samples = None
    if records_path is not None:
        try:
            records = json.loads(records_path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{records_path}: not valid JSON ({error})") from error
        if not isinstance(records, list):
            raise ValueError(f"{records_path}: expected a JSON list of ProcessBench-format records")
        samples = observation_samples_from_processbench(records, settings.score_field, str(records_path))
    return fit_model(
        trees.subset(queries), uniform_bin_edges(settings.bins), settings.token_bins, samples, settings.floor,
        source={"data": data_key, "n_fit_queries": len(queries), "settings": asdict(settings)},
        token_evidence=settings.token_evidence, cost_model=cost_model,
    )
