"""What the rpc-worker's checking proxy costs: ggml's RPC server reached directly against the same
server behind `localllm rpc-worker`, every layer on the worker, side by side in one run.

    python tests/benchmarks/bench_rpc.py [--model PATH] [--rounds 3] [--tokens 64] [--threads 1]

Each round runs `localllm run --rpc` once against each worker (alternating which goes first) and
reads load time, prompt and decode speed from `--json`. Ratios are proxy / direct: throughput
should be >= 0.98x, load time <= 1.1x. LOCALLLM_GGML_RPC must name libggml-rpc (tests/run.sh
builds it; or packaging/build-ggml-rpc.sh).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from localllm.backends.llamacpp import rpc

LOCALLLM = str(Path(sys.executable).with_name("localllm"))
PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(endpoint: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            rpc.hello(endpoint, timeout=2)
            return
        except rpc.RpcError:
            if proc.poll() is not None:
                raise SystemExit(f"the worker for {endpoint} ended")
            time.sleep(0.2)
    raise SystemExit(f"the worker for {endpoint} did not start")


def start_direct(port: int, threads: int) -> subprocess.Popen:
    code = f"from localllm.backends.llamacpp import rpc; rpc.serve('127.0.0.1', {port}, {threads}, None)"
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def start_guarded(port: int, threads: int) -> subprocess.Popen:
    return subprocess.Popen([LOCALLLM, "rpc-worker", "--port", str(port), "--threads", str(threads)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def run(model: str, endpoint: str, tokens: int) -> dict:
    out = subprocess.run([LOCALLLM, "run", "--no-cache", "-m", model, "--rpc", endpoint, "-t", "0", "--ignore-eos", "--max-tokens",
                          str(tokens), "--json", PROMPT], capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        raise SystemExit(out.stderr)
    return json.loads(out.stdout)["timings"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="starter")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if not os.environ.get("LOCALLLM_GGML_RPC"):
        print("note: LOCALLLM_GGML_RPC is not set; the library is looked for where build-ggml-rpc.sh puts it")
    ports = {"direct": free_port(), "proxy": free_port()}
    procs = {"direct": start_direct(ports["direct"], args.threads), "proxy": start_guarded(ports["proxy"], args.threads)}
    try:
        for name, proc in procs.items():
            wait_ready(f"127.0.0.1:{ports[name]}", proc)
        samples = {name: [] for name in procs}
        for round_ in range(args.rounds):
            order = list(procs) if round_ % 2 == 0 else list(reversed(procs))
            for name in order:
                samples[name].append(run(args.model, f"127.0.0.1:{ports[name]}", args.tokens))
        print(f"model {args.model}, {args.rounds} rounds, {args.tokens} tokens, worker threads {args.threads}")
        for key, better in (("load_s", "lower"), ("prompt_tokens_per_s", "higher"), ("generation_tokens_per_s", "higher")):
            direct = statistics.median(s[key] for s in samples["direct"])
            proxy = statistics.median(s[key] for s in samples["proxy"])
            print(f"{key:26} direct {direct:9.3f}  proxy {proxy:9.3f}  proxy/direct {proxy / direct:.3f}x ({better} is better)")
    finally:
        for proc in procs.values():
            proc.terminate()
            proc.wait()


if __name__ == "__main__":
    main()
