"""Chat benchmarks on the starter model (SmolLM2-135M Q4_1):

1. Generation speed inside the TUI (ChatApp started as `localllm chat` starts it, headless: the
   real widgets, Markdown rendering and event loop, no terminal to write to) against `localllm run`,
   each in its own process, same model, prompt and attention kernel, alternating rounds.
   Target: TUI >= 0.95x. (On CPU builds the chat turns flash attention off, which is faster once
   a conversation is a few hundred tokens deep; `run` is given the same setting, so the ratio
   measures what the TUI costs.)
2. Time to first token on turn 20 of a chat against turn 1 (KV cache reuse of the shared
   prefix). Target: <= 1.3x.

    python tests/benchmarks/bench_chat.py [--rounds 5] [--tokens 256] [--threads 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

PROMPT = "Write a short story about a lighthouse keeper."
LOCALLLM = str(Path(sys.executable).with_name("localllm"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tui-once", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ["LOCALLLM_HOME"] = tempfile.mkdtemp(prefix="localllm-bench-chat-")
    if args.tui_once:
        print(tui_once(args.tokens, args.threads))
        return
    speed(args.tokens, args.threads, args.rounds)

    from localllm import load_model
    from localllm.options import chat_load_options

    with load_model("starter", chat_load_options(n_ctx=4096, n_threads=args.threads)) as model:
        ttft(model)


def chat_flash_attn() -> str:
    from localllm.options import chat_load_options

    return {None: "auto", True: "on", False: "off"}[chat_load_options().flash_attn]


def run_once(tokens: int, threads: int) -> float:
    """`localllm run`, as a user runs it: its own process, with the chat's attention kernel."""
    out = subprocess.run([LOCALLLM, "run", "-m", "starter", "--json", "-t", "0", "--ignore-eos", "--max-tokens", str(tokens),
                          "--threads", str(threads), "--flash-attn", chat_flash_attn(), PROMPT],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)["timings"]["generation_tokens_per_s"]


def tui_once(tokens: int, threads: int) -> float:
    """The chat app in this process as `localllm chat` starts it, headless, answering one prompt."""
    from localllm.tui import ChatApp

    from localllm import SamplingOptions
    from localllm.options import chat_load_options
    from localllm.session import ChatStore

    async def go() -> float:
        app = ChatApp(model_ref="starter", store=ChatStore(), load_options=chat_load_options(n_ctx=4096, n_threads=threads))
        async with app.run_test(size=(100, 30)) as pilot:
            while app.session is None:
                await asyncio.sleep(0.05)
            app.session.sampling = SamplingOptions(temperature=0, max_tokens=tokens, ignore_eos=True)
            app.query_one("#prompt").text = PROMPT
            await pilot.press("enter")
            while not (len(app.session.messages) == 2 and not app.generating):
                await asyncio.sleep(0.05)  # not pilot.pause: that forces screen updates a user would not cause
            return app._rate

    return asyncio.run(go())


def speed(tokens: int, threads: int, rounds: int) -> None:
    tui = [sys.executable, __file__, "--tui-once", "--tokens", str(tokens), "--threads", str(threads)]
    ratios, rates = [], {"run": [], "tui": []}
    for i in range(rounds):
        pair = {}
        for name in ("run", "tui")[:: 1 if i % 2 == 0 else -1]:
            if name == "run":
                pair[name] = run_once(tokens, threads)
            else:
                pair[name] = float(subprocess.run(tui, capture_output=True, text=True, check=True).stdout.split()[-1])
            rates[name].append(pair[name])
        ratios.append(pair["tui"] / pair["run"])
        print(f"round {i + 1}: run {pair['run']:6.1f} tok/s   tui {pair['tui']:6.1f} tok/s   ratio {ratios[-1]:.3f}")
    print(f"generation, {tokens} tokens, flash attention {chat_flash_attn()} in both, medians: run {statistics.median(rates['run']):.1f} tok/s, "
          f"tui {statistics.median(rates['tui']):.1f} tok/s, ratio {statistics.median(ratios):.3f} (target >= 0.95)\n")


def ttft(model) -> None:
    from localllm import SamplingOptions
    from localllm.events import Finished
    from localllm.session import ChatSession, ChatStore

    session = ChatSession(model, ChatStore(), "starter", "You are a helpful assistant.",
                          SamplingOptions(temperature=0, max_tokens=48))
    times = []
    for turn in range(1, 21):
        for event in session.send(f"Turn {turn}: tell me one fact about the number {turn}."):
            if isinstance(event, Finished):
                times.append((event.timings.ttft_s, event.usage.prompt_tokens, event.usage.cached_tokens))
    for turn in (1, 5, 10, 15, 20):
        t, prompt, cached = times[turn - 1]
        print(f"turn {turn:2d}: prompt {prompt:4d} tokens, {cached:4d} reused from the KV cache, time to first token {t * 1000:6.1f} ms")
    print(f"time to first token, turn 20 / turn 1: {times[19][0] / times[0][0]:.2f} (target <= 1.3)")


if __name__ == "__main__":
    main()
