"""Cost models: what routing a query costs in the unit a user pays (strong tokens, dollars, FLOPs, seconds).

The paper's unit, and the environment's today, is the number of tokens the strong model decodes. A
step-level router pays for more than that: every call re-reads (prefills) the prompt and the prefix,
the PRM scores every step, and a regenerated step's weak proposal was decoded and scored for
nothing. A :class:`CostModel` prices model *calls*; this module turns routing events on rollout
trees into calls and sums them.

**Calls.** Three models are called: ``weak``, ``strong`` and ``prm``. A call reads ``prefill``
tokens and decodes ``decoded`` tokens; :meth:`CostModel.call_cost` prices it:

- :class:`StrongTokensCost` (``cost=strong_tokens``, the default): the strong model's decoded
  tokens; every other call is free. Today's unit, exactly.
- :class:`PriceCost` (``cost=price``): per model a price per input (prefill) token and per output
  (decoded) token, in USD per million tokens, as hosted APIs bill.
- :class:`FlopsCost` (``cost=flops``): per model a parameter count N; ``2·N`` FLOPs per processed
  token, prefilled or decoded (the count RSD reports; attention's share is left out).
- :class:`LatencyCost` (``cost=latency``): per model a per-call overhead (s), a prefill rate and a
  decode rate (tokens/s). Steps are sequential, so a query's latency is the sum along its path.

**Routing events.** Let ``prefix(n)`` be the tokens a model reads at node ``n``: the query's prompt
plus every step from the root to ``n`` (:meth:`~trim_env.tree.RolloutTrees.prefix_tokens`); ``w``
the weak proposal at ``n`` and ``s`` the strong rewrite, ``t(x)`` the tokens of step ``x``.

- *continue*, and a *passive* weak step (no decision possible, e.g. past the cap)::

      weak(prefix(n), t(w)) + prm(prefix(n) + t(w), 0)

- *regenerate*: the proposal was decoded and scored before the decision, then discarded::

      weak(prefix(n), t(w)) + prm(prefix(n) + t(w), 0) + strong(prefix(n), t(s)) + prm(prefix(n) + t(s), 0)

The PRM reads the problem, the prefix and the step and decodes nothing: Qwen2.5-Math-PRM reads its
score for every step off one forward pass, so its output is counted as 0 tokens.
:func:`step_cost` prices one event per entry of its arrays; :func:`path_cost` sums the events from
the root to a node: the cost of an episode that ended there.

**Prefix cache** (``cost.prefix_cache``, off by default). Off, every call reads its whole input: an
upper bound, what a server without prefix caching (or an API billing every input token in full)
charges. On, each model keeps the key/value cache of everything it has read or decoded for the
query (vLLM's automatic prefix caching, SGLang's radix cache) and prefills only the rest; the
cached part is read, not computed: free under ``flops`` and ``latency``, billed at the model's
``cached_input_per_mtok`` under ``price``. At a node ``n`` reached from ``p``, each model has seen:

- weak: ``prefix(n)`` if it wrote the step to ``n``, else ``prefix(p)`` (its proposal there was discarded);
- PRM: ``prefix(n)`` (its last call scored the step to ``n``); a rewrite's scoring re-reads only ``t(s)``;
- strong: ``prefix(m)``, ``m`` the last node on the path it wrote (none: nothing).

So continuing costs the weak model the strong rewrites since its last call, and a rewrite costs
the strong model the steps since its last rewrite; at the root every model reads the prompt. This
is a lower bound (a cache may evict); the two settings bracket a real deployment.

**Anchors.** The weak-only and strong-only runs are query-level baselines: one model writes the
whole solution in one call, with no PRM (:func:`anchor_cost`: ``model(prompt, all tokens)``). A
router that regenerates every step pays more than strong-only under ``price``, ``flops`` and
``latency`` (proposals, scoring, re-reads); weak-only's cost is not zero there.

**Cost units.** Each model reports costs in its natural unit (strong tokens, USD, FLOPs, seconds)
and, for rewards and λ grids, in *cost units*: natural / :attr:`CostModel.unit`, where the unit is
1/:data:`REFERENCE_DECODED_TOKENS` of a reference strong-only query (a
:data:`REFERENCE_PROMPT_TOKENS`-token prompt, :data:`REFERENCE_DECODED_TOKENS` decoded tokens in
one strong call: the default data's means). A strong-only query of that shape costs 480 units in
every model, as it costs 480 strong tokens today, so λ grids chosen for strong tokens stay in
range. Under ``strong_tokens`` one unit is one strong token, so its costs are today's exactly. The
unit does not depend on the data: train and test splits share it.

**Older datasets.** Trees of schema version < 3 carry no ``prompt_tokens``; only cost models that
charge nothing for prefill can cost them (:attr:`CostModel.charges_prefill`); the others refuse
them naming the column (:func:`check_trees`).

**Configuration.** One Hydra group ``cost=`` (``conf/cost/``: ``strong_tokens``, ``price``,
``flops``, ``latency``), each option extending the dataclass of its model (stored as
``schema/cost/<Class>`` by :func:`agents.cli.common.register_schemas`), so the dataclasses hold the
defaults and OmegaConf checks types; :func:`cost_model_from_dict` rebuilds a model from
``dataclasses.asdict`` (a results file, an exported router) and checks its values.

**Wiring.** The environments charge :func:`step_cost` per step, passive steps included, times λ;
the batch evaluator's per-query cost is :func:`path_cost` of the node each episode ends at; the
metrics normalise by :func:`anchor_cost` of strong-only and take weak-only's (non-zero) cost as the
lower anchor; live routing prices its calls with :class:`QueryCostMeter`; results and exported
routers record ``cost_model.to_dict()`` when it is not ``strong_tokens``.
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from trim_env.tree import RolloutTrees

#: The three models a step-level router calls.
ROLES = ("weak", "strong", "prm")
#: The reference strong-only query that fixes each model's cost unit: its prompt (the simulator's
#: mean MATH-500 prompt, template included) and its decoded tokens (the default data's strong-only mean).
REFERENCE_PROMPT_TOKENS = 96
REFERENCE_DECODED_TOKENS = 480


class CostModelError(ValueError):
    """A cost model's settings are invalid, or it cannot cost the given trees; the message names the key."""


