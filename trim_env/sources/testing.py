"""Offline test doubles for the backends: an OpenAI-compatible server on 127.0.0.1 and a random-weight PRM.

:class:`TestingServer` drives the HTTP backends offline, with injectable failures. It serves
``GET /v1/models``, ``POST /v1/completions``, ``POST /v1/chat/completions`` (with vLLM's
``continue_final_message``) and vLLM's ``POST /pooling``, answering in vLLM's formats
(``stop_reason`` included). Each served model is a :class:`ServedModel`: a real local model
(:class:`LocalServedModel`, a :class:`~trim_env.sources.local.TransformersGenerator`) or a
deterministic text script (:class:`ScriptedModel`) for tests of the protocol. A request with a
``stop`` field gets one step (a model stops at the separator, whatever the field says); one
without gets a rollout through separators, with token pieces when it asks for ``logprobs``.

Failure injection: :meth:`TestingServer.inject` queues failures that the next requests meet in
order: ``"timeout"`` (the answer is held back ``hang_s`` seconds), ``"500"``, ``"503"``,
``"401"``, ``"404"``. ``api_key`` makes every request without that bearer token fail with 401;
an unknown model name fails with 404 as vLLM's does. The server binds a free port on the loopback
interface only and stops with its ``with`` block.

    with TestingServer({"weak": ScriptedModel("weak")}, pooling=ScriptedPRM()) as server:
        client = HTTPClient(HTTPSettings(server.base_url, "weak", api_key_env=None))

:func:`build_random_prm` writes a small Qwen2.5-Math-PRM-shaped model (a token-classification
head with two labels, a tokenizer with the ``<extra_0>`` step token) with random weights: it
exercises the real PRM code path without a trained PRM, which no package ships.
"""

from __future__ import annotations

import copy
import hashlib
import json
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Protocol

from trim_env.sources.base import CHATML_TEMPLATE, STEP_SEPARATOR, StepResult

FAILURES = ("timeout", "500", "503", "401", "404")


def _unit(*parts: Any) -> float:
    """A deterministic number in [0, 1) from ``parts``."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2**64


class ServedModel(Protocol):
    """A model behind the test server."""

    def complete(self, prompt: str, max_tokens: int, seed: int | None) -> StepResult:
        """One step after ``prompt`` (stopping at the separator)."""

    def rollout(self, prompt: str, max_tokens: int, seed: int | None) -> tuple[list[str], bool]:
        """(token pieces, ended) of a continuation through separators."""

    def render_chat(self, messages: list[dict[str, str]], continue_final: bool) -> str:
        """The prompt of a chat request (the model's chat template)."""


class ScriptedModel:
    """A deterministic text model: steps of a few words, an answer in ``\\boxed{}`` after 2-5 steps.

    Everything is a hash of (name, prompt, seed), so the same request always gets the same step,
    and a weak and a strong model (two names) write different ones.

    :param name: the model's name (salts its hash).
    :param answers: the final answers it picks from.
    """

    def __init__(self, name: str, answers: tuple[str, ...] = ("1", "2")) -> None:
        self.name = name
        self.answers = answers

    def complete(self, prompt: str, max_tokens: int, seed: int | None) -> StepResult:
        steps_so_far = prompt.rpartition("<|im_start|>assistant\n")[2].count(STEP_SEPARATOR)
        length = 2 + int(4 * _unit(self.name, prompt.partition("<|im_start|>assistant")[0]))
        words = 3 + int(12 * _unit(self.name, prompt, seed, "words"))
        if steps_so_far + 1 >= length:
            answer = self.answers[int(len(self.answers) * _unit(self.name, prompt, seed, "answer"))]
            text, ended = f"So the answer is \\boxed{{{answer}}}.", True
        else:
            text = f"Step {steps_so_far + 1}: " + " ".join(f"w{int(100 * _unit(self.name, prompt, seed, i))}" for i in range(words))
            ended = False
        tokens = len(text.split()) + 1  # words, plus the separator or the end-of-sequence token
        if tokens > max_tokens:
            return StepResult(" ".join(text.split()[:max_tokens]), max_tokens, ends_solution=False, truncated=True)
        return StepResult(text, tokens, ends_solution=ended)

    def rollout(self, prompt: str, max_tokens: int, seed: int | None) -> tuple[list[str], bool]:
        """(token pieces, ended) of a continuation through separators: each step as the step-wise calls write it."""
        pieces: list[str] = []
        while len(pieces) < max_tokens:
            step = self.complete(prompt + "".join(pieces), max_tokens - len(pieces), seed)
            words = step.text.split(" ")
            pieces += [words[0], *(" " + word for word in words[1:])]
            if step.ends_solution:
                return pieces + [""], True  # the end-of-sequence token spells nothing
            if step.truncated:
                break
            pieces.append(STEP_SEPARATOR)
        return pieces, False

    def render_chat(self, messages: list[dict[str, str]], continue_final: bool) -> str:
        system = next((m["content"] for m in messages if m["role"] == "system"), "")
        user = next(m["content"] for m in messages if m["role"] == "user")
        prefix = messages[-1]["content"] if continue_final else ""
        return CHATML_TEMPLATE.format(system=system, problem=user) + prefix


class LocalServedModel:
    """A real local model behind the server (a ``TransformersGenerator``'s model and template).

    :param generator: the local generator whose model answers.
    """

    def __init__(self, generator: Any) -> None:
        self.generator = generator

    def complete(self, prompt: str, max_tokens: int, seed: int | None) -> StepResult:
        from trim_env.sources.local import _INFERENCE_LOCK  # noqa: PLC0415  (torch only when a real model serves)

        with _INFERENCE_LOCK:
            return self.generator.complete([prompt], max_tokens, seed=seed)[0].steps[0]

    def rollout(self, prompt: str, max_tokens: int, seed: int | None) -> tuple[list[str], bool]:
        import torch  # noqa: PLC0415

        from trim_env.sources.local import _INFERENCE_LOCK  # noqa: PLC0415

        generator, tokenizer = self.generator, self.generator.tokenizer
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
        with _INFERENCE_LOCK, torch.inference_mode(), torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            sampling = generator.sampling
            output = generator.model.generate(ids, max_new_tokens=max_tokens, do_sample=True, temperature=sampling.temperature,
                                              top_p=sampling.top_p, top_k=sampling.top_k, pad_token_id=generator.pad_token_id)
        new = output[0, ids.shape[1]:].tolist()
        ended = any(token in generator.stop_ids for token in new)
        new = new[: next((i for i, token in enumerate(new) if token in generator.stop_ids), len(new))]
        # Each token's piece is what it adds to the decoded text, as vLLM reports it.
        texts = [tokenizer.decode(new[:k], skip_special_tokens=True) for k in range(len(new) + 1)]
        return [texts[k + 1][len(texts[k]) :] for k in range(len(new))] + ([""] if ended else []), ended

    def render_chat(self, messages: list[dict[str, str]], continue_final: bool) -> str:
        return self.generator.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=not continue_final, continue_final_message=continue_final
        )


