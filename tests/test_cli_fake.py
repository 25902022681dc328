"""`run` and the request path on the scripted engine (tests/fake_backend.py), in this process:
what the CLI assembles, prints and exits with, where llama.cpp's own behaviour is not the point.
The real model's runs are in test_cli_run.py."""

from __future__ import annotations

import json

import pytest
from conftest import assert_one_line_error, invoke

from localllm import SamplingOptions, collect, load_model
from localllm.errors import UsageError

REPLY = "First line.\n\nSecond paragraph, after a blank line."


def test_run_prints_the_reply_and_json_reports_the_engine_and_counts(fake_model):
    model = fake_model(reply=REPLY)
    streamed = invoke("run", "-m", str(model), "Hello")
    assert streamed.returncode == 0, streamed
    assert streamed.stdout == REPLY + "\n"
    report = invoke("run", "-m", str(model), "--json", "Hello")
    out = json.loads(report.stdout)
    assert out["text"] == REPLY and out["finish_reason"] == "stop" and out["settings"]["engine"] == "fake"
    assert out["usage"]["completion_tokens"] == len(REPLY.encode())
    assert out["usage"]["prompt_tokens"] == len("<user>Hello\n<assistant>".encode())
    assert invoke("run", "-m", str(model), "--no-stream", "Hello").stdout == streamed.stdout


def test_stdin_is_context_before_the_prompt_and_the_system_prompt_comes_first(fake_model):
    echo = fake_model(echo=True)
    result = invoke("run", "-m", str(echo), "-s", "Be brief.", "-p", "What is it?", stdin=b"A document.\n")
    assert result.returncode == 0, result
    assert result.stdout == "<system>Be brief.\n<user>A document.\n\nWhat is it?\n<assistant>\n"
    raw = invoke("run", "-m", str(echo), "--raw", "2 + 2 =")
    assert raw.stdout == "2 + 2 =\n", "--raw gives the text as it is, with no template"


def test_limits_and_stop_strings_follow_the_one_set_of_decode_rules(fake_model):
    model = fake_model(reply=REPLY)
    limited = json.loads(invoke("run", "-m", str(model), "--json", "--max-tokens", "5", "Hello").stdout)
    assert limited["text"] == REPLY[:5] and limited["finish_reason"] == "length"
    stopped = json.loads(invoke("run", "-m", str(model), "--json", "--stop", r"\n\n", "Hello").stdout)
    assert stopped["text"] == "First line." and stopped["finish_reason"] == "stop", "the escape is a blank line"
    endless = json.loads(invoke("run", "-m", str(model), "--json", "--ignore-eos", "--max-tokens", "80", "Hello").stdout)
    assert endless["usage"]["completion_tokens"] == 80 and endless["text"].startswith(REPLY)


def test_a_prompt_past_the_window_is_exit_5_naming_the_option(fake_model):
    result = invoke("run", "-m", str(fake_model(reply="x")), "--ctx", "256", "word " * 100)
    assert_one_line_error(result, 5, "context window is 256", "--ctx")


@pytest.mark.parametrize("option, value, says", [
    ("--top-p", "0", "top-p must be above 0 and at most 1, not 0"),
    ("--presence-penalty", "3", "presence-penalty must be from -2 to 2"),
    ("--frequency-penalty", "nan", "frequency-penalty must be a finite number"),
    ("--ctx", "100", "context size must be 0 (the model's trained context) or 256"),
    ("--threads", "many", "'many' is not a whole number"),
])
def test_the_option_table_refuses_in_one_line_naming_the_flag(fake_model, option, value, says):
    assert_one_line_error(invoke("run", "-m", str(fake_model(reply="x")), option, value, "Hello"), 2, option, says)


def test_the_library_says_the_same_as_the_command_line():
    for field, value, says in (("top_p", 0, "top-p must be above 0 and at most 1, not 0"),
                               ("presence_penalty", 3.0, "presence-penalty must be from -2 to 2, not 3.0")):
        with pytest.raises(UsageError, match=says):
            SamplingOptions(**{field: value})


def test_an_engine_that_cannot_take_a_grammar_refuses_it_before_any_work(fake_model):
    with load_model(fake_model(reply="{}")) as model:
        assert model.engine == "fake" and not model.capabilities.grammar
        with pytest.raises(UsageError, match="fake engine cannot bind an answer to a schema"):
            model.chat([{"role": "user", "content": "Hi"}], SamplingOptions(grammar='start: "{}"'))
        assert collect(model.generate([104, 105])).text == "{}", "token ids in: it can take those"


def test_tools_on_a_template_that_renders_none_are_refused(fake_model):
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    with load_model(fake_model(reply="hi")) as model:
        with pytest.raises(UsageError, match="not supported for this model's chat template"):
            model.chat([{"role": "user", "content": "Hi"}], tools=[tool])


def test_an_unknown_engine_names_the_registered_ones(fake_model):
    with pytest.raises(UsageError, match="unknown engine 'warp'.*llamacpp or transformers or fake"):
        load_model(fake_model(reply="x"), engine="warp")


def test_raw_refuses_a_system_prompt():
    result = invoke("run", "-m", "starter", "--raw", "-s", "Be brief.", "Hi")
    assert_one_line_error(result, 2, "--system", "--raw")


def test_list_shows_the_starter():
    data = json.loads(invoke("list", "--json").stdout)
    assert [m["source"] for m in data] == ["starter"]
    assert data[0]["size"] > 90_000_000
