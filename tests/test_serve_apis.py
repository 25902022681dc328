"""OpenAI's Responses API and Anthropic's Messages API, spoken to by the official `openai` and
`anthropic` clients over real HTTP on 127.0.0.1: first on the scripted engine (what the request
path assembled, each API's shapes and events, the response store, refusals), then on the real
starter with Qwen3's template and tool tokens (forced calls that validate, schemas, thinking)."""

from __future__ import annotations

import json
import math

import anthropic
import httpx
import jsonschema
import openai
import pytest
from test_serve import client
from test_serve_fake import serve
from test_tools import TEMPLATES, TOOL_TOKENS, WEATHER

from localllm.server.responses import ResponseStore

KEY = "sk-local-test-apis-91c2"
WEATHER_TOOL = {"type": "function", **WEATHER["function"]}  # the Responses API's flat form
WEATHER_ANTHROPIC = {"name": "get_weather", "description": WEATHER["function"]["description"],
                     "input_schema": WEATHER["function"]["parameters"]}


def anthropic_client(server, key: str = "unused") -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key=key, max_retries=0, timeout=120)


@pytest.fixture
def echo(fake_model):
    """Answers with the prompt the request path built from the request."""
    server = serve(fake_model(echo=True))
    yield server
    server.stop()


# ---- Responses, on the scripted engine ----------------------------------------------------------
def test_responses_answer_store_and_continue_a_conversation(echo):
    api = client(echo)
    first = api.responses.create(model=echo.name, input="Hello there", instructions="Be brief.")
    assert first.status == "completed" and first.output_text == "<system>Be brief.\n<user>Hello there\n<assistant>"
    assert first.usage.input_tokens == len(first.output_text.encode()) == first.usage.output_tokens
    assert [item.type for item in first.output] == ["message"] and first.store

    # The next turn sends only what is new; the earlier instructions are not carried over (OpenAI's rule).
    second = api.responses.create(model=echo.name, input=[{"role": "user", "content": "And again"}],
                                  previous_response_id=first.id, instructions="Be kind.")
    assert second.output_text == ("<system>Be kind.\n<user>Hello there\n<assistant>" + first.output_text
                                  + "\n<user>And again\n<assistant>")
    assert second.previous_response_id == first.id
    assert api.responses.retrieve(first.id).output_text == first.output_text

    api.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        api.responses.retrieve(first.id)
    with pytest.raises(openai.BadRequestError, match="no stored response") as refused:
        api.responses.create(model=echo.name, input="x", previous_response_id=first.id)
    assert refused.value.body["param"] == "previous_response_id"

    unstored = api.responses.create(model=echo.name, input="Not kept", store=False)
    with pytest.raises(openai.NotFoundError):
        api.responses.retrieve(unstored.id)


def test_responses_without_a_store_refuse_previous_response_id(fake_model):
    server = serve(fake_model(reply="Hi."), store_responses=False)
    try:
        api = client(server)
        first = api.responses.create(model=server.name, input="Hello")
        assert first.output_text == "Hi."
        with pytest.raises(openai.BadRequestError, match="--no-store"):
            api.responses.create(model=server.name, input="x", previous_response_id=first.id)
    finally:
        server.stop()


def test_responses_stream_the_event_sequence(echo):
    api = client(echo)
    events = list(api.responses.create(model=echo.name, input="streamed", stream=True))
    kinds = [e.type for e in events]
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[4:4 + len(deltas)] == ["response.output_text.delta"] * len(deltas) and len(deltas) > 1
    assert kinds[4 + len(deltas):] == ["response.output_text.done", "response.content_part.done",
                                       "response.output_item.done", "response.completed"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    done = events[-1].response
    assert "".join(deltas) == done.output_text == "<user>streamed\n<assistant>"
    assert events[-3].part.text == done.output_text and done.usage.output_tokens == len(done.output_text.encode())

    # A limit ends it incomplete, as OpenAI says.
    cut = list(api.responses.create(model=echo.name, input="streamed", stream=True, max_output_tokens=5))
    assert cut[-1].type == "response.incomplete" and cut[-1].response.incomplete_details.reason == "max_output_tokens"
    assert cut[-1].response.output_text == "<user"


def test_responses_render_function_calls_and_their_outputs(echo):
    """An earlier call and its output reach the template as the assistant's call and a tool turn."""
    api = client(echo)
    reply = api.responses.create(model=echo.name, input=[
        {"role": "user", "content": [{"type": "input_text", "text": "Weather in Oslo?"}]},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city": "Oslo"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": '{"temperature": 3}'}])
    assert "Weather in Oslo?" in reply.output_text and '"temperature": 3' in reply.output_text


