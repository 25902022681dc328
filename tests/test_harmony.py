"""gpt-oss's harmony replies: scripted streams split into reasoning, answer and tool calls; and end
to end on the starter carrying gpt-oss's real chat template and its special tokens
(tests/embedding_gguf.py: HARMONY), so llama.cpp's and llguidance's handling of those tokens is the
real one."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from embedding_gguf import HARMONY, write_with_template

from localllm import SamplingOptions, load_model
from localllm.events import Finished, Reasoning, Timings, Token, Usage
from localllm.generation.constraints import json_grammar
from localllm.generation.harmony import (
    MAX_HEADER,
    HarmonySplitter,
    answer_grammar,
    call_grammar,
)
from localllm.generation.reasoning import split_events, thinks
from localllm.generation.tools import check_tools, family, for_template, parse
from localllm.model import collect

TEMPLATE = (Path(__file__).parent / "data" / "chat_templates" / "openai-gpt-oss-120b.jinja").read_text()
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string", "maxLength": 40}}, "required": ["city"],
    "additionalProperties": False}}}
TIME = {"type": "function", "function": {"name": "get_time", "description": "The time in a zone.", "parameters": {
    "type": "object", "properties": {"zone": {"type": "string", "maxLength": 32}}, "required": ["zone"],
    "additionalProperties": False}}}
TOOLS = check_tools([WEATHER, TIME])

REPLY = ("<|channel|>analysis<|message|>The user greets me.<|end|>"
         "<|start|>assistant<|channel|>final<|message|>Hello! How can I help?")


def split(pieces):
    splitter = HarmonySplitter()
    events = [Token(p) for p in pieces] + [Finished("stop", Usage(1, len(pieces)), Timings(0, 0, 0, None, None), 0)]
    out = list(split_events(iter(events), splitter))
    assert isinstance(out[-1], Finished)
    return ("".join(e.text for e in out if isinstance(e, Reasoning)), "".join(e.text for e in out if isinstance(e, Token)),
            splitter.calls)


def test_the_template_is_recognised_as_thinking_and_calling_tools():
    assert thinks(TEMPLATE) and family(TEMPLATE) == "gpt-oss"


@pytest.mark.parametrize("cut", range(1, len(REPLY)))
def test_analysis_and_final_split_anywhere_across_tokens(cut):
    assert split([REPLY[:cut], REPLY[cut:]]) == ("The user greets me.", "Hello! How can I help?", [])


def test_one_character_per_token_and_a_build_that_does_not_render_end():
    assert split(list(REPLY))[:2] == ("The user greets me.", "Hello! How can I help?")
    # llama.cpp renders <|end|> only where the conversion made it user-defined: <|start|> ends a message too.
    assert split([REPLY.replace("<|end|>", "")])[:2] == ("The user greets me.", "Hello! How can I help?")


def test_tool_calls_in_either_header_form_are_taken_out_of_the_text():
    channel_form = ('<|channel|>analysis<|message|>Need the weather.<|end|><|start|>assistant<|channel|>commentary '
                    'to=functions.get_weather <|constrain|>json<|message|>{"city": "Oslo"}')
    role_form = '<|start|>assistant to=functions.get_time<|channel|>commentary json<|message|>{"zone": "CET"}'
    reasoning, answer, calls = split([channel_form[:40], channel_form[40:], role_form])
    assert reasoning == "Need the weather." and answer == ""
    assert calls == [("get_weather", '{"city": "Oslo"}'), ("get_time", '{"zone": "CET"}')]
    text, parsed = parse("gpt-oss", answer, TOOLS, calls)
    assert [(c.name, c.arguments) for c in parsed] == [("get_weather", {"city": "Oslo"}), ("get_time", {"zone": "CET"})]
    # Unknown tools and broken arguments are not calls.
    assert parse("gpt-oss", "", TOOLS, [("rm_rf", "{}"), ("get_time", '{"zone": ')]) == ("", [])


def test_a_preamble_is_answer_a_builtin_tool_is_reasoning_and_plain_text_streams_at_once():
    assert split(["<|channel|>commentary<|message|>Checking.<|end|><|start|>assistant<|channel|>final<|message|>Done."]) \
        == ("", "Checking.Done.", [])
    assert split(['<|channel|>analysis to=browser.search<|message|>{"q": "x"}<|end|>'
                  "<|start|>assistant<|channel|>final<|message|>ok"])[:2] == ('{"q": "x"}', "ok")
    # A model that does not write harmony: its text is the answer, shown as it comes, not at the end.
    splitter = HarmonySplitter()
    assert splitter.feed("Hello") == [(False, "Hello")] and splitter.feed(" there") == [(False, " there")]
    # A header that never ends is not one: shown, not held forever.
    assert split(["<|channel|>" + "x" * (MAX_HEADER + 1)])[1].endswith("x" * 10)
    assert split(["<|chan"])[1] == "<|chan"  # a cut-off start is kept, not lost


def test_the_template_renders_tools_without_descriptions():
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    formatter = Jinja2ChatFormatter(template=TEMPLATE, eos_token="<|return|>", bos_token="<|startoftext|>")
    prompt = formatter(messages=[{"role": "user", "content": "Weather in Oslo?"}], tools=for_template([WEATHER, TIME])).prompt
    assert "namespace functions" in prompt and "type get_weather" in prompt and "// The time in a zone." in prompt
    assert prompt.endswith("<|start|>assistant")


@pytest.fixture(scope="module")
def oss(starter_gguf, tmp_path_factory):
    path = write_with_template(starter_gguf, tmp_path_factory.mktemp("oss") / "starter-gpt-oss.gguf", TEMPLATE, HARMONY)
    with load_model(path, n_ctx=2048, n_threads=2) as model:
        yield model


def accepts(model, grammar: str, document: str) -> bool:
    import llguidance

    vocabulary = model._loaded.grammar_vocabulary()
    matcher = llguidance.LLMatcher(vocabulary, grammar, log_level=0)
    return matcher.consume_tokens(model.tokenize(document)) and matcher.is_accepting()


@pytest.mark.slow
def test_grammars_name_harmonys_special_tokens(oss):
    assert len(oss.tokenize("<|channel|><|message|>")) == 2  # the family's tokens, not spelled out
    calls = call_grammar({"get_time": TOOLS["get_time"]})
    head = "<|channel|>commentary to=functions.get_time <|constrain|>json<|message|>"
    assert accepts(oss, calls, head + '{"zone":"UTC"}')
    assert accepts(oss, calls, "<|channel|>analysis<|message|>Time?<|end|><|start|>assistant" + head + '{"zone":"UTC"}')
    assert not accepts(oss, calls, head + '{"city":"Oslo"}')
    answer = answer_grammar(json_grammar({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}))
    assert accepts(oss, answer, '<|channel|>analysis<|message|>hm {x}<|end|><|start|>assistant<|channel|>final<|message|>{"a":1}')
    assert not accepts(oss, answer, "<|channel|>final<|message|>one")


@pytest.mark.slow
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_a_required_call_and_a_schema_on_gpt_oss_parse_and_validate(oss, temperature):
    from test_tools import assert_required_calls_validate

    assert_required_calls_validate(oss, temperature)
    messages = [{"role": "user", "content": "What is the weather in Oslo?"}]
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}, "celsius": {"type": "integer"}},
              "required": ["city", "celsius"]}
    answer = collect(oss.chat(messages, SamplingOptions(temperature=temperature, seed=5, max_tokens=120,
                                                        grammar=json_grammar(schema))))
    assert answer.finished.reason in ("stop", "length")
    if answer.finished.reason == "stop":  # the final channel's text alone, and it validates
        jsonschema.validate(json.loads(answer.text), schema)


@pytest.mark.slow
def test_the_openai_api_returns_gpt_oss_tool_calls(oss, tmp_path):
    import openai
    from server_process import ServerProcess, isolated_env

    server = ServerProcess("-m", str(oss.path), "--ctx", "2048", "--threads", "2", "--parallel", "1", env=isolated_env(tmp_path))
    try:
        api = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)
        reply = api.chat.completions.create(model=str(oss.path), messages=[{"role": "user", "content": "Time in Oslo?"}],
                                            tools=[WEATHER, TIME], tool_choice="required", temperature=0, max_tokens=120)
        choice = reply.choices[0]
        assert choice.finish_reason == "tool_calls" and len(choice.message.tool_calls) == 1, choice
        call = choice.message.tool_calls[0]
        jsonschema.validate(json.loads(call.function.arguments), TOOLS[call.function.name])
        assert "<|" not in (choice.message.content or "")  # no harmony markup leaks into the text
    finally:
        server.stop()
