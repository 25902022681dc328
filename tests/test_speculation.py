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


LINES = {"type": "object", "properties": {"lines": {"type": "array", "items": {"type": "string"}}}, "required": ["lines"]}


def answer(spec: str, prompt: str, *extra: str, stdin: str = CODE) -> dict:
    result = run_cli("run", "-m", "starter", "--json", "--max-tokens", "120", "--spec", spec, *extra, "-p", prompt,
                     stdin=stdin.encode())
    assert result.returncode == 0, result
    return json.loads(result.stdout)


EDIT = "Rewrite this function with the variable result renamed to output. Give the whole code."
# Logits: more than a batch moves a position here (up to 0.93 on the starter; README, "Exactness").
NEAR_TIE = 2.0


def plain_answer(monkeypatch, messages, sampling: SamplingOptions) -> tuple[str, list[int], list[float]]:
    """Plain decoding's answer; where each token's text ends in it; and each token's margin, how
    far its two likeliest candidates were apart (logits)."""
    import numpy as np

    from localllm.backends.llamacpp.model import LlamaCppModel
    from localllm.backends.llamacpp.pieces import Pieces
    from localllm.model import collect, load_model

    picks, margins = [], []
    greedy = LlamaCppModel._greedy

    def recording(self):
        row = self._logits_row()
        low, high = np.partition(row, -2)[-2:]
        margins.append(float(high - low))
        picks.append(greedy(self))
        return picks[-1]

    monkeypatch.setattr(LlamaCppModel, "_greedy", recording)
    with load_model("starter", speculation="off") as loaded:
        text = collect(loaded.chat(messages, sampling)).text
        pieces, ends = Pieces(loaded._loaded._vocab), []
        for token in picks:
            ends.append((ends[-1] if ends else 0) + len(pieces([token])))
    monkeypatch.undo()
    return text, ends, margins


def assert_plain_up_to_near_ties(text: str, plain: tuple[str, list[int], list[float]], what) -> None:
    """Speculation may change a token only where plain decoding's two likeliest were within a batch's
    rounding of each other (README, "Exactness"): the first difference must fall on such a token."""
    reference, ends, margins = plain
    if text == reference:
        return
    first = next((i for i, (a, b) in enumerate(zip(text, reference)) if a != b), min(len(text), len(reference)))
    token = next(i for i, end in enumerate(ends) if end > first)
    assert margins[token] < NEAR_TIE, (what, first, margins[token], text[max(0, first - 40):first + 20])


@pytest.mark.slow
@pytest.mark.parametrize("schema", [None, LINES], ids=["code edit", "schema"])
def test_greedy_answers_are_plain_decodings_in_every_mode(monkeypatch, schema):
    from localllm.generation.constraints import from_options
    from localllm.model import collect, load_model

    if schema is None:
        messages = [{"role": "user", "content": f"{EDIT}\n\n{CODE}"}]
    else:
        messages = [{"role": "user", "content": 'Put each line of this text in the JSON array "lines", unchanged: '
                     + " ".join(f"The quick brown fox jumps over the lazy {a}." for a in ("dog", "cat", "bird", "fish"))}]
    sampling = SamplingOptions(temperature=0, max_tokens=120, grammar=from_options(json.dumps(schema), None) if schema else None)
    plain = plain_answer(monkeypatch, messages, sampling)
    for mode, draft in (("ngram", None), ("auto", None), ("draft", "starter"), ("auto", "starter")):
        with load_model("starter", speculation=mode, draft=draft) as loaded:
            result = collect(loaded.chat(messages, sampling))
        assert_plain_up_to_near_ties(result.text, plain, (mode, draft))
        usage = result.finished.usage
        assert usage.accepted_tokens <= usage.drafted_tokens, (mode, draft)
        if mode != "auto":  # auto drafts only what the costs it has measured so far say will pay
            assert usage.accepted_tokens > 0, (mode, draft)


@pytest.mark.slow
def test_run_reports_drafts_and_takes_a_draft_model_from_the_settings(tmp_path):
    plain, every, auto = (answer(spec, EDIT, "-t", "0") for spec in ("off", "ngram", "auto"))
    assert plain["usage"]["drafted_tokens"] == 0
    assert every["usage"]["accepted_tokens"] > 20, "copied code: most drafts are the model's own picks"
    assert 0 < auto["usage"]["accepted_tokens"] <= auto["usage"]["drafted_tokens"]
    drafted = answer("draft", EDIT, "-t", "0", "--draft", "starter")  # the starter drafting for itself
    assert drafted["usage"]["accepted_tokens"] > 40, "its own greedy continuation: kept"
    (tmp_path / "config.json").write_text(json.dumps({"drafts": [{"model": "starter", "draft": "starter"}]}))
    configured = run_cli("run", "-m", "starter", "--json", "--max-tokens", "120", "--spec", "draft", "-t", "0", "-p", EDIT,
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
    # The batcher reads a prompt in other chunks than `run`, so its answers are compared with its own
    # plain ones: a slot's drafts checked on the wrong rows, or its cells cut in the wrong place,
    # would part from them at the first rejected draft, within the first few lines of the copy.
    for spec in ("ngram", "draft"):
        same = next((i for i, (a, b) in enumerate(zip(texts[spec, "alone"], texts["off", "alone"])) if a != b),
                    len(texts["off", "alone"]))
        assert same >= 150, (spec, texts[spec, "alone"][:same + 20])
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
