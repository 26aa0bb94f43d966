"""A drop-in Python controller for step-level routing, without a server (RouteLLM's ``Controller``, step by step).

    from agents.serve.controller import Controller

    controller = Controller(
        router="OUT/router",
        weak={"kind": "openai", "base_url": "http://127.0.0.1:8000/v1", "model": "weak", "api": "completions", "prompt_template": "chatml"},
        strong={"kind": "openai", "base_url": "http://127.0.0.1:8001/v1", "model": "strong", "api": "completions", "prompt_template": "chatml"},
        prm={"kind": "vllm_pooling", "base_url": "http://127.0.0.1:8002", "model": "Qwen/Qwen2.5-Math-PRM-7B"},
    )
    answer = controller.chat.completions.create(messages=[{"role": "user", "content": "What is 2 + 3?"}], max_strong_tokens=500)
    print(answer["choices"][0]["message"]["content"], answer["usage"]["strong_tokens"])
    for chunk in controller.chat.completions.create(messages=..., stream=True):   # one chunk per written step
        ...
    controller.close()

Requests take the fields of the server's (:mod:`agents.serve.service`) and get the same answers,
as plain dicts in OpenAI's format. Backends are configs (as in ``conf/collect/``) or backend
objects. ``settings=ServiceSettings(cost_model=PriceCost())`` adds each answer's cost to its
``usage`` (:mod:`agents.serve.service`). The controller runs its requests on its own event loop, so it can be called from code
that has none; it is not thread-safe (one controller per thread).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Iterator, Mapping

from agents.serve.routers import ServedRouter
from agents.serve.service import RoutingService, ServiceSettings
from trim_env.sources.base import PRMScorer, StepGenerator
from trim_env.sources.factory import make_generator, make_prm

#: The model name of a controller built with one router.
DEFAULT_ROUTER_NAME = "trim"


class _Completions:
    def __init__(self, controller: Controller) -> None:
        self._controller = controller

    def create(self, *, messages: list[dict[str, Any]], model: str | None = None, stream: bool = False,
               **fields: Any) -> dict[str, Any] | Iterator[dict[str, Any]]:
        """Route one problem: a ``chat.completion`` dict, or (``stream=True``) an iterator of chunk dicts.

        :param messages: the conversation (one user message: the problem).
        :param model: the router's name (default: the only one).
        :param stream: yield one chunk per written step instead of one answer.
        :param fields: ``max_strong_tokens``, ``threshold``, ``lambda``, ``seed``, ``stream_options``.
        :raises agents.serve.service.RequestError: for a bad request.
        :raises agents.serve.loop.UpstreamError: when a backend fails.
        """
        return self._controller._create({"model": model or self._controller.default_model, "messages": messages,
                                         "stream": stream, **fields})


class _Chat:
    def __init__(self, controller: Controller) -> None:
        self.completions = _Completions(controller)


class Controller:
    """Routes chat requests step by step with exported routers and weak/strong/PRM backends.

    :param router: an exported router directory, or a mapping name -> directory to serve several.
    :param weak: the weak model: a backend config mapping or a :class:`StepGenerator`.
    :param strong: the strong model: a config mapping or a :class:`StepGenerator`.
    :param prm: the PRM: a config mapping or a :class:`PRMScorer`.
    :param operating_point: an operating-point file from ``trim-calibrate`` for the router (one router only).
    :param max_tokens_per_step: decoded-token limit of one step (backends built from configs).
    :param settings: server-wide limits (step cap, strong-token ceiling, seed, upstream concurrency) and cost model.
    """

    def __init__(
        self,
        router: str | Path | Mapping[str, str | Path],
        weak: Mapping[str, Any] | StepGenerator,
        strong: Mapping[str, Any] | StepGenerator,
        prm: Mapping[str, Any] | PRMScorer,
        operating_point: str | Path | None = None,
        max_tokens_per_step: int = 512,
        settings: ServiceSettings | None = None,
    ) -> None:
        directories = dict(router) if isinstance(router, Mapping) else {DEFAULT_ROUTER_NAME: router}
        if operating_point is not None and len(directories) != 1:
            raise ValueError(f"operating_point = {operating_point} is for one router; this controller has {sorted(directories)}")
        routers = {name: ServedRouter.from_directory(name, path, operating_point) for name, path in directories.items()}
        weak_backend = weak if isinstance(weak, StepGenerator) else make_generator(weak, max_tokens_per_step, "weak")
        strong_backend = strong if isinstance(strong, StepGenerator) else make_generator(strong, max_tokens_per_step, "strong")
        prm_backend = prm if isinstance(prm, PRMScorer) else make_prm(prm, "prm")
        self._loop = asyncio.new_event_loop()
        self.service = RoutingService(routers, weak_backend, strong_backend, prm_backend, settings)
        self.default_model = next(iter(routers)) if len(routers) == 1 else None
        self.chat = _Chat(self)

    def _create(self, body: dict[str, Any]) -> dict[str, Any] | Iterator[dict[str, Any]]:
        if body.get("stream"):
            chunks = self._loop.run_until_complete(self.service.stream(body))
            return self._iterate(chunks)
        return self._loop.run_until_complete(self.service.complete(body))

    def _iterate(self, chunks: Any) -> Iterator[dict[str, Any]]:
        try:
            while True:
                try:
                    yield self._loop.run_until_complete(chunks.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            self._loop.run_until_complete(chunks.aclose())

    def close(self) -> None:
        """Close the backends' connections and the event loop."""
        if not self._loop.is_closed():
            self._loop.run_until_complete(self.service.aclose())
            self._loop.close()

    def __enter__(self) -> Controller:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
