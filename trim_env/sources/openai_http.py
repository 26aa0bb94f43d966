"""HTTP backends for OpenAI-compatible servers: step generation (vLLM, SGLang, hosted APIs) and vLLM's pooling PRM.

:class:`OpenAIGenerator` continues the assistant's message in one of two ways:

- ``api="chat"``: ``/chat/completions`` with the prefix as a final assistant message and
  ``continue_final_message`` (vLLM and SGLang render the server's own chat template and continue
  the message instead of opening a new turn);
- ``api="completions"``: ``/completions`` with a prompt rendered here (:class:`ChatPrompt`: a
  template string such as ChatML, or a local tokenizer's chat template).

Either way a one-step request stops at the step separator. Whether a step ended the solution
comes from the server's ``stop_reason`` (vLLM) or ``matched_stop`` (SGLang): ``None`` means the
model's end of sequence. A server that reports neither (a hosted API) is read by a fallback: the
step ends the solution when it is blank or holds a ``\\boxed{}`` answer.

A rollout (several steps) is one request without a stop string that asks for the sampled tokens
(``logprobs``): their text pieces locate each step's tokens. A server whose pieces do not spell
the text (some hosted APIs split characters into bytes) is driven step by step instead.

:class:`HTTPClient` carries what both share: bounded concurrency, retries with exponential
backoff and jitter on timeouts, connection errors, 429 and 5xx, and immediate, clear errors for
401/403 (credentials) and 404 (unknown model, with the models the server lists).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from dataclasses import dataclass, field
from typing import Any, Sequence

import httpx

from trim_env.sources.api_keys import check_api_key_env
from trim_env.sources.base import (
    STEP_SEPARATOR,
    BackendAuthError,
    BackendError,
    BackendModelError,
    ChatPrompt,
    PRMRequest,
    PRMScorer,
    Rollout,
    Sampling,
    StepGenerator,
    StepRequest,
    StepResult,
    assistant_prefix,
    check_scores,
    cut_at_separator,
    split_steps,
)

#: Statuses worth retrying: rate limiting and server-side failures.
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


class BackendTimeoutError(BackendError):
    """The server did not answer in time on any attempt (a routing server answers 504 for it)."""


@dataclass
class HTTPSettings:
    """How to reach one server: the settings every HTTP backend shares.

    :param base_url: the API root, e.g. ``http://127.0.0.1:8000/v1``.
    :param model: the served model name.
    :param api_key_env: the environment variable holding the API key (``None``: send none). The
        key itself is never a setting, so it is never recorded.
    :param max_concurrency: requests in flight at once.
    :param timeout_s: seconds per attempt.
    :param max_retries: retries after the first attempt.
    :param backoff_s: first backoff; doubles per retry, plus up to 25 % jitter.
    :param backoff_max_s: longest backoff.
    :param extra_body: further request fields, e.g. ``{"repetition_penalty": 1.05}``.
    """

    base_url: str
    model: str
    api_key_env: str | None = "OPENAI_API_KEY"
    max_concurrency: int = 16
    timeout_s: float = 120.0
    max_retries: int = 5
    backoff_s: float = 1.0
    backoff_max_s: float = 30.0
    extra_body: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_api_key_env(self.api_key_env)
        if self.max_concurrency < 1:
            raise ValueError(f"max_concurrency = {self.max_concurrency} must be >= 1")
        if self.max_retries < 0:
            raise ValueError(f"max_retries = {self.max_retries} must be >= 0")
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s = {self.timeout_s} must be > 0")
        self.extra_body = dict(self.extra_body or {})


class HTTPClient:
    """JSON POSTs to one server with bounded concurrency and retries.

    httpx logs every request at INFO; unless its logger's level was set explicitly, it is set to
    WARNING here, so a run's log holds progress rather than one line per request.

    :param settings: address, model, API-key variable, concurrency, timeouts and retries.
    :param models_path: where the server lists its models (after ``base_url``).
    """

    def __init__(self, settings: HTTPSettings, models_path: str = "/models") -> None:
        self.base_url = settings.base_url.rstrip("/")
        self.model = settings.model
        self.api_key = api_key_from_env(settings.api_key_env)
        self.max_concurrency = settings.max_concurrency
        self.timeout_s = settings.timeout_s
        self.max_retries = settings.max_retries
        self.backoff_s = settings.backoff_s
        self.backoff_max_s = settings.backoff_max_s
        self.models_path = models_path
        #: Attempts that failed and were retried (for summaries and tests).
        self.retries = 0
        # httpx clients and semaphores belong to one event loop; StepRouter.solve runs a new loop
        # per call, so both are (re)made for the running loop.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: httpx.AsyncClient | None = None
        self._semaphore: asyncio.Semaphore | None = None
        httpx_logger = logging.getLogger("httpx")
        if httpx_logger.level == logging.NOTSET:
            httpx_logger.setLevel(logging.WARNING)

    def _session(self) -> tuple[httpx.AsyncClient, asyncio.Semaphore]:
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._client is None or self._semaphore is None:
            headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
            limits = httpx.Limits(max_connections=self.max_concurrency, max_keepalive_connections=self.max_concurrency)
            self._client = httpx.AsyncClient(headers=headers, timeout=self.timeout_s, limits=limits)
            self._semaphore = asyncio.Semaphore(self.max_concurrency)
            self._loop = loop
        return self._client, self._semaphore

    async def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST ``body`` to ``base_url + path``; the parsed JSON answer.

        :raises BackendAuthError: on 401/403.
        :raises BackendModelError: on 404.
        :raises BackendError: on other client errors, or when the retries are used up.
        """
        client, semaphore = self._session()
        url = self.base_url + path
        last_error = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                self.retries += 1
                delay = min(self.backoff_max_s, self.backoff_s * 2 ** (attempt - 1))
                await asyncio.sleep(delay * (1.0 + 0.25 * random.random()))
            try:
                async with semaphore:
                    response = await client.post(url, json=body)
            except httpx.TimeoutException:
                last_error = f"timed out after {self.timeout_s} s"
                continue
            except httpx.TransportError as error:
                last_error = f"connection failed ({type(error).__name__}: {error})"
                continue
            if response.status_code == 200:
                try:
                    return response.json()
                except ValueError as error:
                    raise BackendError(f"{url}: answer is not JSON ({error}): {response.text[:200]!r}") from error
            message = _error_message(response)
            if response.status_code in RETRY_STATUSES:
                last_error = f"HTTP {response.status_code}: {message}"
                continue
            if response.status_code in (401, 403):
                raise BackendAuthError(
                    f"{url}: HTTP {response.status_code}, the server refused the credentials ({message}); "
                    "check the backend's api_key_env variable and the key it names"
                )
            if response.status_code == 404:
                served = await self.served_models()
                raise BackendModelError(
                    f"{url}: HTTP 404 for model {self.model!r} ({message}); "
                    f"the server serves {served if served is not None else 'an unknown list of models'}: check the backend's model field"
                )
            raise BackendError(f"{url}: HTTP {response.status_code} for model {self.model!r}: {message}")
        failure = BackendTimeoutError if last_error.startswith("timed out") else BackendError
        raise failure(f"{url}: model {self.model!r} failed {self.max_retries + 1} attempts; last: {last_error}")

    async def served_models(self) -> list[str] | None:
        """Model ids listed by ``GET /models``, or ``None`` if the server does not say."""
        client, _ = self._session()
        try:
            response = await client.get(self.base_url + self.models_path)
            return [entry["id"] for entry in response.json()["data"]] if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            return None

    async def aclose(self) -> None:
        if self._client is not None and self._loop is asyncio.get_running_loop():
            await self._client.aclose()
        self._client = self._semaphore = self._loop = None


