"""Thinking models: the reasoning kept apart from the answer, from scripted token streams and on
the starter carrying real chat templates of thinking families (tests/data/chat_templates)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import assert_one_line_error, run_cli
from embedding_gguf import write_with_template

from localllm.events import Finished, Reasoning, Timings, Token, Usage
from localllm.generation.reasoning import (
    ThinkSplitter,
    can_switch,
    opened_by_prompt,
    split_events,
    thinks,
)

TEMPLATES = Path(__file__).parent / "data" / "chat_templates"
QWEN3 = (TEMPLATES / "Qwen-Qwen3-0.6B.jinja").read_text()
R1 = (TEMPLATES / "deepseek-ai-DeepSeek-R1-Distill-Llama-8B.jinja").read_text()
LLAMA = (TEMPLATES / "meta-llama-Llama-3.2-3B-Instruct.jinja").read_text()


def split(pieces, inside=False):
    events = [Token(p) for p in pieces] + [Finished("stop", Usage(1, len(pieces)), Timings(0, 0, 0, None, None), 0)]
    out = list(split_events(iter(events), ThinkSplitter(inside)))
    reasoning = "".join(e.text for e in out if isinstance(e, Reasoning))
    answer = "".join(e.text for e in out if isinstance(e, Token))
    assert isinstance(out[-1], Finished)
    return reasoning, answer


def test_the_templates_say_which_models_think_and_which_can_switch():
    assert thinks(QWEN3) and can_switch(QWEN3)
    assert thinks(R1) and not can_switch(R1)
    assert not thinks(LLAMA) and not thinks(None)
    assert opened_by_prompt("<｜User｜>hi<｜Assistant｜><think>\n")
    assert not opened_by_prompt("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert not opened_by_prompt("<|im_start|>assistant\n")


TEXT = "<think>\nThe user greets me.\n</think>\n\nHello! How can I help?"


@pytest.mark.parametrize("cut", range(1, len(TEXT)))
def test_tags_split_anywhere_across_tokens(cut):
    reasoning, answer = split([TEXT[:cut], TEXT[cut:]])
    assert reasoning == "\nThe user greets me.\n" and answer == "Hello! How can I help?"


def test_one_character_per_token_and_a_stream_that_starts_inside():
    assert split(list(TEXT)) == ("\nThe user greets me.\n", "Hello! How can I help?")
    # DeepSeek-R1: the template opened the block; the output only closes it.
    assert split(["Let me", " think.</th", "ink>\n\nThe answer is 4."], inside=True) == ("Let me think.", "The answer is 4.")


def test_a_think_tag_inside_the_answer_is_text_and_an_unclosed_block_stays_reasoning():
    assert split(["Use the ", "<think>", " tag."]) == ("", "Use the <think> tag.")
    assert split(["<think>", "still going"]) == ("still going", "")
    assert split(["No thinking here."]) == ("", "No thinking here.")


def test_the_splitter_holds_back_only_what_may_be_a_tag():
    splitter = ThinkSplitter()
    assert splitter.feed("<thi") == []
    assert splitter.feed("nk>abc</") == [(True, "abc")]
    assert splitter.feed("think>") == []
    assert splitter.feed("\n\nDone") == [(False, "Done")]


@pytest.fixture(scope="module")
def qwen3_starter(starter_gguf, tmp_path_factory):
    return str(write_with_template(starter_gguf, tmp_path_factory.mktemp("qwen3") / "starter-qwen3.gguf", QWEN3))


@pytest.fixture(scope="module")
def r1_starter(starter_gguf, tmp_path_factory):
    return str(write_with_template(starter_gguf, tmp_path_factory.mktemp("r1") / "starter-r1.gguf", R1))


@pytest.mark.slow
def test_no_think_renders_qwen3s_empty_block_and_think_does_not(qwen3_starter):
    def run(*flags):
        result = run_cli("run", "-m", qwen3_starter, "-t", "0", "--max-tokens", "8", "--json", *flags, "Hi")
        assert result.returncode == 0, result
        return json.loads(result.stdout)

    off, on = run("--no-think"), run("--think")
    # Qwen3's template writes "<think>\n\n</think>\n\n" into the prompt to switch thinking off.
    assert off["usage"]["prompt_tokens"] > on["usage"]["prompt_tokens"]
    assert off["settings"]["think"] is False and off["reasoning"] is None


@pytest.mark.slow
def test_a_model_whose_prompt_opens_the_block_reasons_on_stderr_not_stdout(r1_starter):
    result = run_cli("run", "-m", r1_starter, "-t", "0", "--max-tokens", "12", "--json", "Hi")
    assert result.returncode == 0, result
    answer = json.loads(result.stdout)
    # The starter never closes the block R1's template opened: all of it is reasoning.
    assert answer["reasoning"] and answer["text"] == ""
    shown = run_cli("run", "-m", r1_starter, "-t", "0", "--max-tokens", "12", "--show-thinking", "Hi")
    assert shown.stdout.strip() == "" and answer["reasoning"].strip()[:20] in shown.stderr
    assert_one_line_error(run_cli("run", "-m", r1_starter, "--no-think", "Hi"), 2, "cannot switch its thinking")
    assert_one_line_error(run_cli("run", "-m", "starter", "--raw", "--think", "Hi"), 2, "--raw")


SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer"}},
          "required": ["name", "age"]}


@pytest.fixture(scope="module")
def vocabulary(starter_model):
    return starter_model._loaded.grammar_vocabulary()


@pytest.mark.slow
def test_a_grammar_binds_the_answer_after_the_thinking_not_the_thinking(vocabulary):
    from test_structured import accepts

    from localllm.generation.constraints import (
        after_thinking,
        json_grammar,
        text_grammar,
    )

    opened = after_thinking(json_grammar(SCHEMA), opened=True)  # DeepSeek-R1: the prompt opened the block
    assert accepts(vocabulary, opened, 'Maybe {"name": 3} or <b>?</think>\n\n{"name":"Ann","age":3}')
    assert accepts(vocabulary, opened, 'ok</think>{"name":"Ann","age":3}')
    assert not accepts(vocabulary, opened, 'ok</think>\n\nAnn is 3.')
    assert not accepts(vocabulary, opened, 'ok</think>\n\n{"name":"Ann"}')  # the answer still follows the schema
    assert not accepts(vocabulary, opened, '{"name":"Ann","age":3}')  # the block was never closed
    assert not accepts(vocabulary, opened, 'a</think>b</think>{"name":"Ann","age":3}')  # the first close ends it
    may_open = after_thinking(json_grammar(SCHEMA), opened=False)  # Qwen3: the model may think first
    assert accepts(vocabulary, may_open, '{"name":"Ann","age":3}')
    assert accepts(vocabulary, may_open, '<think>\nShe is three.\n</think>\n\n{"name":"Ann","age":3}')
    assert not accepts(vocabulary, may_open, 'She is three. {"name":"Ann","age":3}')
    gbnf = after_thinking(text_grammar('root ::= "yes" | "no"'), opened=True)
    assert accepts(vocabulary, gbnf, "hmm</think>\nyes") and not accepts(vocabulary, gbnf, "hmm</think>\nmaybe")


@pytest.mark.slow
def test_where_the_tags_are_special_tokens_the_grammar_names_them(starter_gguf, tmp_path):
    """Qwen3's GGUFs have <think> and </think> as single user-defined tokens, which llguidance treats
    as special: a grammar spelling "</think>" would forbid the very token the model writes."""
    import llguidance
    from embedding_gguf import THINK_TOKENS

    from localllm import load_model
    from localllm.generation.constraints import json_grammar
    from localllm.generation.reasoning import answer_grammar

    path = write_with_template(starter_gguf, tmp_path / "starter-qwen3-tokens.gguf", QWEN3, THINK_TOKENS)
    with load_model(path, n_ctx=512, n_threads=2) as model:
        close = model.special_token("</think>")
        assert close is not None and model.tokenize("x</think>")[-1] == close and model.special_token("hello") is None
        grammar = answer_grammar(model.chat_template, {}, "<|im_start|>assistant\n", json_grammar(SCHEMA),
                                 special=model.special_token)
        vocabulary = model._loaded.grammar_vocabulary()

        def accepts(text):
            matcher = llguidance.LLMatcher(vocabulary, grammar, log_level=0)
            return matcher.consume_tokens(model.tokenize(text)) and matcher.is_accepting()

        assert accepts('<think>\nHm, {a} and </ or <b>.\n</think>\n\n{"name":"Ann","age":3}')
        assert accepts('{"name":"Ann","age":3}') and not accepts("<think>x</think>Ann is 3.")


@pytest.mark.slow
@pytest.mark.parametrize("temperature", [0, 1])
def test_a_schema_on_a_thinking_model_leaves_the_reasoning_free_and_the_answer_valid(qwen3_starter, r1_starter, temperature):
    import jsonschema

    def run(model):
        result = run_cli("run", "-m", model, "-t", str(temperature), "--seed", "5", "--max-tokens", "60", "--json",
                         "--schema", json.dumps(SCHEMA), "Describe a person.")
        assert result.returncode == 0, result
        return json.loads(result.stdout), result.stderr

    qwen3, _ = run(qwen3_starter)  # thinking on (the template's default): the grammar lets the model open a block
    if qwen3["finish_reason"] == "stop":
        jsonschema.validate(json.loads(qwen3["text"]), SCHEMA)
    r1, stderr = run(r1_starter)
    # The starter never closes the block R1's template opens: the grammar leaves all of that free
    # text (no JSON in it), and the cut is reported, since no answer followed.
    assert r1["reasoning"].strip() and not r1["reasoning"].lstrip().startswith("{") and r1["text"] == ""
    assert r1["finish_reason"] == "length" and "cut off by the token limit" in stderr


@pytest.mark.slow
def test_the_server_keeps_reasoning_apart_in_both_apis(r1_starter, tmp_path):
    import httpx
    from server_process import ServerProcess, isolated_env

    server = ServerProcess("-m", r1_starter, "--ctx", "1024", "--threads", "2", "--parallel", "1", env=isolated_env(tmp_path))
    try:
        body = {"model": r1_starter, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 12, "temperature": 0}
        whole = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=60).json()["choices"][0]["message"]
        # R1's template opens <think>; the starter never closes it: all of it is reasoning, none content.
        assert whole["reasoning_content"].strip() and whole["content"] == ""
        lines = httpx.post(f"{server.url}/v1/chat/completions", json={**body, "stream": True}, timeout=60).text.splitlines()
        deltas = [json.loads(line[6:])["choices"][0]["delta"] for line in lines if line.startswith("data: {")]
        assert "".join(d.get("reasoning_content", "") for d in deltas) == whole["reasoning_content"]
        assert not "".join(d.get("content") or "" for d in deltas)
        ollama = httpx.post(f"{server.url}/api/chat", json={"model": r1_starter, "messages": body["messages"], "stream": False,
                                                             "options": {"temperature": 0, "num_predict": 12}},
                            timeout=60).json()["message"]
        assert ollama["thinking"] == whole["reasoning_content"] and ollama["content"] == ""
    finally:
        server.stop()


@pytest.mark.slow
async def test_the_chat_folds_the_reasoning_and_saves_the_answer_alone(r1_starter, isolated_home):
    from localllm.tui import ChatApp
    from test_tui import send, wait_for
    from textual.widgets import Collapsible, Static

    from localllm import SamplingOptions, load_model
    from localllm.session import ChatStore, to_markdown

    with load_model(r1_starter, n_ctx=1024, n_threads=2) as model:
        class Borrowed:
            def __getattr__(self, name):
                return getattr(model, name)

            def close(self):
                pass

        app = ChatApp(model_ref="r1", store=ChatStore(), loader=lambda ref, options: Borrowed())
        app.sampling = SamplingOptions(temperature=0, max_tokens=12)  # the session starts with these
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_for(pilot, lambda: app.session is not None)
            await send(pilot, app, "Hi")
            [fold] = app.query(Collapsible)
            assert fold.collapsed and fold.title.startswith("thinking (")
            # What is sent back next turn is the answer alone: here nothing, since the starter never
            # closes the block R1's template opened. The reasoning is saved beside it.
            assert [(m.role, m.content) for m in app.session.messages] == [("user", "Hi"), ("assistant", "")]
            thought = fold.query_one(".thought", Static).render()
            assert app.session._chat_messages(0) == [{"role": "user", "content": "Hi"}]
            conversation = app.session.conversation_id
            saved = ChatStore().messages(conversation)
            assert saved[1].reasoning.strip() and saved[1].reasoning.strip() == str(thought)
            # Reopened, the chat shows the fold again under its answer.
            app.action_new_chat()
            await pilot.pause()
            assert not app.query(Collapsible)
            app.open_conversation(conversation)
            await pilot.pause()
            [again] = app.query(Collapsible)
            assert again.collapsed and str(again.query_one(".thought", Static).render()) == str(thought)
            assert "<details><summary>thinking</summary>" in to_markdown(ChatStore().conversation(conversation), saved)


@pytest.mark.slow
async def test_the_chat_takes_think_and_no_think_where_the_template_can_switch(qwen3_starter, r1_starter, isolated_home):
    from localllm.tui import ChatApp
    from test_tui import wait_for
    from textual.widgets import Static

    from localllm import SamplingOptions, load_model
    from localllm.events import Finished
    from localllm.session import ChatSession, ChatStore

    with load_model(qwen3_starter, n_ctx=1024, n_threads=2) as model:
        def prompt_tokens(think):
            session = ChatSession(model, ChatStore(), "qwen3", sampling=SamplingOptions(temperature=0, max_tokens=4), think=think)
            [finished] = [e for e in session.send("Hi") if isinstance(e, Finished)]
            return finished.usage.prompt_tokens

        # --no-think: Qwen3's template writes its empty think block into the prompt.
        assert prompt_tokens(False) > prompt_tokens(True)

    for path, switches in ((qwen3_starter, True), (r1_starter, False)):
        app = ChatApp(model_ref="m", store=ChatStore(), loader=lambda ref, options: load_model(path, n_ctx=1024, n_threads=2),
                      think=False)
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_for(pilot, lambda: app.session is not None)
            notices = [str(w.render()) for w in app.query(".notice").results(Static)]
            assert app.session.think is (False if switches else None)
            assert any("--no-think does not apply" in n for n in notices) is not switches


def test_the_switches_each_template_takes():
    from localllm.errors import UsageError
    from localllm.generation.reasoning import template_variables

    oss = (TEMPLATES / "openai-gpt-oss-120b.jinja").read_text()
    assert template_variables(QWEN3, False) == {"enable_thinking": False}
    assert template_variables(R1, True) == {}  # it always thinks: nothing to ask
    assert template_variables(LLAMA, False) == {} and template_variables(oss, None, "low") == {"reasoning_effort": "low"}
    for template, think, effort, message in ((R1, False, None, "cannot switch its thinking off"),
                                             (oss, False, None, "a low reasoning effort shortens it"),
                                             (LLAMA, True, None, "does not think"),
                                             (QWEN3, None, "low", "takes no reasoning effort"),
                                             (oss, None, "max", "must be low, medium, high")):
        with pytest.raises(UsageError, match=message):
            template_variables(template, think, effort)


@pytest.mark.slow
def test_the_reasoning_effort_reaches_gpt_oss_template(starter_gguf, tmp_path):
    from embedding_gguf import HARMONY

    oss = write_with_template(starter_gguf, tmp_path / "starter-gpt-oss.gguf", (TEMPLATES / "openai-gpt-oss-120b.jinja").read_text(),
                              HARMONY)
    from localllm import load_model
    from localllm.generation.reasoning import template_variables

    with load_model(oss, n_ctx=1024, n_threads=2) as model:
        ask = [{"role": "user", "content": "Hi"}]
        assert "Reasoning: low" in model.format_chat(ask, **template_variables(model.chat_template, None, "low"))
        assert "Reasoning: medium" in model.format_chat(ask)
    result = run_cli("run", "-m", str(oss), "-t", "0", "--max-tokens", "4", "--json", "--reasoning-effort", "high", "Hi")
    assert result.returncode == 0, result
    assert json.loads(result.stdout)["settings"]["reasoning_effort"] == "high"
    assert_one_line_error(run_cli("run", "-m", "starter", "--reasoning-effort", "low", "Hi"), 2, "takes no reasoning effort")
    assert_one_line_error(run_cli("run", "-m", str(oss), "--no-think", "Hi"), 2, "cannot switch its thinking off")


@pytest.mark.slow
def test_both_apis_switch_thinking_where_the_template_can(qwen3_starter, tmp_path):
    import httpx
    from server_process import ServerProcess, isolated_env

    server = ServerProcess("-m", qwen3_starter, "--ctx", "1024", "--threads", "2", "--parallel", "1", env=isolated_env(tmp_path))
    try:
        ask = [{"role": "user", "content": "Hi"}]

        def openai(**fields):
            return httpx.post(f"{server.url}/v1/chat/completions", timeout=60, json={
                "model": qwen3_starter, "messages": ask, "max_tokens": 2, "temperature": 0, **fields})

        def ollama(**fields):
            return httpx.post(f"{server.url}/api/chat", timeout=60, json={
                "model": qwen3_starter, "messages": ask, "stream": False, "options": {"num_predict": 2}, **fields})

        # Thinking off: Qwen3's template writes its empty think block into the prompt.
        off = openai(chat_template_kwargs={"enable_thinking": False}).json()["usage"]["prompt_tokens"]
        on = openai(chat_template_kwargs={"enable_thinking": True}).json()["usage"]["prompt_tokens"]
        assert off > on
        # Ollama's count leaves out the cached prefix: after the same thinking-on prompt each time,
        # thinking off has the empty block's tokens to read, thinking on almost nothing.
        on_again = ollama(think=True).json()["prompt_eval_count"]
        openai(chat_template_kwargs={"enable_thinking": True})
        assert ollama(think=False).json()["prompt_eval_count"] >= off - on > on_again
        for refused, where in ((openai(reasoning_effort="low"), "reasoning effort"), (ollama(think="high"), "reasoning effort"),
                               (openai(chat_template_kwargs={"tools_in_user_message": True}), "tools_in_user_message"),
                               (ollama(think=3), "'think' must be")):
            assert refused.status_code == 400 and where in refused.text, refused.text
    finally:
        server.stop()
