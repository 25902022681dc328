"""A model's chat template, rendered within a time budget.

The template is model data, run in Jinja's sandbox (llama-cpp-python's Jinja2ChatFormatter),
which still lets nested loops run for ever and hang `run` and the chat.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from ..errors import UsageError
from .base import Message

TEMPLATE_BUDGET_S = 2.0  # real templates render a long chat in milliseconds


class _OverBudget(Exception):
    pass


def render_chat(formatter: Jinja2ChatFormatter, messages: Sequence[Message], variables: dict | None = None,
                budget_s: float = TEMPLATE_BUDGET_S) -> str:
    """The prompt a chat template makes of these messages, within a time budget.

    The template is model data, run in Jinja's sandbox, which still lets nested loops run for
    ever: a trace function stops a render that outlives its budget (checked every 256 lines,
    so the cost is a fraction of a render of milliseconds)."""
    deadline = time.monotonic() + budget_s
    count = 0

    def trace(frame, event, arg):
        nonlocal count
        count += 1
        if count & 255 == 0 and time.monotonic() > deadline:
            raise _OverBudget
        return trace

    previous = sys.gettrace()
    sys.settrace(trace)
    try:
        return formatter(messages=list(messages), **(variables or {})).prompt
    except _OverBudget:
        raise UsageError(f"the model's chat template did not finish within {budget_s:.0f} s (a template that never ends?); "
                         "--raw runs the model without it") from None
    except MemoryError:
        raise UsageError("the model's chat template makes a prompt too large for memory") from None
    except Exception as exc:  # the template is model data: any Jinja error is the model's fault
        raise UsageError(f"the model's chat template rejected these messages: {exc}") from exc
    finally:
        sys.settrace(previous)
