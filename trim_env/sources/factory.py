"""Backends from configuration: ``make_generator`` / ``make_prm`` turn a config mapping (Hydra's) into a backend.

Each mapping has a ``kind`` and that kind's fields, nothing else (an unknown field is an error
naming it, so a typo never silently falls back to a default):

generators
    ``transformers``: ``model`` (directory, hub name or ``package:NAME``), ``gguf_file``, ``dtype``,
    ``system_prompt``, ``temperature``, ``top_p``, ``top_k``, ``max_batch_size``, ``trust_remote_code``.

    ``openai``: ``base_url``, ``model``, ``api`` (``chat`` | ``completions``), ``prompt_template``
    (``chatml`` or a format string with ``{system}``/``{problem}``, for ``completions``),
    ``system_prompt``, ``temperature``, ``top_p``, ``top_k``, ``send_top_k``, ``api_key_env``,
    ``max_concurrency``, ``timeout_s``, ``max_retries``, ``backoff_s``, ``backoff_max_s``, ``extra_body``,
    ``continuation`` (``api=chat``: ``continue``, the default, assumes the server continues a partial
    assistant message as vLLM and SGLang do; ``auto`` probes it once and otherwise renders
    ``prompt_template`` through ``/completions``; ``template`` always does; see
    :mod:`trim_env.sources.chat_template`).

PRMs
    ``qwen`` (local, Qwen2.5-Math-PRM style), ``math_shepherd`` (local, step tag and +/- tokens),
    ``vllm_pooling`` (HTTP); fields as in :func:`_qwen_prm`, :func:`_math_shepherd_prm`,
    :func:`_pooling_prm`.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping

from trim_env.sources.base import (
    CHATML_TEMPLATE,
    DEFAULT_SYSTEM_PROMPT,
    ChatPrompt,
    PRMScorer,
    Sampling,
    StepGenerator,
)
from trim_env.sources.chat_template import CONTINUATION_MODES, ContinuingChatGenerator
from trim_env.sources.openai_http import (
    HTTPClient,
    OpenAIGenerator,
    VLLMPoolingPRM,
    api_key_from_env,
)

#: Built-in prompt templates for ``openai`` generators with ``api=completions``.
PROMPT_TEMPLATES = {"chatml": CHATML_TEMPLATE}


def _transformers_generator(
    max_tokens_per_step: int,
    *,
    model: str,
    gguf_file: str | None = None,
    dtype: str = "float32",
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
    temperature: float = 0.7,
    top_p: float = 0.8,
    top_k: int = 20,
    max_batch_size: int = 8,
    trust_remote_code: bool = False,
) -> StepGenerator:
    from trim_env.sources.local import TransformersGenerator, load_pretrained  # noqa: PLC0415  (torch models)

    network, tokenizer = load_pretrained(model, "causal_lm", gguf_file, dtype, trust_remote_code)
    return TransformersGenerator(
        network, tokenizer, Sampling(temperature, top_p, top_k), max_tokens_per_step, system_prompt, max_batch_size,
        name=model if not gguf_file else f"{model}/{gguf_file}",
    )


def _http_client(
    base_url: str,
    model: str,
    api_key_env: str | None,
    max_concurrency: int,
    timeout_s: float,
    max_retries: int,
    backoff_s: float,
    backoff_max_s: float,
) -> HTTPClient:
    return HTTPClient(base_url, model, api_key_from_env(api_key_env), max_concurrency, timeout_s, max_retries, backoff_s, backoff_max_s)


def _openai_generator(
    max_tokens_per_step: int,
    *,
    base_url: str,
    model: str,
    api: str = "chat",
    prompt_template: str | None = None,
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
    temperature: float = 0.7,
    top_p: float = 0.8,
    top_k: int = 20,
    send_top_k: bool = True,
    api_key_env: str | None = "OPENAI_API_KEY",
    max_concurrency: int = 16,
    timeout_s: float = 120.0,
    max_retries: int = 5,
    backoff_s: float = 1.0,
    backoff_max_s: float = 30.0,
    extra_body: Mapping[str, Any] | None = None,
    continuation: str = "continue",
) -> StepGenerator:
    if api == "completions" and not prompt_template:
        raise ValueError("an openai generator with api=completions needs prompt_template (chatml, or a format string with {problem})")
    template = PROMPT_TEMPLATES.get(prompt_template, prompt_template) if prompt_template else None
    client = _http_client(base_url, model, api_key_env, max_concurrency, timeout_s, max_retries, backoff_s, backoff_max_s)
    prompt = ChatPrompt(template=template, system_prompt=system_prompt)
    generator = OpenAIGenerator(client, api, prompt, Sampling(temperature, top_p, top_k), max_tokens_per_step, send_top_k, dict(extra_body or {}))
    if continuation not in CONTINUATION_MODES:
        raise ValueError(f"continuation = {continuation!r}; choose one of {CONTINUATION_MODES}")
    if api != "chat" or continuation == "continue":
        return generator
    completions = OpenAIGenerator(client, "completions", prompt, generator.sampling, max_tokens_per_step, send_top_k,
                                  generator.extra_body) if template else None
    return ContinuingChatGenerator(generator, completions, continuation)


def _qwen_prm(
    *,
    model: str,
    auto_class: str = "token_classification",
    trust_remote_code: bool = False,
    gguf_file: str | None = None,
    dtype: str = "float32",
    step_token: str = "<extra_0>",
    positive_label: int = 1,
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
    max_batch_size: int = 8,
) -> PRMScorer:
    from trim_env.sources.local import TokenClassificationPRM, load_pretrained  # noqa: PLC0415

    network, tokenizer = load_pretrained(model, auto_class, gguf_file, dtype, trust_remote_code)
    return TokenClassificationPRM(network, tokenizer, step_token, positive_label, system_prompt, max_batch_size, name=model)


def _math_shepherd_prm(
    *,
    model: str,
    gguf_file: str | None = None,
    dtype: str = "float32",
    step_tag: str = "ки",
    good_token: str = "+",
    bad_token: str = "-",
    max_batch_size: int = 8,
    trust_remote_code: bool = False,
) -> PRMScorer:
    from trim_env.sources.local import StepTagPRM, load_pretrained  # noqa: PLC0415

    network, tokenizer = load_pretrained(model, "causal_lm", gguf_file, dtype, trust_remote_code)
    return StepTagPRM(network, tokenizer, step_tag, good_token, bad_token, max_batch_size,
                      name=model if not gguf_file else f"{model}/{gguf_file}")


def _pooling_prm(
    *,
    base_url: str,
    model: str,
    style: str = "qwen",
    positive_index: int = 1,
    step_token: str = "<extra_0>",
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
    api_key_env: str | None = "OPENAI_API_KEY",
    max_concurrency: int = 16,
    timeout_s: float = 120.0,
    max_retries: int = 5,
    backoff_s: float = 1.0,
    backoff_max_s: float = 30.0,
    extra_body: Mapping[str, Any] | None = None,
) -> PRMScorer:
    client = _http_client(base_url, model, api_key_env, max_concurrency, timeout_s, max_retries, backoff_s, backoff_max_s)
    return VLLMPoolingPRM(client, style, positive_index, step_token, system_prompt, dict(extra_body or {}))


GENERATORS: dict[str, Callable[..., StepGenerator]] = {"transformers": _transformers_generator, "openai": _openai_generator}
PRMS: dict[str, Callable[..., PRMScorer]] = {"qwen": _qwen_prm, "math_shepherd": _math_shepherd_prm, "vllm_pooling": _pooling_prm}


def _build(builders: Mapping[str, Callable[..., Any]], what: str, config: Mapping[str, Any], *arguments: Any) -> Any:
    fields = dict(config)
    kind = fields.pop("kind", None)
    if kind not in builders:
        raise ValueError(f"{what}.kind = {kind!r}; choose one of {sorted(builders)}")
    parameters = inspect.signature(builders[kind]).parameters
    known = {name for name, parameter in parameters.items() if parameter.kind is inspect.Parameter.KEYWORD_ONLY}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"{what}: field {unknown[0]!r} is not a setting of kind {kind!r}; its settings: {sorted(known)}")
    missing = sorted(name for name in known if parameters[name].default is inspect.Parameter.empty and fields.get(name) is None)
    if missing:
        raise ValueError(f"{what}: kind {kind!r} needs field {missing[0]!r}")
    return builders[kind](*arguments, **fields)


def make_generator(config: Mapping[str, Any], max_tokens_per_step: int, what: str = "generator") -> StepGenerator:
    """A step generator from ``config`` (see the module docstring).

    :param config: ``kind`` and its fields.
    :param max_tokens_per_step: decoded-token limit of one step.
    :param what: the config's name in error messages (``weak``, ``strong``).
    """
    return _build(GENERATORS, what, config, max_tokens_per_step)


def make_prm(config: Mapping[str, Any], what: str = "prm") -> PRMScorer:
    """A PRM scorer from ``config`` (see the module docstring).

    :param config: ``kind`` and its fields.
    :param what: the config's name in error messages.
    """
    return _build(PRMS, what, config)


def make_backends(config: Mapping[str, Any]) -> tuple[StepGenerator, StepGenerator, PRMScorer]:
    """The weak and strong generators and the PRM of a collection or routing config.

    :param config: a mapping with ``weak``, ``strong``, ``prm`` (backend configs),
        ``max_tokens_per_step`` and optionally ``torch_threads`` (CPU threads of local models).
    """
    if config.get("torch_threads"):
        import torch  # noqa: PLC0415

        torch.set_num_threads(int(config["torch_threads"]))
    max_tokens = int(config["max_tokens_per_step"])
    return (
        make_generator(config["weak"], max_tokens, "weak"),
        make_generator(config["strong"], max_tokens, "strong"),
        make_prm(config["prm"], "prm"),
    )
