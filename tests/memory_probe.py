"""Resident memory a llama.cpp load really takes, measured in a fresh process: load, one prompt of
512 tokens (so the compute buffer is touched), then RSS growth. `mapped=True` keeps the file mapped
whole, as llama.cpp's own tools do and localllm did before it gave back what it repacked."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

_CHILD = r"""
import json, sys, time, psutil
from pathlib import Path
from localllm.backends.llamacpp import model as llamacpp
from localllm.backends.llamacpp.runtime import init_backend
from localllm.options import LoadOptions, SamplingOptions
init_backend(False)
if sys.argv[3] == "mapped":
    llamacpp.choose_load_mode = lambda mparams, path, layers: None
proc = psutil.Process()
before = proc.memory_info().rss
started = time.perf_counter()
model = llamacpp.LlamaCppModel(Path(sys.argv[1]), LoadOptions(n_ctx=int(sys.argv[2]), n_threads=2))
load_s = time.perf_counter() - started
for event in model.generate([100] * 512, SamplingOptions(temperature=0, max_tokens=int(sys.argv[4]), ignore_eos=True)):
    pass
print(json.dumps({"growth": proc.memory_info().rss - before, "mapped": model.weights_mapped, "released": model.released,
                  "buffers": model.weight_buffers, "load_s": load_s, "ttft_s": event.timings.ttft_s,
                  "decode_tok_s": event.timings.generation_tokens_per_s}))
"""


def measure(path: Path, n_ctx: int, mapped: bool = False, tokens: int = 2) -> dict:
    """{"growth": bytes, "mapped": whether the file was mapped, "released": mapped bytes given back after
    the load, "buffers": llama.cpp's weight buffers,
    "load_s", "ttft_s" (the 512-token prompt), "decode_tok_s" (over `tokens` generated)}."""
    out = subprocess.run([sys.executable, "-c", _CHILD, str(path), str(n_ctx), "mapped" if mapped else "chosen", str(tokens)],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.splitlines()[-1])
