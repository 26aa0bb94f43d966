"""Backend interfaces for real models: a step generator, a PRM scorer, and the prompt they share.

A *step* is the text a model writes up to the separator :data:`STEP_SEPARATOR` (a blank line).
A solution prefix is its steps joined by the separator, and a prefix that holds steps always ends
with one, so the model continues on a fresh step. Generators continue the assistant's message
(never a new turn): a prompt is the chat template's rendering of (system, user = problem) with
the generation prompt, followed by the prefix.

Both interfaces are asynchronous and batched: an HTTP backend fans a list of requests out with
bounded concurrency, and a local ``transformers`` backend runs them as padded batches. Besides
one step (:meth:`StepGenerator.generate`), a generator writes a *rollout*
(:meth:`StepGenerator.rollout`): the rest of a solution, up to some number of steps, in one call
where the backend can, cut into steps by :func:`split_steps` (the same steps, token for token, as
step-by-step calls would count).
"""

from __future__ import annotations

import asyncio
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

#: The step separator: a step is the text up to a blank line.
STEP_SEPARATOR = "\n\n"
#: System prompt of the TRIM/Qwen2.5-Math recipe (also what Qwen2.5-Math-PRM is trained with).
DEFAULT_SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."
#: ChatML, the template of Qwen2.5 and SmolLM2, for servers driven without a local tokenizer.
CHATML_TEMPLATE = "<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{problem}<|im_end|>\n<|im_start|>assistant\n"


class BackendError(RuntimeError):
    """A backend failed (after its retries); the message names the backend, model and cause."""


class BackendAuthError(BackendError):
    """The server refused the credentials (HTTP 401/403)."""


class BackendModelError(BackendError):
    """The server does not serve the requested model (HTTP 404)."""


@dataclass(frozen=True)
class Sampling:
    """Sampling of one model; the defaults are the TRIM paper's (T 0.7, top-p 0.8, top-k 20).

    :param temperature: softmax temperature (0 = greedy).
    :param top_p: nucleus mass.
    :param top_k: candidates kept per token (0 or less = no limit); HTTP servers that reject the
        field (hosted APIs) are driven with ``send_top_k=false``.
    """

    temperature: float = 0.7
    top_p: float = 0.8
    top_k: int = 20

    def __post_init__(self) -> None:
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise ValueError(f"temperature = {self.temperature} must be a finite number >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p = {self.top_p} must be in (0, 1]")


@dataclass(frozen=True)
class StepRequest:
    """Continue ``problem``'s solution after ``steps`` by one step.

    :param problem: the problem statement (the user message).
    :param steps: the steps written so far (texts without separators).
    :param seed: sampling seed of this request (backends that support seeds are reproducible).
    :param max_tokens: decoded-token limit of this step, lower than the backend's default to
        enforce a budget (``None`` = the backend's per-step limit).
    """

    problem: str
    steps: tuple[str, ...] = ()
    seed: int | None = None
    max_tokens: int | None = None


@dataclass(frozen=True)
class StepResult:
    """One generated step.

    :param text: the step's text, cut before the separator.
    :param tokens: tokens the model decoded for it (at least 1: a model's stop token counts).
    :param ends_solution: the model ended its answer (end-of-sequence, or a blank step) rather
        than stopping at the separator or at the token limit.
    :param truncated: the step hit the token limit (the solution goes on from the cut text).
    """

    text: str
    tokens: int
    ends_solution: bool
    truncated: bool = False


@dataclass(frozen=True)
class Rollout:
    """Several consecutive steps written by one model.

    :param steps: the steps, in order (the last one ends the solution, hit a token limit, or is
        the last step asked for).
    :param decoded_tokens: tokens the model decoded, discarded ones included (the real cost).
    :param calls: backend calls it took.
    :param prompt_tokens: tokens its first call read (prompt and prefix), as the server's
        ``usage.prompt_tokens`` or the local tokenizer counts them; ``None`` when not reported.
    """

    steps: list[StepResult]
    decoded_tokens: int
    calls: int
    prompt_tokens: int | None = None


@dataclass(frozen=True)
class PRMRequest:
    """Score every step of ``steps`` as a solution of ``problem``."""

    problem: str
    steps: tuple[str, ...]


def assistant_prefix(steps: Sequence[str]) -> str:
    """The assistant text of a prefix: each step followed by the separator (empty for no steps)."""
    return "".join(step + STEP_SEPARATOR for step in steps)


