"""The load without AMX (issue 17) against llama.cpp's default placement and against turning the
extra buffer types off altogether, on the starter (Q4_1) and the starter requantized to Q4_0.

    python tests/benchmarks/bench_amx.py [--rounds 5] [--best-of 3] [--threads 2]

Three placements, alternated every round in one process so a noisy machine affects all alike;
each keeps its best of --best-of samples per round, and ratios are medians of per-round ratios:
- default: llama.cpp's own choice (AMX where the build has it, then CPU_REPACK, then plain CPU);
  what LOCALLLM_AMX=auto gives where AMX works or is absent.
- fallback: what localllm loads when AMX is off or crashes: use_extra_bufts off, and the
  weights CPU_REPACK takes sent back to it.
- no-extra: use_extra_bufts off alone, the plain workaround, which also loses repacking.
Prompt speed is pp512 (one 512-token batch); decode speed tg128 (128 tokens after one).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

from localllm.backends.llamacpp import amx
from localllm.backends.llamacpp import model as llamacpp
from localllm.backends.llamacpp import params as llamacpp_params
from localllm.events import Finished
from localllm.hardware import cpu_flags, read_cpuinfo
from localllm.options import LoadOptions, SamplingOptions
from localllm.registry import starter_path

PP_TOKENS, TG_TOKENS = 512, 128


def _no_extra(mparams, path, n_gpu_layers):
    mparams.use_extra_bufts = False


def load(path: Path, placement: str, threads: int) -> llamacpp.LlamaCppModel:
    os.environ[amx.ENV] = "off" if placement == "fallback" else "auto"
    amx._status = None
    place = llamacpp.place_cpu_weights
    if placement == "no-extra":
        llamacpp.place_cpu_weights = _no_extra
    try:
        return llamacpp.LlamaCppModel(path, LoadOptions(n_ctx=1024, n_threads=threads, n_gpu_layers=0))
    finally:
        llamacpp.place_cpu_weights = place


def speeds(model: llamacpp.LlamaCppModel) -> tuple[float, float]:
    greedy = SamplingOptions(temperature=0, max_tokens=1, ignore_eos=True)
    prompt = [100 + i % 1000 for i in range(PP_TOKENS)]
    pp = next(e for e in model.generate(prompt, greedy) if isinstance(e, Finished)).timings.prompt_tokens_per_s
    decode = SamplingOptions(temperature=0, max_tokens=TG_TOKENS + 1, ignore_eos=True)
    tg = next(e for e in model.generate([1], decode) if isinstance(e, Finished)).timings.generation_tokens_per_s
    return pp, tg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--best-of", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    flags = cpu_flags(read_cpuinfo())
    print(f"CPU: {'AMX, ' if 'amx_tile' in flags else ''}{'AVX-512' if 'avx512f' in flags else 'AVX2' if 'avx2' in flags else 'no AVX2'}; "
          f"AMX verdict: {amx.status().describe()}")
    starter = starter_path()
    with tempfile.TemporaryDirectory() as tmp:
        q4_0 = Path(tmp) / "starter-q4_0.gguf"
        llamacpp_params.quantize(starter, q4_0, "q4_0")
        for name, path in (("starter Q4_1", starter), ("starter Q4_0", q4_0)):
            placements = ("default", "fallback", "no-extra")
            rounds: list[dict[str, tuple[float, float]]] = []
            for _ in range(args.rounds):
                best = {}
                for placement in placements:
                    model = load(path, placement, args.threads)
                    try:
                        samples = [speeds(model) for _ in range(args.best_of)]
                    finally:
                        model.close()
                    best[placement] = (max(s[0] for s in samples), max(s[1] for s in samples))
                rounds.append(best)
            print(f"\n{name}, {args.threads} threads, {args.rounds} rounds, best of {args.best_of} per round")
            for placement in placements:
                pp = statistics.median(r[placement][0] for r in rounds)
                tg = statistics.median(r[placement][1] for r in rounds)
                print(f"  {placement:9} pp{PP_TOKENS} {pp:7.1f} tok/s   tg{TG_TOKENS} {tg:6.1f} tok/s (medians)")
            for a, b in (("fallback", "default"), ("fallback", "no-extra")):
                pp = statistics.median(r[a][0] / r[b][0] for r in rounds)
                tg = statistics.median(r[a][1] / r[b][1] for r in rounds)
                print(f"  {a} / {b}: pp {pp:.3f}x, tg {tg:.3f}x")


if __name__ == "__main__":
    main()
