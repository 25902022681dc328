"""The same long system prompt from 4 clients in turn, then once more after a restart: time to first
token of `localllm serve` (prompt states in memory, and on disk across the restart) against llama.cpp's
own llama-server with `--cache-reuse` and `cache_prompt` (the same vendored llama.cpp), on a real model.

    python tests/benchmarks/bench_serve_prompt_cache.py --model qwen2.5-coder-1.5b-instruct-q4_k_m.gguf \
        [--llama-server PATH] [--rules 200]

Both: 4 slots, 8192 tokens each, 2 threads for llama-server; greedy, 8 tokens per answer. Each server
runs alone (the other is stopped), so neither reads a prompt while the other does.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve import llama_server_binary, start  # noqa: E402


def first_token(url: str, model: str, system: str, question: str) -> tuple[float, str]:
    """Seconds to the first content chunk of a streamed greedy answer, and the answer."""
    body = {"model": model, "max_tokens": 8, "temperature": 0, "stream": True, "cache_prompt": True,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": question}]}
    sent, first, text = time.perf_counter(), None, ""
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=900) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            delta = (json.loads(line[6:]).get("choices") or [{}])[0].get("delta", {}).get("content")
            if delta:
                first = first or time.perf_counter()
                text += delta
    return first - sent, text


def session(command: list[str], ready: re.Pattern, env: dict | None, model: str, system: str, questions: list[str]):
    proc, url = start(command, ready, env)
    try:
        return [first_token(url.rstrip("/"), model, system, q) for q in questions]
    finally:
        proc.terminate()
        proc.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--llama-server")
    parser.add_argument("--rules", type=int, default=200, help="lines of the system prompt (about 16 tokens each)")
    args = parser.parse_args()
    model = Path(args.model).absolute()
    system = "You are the support desk. Follow every rule.\n" + "\n".join(
        f"Rule {i}: requests about product {i} go to team {i % 7}, answered within {i % 5 + 1} days." for i in range(args.rules))
    questions = [f"Client {c}: which team handles product {c * 11}?" for c in range(4)]
    after = ["Client 5: which team handles product 42?"]
    binary = llama_server_binary(args.llama_server)
    env = {**os.environ, "LOCALLLM_HOME": tempfile.mkdtemp(prefix="bench-serve-cache-"), "HF_HUB_OFFLINE": "1",
           "LOCALLLM_PROMPT_CACHE": tempfile.mkdtemp(prefix="bench-serve-states-")}
    localllm = [str(Path(sys.executable).with_name("localllm")), "serve", "-m", str(model), "--port", "0", "--quiet",
                "--parallel", "4", "--ctx", "8192"]
    llama = [binary, "-m", str(model), "--host", "127.0.0.1", "--port", "18644", "-t", "2", "-tb", "2", "-np", "4",
             "-c", str(4 * 8192), "--cache-reuse", "256", "--no-webui"]
    ours_ready, theirs_ready = re.compile(r"serving on (http://\S+) "), re.compile(r"listening on (http://\S+)")
    times = {}
    for name, command, ready, run_env in (("localllm", localllm, ours_ready, env), ("llama-server", llama, theirs_ready, None)):
        before = session(command, ready, run_env, model.name, system, questions)
        restarted = session(command, ready, run_env, model.name, system, after)
        times[name] = before + restarted
        print(f"{name}: first token " + ", ".join(f"{t:.2f}" for t, _ in before) +
              f" s for clients 1-4; after a restart {restarted[0][0]:.2f} s", flush=True)
    rows = [f"client {i + 1}" for i in range(4)] + ["after a restart"]
    print("\n| request | localllm | llama-server | llama-server / localllm |\n|---|---|---|---|")
    for i, row in enumerate(rows):
        ours, theirs = times["localllm"][i][0], times["llama-server"][i][0]
        print(f"| {row} | {ours:.2f} s | {theirs:.2f} s | {theirs / ours:.2f}x |")
    same = sum(a[1] == b[1] for a, b in zip(times["localllm"], times["llama-server"]))
    print(f"\nthe same greedy answer from both in {same} of {len(rows)} requests")


if __name__ == "__main__":
    main()
