"""`localllm cache`: the prompt states kept on disk (localllm.backends.llamacpp.state_cache)."""

from __future__ import annotations

import json

import click


@click.command("cache")
@click.option("--budget", metavar="SIZE", help="Keep at most this much from now on (4G, 500M; 0 keeps nothing). Saved in the settings; $LOCALLLM_PROMPT_CACHE_BYTES overrides it.")
@click.option("--clear", is_flag=True, help="Delete every saved state.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object: folder, states, bytes, budget.")
def cache(budget, clear, as_json):
    """Show the prompt states kept on disk: where, how many, how much, and the budget.

    run, chat and serve keep the KV cache of prompts over 256 tokens there, so that a prompt that
    starts the same (a document asked again, a reopened chat, a long system prompt) is not read
    again. The least recently used go first once the folder passes its budget (default 4 GiB).
    --no-cache on run, chat and serve turns it off for one command.
    """
    from ..backends.llamacpp import state_cache
    from ..config import load_config, save_config
    from ..options import parse_size

    if budget is not None:
        config = load_config()
        config[state_cache.CONFIG_BUDGET] = parse_size(budget, "--budget")
        save_config(config)
        state_cache.shrink_to_budget()
    if clear:
        removed, freed = state_cache.clear()
        if not as_json:
            click.echo(f"Deleted {removed} saved prompt state{'s' * (removed != 1)} ({_size(freed)}).")
    count, total = state_cache.summary()
    limit = state_cache.budget()
    if as_json:
        click.echo(json.dumps({"folder": str(state_cache.folder()), "states": count, "bytes": total, "budget": limit}))
        return
    click.echo(f"Prompt states: {state_cache.folder()}")
    click.echo(f"  {count} saved, {_size(total)} of a {_size(limit)} budget (least recently used go first)")


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"