class ScriptedPRM:
    """Deterministic step scores for ``/pooling``, ``[P(wrong), P(correct)]`` per step.

    A step's score is a hash of the text up to its step token, in [0.05, 0.95], so it depends on
    the prefix as a PRM's does and not on later steps. Steps are found by ``<extra_0>`` in chat
    ``messages`` (qwen style) or by ``ки`` tags in ``input`` (math_shepherd style).
    """

    def scores(self, body: dict[str, Any]) -> list[list[float]]:
        if "messages" in body:
            text, tag = json.dumps(body["messages"][:-1]) + body["messages"][-1]["content"], "<extra_0>"
        else:
            text, tag = body["input"], "ки"
        pieces = text.split(tag)[:-1]
        pairs = []
        for index in range(len(pieces)):
            good = 0.05 + 0.9 * _unit(tag.join(pieces[: index + 1]))
            pairs.append([1.0 - good, good])
        return pairs


class _BackloggedHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server with a listen backlog like uvicorn's: the standard library's 5 resets
    connections when a routing server opens dozens at once (e.g. after cancelled requests closed its pool)."""

    request_queue_size = 2048


class TestingServer:
    """The server, run in a background thread while its ``with`` block lasts.

    :param models: served model name -> model.
    :param pooling: scorer for ``/pooling`` (``None``: the endpoint answers 404).
    :param api_key: required bearer token (``None``: no authentication).
    :param latency_s: delay added to every generation request (to make runs last, e.g. for kills).
    :param hang_s: how long an injected ``"timeout"`` holds the answer back.
    :param stop_reason: report vLLM's ``stop_reason`` (``False``: answer like a hosted API,
        which does not say whether the separator or the end of sequence stopped a step).
    :param logprobs: send token pieces when a request asks for ``logprobs``.
    :param tamper: rewrites each completion answer before it is sent (``(body, answer) -> answer``),
        to play a misbehaving server: a number as the text, a wrong token count.
    """

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        models: dict[str, ServedModel],
        pooling: ScriptedPRM | None = None,
        api_key: str | None = None,
        latency_s: float = 0.0,
        hang_s: float = 2.0,
        stop_reason: bool = True,
        logprobs: bool = True,
        tamper: Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        self.models = models
        self.pooling = pooling
        self.api_key = api_key
        self.latency_s = latency_s
        self.hang_s = hang_s
        self.stop_reason = stop_reason
        self.logprobs = logprobs
        self.tamper = tamper
        self.requests: list[dict[str, Any]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._failures: deque[str] = deque()
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def root_url(self) -> str:
        assert self._httpd is not None, "the server is not running"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    @property
    def base_url(self) -> str:
        """The OpenAI API root, ``http://127.0.0.1:PORT/v1``."""
        return self.root_url + "/v1"

    def inject(self, *failures: str) -> None:
        """Queue failures for the next requests, one each, in order."""
        unknown = [failure for failure in failures if failure not in FAILURES]
        if unknown:
            raise ValueError(f"unknown failure {unknown[0]!r}; known: {FAILURES}")
        with self._lock:
            self._failures.extend(failures)

    def __enter__(self) -> TestingServer:
        self._httpd = _BackloggedHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="trim-testing-server", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    # Request handling (called from the handler threads).

    def handle(self, method: str, path: str, headers: Any, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """(status, JSON answer) of one request."""
        with self._lock:
            self.requests.append({"path": path, "body": body})
            failure = self._failures.popleft() if self._failures and method == "POST" else None
        if self.api_key is not None and headers.get("Authorization") != f"Bearer {self.api_key}":
            return 401, _error("Incorrect API key provided.", "authentication_error")
        if method == "GET" and path == "/v1/models":
            return 200, {"object": "list", "data": [{"id": name, "object": "model"} for name in self.models]}
        if failure == "timeout":
            time.sleep(self.hang_s)
        elif failure in ("500", "503"):
            return int(failure), _error("injected server failure", "server_error")
        elif failure == "401":
            return 401, _error("injected authentication failure", "authentication_error")
        elif failure == "404":
            return 404, _error(f"The model `{body.get('model')}` does not exist.", "NotFoundError")
        if method != "POST" or path not in ("/v1/completions", "/v1/chat/completions", "/pooling"):
            return 404, _error(f"no route {method} {path}", "NotFoundError")
        if path == "/pooling":
            if self.pooling is None:
                return 404, _error("this server has no pooling model", "NotFoundError")
            return 200, {"object": "list", "data": [{"index": 0, "object": "pooling", "data": self.pooling.scores(body)}]}
        model = self.models.get(body.get("model", ""))
        if model is None:
            return 404, _error(f"The model `{body.get('model')}` does not exist.", "NotFoundError")
        answer = self._complete(model, path, body)
        return 200, answer if self.tamper is None else self.tamper(body, answer)

    def _complete(self, model: ServedModel, path: str, body: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            time.sleep(self.latency_s)
            chat = path.endswith("chat/completions")
            if chat:
                messages = body["messages"]
                continue_final = bool(body.get("continue_final_message")) and messages[-1]["role"] == "assistant"
                prompt = model.render_chat(messages, continue_final)
            else:
                prompt = body["prompt"]
            max_tokens, seed = int(body.get("max_tokens", 16)), body.get("seed")
            if body.get("stop"):
                step = model.complete(prompt, max_tokens, seed)
                text, tokens, finish = step.text, step.tokens, "length" if step.truncated else "stop"
                pieces = None
            else:
                pieces, ended = model.rollout(prompt, max_tokens, seed)
                text, tokens, finish = "".join(pieces), len(pieces), "stop" if ended else "length"
        finally:
            with self._lock:
                self.in_flight -= 1
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish}
        if self.stop_reason:
            choice["stop_reason"] = None if pieces is not None or step.ends_solution or step.truncated else STEP_SEPARATOR
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        if pieces is not None and body.get("logprobs") and self.logprobs:
            choice["logprobs"] = ({"content": [{"token": piece, "logprob": 0.0} for piece in pieces]} if chat
                                  else {"tokens": pieces, "token_logprobs": [0.0] * len(pieces)})
        return {"object": "chat.completion" if chat else "text_completion", "model": body["model"], "choices": [choice],
                "usage": {"prompt_tokens": len(prompt.split()), "completion_tokens": tokens}}


def _error(message: str, kind: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind}}


