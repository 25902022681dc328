"""`localllm chat`: the Textual app."""

from __future__ import annotations

import sys

import click

from ..errors import UsageError
from ..options import ENGINES
from .options import draft_option, option
from .rpc import rpc_option


@click.command()
@click.option("-m", "--model", metavar="MODEL", help="Model to open: a path, an installed name, a catalog or Hub reference.  [default: the last used, else the best installed; with none, the model picker]")
@click.option("--resume", is_flag=True, help="Continue the most recent conversation, with its model.")
@option("n_ctx", shown_default="the last one set in the app, else the trained length, at most 4096")
@option("n_threads", shown_default="physical cores")
@option("n_gpu_layers", shown_default="as many as fit")
@option("engine", choices=ENGINES, shown_default="from its format")
@option("dtype", shown_default="the checkpoint's where native, else float32")
@option("speculation", default="auto", shown_default="auto")
@draft_option
@click.option("--think/--no-think", default=None, help="Let a thinking model (Qwen3) reason first, or not, where its template can switch.  [default: the model's]")
@click.option("--no-cache", is_flag=True, help="Do not keep the conversation's KV cache on disk (kept after each answer, so that a reopened chat does not read its history again).")
@rpc_option
def chat(model, resume, ctx, threads, gpu_layers, engine, dtype, spec, draft, think, no_cache, rpc):
    """Chat in the terminal: streaming answers, saved conversations, model downloads. F1 lists the keys.

    Conversations are saved as they are written (in $LOCALLLM_HOME/chats.sqlite3).
    """
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise UsageError("localllm chat needs a terminal; in scripts and pipes use: localllm run")
    from .. import crash
    from ..config import load_config
    from ..model import chat_load_options
    from ..tui import ChatApp

    crash.install()
    crash.restore_terminal_on_crash(sys.stdout.fileno())

    saved_ctx = load_config().get("chat", {}).get("n_ctx")
    options = chat_load_options(n_ctx=ctx or saved_ctx, n_threads=threads, n_gpu_layers=gpu_layers, engine=engine, dtype=dtype,
                                rpc=rpc, prompt_cache="" if no_cache else "live", speculation=spec, draft=draft)
    app = ChatApp(model_ref=model, resume=resume, load_options=options, think=think)
    app.run()
    if app.fatal_error:
        click.echo(f"localllm: error: {app.fatal_error}", err=True)
    return app.return_code or 0
