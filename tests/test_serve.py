"""`localllm serve` end to end: the installed command on 127.0.0.1 with the real starter, driven
by the official `openai` and `ollama` clients and by raw HTTP."""

from __future__ import annotations

import json
import re
import threading
import time

import anthropic
import httpx
import jsonschema
import ollama
import openai
import pydantic
import pytest
from conftest import assert_one_line_error, run_cli
from embedding_gguf import write_embedding_model
from server_process import ServerProcess, isolated_env

pytestmark = pytest.mark.slow

KEY = "sk-local-test-7f3a9c"
STARTER_NAME = "smollm2-135m-instruct:q4_1"
GREEDY = {"temperature": 0, "max_tokens": 24}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    env = isolated_env(tmp_path_factory.mktemp("serve"))
    # --dtype float32 for the safetensors model one test serves: in bfloat16 a request whose prompt
    # is cached rounds differently from one that is not on CPUs with AMX (test_transformers_engine).
    # --spec off: these tests compare greedy answers across requests (test_speculation.py covers
    # serving with speculation, which sizes its batches by measured timings; README, "Exactness").
    proc = ServerProcess("-m", "starter", "--parallel", "4", "--queue", "16", "--ctx", "1024", "--threads", "2",
                         "--max-body", "1", "--allow-model-paths", "--dtype", "float32", "--spec", "off", env=env)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def tight(tmp_path_factory):
    """Two slots, no queue, an API key, one CORS origin, and no stored responses."""
    env = isolated_env(tmp_path_factory.mktemp("serve-tight"))
    proc = ServerProcess("-m", "starter", "--parallel", "2", "--queue", "0", "--ctx", "1024", "--threads", "2",
                         "--api-key", KEY, "--cors", "http://app.example", "--no-store", env=env)
    yield proc
    proc.stop()


def client(server: ServerProcess, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=60)


