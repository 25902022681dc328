"""Speculative decoding (localllm.generation.speculation): the drafter, the cost curve and the
controller on scripted numbers, then greedy answers on the real starter drafted and not."""

from __future__ import annotations

import json

import pytest
from conftest import assert_one_line_error, invoke, run_cli

from localllm.generation.speculation import MARGIN, Controller, CostCurve, NgramDrafter


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
    assert k == 16
    expected = (1 - 0.99 ** 17) / 0.01
    assert expected / costly.cost(17) > MARGIN / costly.cost(1)


def test_the_curve_assumes_half_a_step_per_extra_token_until_measured():
    learned = curve(0.04)
    assert learned.cost(3) == pytest.approx(0.04 + 2 * 0.5 * 0.04)
    learned.record(2, 0.05)
    assert learned.cost(2) == 0.05 and learned.cost(4) == pytest.approx(0.05 + 2 * 0.5 * 0.04)


def test_a_bad_spec_value_is_one_line():
    assert_one_line_error(invoke("run", "-m", "starter", "--spec", "always", "hi"), 2, "--spec", "auto")


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


@pytest.mark.slow
@pytest.mark.parametrize("prompt", ["Rewrite this function with the variable result renamed to output. Give the whole code.",
                                    "Write a short poem about the sea."])
def test_greedy_answers_are_the_same_drafted_or_not_and_the_drafts_are_reported(prompt):
    def answer(spec: str) -> dict:
        result = run_cli("run", "-m", "starter", "--json", "-t", "0", "--max-tokens", "120", "--spec", spec,
                         "-p", prompt, stdin=CODE.encode())
        assert result.returncode == 0, result
        return json.loads(result.stdout)

    plain, every, auto = answer("off"), answer("ngram"), answer("auto")
    assert plain["usage"]["drafted_tokens"] == 0
    assert every["text"] == plain["text"] and auto["text"] == plain["text"]
    assert every["usage"]["drafted_tokens"] > 0 and every["usage"]["accepted_tokens"] > 0
    assert auto["usage"]["accepted_tokens"] <= auto["usage"]["drafted_tokens"]