def _error_message(response: httpx.Response) -> str:
    """The server's own error message, if it sent one in the OpenAI error format."""
    try:
        error = response.json().get("error", response.json())
        return str(error.get("message", error) if isinstance(error, dict) else error)[:300]
    except (ValueError, AttributeError):
        return response.text[:300]


def api_key_from_env(variable: str | None) -> str | None:
    """The API key in environment variable ``variable`` (``None`` if unset or not named)."""
    return os.environ.get(variable) or None if variable else None


class OpenAIGenerator(StepGenerator):
    """Step generation over an OpenAI-compatible HTTP server.

    :param client: the HTTP client of the server.
    :param api: ``chat`` (assistant-prefix continuation) or ``completions``.
    :param prompt: how to render prompts (``completions``) or the conversation (``chat``).
    :param sampling: sampling settings.
    :param max_tokens_per_step: decoded-token limit of one step.
    :param send_top_k: send ``top_k`` (vLLM, SGLang); hosted APIs reject the field.
    :param extra_body: further request fields, e.g. ``{"repetition_penalty": 1.05}``.
    :param max_rollout_tokens: tokens one rollout request may decode.
    """

    def __init__(
        self,
        client: HTTPClient,
        api: str = "chat",
        prompt: ChatPrompt | None = None,
        sampling: Sampling | None = None,
        max_tokens_per_step: int = 512,
        send_top_k: bool = True,
        extra_body: dict[str, Any] | None = None,
        max_rollout_tokens: int = 4096,
    ) -> None:
        super().__init__(client.model, max_tokens_per_step)
        if api not in ("chat", "completions"):
            raise ValueError(f"api = {api!r}; choose chat or completions")
        if prompt is None:
            raise ValueError("OpenAIGenerator needs a ChatPrompt (its system prompt; for completions, its template)")
        self.client = client
        self.api = api
        self.prompt = prompt
        self.sampling = sampling or Sampling()
        self.send_top_k = send_top_k
        self.extra_body = dict(extra_body or {})
        self.max_rollout_tokens = max_rollout_tokens

    def describe(self) -> dict[str, Any]:
        # No base_url: a resumed collection may reach the same model at another address.
        return {**super().describe(), "api": self.api, "sampling": vars(self.sampling),
                "system_prompt": self.prompt.system_prompt, "extra_body": self.extra_body}

    async def generate(self, requests: Sequence[StepRequest]) -> list[StepResult]:
        return list(await asyncio.gather(*(self._one(request) for request in requests)))

    def request_body(self, request: StepRequest) -> dict[str, Any]:
        """The JSON body of one step request."""
        body: dict[str, Any] = {
            "model": self.client.model,
            "max_tokens": self.step_limit(request),
            "temperature": self.sampling.temperature,
            "top_p": self.sampling.top_p,
            "stop": [STEP_SEPARATOR],
            **({"top_k": self.sampling.top_k} if self.send_top_k and self.sampling.top_k > 0 else {}),
            **({"seed": request.seed} if request.seed is not None else {}),
        }
        if self.api == "completions":
            body["prompt"] = self.prompt.render(request.problem, request.steps)
        else:
            messages = self.prompt.messages(request.problem)
            if request.steps:
                # Continue the assistant's own message: no new turn, no end-of-turn token.
                messages.append({"role": "assistant", "content": assistant_prefix(request.steps)})
                body.update(continue_final_message=True, add_generation_prompt=False)
            body["messages"] = messages
        return {**body, **self.extra_body}

    async def _post(self, body: dict[str, Any]) -> tuple[dict[str, Any], str, str | None, int, int | None]:
        """(choice, text, finish reason, decoded tokens, prompt tokens) of one completion request, each checked.

        The prompt tokens are the server's ``usage.prompt_tokens``, ``None`` where it reports none
        (the field is optional in the API; only cost models that charge prefill need it).

        :raises BackendError: naming the field of the answer that is missing or of the wrong type,
            or a token count above the request's ``max_tokens`` (the cap is the request's, never
            the server's report).
        """
        path = "/completions" if self.api == "completions" else "/chat/completions"
        answer = await self.client.post(path, body)
        where = f"{self.client.base_url}{path}: model {self.name!r}"
        text_field = "choices[0].text" if self.api == "completions" else "choices[0].message.content"
        try:
            choice = answer["choices"][0]
            text = choice["text"] if self.api == "completions" else choice["message"]["content"]
        except (KeyError, IndexError, TypeError) as error:
            raise BackendError(f"{where}: the answer has no {text_field} ({str(answer)[:300]})") from error
        if text is None and self.api == "chat":
            text = ""  # a chat server may answer an empty continuation with null content
        if not isinstance(text, str):
            raise BackendError(f"{where}: field {text_field} is {type(text).__name__} {str(text)[:50]!r}, not a string")
        usage = answer.get("usage")
        tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
        if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
            raise BackendError(f"{where}: field usage.completion_tokens is {tokens!r}, not a non-negative integer")
        if tokens > body["max_tokens"]:
            raise BackendError(
                f"{where}: field usage.completion_tokens = {tokens} exceeds the request's max_tokens = {body['max_tokens']}; "
                "the server does not honour the token limit"
            )
        finish = choice.get("finish_reason")
        if finish is not None and not isinstance(finish, str):
            raise BackendError(f"{where}: field choices[0].finish_reason is {finish!r}, not a string")
        read = usage.get("prompt_tokens") if isinstance(usage, dict) else None
        prompt_tokens = read if isinstance(read, int) and not isinstance(read, bool) and read > 0 else None
        return choice, text, finish, tokens, prompt_tokens

    async def _one(self, request: StepRequest) -> StepResult:
        return (await self._one_read(request))[0]

    async def _one_read(self, request: StepRequest) -> tuple[StepResult, int | None]:
        """One step and the prompt tokens its call read (``None``: not reported)."""
        choice, text, finish, tokens, prompt_tokens = await self._post(self.request_body(request))
        return self._step(choice, text, finish, tokens), prompt_tokens

    def _step(self, choice: dict[str, Any], text: str, finish: str | None, tokens: int) -> StepResult:
        """The step of a checked answer: its text cut at the separator, and whether it ends the solution."""
        # Servers that return text past the stop string (or ignore stop) are cut here too.
        step, separated = cut_at_separator(text)
        if finish == "length" and not separated:
            return StepResult(step, max(tokens, 1), ends_solution=False, truncated=True)
        if "stop_reason" in choice or "matched_stop" in choice:
            # None: the model's end of sequence; the separator: the step ended, the solution goes on.
            ended = choice.get("stop_reason", choice.get("matched_stop")) != STEP_SEPARATOR and not separated
        else:
            ended = "\\boxed" in step and not separated
        return StepResult(step, max(tokens, 1), ends_solution=ended or not step.strip())

    async def rollout(self, requests: Sequence[StepRequest], max_steps: Sequence[int]) -> list[Rollout]:
        return list(await asyncio.gather(*(self._rollout_one(request, steps) for request, steps in zip(requests, max_steps))))

    async def _rollout_one(self, request: StepRequest, max_steps: int) -> Rollout:
        if max_steps == 1:
            step, prompt_tokens = await self._one_read(request)
            return Rollout([step], step.tokens, 1, prompt_tokens)
        limit = self.step_limit(request)
        body = {key: value for key, value in self.request_body(request).items() if key != "stop"}
        body["max_tokens"] = max(limit, min(max_steps * limit, self.max_rollout_tokens))
        body.update({"logprobs": 1} if self.api == "completions" else {"logprobs": True, "top_logprobs": 0})
        choice, text, finish, decoded, prompt_tokens = await self._post(body)
        pieces = _token_pieces(choice, text)
        if pieces is None:
            rest = (await super().rollout([request], [max_steps]))[0]
            return Rollout(rest.steps, decoded + rest.decoded_tokens, 1 + rest.calls, prompt_tokens)
        ends = [0]
        for piece in pieces:
            ends.append(ends[-1] + len(piece))
        # Without stop strings, "stop" can only mean the model's end of sequence.
        steps = split_steps(lambda k: text[: ends[k]], len(pieces), max(decoded, len(pieces)), finish == "stop", max_steps, limit)
        return Rollout(steps, max(decoded, len(pieces)), 1, prompt_tokens)

    async def aclose(self) -> None:
        await self.client.aclose()


