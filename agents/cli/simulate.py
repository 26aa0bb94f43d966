"""trim-simulate: simulate a train/test rollout-tree dataset with the calibrated simulator.

    trim-simulate preset=math500-qwen1.5b-7b n_queries=2500 seed=0 out=DIR
    trim-simulate preset=aime-qwen1.5b-7b n_queries=500 seed=1 out=DIR2 params.weak_step_logit=1.0
    trim-simulate ... out=EXISTING overwrite=true        # replace an existing dataset

Settings: :class:`SimulateConfig` (``conf/simulate.yaml``); ``params.<name>`` overrides one
figure of the preset (:class:`trim_env.simulate.SimulatorParams`). The same data comes out of
:func:`trim_env.simulate.generate_dataset`; the command line only reads and checks its arguments.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any, List, Optional

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from agents.cli.strict import check_boolean_overrides
from trim_env.paths import config_dir
from trim_env.simulate import SimulatorParams, generate_dataset

log = logging.getLogger(__name__)


def _override_type(default: Any) -> Any:
    """The config type of one simulator parameter: its own type, optional (``null``: the preset's value)."""
    if isinstance(default, tuple):
        return Optional[List[float]]
    if isinstance(default, int) and not isinstance(default, bool):
        return Optional[int]
    return Optional[float]


#: One optional field per simulator parameter, generated from SimulatorParams so that the
#: parameters and their types are written down once; ``null`` keeps the preset's value.
SimulatorOverrides = dataclasses.make_dataclass(
    "SimulatorOverrides",
    [(f.name, _override_type(f.default), field(default=None)) for f in dataclasses.fields(SimulatorParams)],
)


@dataclass
class SimulateConfig:
    """Settings of ``trim-simulate`` (defaults of the optional ones as in ``generate_dataset``)."""

    #: Simulator preset: a file name in ``trim_env/presets/`` without ``.json``.
    preset: str = MISSING
    #: Queries in train and test together.
    n_queries: int = MISSING
    #: Simulator seed: the same seed and settings give byte-identical files.
    seed: int = MISSING
    #: Output dataset directory.
    out: str = MISSING
    #: K: cap on strong steps per stored path.
    max_strong_steps: int = 4
    #: Cap on stored nodes per query (null: none).
    node_budget: Optional[int] = 1500
    #: Share of the queries in the test split (the last ones).
    test_fraction: float = 0.2
    #: Replace a dataset already in ``out``; without it an existing dataset is left untouched.
    overwrite: bool = False
    #: Simulator parameters that differ from the preset.
    params: Any = field(default_factory=SimulatorOverrides)


def simulate(config: SimulateConfig) -> dict[str, Any]:
    """Generate the dataset described by ``config``; returns its manifest.

    :raises ValueError: an unknown preset or an invalid parameter.
    :raises FileExistsError: ``out`` holds a dataset and ``overwrite`` is false.
    """
    overrides = {name: value for name, value in dataclasses.asdict(config.params).items() if value is not None}
    return generate_dataset(
        out=config.out,
        preset=config.preset,
        n_queries=config.n_queries,
        seed=config.seed,
        max_strong_steps=config.max_strong_steps,
        node_budget=config.node_budget,
        test_fraction=config.test_fraction,
        overwrite=config.overwrite,
        **overrides,
    )


def _run(cfg: Any) -> None:
    check_boolean_overrides(cfg)
    missing = [key for key in cfg if OmegaConf.is_missing(cfg, key)]
    if missing:
        raise SystemExit(f"error: missing required setting(s) {missing}; usage: trim-simulate preset=NAME n_queries=N seed=S out=DIR")
    config: SimulateConfig = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    try:
        manifest = simulate(config)
    except (ValueError, FileExistsError) as error:
        raise SystemExit(f"error: {error}") from error
    for name, split in manifest["splits"].items():
        log.info("%s: %d queries, %d nodes", name, split["n_queries"], split["n_nodes"])
    log.info("wrote %s (content hash %s)", config.out, manifest["content_hash"])


def main() -> None:
    """Console script ``trim-simulate``."""
    ConfigStore.instance().store(name="simulate_schema", node=SimulateConfig)
    hydra.main(config_path=str(config_dir()), config_name="simulate", version_base="1.3")(_run)()


if __name__ == "__main__":
    main()
