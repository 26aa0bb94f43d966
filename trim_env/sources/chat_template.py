"""Chat-API step generation that never restarts the solution: continue the assistant's message, or render the chat template.

A step-level router needs every step to *continue* the solution prefix. Over ``/chat/completions``
the prefix is sent as a final, partial assistant message with vLLM's ``continue_final_message``;
a server that ignores that field (llama-cpp-python's, hosted APIs) closes the message and opens a
new assistant turn, so every step starts the solution again (steps 2 and 3 repeat the opening
sentence) and nothing says so. :class:`ContinuingChatGenerator` finds out before its first step:

- ``continuation="auto"``: :func:`probe_continuation` asks the server twice for the same
  conversation ending on a partial assistant message, once asking it to continue the message and
  once not. A server that continues renders the first prompt shorter (no end-of-turn, no new
  assistant header), so the two ``usage.prompt_tokens`` differ; a server that ignores the request
  renders both the same. Each probe decodes one token.
- ``continuation="continue"``: the server is known to continue (vLLM, SGLang): no probe.
- ``continuation="template"``: render the model's chat template here and use ``/completions``.

When the server does not continue, the generator renders the prompt with the model's chat
template (``prompt_template``: ``chatml`` or a format string with ``{system}`` and ``{problem}``)
and sends it to ``/completions`` of the same server, with a warning in the log. Without a template
it refuses with an error that says what to configure: a silent restart is never an option.

The generator describes itself as the chat generator it stands for (datasets collected through
it record the same backend either way: same model, prompt and sampling).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Sequence

from trim_env.sources.base import (
    BackendAuthError,
    BackendError,
    BackendModelError,
    Rollout,
    StepGenerator,
    StepRequest,
    StepResult,
)
from trim_env.sources.openai_http import BackendTimeoutError, OpenAIGenerator

logger = logging.getLogger(__name__)

CONTINUATION_MODES = ("auto", "continue", "template")
#: The probe's conversation: any short problem and partial answer.
PROBE_PROBLEM = "Count from 1 to 10."
PROBE_PREFIX = "1, 2, 3,"


async def probe_continuation(chat: OpenAIGenerator) -> bool | None:
    """Whether ``chat``'s server continues a partial assistant message (``None``: it reports no prompt tokens).

    A server that refuses the request to continue (a client error) does not continue.

    :param chat: a generator with ``api="chat"`` (its client, model and system prompt are used).
    """
    messages = [*chat.prompt.messages(PROBE_PROBLEM), {"role": "assistant", "content": PROBE_PREFIX}]
    body = {"model": chat.client.model, "messages": messages, "max_tokens": 1, "temperature": 0.0}
    try:
        continued = await chat.client.post("/chat/completions", {**body, "continue_final_message": True, "add_generation_prompt": False})
    except (BackendAuthError, BackendModelError, BackendTimeoutError):
        raise
    except BackendError:  # a server that refuses the fields (HTTP 400/422) does not continue either
        return False
    closed = await chat.client.post("/chat/completions", body)
    counts = [(answer.get("usage") or {}).get("prompt_tokens") for answer in (continued, closed)]
    if not all(isinstance(count, int) and count > 0 for count in counts):
        return None
    return counts[0] != counts[1]


class ContinuingChatGenerator(StepGenerator):
    """A chat-API generator that continues the prefix: through the chat API when the server
    continues a partial assistant message, otherwise through the chat template and ``/completions``.

    :param chat: the ``api="chat"`` generator.
    :param completions: the same model through ``/completions`` with a chat template rendered
        here (``None``: no template is known; a server that does not continue is then an error).
    :param continuation: ``auto`` (probe the server once), ``continue`` or ``template``.
    """

    def __init__(self, chat: OpenAIGenerator, completions: OpenAIGenerator | None, continuation: str = "auto") -> None:
        super().__init__(chat.name, chat.max_tokens_per_step)
        if continuation not in CONTINUATION_MODES:
            raise ValueError(f"continuation = {continuation!r}; choose one of {CONTINUATION_MODES}")
        if chat.api != "chat" or (completions is not None and completions.api != "completions"):
            raise ValueError("ContinuingChatGenerator takes an api=chat generator and an api=completions one")
        if continuation == "template" and completions is None:
            raise ValueError(f"continuation = template for model {chat.name!r} needs a chat template: set prompt_template "
                             "(chatml, or a format string with {system} and {problem})")
        self.chat = chat
        self.completions = completions
        self.continuation = continuation
        self._active: OpenAIGenerator | None = {"continue": chat, "template": completions, "auto": None}[continuation]
        self._lock: asyncio.Lock | None = None

    @property
    def mode(self) -> str | None:
        """``chat`` or ``completions``: how steps are requested (``None`` before the probe)."""
        return None if self._active is None else self._active.api

    async def active(self) -> OpenAIGenerator:
        """The generator that continues the prefix on this server (probing it on first use)."""
        if self._active is not None:
            return self._active
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._active is None:
                self._active = await self._choose()
        return self._active

    async def _choose(self) -> OpenAIGenerator:
        where = f"{self.chat.client.base_url} (model {self.chat.name!r})"
        continues = await probe_continuation(self.chat)
        if continues:
            return self.chat
        reason = ("does not continue a partial assistant message (it ignores continue_final_message)" if continues is False
                  else "reports no prompt token counts, so whether it continues a partial assistant message is unknown")
        if self.completions is None:
            raise BackendError(
                f"{where} {reason}: with api=chat every step would restart the solution. Set prompt_template (chatml, "
                "or a format string with {system} and {problem}) so that the prompt is rendered here and sent "
                "to /completions, or continuation=continue if the server does continue"
            )
        logger.warning("%s %s; steps are requested through /completions with the chat template rendered here", where, reason)
        return self.completions

    async def _for(self, requests: Sequence[StepRequest]) -> OpenAIGenerator:
        # A request without a prefix continues nothing: the chat API serves it as it is (no probe yet).
        if self._active is None and not any(request.steps for request in requests):
            return self.chat
        return await self.active()

    async def generate(self, requests: Sequence[StepRequest]) -> list[StepResult]:
        return await (await self._for(requests)).generate(requests)

    async def rollout(self, requests: Sequence[StepRequest], max_steps: Sequence[int]) -> list[Rollout]:
        # A rollout may continue step by step (a server without token pieces), so it needs to know.
        return await (await self.active()).rollout(requests, max_steps)

    def describe(self) -> dict[str, Any]:
        return self.chat.describe()

    async def aclose(self) -> None:
        await self.chat.aclose()  # the completions generator shares its client
        self._lock = None  # it belongs to the event loop that is closing