def solution_text(steps: Sequence[str]) -> str:
    """A whole solution: its steps joined by the separator."""
    return STEP_SEPARATOR.join(steps)


def cut_at_separator(text: str) -> tuple[str, bool]:
    """(text before the first separator, whether there was one)."""
    head, found, _ = text.partition(STEP_SEPARATOR)
    return head, bool(found)


def split_steps(
    text_of: Callable[[int], str], text_tokens: int, decoded_tokens: int, ended: bool, max_steps: int, max_tokens_per_step: int
) -> list[StepResult]:
    """Cut a continuation into steps, as step-by-step calls would have written and counted them.

    A step takes the tokens up to the one that completes its separator. A step longer than
    ``max_tokens_per_step`` is cut there and marked truncated, and nothing after it is kept (a
    step-by-step run would have stopped there too). Text after the last separator is a final step
    only if the model ended its answer (``ended``) or it ran into the token limit; otherwise the
    continuation was stopped early and that text is dropped, unless it is all there is (then it
    is a truncated step: a rollout always holds at least one step).

    :param text_of: text of the first ``k`` decoded tokens (a decoder, or joined token pieces).
    :param text_tokens: tokens that carry text.
    :param decoded_tokens: all decoded tokens (``text_tokens`` plus an end-of-sequence token).
    :param ended: the model ended its answer (end of sequence).
    :param max_steps: keep at most this many steps.
    :param max_tokens_per_step: the per-step token limit.
    """
    full = text_of(text_tokens)
    steps: list[StepResult] = []
    token_start = char_start = 0

    def truncated() -> StepResult:
        return StepResult(text_of(token_start + max_tokens_per_step)[char_start:], max_tokens_per_step, False, truncated=True)

    while len(steps) < max_steps:
        at = full.find(STEP_SEPARATOR, char_start)
        if at < 0:
            tokens = decoded_tokens - token_start
            text = full[char_start:]
            if text_tokens - token_start >= max_tokens_per_step and not (ended and tokens <= max_tokens_per_step):
                steps.append(truncated())
            elif ended:
                steps.append(StepResult(text, max(tokens, 1), ends_solution=True))
            elif not steps:  # cut short before its first separator (a server's length limit): a truncated step
                steps.append(StepResult(text, max(tokens, 1), ends_solution=False, truncated=True))
            break
        # The fewest tokens whose text reaches past the separator (text grows with the token count).
        low, high = token_start + 1, text_tokens
        while low < high:
            middle = (low + high) // 2
            if len(text_of(middle)) >= at + len(STEP_SEPARATOR):
                high = middle
            else:
                low = middle + 1
        if low - token_start > max_tokens_per_step:
            steps.append(truncated())
            break
        text = full[char_start:at]
        steps.append(StepResult(text, low - token_start, ends_solution=not text.strip()))
        if not text.strip():
            break  # a blank step ends the answer
        token_start, char_start = low, at + len(STEP_SEPARATOR)
    return steps


class ChatPrompt:
    """Renders (problem, steps) as a continuation prompt: chat template + assistant prefix.

    :param tokenizer: a ``transformers`` tokenizer whose chat template renders the turns; or
    :param template: a format string with ``{system}`` and ``{problem}`` (e.g.
        :data:`CHATML_TEMPLATE`) for servers driven without a tokenizer. With neither, only
        :meth:`messages` works (a chat server renders its own template).
    :param system_prompt: the system message (``None`` or empty: no system message; a template
        that adds a default one, as Qwen2.5's does, still adds it).
    """

    def __init__(self, tokenizer: Any = None, template: str | None = None, system_prompt: str | None = DEFAULT_SYSTEM_PROMPT) -> None:
        if tokenizer is not None and template is not None:
            raise ValueError("ChatPrompt takes a tokenizer (its chat template) or a template (a format string), not both")
        if template is not None and "{problem}" not in template:
            raise ValueError(f"prompt template {template!r} has no {{problem}} field")
        if tokenizer is not None and not getattr(tokenizer, "chat_template", None):
            raise ValueError(f"tokenizer {getattr(tokenizer, 'name_or_path', tokenizer)!r} has no chat template; give a prompt template instead")
        self.tokenizer = tokenizer
        self.template = template
        self.system_prompt = system_prompt or None

    def messages(self, problem: str) -> list[dict[str, str]]:
        """The conversation before the assistant's answer."""
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return [*system, {"role": "user", "content": problem}]

    def render(self, problem: str, steps: Sequence[str] = ()) -> str:
        """The text a completion model continues: template with generation prompt + prefix."""
        if self.template is not None:
            head = self.template.format(system=self.system_prompt or "", problem=problem)
        elif self.tokenizer is not None:
            head = self.tokenizer.apply_chat_template(self.messages(problem), add_generation_prompt=True, tokenize=False)
        else:
            raise ValueError("this prompt has neither a template nor a tokenizer to render a completion prompt with")
        return head + assistant_prefix(steps)


