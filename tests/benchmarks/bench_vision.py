"""Time to first token for one image: localllm (the Python API, the image's bytes in hand to the first
token) against llama.cpp's own llama-mtmd-cli built from the same vendored sources (its WARN line
before it reads the image, to the first token on its output), same files, same threads, greedy.

    python tests/benchmarks/bench_vision.py --mtmd-cli /tmp/llama-tools/build-noamx/bin/llama-mtmd-cli \
        [--rounds 5] [--threads 2]

The language model is the starter; the projector is tests/vision_gguf.py's, written larger than the
tests' (448-pixel images in 14-pixel patches: 1024 patches, 64 tokens; 6 layers of width 384), so
that encoding an image takes real time. Each round alternates two images, so neither side reuses
an encoded image.
"""

from __future__ import annotations

import argparse
import io
import os
import selectors
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from PIL import Image  # noqa: E402
from vision_gguf import write_vision_model  # noqa: E402

from localllm import SamplingOptions, load_model  # noqa: E402
from localllm.events import Token  # noqa: E402
from localllm.registry import starter_path  # noqa: E402

QUESTION = "What is in this picture?"


def picture(seed: int) -> bytes:
    image = Image.effect_noise((640, 480), 40 + seed * 10).convert("RGB")
    data = io.BytesIO()
    image.save(data, "PNG")
    return data.getvalue()


def localllm_ttft(model, data: bytes) -> float:
    started = time.perf_counter()
    messages = [{"role": "user", "content": [{"type": "image", "image": data}, {"type": "text", "text": QUESTION}]}]
    for event in model.chat(messages, SamplingOptions(temperature=0, max_tokens=1)):
        if isinstance(event, Token):
            return time.perf_counter() - started
    raise RuntimeError("no token")


def mtmd_ttft(cli: str, model: Path, projector: Path, image: Path, threads: int) -> float:
    """From the CLI's warning printed just before it loads the image, to the first byte of its answer."""
    proc = subprocess.Popen([cli, "-m", str(model), "--mmproj", str(projector), "--image", str(image), "-p", QUESTION,
                             "-n", "1", "-t", str(threads), "--temp", "0", "-c", "1024"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    selector.register(proc.stderr, selectors.EVENT_READ)
    started, buffers = None, {proc.stdout: b"", proc.stderr: b""}
    try:
        while True:
            for key, _ in selector.select(timeout=120):
                chunk = os.read(key.fileobj.fileno(), 65536)
                now = time.perf_counter()
                if not chunk:
                    raise RuntimeError("llama-mtmd-cli ended before answering:\n" + buffers[proc.stderr].decode()[-2000:])
                buffers[key.fileobj] += chunk
                both = buffers[proc.stdout] + buffers[proc.stderr]
                if started is None and b"experimental CLI" in both:
                    started = now
                    marks = len(buffers[proc.stdout])
                elif started is not None and key.fileobj is proc.stdout and buffers[proc.stdout][marks:].strip():
                    return now - started
    finally:
        proc.kill()
        proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mtmd-cli", required=True)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model, projector = write_vision_model(folder, starter_path(), image_size=448, patch=14, merge=4,
                                              width=384, ffn=1536, layers=6, heads=6)
        images = [picture(i) for i in range(2)]
        files = []
        for i, data in enumerate(images):
            files.append(folder / f"image-{i}.png")
            files[-1].write_bytes(data)
        ours, theirs = [], []
        with load_model(model, n_ctx=1024, n_threads=args.threads, speculation="off") as loaded:
            localllm_ttft(loaded, images[1])  # warm: the first encode allocates
            for round_ in range(args.rounds):
                ours.append(localllm_ttft(loaded, images[round_ % 2]))
                theirs.append(mtmd_ttft(args.mtmd_cli, model, projector, files[round_ % 2], args.threads))
        mine, cli = statistics.median(ours), statistics.median(theirs)
        print(f"time to first token, one 640x480 image, {args.threads} threads, median of {args.rounds}:")
        print(f"  localllm        {mine * 1000:8.1f} ms   (each: {', '.join(f'{t * 1000:.0f}' for t in ours)})")
        print(f"  llama-mtmd-cli  {cli * 1000:8.1f} ms   (each: {', '.join(f'{t * 1000:.0f}' for t in theirs)})")
        print(f"  localllm's speed / llama-mtmd-cli's: {cli / mine:.2f}x")


if __name__ == "__main__":
    main()
