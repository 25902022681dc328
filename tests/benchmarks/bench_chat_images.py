"""What a chat with photos costs before each reply: deciding which turns fit the window.

    python tests/benchmarks/bench_chat_images.py [--photos 8] [--rounds 3]

A chat of N turns, each with a 4000 x 3000 JPEG (a phone's photo), on the starter with
tests/vision_gguf.py's projector. Side by side in one run: the whole history's prompt with every
image decoded from its file (what each probe of ChatSession._fit_context and each reply cost
before localllm.chat_images) against ChatSession._count (a stand-in per image plus what each image
adds, measured once) and a reply's prompt with the images kept decoded; and one whole
_fit_context as a send runs it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from vision_gguf import write_vision_model  # noqa: E402

from localllm import load_model  # noqa: E402
from localllm.generation.media import split  # noqa: E402
from localllm.generation.request import render  # noqa: E402
from localllm.registry import starter_path  # noqa: E402
from localllm.session import ChatMessage, ChatSession, ChatStore  # noqa: E402


def timed(work, rounds: int) -> float:
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        work()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        model_path, _ = write_vision_model(folder, starter_path())
        store = ChatStore(folder / "chats.sqlite3")
        chat = store.create("bench")
        rng = np.random.default_rng(0)
        for i in range(args.photos):
            photo = folder / f"photo{i}.jpg"
            Image.fromarray(rng.integers(0, 255, (3000, 4000, 3), dtype=np.uint8)).save(photo, "JPEG", quality=90)
            store.add(chat, ChatMessage("user", f"What is in photo {i}?", images=(store.keep_image(photo),)))
            store.add(chat, ChatMessage("assistant", f"Photo {i} shows noise."))
        with load_model(model_path, n_ctx=4096, n_threads=2, speculation="off") as model:
            session = ChatSession(model, store, "bench", conversation_id=chat, messages=store.messages(chat))

            def prompt_tokens(messages) -> int:
                messages, pictures = split(messages, model.image_marker, "bench")
                return len(model.tokenize_images(render(model, messages, None)[0], pictures))

            def from_files() -> list[dict]:  # the history as a reply sent it before: every image a file to decode
                return [{"role": m.role, "content": [*({"type": "image", "image": store.image_folder / name} for name in m.images),
                                                     {"type": "text", "text": m.content}] if m.images else m.content}
                        for m in session.messages]

            first = timed(lambda: session._count(0), 1)  # decodes and measures each image once
            decoded = timed(lambda: prompt_tokens(from_files()), args.rounds)
            counted = timed(lambda: session._count(0), args.rounds)
            kept = timed(lambda: prompt_tokens(session._chat_messages(0)), args.rounds)
            assert session._count(0) == prompt_tokens(from_files()) == prompt_tokens(session._chat_messages(0))
            fit = timed(lambda: session._fit_context(session.reserve), args.rounds)
    print(f"{args.photos} photos of 4000x3000, median of {args.rounds}")
    print(f"  the prompt, every image decoded     : {decoded * 1000:8.1f} ms  (each count and each reply, before)")
    print(f"  a count, images measured once       : {counted * 1000:8.1f} ms  ({decoded / counted:.0f}x faster)")
    print(f"  a reply's prompt, images kept decoded: {kept * 1000:8.1f} ms  ({decoded / kept:.1f}x faster)")
    print(f"  the session's first count           : {first * 1000:8.1f} ms  (decodes and measures each image)")
    print(f"  a send's whole fit probe            : {fit * 1000:8.1f} ms")


if __name__ == "__main__":
    main()
