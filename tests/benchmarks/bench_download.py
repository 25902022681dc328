"""Download throughput: localllm's resumable, verified download vs a plain hf_hub_download.

Both fetch the same file from the loopback Hub server (tests/hub_server.py, in its own process)
into a fresh Hugging Face cache, alternating, so the machine's noise hits both alike. localllm's
path also hashes every byte (SHA-256) and takes the cache's file lock; hf_hub_download does
neither. Target: ours at least 0.95x.

    python tests/benchmarks/bench_download.py [--size-mib 512] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO, FILE = "bench/Bench-GGUF", "bench-Q8_0.gguf"
TESTS = Path(__file__).resolve().parents[1]


def serve(path: str) -> None:
    sys.path.insert(0, str(TESTS))
    from hub_server import HubServer

    server = HubServer()
    server.add(REPO, FILE, Path(path))
    print(server.url, flush=True)
    server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="localllm-bench-dl-"))
    try:
        source = work / FILE
        with open(source, "wb") as f:
            for _ in range(args.size_mib):
                f.write(os.urandom(2**20))
        server = subprocess.Popen([sys.executable, __file__, "--serve", str(source)], stdout=subprocess.PIPE, text=True)
        url = server.stdout.readline().strip()
        os.environ["HF_ENDPOINT"] = url
        os.environ.pop("HF_HUB_OFFLINE", None)
        try:
            run(work, args.size_mib * 2**20, args.rounds)
        finally:
            server.terminate()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(work: Path, size: int, rounds: int) -> None:
    from huggingface_hub import constants, hf_hub_download

    from localllm.hub import download, remote_file

    def ours(cache: Path) -> None:
        constants.HF_HUB_CACHE = str(cache)
        download(remote_file(REPO, FILE))

    def plain(cache: Path) -> None:
        hf_hub_download(REPO, FILE, cache_dir=cache)

    times: dict[str, list[float]] = {"localllm": [], "hf_hub_download": []}
    ratios = []
    for i in range(rounds):
        pair = {}
        for name, fn in (("localllm", ours), ("hf_hub_download", plain))[:: 1 if i % 2 == 0 else -1]:
            cache = work / f"cache-{name}-{i}"
            start = time.perf_counter()
            fn(cache)
            pair[name] = time.perf_counter() - start
            shutil.rmtree(cache)
            times[name].append(pair[name])
        ratios.append(pair["hf_hub_download"] / pair["localllm"])
        print(f"round {i + 1}: localllm {size / pair['localllm'] / 1e6:7.0f} MB/s   "
              f"hf_hub_download {size / pair['hf_hub_download'] / 1e6:7.0f} MB/s   ratio {ratios[-1]:.3f}")
    print(f"\nfile {size / 2**20:.0f} MiB, {rounds} alternating rounds, medians:")
    for name, values in times.items():
        print(f"  {name:<16} {size / statistics.median(values) / 1e6:7.0f} MB/s")
    print(f"  throughput ratio localllm / hf_hub_download: {statistics.median(ratios):.3f} (target >= 0.95)")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        serve(sys.argv[2])
    else:
        main()
