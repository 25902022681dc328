"""Speculative decoding side by side: `run --spec off|ngram|auto`, greedy, on a code edit (the answer
rewrites given code with a small change) and on free text, alternating the order each round; then the
cost of evaluating a batch of b tokens on this machine with this model (what the controller learns).

    python tests/benchmarks/bench_speculation.py --model PATH [--rounds 3] [--tokens 300] [--threads 2] \
        [--llama-server PATH] [--draft PATH]

With --llama-server, the code edit also goes to llama.cpp's own server (same vendored llama.cpp, one
slot, the same threads) without speculation and with each of its n-gram modes, one at a time.
With --draft (a small model of the same family), also `--spec draft` (the draft model drafts 8
tokens every step) and `--spec auto --draft` (the controller decides), and the acceptance rate at
which the controller would start using that draft model on this machine (its break-even).
Targets (issue 28): code edit auto >= 1.4x off and >= 1.4x llama-server's best mode; free text auto
>= 0.98x off; with --draft, auto >= 0.98x off; the same text in every mode.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

LOCALLLM = str(Path(sys.executable).with_name("localllm"))
CODE = "\n".join(
    f"def handle_{name}(request, store):\n"
    f"    \"\"\"Answer a {name} request from the store.\"\"\"\n"
    f"    record = store.get(request['{name}_id'])\n"
    f"    if record is None:\n"
    f"        return {{'status': 404, 'error': 'no such {name}'}}\n"
    f"    result = dict(record)\n"
    f"    result['seen'] = store.count('{name}')\n"
    f"    return {{'status': 200, 'body': result}}\n"
    for name in ("user", "order", "invoice", "parcel", "ticket"))
PROMPTS = {
    "code edit": ("Rewrite this code with the variable `result` renamed to `reply` everywhere. Output only the code.", CODE),
    "free text": ("Write an essay about the history of lighthouses and the people who kept them.", ""),
}


def sample(model: str, mode: str, prompt: tuple[str, str], tokens: int, threads: int, draft: str | None) -> dict:
    """One run; mode is a --spec value, or "auto+draft" (auto with the draft model)."""
    question, stdin = prompt
    spec = mode.split("+")[0]
    extra = ["--draft", draft] if spec == "draft" or mode.endswith("+draft") else []
    out = subprocess.run([LOCALLLM, "run", "-m", model, "--json", "-t", "0", "--threads", str(threads), "--max-tokens",
                          str(tokens), "--spec", spec, *extra, "--no-cache", "-p", question], input=stdin.encode(),
                         capture_output=True, timeout=1800)
    if out.returncode != 0:
        raise SystemExit(out.stderr.decode()[-2000:])
    return json.loads(out.stdout)


def llama_server(binary: str, model: str, prompt: tuple[str, str], tokens: int, threads: int) -> dict[str, float]:
    """Decode tokens/s of llama-server on the same chat, per --spec-type (its own timings)."""
    import re

    import httpx
    from bench_serve import start

    question, document = prompt
    content = f"{document.strip()}\n\n{question}" if document else question
    rates = {}
    for spec in ("none", "ngram-simple", "ngram-map-k", "ngram-mod"):
        proc, url = start([binary, "-m", model, "--host", "127.0.0.1", "--port", "18645", "-t", str(threads), "-tb",
                           str(threads), "-np", "1", "-c", "4096", "--no-webui", "--spec-type", spec],
                          re.compile(r"listening on (http://\S+)"))
        try:
            reply = httpx.post(f"{url.rstrip('/')}/v1/chat/completions", timeout=1800, json={
                "messages": [{"role": "user", "content": content}], "max_tokens": tokens, "temperature": 0}).json()
            rates[spec] = reply["timings"]["predicted_per_second"]
        finally:
            proc.terminate()
            proc.wait(60)
    return rates


def cost_curve(model: str, threads: int, sizes=(1, 2, 3, 4, 5, 8, 9, 12, 16, 17)) -> dict[int, float]:
    """Median seconds of one llama_decode of b tokens after a 200-token prompt."""
    import llama_cpp

    from localllm.model import load_model

    with load_model(model, n_ctx=2048, n_threads=threads) as loaded:
        inner = loaded._loaded
        base = [(i * 7919) % 20000 + 100 for i in range(200)]
        times: dict[int, list[float]] = {b: [] for b in sizes}
        for _ in range(5):
            for b in sizes:
                llama_cpp.llama_memory_clear(inner._memory, True)
                array = (llama_cpp.llama_token * 200)(*base)
                llama_cpp.llama_decode(inner._ctx, llama_cpp.llama_batch_get_one(array, 200))
                batch = (llama_cpp.llama_token * b)(*base[:b])
                started = time.perf_counter()
                llama_cpp.llama_decode(inner._ctx, llama_cpp.llama_batch_get_one(batch, b))
                times[b].append(time.perf_counter() - started)
    return {b: statistics.median(t) for b, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--llama-server")
    parser.add_argument("--draft")
    args = parser.parse_args()
    os.environ["LOCALLLM_PROMPT_CACHE_BYTES"] = "0"
    modes = ["off", "ngram", "auto"] + (["draft", "auto+draft"] if args.draft else [])
    for name, prompt in PROMPTS.items():
        rates: dict[str, list[float]] = {m: [] for m in modes}
        texts, kept = {}, {}
        for r in range(args.rounds):
            for mode in (modes if r % 2 == 0 else list(reversed(modes))):
                got = sample(args.model, mode, prompt, args.tokens, args.threads, args.draft)
                rates[mode].append(got["timings"]["generation_tokens_per_s"])
                texts.setdefault(mode, set()).add(hashlib.sha256(got["text"].encode()).hexdigest())
                kept[mode] = (got["usage"]["drafted_tokens"], got["usage"]["accepted_tokens"], got["usage"]["completion_tokens"])
        print(f"\n{name}: {kept['off'][2]} tokens")
        for mode in modes:
            ratio = statistics.median(a / b for a, b in zip(rates[mode], rates["off"]))
            drafted, accepted, _ = kept[mode]
            same = "the same text as off" if texts[mode] == texts["off"] and len(texts["off"]) == 1 else "ANOTHER text"
            print(f"  {mode:10}  {statistics.median(rates[mode]):6.1f} tok/s  {ratio:.2f}x off  "
                  f"drafted {drafted}, accepted {accepted}" + (f" ({accepted / drafted:.0%})" if drafted else "") +
                  f"; {same} in every round", flush=True)
        if args.llama_server and name == "code edit":
            theirs = llama_server(args.llama_server, args.model, prompt, args.tokens, args.threads)
            best = max(theirs, key=theirs.get)
            print("  llama-server: " + ", ".join(f"{spec} {rate:.1f}" for spec, rate in theirs.items()) +
                  f" tok/s; auto against its best ({best}): {statistics.median(rates['auto']) / theirs[best]:.2f}x")
    curve = cost_curve(args.model, args.threads)
    print("\ncost of one decode of b tokens after 200 (median of 5), and as a multiple of one token:")
    for b, seconds in curve.items():
        print(f"  b={b:2}  {seconds * 1000:6.1f} ms  {seconds / curve[1]:.2f}x  ({b / seconds:.1f} tokens/s evaluated)")
    if args.draft:
        from localllm.generation.speculation import Controller, CostCurve

        step = cost_curve(args.draft, args.threads, sizes=(1,))[1]
        learned = CostCurve()
        for b, seconds in curve.items():
            learned.record(b, seconds)
        alpha = Controller(learned).break_even(step)
        print(f"\ndraft model: {step * 1000:.1f} ms a token; the controller drafts with it from an acceptance rate of "
              + (f"{alpha:.0%}" if alpha is not None else "never (not even 99%)") + " on this machine")


if __name__ == "__main__":
    main()
