"""The routing-policy protocol and the registry of named policies.

A router decides, at each proposed weak step, to continue (0) or regenerate with the strong model
(1). Adding a router is one class and one ``@register_router("name")`` line.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable, ClassVar

import numpy as np

from trim_env.evaluation import DecisionBatch


class Router(ABC):
    """A step-level routing policy usable by the batch evaluator and the environment.

    Subclasses read one observation kind (``"agg"`` or ``"seq"``, see :mod:`trim_env.features`)
    and implement :meth:`predict` on a batch of such observations.
    """

    #: Which observation the router reads: ``"agg"`` or ``"seq"``.
    observation_kind: ClassVar[str] = "agg"

    @abstractmethod
    def predict(self, observations: np.ndarray) -> np.ndarray:
        """Actions (1 = regenerate) for a batch of observations of :attr:`observation_kind`."""

    def decide(self, batch: DecisionBatch) -> np.ndarray:
        """Actions for a batch of decisions from the batch evaluator."""
        observations = batch.agg() if self.observation_kind == "agg" else batch.seq()
        return self.predict(observations)

    def act(self, observation: np.ndarray) -> int:
        """Action for one environment observation."""
        return int(self.predict(observation[None])[0])


ROUTERS: dict[str, Callable[..., Router]] = {}


def register_router(name: str) -> Callable[[Callable[..., Router]], Callable[..., Router]]:
    """Class decorator adding a router to :data:`ROUTERS` under ``name``."""

    def add(factory: Callable[..., Router]) -> Callable[..., Router]:
        if name in ROUTERS:
            raise ValueError(f"router name {name!r} is already registered")
        ROUTERS[name] = factory
        return factory

    return add


def make_router(name: str, **kwargs: Any) -> Router:
    """Build the registered router ``name`` with ``kwargs``."""
    if name not in ROUTERS:
        raise ValueError(f"unknown router {name!r}; registered: {sorted(ROUTERS)}")
    return ROUTERS[name](**kwargs)
