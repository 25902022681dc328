"""UI time to open a long chat in `localllm chat`, with the real starter model.

    python tests/benchmarks/bench_resume.py [--messages 1000 10000]

Opening a chat runs on the UI thread: reading it from the store, fitting its context (which
tokenizes with llama.cpp) and drawing the transcript; the figure is that call's wall time,
median of 3. Goal (issue 11): 10,000 messages in under 1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path


async def measure(n: int, runs: int) -> float:
    from localllm.tui import ChatApp

    from localllm.session import ChatMessage, ChatStore

    store = ChatStore()
    conversation = store.create("starter", "", f"{n} messages")
    for i in range(n):
        store.add(conversation, ChatMessage("user" if i % 2 == 0 else "assistant", f"Message {i}: a sentence of ordinary chat text."))
    app = ChatApp(model_ref="starter", store=store)
    times = []
    async with app.run_test(size=(100, 30)) as pilot:
        while app.session is None:
            await pilot.pause(0.1)
        for _ in range(runs):
            started = time.perf_counter()
            app.open_conversation(conversation)
            await pilot.pause()
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        os.environ["LOCALLLM_HOME"] = home
        os.environ["HF_HUB_OFFLINE"] = "1"
        for n in args.messages:
            print(f"{n:6d} messages: {asyncio.run(measure(n, args.runs)):.3f} s of UI time to open (median of {args.runs})")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main()
