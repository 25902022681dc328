"""Constrained output speed on the starter: tokens of output per second (prompt excluded) for
free text, for the same prompt under a JSON Schema on localllm (llguidance, forced tokens in one
batch), and under the same schema through llama.cpp's own grammar sampler as llama-cpp-python
uses it (`Llama(...)(grammar=LlamaGrammar.from_json_schema(...))`).

    python tests/benchmarks/bench_structured.py [--rounds 6] [--threads 2] [--full]

Greedy decoding, 2 threads; rounds alternate the order; ratios are medians of per-round ratios.
--full also measures the transformers engine (the starter exported to a safetensors checkpoint,
as the tests make it): the same schema against free text there.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 24},
    "age": {"type": "integer", "minimum": 0, "maximum": 120},
    "city": {"type": "string", "maxLength": 24},
    "hobbies": {"type": "array", "items": {"type": "string", "maxLength": 16}, "minItems": 1, "maxItems": 3},
    "employed": {"type": "boolean"}},
    "required": ["name", "age", "city", "hobbies", "employed"], "additionalProperties": False}
PROMPT = "Describe a fictional person as a JSON object with name, age, city, hobbies and employed."
MAX_TOKENS = 96


def ours(model, grammar):
    from localllm import SamplingOptions

    done = model.complete(PROMPT, sampling=SamplingOptions(temperature=0, max_tokens=MAX_TOKENS, grammar=grammar,
                                                           ignore_eos=grammar is None))
    timings = done.finished.timings
    return done.finished.usage.completion_tokens / timings.generation_s, done.text


def llama_cpp_grammar(llm, grammar):
    messages = [{"role": "user", "content": PROMPT}]
    first, tokens, text = None, 0, ""
    for chunk in llm.create_chat_completion(messages, temperature=0, max_tokens=MAX_TOKENS, grammar=grammar, stream=True):
        piece = chunk["choices"][0]["delta"].get("content")
        if piece:
            first = first or time.perf_counter()
            tokens += 1
            text += piece
    return (tokens - 1) / (time.perf_counter() - first), text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--full", action="store_true", help="also the transformers engine (needs the full extra)")
    args = parser.parse_args()

    from llama_cpp import Llama, LlamaGrammar

    from localllm import load_model
    from localllm.generation.constraints import json_grammar
    from localllm.registry import starter_path

    model = load_model("starter", n_threads=args.threads, n_ctx=1024)
    grammar = json_grammar(SCHEMA)
    llm = Llama(str(starter_path()), n_ctx=1024, n_threads=args.threads, verbose=False)
    gbnf = LlamaGrammar.from_json_schema(json.dumps(SCHEMA), verbose=False)
    ours(model, grammar), ours(model, None), llama_cpp_grammar(llm, gbnf)  # warm up all three
    free_ratio, grammar_ratio = [], []
    for r in range(args.rounds):
        sides = [("free", lambda: ours(model, None)), ("ours", lambda: ours(model, grammar)),
                 ("llama.cpp", lambda: llama_cpp_grammar(llm, gbnf))]
        got = {name: run() for name, run in (sides if r % 2 == 0 else sides[::-1])}
        speed = {name: value[0] for name, value in got.items()}
        json.loads(got["ours"][1])  # the constrained answer is a document
        free_ratio.append(speed["ours"] / speed["free"])
        grammar_ratio.append(speed["ours"] / speed["llama.cpp"])
        print(f"round {r + 1}: free {speed['free']:.0f}, schema (localllm) {speed['ours']:.0f}, "
              f"schema (llama.cpp grammar) {speed['llama.cpp']:.0f} tok/s", flush=True)
    print(f"\nconstrained / free text:              {statistics.median(free_ratio):.3f}  (target >= 1.0)")
    print(f"localllm / llama.cpp grammar sampler: {statistics.median(grammar_ratio):.3f}  (target >= 1.5)")
    model.close()
    if args.full:
        full(args, grammar)


def full(args, grammar) -> None:
    import sys
    import tempfile
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from safetensors_model import export_starter

    from localllm import load_model
    from localllm.registry import starter_path

    with tempfile.TemporaryDirectory() as folder:
        model = load_model(export_starter(starter_path(), Path(folder) / "starter"), n_threads=args.threads, n_ctx=1024)
        ours(model, grammar), ours(model, None)
        ratios = []
        for r in range(args.rounds):
            sides = [("free", lambda: ours(model, None)), ("ours", lambda: ours(model, grammar))]
            got = {name: run() for name, run in (sides if r % 2 == 0 else sides[::-1])}
            json.loads(got["ours"][1])
            ratios.append(got["ours"][0] / got["free"][0])
            print(f"transformers round {r + 1}: free {got['free'][0]:.0f}, schema {got['ours'][0]:.0f} tok/s", flush=True)
        print(f"\ntransformers engine, constrained / free text: {statistics.median(ratios):.3f}")
        model.close()


if __name__ == "__main__":
    main()