def ask(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def test_openai_client_streams_and_reports_usage(server):
    api = client(server)
    whole = api.chat.completions.create(model="starter", messages=ask("Name a fruit."), **GREEDY)
    answer = whole.choices[0].message.content
    assert answer.strip() and whole.choices[0].finish_reason in ("stop", "length")
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens

    chunks = list(api.chat.completions.create(model="starter", messages=ask("Name a fruit."), stream=True,
                                              stream_options={"include_usage": True}, **GREEDY))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == answer  # temperature 0, one request at a time: the same answer
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    # The same prompt again: all of it but the last token comes from the KV cache.
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens == whole.usage.prompt_tokens - 1
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason


def test_a_chats_next_turn_evaluates_only_its_new_tokens(server):
    api = client(server)
    first = api.chat.completions.create(model="starter", messages=ask("Say hello to Ada."), **GREEDY)
    history = ask("Say hello to Ada.") + [{"role": "assistant", "content": first.choices[0].message.content}]
    second = api.chat.completions.create(model="starter", messages=history + ask("And to Bob?"), **GREEDY)
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert cached >= first.usage.prompt_tokens, (cached, first.usage)
    assert second.usage.prompt_tokens - cached < 20  # only the answer's end and the new turn


def test_models_completions_and_stop_strings(server):
    api = client(server)
    assert STARTER_NAME in [m.id for m in api.models.list()]
    assert api.models.retrieve(STARTER_NAME).id == STARTER_NAME
    text = api.completions.create(model="starter", prompt="1, 2, 3, 4,", temperature=0, max_tokens=12).choices[0].text
    assert "5" in text
    # " 6" spans tokens with what precedes it in many vocabularies; it is never shown, even in part.
    stopped = api.completions.create(model="starter", prompt="1, 2, 3, 4,", temperature=0, max_tokens=12, stop=[" 6"])
    assert stopped.choices[0].finish_reason == "stop"
    assert text.startswith(stopped.choices[0].text) and " 6" not in stopped.choices[0].text
    parts = [c.choices[0].text for c in api.completions.create(
        model="starter", prompt="1, 2, 3, 4,", temperature=0, max_tokens=12, stop=[" 6"], stream=True) if c.choices]
    assert "".join(parts) == stopped.choices[0].text


def test_ollama_client(server):
    api = ollama.Client(host=server.url, timeout=60)
    reply = api.chat(model="starter", messages=ask("Name a colour."), options={"temperature": 0, "num_predict": 16})
    assert reply.message.role == "assistant" and reply.message.content.strip() and reply.done
    assert reply.eval_count and reply.prompt_eval_count is not None
    parts = list(api.generate(model="starter", prompt="Name a colour.", stream=True, options={"temperature": 0, "num_predict": 16}))
    assert parts[-1].done and "".join(p.response for p in parts) == reply.message.content
    assert STARTER_NAME in [m.model for m in api.list().models]
    running = api.ps().models
    assert [m.model for m in running] == [STARTER_NAME] and running[0].size > 0
    shown = api.show("starter")
    assert shown.details.family == "llama" and shown.modelinfo["llama.context_length"] == 8192
    assert httpx.get(f"{server.url}/api/version").json()["version"]


def test_penalties_reach_the_engine_through_both_apis(server):
    prompt, penalties = "one, two, three, one, two, three, one, two, three,", {"frequency_penalty": 2.0, "presence_penalty": 1.0}
    api = client(server)
    plain = api.completions.create(model="starter", prompt=prompt, temperature=0, max_tokens=40).choices[0].text
    penalized = api.completions.create(model="starter", prompt=prompt, temperature=0, max_tokens=40, **penalties).choices[0].text
    assert penalized != plain, "a strong penalty steers greedy decoding away from the repeats"
    through_ollama = ollama.Client(host=server.url, timeout=60).generate(
        model="starter", prompt=prompt, raw=True, options={"temperature": 0, "num_predict": 40, **penalties}).response
    assert through_ollama == penalized
    refused = httpx.post(f"{server.url}/v1/completions", json={"model": "starter", "prompt": "x", "presence_penalty": 3})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "presence_penalty"


def test_ollama_copy_and_delete_manage_installed_models(server):
    theirs = ollama.Client(host=server.url, timeout=60)
    theirs.copy("starter", "starter-copy")  # the starter's file, added under another name
    names = [m.model for m in theirs.list().models]
    assert "starter-copy" in names
    copied = theirs.chat(model="starter-copy", messages=ask("Name a fruit."), options={"temperature": 0, "num_predict": 8})
    assert copied.message.content.strip()
    with pytest.raises(ollama.ResponseError, match="already installed"):
        theirs.copy("starter", "starter-copy")
    theirs.delete("starter-copy")  # forgotten; the file is the starter's, and stays
    assert "starter-copy" not in [m.model for m in theirs.list().models]
    with pytest.raises(ollama.ResponseError) as refused:
        theirs.delete("starter")
    assert refused.value.status_code == 403 and "pip" in str(refused.value)
    with pytest.raises(ollama.ResponseError) as missing:
        theirs.delete("no-such-model")
    assert missing.value.status_code == 404
    assert theirs.chat(model="starter", messages=ask("Hi"), options={"num_predict": 4}).message.content.strip(), \
        "the refused deletion left the starter as it was"


def test_metrics_count_requests_tokens_and_latency(server):
    from prometheus_client.parser import text_string_to_metric_families

    def scrape() -> dict[str, float]:
        response = httpx.get(f"{server.url}/metrics")
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
        return {sample.name + json.dumps(sample.labels, sort_keys=True): sample.value
                for family in text_string_to_metric_families(response.text) for sample in family.samples}

    def delta(name: str, **labels: str) -> float:
        key = name + json.dumps(labels, sort_keys=True)
        return after.get(key, 0) - before.get(key, 0)

    before = scrape()
    reply = client(server).chat.completions.create(model="starter", messages=ask("Name a fruit."), **GREEDY)
    assert httpx.get(f"{server.url}/no/such/endpoint").status_code == 404
    after = scrape()
    assert delta("localllm_requests_total", route="/v1/chat/completions", status="200") == 1
    assert delta("localllm_requests_total", route="other", status="404") == 1, "unknown paths share one label"
    assert delta("localllm_tokens_total", kind="prompt") == reply.usage.prompt_tokens
    assert delta("localllm_tokens_total", kind="evaluated") == \
        reply.usage.prompt_tokens - reply.usage.prompt_tokens_details.cached_tokens
    assert delta("localllm_tokens_total", kind="completion") == reply.usage.completion_tokens
    assert delta("localllm_generations_total", reason=reply.choices[0].finish_reason) == 1
    assert delta("localllm_time_to_first_token_seconds_count") == 1
    assert delta("localllm_time_per_output_token_seconds_count") == (reply.usage.completion_tokens > 1)
    assert after["localllm_model_loads_total{}"] >= 1 and after["localllm_models_loaded{}"] >= 1
    assert after["localllm_queue_depth{}"] == 0 and after["localllm_requests_running{}"] == 0


def test_eight_concurrent_streams_all_finish(server):
    prompts = [f"Write one sentence about the number {n}." for n in range(8)]
    results: dict[int, tuple[str, object]] = {}
    errors: list[BaseException] = []

    def stream(i: int) -> None:
        try:
            chunks = list(client(server).chat.completions.create(
                model="starter", messages=ask(prompts[i]), stream=True, stream_options={"include_usage": True}, **GREEDY))
            results[i] = ("".join(c.choices[0].delta.content or "" for c in chunks if c.choices), chunks[-1].usage)
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and sorted(results) == list(range(8))
    for text, usage in results.values():
        assert text.strip() and 0 < usage.completion_tokens <= GREEDY["max_tokens"]
    # What holds exactly: alone, a temperature-0 request repeats itself. In a batch, llama.cpp's
    # kernels may sum in another order and a near tie can flip (README, "Serving").
    again = [client(server).chat.completions.create(model="starter", messages=ask(prompts[0]), **GREEDY) for _ in range(2)]
    assert again[0].choices[0].message.content == again[1].choices[0].message.content


def _long_stream(server: ServerProcess, http: httpx.Client):
    body = {"model": "starter", "messages": ask("Count to a thousand."), "max_tokens": 4000, "ignore_eos": True,
            "stream": True}
    context = http.stream("POST", f"{server.url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"})
    response = context.__enter__()
    lines = response.iter_lines()
    assert response.status_code == 200
    for line in lines:
        if '"content": "' in line and '"content": ""' not in line:
            break  # it is generating
    return context, lines