def _check(key: str, value: Any, requirement: str, valid: bool) -> None:
    if not valid:
        raise CostModelError(f"cost.{key} = {value!r} must be {requirement}")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class CostModel(ABC):
    """Prices model calls. Subclasses set :attr:`name`, :attr:`natural_unit` and :meth:`call_cost`."""

    #: The option name in ``conf/cost/`` (and in results files).
    name: str = ""
    #: What one natural unit is ("strong tokens", "USD", "FLOPs", "s").
    natural_unit: ClassVar[str] = ""

    def __post_init__(self) -> None:
        own_name = next(f.default for f in dataclasses.fields(self) if f.name == "name")
        _check("name", self.name, f"{own_name!r} for {type(self).__name__} (choose another model with cost=...)", self.name == own_name)
        self.validate()

    def validate(self) -> None:
        """Refuse values that cannot price a call (negative prices, zero rates), naming the key."""

    @property
    def charges_prefill(self) -> bool:
        """Whether some call's cost depends on the tokens it reads (then trees need ``prompt_tokens``)."""
        return True

    @property
    def caches_prefixes(self) -> bool:
        """Whether each model reuses what it has already read for the query (see the module docstring)."""
        return False

    @abstractmethod
    def call_cost(self, role: str, prefill: np.ndarray, decoded: np.ndarray, cached: np.ndarray | None = None) -> np.ndarray:
        """Natural cost of calls of model ``role`` prefilling ``prefill`` tokens, reading ``cached``
        more from its prefix cache (``None``: none) and decoding ``decoded`` tokens (float64 arrays)."""

    @property
    def unit(self) -> float:
        """Natural units per cost unit: 1/:data:`REFERENCE_DECODED_TOKENS` of the reference strong-only query's cost."""
        reference = self.call_cost("strong", np.array([REFERENCE_PROMPT_TOKENS]), np.array([REFERENCE_DECODED_TOKENS]))
        return float(reference[0]) / REFERENCE_DECODED_TOKENS

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain data (:func:`cost_model_from_dict` rebuilds the model)."""
        return dataclasses.asdict(self)


@dataclass
class StrongTokensCost(CostModel):
    """Tokens decoded by the strong model; weak and PRM calls and all prefill are free (today's unit)."""

    name: str = "strong_tokens"
    natural_unit: ClassVar[str] = "strong tokens"

    @property
    def charges_prefill(self) -> bool:
        return False

    def call_cost(self, role: str, prefill: np.ndarray, decoded: np.ndarray, cached: np.ndarray | None = None) -> np.ndarray:
        _check_role(role)
        decoded = np.asarray(decoded, dtype=np.float64)
        return decoded.copy() if role == "strong" else np.zeros_like(decoded)


@dataclass
class PrefillCost(CostModel):
    """A cost model that charges the tokens each call reads; ``prefix_cache`` says whether a model
    re-reads what it has already processed for the query (see the module docstring)."""

    prefix_cache: bool = False

    def __post_init__(self) -> None:
        _check("prefix_cache", self.prefix_cache, "true or false", isinstance(self.prefix_cache, bool))
        super().__post_init__()

    @property
    def caches_prefixes(self) -> bool:
        return self.prefix_cache


@dataclass
class TokenPrice:
    """What one model's tokens cost.

    :param input_per_mtok: USD per million input (prefilled) tokens.
    :param output_per_mtok: USD per million output (decoded) tokens.
    :param cached_input_per_mtok: USD per million input tokens read from the prefix cache (with ``prefix_cache``).
    """

    input_per_mtok: float = 0.0
    output_per_mtok: float = 0.0
    cached_input_per_mtok: float = 0.0


@dataclass
class PriceCost(PrefillCost):
    """Dollars: each call pays its input tokens at the model's input price and its output at the output price.

    The defaults are an **example, not a quote**: hosted prices for the reference pair
    Qwen2.5-Math-1.5B / Qwen2.5-Math-7B / Qwen2.5-Math-PRM-7B vary by provider. They keep two
    ratios typical of hosted APIs: output costs 4x input, and the 7B models cost 5x the 1.5B one
    (about their parameter ratio). The PRM is priced as the 7B model; it decodes nothing. Cached
    input (with ``prefix_cache``) costs a tenth of fresh input, as several hosted APIs bill it.
    """

    name: str = "price"
    natural_unit: ClassVar[str] = "USD"
    weak: TokenPrice = field(default_factory=lambda: TokenPrice(input_per_mtok=0.05, output_per_mtok=0.20, cached_input_per_mtok=0.005))
    strong: TokenPrice = field(default_factory=lambda: TokenPrice(input_per_mtok=0.25, output_per_mtok=1.00, cached_input_per_mtok=0.025))
    prm: TokenPrice = field(default_factory=lambda: TokenPrice(input_per_mtok=0.25, output_per_mtok=1.00, cached_input_per_mtok=0.025))

    def validate(self) -> None:
        for role in ROLES:
            price = getattr(self, role)
            for name in ("input_per_mtok", "output_per_mtok", "cached_input_per_mtok"):
                value = getattr(price, name)
                _check(f"{role}.{name}", value, "a finite price >= 0 (USD per million tokens)", _number(value) and value >= 0)
        _check("strong.output_per_mtok", self.strong.output_per_mtok, "> 0 (it fixes the cost unit)", self.strong.output_per_mtok > 0)

    @property
    def charges_prefill(self) -> bool:
        return any(getattr(self, role).input_per_mtok > 0 for role in ROLES)

    def call_cost(self, role: str, prefill: np.ndarray, decoded: np.ndarray, cached: np.ndarray | None = None) -> np.ndarray:
        price: TokenPrice = getattr(self, _check_role(role))
        cost = (np.asarray(prefill, dtype=np.float64) * price.input_per_mtok
                + np.asarray(decoded, dtype=np.float64) * price.output_per_mtok) / 1e6
        if cached is not None:
            cost = cost + np.asarray(cached, dtype=np.float64) * price.cached_input_per_mtok / 1e6
        return cost


@dataclass
class FlopsCost(PrefillCost):
    """FLOPs: ``2·N`` per token a model processes, prefilled or decoded (N = its parameter count);
    tokens read from the prefix cache are not processed again.

    Defaults: the parameter counts of the reference pair from their model cards, embeddings
    included: Qwen2.5-Math-1.5B 1.54e9, Qwen2.5-Math-7B 7.62e9, Qwen2.5-Math-PRM-7B 7.07e9 (the 7B
    model with a small scoring head instead of the vocabulary head).
    """

    name: str = "flops"
    natural_unit: ClassVar[str] = "FLOPs"
    weak_parameters: float = 1.54e9
    strong_parameters: float = 7.62e9
    prm_parameters: float = 7.07e9

    def validate(self) -> None:
        for role in ROLES:
            key = f"{role}_parameters"
            value = getattr(self, key)
            _check(key, value, "a finite parameter count > 0", _number(value) and value > 0)

    def call_cost(self, role: str, prefill: np.ndarray, decoded: np.ndarray, cached: np.ndarray | None = None) -> np.ndarray:
        parameters = float(getattr(self, f"{_check_role(role)}_parameters"))
        return 2.0 * parameters * (np.asarray(prefill, dtype=np.float64) + np.asarray(decoded, dtype=np.float64))


@dataclass
class CallSpeed:
    """How fast one model serves a call.

    :param overhead_s: seconds per call before the first token (scheduling, network).
    :param prefill_tokens_per_s: input tokens read per second.
    :param decode_tokens_per_s: output tokens decoded per second.
    """

    overhead_s: float = 0.0
    prefill_tokens_per_s: float = 1.0
    decode_tokens_per_s: float = 1.0


@dataclass
class LatencyCost(PrefillCost):
    """Seconds: each call takes its overhead plus its input at the prefill rate plus its output at the
    decode rate; calls are sequential, so costs add up along the path. Reading the prefix cache
    takes no time here (its share is small next to prefill).

    The defaults are **example figures** for one request at a time on a single data-centre GPU
    (an order of magnitude, not a measurement): the 1.5B model decodes 3x faster than the 7B models,
    prefill is about 50x faster than decoding, and each call pays 20 ms of overhead.
    """

    name: str = "latency"
    natural_unit: ClassVar[str] = "s"
    weak: CallSpeed = field(default_factory=lambda: CallSpeed(overhead_s=0.02, prefill_tokens_per_s=20000.0, decode_tokens_per_s=150.0))
    strong: CallSpeed = field(default_factory=lambda: CallSpeed(overhead_s=0.02, prefill_tokens_per_s=6000.0, decode_tokens_per_s=50.0))
    prm: CallSpeed = field(default_factory=lambda: CallSpeed(overhead_s=0.02, prefill_tokens_per_s=6000.0, decode_tokens_per_s=50.0))

    def validate(self) -> None:
        for role in ROLES:
            speed = getattr(self, role)
            key = f"{role}.overhead_s"
            _check(key, speed.overhead_s, "a finite number of seconds >= 0", _number(speed.overhead_s) and speed.overhead_s >= 0)
            for name in ("prefill_tokens_per_s", "decode_tokens_per_s"):
                value = getattr(speed, name)
                _check(f"{role}.{name}", value, "a finite rate > 0 (tokens per second)", _number(value) and value > 0)

    def call_cost(self, role: str, prefill: np.ndarray, decoded: np.ndarray, cached: np.ndarray | None = None) -> np.ndarray:
        speed: CallSpeed = getattr(self, _check_role(role))
        prefill = np.asarray(prefill, dtype=np.float64)
        return (speed.overhead_s + prefill / speed.prefill_tokens_per_s
                + np.asarray(decoded, dtype=np.float64) / speed.decode_tokens_per_s)


#: Option name -> cost model class (the options of ``conf/cost/``).
COST_MODELS: dict[str, type[CostModel]] = {
    "strong_tokens": StrongTokensCost, "price": PriceCost, "flops": FlopsCost, "latency": LatencyCost,
}


def _check_role(role: str) -> str:
    if role not in ROLES:
        raise ValueError(f"role = {role!r} must be one of {list(ROLES)}")
    return role


def cost_model_from_dict(values: dict[str, Any]) -> CostModel:
    """The cost model whose settings are ``values`` (``to_dict()`` output, or a config as plain data).

    :raises CostModelError: an unknown ``name`` or key, or a value the model refuses (naming the key).
    """
    name = values.get("name", "strong_tokens")
    if name not in COST_MODELS:
        raise CostModelError(f"cost.name = {name!r} is not a cost model; known: {sorted(COST_MODELS)}")
    cls = COST_MODELS[name]
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise CostModelError(f"cost: unknown key(s) {unknown} for cost model {name!r}; known: {sorted(known)}")
    arguments: dict[str, Any] = {}
    for key, value in values.items():
        factory = known[key].default_factory
        default = factory() if callable(factory) else None
        if dataclasses.is_dataclass(default) and not isinstance(default, type):
            if not isinstance(value, dict):
                raise CostModelError(f"cost.{key} = {value!r} must be a mapping of {sorted(f.name for f in dataclasses.fields(default))}")
            inner = {f.name for f in dataclasses.fields(default)}
            extra = sorted(set(value) - inner)
            if extra:
                raise CostModelError(f"cost.{key}: unknown key(s) {extra}; known: {sorted(inner)}")
            value = dataclasses.replace(default, **value)
        arguments[key] = value
    return cls(**arguments)


# ----------------------------------------------------------------------------------------------
# Costs of routing on trees


def check_trees(model: CostModel, trees: RolloutTrees) -> None:
    """Refuse trees the model cannot cost: a model that charges prefill needs ``prompt_tokens``."""
    if model.charges_prefill and trees.prompt_tokens is None:
        raise CostModelError(
            f"cost={model.name} charges the tokens each call reads, which needs the queries column 'prompt_tokens' "
            "(tree schema version 3); these trees come from an older dataset without it. Use cost=strong_tokens, "
            "or re-create / re-collect the dataset with this version of trim"
        )


def _prefix(model: CostModel, trees: RolloutTrees, nodes: np.ndarray) -> np.ndarray:
    """Tokens read at ``nodes`` (zeros for a model that does not charge prefill: old trees work there)."""
    if not model.charges_prefill:
        return np.zeros(len(nodes), dtype=np.int64)
    check_trees(model, trees)
    return trees.prefix_tokens(nodes)


def step_cost(model: CostModel, trees: RolloutTrees, nodes: np.ndarray, children: np.ndarray, regenerated: np.ndarray) -> np.ndarray:
    """Cost units of one routing event per entry: at ``nodes[i]`` the step to ``children[i]`` was
    written, by the strong model where ``regenerated[i]`` (see the module docstring for the calls).

    :param model: the cost model.
    :param trees: the trees (the weak child of every regenerated node must be stored).
    :param nodes: the nodes decided at (or passed through, for passive weak steps).
    :param children: the child each event led to: ``strong_child`` where regenerated, else ``weak_child``.
    :param regenerated: whether the strong model rewrote the step.
    :raises ValueError: a child is not the node's child of that kind.
    :raises CostModelError: the model needs prompt tokens the trees lack.
    """
    nodes = np.asarray(nodes, dtype=np.int64)
    children = np.asarray(children, dtype=np.int64)
    regenerated = np.asarray(regenerated, dtype=bool)
    if not nodes.shape == children.shape == regenerated.shape:
        raise ValueError(f"nodes {nodes.shape}, children {children.shape} and regenerated {regenerated.shape} must have one shape")
    expected = np.where(regenerated, trees.strong_child[nodes], trees.weak_child[nodes])
    wrong = (expected != children) | (children < 0)
    if wrong.any():
        i = int(np.flatnonzero(wrong)[0])
        kind = "strong" if regenerated[i] else "weak"
        raise ValueError(f"children[{i}] = {children[i]} is not the {kind} child of node {nodes[i]} ({expected[i]})")
    prefix = _prefix(model, trees, nodes)
    proposal = trees.step_tokens[trees.weak_child[nodes]].astype(np.int64)
    rewrite = np.where(regenerated, trees.step_tokens[children], 0).astype(np.int64)
    seen = _seen(trees, nodes, prefix) if model.caches_prefixes else None
    return event_cost(model, prefix, proposal, rewrite, regenerated, seen)


def regeneration_extra_cost(model: CostModel, trees: RolloutTrees, nodes: np.ndarray) -> np.ndarray:
    """Cost units of regenerating rather than continuing at each of ``nodes`` (each needs both children):
    the strong call and the PRM's scoring of the rewrite (the proposal is paid either way; what it
    changes at later steps, such as the weak model reading the rewrite under a prefix cache, is not counted)."""
    nodes = np.asarray(nodes, dtype=np.int64)
    regenerate = step_cost(model, trees, nodes, trees.strong_child[nodes], np.ones(len(nodes), dtype=bool))
    proceed = step_cost(model, trees, nodes, trees.weak_child[nodes], np.zeros(len(nodes), dtype=bool))
    return regenerate - proceed


def rewrite_penalty_scale(model: CostModel, trees: RolloutTrees) -> float:
    """How much less λ charges a rewrite in strong tokens than in ``model``: the mean
    :func:`regeneration_extra_cost` under :class:`StrongTokensCost` (a rewrite's tokens) over its mean
    under ``model``, over the stored nodes with both children. A λ grid chosen for strong tokens,
    times this, charges a rewrite as much on average under ``model`` (1 for strong tokens)."""
    nodes = np.flatnonzero((trees.weak_child >= 0) & (trees.strong_child >= 0))
    if nodes.size == 0:
        raise ValueError("rewrite_penalty_scale: the trees store no node with both a weak and a strong child")
    return float(np.mean(regeneration_extra_cost(StrongTokensCost(), trees, nodes))
                 / np.mean(regeneration_extra_cost(model, trees, nodes)))


def event_cost(model: CostModel, prefix: np.ndarray, proposal: np.ndarray, rewrite: np.ndarray,
               regenerated: np.ndarray, seen: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """Cost units of routing events given in tokens (one per entry; the calls of the module docstring).

    :param prefix: tokens read before the step (prompt + steps so far; zeros if prefill is free).
    :param proposal: the weak proposal's tokens.
    :param rewrite: the strong rewrite's tokens where ``regenerated`` (ignored elsewhere).
    :param regenerated: whether the strong model rewrote the step.
    :param seen: with a prefix cache, the tokens of ``prefix`` each model (``weak``, ``strong``,
        ``prm``) has already processed; ``None`` without one.
    """
    prefix = np.asarray(prefix, dtype=np.int64)
    nothing = np.zeros_like(prefix)
    if seen is None:
        seen = dict.fromkeys(ROLES, nothing)
    cost = (model.call_cost("weak", prefix - seen["weak"], proposal, seen["weak"])
            + model.call_cost("prm", prefix + proposal - seen["prm"], nothing, seen["prm"]))
    regenerated = np.asarray(regenerated, dtype=bool)
    if regenerated.any():
        at = np.flatnonzero(regenerated)
        rewritten = np.asarray(rewrite, dtype=np.int64)[at]
        # The rewrite's scoring shares the prefix with the proposal's, just scored: cached if anything is.
        scored = prefix[at] if model.caches_prefixes else nothing[at]
        cost[at] += (model.call_cost("strong", prefix[at] - seen["strong"][at], rewritten, seen["strong"][at])
                     + model.call_cost("prm", prefix[at] + rewritten - scored, nothing[at], scored))
    return cost / model.unit


class QueryCostMeter:
    """Prices a query routed live, step by step, as :func:`step_cost` prices the same path on a tree.

    Example::

        meter = QueryCostMeter(PriceCost(prefix_cache=True), prompt_tokens=96)
        meter.add_step(proposal_tokens=40, rewrite_tokens=None)   # continued
        meter.add_step(proposal_tokens=35, rewrite_tokens=52)     # regenerated
        meter.total                                               # cost units so far

    :param model: the cost model.
    :param prompt_tokens: the prompt's tokens as the models read it (template included); may be 0
        under a model that does not charge prefill.
    """

    def __init__(self, model: CostModel, prompt_tokens: int) -> None:
        if prompt_tokens < 0:
            raise ValueError(f"prompt_tokens = {prompt_tokens} must be >= 0")
        self.model = model
        self.prefix = int(prompt_tokens)
        self.seen = dict.fromkeys(ROLES, 0)
        self.total = 0.0

    def add_step(self, proposal_tokens: int, rewrite_tokens: int | None) -> float:
        """Charge one step: the weak proposal (scored by the PRM) and, if not ``None``, the strong
        rewrite that replaced it (also scored). Returns the step's cost units."""
        regenerated = rewrite_tokens is not None
        seen = {role: np.array([tokens]) for role, tokens in self.seen.items()} if self.model.caches_prefixes else None
        cost = float(event_cost(self.model, np.array([self.prefix]), np.array([proposal_tokens]),
                                np.array([rewrite_tokens or 0]), np.array([regenerated]), seen)[0])
        if regenerated:
            self.seen["weak"] = self.prefix
            self.prefix += int(rewrite_tokens or 0)
            self.seen["strong"] = self.prefix
        else:
            self.prefix += int(proposal_tokens)
            self.seen["weak"] = self.prefix
        self.seen["prm"] = self.prefix
        self.total += cost
        return cost


def _seen(trees: RolloutTrees, nodes: np.ndarray, prefix: np.ndarray) -> dict[str, np.ndarray]:
    """Tokens of ``prefix(n)`` each model has already processed on the path to each of ``nodes`` (module docstring)."""
    parent = trees.parent[nodes].astype(np.int64)
    at_root = parent < 0
    weak_wrote = ~at_root & ~trees.step_is_strong[nodes]
    weak = np.where(weak_wrote, prefix, np.where(at_root, 0, trees.prefix_tokens(np.maximum(parent, 0))))
    prm = np.where(at_root, 0, prefix)
    # The strong model has seen the prefix up to the last step it wrote: walk up to it.
    strong = np.zeros_like(prefix)
    pending = np.arange(len(nodes))
    current = nodes.copy()
    while pending.size:
        node = current[pending]
        root = trees.parent[node] < 0
        wrote = ~root & trees.step_is_strong[node]
        strong[pending[wrote]] = trees.prefix_tokens(node[wrote])
        pending, node = pending[~root & ~wrote], node[~root & ~wrote]
        current[pending] = trees.parent[node]
    return {"weak": weak, "strong": strong, "prm": prm}


def path_cost(model: CostModel, trees: RolloutTrees, nodes: np.ndarray) -> np.ndarray:
    """Cost units of reaching each of ``nodes`` from its root: the sum of :func:`step_cost` along the
    path, each step regenerated where the strong model wrote it (an episode that ended at the node)."""
    current = np.asarray(nodes, dtype=np.int64).copy()
    total = np.zeros(len(current), dtype=np.float64)
    active = np.flatnonzero(trees.parent[current] >= 0)
    while active.size:
        child = current[active]
        parent = trees.parent[child].astype(np.int64)
        total[active] += step_cost(model, trees, parent, child, trees.step_is_strong[child])
        current[active] = parent
        active = active[trees.parent[parent] >= 0]
    return total


def anchor_cost(model: CostModel, trees: RolloutTrees, run: str) -> np.ndarray:
    """Cost units of each query's weak-only or strong-only run: one call of that model that reads the
    prompt and decodes the whole solution (no PRM).

    :param run: ``"weak_only"`` or ``"strong_only"``.
    """
    if run not in ("weak_only", "strong_only"):
        raise ValueError(f"run = {run!r} must be 'weak_only' or 'strong_only'")
    decoded = getattr(trees, f"{run}_tokens").astype(np.int64)
    return model.call_cost(run.removesuffix("_only"), prompt_tokens(model, trees), decoded) / model.unit


def prompt_tokens(model: CostModel, trees: RolloutTrees) -> np.ndarray:
    """Each query's prompt tokens as ``model`` charges them (zeros for a model that does not charge
    prefill: old trees work there; the others refuse trees without them, :func:`check_trees`)."""
    if not model.charges_prefill:
        return np.zeros(trees.num_queries, dtype=np.int64)
    check_trees(model, trees)
    assert trees.prompt_tokens is not None
    return trees.prompt_tokens.astype(np.int64)
