"""A long document asked a second question: `run` with the state the first run saved against `run
--no-cache`, side by side, alternating, in one run; time to first token, and whether the greedy
answers are the same.

    python tests/benchmarks/bench_prompt_cache.py --model PATH [--lines 300] [--rounds 3]

The first run reads the document and saves its state; each round then asks other questions both
ways. A private LOCALLLM_PROMPT_CACHE folder is used, so nothing saved before is found. Last, what
looking for a state costs a long prompt that has none (issue 27: under 10 ms).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LOCALLLM = str(Path(sys.executable).with_name("localllm"))


def ask(model: str, document: bytes, question: str, env: dict, *extra: str) -> dict:
    out = subprocess.run([LOCALLLM, "run", "-m", model, "--json", "-t", "0", "--max-tokens", "24", *extra, "-p", question],
                         input=document, capture_output=True, env=env, timeout=1800)
    if out.returncode != 0:
        raise SystemExit(out.stderr.decode()[-2000:])
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--lines", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    document = "\n".join(f"Line {i}: the meeting moved item {i} to the week after, said the minutes." for i in range(args.lines))
    env = {**os.environ, "LOCALLLM_PROMPT_CACHE": tempfile.mkdtemp(prefix="bench-prompt-cache-")}
    first = ask(args.model, document.encode(), "Summarize this.", env)
    print(f"document: {first['usage']['prompt_tokens']} tokens, read in {first['timings']['prompt_s']:.1f} s", flush=True)
    ratios, same = [], 0
    for r in range(args.rounds):
        question = f"What happened to item {r * 7}?"
        order = ("cached", "cold") if r % 2 == 0 else ("cold", "cached")
        got = {side: ask(args.model, document.encode(), question, env, *(["--no-cache"] if side == "cold" else []))
               for side in order}
        ratios.append(got["cold"]["timings"]["ttft_s"] / got["cached"]["timings"]["ttft_s"])
        same += got["cold"]["text"] == got["cached"]["text"]
        print(f"round {r + 1}: first token {got['cached']['timings']['ttft_s']:.2f} s with the saved state "
              f"({got['cached']['usage']['cached_tokens']} tokens not read) against {got['cold']['timings']['ttft_s']:.2f} s",
              flush=True)
    print(f"\ntime to first token, read again / from the saved state: {statistics.median(ratios):.2f}x; "
          f"greedy answers the same in {same} of {args.rounds} rounds")
    print(f"a prompt with no saved state: the look-up costs {lookup_ms(env['LOCALLLM_PROMPT_CACHE'], first):.2f} ms "
          f"(over the {len(list(Path(env['LOCALLLM_PROMPT_CACHE']).glob('*.state')))} states saved here)")


def lookup_ms(where: str, first: dict) -> float:
    """The median time StateCache.find takes for a prompt that starts unlike every saved state."""
    os.environ["LOCALLLM_PROMPT_CACHE"] = where
    from localllm.backends.llamacpp.state_cache import StateCache

    key = next(Path(where).glob("*.state")).name.split("-")[0]
    prompt = [7] * first["usage"]["prompt_tokens"]
    times = []
    for _ in range(20):
        started = time.perf_counter()
        assert StateCache(key).find(prompt) is None
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


if __name__ == "__main__":
    main()