def test_queue_overflow_gets_503_and_a_disconnect_frees_its_slot(tight):
    auth = {"Authorization": f"Bearer {KEY}"}
    short = {"model": "starter", "messages": ask("Hi"), "max_tokens": 4}
    clients = [httpx.Client(timeout=60) for _ in range(2)]
    streams = [_long_stream(tight, c) for c in clients]
    busy = httpx.post(f"{tight.url}/v1/chat/completions", json=short, headers=auth, timeout=30)
    assert busy.status_code == 503 and int(busy.headers["retry-after"]) > 0
    assert busy.json()["error"]["type"] == "server_busy"
    for context, _lines in streams:
        context.__exit__(None, None, None)
    for c in clients:
        c.close()
    # Both sequences stop within a step of the disconnect; a 4000-token answer would take minutes.
    deadline = time.monotonic() + 10
    while True:
        answer = httpx.post(f"{tight.url}/v1/chat/completions", json=short, headers=auth, timeout=30)
        if answer.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert answer.status_code == 200, answer.text


def test_the_api_key_is_checked_everywhere_and_never_logged(tight):
    body = {"model": "starter", "messages": ask("Hi"), "max_tokens": 2}
    missing = httpx.post(f"{tight.url}/v1/chat/completions", json=body)
    assert missing.status_code == 401 and missing.json()["error"]["type"] == "authentication_error"
    wrong = httpx.get(f"{tight.url}/v1/models", headers={"Authorization": "Bearer sk-local-test-7f3a9d"})
    assert wrong.status_code == 401
    assert httpx.get(f"{tight.url}/api/tags").status_code == 401 and "error" in httpx.get(f"{tight.url}/api/tags").json()
    with pytest.raises(openai.AuthenticationError):
        client(tight, "sk-wrong").models.list()
    assert STARTER_NAME in [m.id for m in client(tight, KEY).models.list()]
    assert ollama.Client(host=tight.url, headers={"Authorization": f"Bearer {KEY}"}).list().models
    # Anthropic's clients send the key as x-api-key.
    said = anthropic.Anthropic(base_url=tight.url, api_key=KEY, max_retries=0, timeout=60).messages.create(
        model="starter", max_tokens=2, messages=ask("Hi"))
    assert said.usage.output_tokens >= 1
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(base_url=tight.url, api_key="sk-wrong", max_retries=0).messages.create(
            model="starter", max_tokens=2, messages=ask("Hi"))
    # --no-store: a response is not kept, and naming one is refused with the reason.
    first = client(tight, KEY).responses.create(model="starter", input="Hi", max_output_tokens=2)
    with pytest.raises(openai.BadRequestError, match="--no-store"):
        client(tight, KEY).responses.create(model="starter", input="Hi", max_output_tokens=2, previous_response_id=first.id)
    assert not any(KEY in line for line in tight.lines)


