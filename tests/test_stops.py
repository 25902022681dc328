"""Stop strings over streamed text, and the serve command's durations: pure logic, no model."""

from __future__ import annotations

import pytest

from localllm.errors import UsageError
from localllm.generation.stops import StopText
from localllm.options import parse_duration


def stream(stops: tuple[str, ...], pieces: list[str]) -> tuple[list[str], bool]:
    matcher = StopText(stops)
    shown = []
    for piece in pieces:
        text, stopped = matcher.feed(piece)
        shown.append(text)
        if stopped:
            return shown, True
    shown.append(matcher.flush())
    return shown, False


def test_a_stop_string_spanning_tokens_is_never_shown_even_in_part():
    shown, stopped = stream(("END",), ["The answer", " is 4.", " E", "N", "D and more"])
    assert stopped and "".join(shown) == "The answer is 4. "
    assert shown[2] == " " and shown[3] == ""  # "E" and "N" were held back, not printed


def test_held_text_that_does_not_complete_a_stop_is_shown_later():
    shown, stopped = stream(("END",), ["EN", "x", "E"])
    assert not stopped and "".join(shown) == "ENxE" and shown[0] == ""


def test_the_earliest_of_several_stops_wins():
    shown, stopped = stream(("world", "lo w"), ["hello world"])
    assert stopped and shown == ["hel"]


@pytest.mark.parametrize("text, seconds", [("5m", 300), ("30s", 30), ("1h30m", 5400), ("90", 90), ("0", 0),
                                           ("250ms", 0.25), ("-1", None), ("-5m", None)])
def test_keep_alive_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "5 minutes", "m5", "1d"])
def test_bad_durations_are_usage_errors(text):
    with pytest.raises(UsageError, match="keep-alive"):
        parse_duration(text)