@pytest.mark.parametrize("field, value", [
    ("background", True), ("tools", [{"type": "web_search"}]), ("truncation", "auto"),
    ("input", [{"role": "user", "content": [{"type": "input_file", "file_id": "file-1"}]}]),
    ("include", ["file_search_call.results"]), ("text", {"format": {"type": "grammar"}}), ("top_logprobs", 21),
    ("reasoning", {"effort": "extreme"}), ("input", [{"type": "item_reference", "id": "x"}])])
def test_responses_refuse_what_they_cannot_honour_by_name(echo, field, value):
    body = {"model": echo.name, "input": "Hi", field: value}
    reply = httpx.post(f"{echo.url}/v1/responses", json=body, timeout=30)
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert error["param"].split("[")[0].split(".")[0] == field, error


def test_the_response_store_is_bounded_in_entries_bytes_and_time(monkeypatch):
    import localllm.server.responses as responses

    clock = [1000.0]
    monkeypatch.setattr(responses.time, "monotonic", lambda: clock[0])
    store = ResponseStore(max_entries=3, max_bytes=2000, ttl_s=60)
    for i in range(5):
        store.put({"id": f"r{i}", "output": []}, [{"role": "user", "content": "x"}])
    assert [store.get(f"r{i}") is not None for i in range(5)] == [False, False, True, True, True]
    store.put({"id": "big", "output": []}, [{"role": "user", "content": "y" * 1500}])
    assert store.get("big") is not None and store.get("r2") is None  # bytes: the least recently used go
    store.put({"id": "huge", "output": []}, [{"role": "user", "content": "z" * 5000}])
    assert store.get("huge") is None  # larger than the whole store: not kept, nothing else lost
    clock[0] += 59
    assert store.get("r4") is not None  # using an entry keeps it
    clock[0] += 30
    assert store.get("r4") is not None and store.get("big") is None  # idle past the time: gone


# ---- Anthropic Messages, on the scripted engine -------------------------------------------------
def test_messages_answer_stream_and_count(echo):
    api = anthropic_client(echo)
    ask = [{"role": "user", "content": "Hello"}]
    whole = api.messages.create(model=echo.name, max_tokens=200, system="Be brief.", messages=ask)
    assert whole.content[0].text == "<system>Be brief.\n<user>Hello\n<assistant>" and whole.stop_reason == "end_turn"
    counted = api.messages.count_tokens(model=echo.name, system="Be brief.", messages=ask)
    assert counted.input_tokens == whole.usage.input_tokens + whole.usage.cache_read_input_tokens == len(whole.content[0].text)

    with api.messages.stream(model=echo.name, max_tokens=200, messages=ask) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    assert kinds[1] == "content_block_start" and kinds[-3] == "content_block_stop" and kinds.count("text") > 1
    assert final.content[0].text == "<user>Hello\n<assistant>" and final.usage.output_tokens == len(final.content[0].text)

    stopped = api.messages.create(model=echo.name, max_tokens=200, messages=ask, stop_sequences=["lo\n"])
    assert (stopped.stop_reason, stopped.stop_sequence, stopped.content[0].text) == ("stop_sequence", "lo\n", "<user>Hel")
    cut = api.messages.create(model=echo.name, max_tokens=4, messages=ask)
    assert (cut.stop_reason, cut.content[0].text) == ("max_tokens", "<use")


def test_messages_render_tool_use_and_tool_result_blocks(echo):
    api = anthropic_client(echo)
    reply = api.messages.create(model=echo.name, max_tokens=400, messages=[
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": [{"type": "text", "text": "Checking."},
                                          {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "3 degrees"}]}])
    text = reply.content[0].text
    assert text.index("Weather in Oslo?") < text.index("Checking.") < text.index("3 degrees")


