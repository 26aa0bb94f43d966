"""Route one problem live: an exported router decides at every step whether the strong model rewrites it.

    python scripts/route.py --router OUT/router --problem "Natalia sold 48 clips in April ..." [--answer 72]
    python scripts/route.py --router OUT/router --problem "..." --json max_strong_tokens=500 \
        collect/generator@weak=openai weak.model=Qwen/Qwen2.5-1.5B-Instruct

Backend settings come from ``conf/route.yaml`` (the backends of ``conf/collect/``); arguments
after the options are Hydra overrides of it. Prints the solution with each step marked weak (W)
or strong (S), its PRM score, and the strong tokens spent (``--json``: the whole record).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from agents import load_router  # noqa: E402
from agents.live import RoutedSolution, StepRouter  # noqa: E402
from trim_env.sources.factory import make_backends  # noqa: E402


def parse_arguments(arguments: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--router", required=True, help="an exported router directory (train.py writes OUT/router)")
    parser.add_argument("--problem", required=True, help="the problem to solve")
    parser.add_argument("--answer", default=None, help="a reference answer to grade the solution against")
    parser.add_argument("--json", action="store_true", help="print the whole record as JSON")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of conf/route.yaml, e.g. max_strong_tokens=500")
    return parser.parse_args(arguments)


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
    return "\n".join(lines)


def route(router_dir: str, problem: str, answer: str | None, overrides: list[str]) -> RoutedSolution:
    """Load the router and the configured backends, then solve ``problem``."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3", job_name="route"):
        cfg = compose(config_name="route", overrides=overrides)
    config: Any = OmegaConf.to_container(cfg, resolve=True)
    router = load_router(router_dir)
    weak, strong, prm = make_backends(config)
    step_router = StepRouter(
        router, weak, strong, prm, int(config["max_steps"]), config["max_strong_tokens"], config["max_strong_steps"], int(config["seed"])
    )
    return step_router.solve(problem, answer)


def main(arguments: list[str] | None = None) -> None:
    options = parse_arguments(arguments)
    solution = route(options.router, options.problem, options.answer, list(options.overrides))
    print(json.dumps(solution.to_dict(), indent=2) if options.json else format_solution(solution))


if __name__ == "__main__":
    main()