def _token_pieces(choice: dict[str, Any], text: str) -> list[str] | None:
    """The text of each sampled token (completions: ``logprobs.tokens``; chat: ``logprobs.content[].token``).

    Trailing pieces past the text (an end-of-sequence token spelled out) are dropped; ``None``
    when the server sent no pieces or they do not spell the text.
    """
    logprobs = choice.get("logprobs") or {}
    if isinstance(logprobs.get("tokens"), list):
        pieces = [str(token) for token in logprobs["tokens"]]
    elif isinstance(logprobs.get("content"), list):
        pieces = [str(entry.get("token", "")) for entry in logprobs["content"]]
    else:
        return None
    while pieces and "".join(pieces) != text and "".join(pieces[:-1]).startswith(text):
        pieces.pop()
    return pieces if "".join(pieces) == text else None


class VLLMPoolingPRM(PRMScorer):
    """A PRM served by vLLM's pooling endpoint (``POST /pooling``, a step-pooling reward model).

    ``style="qwen"`` sends the conversation as ``messages`` with ``<extra_0>`` after each step
    (vLLM renders the PRM's chat template; Qwen2.5-Math-PRM's step pooler answers one
    ``[P(wrong), P(correct)]`` pair per step). ``style="math_shepherd"`` sends
    ``problem step ки\\nstep ки`` as ``input`` (a server started with the step tag and the +/-
    token ids answers ``[P(+), P(-)]`` per tag: ``positive_index=0``).

    :param client: the HTTP client of the server; ``base_url`` is the server root (vLLM serves
        ``/pooling`` beside ``/v1``, not under it; a trailing ``/v1`` is dropped).
    :param style: ``qwen`` or ``math_shepherd``.
    :param positive_index: which entry of each pair means "step correct".
    :param step_token: the step token (qwen) or step tag (math_shepherd).
    :param system_prompt: the system message (qwen style).
    :param extra_body: further request fields.
    """

    def __init__(
        self,
        client: HTTPClient,
        style: str = "qwen",
        positive_index: int = 1,
        step_token: str = "<extra_0>",
        system_prompt: str | None = None,
        extra_body: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(client.model)
        if style not in ("qwen", "math_shepherd"):
            raise ValueError(f"style = {style!r}; choose qwen or math_shepherd")
        self.client = client
        self.style = style
        self.positive_index = positive_index
        self.step_token = step_token
        self.system_prompt = system_prompt
        self.extra_body = dict(extra_body or {})
        client.base_url = client.base_url.removesuffix("/v1")
        client.models_path = "/v1/models"

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "style": self.style, "step_token": self.step_token,
                "positive_index": self.positive_index, "system_prompt": self.system_prompt}

    def request_body(self, request: PRMRequest) -> dict[str, Any]:
        """The JSON body scoring one prefix."""
        body: dict[str, Any] = {"model": self.client.model}
        if self.style == "qwen":
            system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
            answer = "".join(step + self.step_token for step in request.steps)
            body["messages"] = [*system, {"role": "user", "content": request.problem},
                                {"role": "assistant", "content": answer}]
        else:
            body["input"] = f"{request.problem} " + "\n".join(f"{step} {self.step_token}" for step in request.steps)
        return {**body, **self.extra_body}

    async def score(self, requests: Sequence[PRMRequest]) -> list[list[float]]:
        return list(await asyncio.gather(*(self._one(request) for request in requests)))

    async def _one(self, request: PRMRequest) -> list[float]:
        answer = await self.client.post("/pooling", self.request_body(request))
        where = f"PRM {self.name!r} at {self.client.base_url}"
        try:
            rows = answer["data"][0]["data"]
            scores = [row[self.positive_index] for row in rows]
        except (KeyError, IndexError, TypeError) as error:
            raise BackendError(f"{where}: unexpected pooling answer {str(answer)[:300]}") from error
        return check_scores(scores, len(request.steps), where)

    async def aclose(self) -> None:
        await self.client.aclose()