def test_messages_errors_have_anthropics_shape(echo):
    api = anthropic_client(echo)
    with pytest.raises(anthropic.BadRequestError) as refused:
        api.messages.create(model=echo.name, max_tokens=0, messages=[{"role": "user", "content": "Hi"}])
    assert refused.value.body == {"type": "error", "error": {"type": "invalid_request_error",
                                                             "message": "'max_tokens' is required: a positive integer"}}
    with pytest.raises(anthropic.NotFoundError):
        api.messages.create(model="no-such-model", max_tokens=8, messages=[{"role": "user", "content": "Hi"}])
    for body in ({"messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]},
                 {"tools": [{"type": "web_search_20250305", "name": "web_search"}]},
                 {"thinking": {"type": "enabled"}}):
        reply = httpx.post(f"{echo.url}/v1/messages", timeout=30, json={
            "model": echo.name, "max_tokens": 8, "messages": [{"role": "user", "content": "Hi"}], **body})
        assert reply.status_code == 400 and reply.json()["error"]["type"] == "invalid_request_error", reply.text


def test_messages_take_the_key_as_anthropics_clients_send_it(fake_model):
    server = serve(fake_model(reply="Hi."), api_key=KEY)
    try:
        ask = {"model": server.name, "max_tokens": 8, "messages": [{"role": "user", "content": "Hi"}]}
        assert anthropic_client(server, KEY).messages.create(**ask).content[0].text == "Hi."
        with pytest.raises(anthropic.AuthenticationError) as refused:
            anthropic_client(server, "sk-wrong").messages.create(**ask)
        assert refused.value.body["error"]["type"] == "authentication_error"
    finally:
        server.stop()


# ---- the real starter with Qwen3's template and tool tokens -------------------------------------
@pytest.fixture(scope="module")
def qwen_server(starter_gguf, tmp_path_factory):
    from embedding_gguf import write_with_template
    from test_server_trust import AppServer

    from localllm.options import LoadOptions
    from localllm.server import ServerConfig

    folder = tmp_path_factory.mktemp("apis")
    model = write_with_template(starter_gguf, folder / "starter-qwen3-tools.gguf",
                                (TEMPLATES / "Qwen-Qwen3-0.6B.jinja").read_text(), TOOL_TOKENS)
    server = AppServer(ServerConfig(LoadOptions(n_ctx=2048, n_threads=2, n_seq=2), default_model=str(model), quiet=True,
                                    allow_paths=True))
    server.name = str(model)
    # DeepSeek-R1's template opens the think block in the prompt: all the starter writes is reasoning.
    server.r1 = str(write_with_template(starter_gguf, folder / "starter-r1.gguf",
                                        (TEMPLATES / "deepseek-ai-DeepSeek-R1-Distill-Llama-8B.jinja").read_text()))
    yield server
    server.stop()


@pytest.mark.slow
def test_responses_forced_call_then_its_output_through_previous_response_id(qwen_server):
    api = client(qwen_server)
    first = api.responses.create(model=qwen_server.name, input="What is the weather in Oslo?", tools=[WEATHER_TOOL],
                                 tool_choice={"type": "function", "name": "get_weather"}, reasoning={"effort": "none"},
                                 temperature=0, max_output_tokens=120)
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather" and first.status == "completed"
    jsonschema.validate(json.loads(calls[0].arguments), WEATHER["function"]["parameters"])

    second = api.responses.create(model=qwen_server.name, previous_response_id=first.id, max_output_tokens=16,
                                  input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": "3 degrees"}],
                                  reasoning={"effort": "none"}, temperature=0)
    assert second.status in ("completed", "incomplete") and second.output[-1].type == "message"
    # The first turn's question and call were not sent again, yet the model read them (tools are
    # per request, as in OpenAI's API, so the second prompt has none).
    question = api.responses.create(model=qwen_server.name, input="What is the weather in Oslo?", max_output_tokens=1,
                                    reasoning={"effort": "none"})
    assert second.usage.input_tokens > question.usage.input_tokens + 10

    streamed = list(api.responses.create(model=qwen_server.name, input="Weather in Rome?", tools=[WEATHER_TOOL],
                                         tool_choice="required", reasoning={"effort": "none"}, stream=True,
                                         temperature=0, max_output_tokens=120))
    done = [e for e in streamed if e.type == "response.function_call_arguments.done"]
    assert len(done) == 1 and streamed[-1].type == "response.completed"
    jsonschema.validate(json.loads(done[0].arguments), WEATHER["function"]["parameters"])


@pytest.mark.slow
def test_responses_text_format_schema_and_reasoning_items(qwen_server):
    api = client(qwen_server)
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}, "sunny": {"type": "boolean"}},
              "required": ["city", "sunny"], "additionalProperties": False}
    for seed in (1, 2):
        reply = api.responses.create(model=qwen_server.name, input="Describe Oslo's weather as JSON.", temperature=0.8,
                                     extra_body={"seed": seed}, max_output_tokens=80, reasoning={"effort": "none"},
                                     text={"format": {"type": "json_schema", "name": "weather", "schema": schema}})
        jsonschema.validate(json.loads(reply.output_text), schema)

    # What a thinking model writes before </think> is a reasoning item, streamed as its summary.
    thought = api.responses.create(model=qwen_server.r1, input="Hi", temperature=0, max_output_tokens=12)
    assert thought.output[0].type == "reasoning" and thought.output[0].summary[0].text.strip()
    assert thought.output[-1].type == "message" and thought.usage.output_tokens_details.reasoning_tokens > 0
    events = list(api.responses.create(model=qwen_server.r1, input="Hi", temperature=0, max_output_tokens=12, stream=True))
    deltas = "".join(e.delta for e in events if e.type == "response.reasoning_summary_text.delta")
    assert deltas == events[-1].response.output[0].summary[0].text == thought.output[0].summary[0].text
    # The effort reaches Qwen3's switch: off writes the empty think block into the prompt.
    on = api.responses.create(model=qwen_server.name, input="Hi", reasoning={"effort": "medium"}, max_output_tokens=1)
    off = api.responses.create(model=qwen_server.name, input="Hi", reasoning={"effort": "none"}, max_output_tokens=1)
    assert off.usage.input_tokens > on.usage.input_tokens


