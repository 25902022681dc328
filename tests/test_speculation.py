"""Speculative decoding (localllm.generation.speculation): the drafter, the cost curve and the
controller on scripted numbers, then greedy answers on the real starter drafted and not."""

from __future__ import annotations

import json

import pytest
from conftest import assert_one_line_error, invoke, run_cli

from localllm.generation.speculation import MARGIN, MODEL, Controller, CostCurve, NgramDrafter
from localllm.options import SamplingOptions


def test_the_drafter_proposes_what_followed_the_longest_recent_match():
    drafter = NgramDrafter([1, 2, 3, 4, 5, 9, 2, 3, 7, 8])
    assert drafter.propose(5) == ([], 0), "8 alone never occurred before"
    drafter.extend([1, 2, 3])
    assert drafter.propose(3) == ([4, 5, 9], 3), "1 2 3 occurred once, followed by 4 5 9"
    drafter.extend([4])
    assert drafter.propose(2) == ([5, 9], 4)
    shorter = NgramDrafter([5, 2, 3, 7, 2, 3, 8, 6, 2, 3])
    assert shorter.propose(2) == ([8, 6], 2), "the most recent occurrence wins"


def curve(single: float, **sizes: float) -> CostCurve:
    measured = CostCurve()
    measured.record(1, single)
    for size, seconds in sizes.items():
        measured.record(int(size[1:]), seconds)
    return measured


def test_nothing_is_drafted_before_a_step_was_timed_or_without_a_match():
    assert Controller(CostCurve()).draft_length(8, 4) == 0
    assert Controller(curve(0.04)).draft_length(0, 4) == 0


def test_the_controller_drafts_only_where_the_measured_costs_and_acceptance_pay():
    # This machine's curve for the 1.5B model: 2 tokens 1.33x a step, 9 tokens 4.5x, 17 tokens 5.6x.
    costly = curve(0.0376, b2=0.050, b3=0.065, b5=0.090, b9=0.170, b17=0.210)
    controller = Controller(costly)
    for _ in range(20):  # a run of rejections: drafting would only cost
        controller.record(2, 1, 0)
    assert controller.draft_length(16, 2) == 0
    copying = Controller(costly)
    for _ in range(20):  # every draft kept: long drafts pay even at 5.6x a step
        copying.record(4, 16, 16)
    k = copying.draft_length(16, 4)
    assert k == 15, "a 16-token batch is untimed: taken at the timed 9-token batch's cost, it beats the timed 17"
    expected = (1 - 0.99 ** 16) / 0.01
    assert expected / costly.cost(16) > MARGIN / costly.cost(1)


def test_the_curve_is_pessimistic_until_a_batch_is_timed_then_tries_untimed_sizes():
    learned = curve(0.04)
    assert learned.cost(3) == pytest.approx(0.04 + 2 * 0.5 * 0.04), "half a step per extra token at first"
    learned.record(5, 0.09)
    assert learned.cost(5) == 0.09
    assert learned.cost(3) == 0.04 and learned.cost(9) == 0.09, "an untimed size costs what the timed one below it costs"
    learned.record(9, 0.2)
    assert learned.cost(8) == 0.09 and learned.cost(17) == 0.2


def test_a_bad_spec_value_is_one_line():
    assert_one_line_error(invoke("run", "-m", "starter", "--spec", "always", "hi"), 2, "--spec", "auto")
    assert_one_line_error(invoke("run", "-m", "starter", "--spec", "draft", "hi"), 2, "--draft MODEL")


def test_a_draft_model_pays_only_past_its_break_even_acceptance():
    costly = curve(0.0376, b2=0.050, b3=0.065, b5=0.090, b9=0.170, b17=0.210)
    controller = Controller(costly)
    free, cheap, dear = controller.break_even(0.0), controller.break_even(0.004), controller.break_even(0.02)
    assert free < cheap < dear < 1, "the dearer its tokens, the more of them must be kept"
    assert controller.break_even(0.05) is None, "slower than the model itself: never"
    for _ in range(20):  # the draft model's drafts kept, more than its break-even asks
        controller.record(MODEL, 4, 4)
    assert controller.draft_length(16, MODEL, per_token=0.004) > 0
    assert controller.draft_length(16, MODEL, per_token=0.05) == 0


