"""Tool calls: real chat templates of the catalog's families (tests/data/chat_templates) render the
tools; scripted replies parse into calls; a required call on the starter is constrained so it
always parses and validates."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from embedding_gguf import write_with_template
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from localllm import SamplingOptions, load_model
from localllm.errors import UsageError
from localllm.generation.tools import check_tools, family, for_template, parse
from localllm.model import collect

TEMPLATES = Path(__file__).parent / "data" / "chat_templates"
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city now.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40},
                                                    "unit": {"enum": ["celsius", "fahrenheit"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {"zone": {"type": "string", "maxLength": 32}}, "required": ["zone"],
    "additionalProperties": False}}}
TOOLS = check_tools([WEATHER, TIME])
FAMILIES = {"Qwen-Qwen3-0.6B.jinja": "hermes", "meta-llama-Llama-3.2-3B-Instruct.jinja": "llama3",
            "mistralai-Mistral-Nemo-Instruct-2407.jinja": "mistral", "openai-gpt-oss-120b.jinja": "gpt-oss",
            "deepseek-ai-DeepSeek-R1-Distill-Llama-8B.jinja": None}


@pytest.mark.parametrize("name, kind", sorted(FAMILIES.items()))
def test_each_template_is_recognised_and_renders_the_tools(name, kind):
    template = (TEMPLATES / name).read_text()
    assert family(template) == kind
    if kind is not None:
        formatter = Jinja2ChatFormatter(template=template, eos_token="</s>", bos_token="<s>")
        prompt = formatter(messages=[{"role": "user", "content": "Weather in Oslo?"}], tools=for_template([WEATHER, TIME])).prompt
        assert "get_weather" in prompt and "get_time" in prompt and "Weather in Oslo?" in prompt


def test_replies_of_each_family_parse_into_calls():
    text, calls = parse("hermes", 'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": '
                                  '{"city": "Oslo", "unit": "celsius"}}\n</tool_call>', TOOLS)
    assert text == "Let me check." and [(c.name, c.arguments) for c in calls] == [("get_weather", {"city": "Oslo", "unit": "celsius"})]
    _, calls = parse("llama3", '<|python_tag|>{"name": "get_time", "parameters": {"zone": "UTC"}}', TOOLS)
    assert [(c.name, c.arguments) for c in calls] == [("get_time", {"zone": "UTC"})]
    _, calls = parse("mistral", '[{"name": "get_time", "arguments": {"zone": "CET"}}, '
                                '{"name": "get_weather", "arguments": "{\\"city\\": \\"Rome\\", \\"unit\\": \\"celsius\\"}"}]', TOOLS)
    assert [c.name for c in calls] == ["get_time", "get_weather"] and calls[1].arguments["city"] == "Rome"
    assert calls[0].id != calls[1].id and calls[0].id.startswith("call_")
    # Not a call: plain answers, unknown tools, broken JSON stay text.
    for kind, reply in (("hermes", "It is sunny."), ("hermes", '<tool_call>{"name": "rm_rf", "arguments": {}}</tool_call>'),
                        ("llama3", '{"name": "get_time", "parameters": '), ("mistral", "[not json")):
        assert parse(kind, reply, TOOLS) == (reply, [])


def test_calls_a_hermes_model_writes_without_its_tags_parse():
    """Qwen2.5-Coder answers tool_choice "auto" with bare JSON or a fenced block, as llama-server
    and Ollama accept for this family."""
    bare = '{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "celsius"}}'
    assert [(c.name, c.arguments) for c in parse("hermes", bare, TOOLS)[1]] == [("get_weather", {"city": "Oslo", "unit": "celsius"})]
    text, calls = parse("hermes", f"I will look it up.\n```json\n{bare}\n```\n", TOOLS)
    assert text == "I will look it up." and [c.name for c in calls] == ["get_weather"]
    listed = '```\n[{"name": "get_time", "arguments": {"zone": "UTC"}}, ' + bare + ']\n```'
    assert [c.name for c in parse("hermes", listed, TOOLS)[1]] == ["get_time", "get_weather"]
    # JSON that is not a call of an offered tool stays text.
    for reply in ('{"city": "Oslo"}', '```json\n{"name": "rm_rf", "arguments": {}}\n```', '```json\n{"a": [1, 2]}\n```',
                  '[' + bare + ', {"name": "rm_rf", "arguments": {}}]'):
        assert parse("hermes", reply, TOOLS) == (reply, [])


def test_bad_tools_are_usage_errors():
    for bad in ([], [{"type": "function", "function": {"name": "has space"}}], [WEATHER, WEATHER],
                [{"type": "function", "function": {"name": "x", "parameters": "nope"}}]):
        with pytest.raises(UsageError):
            check_tools(bad)


@pytest.fixture(scope="module")
def qwen3_model(starter_gguf, tmp_path_factory):
    path = write_with_template(starter_gguf, tmp_path_factory.mktemp("tools") / "starter-qwen3.gguf",
                               (TEMPLATES / "Qwen-Qwen3-0.6B.jinja").read_text())
    with load_model(path, n_ctx=2048, n_threads=2) as model:
        yield model


@pytest.mark.slow
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_a_required_call_on_the_starter_always_parses_and_validates(qwen3_model, temperature):
    assert_required_calls_validate(qwen3_model, temperature)


def assert_required_calls_validate(model, temperature: float) -> None:
    """A required call and a named one: each parses into one call whose arguments validate.

    Where the template lets the model think first (gpt-oss, Qwen3), a sampled answer may spend
    the whole budget thinking, and which seed does so depends on the CPU's kernels: then the one
    thing that must hold is that the answer never ends as text without its call."""
    messages = [{"role": "user", "content": "What is the weather in Oslo?"}]
    sampling = SamplingOptions(temperature=temperature, seed=5, max_tokens=120)
    for choice, name in (("required", None), ({"type": "function", "function": {"name": "get_time"}}, "get_time")):
        done = collect(model.chat(messages, sampling, tools=[WEATHER, TIME], tool_choice=choice))
        if temperature > 0 and done.finished.reason == "length":
            assert not done.tool_calls, done
            continue
        assert done.finished.reason == "tool_calls" and len(done.tool_calls) == 1, done
        call = done.tool_calls[0]
        assert name is None or call.name == name
        jsonschema.validate(call.arguments, TOOLS[call.name])


@pytest.mark.slow
def test_tools_on_a_template_without_them_are_refused(starter_model):
    with pytest.raises(UsageError, match="renders no tools"):
        starter_model.chat([{"role": "user", "content": "hi"}], tools=[WEATHER])
    with pytest.raises(UsageError, match="tool_choice names"):
        from localllm.generation.tools import required_grammar

        required_grammar("hermes", TOOLS, only="nothing")
    assert json.dumps(TOOLS)  # the checked tools stay plain JSON


@pytest.mark.slow
def test_the_openai_api_returns_tool_calls(starter_gguf, tmp_path):
    import openai
    from server_process import ServerProcess, isolated_env

    model = write_with_template(starter_gguf, tmp_path / "starter-qwen3.gguf", (TEMPLATES / "Qwen-Qwen3-0.6B.jinja").read_text())
    server = ServerProcess("-m", str(model), "--ctx", "2048", "--threads", "2", "--parallel", "2",
                           env=isolated_env(tmp_path))
    try:
        api = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)
        ask = [{"role": "user", "content": "What is the weather in Oslo?"}]
        reply = api.chat.completions.create(model=str(model), messages=ask, tools=[WEATHER, TIME], tool_choice="required",
                                            temperature=0, max_tokens=120)
        choice = reply.choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.tool_calls, choice
        call = choice.message.tool_calls[0]
        parameters = (WEATHER if call.function.name == "get_weather" else TIME)["function"]["parameters"]
        jsonschema.validate(json.loads(call.function.arguments), parameters)

        chunks = list(api.chat.completions.create(model=str(model), messages=ask, tools=[WEATHER], stream=True,
                                                  tool_choice={"type": "function", "function": {"name": "get_weather"}},
                                                  temperature=1.0, seed=3, max_tokens=120))
        streamed = [c for chunk in chunks for c in (chunk.choices[0].delta.tool_calls or [])]
        assert [c.function.name for c in streamed] == ["get_weather"] and chunks[-1].choices[0].finish_reason == "tool_calls"
        jsonschema.validate(json.loads(streamed[0].function.arguments), WEATHER["function"]["parameters"])

        # The conversation goes on with the tool's result, rendered by the template.
        history = ask + [{"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
                         {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 3}'}]
        follow = api.chat.completions.create(model=str(model), messages=history, tools=[WEATHER, TIME], max_tokens=16)
        assert follow.choices[0].finish_reason in ("stop", "length", "tool_calls")
        with pytest.raises(openai.BadRequestError, match="not supported for this model's chat template"):
            api.chat.completions.create(model="starter", messages=ask, tools=[WEATHER], max_tokens=4)
    finally:
        server.stop()


@pytest.mark.slow
def test_ollamas_chat_api_returns_tool_calls(starter_gguf, tmp_path):
    import httpx
    from server_process import ServerProcess, isolated_env

    model = write_with_template(starter_gguf, tmp_path / "starter-qwen3.gguf", (TEMPLATES / "Qwen-Qwen3-0.6B.jinja").read_text())
    server = ServerProcess("-m", str(model), "--ctx", "2048", "--threads", "2", "--parallel", "1", env=isolated_env(tmp_path))
    try:
        # Ollama has no tool_choice: the model decides. Two earlier calls in the history (Ollama's
        # form: arguments as objects, no ids) are enough for the starter to call the tool itself.
        def shot(city):
            return [{"role": "user", "content": f"Weather in {city}?"},
                    {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "get_weather",
                                                                                      "arguments": {"city": city, "unit": "celsius"}}}]}]
        body = {"model": str(model), "messages": shot("Rome") + shot("Lima") + [{"role": "user", "content": "Weather in Oslo?"}],
                "tools": [WEATHER, TIME], "stream": False, "options": {"temperature": 0, "num_predict": 80}}
        reply = httpx.post(f"{server.url}/api/chat", json=body, timeout=120).json()
        [call] = reply["message"]["tool_calls"]
        assert call["function"]["name"] == "get_weather" and reply["done_reason"] == "stop" and reply["done"]
        jsonschema.validate(call["function"]["arguments"], WEATHER["function"]["parameters"])  # an object, not text
        assert "<tool_call>" not in reply["message"]["content"]

        lines = [json.loads(line) for line in httpx.post(f"{server.url}/api/chat", json={**body, "stream": True},
                                                         timeout=120).text.splitlines()]
        assert [c for line in lines for c in line.get("message", {}).get("tool_calls", [])] == [call]
        assert lines[-1]["done"] and not any(line["done"] for line in lines[:-1])

        # A tool's result goes back with Ollama's tool_name and renders; /api/generate takes no tools.
        answered = body["messages"] + [reply["message"], {"role": "tool", "content": '{"celsius": 3}', "tool_name": "get_weather"}]
        follow = httpx.post(f"{server.url}/api/chat", json={**body, "messages": answered}, timeout=120)
        assert follow.status_code == 200 and follow.json()["done"]
        refused = httpx.post(f"{server.url}/api/generate", json={"model": str(model), "prompt": "hi", "tools": [WEATHER]}, timeout=60)
        assert refused.status_code == 400 and "/api/chat" in refused.json()["error"]
    finally:
        server.stop()


# Qwen2.5's and Qwen3's GGUFs have <tool_call> and </tool_call> as single user-defined tokens
# (151657, 151658), which llguidance treats as special: no spelling of them matches.
TOOL_TOKENS = {"<tool_call>": 4, "</tool_call>": 4}  # gguf.TokenType.USER_DEFINED


@pytest.fixture(scope="module")
def qwen_tokens_gguf(starter_gguf, tmp_path_factory):
    return write_with_template(starter_gguf, tmp_path_factory.mktemp("tools") / "starter-qwen-tool-tokens.gguf",
                               (TEMPLATES / "Qwen-Qwen3-0.6B.jinja").read_text(), TOOL_TOKENS)


@pytest.fixture(scope="module")
def qwen_tokens_model(qwen_tokens_gguf):
    with load_model(qwen_tokens_gguf, n_ctx=2048, n_threads=2) as model:
        yield model


@pytest.mark.slow
def test_tool_tags_that_are_special_tokens_are_named_by_id(qwen_tokens_model):
    import llguidance

    from localllm.errors import GenerationError
    from localllm.generation.constraints import Constraint
    from localllm.generation.tools import required_grammar

    model = qwen_tokens_model
    opening = model.special_token("<tool_call>")
    assert opening is not None and model.tokenize("<tool_call>") == [opening]
    grammar = required_grammar("hermes", TOOLS, special=model.special_token)
    assert f"<[{opening}]>" in grammar
    vocabulary = model._loaded.grammar_vocabulary()
    matcher = llguidance.LLMatcher(vocabulary, grammar, log_level=0)
    call = '<tool_call>\n{"name": "get_time", "arguments": {"zone": "UTC"}}\n</tool_call>'
    assert matcher.consume_tokens(model.tokenize(call)) and matcher.is_accepting()
    # The grammar as it was spelled: its fast-forward hands over the special token, and the
    # matcher rejects it. That must be an error, never an ordinary end of the answer.
    spelled = required_grammar("hermes", TOOLS)
    with pytest.raises(GenerationError, match="rejected"):
        Constraint(vocabulary, spelled).forced()


@pytest.mark.slow
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_a_required_call_with_special_tool_tokens_parses_and_validates(qwen_tokens_model, temperature):
    """As Qwen2.5 (no thinking): the call starts at once, with the special token the grammar forces."""
    messages = [{"role": "user", "content": "What is the weather in Oslo?"}]
    sampling = SamplingOptions(temperature=temperature, seed=5, max_tokens=120)
    for choice in ("required", {"type": "function", "function": {"name": "get_time"}}):
        done = collect(qwen_tokens_model.chat(messages, sampling, tools=[WEATHER, TIME], tool_choice=choice, think=False))
        assert done.finished.reason == "tool_calls" and len(done.tool_calls) == 1, done
        call = done.tool_calls[0]
        assert choice == "required" or call.name == "get_time"
        jsonschema.validate(call.arguments, TOOLS[call.name])


@pytest.mark.slow
def test_the_server_returns_required_calls_with_special_tool_tokens(qwen_tokens_gguf):
    """The batched path that serve uses, through real HTTP."""
    import httpx
    from test_server_trust import AppServer

    from localllm.options import LoadOptions
    from localllm.server import ServerConfig

    server = AppServer(ServerConfig(LoadOptions(n_ctx=2048, n_threads=2, n_seq=2), default_model=str(qwen_tokens_gguf),
                                    quiet=True))
    try:
        body = {"model": str(qwen_tokens_gguf), "messages": [{"role": "user", "content": "What is the weather in Oslo?"}],
                "tools": [WEATHER, TIME], "tool_choice": "required", "temperature": 0, "max_tokens": 120,
                "chat_template_kwargs": {"enable_thinking": False}}
        reply = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=120).json()
        choice = reply["choices"][0]
        assert choice["finish_reason"] == "tool_calls" and len(choice["message"]["tool_calls"]) == 1, reply
        call = choice["message"]["tool_calls"][0]["function"]
        jsonschema.validate(json.loads(call["arguments"]), TOOLS[call["name"]])
    finally:
        server.stop()
