"""`localllm serve` against llama.cpp's own llama-server: same vendored llama.cpp, model, threads,
context per slot and --parallel, both spoken to over OpenAI's streaming chat API on loopback.

Both servers stay up for the whole run and each measurement alternates between them, so a
noisy machine affects both alike; every figure is a median over rounds, every ratio is ours /
theirs, computed per round.

    python tests/benchmarks/bench_serve.py [--rounds 5] [--threads 2] [--parallel 4] [--llama-server PATH]

Measured per round:
- one client: decode tokens/s (128 tokens, end of turn ignored) and time to first token;
- 4 concurrent clients: total decode tokens/s, first token of the first to last token of the last;
- a 4th request arriving while 3 others stream: its time to first token.
Without --llama-server it is built by tests/benchmarks/build_llama_bench.sh (a few minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from localllm.registry import starter_path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
TOKENS = 128
CTX_PER_SLOT = 1024


def stream(url: str, prompt: str, tokens: int = TOKENS, model: str = "starter") -> dict:
    """One streaming chat request: send time, first and last content times, content chunks."""
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": tokens,
            "temperature": 0, "ignore_eos": True, "stream": True}
    sent = time.perf_counter()
    first = last = None
    chunks = 0
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=300) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            choices = json.loads(line[6:]).get("choices") or [{}]
            if choices[0].get("delta", {}).get("content"):
                now = time.perf_counter()
                first = first or now
                last = now
                chunks += 1
    return {"sent": sent, "first": first, "last": last, "chunks": chunks}


def one_client(url: str, prompt: str) -> tuple[float, float]:
    r = stream(url, prompt)
    return (r["chunks"] - 1) / (r["last"] - r["first"]), r["first"] - r["sent"]


def concurrent(url: str, prompts: list[str]) -> list[dict]:
    results: list[dict] = [{}] * len(prompts)

    def go(i: int) -> None:
        results[i] = stream(url, prompts[i])

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def four_clients(url: str, tag: str) -> float:
    results = concurrent(url, [f"Tell me about {tag} number {i}." for i in range(4)])
    tokens = sum(r["chunks"] for r in results)
    return tokens / (max(r["last"] for r in results) - min(r["first"] for r in results))


def late_arrival(url: str, tag: str) -> float:
    """Time to first token of a request sent while three others are streaming."""
    background = []
    threads = [threading.Thread(target=lambda i=i: background.append(stream(url, f"Story {tag} {i}.", 256))) for i in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.8)  # the three are past their prompts and generating
    r = stream(url, f"A new question about {tag}.", 8)
    for t in threads:
        t.join()
    return r["first"] - r["sent"]


def answer(url: str, prompt: str) -> str:
    body = {"model": "starter", "messages": [{"role": "user", "content": prompt}], "max_tokens": 64, "temperature": 0}
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=300).json()["choices"][0]["message"]["content"]


def greedy_agreement(url: str, n: int = 8) -> int:
    """How many of n temperature-0 answers are the same batched together as alone."""
    prompts = [f"Write two sentences about the number {i}." for i in range(n)]
    alone = [answer(url, p) for p in prompts]
    together: list[str] = [""] * n
    threads = [threading.Thread(target=lambda i=i: together.__setitem__(i, answer(url, prompts[i]))) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(a == b for a, b in zip(alone, together))


def start(command: list[str], ready: re.Pattern, env: dict | None = None) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    for line in proc.stdout:
        if found := ready.search(line):
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
            return proc, found.group(1)
    raise RuntimeError(f"{command[0]} did not start")


def llama_server_binary(given: str | None) -> str:
    if given:
        return given
    out = subprocess.run(["bash", str(HERE / "build_llama_bench.sh"), "", "llama-server"], cwd=REPO,
                         capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--llama-server")
    args = parser.parse_args()
    model = starter_path()
    binary = llama_server_binary(args.llama_server)
    home = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    env = {**os.environ, "LOCALLLM_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    localllm = shutil.which("localllm") or str(Path(sys.executable).with_name("localllm"))
    started = time.perf_counter()
    ours, our_url = start([localllm, "serve", "-m", str(model), "--port", "0", "--quiet", "--threads", str(args.threads),
                           "--parallel", str(args.parallel), "--ctx", str(CTX_PER_SLOT)],
                          re.compile(r"serving on (http://\S+) "), env)
    ready_s = time.perf_counter() - started
    theirs, their_url = start([binary, "-m", str(model), "--host", "127.0.0.1", "--port", "18642", "-t", str(args.threads),
                               "-tb", str(args.threads), "-np", str(args.parallel), "-c", str(CTX_PER_SLOT * args.parallel),
                               "--kv-unified", "--no-webui"], re.compile(r"listening on (http://\S+)"))
    their_url = their_url.rstrip("/")
    try:
        for url in (our_url, their_url):  # warm both: first graphs, thread teams
            stream(url, "Warm up.", 16)
        rows = {"one client tok/s": [], "one client TTFT s": [], "4 clients total tok/s": [], "TTFT while 3 stream s": []}
        ratios = {k: [] for k in rows}
        for r in range(args.rounds):
            figures = {}
            for name, url in (("ours", our_url), ("theirs", their_url)) if r % 2 == 0 else (("theirs", their_url), ("ours", our_url)):
                tps, ttft = one_client(url, f"Round {r}: tell me a long story.")
                figures[name] = (tps, ttft, four_clients(url, f"round {r}"), late_arrival(url, f"round {r}"))
            for i, key in enumerate(rows):
                rows[key].append((figures["ours"][i], figures["theirs"][i]))
                ratios[key].append(figures["ours"][i] / figures["theirs"][i])
            print(f"round {r + 1}: " + "; ".join(f"{k} {figures['ours'][i]:.3g} vs {figures['theirs'][i]:.3g}"
                                                   for i, k in enumerate(rows)), flush=True)
        print(f"\nlocalllm serve ready (listening) in {ready_s:.2f} s")
        print(f"temperature-0 answers the same batched as alone: {greedy_agreement(our_url)} of 8")
        print(f"{'':28} {'localllm':>10} {'llama-server':>13} {'ratio':>7}")
        for key in rows:
            ours_median = statistics.median(a for a, _ in rows[key])
            theirs_median = statistics.median(b for _, b in rows[key])
            print(f"{key:28} {ours_median:10.3g} {theirs_median:13.3g} {statistics.median(ratios[key]):7.3f}")
    finally:
        for proc in (ours, theirs):
            proc.terminate()
            proc.wait(30)


if __name__ == "__main__":
    main()