def _make_handler(server: TestingServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002  (quiet)
            pass

        def _serve(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw) if raw else {}
                status, answer = server.handle(method, self.path, self.headers, body)
            except (ValueError, KeyError, TypeError) as error:
                status, answer = 400, _error(f"bad request: {error}", "BadRequestError")
            payload = json.dumps(answer).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout, or was killed)
                pass

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

    return Handler


def build_random_prm(directory: str | Path, tokenizer: Any, seed: int = 0) -> Path:
    """Write a tiny random-weight PRM in the Qwen2.5-Math-PRM shape to ``directory``.

    A two-layer Llama with a two-class token-classification head, and ``tokenizer`` (which must
    have a chat template) extended with the ``<extra_0>`` step token.

    :param directory: output folder (loadable with ``make_prm({"kind": "qwen", "model": directory})``).
    :param tokenizer: the tokenizer to ship with it, e.g. SmolLM2's.
    :param seed: torch seed of the random weights.
    """
    import torch  # noqa: PLC0415  (heavy imports only when building a model)
    from transformers import LlamaConfig, LlamaForTokenClassification  # noqa: PLC0415

    directory = Path(directory)
    tokenizer = copy.deepcopy(tokenizer)  # the caller's tokenizer may be a loaded generator's
    tokenizer.add_special_tokens({"additional_special_tokens": ["<extra_0>"]})
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=4096, pad_token_id=tokenizer.pad_token_id,
    )
    config.num_labels = 2  # the head's classes: step wrong, step correct
    torch.manual_seed(seed)
    LlamaForTokenClassification(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