def test_cors_only_for_the_origin_given(tight, server):
    preflight = {"Origin": "http://app.example", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization, content-type"}
    allowed = httpx.options(f"{tight.url}/v1/chat/completions", headers=preflight)
    assert allowed.headers.get("access-control-allow-origin") == "http://app.example"
    other = httpx.options(f"{tight.url}/v1/chat/completions", headers={**preflight, "Origin": "http://evil.example"})
    assert other.headers.get("access-control-allow-origin") is None
    default = httpx.get(f"{server.url}/v1/models", headers={"Origin": "http://app.example"})
    assert default.status_code == 403 and "access-control-allow-origin" not in default.headers


def test_huge_bodies_long_prompts_and_then_normal_service(server):
    huge = httpx.post(f"{server.url}/v1/chat/completions", content=b"x" * (2 * 2**20), headers={"Content-Type": "application/json"})
    assert huge.status_code == 413 and "MiB" in huge.json()["error"]["message"]
    long = httpx.post(f"{server.url}/v1/chat/completions", json={"model": "starter", "messages": ask("word " * 1500)})
    assert long.status_code == 400
    error = long.json()["error"]
    assert error["code"] == "context_length_exceeded" and error["type"] == "invalid_request_error"
    assert re.search(r"the prompt is 1[5-6]\d\d tokens and the context window is 1024 tokens", error["message"])
    bad_ollama = httpx.post(f"{server.url}/api/chat", json={"model": "starter", "messages": []})
    assert bad_ollama.status_code == 400 and isinstance(bad_ollama.json()["error"], str)
    assert httpx.get(f"{server.url}/v2/nothing").status_code == 404
    fine = client(server).chat.completions.create(model="starter", messages=ask("Hi"), max_tokens=3)
    assert fine.choices[0].message.content is not None


def test_embeddings_for_embedding_models_and_a_clear_400_for_others(server, starter_gguf, tmp_path):
    api = client(server)
    with pytest.raises(openai.BadRequestError, match="not an embedding model"):
        api.embeddings.create(model="starter", input="hello")
    embedder = write_embedding_model(starter_gguf, tmp_path / "starter-embed.gguf")
    result = api.embeddings.create(model=str(embedder), input=["a cat", "a cat", "stock prices fell"])
    vectors = [d.embedding for d in result.data]  # the client asks for base64 and decodes it
    assert len(vectors) == 3 and len(vectors[0]) == 576
    dot = lambda a, b: sum(x * y for x, y in zip(a, b))  # noqa: E731
    assert dot(vectors[0], vectors[1]) == pytest.approx(1.0, abs=1e-5)
    assert dot(vectors[0], vectors[2]) < 0.99
    floats = httpx.post(f"{server.url}/v1/embeddings", json={"model": str(embedder), "input": "a cat"}).json()
    assert floats["data"][0]["embedding"] == pytest.approx(vectors[0], abs=1e-5)
    assert result.usage.prompt_tokens > 0
    theirs = ollama.Client(host=server.url)  # Ollama's /api/embed, and its older /api/embeddings
    embedded = theirs.embed(model=str(embedder), input=["a cat", "stock prices fell"])
    assert len(embedded.embeddings) == 2 and embedded.prompt_eval_count > 0
    assert embedded.embeddings[0] == pytest.approx(vectors[0], abs=1e-5)
    assert embedded.embeddings[1] == pytest.approx(vectors[2], abs=1e-5)
    assert theirs.embeddings(model=str(embedder), prompt="a cat").embedding == pytest.approx(vectors[0], abs=1e-5)
    with pytest.raises(ollama.ResponseError, match="not an embedding model"):
        theirs.embed(model="starter", input="hello")
    with pytest.raises(ollama.ResponseError, match="dimensions"):
        theirs.embed(model=str(embedder), input="a cat", dimensions=8)


def test_access_log_has_one_line_per_request(server):
    client(server).chat.completions.create(model="starter", messages=ask("Hi there"), max_tokens=3)
    line = server.log_lines_for("/v1/chat/completions")[-1]
    assert line.startswith("127.0.0.1 POST /v1/chat/completions 200 ") and "+3 tok" in line and line.endswith("s")


def test_a_non_loopback_host_needs_an_api_key(server):
    result = run_cli("serve", "--host", "0.0.0.0")
    assert_one_line_error(result, 2, "--api-key", "LOCALLLM_API_KEY")
    taken = run_cli("serve", "--port", server.url.rsplit(":", 1)[1])
    assert_one_line_error(taken, 2, "in use")


def test_sigterm_ends_streams_unloads_and_exits(tmp_path):
    proc = ServerProcess("-m", "starter", "--ctx", "1024", "--threads", "2", "--api-key", KEY, env=isolated_env(tmp_path))
    with httpx.Client(timeout=60) as http:
        context, lines = _long_stream(proc, http)
        started = time.monotonic()
        code = proc.stop()
        rest = list(lines)  # the stream ends cleanly: an error event, then [DONE]
        context.__exit__(None, None, None)
    assert time.monotonic() - started < 20
    assert code in (-15, 143), proc.lines  # killed by the signal it re-raises once all is unloaded
    assert not any("Traceback" in line for line in proc.lines)
    events = [line for line in rest if line]
    assert events[-1] == "data: [DONE]" and "shutting down" in events[-2]


class Person(pydantic.BaseModel):
    name: str
    age: int
    hobbies: list[str]


def test_json_schema_answers_always_parse_and_validate(server):
    api = client(server)
    reply = api.chat.completions.parse(model="starter", messages=ask("Describe a person called Ann."),
                                       response_format=Person, temperature=0, max_tokens=300)
    assert isinstance(reply.choices[0].message.parsed, Person), reply.choices[0].message.content
    finished = 0
    for seed in range(4):  # hot sampling too: the grammar, not the model, keeps it valid
        try:
            reply = api.chat.completions.parse(model="starter", messages=ask("Describe a person called Ann."),
                                               response_format=Person, temperature=1.2, seed=seed, max_tokens=300)
        except openai.LengthFinishReasonError:
            continue  # cut by max_tokens, which the client refuses to parse, as it should
        assert isinstance(reply.choices[0].message.parsed, Person), reply.choices[0].message.content
        finished += 1
    assert finished
    loose = api.chat.completions.create(model="starter", messages=ask("Some JSON please"), temperature=0,
                                        response_format={"type": "json_object"}, max_tokens=300)
    if loose.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(loose.choices[0].message.content), dict)
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"], "additionalProperties": False}
    reply = ollama.Client(host=server.url).chat(model="starter", messages=ask("Is water wet?"), format=schema,
                                                options={"temperature": 0, "num_predict": 50})
    assert json.loads(reply.message.content)["ok"] in (True, False)


