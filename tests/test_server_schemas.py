"""The HTTP API's request checks and response shapes, without a server or a model."""

from __future__ import annotations

import json

import pytest

from localllm.events import Finished, Timings, Usage
from localllm.server import is_loopback, ollama_schemas, replies, schemas
from localllm.server.schemas import ApiError


def chat(**fields) -> dict:
    return {"model": "starter", "messages": [{"role": "user", "content": "Hi"}], **fields}


def refused(parse, body) -> ApiError:
    with pytest.raises(ApiError) as caught:
        parse(body)
    assert caught.value.status == 400
    return caught.value


def test_openai_fields_become_sampling_options():
    job = schemas.openai_chat(chat(temperature=0, top_p=0.5, seed=3, max_completion_tokens=9, stop="END",
                                   stream=True, stream_options={"include_usage": True}))
    assert (job.sampling.temperature, job.sampling.top_p, job.sampling.seed, job.sampling.max_tokens) == (0, 0.5, 3, 9)
    assert job.sampling.stop == ("END",) and job.stream and job.include_usage and job.grammar is None
    parts = schemas.openai_chat(chat(messages=[{"role": "user", "content": [{"type": "text", "text": "a"},
                                                                            {"type": "text", "text": "b"}]}]))
    assert parts.messages == [{"role": "user", "content": "ab"}]
    scored = schemas.openai_chat(chat(logprobs=True, top_logprobs=4, n=3))
    assert (scored.sampling.logprobs, scored.n) == (4, 3) and schemas.openai_chat(chat(logprobs=True)).sampling.logprobs == 0
    assert schemas.openai_chat(chat(logprobs=False)).sampling.logprobs is None


@pytest.mark.parametrize("body, param", [
    (chat(temperature=True), "temperature"),
    (chat(temperature=float("nan")), "temperature"),
    (chat(top_p=0), "top_p"),
    (chat(seed=-1), "seed"),
    (chat(stop=["x"] * 17), "stop"),
    (chat(stop=[3]), "stop"),
    (chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]), "messages[0].content"),
    (chat(messages=[{"role": "system", "content": "only a system prompt"}]), "messages"),
    (chat(response_format={"type": "xml"}), "response_format"),
    (chat(response_format={"type": "json_schema", "json_schema": {"schema": {"type": "object", "if": {}}}}), "response_format"),
    (chat(top_logprobs=3), "top_logprobs"),  # alternatives need logprobs: true, as OpenAI says
    (chat(logprobs=True, top_logprobs=21), "top_logprobs"),
    (chat(n=0), "n"),
    (chat(n=17), "n"),
    (chat(logit_bias={"1": 5}), "logit_bias"),
    (["not", "an", "object"], None),
])
def test_bad_openai_fields_are_refused_by_name(body, param):
    assert refused(schemas.openai_chat, body).param == param


def test_ollama_options_and_formats():
    job = ollama_schemas.ollama_chat(chat(options={"temperature": 0.1, "num_predict": 5, "top_k": 3, "stop": ["\n"]},
                                   format="json", keep_alive="1m"))
    assert (job.sampling.max_tokens, job.sampling.top_k, job.sampling.stop, job.keep_alive) == (5, 3, ("\n",), 60)
    assert job.stream and job.grammar  # Ollama streams unless told otherwise
    generate, raw = ollama_schemas.ollama_generate({"model": "m", "prompt": "2+2=", "raw": True, "stream": False})
    assert raw and generate.prompt == "2+2=" and generate.messages is None and not generate.stream
    load_only, _ = ollama_schemas.ollama_generate({"model": "m"})
    assert load_only.prompt is None and load_only.messages is None
    assert refused(ollama_schemas.ollama_chat, chat(format="yaml")).param == "format"
    assert refused(ollama_schemas.ollama_chat, chat(keep_alive=[1])).param == "keep_alive"


def test_prerendered_token_chunks_are_the_same_bytes():
    job = schemas.openai_chat(chat())
    render = replies.openai_chat_token_chunks(job, "starter")
    for text in ("hi", 'a "quoted" \\ line\n', "ünïcödé", "</script>"):
        assert render(text) == replies.sse(replies.openai_chat_chunk(job, "starter", {"content": text}))


def test_usage_and_ollama_timings():
    finished = Finished("length", Usage(30, 5, 20, 6, 4), Timings(0.5, 0.6, 1.0, 20.0, 4.0), 1)
    assert replies.usage(finished) == {"prompt_tokens": 30, "completion_tokens": 5, "total_tokens": 35,
                                       "prompt_tokens_details": {"cached_tokens": 20},
                                       "completion_tokens_details": {"accepted_prediction_tokens": 4,
                                                                     "rejected_prediction_tokens": 2}}
    timings = replies.timings(finished)  # llama-server's names
    assert timings["draft_n"] == 6 and timings["draft_n_accepted"] == 4 and timings["cache_n"] == 20
    assert timings["prompt_n"] == 10 and timings["predicted_n"] == 5 and timings["predicted_ms"] == 1000
    line = replies.ollama_line("m", "chat", "", finished)
    assert line["done"] and line["done_reason"] == "length" and line["prompt_eval_count"] == 10
    assert line["eval_duration"] == 1_000_000_000 and json.dumps(line)


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("[::1]", True),
                                            ("localhost", True), ("0.0.0.0", False), ("192.168.1.4", False),
                                            ("example.com", False)])
def test_which_hosts_are_loopback(host, loopback):
    assert is_loopback(host) is loopback
