"""``trim-calibrate``: an operating point of an exported router for a target cost (``conf/calibrate.yaml``).

    trim-calibrate router=OUT/router target.normalized_cost=0.3 [out=FILE] [data.split=...]

The work is :func:`agents.serve.calibrate.run`; the server and the Controller accept the JSON it writes.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig
from omegaconf.errors import MissingMandatoryValue

from agents.cli import config_dir
from agents.serve.calibrate import run


@hydra.main(config_path=str(config_dir()), config_name="calibrate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """The ``trim-calibrate`` console script."""
    try:
        run(cfg)
    except MissingMandatoryValue as error:
        raise SystemExit(f"trim-calibrate: {error.full_key} is not set; e.g. router=OUT/router target.normalized_cost=0.3") from error
    except (ValueError, FileNotFoundError) as error:
        raise SystemExit(f"trim-calibrate: {error}") from error


if __name__ == "__main__":
    main()
