"""A JSON Schema through the server's batched decode path against the same schema through `run`'s,
on one model, side by side, alternating, in one process: both on the engine thread, greedy.

    python tests/benchmarks/bench_schema_serve.py [--model starter] [--rounds 6] [--threads 2]

The schema has long property names, so most of each answer is tokens the grammar forces: `run`
evaluates those in one batch instead of sampling them one by one, and so must the batched path
(issue 26: serve with a schema >= 0.9x run --schema). Prints output tokens per second of each
and their ratio (batched / run), the median of per-round ratios.
"""

from __future__ import annotations

import argparse
import statistics
import threading

SCHEMA = {"type": "object", "properties": {
    "full_name_of_the_person_described": {"type": "string", "maxLength": 24},
    "age_in_whole_years_at_the_time_of_writing": {"type": "integer", "minimum": 0, "maximum": 120},
    "city_where_the_person_currently_lives": {"type": "string", "maxLength": 24},
    "whether_the_person_is_currently_employed": {"type": "boolean"}},
    "required": ["full_name_of_the_person_described", "age_in_whole_years_at_the_time_of_writing",
                 "city_where_the_person_currently_lives", "whether_the_person_is_currently_employed"],
    "additionalProperties": False}
PROMPT = "Describe a fictional person as a JSON object."


def main() -> None:
    from localllm.backends.base import SequenceRequest
    from localllm.engine import Engine
    from localllm.events import Finished
    from localllm.generation.constraints import json_grammar
    from localllm.options import LoadOptions, SamplingOptions

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="starter")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    from localllm import load_model

    engine = Engine()
    served = engine.acquire(args.model, LoadOptions(n_ctx=2048, n_threads=args.threads, n_seq=2)).result()
    # run's path on a model of its own: one context cannot serve both paths' bookkeeping.
    model = engine.submit(load_model, args.model, LoadOptions(n_ctx=2048, n_threads=args.threads)).result()
    grammar = json_grammar(SCHEMA)
    sampling = SamplingOptions(temperature=0, max_tokens=160, grammar=grammar)
    prompt = model.format_chat([{"role": "user", "content": PROMPT}])
    tokens = model.tokenize(prompt)

    def single() -> float:
        return engine.submit(lambda: _collect(model.generate(tokens, sampling))).result()

    def batched() -> float:
        finished: list[Finished] = []
        over = threading.Event()

        def emit(event) -> None:
            if isinstance(event, (Finished, Exception)):
                finished.append(event)
                over.set()

        engine.generate(served, SequenceRequest(tokens, sampling, emit))
        over.wait(300)
        if isinstance(finished[0], Exception):
            raise finished[0]
        return _rate(finished[0])

    ratios, runs, batches = [], [], []
    for round_ in range(args.rounds):
        order = (single, batched) if round_ % 2 == 0 else (batched, single)
        result = {fn.__name__: fn() for fn in order}
        runs.append(result["single"])
        batches.append(result["batched"])
        ratios.append(result["batched"] / result["single"])
    engine.release(served)
    engine.submit(model.close).result()
    engine.shutdown()
    print(f"{args.model}: run {statistics.median(runs):.1f} tok/s, batched (serve) {statistics.median(batches):.1f} tok/s, "
          f"batched / run {statistics.median(ratios):.2f}x (median of {args.rounds} rounds)")


def _collect(events) -> float:
    from localllm.events import Finished

    for event in events:
        if isinstance(event, Finished):
            return _rate(event)
    raise RuntimeError("no Finished event")


def _rate(finished) -> float:
    """Output tokens per second after the first, prompt excluded."""
    return finished.timings.generation_tokens_per_s


if __name__ == "__main__":
    main()
