"""Two revisions of localllm side by side in one run: decode and prompt speed of `run`, `run
--schema` (a schema with long property names, so the grammar's forced tokens matter), `serve`
(one streaming client, and four at once, as bench_serve.py measures them, on the starter) and the transformers
engine's decode, each as after / before, alternating which goes first each round.

    git worktree add /tmp/before REV && pip install --no-deps --target /tmp/tree-before /tmp/before
    pip install --no-deps --target /tmp/tree-after .
    python tests/benchmarks/bench_revisions.py --before /tmp/tree-before --after /tmp/tree-after \\
        --model PATH [--checkpoint DIR] [--rounds 5] [--threads 2]

Each side runs `python -m localllm run --json` with its tree first on PYTHONPATH, in a fresh
process per sample; ratios are medians of per-round ratios (target: every row >= 0.98).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve import four_clients, one_client, start  # noqa: E402

SCHEMA = {"type": "object", "properties": {
    "the_name_of_the_programming_language": {"type": "string", "maxLength": 24},
    "the_year_in_which_it_first_appeared": {"type": "integer"},
    "the_most_widely_known_of_its_creators": {"type": "string", "maxLength": 32},
}, "required": ["the_name_of_the_programming_language", "the_year_in_which_it_first_appeared",
                "the_most_widely_known_of_its_creators"]}
LONG_PROMPT = "Summarize the following notes in one sentence.\n" + " ".join(
    f"Note {i}: the meeting moved item {i} to the next week." for i in range(40))


def run(tree: str, *args: str) -> dict:
    # A budget of 0 keeps no prompt state (the revision before had none): every sample reads its prompt.
    env = {**os.environ, "PYTHONPATH": tree, "LOCALLLM_PROMPT_CACHE_BYTES": "0"}
    out = subprocess.run([sys.executable, "-m", "localllm", "run", "--json", *args], capture_output=True, text=True,
                         env=env, stdin=subprocess.DEVNULL, timeout=1800)
    if out.returncode != 0:
        raise SystemExit(out.stderr[-2000:])
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True)
    parser.add_argument("--after", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--checkpoint")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    common = ["-m", args.model, "--threads", str(args.threads), "-t", "0"]
    rows = {
        "decode tok/s": lambda tree: run(tree, *common, "--ignore-eos", "--max-tokens", "128",
                                         "Write a story.")["timings"]["generation_tokens_per_s"],
        "prompt tok/s": lambda tree: run(tree, *common, "--max-tokens", "1", LONG_PROMPT)["timings"]["prompt_tokens_per_s"],
        "schema decode tok/s": lambda tree: run(tree, *common, "--max-tokens", "160", "--schema", json.dumps(SCHEMA),
                                                "Describe a programming language.")["timings"]["generation_tokens_per_s"],
    }

    def served(tree: str, measure) -> float:
        # The starter, as bench_serve.py's clients name it.
        proc, url = start([sys.executable, "-m", "localllm", "serve", "-m", "starter", "--port", "0", "--parallel", "4",
                           "--threads", str(args.threads), "--quiet"], re.compile(r"serving on (http://\S+) "),
                          env={**os.environ, "PYTHONPATH": tree})
        try:
            one_client(url, "Warm up.")
            return measure(url)
        finally:
            proc.terminate()
            proc.wait(30)

    rows["serve, one client tok/s"] = lambda tree: served(tree, lambda url: one_client(url, "Write a story.")[0])
    rows["serve, four clients tok/s"] = lambda tree: served(tree, lambda url: four_clients(url, "lighthouse"))
    if args.checkpoint:
        rows["transformers decode tok/s"] = lambda tree: run(
            tree, "-m", args.checkpoint, "--threads", str(args.threads), "-t", "0", "--dtype", "float32", "--ignore-eos",
            "--max-tokens", "64", "Write a story.")["timings"]["generation_tokens_per_s"]
    ratios: dict[str, list[float]] = {name: [] for name in rows}
    for r in range(args.rounds):
        order = (("after", args.after), ("before", args.before)) if r % 2 == 0 else (("before", args.before), ("after", args.after))
        for name, measure in rows.items():
            got = {side: measure(tree) for side, tree in order}
            ratios[name].append(got["after"] / got["before"])
            print(f"round {r + 1}  {name:28} after {got['after']:7.1f}  before {got['before']:7.1f}", flush=True)
    print()
    for name, values in ratios.items():
        print(f"{name:28} after / before: {statistics.median(values):.3f}  (rounds: {', '.join(f'{v:.2f}' for v in values)})")


if __name__ == "__main__":
    main()
