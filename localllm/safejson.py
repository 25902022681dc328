"""json.loads for text from files, the network and models: too deep a nesting is a ValueError
like any other bad JSON, not a RecursionError that escapes every `except ValueError`."""

from __future__ import annotations

import json


def loads(data: str | bytes) -> object:
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
