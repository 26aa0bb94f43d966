"""trim-route: solve one problem live; an exported router decides at every step whether the strong model rewrites it.

    trim-route router=OUT/router 'problem="Natalia sold 48 clips in April, ..."' [answer=72]
    trim-route router=OUT/router problem=... print_json=true max_strong_tokens=500 \\
        collect/generator@weak=openai weak.model=Qwen/Qwen2.5-1.5B-Instruct

Settings: :class:`RouteConfig` and ``conf/route.yaml`` (the backends of ``conf/collect/``). A
problem with commas, brackets or quotes is given as a quoted Hydra string (``'problem="..."'``).
Prints the solution with each step marked weak (W) or strong (S), its PRM score, and the strong
tokens spent (``print_json=true``: the whole record). ``cost=price`` (``flops``, ``latency``;
``cost.prefix_cache=true``) adds the solution's cost in that model's unit and in cost units
(the record: ``prompt_tokens`` and ``cost``, :meth:`agents.live.RoutedSolution.to_dict`).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Any, Optional

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from agents import load_router
from agents.cli.common import read_cost_model, register_schemas
from agents.cli.strict import check_boolean_overrides, require_settings
from agents.live import RoutedSolution, StepRouter
from trim_env.paths import config_dir
from trim_env.sources.factory import make_backends

USAGE = "trim-route router=DIR problem=TEXT [answer=TEXT] [print_json=true] [overrides ...]"


@dataclass
class RouteConfig:
    """Settings of ``trim-route``; the backends come from the ``conf/collect/`` groups."""

    #: An exported router directory (``trim-train`` writes ``OUT/router``).
    router: str = MISSING
    #: The problem to solve.
    problem: str = MISSING
    #: A reference answer to grade the solution against (null: not graded).
    answer: Optional[str] = None
    #: The router's operating point (TRIM-Thr's threshold, λ of TRIM-POMDP or of a λ-conditioned
    #: router); null: as exported.
    operating_point: Optional[float] = None
    #: Print the whole record as JSON instead of the marked steps.
    print_json: bool = False
    #: Decoded-token limit of one step, for both models.
    max_tokens_per_step: int = 512
    #: The solution ends after this many steps (at most 30).
    max_steps: int = 30
    #: Hard cap on strong tokens per query (null: none).
    max_strong_tokens: Optional[int] = None
    #: Cap on rewrites per query (null: none; a router trained on data with K strong steps per
    #: path was never asked past K).
    max_strong_steps: Optional[int] = None
    #: Root of the sampling seeds.
    seed: int = 0
    #: Torch CPU threads for local models (null: torch's default).
    torch_threads: Optional[int] = None
    #: Weak and strong generators and PRM (config groups of conf/collect/).
    weak: Any = None
    strong: Any = None
    prm: Any = None
    #: The cost model (the ``cost=`` group of conf/cost/).
    cost: Any = None


def format_solution(solution: RoutedSolution) -> str:
    """The solution with each step marked W/S, its PRM score and tokens, then the totals."""
    lines = []
    for index, step in enumerate(solution.steps, start=1):
        mark = "S" if step.is_strong else "W"
        lines.append(f"[{index:2d} {mark} prm={step.prm:.3f} tokens={step.tokens}] {step.text}")
    lines.append(
        f"\nstrong tokens {solution.strong_tokens}, weak tokens {solution.weak_tokens}, "
        f"escalations {solution.escalations}/{len(solution.steps)}, answer {solution.answer!r}"
        + (f", correct {solution.correct}" if solution.correct is not None else "")
        + f", routing overhead {solution.mean_decision_ms:.3f} ms/step"
    )
    if not solution.priced_by_strong_tokens:
        cost = solution.priced()
        lines.append(f"cost {cost.natural:.6g} {cost.natural_unit} = {cost.units:.2f} cost units (cost={cost.model}"
                     + (", prefix cache" if solution.cost_model.caches_prefixes else "") + f"), prompt tokens {solution.prompt_tokens}")
    return "\n".join(lines)


def route(cfg: DictConfig) -> RoutedSolution:
    """Load the router and the configured backends, then solve ``cfg.problem``."""
    config: Any = OmegaConf.to_container(cfg, resolve=True)
    cost_model = read_cost_model(cfg)
    router = load_router(config["router"])
    if config["operating_point"] is not None:
        try:
            router.set_operating_point(config["operating_point"])
        except ValueError as error:
            raise ValueError(f"operating_point = {config['operating_point']}: {error}") from None
    weak, strong, prm = make_backends(config)
    step_router = StepRouter(
        router, weak, strong, prm, config["max_steps"], config["max_strong_tokens"], config["max_strong_steps"], config["seed"],
        cost_model,
    )
    return step_router.solve(config["problem"], config["answer"])


def _run(cfg: DictConfig) -> None:
    check_boolean_overrides(cfg)
    solution = route(cfg)
    print(json.dumps(solution.to_dict(), indent=2) if cfg.print_json else format_solution(solution))


def main() -> None:
    """Console script ``trim-route``."""
    require_settings(sys.argv[1:], ("router", "problem"), USAGE)
    register_schemas()  # conf/cost/ options extend the cost models' dataclasses
    ConfigStore.instance().store(name="route_schema", node=RouteConfig)
    hydra.main(config_path=str(config_dir()), config_name="route", version_base="1.3")(_run)()


if __name__ == "__main__":
    main()
