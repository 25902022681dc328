"""A long chat reopened: the next answer's time to first token with the KV state the last session
saved on disk, against reading the history again, side by side in one run on a real model, and
whether the answer is the one a session that never closed gives.

    python tests/benchmarks/bench_chat_resume.py --model PATH [--turns 40]

The history is written into the chat store (a conversation of --turns question/answer pairs, about
100 tokens each), then, as `localllm chat --resume` does (ChatSession.resume on a model loaded with
chat_load_options), in a private LOCALLLM_HOME and prompt-state folder:
  1. a session reopens it and asks Q1 (the history is read; its state is saved at the answer),
  2. another load reopens it and asks Q2 (the saved state is loaded: only Q2 is read),
  3. without the cache, a copy of the history is reopened, asked Q1 (read again) and then Q2 in the
     same session: the answer a chat that was never closed gives to Q2.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

os.environ["LOCALLLM_HOME"] = tempfile.mkdtemp(prefix="bench-chat-resume-")
os.environ["LOCALLLM_PROMPT_CACHE"] = tempfile.mkdtemp(prefix="bench-chat-states-")

from localllm.events import Finished, Token  # noqa: E402
from localllm.model import chat_load_options, load_model  # noqa: E402
from localllm.options import SamplingOptions  # noqa: E402
from localllm.session import ChatMessage, ChatSession, ChatStore  # noqa: E402

GREEDY = SamplingOptions(temperature=0, max_tokens=24)
Q1, Q2 = "Which city came up most often?", "And which one would you visit first, in one sentence?"


def seed(store: ChatStore, turns: int) -> int:
    conversation = store.create("bench", "You are a travel guide.", "Cities")
    for i in range(turns):
        store.add(conversation, ChatMessage("user", f"Tell me about city number {i} on my list, briefly."))
        store.add(conversation, ChatMessage("assistant", f"City {i} has an old harbour, a market every Tuesday, "
                                            f"a cathedral finished in {1400 + i * 7}, and trams that run until midnight. "
                                            f"Visitors like its river walk and the museum of maps on street {i * 3}."))
    return conversation


def ask(model, conversation: int, text: str) -> tuple[float, str, Finished]:
    session = ChatSession.resume(model, ChatStore(), "bench", conversation, GREEDY)
    started, first, answer, finished = time.perf_counter(), None, "", None
    for event in session.send(text):
        if isinstance(event, Token):
            first = first or time.perf_counter()
            answer += event.text
        elif isinstance(event, Finished):
            finished = event
    return first - started, answer, finished


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--turns", type=int, default=40)
    args = parser.parse_args()
    store = ChatStore()
    saved, never_closed = seed(store, args.turns), seed(store, args.turns)
    options = chat_load_options(n_ctx=8192)
    with load_model(args.model, options) as model:
        cold_first, _, read = ask(model, saved, Q1)
    print(f"history: {read.usage.prompt_tokens} tokens; session 1 read it in {cold_first:.2f} s to the first token", flush=True)
    with load_model(args.model, options) as model:
        from_disk, resumed_answer, resumed = ask(model, saved, Q2)
    print(f"session 2 (reopened, the saved state loaded): {from_disk:.2f} s, "
          f"{resumed.usage.cached_tokens} of {resumed.usage.prompt_tokens} tokens not read", flush=True)
    with load_model(args.model, chat_load_options(n_ctx=8192, prompt_cache="")) as model:
        cold, _, _ = ask(model, never_closed, Q1)
        _, open_answer, _ = ask(model, never_closed, Q2)
    print(f"without the cache: {cold:.2f} s to the first token (the history read again)", flush=True)
    print(f"\ntime to first token, history read again / saved state loaded: {cold / from_disk:.1f}x "
          f"({(cold + cold_first) / 2 / from_disk:.1f}x against the mean of both reads); the answer to Q2 "
          f"{'is the same as' if open_answer == resumed_answer else 'DIFFERS from'} a session never closed")


if __name__ == "__main__":
    sys.exit(main())
