"""The server's HTTP side on the scripted engine (tests/fake_backend.py), under uvicorn in this
process on 127.0.0.1, spoken to over real HTTP by the official openai and ollama clients: the
request path, each API's shapes, errors, the key, CORS and the queue, with no llama.cpp. What only
a real model shows (and `localllm serve` as a process) is in test_serve.py."""

from __future__ import annotations

import json
import time

import httpx
import ollama
import openai
import pytest
from test_serve import ask, client
from test_server_trust import AppServer

from localllm.engine import Engine
from localllm.options import LoadOptions
from localllm.registry import find_installed
from localllm.server import ServerConfig

REPLY = "First line.\n\nSecond paragraph."
KEY = "sk-local-test-fake-5e1d"


def serve(model, engine: Engine | None = None, **fields) -> AppServer:
    """The server with the scripted model as its -m, listed under `server.name`."""
    config = ServerConfig(load_options=LoadOptions(n_ctx=1024), default_model=str(model), quiet=True,
                          served=find_installed(str(model)), **fields)
    server = AppServer(config, engine)
    server.name = config.served.name
    return server


@pytest.fixture
def scripted(fake_model):
    server = serve(fake_model(reply=REPLY))
    yield server
    server.stop()


def test_openai_chat_answers_streams_and_counts(scripted):
    api = client(scripted)
    whole = api.chat.completions.create(model=scripted.name, messages=ask("Hi"))
    assert whole.choices[0].message.content == REPLY and whole.choices[0].finish_reason == "stop"
    assert whole.usage.completion_tokens == len(REPLY.encode())
    assert whole.usage.prompt_tokens == len("<user>Hi\n<assistant>".encode())
    chunks = list(api.chat.completions.create(model=scripted.name, messages=ask("Hi"), stream=True,
                                              stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == REPLY
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert scripted.name in [m.id for m in api.models.list()]


def test_limits_and_stop_strings_through_the_api(scripted):
    api = client(scripted)
    cut = api.chat.completions.create(model=scripted.name, messages=ask("Hi"), max_tokens=5)
    assert cut.choices[0].message.content == REPLY[:5] and cut.choices[0].finish_reason == "length"
    stopped = api.completions.create(model=scripted.name, prompt="Hi", stop=["\n\n"])
    assert stopped.choices[0].text == "First line." and stopped.choices[0].finish_reason == "stop"


def test_ollama_chat_and_generate(scripted):
    api = ollama.Client(host=scripted.url, timeout=30)
    reply = api.chat(model=scripted.name, messages=ask("Hi"), options={"num_predict": 11})
    assert reply.message.content == REPLY[:11] and reply.done_reason == "length" and reply.eval_count == 11
    parts = list(api.generate(model=scripted.name, prompt="Hi", stream=True))
    assert "".join(p.response for p in parts) == REPLY and parts[-1].done


def test_the_prompt_the_engine_gets_is_the_one_request_path_s(fake_model):
    server = serve(fake_model(echo=True))
    try:
        model = server.name
        messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": [
            {"type": "text", "text": "two "}, {"type": "text", "text": "parts"}]}]
        echoed = client(server).chat.completions.create(model=model, messages=messages).choices[0].message.content
        assert echoed == "<system>Be brief.\n<user>two parts\n<assistant>"
        ids = httpx.post(f"{server.url}/v1/completions", json={"model": model, "prompt": [104, 105]}).json()
        assert ids["choices"][0]["text"] == "hi", "token ids in, as the engine can take them"
    finally:
        server.stop()


def test_what_the_engine_cannot_do_is_refused_before_it_is_queued(scripted):
    schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}
    refused = httpx.post(f"{scripted.url}/v1/chat/completions",
                         json={"model": scripted.name, "messages": ask("Hi"), "response_format": schema})
    assert refused.status_code == 400 and "fake engine cannot bind an answer to a schema" in refused.json()["error"]["message"]
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    required = httpx.post(f"{scripted.url}/v1/chat/completions", json={
        "model": scripted.name, "messages": ask("Hi"), "tools": [tool], "tool_choice": "required"})
    assert required.status_code == 400 and required.json()["error"]["param"] == "tool_choice"


