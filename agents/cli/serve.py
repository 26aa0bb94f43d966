"""``trim-serve``: start the OpenAI-compatible routing server from ``conf/serve.yaml`` (Hydra overrides on the command line).

    trim-serve routers.trim.path=OUT/router weak.base_url=http://127.0.0.1:8000/v1 weak.model=weak \
        strong.base_url=http://127.0.0.1:8001/v1 strong.model=strong prm.base_url=http://127.0.0.1:8002 port=8080
    python -m agents.cli.serve ...   # the same without the console script

Stops on SIGINT/SIGTERM after finishing the requests in flight (up to ``graceful_shutdown_s``).
``cost=price`` (``flops``, ``latency``; ``cost.prefix_cache=true``) adds each request's cost to its
``usage`` and a ``trim_cost_total`` counter to the metrics (:mod:`agents.serve.service`).
"""

from __future__ import annotations

import logging
from typing import Any

import hydra
import uvicorn
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from agents.cli import config_dir
from agents.cli.common import register_schemas
from agents.serve.app import create_app
from agents.serve.service import RoutingService


def build_service(config: dict[str, Any]) -> RoutingService:
    """The routing service of a resolved ``conf/serve.yaml``."""
    if config.get("torch_threads"):
        import torch  # noqa: PLC0415  (only when threads are set; serving HTTP backends needs no torch)

        torch.set_num_threads(int(config["torch_threads"]))
    return RoutingService.from_config(config)


@hydra.main(config_path=str(config_dir()), config_name="serve", version_base="1.3")
def _app(cfg: DictConfig) -> None:
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per upstream call costs more than routing
    try:
        config: Any = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
        app = create_app(build_service(config))
    except MissingMandatoryValue as error:
        raise SystemExit(f"trim-serve: {error.full_key} is not set; e.g. routers.trim.path=OUT/router") from error
    except (ValueError, FileNotFoundError) as error:
        raise SystemExit(f"trim-serve: {error}") from error
    uvicorn.run(app, host=config["host"], port=int(config["port"]), log_level=config["log_level"],
                timeout_graceful_shutdown=config["graceful_shutdown_s"])


def main() -> None:
    """Console script ``trim-serve``."""
    register_schemas()  # conf/cost/ options extend the cost models' dataclasses
    _app()


if __name__ == "__main__":
    main()
