"""The portable llama-cpp-python wheel (packaging/build-wheels.sh: run-time CPU dispatch) against
the native build (GGML_NATIVE) on this machine: prompt and decode tokens/s of the starter.

    python tests/benchmarks/bench_portable.py PORTABLE_VENV NATIVE_VENV [--rounds 6] [--threads 2]

Each venv has localllm installed (the portable one from the wheelhouse). Rounds alternate which
side runs first; the ratios printed (portable / native) are medians of per-round ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
from pathlib import Path

PROMPT = " ".join(["The quick brown fox jumps over the lazy dog."] * 50)  # about 500 tokens


def run(venv: Path, threads: int) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LOCALLLM_HOME": tempfile.mkdtemp(prefix="bench-portable-")}
    out = subprocess.run([str(venv / "bin" / "localllm"), "run", "--no-cache", "-m", "starter", "--raw", "-t", "0", "--threads",
                          str(threads), "--max-tokens", "128", "--ignore-eos", "--json", PROMPT],
                         capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout)["timings"]


def variant(venv: Path) -> str:
    out = subprocess.run([str(venv / "bin" / "localllm"), "doctor", "--json", "--no-load", "--offline"],
                         capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return json.loads(out.stdout)["situation"]["cpu_variant"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("portable", type=Path)
    parser.add_argument("native", type=Path)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    print(f"portable: {variant(args.portable)}\nnative:   {variant(args.native)}")
    run(args.portable, args.threads), run(args.native, args.threads)  # warm the page cache for both
    pp, tg = [], []
    for r in range(args.rounds):
        sides = [("portable", args.portable), ("native", args.native)]
        got = {name: run(venv, args.threads) for name, venv in (sides if r % 2 == 0 else sides[::-1])}
        pp.append(got["portable"]["prompt_tokens_per_s"] / got["native"]["prompt_tokens_per_s"])
        tg.append(got["portable"]["generation_tokens_per_s"] / got["native"]["generation_tokens_per_s"])
        print(f"round {r + 1}: prompt {got['portable']['prompt_tokens_per_s']:.0f} vs {got['native']['prompt_tokens_per_s']:.0f} "
              f"tok/s, decode {got['portable']['generation_tokens_per_s']:.1f} vs {got['native']['generation_tokens_per_s']:.1f}",
              flush=True)
    print(f"\nprompt tok/s, portable / native:  {statistics.median(pp):.3f}  (goal >= 0.97)")
    print(f"decode tok/s, portable / native:  {statistics.median(tg):.3f}  (goal >= 0.97)")


if __name__ == "__main__":
    main()