@pytest.mark.slow
def test_messages_forced_tool_use_tool_result_and_count_tokens(qwen_server):
    api = anthropic_client(qwen_server)
    ask = [{"role": "user", "content": "What is the weather in Oslo?"}]
    forced = api.messages.create(model=qwen_server.name, max_tokens=120, messages=ask, tools=[WEATHER_ANTHROPIC],
                                 tool_choice={"type": "tool", "name": "get_weather"}, thinking={"type": "disabled"},
                                 extra_body={"temperature": 0})
    uses = [block for block in forced.content if block.type == "tool_use"]
    assert forced.stop_reason == "tool_use" and len(uses) == 1 and uses[0].name == "get_weather"
    jsonschema.validate(uses[0].input, WEATHER_ANTHROPIC["input_schema"])

    with api.messages.stream(model=qwen_server.name, max_tokens=120, messages=ask, tools=[WEATHER_ANTHROPIC],
                             tool_choice={"type": "any"}, thinking={"type": "disabled"}) as stream:
        streamed = stream.get_final_message()
    assert streamed.stop_reason == "tool_use"
    jsonschema.validate(streamed.content[-1].input, WEATHER_ANTHROPIC["input_schema"])

    history = ask + [{"role": "assistant", "content": [u.model_dump() for u in uses]},
                     {"role": "user", "content": [{"type": "tool_result", "tool_use_id": uses[0].id, "content": "3 degrees"}]}]
    request = {"model": qwen_server.name, "messages": history, "tools": [WEATHER_ANTHROPIC], "thinking": {"type": "disabled"}}
    answer = api.messages.create(max_tokens=16, extra_body={"temperature": 0}, **request)
    assert answer.stop_reason in ("end_turn", "max_tokens", "tool_use")
    counted = api.messages.count_tokens(**request)
    assert counted.input_tokens == answer.usage.input_tokens + answer.usage.cache_read_input_tokens

    # Thinking's budget reaches the template's switch, and what is thought comes back as thinking blocks.
    on = api.messages.count_tokens(model=qwen_server.name, messages=ask, thinking={"type": "enabled", "budget_tokens": 2048})
    off = api.messages.count_tokens(model=qwen_server.name, messages=ask, thinking={"type": "disabled"})
    assert off.input_tokens > on.input_tokens
    thinking = api.messages.create(model=qwen_server.r1, max_tokens=12, messages=ask, extra_body={"temperature": 0},
                                   thinking={"type": "enabled", "budget_tokens": 2048})
    assert thinking.content[0].type == "thinking" and thinking.content[0].thinking.strip()
    with api.messages.stream(model=qwen_server.r1, max_tokens=12, messages=ask, extra_body={"temperature": 0},
                             thinking={"type": "enabled", "budget_tokens": 2048}) as stream:
        deltas = "".join(e.delta.thinking for e in stream if e.type == "content_block_delta" and e.delta.type == "thinking_delta")
    assert deltas == thinking.content[0].thinking

    # Structured outputs (output_config.format) bind the answer to the schema.
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}}, "required": ["city"],
              "additionalProperties": False}
    shaped = api.messages.create(model=qwen_server.name, max_tokens=60, messages=ask, thinking={"type": "disabled"},
                                 extra_body={"output_config": {"format": {"type": "json_schema", "schema": schema}}})
    jsonschema.validate(json.loads(shaped.content[0].text), schema)


