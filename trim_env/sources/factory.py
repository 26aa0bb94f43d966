"""Backends from configuration: typed settings per backend kind, and the backends they build.

A backend config (``conf/collect/generator/``, ``conf/collect/prm/``) is a ``kind`` and that
kind's fields, nothing else. :func:`generator_settings` / :func:`prm_settings` read a mapping into
the kind's settings dataclass, the single home of its defaults (an unknown field is an error
naming it, so a typo never silently falls back to a default; a required field left out is named
too). :func:`build_generator` / :func:`build_prm` turn typed settings into a backend;
:func:`make_generator` / :func:`make_prm` / :func:`make_backends` do both for Hydra's mappings.

generators
    ``transformers`` (:class:`TransformersGeneratorSettings`): a local causal LM.
    ``openai`` (:class:`OpenAIGeneratorSettings`): an OpenAI-compatible server; ``continuation``
    (``api=chat``: ``continue``, the default, assumes the server continues a partial assistant
    message as vLLM and SGLang do; ``auto`` probes it once and otherwise renders
    ``prompt_template`` through ``/completions``; ``template`` always does; see
    :mod:`trim_env.sources.chat_template`).

PRMs
    ``qwen`` (:class:`QwenPRMSettings`, local, Qwen2.5-Math-PRM style), ``math_shepherd``
    (:class:`MathShepherdPRMSettings`, local, step tag and +/- tokens), ``vllm_pooling``
    (:class:`PoolingPRMSettings`, HTTP).

Both HTTP kinds share one settings type, :class:`~trim_env.sources.openai_http.HTTPSettings`
(address, model, API-key variable, concurrency, timeouts, retries, extra request fields). The
system prompt's default is :data:`~trim_env.sources.base.DEFAULT_SYSTEM_PROMPT`, defined once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

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
    HTTPSettings,
    OpenAIGenerator,
    VLLMPoolingPRM,
)

#: Built-in prompt templates for ``openai`` generators with ``api=completions``.
PROMPT_TEMPLATES = {"chatml": CHATML_TEMPLATE}


@dataclass
class TransformersGeneratorSettings:
    """A local causal LM with a chat template (``kind: transformers``).

    :param model: a directory, a hub name (network once) or ``package:NAME`` (an installed package's folder).
    :param gguf_file: a GGUF file inside the model folder (converted once to safetensors).
    :param dtype: torch dtype name.
    :param system_prompt: the system message (``None`` or empty: none).
    :param temperature: sampling temperature.
    :param top_p: nucleus mass.
    :param top_k: candidates per token (0: no limit).
    :param max_batch_size: prefixes decoded together.
    :param trust_remote_code: allow the checkpoint's own modelling code.
    """

    model: str
    gguf_file: str | None = None
    dtype: str = "float32"
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT
    temperature: float = 0.7
    top_p: float = 0.8
    top_k: int = 20
    max_batch_size: int = 8
    trust_remote_code: bool = False


@dataclass
class OpenAIGeneratorSettings(HTTPSettings):
    """An OpenAI-compatible server: vLLM, SGLang or a hosted API (``kind: openai``); HTTP fields as in :class:`HTTPSettings`.

    :param api: ``chat`` (continue the assistant message; vLLM, SGLang) or ``completions`` (a prompt rendered here).
    :param prompt_template: for ``completions``: ``chatml`` or a format string with ``{system}`` and ``{problem}``.
    :param system_prompt: the system message (``None`` or empty: none).
    :param temperature: sampling temperature.
    :param top_p: nucleus mass.
    :param top_k: candidates per token (0: no limit).
    :param send_top_k: send ``top_k`` (hosted APIs reject the field: false).
    :param continuation: ``api=chat`` only: ``continue``, ``auto`` or ``template`` (module docstring).
    """

    api: str = "chat"
    prompt_template: str | None = None
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT
    temperature: float = 0.7
    top_p: float = 0.8
    top_k: int = 20
    send_top_k: bool = True
    continuation: str = "continue"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.continuation not in CONTINUATION_MODES:
            raise ValueError(f"continuation = {self.continuation!r}; choose one of {CONTINUATION_MODES}")


@dataclass
class QwenPRMSettings:
    """A local Qwen2.5-Math-PRM-style PRM: two-class reward head at each step token (``kind: qwen``).

    :param model: a directory, a hub name or ``package:NAME``.
    :param auto_class: ``token_classification`` or ``auto`` (remote-code PRMs).
    :param trust_remote_code: allow the checkpoint's own modelling code.
    :param gguf_file: a GGUF file inside the model folder.
    :param dtype: torch dtype name.
    :param step_token: the token after each step.
    :param positive_label: the class meaning "step correct".
    :param system_prompt: the system message the PRM was trained with.
    :param max_batch_size: prefixes scored together.
    """

    model: str
    auto_class: str = "token_classification"
    trust_remote_code: bool = False
    gguf_file: str | None = None
    dtype: str = "float32"
    step_token: str = "<extra_0>"
    positive_label: int = 1
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT
    max_batch_size: int = 8


@dataclass
class MathShepherdPRMSettings:
    """A local Math-Shepherd-style PRM: P(good token) vs P(bad token) after each step tag (``kind: math_shepherd``).

    :param model: a directory, a hub name or ``package:NAME``.
    :param gguf_file: a GGUF file inside the model folder.
    :param dtype: torch dtype name.
    :param step_tag: the tag after each step.
    :param good_token: the token meaning "step correct".
    :param bad_token: the token meaning "step wrong".
    :param max_batch_size: prefixes scored together.
    :param trust_remote_code: allow the checkpoint's own modelling code.
    """

    model: str
    gguf_file: str | None = None
    dtype: str = "float32"
    step_tag: str = "ки"
    good_token: str = "+"
    bad_token: str = "-"
    max_batch_size: int = 8
    trust_remote_code: bool = False


@dataclass
class PoolingPRMSettings(HTTPSettings):
    """A PRM on vLLM's pooling endpoint (``kind: vllm_pooling``); HTTP fields as in :class:`HTTPSettings` (``base_url``: the server root).

    :param style: ``qwen`` (messages with a step token) or ``math_shepherd`` (``input`` with step tags).
    :param positive_index: which entry of each per-step pair means "step correct".
    :param step_token: the step token (qwen) or step tag (math_shepherd).
    :param system_prompt: the system message (qwen style).
    """

    style: str = "qwen"
    positive_index: int = 1
    step_token: str = "<extra_0>"
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT


GeneratorSettings = TransformersGeneratorSettings | OpenAIGeneratorSettings
PRMSettings = QwenPRMSettings | MathShepherdPRMSettings | PoolingPRMSettings
GENERATOR_SETTINGS: dict[str, type] = {"transformers": TransformersGeneratorSettings, "openai": OpenAIGeneratorSettings}
PRM_SETTINGS: dict[str, type] = {"qwen": QwenPRMSettings, "math_shepherd": MathShepherdPRMSettings, "vllm_pooling": PoolingPRMSettings}

def settings_from_mapping(kinds: Mapping[str, type], what: str, config: Mapping[str, Any]) -> Any:
    """The settings dataclass of ``config['kind']`` filled from ``config``.

    :param kinds: kind name -> settings dataclass.
    :param what: the config's name in error messages (``weak``, ``strong``, ``prm``).
    :param config: ``kind`` and its fields.
    :raises ValueError: an unknown kind, an unknown field, or a required field left out (named).
    """
    fields = dict(config)
    kind = fields.pop("kind", None)
    if kind not in kinds:
        raise ValueError(f"{what}.kind = {kind!r}; choose one of {sorted(kinds)}")
    settings_type = kinds[kind]
    known = {spec.name: spec for spec in dataclasses.fields(settings_type)}
    unknown = sorted(set(fields) - set(known))
    if unknown:
        raise ValueError(f"{what}: field {unknown[0]!r} is not a setting of kind {kind!r}; its settings: {sorted(known)}")
    required = dataclasses.MISSING
    missing = sorted(name for name, spec in known.items()
                     if spec.default is required and spec.default_factory is required and fields.get(name) is None)
    if missing:
        raise ValueError(f"{what}: kind {kind!r} needs field {missing[0]!r}")
    try:
        return settings_type(**fields)
    except ValueError as error:
        raise ValueError(f"{what}: {error}") from error


def generator_settings(config: Mapping[str, Any], what: str = "generator") -> GeneratorSettings:
    """Typed settings of a generator config (see :func:`settings_from_mapping`)."""
    return settings_from_mapping(GENERATOR_SETTINGS, what, config)


def prm_settings(config: Mapping[str, Any], what: str = "prm") -> PRMSettings:
    """Typed settings of a PRM config (see :func:`settings_from_mapping`)."""
    return settings_from_mapping(PRM_SETTINGS, what, config)


def build_generator(settings: GeneratorSettings, max_tokens_per_step: int) -> StepGenerator:
    """The step generator ``settings`` describe.

    :param settings: a generator kind's settings.
    :param max_tokens_per_step: decoded-token limit of one step.
    """
    sampling = Sampling(settings.temperature, settings.top_p, settings.top_k)
    if isinstance(settings, OpenAIGeneratorSettings):
        if settings.api == "completions" and not settings.prompt_template:
            raise ValueError("an openai generator with api=completions needs prompt_template (chatml, or a format string with {problem})")
        template = PROMPT_TEMPLATES.get(settings.prompt_template, settings.prompt_template) if settings.prompt_template else None
        prompt = ChatPrompt(template=template, system_prompt=settings.system_prompt)
        client = HTTPClient(settings)
        generator = OpenAIGenerator(client, settings.api, prompt, sampling, max_tokens_per_step, settings.send_top_k, dict(settings.extra_body))
        if settings.api != "chat" or settings.continuation == "continue":
            return generator
        completions = OpenAIGenerator(client, "completions", prompt, sampling, max_tokens_per_step, settings.send_top_k,
                                      dict(settings.extra_body)) if template else None
        return ContinuingChatGenerator(generator, completions, settings.continuation)
    from trim_env.sources.local import TransformersGenerator, load_pretrained  # noqa: PLC0415  (torch models)

    network, tokenizer = load_pretrained(settings.model, "causal_lm", settings.gguf_file, settings.dtype, settings.trust_remote_code)
    name = settings.model if not settings.gguf_file else f"{settings.model}/{settings.gguf_file}"
    return TransformersGenerator(network, tokenizer, sampling, max_tokens_per_step, settings.system_prompt, settings.max_batch_size, name=name)


def build_prm(settings: PRMSettings) -> PRMScorer:
    """The PRM scorer ``settings`` describe."""
    if isinstance(settings, PoolingPRMSettings):
        return VLLMPoolingPRM(HTTPClient(settings), settings.style, settings.positive_index, settings.step_token,
                              settings.system_prompt, dict(settings.extra_body))
    from trim_env.sources.local import (  # noqa: PLC0415  (torch models)
        StepTagPRM,
        TokenClassificationPRM,
        load_pretrained,
    )

    if isinstance(settings, QwenPRMSettings):
        network, tokenizer = load_pretrained(settings.model, settings.auto_class, settings.gguf_file, settings.dtype, settings.trust_remote_code)
        return TokenClassificationPRM(network, tokenizer, settings.step_token, settings.positive_label, settings.system_prompt,
                                      settings.max_batch_size, name=settings.model)
    network, tokenizer = load_pretrained(settings.model, "causal_lm", settings.gguf_file, settings.dtype, settings.trust_remote_code)
    return StepTagPRM(network, tokenizer, settings.step_tag, settings.good_token, settings.bad_token, settings.max_batch_size,
                      name=settings.model if not settings.gguf_file else f"{settings.model}/{settings.gguf_file}")


def make_generator(config: Mapping[str, Any], max_tokens_per_step: int, what: str = "generator") -> StepGenerator:
    """A step generator from a config mapping (``kind`` and its fields).

    :param config: ``kind`` and its fields.
    :param max_tokens_per_step: decoded-token limit of one step.
    :param what: the config's name in error messages (``weak``, ``strong``).
    """
    return build_generator(generator_settings(config, what), max_tokens_per_step)


def make_prm(config: Mapping[str, Any], what: str = "prm") -> PRMScorer:
    """A PRM scorer from a config mapping (``kind`` and its fields).

    :param config: ``kind`` and its fields.
    :param what: the config's name in error messages.
    """
    return build_prm(prm_settings(config, what))


@dataclass
class BackendSettings:
    """The three backends of a collection, a growth run or live routing, typed.

    :param weak: the weak model.
    :param strong: the strong model.
    :param prm: the process reward model.
    :param max_tokens_per_step: decoded-token limit of one step, for both models.
    :param torch_threads: CPU threads of local models (``None``: torch's default).
    """

    weak: GeneratorSettings
    strong: GeneratorSettings
    prm: PRMSettings
    max_tokens_per_step: int = 512
    torch_threads: int | None = None

    @classmethod
    def from_mapping(cls, config: Mapping[str, Any]) -> BackendSettings:
        """Read ``weak``, ``strong``, ``prm``, ``max_tokens_per_step`` and ``torch_threads`` of a config (other keys are not read)."""
        for key in ("weak", "strong", "prm", "max_tokens_per_step"):
            if config.get(key) is None:
                raise ValueError(f"backend settings: field {key!r} is missing")
        return cls(
            generator_settings(config["weak"], "weak"),
            generator_settings(config["strong"], "strong"),
            prm_settings(config["prm"], "prm"),
            int(config["max_tokens_per_step"]),
            None if config.get("torch_threads") is None else int(config["torch_threads"]),
        )


def build_backends(settings: BackendSettings) -> tuple[StepGenerator, StepGenerator, PRMScorer]:
    """The weak and strong generators and the PRM ``settings`` describe."""
    if settings.torch_threads:
        import torch  # noqa: PLC0415

        torch.set_num_threads(settings.torch_threads)
    return (
        build_generator(settings.weak, settings.max_tokens_per_step),
        build_generator(settings.strong, settings.max_tokens_per_step),
        build_prm(settings.prm),
    )


def make_backends(config: Mapping[str, Any]) -> tuple[StepGenerator, StepGenerator, PRMScorer]:
    """The weak and strong generators and the PRM of a collection or routing config mapping (:meth:`BackendSettings.from_mapping`)."""
    return build_backends(BackendSettings.from_mapping(config))
