"""Speculation in `serve`: two servers on one model, `--spec off` and `--spec auto`, both up for the
whole run, each measurement alternating between them; greedy chats over OpenAI's API on loopback.

    python tests/benchmarks/bench_serve_speculation.py --model PATH [--rounds 3] [--threads 2] [--parallel 4]

Measured per round, on bench_speculation.py's code edit and essay prompts:
- one client: decode tokens/s (the server's own `timings.predicted_per_second`) and whether the text
  equals the one `--spec off` gave;
- four clients at once (the code edit, four variants): total completion tokens over the wall time
  from the first request sent to the last answer received.
Target (issue 28): auto never below 0.98x off where drafts do not pay (the essay, four clients at once).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve import start  # noqa: E402
from bench_speculation import PROMPTS  # noqa: E402

TOKENS = 256


def chat(url: str, prompt: tuple[str, str], suffix: str = "") -> dict:
    question, document = prompt
    content = (f"{document.strip()}\n\n{question}" if document else question) + suffix
    served = httpx.get(f"{url}/v1/models").json()["data"][0]["id"]  # the model -m named, first in the list
    reply = httpx.post(f"{url}/v1/chat/completions", timeout=1800, json={
        "model": served, "messages": [{"role": "user", "content": content}], "max_tokens": TOKENS, "temperature": 0})
    reply.raise_for_status()
    return reply.json()


def together(url: str, prompt: tuple[str, str], clients: int) -> float:
    """Completion tokens per second of wall time, `clients` requests sent at once."""
    replies: list[dict] = []
    threads = [threading.Thread(target=lambda i=i: replies.append(chat(url, prompt, "\n" * i))) for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(r["usage"]["completion_tokens"] for r in replies) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--parallel", type=int, default=4)
    args = parser.parse_args()
    localllm = shutil.which("localllm") or str(Path(sys.executable).with_name("localllm"))
    servers, urls = [], {}
    for spec in ("off", "auto"):
        env = {**os.environ, "LOCALLLM_HOME": tempfile.mkdtemp(prefix=f"bench-spec-{spec}-"), "HF_HUB_OFFLINE": "1",
               "LOCALLLM_PROMPT_CACHE_BYTES": "0"}
        proc, url = start([localllm, "serve", "-m", args.model, "--port", "0", "--quiet", "--threads", str(args.threads),
                           "--parallel", str(args.parallel), "--ctx", "2048", "--spec", spec],
                          re.compile(r"serving on (http://\S+) "), env)
        servers.append(proc)
        urls[spec] = url
    rows: dict[str, dict[str, list[float]]] = {}
    same: dict[str, list[bool]] = {name: [] for name in PROMPTS}
    try:
        for url in urls.values():
            chat(url, ("Warm up.", ""))
        for r in range(args.rounds):
            order = ("off", "auto") if r % 2 == 0 else ("auto", "off")
            for name, prompt in PROMPTS.items():
                texts = {}
                for spec in order:
                    reply = chat(urls[spec], prompt)
                    texts[spec] = reply["choices"][0]["message"]["content"]
                    rows.setdefault(f"{name}, one client tok/s", {}).setdefault(spec, []).append(
                        reply["timings"]["predicted_per_second"])
                same[name].append(texts["off"] == texts["auto"])
                for spec in order:
                    rows.setdefault(f"{name}, 4 clients total tok/s", {}).setdefault(spec, []).append(
                        together(urls[spec], prompt, 4))
    finally:
        for proc in servers:
            proc.terminate()
            proc.wait(60)
    print(f"\n{'':36} {'off':>8} {'auto':>8} {'ratio':>7}")
    for row, by_spec in rows.items():
        ratio = statistics.median(a / b for a, b in zip(by_spec["auto"], by_spec["off"]))
        print(f"{row:36} {statistics.median(by_spec['off']):8.2f} {statistics.median(by_spec['auto']):8.2f} {ratio:6.2f}x")
    for name, flags in same.items():
        print(f"{name}: one client's text the same as off in {sum(flags)} of {len(flags)} rounds")


if __name__ == "__main__":
    main()