# ---- OpenAI's logprobs and n, Ollama's logprobs, on the real starter ---------------------------
@pytest.fixture(scope="module")
def starter_server(starter_gguf):
    from test_server_trust import AppServer

    from localllm.options import LoadOptions
    from localllm.server import ServerConfig

    server = AppServer(ServerConfig(LoadOptions(n_ctx=1024, n_threads=2, n_seq=4), default_model=str(starter_gguf), quiet=True))
    server.name = str(starter_gguf)
    yield server
    server.stop()


def _check_scores(entries, text: str, top: int) -> None:
    """The tokens spell the text; each score is a log-probability; the alternatives come likeliest
    first and a greedy pick is the likeliest of them."""
    assert b"".join(bytes(e.bytes) for e in entries).decode() == text
    for entry in entries:
        alternatives = [a.logprob for a in entry.top_logprobs]
        assert len(alternatives) == top and alternatives == sorted(alternatives, reverse=True)
        assert entry.logprob <= 0 and entry.logprob == pytest.approx(alternatives[0], abs=1e-6)
        assert sum(math.exp(a) for a in alternatives) <= 1 + 1e-6


@pytest.mark.slow
def test_chat_logprobs_whole_and_streamed(starter_server):
    api = client(starter_server)
    ask = [{"role": "user", "content": "Name a colour."}]
    whole = api.chat.completions.create(model=starter_server.name, messages=ask, temperature=0, max_tokens=12,
                                        logprobs=True, top_logprobs=3)
    entries = whole.choices[0].logprobs.content
    assert len(entries) == whole.usage.completion_tokens
    _check_scores(entries, whole.choices[0].message.content, 3)

    chunks = list(api.chat.completions.create(model=starter_server.name, messages=ask, temperature=0, max_tokens=12,
                                              logprobs=True, top_logprobs=3, stream=True))
    streamed = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [e.token for e in streamed] == [e.token for e in entries]
    # A request whose prompt is cached reads one token, not the whole prompt: llama.cpp's batch
    # arithmetic rounds differently (README, "Exactness"), so the scores agree closely, not bit for bit.
    assert [e.logprob for e in streamed] == pytest.approx([e.logprob for e in entries], abs=1.0)
    plain = api.chat.completions.create(model=starter_server.name, messages=ask, temperature=0, max_tokens=12)
    assert plain.choices[0].logprobs is None

    # Under a schema, tokens the grammar forces had no alternative: log-probability 0.
    shaped = api.chat.completions.create(model=starter_server.name, messages=ask, temperature=0, max_tokens=40,
                                         logprobs=True, top_logprobs=2, response_format={"type": "json_object"})
    scores = shaped.choices[0].logprobs.content
    assert b"".join(bytes(e.bytes) for e in scores).decode() == shaped.choices[0].message.content
    assert all(e.logprob <= 0 for e in scores) and len(scores) == shaped.usage.completion_tokens

    sampled = api.chat.completions.create(model=starter_server.name, messages=ask, temperature=1.0, seed=4, max_tokens=12,
                                          logprobs=True)
    scores = sampled.choices[0].logprobs.content
    assert b"".join(bytes(e.bytes) for e in scores).decode() == sampled.choices[0].message.content
    assert all(e.logprob <= 0 and e.top_logprobs == [] for e in scores)