def test_a_schema_keyword_that_cannot_be_enforced_is_refused_by_name(server):
    body = {"model": "starter", "messages": ask("Hi"),
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "if": {}}}}}
    refused = httpx.post(f"{server.url}/v1/chat/completions", json=body)
    assert refused.status_code == 400 and "if" in refused.json()["error"]["message"]
    assert refused.json()["error"]["param"] == "response_format"


def test_ollama_keep_alive_zero_unloads_after_the_answer(tmp_path):
    proc = ServerProcess("--ctx", "1024", "--threads", "2", env=isolated_env(tmp_path))
    try:
        api = ollama.Client(host=proc.url, timeout=60)
        api.generate(model="starter", prompt="", keep_alive="10m")  # Ollama's way to load a model
        assert [m.model for m in api.ps().models] == [STARTER_NAME]
        api.chat(model="starter", messages=ask("Hi"), options={"num_predict": 2}, keep_alive=0)
        deadline = time.monotonic() + 10
        while api.ps().models and time.monotonic() < deadline:
            time.sleep(0.05)
        assert api.ps().models == []
        bad = httpx.post(f"{proc.url}/api/chat", json={"model": "starter", "messages": ask("Hi"), "keep_alive": "soon"})
        assert bad.status_code == 400 and "keep_alive" in bad.json()["error"]
    finally:
        proc.stop()


def test_a_safetensors_model_is_served_by_the_transformers_engine(server, starter_checkpoint):
    api = client(server)
    whole = api.chat.completions.create(model=str(starter_checkpoint), messages=ask("Name a fruit."), **GREEDY)
    chunks = list(api.chat.completions.create(model=str(starter_checkpoint), messages=ask("Name a fruit."),
                                              stream=True, **GREEDY))
    assert whole.choices[0].message.content.strip()
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.choices[0].message.content
    # The same constraint engine as on GGUF models: the answer follows the schema.
    schema = {"type": "object", "properties": {"fruit": {"type": "string", "maxLength": 20}}, "required": ["fruit"],
              "additionalProperties": False}
    constrained = httpx.post(f"{server.url}/v1/chat/completions", timeout=120, json={
        "model": str(starter_checkpoint), "messages": ask("Name a fruit."), "temperature": 0, "max_tokens": 40,
        "response_format": {"type": "json_schema", "json_schema": {"name": "fruit", "schema": schema}}}).json()["choices"][0]
    assert constrained["finish_reason"] == "stop", constrained
    jsonschema.validate(json.loads(constrained["message"]["content"]), schema)
