"""Weights held once: resident memory of a load as localllm chooses it (read into memory where
llama.cpp repacks weights, mapped elsewhere) against the file always mapped (what llama.cpp's own
tools and localllm before did), and the planner's prediction, for each quantization the catalog
offers, made from the starter with llama_model_quantize, and for any GGUF named with --model.

    python tests/benchmarks/bench_weights.py [--model PATH ...] [--ctx 4096]

Each row is a fresh process: load, one prompt of 512 tokens, then RSS growth. Targets: the plan
never under the measured growth and within 3% or 64 MiB of it; ours / mapped <= 0.75 where
repack takes most weights (Q4_0, Q4_K_M, IQ4_XS on x86 with AVX2).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from localllm.backends.llamacpp.estimate import MIB, LoadShape, estimate
from localllm.backends.llamacpp.params import QUANT_FTYPES, quantize
from localllm.gguf_info import inspect_file
from localllm.registry import starter_path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from memory_probe import measure  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", default=[], help="another GGUF to measure (repeatable)")
    parser.add_argument("--ctx", type=int, default=4096)
    parser.add_argument("--rounds", type=int, default=3, help="speed rounds for the models given with --model")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-weights-"))
    starter = starter_path()
    models = [starter]
    for kind in QUANT_FTYPES:
        target = work / f"starter-{kind}.gguf"
        quantize(starter, target, kind)
        models.append(target)
    models += [Path(m) for m in args.model]
    cache = work / "specs"
    print(f"{'model':40}{'plan':>8}{'ours':>8}{'mapped':>8}{'ours/mapped':>12}{'plan-ours':>10}  once by   buffers (MiB)")
    for path in models:
        spec = inspect_file(path, cache)
        plan = estimate(spec, LoadShape(n_ctx=args.ctx)).ram.total
        ours, mapped = measure(path, args.ctx), measure(path, args.ctx, mapped=True)
        buffers = ", ".join(f"{k} {v / MIB:.0f}" for k, v in sorted(ours["buffers"].items()))
        ok = plan >= ours["growth"] and abs(plan - ours["growth"]) <= max(0.03 * ours["growth"], 64 * MIB)
        print(f"{path.name[:39]:40}{plan / MIB:7.0f}M{ours['growth'] / MIB:7.0f}M{mapped['growth'] / MIB:7.0f}M"
              f"{ours['growth'] / mapped['growth']:11.2f}x{(plan - ours['growth']) / MIB:+9.0f}M  "
              f"{'release' if ours['released'] else 'n/a' if ours['mapped'] else 'reading':8}  {buffers}  {'ok' if ok else 'PLAN OFF TARGET'}")
    # Speed, ours against mapped whole, side by side, alternating, on the models given (the real ones).
    for path in [Path(m) for m in args.model]:
        runs = {"ours": [], "mapped": []}
        for round_ in range(args.rounds):
            for mode in (("ours", "mapped") if round_ % 2 == 0 else ("mapped", "ours")):
                runs[mode].append(measure(path, args.ctx, mapped=mode == "mapped", tokens=64))
        median = {mode: {k: statistics.median(r[k] for r in rs) for k in ("load_s", "ttft_s", "decode_tok_s")}
                  for mode, rs in runs.items()}
        read, mapped = median["ours"], median["mapped"]
        print(f"{path.name}: load {read['load_s']:.2f} s vs {mapped['load_s']:.2f} s ({read['load_s'] / mapped['load_s']:.2f}x), "
              f"first token after 512 {read['ttft_s']:.2f} s vs {mapped['ttft_s']:.2f} s ({read['ttft_s'] / mapped['ttft_s']:.2f}x), "
              f"decode {read['decode_tok_s']:.1f} vs {mapped['decode_tok_s']:.1f} tok/s "
              f"({read['decode_tok_s'] / mapped['decode_tok_s']:.3f}x); ours / mapped whole, medians of {args.rounds}")


if __name__ == "__main__":
    main()
