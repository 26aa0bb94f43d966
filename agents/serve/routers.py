"""Served routers and their operating points: the router a request runs, at the threshold or λ it asks for.

An *operating point* moves a router along its cost/accuracy curve without retraining (the
router's own :meth:`~agents.base.Router.set_operating_point`):

- TRIM-Thr (kind ``threshold``): the PRM-score threshold k (regenerate when the proposal scores below k);
- TRIM-POMDP (kind ``pomdp``): the cost weight λ; the fitted model is solved again for it (once
  per λ, in a worker thread, then kept);
- a λ-conditioned actor (``policy=agg_conditioned``): the cost weight λ within the range it was
  trained for, read by the policy as an input;
- actors trained for one λ have no operating point.

``trim-calibrate`` writes an operating-point file (JSON, :func:`write_operating_point`) that the
server and the controller take as a router's default; a request may still ask for another.

:func:`load_served_router` is the one place where serving loads an exported router.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agents.base import Router
from agents.export import load_router
from agents.threshold import ThresholdRouter

OPERATING_POINT_FORMAT = "trim-operating-point"
OPERATING_POINT_VERSION = 1
#: The operating-point parameters a router may have (:meth:`agents.base.Router.operating_point_parameter`).
PARAMETERS = ("threshold", "lambda")
#: Routers kept per served router at operating points asked for (a POMDP's solve takes seconds).
MAX_SOLVED_POLICIES = 16


def load_served_router(path: str | Path) -> Router:
    """Load an exported router directory for serving (:func:`agents.export.load_router`)."""
    return load_router(path)


@dataclass(frozen=True)
class OperatingPoint:
    """A router's operating point: one parameter of its kind.

    :param parameter: ``threshold`` (TRIM-Thr) or ``lambda`` (TRIM-POMDP).
    :param value: its value (>= 0).
    """

    parameter: str
    value: float

    def __post_init__(self) -> None:
        if self.parameter not in PARAMETERS:
            raise ValueError(f"operating-point parameter {self.parameter!r}; known: {sorted(PARAMETERS)}")
        if not math.isfinite(self.value) or self.value < 0:
            raise ValueError(f"{self.parameter} = {self.value} must be a finite number >= 0")


def write_operating_point(path: str | Path, router_kind: str, point: OperatingPoint, details: dict[str, Any]) -> Path:
    """Write an operating-point file for a router of kind ``router_kind``.

    :param path: the JSON file to write.
    :param router_kind: the kind of router it is for (``threshold``, ``pomdp``, ``actor``).
    :param point: the chosen parameter and value.
    :param details: what it was chosen for and what to expect there (target, data, accuracy, cost).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"format": OPERATING_POINT_FORMAT, "format_version": OPERATING_POINT_VERSION, "router_kind": router_kind,
              point.parameter: point.value, **details}
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def read_operating_point(path: str | Path, router_kind: str, parameter: str) -> OperatingPoint:
    """Read an operating-point file and check that it is for a router of kind ``router_kind`` with ``parameter``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"operating point {path}: file not found (trim-calibrate writes one)")
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"operating point {path}: not valid JSON ({error})") from error
    if not isinstance(record, dict) or record.get("format") != OPERATING_POINT_FORMAT:
        raise ValueError(f"{path}: field format = {record.get('format') if isinstance(record, dict) else None!r}; "
                         f"expected {OPERATING_POINT_FORMAT!r} (a file written by trim-calibrate)")
    if record.get("router_kind") != router_kind:
        raise ValueError(f"{path}: field router_kind = {record.get('router_kind')!r}, but the router is of kind {router_kind!r}")
    if not isinstance(record.get(parameter), (int, float)):
        raise ValueError(f"{path}: field {parameter} = {record.get(parameter)!r} is not a number")
    return OperatingPoint(parameter, float(record[parameter]))


class ServedRouter:
    """An exported router and the variants of it at other operating points.

    :param name: the name clients ask for (``model`` of a chat request).
    :param router: the loaded router (from :func:`load_served_router`).
    :param default: the operating point used when a request asks for none (``None``: the exported one).
    """

    def __init__(self, name: str, router: Router, default: OperatingPoint | None = None) -> None:
        self.name = name
        self.router = router
        self.config: dict[str, Any] = dict(getattr(router, "config", {}) or {})
        self.kind = str(self.config.get("kind", "threshold" if isinstance(router, ThresholdRouter) else "custom"))
        if default is not None:
            self.check(default)
        self.default = default
        self._solved: OrderedDict[float, Router] = OrderedDict()
        self._solving: dict[float, asyncio.Future[Router]] = {}

    @classmethod
    def from_directory(cls, name: str, path: str | Path, operating_point: str | Path | None = None) -> ServedRouter:
        """Load the router in ``path``, with the operating-point file ``operating_point`` as its default."""
        router = load_served_router(path)
        kind = str(getattr(router, "config", {}).get("kind"))
        parameter = router.operating_point_parameter()
        if operating_point is not None and parameter is None:
            raise ValueError(f"routers.{name}.operating_point = {operating_point}: the router in {path} (kind {kind!r}) "
                             "has no operating point (trained for one setting)")
        default = read_operating_point(operating_point, kind, parameter) if operating_point is not None else None  # type: ignore[arg-type]
        return cls(name, router, default)

    @property
    def parameter(self) -> str | None:
        """The name of this router's operating-point parameter (``None``: it has none)."""
        return self.router.operating_point_parameter()

    def describe(self) -> dict[str, Any]:
        """What ``/v1/models`` says about the router."""
        exported = self.config.get("threshold") if self.parameter == "threshold" else self.config.get("lambda")
        return {"kind": self.kind, "policy": self.config.get("policy"), "operating_point_parameter": self.parameter,
                "exported_value": exported, "default_value": None if self.default is None else self.default.value}

    def check(self, point: OperatingPoint) -> None:
        """Refuse an operating point this router's kind does not have."""
        if self.parameter is None:
            raise ValueError(f"router {self.name!r} (kind {self.kind!r}) has no operating point (trained for one setting); "
                             f"it cannot take {point.parameter}")
        if point.parameter != self.parameter:
            raise ValueError(f"router {self.name!r} (kind {self.kind!r}) takes {self.parameter}, not {point.parameter}")
        bounds = self.router.operating_point_range()
        if bounds is not None and not bounds[0] <= point.value <= bounds[1]:
            raise ValueError(f"router {self.name!r}: {point.parameter} = {point.value:g} is outside the range "
                             f"[{bounds[0]:g}, {bounds[1]:g}] it was trained for")

    async def at(self, point: OperatingPoint | None) -> tuple[Router, OperatingPoint | None]:
        """The router at ``point`` (``None``: the default one); (router, the point it runs at).

        :raises ValueError: when the router's kind has no such parameter.
        """
        point = point if point is not None else self.default
        if point is None:
            return self.router, None
        self.check(point)
        return await self._at(point.value), point

    async def _at(self, value: float) -> Router:
        if value in self._solved:
            self._solved.move_to_end(value)
            return self._solved[value]
        if value not in self._solving:  # concurrent requests for the same point wait for one solve
            self._solving[value] = asyncio.ensure_future(asyncio.to_thread(self.router.at_operating_point, value))
        try:
            router = await asyncio.shield(self._solving[value])
        finally:
            if self._solving.get(value) is not None and self._solving[value].done():
                self._solving.pop(value, None)
        self._solved[value] = router
        while len(self._solved) > MAX_SOLVED_POLICIES:
            self._solved.popitem(last=False)
        return router