CODE = "\n".join([
    "def parse_config(path):",
    "    with open(path) as f:",
    "        data = json.load(f)",
    "    if 'name' not in data:",
    "        raise ValueError('missing name')",
    "    result = {}",
    "    for key, value in data.items():",
    "        if isinstance(value, str):",
    "            result[key] = value.strip()",
    "        else:",
    "            result[key] = value",
    "    return result",
])


def answer(spec: str, prompt: str, *extra: str, stdin: str = CODE) -> dict:
    result = run_cli("run", "-m", "starter", "--json", "--max-tokens", "120", "--spec", spec, *extra, "-p", prompt,
                     stdin=stdin.encode())
    assert result.returncode == 0, result
    return json.loads(result.stdout)


@pytest.mark.slow
def test_a_code_edit_is_the_same_drafted_or_not_and_the_drafts_are_reported():
    prompt = "Rewrite this function with the variable result renamed to output. Give the whole code."
    plain, every, auto = (answer(spec, prompt, "-t", "0") for spec in ("off", "ngram", "auto"))
    assert plain["usage"]["drafted_tokens"] == 0
    assert every["text"] == plain["text"] and auto["text"] == plain["text"]
    assert every["usage"]["accepted_tokens"] > 20, "copied code: most drafts are the model's own picks"
    assert 0 < auto["usage"]["accepted_tokens"] <= auto["usage"]["drafted_tokens"]


@pytest.mark.slow
def test_a_draft_model_drafts_and_the_answer_is_the_same(tmp_path):
    prompt = "Rewrite this function with the variable result renamed to output. Give the whole code."
    plain = answer("off", prompt, "-t", "0")
    drafted = answer("draft", prompt, "-t", "0", "--draft", "starter")  # the starter drafting for itself
    assert drafted["text"] == plain["text"]
    assert drafted["usage"]["accepted_tokens"] > 40, "its own greedy continuation: kept"
    auto = answer("auto", prompt, "-t", "0", "--draft", "starter")
    assert auto["text"] == plain["text"] and auto["usage"]["accepted_tokens"] > 0
    (tmp_path / "config.json").write_text(json.dumps({"drafts": [{"model": "starter", "draft": "starter"}]}))
    configured = run_cli("run", "-m", "starter", "--json", "--max-tokens", "120", "--spec", "draft", "-t", "0", "-p", prompt,
                         stdin=CODE.encode(), env={"LOCALLLM_HOME": str(tmp_path)})
    assert configured.returncode == 0, configured
    assert json.loads(configured.stdout)["usage"]["accepted_tokens"] > 40, "the settings' draft for this model"


@pytest.mark.slow
def test_a_draft_model_of_another_vocabulary_is_refused_in_one_line(starter_gguf, tmp_path):
    from embedding_gguf import THINK_TOKENS, write_with_template
    from localllm.model import load_model

    renamed = write_with_template(starter_gguf, tmp_path / "renamed.gguf", "{{ messages[0]['content'] }}", THINK_TOKENS)
    result = run_cli("run", "-m", "starter", "--draft", str(renamed), "-t", "0", "--max-tokens", "4", "hi")
    assert_one_line_error(result, 4, "renamed.gguf", "cannot draft for", "token 3 differs")
    with load_model("starter", draft="starter", speculation="draft") as loaded:  # the Python API
        reply = loaded.chat([{"role": "user", "content": "Say hello."}], SamplingOptions(temperature=0, max_tokens=8))
        assert list(reply)


@pytest.mark.slow
def test_nothing_is_drafted_when_sampling():
    sampled = answer("ngram", "Write a short poem about the sea.", "-t", "0.8")
    assert sampled["usage"]["drafted_tokens"] == 0, "drafts are checked against the argmax: greedy answers only"


