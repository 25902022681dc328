"""`localllm serve` against llama.cpp's own llama-server on a real model: resident memory after the
same request, and decode speed on a quiet machine and with one core kept busy by another process
(a one-line Python busy loop started 3 s into the answer), side by side, alternating.

    python tests/benchmarks/bench_real_serve.py --model qwen2.5-coder-1.5b-instruct-q4_k_m.gguf \
        [--llama-server PATH] [--rounds 2] [--tokens 160]

Both: one slot, a 4096-token context, 2 threads for llama-server (as its default here), localllm
choosing its own (the governor). Targets (issue 25): RSS <= 0.75x llama-server's; decode with a
busy core well above llama-server's fixed threads, and >= 0.98x on a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve import llama_server_binary, start, stream  # noqa: E402

PROMPT = "Write a long story about a lighthouse keeper."


def decode(url: str, model: str, tokens: int, busy_after: float | None) -> float:
    """Streamed content chunks per second after the first, of one greedy answer."""
    hog: list[subprocess.Popen] = []
    timer = threading.Timer(busy_after or 0, lambda: hog.append(subprocess.Popen([sys.executable, "-c", "while True: pass"])))
    if busy_after is not None:
        timer.start()
    try:
        result = stream(url, PROMPT, tokens, model)
    finally:
        timer.cancel()
        for proc in hog:
            proc.kill()
            proc.wait()
    return (result["chunks"] - 1) / (result["last"] - result["first"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--llama-server")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=160)
    args = parser.parse_args()
    model = Path(args.model).absolute()
    binary = llama_server_binary(args.llama_server)
    env = {**os.environ, "LOCALLLM_HOME": tempfile.mkdtemp(prefix="bench-real-serve-"), "HF_HUB_OFFLINE": "1"}
    localllm = str(Path(sys.executable).with_name("localllm"))
    ours, our_url = start([localllm, "serve", "-m", str(model), "--port", "0", "--quiet", "--parallel", "1",
                           "--ctx", "4096"], re.compile(r"serving on (http://\S+) "), env)
    theirs, their_url = start([binary, "-m", str(model), "--host", "127.0.0.1", "--port", "18643", "-t", "2", "-tb", "2",
                               "-np", "1", "-c", "4096", "--no-webui"], re.compile(r"listening on (http://\S+)"))
    their_url = their_url.rstrip("/")
    servers = {"localllm": (our_url, ours), "llama-server": (their_url, theirs)}
    try:
        for url, _ in servers.values():  # load, and one answer after a 512-token prompt
            httpx.post(f"{url}/v1/chat/completions", timeout=900, json={
                "model": model.name, "max_tokens": 8, "temperature": 0,
                "messages": [{"role": "user", "content": "word " * 500 + "How many words?"}]}).raise_for_status()
        rss = {name: psutil.Process(proc.pid).memory_info().rss for name, (_, proc) in servers.items()}
        print(f"resident after the same request: localllm {rss['localllm'] / 2**20:.0f} MiB, llama-server "
              f"{rss['llama-server'] / 2**20:.0f} MiB, ratio {rss['localllm'] / rss['llama-server']:.2f}x", flush=True)
        for condition, busy_after in (("quiet", None), ("one core busy", 3.0)):
            rates: dict[str, list[float]] = {name: [] for name in servers}
            for round_ in range(args.rounds):
                names = list(servers) if round_ % 2 == 0 else list(reversed(servers))
                for name in names:
                    rates[name].append(decode(servers[name][0], model.name, args.tokens, busy_after))
                    time.sleep(1)
            ours_rate, theirs_rate = statistics.median(rates["localllm"]), statistics.median(rates["llama-server"])
            print(f"{condition}: localllm {ours_rate:.1f} tok/s, llama-server {theirs_rate:.1f} tok/s, "
                  f"ratio {ours_rate / theirs_rate:.2f}x", flush=True)
    finally:
        for _, proc in servers.values():
            proc.terminate()
            proc.wait(30)


if __name__ == "__main__":
    main()
