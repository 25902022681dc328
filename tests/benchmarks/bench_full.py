"""The transformers engine against plain transformers on the same checkpoint, dtype and threads:
decode tokens/s (ours / generate()), load time (ours / from_pretrained), and the planner's
predicted memory against the process's measured RSS growth at two context lengths. Decode is
measured on a quiet machine and with another process keeping one core busy (a Python busy loop):
ours without --threads (its count adapts while decoding), generate() on --threads.

    python tests/benchmarks/bench_full.py [--rounds 3] [--threads 2] [--checkpoint DIR]

Without --checkpoint, the starter is exported to a bf16 safetensors folder first (about 20 s,
tests/safetensors_model.py). Each round alternates the two sides; ratios are medians of
per-round ratios. Memory is measured in fresh child processes, one per context length.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TOKENS = 128

LOAD_CHILD = r"""
import sys, time, torch, transformers
from transformers import AutoModelForCausalLM, AutoTokenizer
from localllm import load_model
folder, side = sys.argv[1], sys.argv[2]
torch.set_num_threads(2)
started = time.perf_counter()
if side == "ours":
    load_model(folder, n_threads=2)
else:
    AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16)
    AutoTokenizer.from_pretrained(folder)
print(time.perf_counter() - started)
"""

MEMORY_CHILD = r"""
import json, sys, psutil, torch, transformers, accelerate, transformers.models.llama.modeling_llama
from localllm import SamplingOptions, collect, load_model
from localllm.backends.transformers.engine import plan_checkpoint
from localllm.options import LoadOptions
folder, n_ctx = sys.argv[1], int(sys.argv[2])
options = LoadOptions(n_ctx=n_ctx, n_threads=2)
placed, dtype, _ = plan_checkpoint(__import__("pathlib").Path(folder), options)
process = psutil.Process()
before = process.memory_info().rss
with load_model(folder, options) as model:
    prompt = list(range(1000, 1000 + n_ctx - 64))  # a prompt that fills the window
    collect(model.generate(prompt, SamplingOptions(temperature=0, max_tokens=32, ignore_eos=True)))
    peak = process.memory_info().rss
print(json.dumps({"predicted": placed.used["cpu"], "measured": peak - before, "dtype": dtype}))
"""


def plain(folder: Path, threads: int) -> tuple[float, float]:  # (decode tok/s, load s in this process)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    started = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    load_s = time.perf_counter() - started  # the model and its tokenizer, as ours loads both
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Tell me a story."}], tokenize=False,
                                         add_generation_prompt=True)
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    model.generate(**ids, max_new_tokens=1, do_sample=False)  # the first prefill, as ours warms up
    started = time.perf_counter()
    model.generate(**ids, max_new_tokens=1, min_new_tokens=1, do_sample=False)
    prefill = time.perf_counter() - started
    started = time.perf_counter()
    model.generate(**ids, max_new_tokens=TOKENS, min_new_tokens=TOKENS, do_sample=False)
    decode = (TOKENS - 1) / (time.perf_counter() - started - prefill)
    return decode, load_s


def ours(folder: Path, threads: int) -> tuple[float, float]:
    from localllm import SamplingOptions, collect, load_model

    started = time.perf_counter()
    model = load_model(folder)  # threads as a user gets them: chosen, then adapted while decoding
    load_s = time.perf_counter() - started
    messages = [{"role": "user", "content": "Tell me a story."}]
    collect(model.chat(messages, SamplingOptions(temperature=0, max_tokens=1)))
    done = collect(model.chat(messages, SamplingOptions(temperature=0, max_tokens=TOKENS, ignore_eos=True)))
    model.close()
    return done.finished.timings.generation_tokens_per_s, load_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--checkpoint", type=Path)
    args = parser.parse_args()
    folder = args.checkpoint
    if folder is None:
        sys.path.insert(0, str(HERE.parent))
        from safetensors_model import export_starter

        from localllm.registry import starter_path

        folder = export_starter(starter_path(), Path(tempfile.mkdtemp(prefix="bench-full-")) / "starter")
    import torch  # noqa: F401  (imports are not load time, for either side)
    import transformers  # noqa: F401

    decode_ratios, load_ratios, busy_ratios = [], [], []
    for r in range(args.rounds):
        sides = [("ours", ours), ("plain", plain)] if r % 2 == 0 else [("plain", plain), ("ours", ours)]
        hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            busy = {name: run(folder, args.threads)[0] for name, run in sides}
        finally:
            hog.kill()
            hog.wait()
        busy_ratios.append(busy["ours"] / busy["plain"])
        figures = {name: run(folder, args.threads) for name, run in sides}
        # Load time in fresh processes (imports excluded): in one process a second load of the same
        # files is faster, whichever side runs it.
        loads = {name: float(subprocess.run([sys.executable, "-c", LOAD_CHILD, str(folder), name], capture_output=True,
                                            text=True, check=True).stdout.split()[-1]) for name, _ in sides}
        decode_ratios.append(figures["ours"][0] / figures["plain"][0])
        load_ratios.append(loads["ours"] / loads["plain"])
        print(f"round {r + 1}: decode {figures['ours'][0]:.1f} vs {figures['plain'][0]:.1f} tok/s; "
              f"load {loads['ours']:.2f} vs {loads['plain']:.2f} s; one core busy: decode {busy['ours']:.1f} vs "
              f"{busy['plain']:.1f} tok/s", flush=True)
    print(f"\ndecode tok/s, ours / generate():      {statistics.median(decode_ratios):.3f}  (target >= 0.95)")
    print(f"one core busy, decode ours / generate(): {statistics.median(busy_ratios):.3f}  (the governor's gain)")
    print(f"load time, ours / from_pretrained():  {statistics.median(load_ratios):.3f}  (target <= 1.1)")
    for n_ctx in (512, 2048):
        out = subprocess.run([sys.executable, "-c", MEMORY_CHILD, str(folder), str(n_ctx)], capture_output=True,
                             text=True, check=True)
        m = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"memory at {n_ctx} tokens ({m['dtype']}): predicted {m['predicted'] / 2**20:.0f} MiB, RSS grew "
              f"{m['measured'] / 2**20:.0f} MiB, ratio {m['predicted'] / m['measured']:.3f}")


if __name__ == "__main__":
    main()
