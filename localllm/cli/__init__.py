"""The ``localllm`` command. Thin: parse, call the library, render. Errors become one line and an exit code here.

One module per command group; options come from the one option table (cli/options.py).
Importing this package must stay cheap: ``localllm --help`` never loads llama.cpp or the TUI.
"""

from __future__ import annotations

import os
import sys

import click

from .. import __version__
from ..errors import (
    EXIT_BROKEN_PIPE,
    EXIT_CODES,
    EXIT_INTERRUPTED,
    LocalLLMError,
    UsageError,
)
from .cache import cache
from .chat import chat
from .embed import embed
from .machine import hw, plan_command
from .models import COMMANDS
from .rpc import rpc_worker
from .run import run
from .serve import serve
from .transfer import add, doctor, verify


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
             epilog="\b\nExit codes:\n" + "\n".join(f"  {code:>3}  {meaning}" for code, meaning in EXIT_CODES.items()))
@click.version_option(__version__, "-V", "--version", prog_name="localllm")
def cli() -> None:
    """Run open language models on this machine, offline once a model is on disk.

    \b
    Quick start:
      localllm run "Why is the sky blue?"
      cat notes.txt | localllm run -p "Summarize this"
      localllm run -m ./model.gguf --json "Hello"
      localllm catalog                  # models that fit this machine
      localllm pull qwen3:4b            # download (resumable, verified)

    Exit codes: 0 success, 1 unexpected error, 2 usage error, 3 model not found,
    4 model failed to load (or an RPC worker is unusable), 5 prompt longer than the context window,
    6 generation failed, 7 download failed, 8 not enough disk space, 9 llama.cpp crashed,
    10 a model file changed since it arrived (verify, add), 11 doctor found a problem,
    130 interrupted, 141 stdout closed early.
    """


for _command in (run, chat, hw, plan_command, *COMMANDS, add, verify, doctor, embed, serve, cache, rpc_worker):
    cli.add_command(_command)


def main(argv: list[str] | None = None) -> None:
    code = _main(argv)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:
        code = EXIT_BROKEN_PIPE
    # Everything is written and the model is closed. Skipping interpreter teardown (unloading
    # numpy and llama.cpp, winding down OpenMP's threads) saves 50-80 ms, a tenth of a short run.
    os._exit(code)


def _main(argv: list[str] | None) -> int:
    try:
        # Not cli.main(): it swallows a broken pipe and exits 1, and a closed stdout is 141 here.
        with cli.make_context("localllm", list(sys.argv[1:] if argv is None else argv)) as ctx:
            return cli.invoke(ctx) or 0
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.BadParameter as exc:  # one line naming the option, as for the library's own checks
        click.echo(f"localllm: error: {exc.format_message()}", err=True)
        return UsageError.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except (click.Abort, KeyboardInterrupt):
        click.echo("\nlocalllm: interrupted", err=True)
        return EXIT_INTERRUPTED
    except LocalLLMError as exc:
        from ..printable import printable

        click.echo(f"localllm: error: {printable(exc)}", err=True)
        return exc.exit_code
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): stop quietly, as shell tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except Exception as exc:
        if os.environ.get("LOCALLLM_DEBUG"):
            raise
        from ..errorlog import redact
        from ..printable import printable

        click.echo(f"localllm: unexpected error: {type(exc).__name__}: {printable(redact(str(exc)))} "
                   "(set LOCALLLM_DEBUG=1 for the traceback)", err=True)
        return 1
