"""The decode rules every engine drives (localllm.generation.sequence.Answer), with scripted
tokens: one character per token id, END ending the turn. llama.cpp's loops and the transformers
engine are tested with real models elsewhere; these are the rules themselves."""

from __future__ import annotations

from localllm.events import Finished
from localllm.generation.sequence import Answer
from localllm.options import SamplingOptions

END = 0


def run(sampling: SamplingOptions, script: str, n_prompt: int = 10, n_ctx: int = 4096) -> tuple[list[str], Finished, Answer]:
    answer = Answer(sampling, n_prompt, 3, n_ctx, END.__eq__, lambda step: "".join(chr(t) for t in step))
    shown, tokens = [], [ord(c) for c in script] + [END]
    for token in tokens:
        if answer.done:
            break
        text, _ = answer.take(token)
        shown.append(text)
    held, finished = answer.finish()
    return shown + [held], finished, answer


def test_an_answer_ends_at_the_end_of_turn_and_counts_what_it_generated():
    shown, finished, _ = run(SamplingOptions(seed=7), "Hello")
    assert "".join(shown) == "Hello" and finished.reason == "stop"
    assert (finished.usage.prompt_tokens, finished.usage.completion_tokens, finished.usage.cached_tokens) == (10, 5, 3)
    assert finished.seed == 7 and finished.timings.ttft_s >= 0


def test_the_limit_is_the_request_s_or_the_window_s_room():
    _, limited, _ = run(SamplingOptions(max_tokens=3), "Hello")
    assert limited.reason == "length" and limited.usage.completion_tokens == 3
    _, full, _ = run(SamplingOptions(), "Hello", n_prompt=4093, n_ctx=4096)
    assert full.reason == "length" and full.usage.completion_tokens == 3, "the window's room ends it"
    shown, none, answer = run(SamplingOptions(), "Hello", n_prompt=4096, n_ctx=4096)
    assert answer.done and none.usage.completion_tokens == 0 and "".join(shown) == ""


def test_ignore_eos_runs_past_the_end_of_turn():
    shown, finished, _ = run(SamplingOptions(ignore_eos=True, max_tokens=8), "Hi")
    assert finished.reason == "length" and finished.usage.completion_tokens == 3 and "".join(shown) == "Hi\x00"


def test_a_stop_string_across_tokens_is_never_shown_even_in_part():
    shown, finished, _ = run(SamplingOptions(stop=("END",)), "one ENDtwo")
    assert "".join(shown) == "one " and finished.reason == "stop"
    assert all("E" not in piece for piece in shown), "the possible start of a stop string is held back"
    held, _, _ = run(SamplingOptions(stop=("ENDING",)), "one END")
    assert "".join(held) == "one END", "text held for a stop string that never came is given back at the end"


def test_a_cancelled_answer_gives_back_no_held_text():
    answer = Answer(SamplingOptions(stop=("xyz",)), 5, 0, 100, END.__eq__, lambda step: "".join(chr(t) for t in step))
    assert answer.take(ord("a")) == ("a", [ord("a")])
    assert answer.take(ord("x")) == ("", [ord("x")]), "x may begin the stop string"
    held, finished = answer.finish("cancelled")
    assert held == "" and finished.reason == "cancelled" and finished.usage.completion_tokens == 2


def test_greedy_means_temperature_zero_and_no_penalty():
    assert Answer(SamplingOptions(temperature=0), 1, 0, 10, END.__eq__, str).greedy
    for penalty in ({"repeat_penalty": 1.1}, {"presence_penalty": 0.5}, {"frequency_penalty": -0.5}):
        assert not Answer(SamplingOptions(temperature=0, **penalty), 1, 0, 10, END.__eq__, str).greedy, penalty
    seeds = {Answer(SamplingOptions(), 1, 0, 10, END.__eq__, str).seed for _ in range(4)}
    assert len(seeds) > 1, "no seed given: a fresh one each time, reported in Finished"