@pytest.mark.parametrize("body, status, param", [
    (b"{not json", 400, None),
    ({"messages": ask("Hi"), "temperature": "hot"}, 400, "temperature"),
    ({"messages": ask("Hi"), "top_p": 0}, 400, "top_p"),
    ({"messages": ask("Hi"), "presence_penalty": 2.5}, 400, "presence_penalty"),
    ({"messages": "Hi"}, 400, "messages"),
    ({"messages": [{"role": "wizard", "content": "Hi"}]}, 400, "messages[0].role"),
    ({"messages": ask("Hi"), "n": 2}, 400, "n"),
    ({"messages": ask("Hi"), "max_tokens": 0}, 400, "max_tokens"),
    ({"messages": ask("Hi"), "tools": [{"type": "function"}]}, 400, "tools"),
    ({"model": "no-such-model", "messages": ask("Hi")}, 404, "model"),
    ({"model": None, "messages": ask("Hi")}, 400, "model"),
])
def test_bad_requests_get_the_openai_error_object(scripted, body, status, param):
    if isinstance(body, dict):
        body = json.dumps({"model": scripted.name, **body} if "model" not in body else
                          {k: v for k, v in body.items() if v is not None}).encode()
    response = httpx.post(f"{scripted.url}/v1/chat/completions", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] and error["param"] == param


def test_a_prompt_past_the_window_says_both_sizes(scripted):
    long = httpx.post(f"{scripted.url}/v1/chat/completions", json={"model": scripted.name, "messages": ask("word " * 300)})
    error = long.json()["error"]
    assert long.status_code == 400 and error["code"] == "context_length_exceeded"
    assert f"the prompt is {len('<user>' + 'word ' * 300 + chr(10) + '<assistant>')} tokens and the context window is 1024" \
        in error["message"], "one token a byte on the scripted engine"


def test_the_api_key_is_checked_everywhere(fake_model):
    server = serve(fake_model(reply="ok"), api_key=KEY, cors=("http://app.example",))
    try:
        model = server.name
        body = {"model": model, "messages": ask("Hi")}
        missing = httpx.post(f"{server.url}/v1/chat/completions", json=body)
        assert missing.status_code == 401 and missing.json()["error"]["type"] == "authentication_error"
        assert httpx.get(f"{server.url}/api/tags").status_code == 401
        with pytest.raises(openai.AuthenticationError):
            client(server, "sk-wrong").models.list()
        assert client(server, KEY).chat.completions.create(model=model, messages=ask("Hi")).choices[0].message.content == "ok"
        preflight = {"Origin": "http://app.example", "Access-Control-Request-Method": "POST",
                     "Access-Control-Request-Headers": "authorization, content-type"}
        allowed = httpx.options(f"{server.url}/v1/chat/completions", headers=preflight)
        assert allowed.headers.get("access-control-allow-origin") == "http://app.example"
        other = httpx.options(f"{server.url}/v1/chat/completions", headers={**preflight, "Origin": "http://evil.example"})
        assert other.headers.get("access-control-allow-origin") is None
    finally:
        server.stop()


def test_a_full_queue_is_503_and_a_client_that_leaves_frees_its_place(fake_model):
    server = serve(fake_model(reply="tick " * 2000, delay=0.01), Engine(queue_limit=0))
    try:
        model = server.name
        http = httpx.Client(timeout=30)
        context = http.stream("POST", f"{server.url}/v1/chat/completions",
                              json={"model": model, "messages": ask("Go"), "stream": True})
        response = context.__enter__()
        assert response.status_code == 200
        lines = response.iter_lines()  # kept: a closed iterator would close the stream, as a client leaving does
        next(line for line in lines if '"content": "t' in line)  # it is answering
        busy = httpx.post(f"{server.url}/v1/chat/completions", json={"model": model, "messages": ask("Hi"), "max_tokens": 2})
        assert busy.status_code == 503 and int(busy.headers["retry-after"]) > 0
        assert busy.json()["error"]["type"] == "server_busy"
        context.__exit__(None, None, None)
        http.close()
        del lines
        deadline = time.monotonic() + 10  # the 2000-token answer would take 20 s more
        while (answer := httpx.post(f"{server.url}/v1/chat/completions", json={
                "model": model, "messages": ask("Hi"), "max_tokens": 2})).status_code != 200:
            assert time.monotonic() < deadline, answer.text
            time.sleep(0.05)
    finally:
        server.stop()