@pytest.mark.slow
def test_responses_logprobs(starter_server):
    api = client(starter_server)
    reply = api.responses.create(model=starter_server.name, input="Name a colour.", temperature=0, max_output_tokens=10,
                                 include=["message.output_text.logprobs"], top_logprobs=2)
    _check_scores(reply.output[0].content[0].logprobs, reply.output_text, 2)
    events = list(api.responses.create(model=starter_server.name, input="Name a colour.", temperature=0,
                                       max_output_tokens=10, include=["message.output_text.logprobs"], stream=True))
    streamed = [e for event in events if event.type == "response.output_text.delta" for e in event.logprobs]
    assert [e.token for e in streamed] == [e.token for e in events[-1].response.output[0].content[0].logprobs]
    assert "".join(e.token for e in streamed) == events[-1].response.output_text


@pytest.mark.slow
def test_completion_logprobs_in_the_older_form(starter_server):
    api = client(starter_server)
    reply = api.completions.create(model=starter_server.name, prompt="The capital of France is", temperature=0,
                                   max_tokens=8, logprobs=2)
    scores = reply.choices[0].logprobs
    assert "".join(scores.tokens) == reply.choices[0].text and len(scores.tokens) == reply.usage.completion_tokens
    assert scores.text_offset == [sum(len(t) for t in scores.tokens[:i]) for i in range(len(scores.tokens))]
    assert all(len(top) == 2 and max(top.values()) == pytest.approx(lp, abs=1e-6)
               for top, lp in zip(scores.top_logprobs, scores.token_logprobs))


@pytest.mark.slow
def test_n_answers_are_sequences_of_their_own(starter_server):
    api = client(starter_server)
    ask = [{"role": "user", "content": "Write a word."}]
    reply = api.chat.completions.create(model=starter_server.name, messages=ask, n=3, temperature=1.0, seed=11,
                                        max_tokens=8, extra_body={"ignore_eos": True})
    texts = [c.message.content for c in reply.choices]
    assert [c.index for c in reply.choices] == [0, 1, 2] and all(c.finish_reason == "length" for c in reply.choices)
    assert reply.usage.completion_tokens == 24 and len(set(texts)) > 1  # seeds 11, 12, 13

    chunks = list(api.chat.completions.create(model=starter_server.name, messages=ask, n=2, temperature=1.0, seed=11,
                                              max_tokens=8, stream=True, stream_options={"include_usage": True},
                                              extra_body={"ignore_eos": True}))
    by_index = {0: "", 1: ""}
    for chunk in chunks[:-1]:
        by_index[chunk.choices[0].index] += chunk.choices[0].delta.content or ""
    ends = [c.choices[0].index for c in chunks[:-1] if c.choices[0].finish_reason == "length"]
    assert sorted(ends) == [0, 1] and chunks[-1].usage.completion_tokens == 16
    assert by_index == {0: texts[0], 1: texts[1]} or all(by_index.values())  # same seeds: same answers, up to batch rounding

    completions = api.completions.create(model=starter_server.name, prompt="Once upon a time", n=2, temperature=1.0,
                                         seed=5, max_tokens=6, extra_body={"ignore_eos": True})
    assert [c.index for c in completions.choices] == [0, 1] and completions.usage.completion_tokens == 12


@pytest.mark.slow
def test_ollama_logprobs(starter_server):
    import ollama

    client = ollama.Client(host=starter_server.url, timeout=120)
    reply = client.chat(model=starter_server.name, messages=[{"role": "user", "content": "Name a colour."}],
                        options={"temperature": 0, "num_predict": 10}, logprobs=True, top_logprobs=2)
    assert "".join(e.token for e in reply.logprobs) == reply.message.content
    assert all(len(e.top_logprobs) == 2 and e.logprob == pytest.approx(e.top_logprobs[0].logprob, abs=1e-6)
               for e in reply.logprobs)
