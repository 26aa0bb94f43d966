"""Real-model backends: step generators, PRM scorers, answer grading, and rollout collection into trees.

- :mod:`~trim_env.sources.base`: the interfaces (:class:`StepGenerator`, :class:`PRMScorer`) and
  the prompt format shared by all backends;
- :mod:`~trim_env.sources.local`: ``transformers`` generator and PRMs (Qwen2.5-Math-PRM and
  Math-Shepherd styles), GGUF checkpoints included;
- :mod:`~trim_env.sources.openai_http`: OpenAI-compatible servers (vLLM, SGLang, hosted APIs) and
  vLLM's pooling PRM endpoint;
- :mod:`~trim_env.sources.factory`: backends from configuration (``conf/collect/``);
- :mod:`~trim_env.sources.grading`: math-verify grading;
- :mod:`~trim_env.sources.problems`: problem sets (the ones shipped with trim, JSONL files, ``datasets``);
- :mod:`~trim_env.sources.query_tree`: one query's tree, grown breadth-first, scored and graded;
- :mod:`~trim_env.sources.records`: a collection's state on disk (records, pinned settings and problems);
- :mod:`~trim_env.sources.collect`: the collection loop, resumable, into the tree format;
- :mod:`~trim_env.sources.growth`: the backends as the tree source of a collected dataset (missing
  children on demand, persisted per batch, under a token budget);
- :mod:`~trim_env.sources.testing`: offline test doubles (a server on 127.0.0.1, a random PRM).

Only the interfaces are imported here: torch models and HTTP clients load with their modules.
"""

from trim_env.sources.base import (
    STEP_SEPARATOR,
    BackendAuthError,
    BackendError,
    BackendModelError,
    PRMRequest,
    PRMScorer,
    Sampling,
    StepGenerator,
    StepRequest,
    StepResult,
)

__all__ = [
    "STEP_SEPARATOR",
    "BackendAuthError",
    "BackendError",
    "BackendModelError",
    "PRMRequest",
    "PRMScorer",
    "Sampling",
    "StepGenerator",
    "StepRequest",
    "StepResult",
]