class StepGenerator(ABC):
    """Writes the next step of solution prefixes.

    :param name: a label for errors and summaries (the model name).
    :param max_tokens_per_step: decoded-token limit of one step.
    """

    def __init__(self, name: str, max_tokens_per_step: int) -> None:
        if max_tokens_per_step < 1:
            raise ValueError(f"max_tokens_per_step = {max_tokens_per_step} must be >= 1")
        self.name = name
        self.max_tokens_per_step = int(max_tokens_per_step)

    def step_limit(self, request: StepRequest) -> int:
        """Token limit of one request: the per-step limit, lowered by the request's own."""
        if request.max_tokens is None:
            return self.max_tokens_per_step
        if request.max_tokens < 1:
            raise ValueError(f"StepRequest.max_tokens = {request.max_tokens} must be >= 1")
        return min(self.max_tokens_per_step, request.max_tokens)

    @abstractmethod
    async def generate(self, requests: Sequence[StepRequest]) -> list[StepResult]:
        """The next step of each request, in order."""

    async def rollout(self, requests: Sequence[StepRequest], max_steps: Sequence[int]) -> list[Rollout]:
        """Continue each request for up to ``max_steps`` steps, ending early where the answer ends.

        This default writes one step per call; backends that can continue through separators in
        one call override it.

        :param requests: where to continue from (a request's seed seeds its first step).
        :param max_steps: steps to write at most, per request.
        """
        return list(await asyncio.gather(*(self._stepwise(request, limit) for request, limit in zip(requests, max_steps))))

    async def _stepwise(self, request: StepRequest, max_steps: int) -> Rollout:
        steps: list[StepResult] = []
        while len(steps) < max_steps and not (steps and steps[-1].ends_solution):
            seed = None if request.seed is None else (request.seed + len(steps)) % 2**31
            (step,) = await self.generate([replace(request, steps=(*request.steps, *(s.text for s in steps)), seed=seed)])
            steps.append(step)
        return Rollout(steps, sum(step.tokens for step in steps), len(steps))

    def describe(self) -> dict[str, Any]:
        """Provenance for a dataset manifest (never credentials)."""
        return {"class": type(self).__name__, "name": self.name, "max_tokens_per_step": self.max_tokens_per_step}

    async def aclose(self) -> None:
        """Release connections (HTTP backends); local backends hold nothing to close."""


class PRMScorer(ABC):
    """A process reward model: P(step correct | problem, earlier steps) for every step of a prefix.

    :param name: a label for errors and summaries.
    """

    def __init__(self, name: str) -> None:
        self.name = name

    @abstractmethod
    async def score(self, requests: Sequence[PRMRequest]) -> list[list[float]]:
        """For each request, one score in [0, 1] per step, in step order."""

    def describe(self) -> dict[str, Any]:
        """Provenance for a dataset manifest (never credentials)."""
        return {"class": type(self).__name__, "name": self.name}

    async def aclose(self) -> None:
        """Release connections (HTTP backends)."""


def check_scores(scores: Sequence[float], n_steps: int, where: str) -> list[float]:
    """Check a PRM's answer for one request: one finite score in [0, 1] per step."""
    try:
        values = [float(score) for score in scores]
    except (TypeError, ValueError) as error:
        raise BackendError(f"{where}: step scores {str(scores)[:100]} are not numbers ({error})") from error
    if len(values) != n_steps:
        raise BackendError(f"{where}: returned {len(values)} step scores for {n_steps} steps")
    bad = [value for value in values if not (math.isfinite(value) and 0.0 <= value <= 1.0)]
    if bad:
        raise BackendError(f"{where}: step score {bad[0]!r} is not a probability in [0, 1]")
    return values
