"""Growing collected trees with real models: missing children come from the generator and PRM backends.

:class:`BackendSource` is the :class:`~trim_env.store.TreeSource` of a dataset collected by
:mod:`trim_env.sources.collect`. When an episode needs a child the stored tree lacks (past the
cap K, say), the store asks for the children of all such nodes at once; each is requested as
collection requests a step:

- **Request.** The prefix is the step texts along the parent's path, the problem and reference
  answer are the query's; one step from the weak or the strong model, seeded by
  :func:`~trim_env.sources.query_tree.request_seed` of (seed, query id, path letters + W/S)
  (:func:`~trim_env.sources.query_tree.step_request`).
- **Content.** The PRM scores the new step given the prefix (a process reward depends only on the
  steps before it, so this is the score collection gives the same node); the step ends its path
  when the model ended the answer or the path reached ``max_steps``
  (:func:`~trim_env.sources.query_tree.ends_path`); a terminal step is graded with math-verify; the
  hidden state is unknown (-1).
- **Same nodes as collection.** A strong rewrite and the first weak step after the root or after a
  strong step are exactly collection's requests, so a backend that answers a request
  deterministically (a seeded server, the scripted test model) returns the step collection got.
  Collection decodes the rest of a weak chain in that same rollout call; a server cannot resume a
  sampled rollout midway, so a grown weak step further down a chain is a fresh sample under its
  own path's seed (same model and sampling, another draw).

**Concurrency.** All parents of a batch go out in one ``asyncio`` run: one ``generate`` call with
every request, then one ``score`` call; the backends bound their own concurrency (HTTP clients'
``max_concurrency``, local models' batch size). HTTP clients are closed at the end of each batch
(they belong to that run's event loop), so :meth:`BackendSource.draw` must not be called from a
running event loop.

**Persistence.** ``persist_each_batch`` is True: the store writes each batch to the split's growth
journal before returning the children, so a node is on disk before any episode uses it, and a
failed batch (a backend down beyond its retries) appends nothing.

**Budget.** ``max_new_tokens`` bounds the tokens the weak and strong models decode in one run (one
source; PRM calls are counted apart in :attr:`BackendSource.stats`). It is checked before each
batch: a batch that starts under the budget completes, so a run can overshoot by one batch (at
most one step of ``max_tokens_per_step`` per parent of that batch). The next batch raises
:class:`~trim_env.store.GrowthBudgetSpent`; from then on :meth:`BackendSource.available` is False.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence, cast

import numpy as np

from trim_env.sources.base import (
    PRMRequest,
    PRMScorer,
    StepGenerator,
    StepRequest,
    StepResult,
    solution_text,
)
from trim_env.sources.factory import make_backends
from trim_env.sources.grading import grade
from trim_env.sources.query_tree import ends_path, path_actions, step_request
from trim_env.store import ChildBatch, GrowthBudgetSpent
from trim_env.tree import (
    MANIFEST,
    MAX_STEPS,
    UNKNOWN_STATE,
    RolloutTrees,
    TreeFormatError,
    read_manifest,
)

#: Settings of ``data.backends`` besides the three backend configs.
GROWTH_SETTINGS = ("max_new_tokens", "seed", "max_steps", "max_tokens_per_step", "torch_threads")


@dataclass
class GrowthStats:
    """What a :class:`BackendSource` spent in this run.

    :param weak_calls: weak-model requests (one per weak step).
    :param weak_tokens: tokens the weak model decoded.
    :param strong_calls: strong-model requests (one per strong step).
    :param strong_tokens: tokens the strong model decoded.
    :param prm_calls: PRM requests (one per step).
    :param nodes_grown: children handed to the store (batches that failed are not counted).
    """

    weak_calls: int = 0
    weak_tokens: int = 0
    strong_calls: int = 0
    strong_tokens: int = 0
    prm_calls: int = 0
    nodes_grown: int = 0

    @property
    def decoded_tokens(self) -> int:
        """Tokens both generators decoded: what the budget counts."""
        return self.weak_tokens + self.strong_tokens


class BackendSource:
    """Missing children of collected trees, from a weak and a strong generator and a PRM.

    :param weak: the weak model (the collection's).
    :param strong: the strong model (the collection's).
    :param prm: the process reward model (the collection's).
    :param seed: root of the sampling seeds (the collection's ``seed``, so requests match).
    :param max_steps: a path ends after this many steps (the collection's).
    :param max_new_tokens: tokens the weak and strong models may decode in this run (``None``: no
        budget); see the module docstring for the overshoot of one batch.
    """

    #: Real-model steps are expensive: each batch is on disk before it is used.
    persist_each_batch = True

    def __init__(
        self,
        weak: StepGenerator,
        strong: StepGenerator,
        prm: PRMScorer,
        seed: int = 0,
        max_steps: int = MAX_STEPS,
        max_new_tokens: int | None = None,
    ) -> None:
        if not 1 <= max_steps <= MAX_STEPS:
            raise ValueError(f"max_steps = {max_steps} must be in [1, {MAX_STEPS}] (the router's observation holds {MAX_STEPS} steps)")
        if max_new_tokens is not None and max_new_tokens < 0:
            raise ValueError(f"max_new_tokens = {max_new_tokens} must be >= 0 (or null for no budget)")
        self.weak = weak
        self.strong = strong
        self.prm = prm
        self.seed = int(seed)
        self.max_steps = int(max_steps)
        self.max_new_tokens = max_new_tokens
        self.stats = GrowthStats()
        self._spent = False

    def available(self) -> bool:
        """True until a batch was refused for the spent budget (a spent budget is reported by raising
        :class:`~trim_env.store.GrowthBudgetSpent`, never by growing silently less)."""
        return not self._spent

    def describe(self) -> dict[str, Any]:
        """The backends (no addresses, no credentials) and the growth settings."""
        return {"kind": "backends", "weak": self.weak.describe(), "strong": self.strong.describe(), "prm": self.prm.describe(),
                "seed": self.seed, "max_steps": self.max_steps, "max_new_tokens": self.max_new_tokens}

    def check_split(self, trees: RolloutTrees, where: str) -> None:
        """Refuse a split without the text that prompts are made of (problems, answers, step texts)."""
        missing = _missing_text(trees, every_step=True)
        if missing is not None:
            file_name, field = missing
            raise TreeFormatError(
                f"{Path(where) / file_name}: field {field!r} is missing or null: growing with real models continues a "
                "prefix from its text, which this split does not hold; open it without data.backends (frozen), or "
                "recollect it with trim_env.sources.collect (which stores the text)"
            )

    def draw(self, store: RolloutTrees, parents: np.ndarray, strong: bool, keys: np.ndarray) -> ChildBatch:
        """One step from the weak (``strong=False``) or strong model after each parent's prefix, scored and graded.

        ``keys`` are not needed: a request is seeded by its path letters, as in collection.

        :raises GrowthBudgetSpent: the budget was spent before this batch; nothing was requested.
        :raises TreeFormatError: the store lacks the text of a prompt.
        :raises BackendError: a backend failed beyond its retries; nothing of the batch is kept.
        """
        if self.max_new_tokens is not None and self.stats.decoded_tokens >= self.max_new_tokens:
            self._spent = True
            raise GrowthBudgetSpent(
                f"growth budget spent: the weak and strong models decoded {self.stats.decoded_tokens} tokens in this run "
                f"(weak {self.stats.weak_tokens}, strong {self.stats.strong_tokens}; "
                f"PRM calls {self.stats.prm_calls}) of max_new_tokens = {self.max_new_tokens}; "
                f"the {self.stats.nodes_grown} nodes grown so far are kept on disk (each split's growth/ directory) and a "
                "rerun replays them instead of asking the models again; rerun, or raise data.backends.max_new_tokens, to grow further"
            )
        missing = _missing_text(store, every_step=False)
        if missing is not None:
            raise TreeFormatError(
                f"the trees to grow have no {missing[1]!r} (field of the split's {missing[0]}): growing with real models "
                "continues a prefix from its text"
            )
        requests = [self._request(store, int(parent), strong) for parent in parents]
        steps, scores = asyncio.run(self._generate_and_score(strong, requests))
        depth = store.depth[parents].astype(np.int64) + 1
        terminal = np.array([ends_path(step, int(d), self.max_steps) for step, d in zip(steps, depth)], dtype=bool)
        # Present for every query (checked with the other text fields above).
        answers = [cast(str, store.answer[int(query)]) for query in store.query[parents]]  # type: ignore[index]
        correct = np.array(
            [int(grade(solution_text((*request.steps, step.text)), answer)) if ends else -1
             for request, step, answer, ends in zip(requests, steps, answers, terminal)],
            dtype=np.int8,
        )
        self.stats.nodes_grown += len(steps)
        return ChildBatch(
            parents=parents,
            step_tokens=np.array([step.tokens for step in steps], dtype=np.int32),
            step_prm=np.array(scores, dtype=np.float32),
            terminal=terminal,
            correct=correct,
            hidden_state=np.full(len(steps), UNKNOWN_STATE, dtype=np.int8),
            step_text=[step.text for step in steps],
        )

    def _request(self, store: RolloutTrees, parent: int, strong: bool) -> StepRequest:
        """The request for ``parent``'s child: its prefix's texts, seeded by its path as collection seeds it."""
        path = store.path(parent)
        texts = [store.step_text[node] for node in path]  # type: ignore[index]
        query = int(store.query[parent])
        if any(text is None for text in texts):
            raise TreeFormatError(
                f"query {store.query_id[query]!r}: a step on the path to node {parent} has no text (field 'step_text'); "
                "growing with real models continues a prefix from its text"
            )
        actions = path_actions(store.step_is_strong[path]) + ("S" if strong else "W")
        return step_request(store.problem[query], store.query_id[query], texts, actions, self.seed)  # type: ignore[index, arg-type]

    async def _generate_and_score(self, strong: bool, requests: Sequence[StepRequest]) -> tuple[list[StepResult], list[float]]:
        """Each request's step (by the strong or the weak model) and its PRM score given the prefix.

        Decoded tokens are counted as soon as the steps exist (a failing PRM does not refund them);
        the HTTP clients are closed at the end.
        """
        try:
            steps = await (self.strong if strong else self.weak).generate(requests)
            tokens = sum(step.tokens for step in steps)
            if strong:
                self.stats.strong_calls += len(steps)
                self.stats.strong_tokens += tokens
            else:
                self.stats.weak_calls += len(steps)
                self.stats.weak_tokens += tokens
            scored = await self.prm.score([PRMRequest(request.problem, (*request.steps, step.text)) for request, step in zip(requests, steps)])
            self.stats.prm_calls += len(scored)
        finally:
            for backend in (self.weak, self.strong, self.prm):
                await backend.aclose()  # HTTP clients belong to this batch's event loop
        return steps, [scores[-1] for scores in scored]


def _missing_text(trees: RolloutTrees, every_step: bool) -> tuple[str, str] | None:
    """(file, field) of the first text a real-model source needs that ``trees`` lacks, or ``None``.

    :param every_step: also look for steps without text (a full pass over the nodes).
    """
    for field in ("problem", "answer"):
        values = getattr(trees, field)
        if values is None or any(value is None for value in values):
            return "queries.parquet", field
    if trees.step_text is None:
        return "nodes.parquet", "step_text"
    if every_step and any(text is None for text, parent in zip(trees.step_text, trees.parent) if parent >= 0):
        return "nodes.parquet", "step_text"
    return None


def backend_source(directory: str | Path, config: Mapping[str, Any]) -> BackendSource:
    """A :class:`BackendSource` for a collected dataset, from configuration (``data.backends``).

    The backends must be the ones that collected the dataset: each one's description (model,
    sampling, prompt, per-step token limit; never its address) is compared with the manifest's.

    :param directory: the collected dataset; its manifest pins the models and gives the defaults.
    :param config: ``weak``, ``strong``, ``prm``: backend configs as in ``conf/collect/``
        (:func:`~trim_env.sources.factory.make_backends`); ``max_new_tokens``: the run's budget
        of decoded tokens (``None``: no budget); ``seed``, ``max_steps``, ``max_tokens_per_step``:
        ``None`` takes the collection's; ``torch_threads``: CPU threads of local models.
    :raises ValueError: the dataset was not collected from real models, a field is unknown or
        missing, or a backend is not the one that collected the dataset.
    """
    manifest_path = Path(directory) / MANIFEST
    collected = read_manifest(directory)["source"]
    if collected.get("kind") != "collected":
        raise ValueError(
            f"{manifest_path}: source.kind is {collected.get('kind')!r}; data.backends grows datasets collected from real "
            "models (kind 'collected'), a simulated dataset grows from its simulator"
        )
    settings = _plain(config)
    unknown = sorted(set(settings) - {"weak", "strong", "prm", *GROWTH_SETTINGS})
    if unknown:
        raise ValueError(f"data.backends: field {unknown[0]!r} is not a setting; settings: weak, strong, prm, {', '.join(GROWTH_SETTINGS)}")
    for role in ("weak", "strong", "prm"):
        if not settings.get(role):
            raise ValueError(f"data.backends: field {role!r} is missing: give the {role} backend config that collected {directory}")
    pick = lambda name, collected_value: collected_value if settings.get(name) is None else settings[name]  # noqa: E731
    max_tokens_per_step = pick("max_tokens_per_step", collected["weak"].get("max_tokens_per_step"))
    weak, strong, prm = make_backends({**settings, "max_tokens_per_step": max_tokens_per_step})
    for role, backend in (("weak", weak), ("strong", strong), ("prm", prm)):
        _check_same_backend(manifest_path, role, collected.get(role), backend.describe())
    return BackendSource(
        weak, strong, prm,
        seed=int(pick("seed", collected.get("seed", 0))),
        max_steps=int(pick("max_steps", collected.get("max_steps", MAX_STEPS))),
        max_new_tokens=None if settings.get("max_new_tokens") is None else int(settings["max_new_tokens"]),
    )


def _check_same_backend(manifest_path: Path, role: str, collected: dict[str, Any] | None, configured: dict[str, Any]) -> None:
    """Refuse a backend whose description differs from the one that collected the dataset."""
    if collected is None:
        raise ValueError(f"{manifest_path}: field source.{role} is missing, so the {role} backend cannot be checked against the collection")
    configured = json.loads(json.dumps(configured))  # tuples as lists, as the manifest stores them
    for name in sorted(set(collected) | set(configured)):
        if collected.get(name) != configured.get(name):
            raise ValueError(
                f"{manifest_path}: source.{role}.{name} is {collected.get(name)!r}, data.backends.{role} gives "
                f"{configured.get(name)!r}; grow a dataset with the models and settings that collected it"
            )


def _plain(value: Any) -> Any:
    """``value`` with mappings as dicts and sequences as lists (a Hydra config as plain data)."""
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return [_plain(item) for item in value]
    return value
