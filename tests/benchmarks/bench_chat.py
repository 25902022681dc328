"""Chat benchmarks on the starter model (SmolLM2-135M Q4_1):

1. Generation speed inside the TUI (ChatApp running headless: the real widgets, Markdown stream
   and event loop, no terminal to write to) against the path `localllm run` uses (Model.prompt),
   same model, prompt and settings, alternating rounds. Target: TUI >= 0.95x.
2. Time to first token on turn 20 of a chat against turn 1 (KV cache reuse of the shared
   prefix). Target: <= 1.3x.

    python tests/benchmarks/bench_chat.py [--rounds 5] [--tokens 256] [--threads 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile

PROMPT = "Write a short story about a lighthouse keeper."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    os.environ["LOCALLLM_HOME"] = tempfile.mkdtemp(prefix="localllm-bench-chat-")

    from localllm import SamplingOptions, load_model
    from localllm.options import chat_load_options

    sampling = SamplingOptions(temperature=0, max_tokens=args.tokens, ignore_eos=True)
    # The options `localllm chat` loads with (flash attention off on a CPU-only build).
    with load_model("starter", chat_load_options(n_ctx=4096, n_threads=args.threads)) as model:
        speed(model, sampling, args.rounds)
        ttft(model)


def run_path(model, sampling) -> float:
    from localllm.events import Finished

    for event in model.prompt(PROMPT, sampling=sampling):
        if isinstance(event, Finished):
            return event.timings.generation_tokens_per_s


def tui_path(model, sampling) -> float:
    from localllm.tui import ChatApp

    from localllm.session import ChatStore

    class Borrowed:  # the app closes its model on exit; this one is shared across rounds
        def __getattr__(self, name):
            return getattr(model, name)

        def close(self):
            pass

    async def go() -> float:
        app = ChatApp(model_ref="starter", store=ChatStore(), loader=lambda ref, options: Borrowed())
        async with app.run_test(size=(100, 30)) as pilot:
            while app.session is None:
                await pilot.pause(0.05)
            app.session.sampling = sampling
            app.query_one("#prompt").text = PROMPT
            await pilot.press("enter")
            while not (len(app.session.messages) == 2 and not app.generating):
                await pilot.pause(0.05)
            return app._rate

    return asyncio.run(go())


def speed(model, sampling, rounds: int) -> None:
    ratios, rates = [], {"run": [], "tui": []}
    for i in range(rounds):
        pair = {}
        for name, fn in (("run", run_path), ("tui", tui_path))[:: 1 if i % 2 == 0 else -1]:
            pair[name] = fn(model, sampling)
            rates[name].append(pair[name])
        ratios.append(pair["tui"] / pair["run"])
        print(f"round {i + 1}: run {pair['run']:6.1f} tok/s   tui {pair['tui']:6.1f} tok/s   ratio {ratios[-1]:.3f}")
    print(f"generation, {sampling.max_tokens} tokens, medians: run {statistics.median(rates['run']):.1f} tok/s, "
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