LINES = {"type": "object", "properties": {"lines": {"type": "array", "items": {"type": "string"}}}, "required": ["lines"]}


@pytest.mark.slow
def test_drafts_under_a_schema_are_masked_and_give_the_same_answer():
    prompt = ('Put each line of this text in the JSON array "lines", unchanged: '
              + " ".join(f"The quick brown fox jumps over the lazy {animal}." for animal in ("dog", "cat", "bird", "fish")))
    bound = [answer(spec, prompt, "-t", "0", "--max-tokens", "200", "--schema", json.dumps(LINES),
                    stdin="") for spec in ("off", "ngram", "auto")]
    assert bound[1]["text"] == bound[0]["text"] and bound[2]["text"] == bound[0]["text"]
    assert bound[1]["usage"]["accepted_tokens"] > 20, "the schema's repeated keys and the copied text are drafted and kept"
    assert bound[0]["text"].startswith('{"lines":[')


@pytest.mark.slow
def test_serve_drafts_per_slot_and_reports_them(tmp_path):
    import threading

    import openai
    from server_process import ServerProcess, isolated_env

    prompt = "Rewrite this function with the variable result renamed to output. Give the whole code.\n\n" + CODE
    texts, usages = {}, {}
    for spec, draft in (("off", ()), ("ngram", ()), ("draft", ("--draft", "starter"))):
        server = ServerProcess("-m", "starter", "--parallel", "2", "--ctx", "2048", "--spec", spec, *draft,
                               env=isolated_env(tmp_path / spec))
        try:
            api = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)

            def ask(key: str, text: str = prompt) -> None:
                reply = api.chat.completions.create(model="starter", messages=[{"role": "user", "content": text}],
                                                    temperature=0, max_tokens=120)
                texts[spec, key], usages[spec, key] = reply.choices[0].message.content, reply.usage
                assert reply.model_extra["timings"]["draft_n_accepted"] == reply.usage.completion_tokens_details.accepted_prediction_tokens

            ask("alone")
            together = [threading.Thread(target=ask, args=(f"together{i}", prompt + "\n" * i)) for i in range(2)]
            for thread in together:
                thread.start()
            for thread in together:
                thread.join(120)
        finally:
            server.stop()
    assert texts["ngram", "alone"] == texts["off", "alone"] == texts["draft", "alone"]
    assert usages["off", "alone"].completion_tokens_details.accepted_prediction_tokens == 0
    assert usages["ngram", "alone"].completion_tokens_details.accepted_prediction_tokens > 20
    assert usages["draft", "alone"].completion_tokens_details.accepted_prediction_tokens > 20, "the draft model, alone"
    for i in range(2):  # two slots drafting in one batch: each its own drafts, checked on its own rows
        details = usages["ngram", f"together{i}"].completion_tokens_details
        assert texts["ngram", f"together{i}"].strip() and details.accepted_prediction_tokens > 10


def test_the_planner_counts_a_row_of_logits_per_drafted_token(starter_gguf, spec_cache):
    from localllm.backends.llamacpp.estimate import LoadShape, estimate
    from localllm.generation.speculation import MAX_DRAFT, output_rows
    from localllm.gguf_info import inspect_file
    from localllm.options import LoadOptions

    assert output_rows(LoadOptions(speculation="off")) == 1 and output_rows(LoadOptions(n_seq=4, speculation="off")) == 4
    assert output_rows(LoadOptions()) == 1 + MAX_DRAFT, "speculation is on by default"
    assert output_rows(LoadOptions(n_seq=4)) == 4 + MAX_DRAFT, "the drafts of all sequences share MAX_DRAFT rows"
    spec = inspect_file(starter_gguf, spec_cache)
    plain, drafting = (estimate(spec, LoadShape(n_ctx=2048, outputs=rows)).ram.output for rows in (1, 1 + MAX_DRAFT))
    assert drafting == (1 + MAX_DRAFT) * plain == (1 + MAX_DRAFT) * spec.n_vocab * 4
