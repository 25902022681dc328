"""Threads per decode step against threads fixed at load, on a quiet machine and on one where
another process keeps a core busy (a one-line Python busy loop started 3 s after the run, as a
user's build or browser would), side by side, alternating, in one run.

    python tests/benchmarks/bench_threads.py --model PATH [--rounds 3] [--tokens 256]

Rows: decode tokens/s of `localllm run --ignore-eos` with the governor (no --threads), with
--threads N (the count chosen at load, all cores) and --threads 1. Targets: quiet, governor /
fixed >= 0.98x; busy, the governor near the better of the fixed counts.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

LOCALLLM = str(Path(sys.executable).with_name("localllm"))
PROMPT = "Write a long story about a lighthouse keeper."


def decode_rate(model: str, tokens: int, threads: int | None, busy_after: float | None) -> tuple[float, int]:
    """(decode tokens/s, threads at the end) of one run; a busy loop starts busy_after s in."""
    args = [LOCALLLM, "run", "--no-cache", "-m", model, "--json", "--ignore-eos", "-t", "0", "--max-tokens", str(tokens), PROMPT]
    if threads is not None:
        args[2:2] = ["--threads", str(threads)]
    hog: list[subprocess.Popen] = []
    timer = None
    if busy_after is not None:
        timer = threading.Timer(busy_after, lambda: hog.append(subprocess.Popen([sys.executable, "-c", "while True: pass"])))
        timer.start()
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=1800)
    finally:
        if timer is not None:
            timer.cancel()
        for proc in hog:
            proc.kill()
            proc.wait()
    if out.returncode != 0:
        raise SystemExit(out.stderr[-2000:])
    result = json.loads(out.stdout)
    return result["timings"]["generation_tokens_per_s"], result["settings"]["threads_at_end"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=256)
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    contenders = {"governor": None, f"fixed {cores}": cores, "fixed 1": 1}
    for condition, busy_after in (("quiet", None), ("one core busy", 3.0)):
        samples: dict[str, list[tuple[float, int]]] = {name: [] for name in contenders}
        for round_ in range(args.rounds):
            names = list(contenders) if round_ % 2 == 0 else list(reversed(contenders))
            for name in names:
                samples[name].append(decode_rate(args.model, args.tokens, contenders[name], busy_after))
                time.sleep(1)
        rates = {name: statistics.median(r for r, _ in s) for name, s in samples.items()}
        print(f"{condition}: " + ", ".join(f"{name} {rate:.1f} tok/s" for name, rate in rates.items())
              + f"; governor / fixed {cores}: {rates['governor'] / rates[f'fixed {cores}']:.2f}x, "
              f"governor / fixed 1: {rates['governor'] / rates['fixed 1']:.2f}x; "
              f"governor's threads at the end: {[t for _, t in samples['governor']]}")


if __name__ == "__main__":
    main()
