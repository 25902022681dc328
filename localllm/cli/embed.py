"""`localllm embed`: vectors for texts, from a model llama.cpp can embed with."""

from __future__ import annotations

import json
import sys

import click

from ..errors import UsageError

MAX_TEXTS = 10_000


@click.command()
@click.argument("texts", nargs=-1)
@click.option("-m", "--model", metavar="MODEL", required=True, help="An embedding model (a GGUF that declares its pooling, e.g. nomic-embed, bge, e5).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object: model, dimensions, embeddings, token count.")
@click.option("--threads", type=click.IntRange(min=1), help="CPU threads.  [default: physical cores]")
def embed(texts, model, as_json, threads):
    """Print one unit-length vector per TEXT (or per line of stdin when no TEXT is given), each a
    JSON array on its own line, in the order given. Pooling is the model's own (mean, CLS, last).

    \b
      localllm embed -m nomic-embed-text "first text" "second text"
      cut -f2 notes.tsv | localllm embed -m bge-small --json > vectors.json
    """
    from ..model import load_model

    if not texts:
        if sys.stdin.isatty():
            raise UsageError("give the texts as arguments, or one per line on stdin")
        try:
            texts = tuple(line for line in sys.stdin.read().splitlines() if line.strip())
        except UnicodeDecodeError as exc:
            raise UsageError(f"stdin is not UTF-8 text (byte {exc.start})") from None
    if not texts:
        raise UsageError("no text to embed")
    if len(texts) > MAX_TEXTS:
        raise UsageError(f"at most {MAX_TEXTS} texts at once, not {len(texts)}")
    with load_model(model, n_threads=threads, engine="llamacpp") as loaded:
        if not loaded.can_embed:
            raise UsageError(f"{loaded.path.name} is not an embedding model: it declares no pooling of its token "
                             "states (use one made for embeddings, e.g. nomic-embed-text or bge)")
        vectors, tokens = loaded.embed(list(texts))
    if as_json:
        click.echo(json.dumps({"model": str(model), "dimensions": len(vectors[0]), "embeddings": vectors,
                               "usage": {"prompt_tokens": tokens}}))
        return
    for vector in vectors:
        click.echo(json.dumps(vector))
