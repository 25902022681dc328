"""The ``localllm`` command. Thin: parse, call the library, render. Errors become one line and an exit code here.

Importing this module must stay cheap: ``localllm --help`` never loads llama.cpp or the TUI.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import click

from . import __version__
from .cli_models import COMMANDS
from .cli_rpc import rpc_option, rpc_worker
from .cli_embed import embed
from .cli_transfer import add, doctor, verify
from .cli_serve import serve
from .errors import EXIT_BROKEN_PIPE, EXIT_CODES, EXIT_INTERRUPTED, LocalLLMError, UsageError
from .options import DTYPES, ENGINES, FLASH_ATTN, MIN_CTX_TOKENS, REASONING_EFFORTS, flash_attn_name, unescape
from .status import Status

# `run` opens the KV cache for this many tokens and grows it to the window only for a longer
# prompt or answer: most one-shot answers fit, and a smaller cache is faster to set up.
RUN_INITIAL_CTX = 1024


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


@cli.command(context_settings={"show_default": True})
@click.argument("prompt_arg", metavar="[PROMPT]", required=False)
@click.option("-p", "--prompt", "prompt_opt", metavar="TEXT", help="The prompt (or give it as the argument).")
@click.option("-m", "--model", metavar="MODEL", help="A .gguf path, an installed model's name, or 'starter'.  [default: the configured default, else the best installed model]")
@click.option("-s", "--system", metavar="TEXT", help="System prompt.")
@click.option("--max-tokens", type=click.IntRange(min=1), help="Stop after this many tokens.  [default: until the model ends its turn or the context is full]")
@click.option("--temperature", "-t", type=click.FloatRange(min=0), default=0.8, help="0 picks the likeliest token every time: the same answer on every run.")
@click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=0.95, help="Nucleus sampling threshold.")
@click.option("--top-k", type=click.IntRange(min=0), default=40, help="Sample among the k likeliest tokens (0: all).")
@click.option("--min-p", type=click.FloatRange(0, 1, max_open=True), default=0.05, help="Drop tokens less likely than this fraction of the top one.")
@click.option("--repeat-penalty", type=click.FloatRange(min=0, min_open=True), default=1.0, help="Penalize tokens seen in the last 64 (1: off).")
@click.option("--seed", type=click.IntRange(0, 2**32 - 2), help="Random seed, for answers that repeat.  [default: random, shown by --json]")
@click.option("--ctx", type=click.IntRange(min=0), help="Context window in tokens; 0 for the model's trained length.  [default: the trained length, halved until it fits in free memory; the KV cache grows as it fills]")
@click.option("--threads", type=click.IntRange(min=1), help="CPU threads, fixed (without it the count is chosen again while decoding when other processes take cores).  [default: physical cores]")
@click.option("--gpu-layers", type=click.IntRange(min=-1), help="Layers to offload to the GPU: -1 all, 0 none. Ignored by CPU-only builds.  [default: as many as fit]")
@click.option("--kv-type", type=click.Choice(["f16", "q8_0", "q4_0"]), help="KV cache type.  [default: f16, q8_0 when memory is tight]")
@click.option("--flash-attn", type=click.Choice(list(FLASH_ATTN)), default="auto", help="Flash attention; auto lets llama.cpp choose. On CPUs it is faster for short contexts and slower past a few hundred tokens.")
@click.option("--margin", type=click.IntRange(min=0), metavar="MIB", help="Memory to keep free per device, in MiB.  [default: 5%, at least 128]")
@click.option("--load-anyway", is_flag=True, help="Load even when the planner predicts it will not fit, or with a --ctx beyond the trained context.")
@click.option("--engine", type=click.Choice(ENGINES), help="Backend to run the model on.  [default: from its format: .gguf llama.cpp, a safetensors folder transformers]")
@click.option("--dtype", type=click.Choice(DTYPES), help="Precision on the transformers engine.  [default: the checkpoint's where the device computes in it natively, else float32]")
@rpc_option
@click.option("--schema", metavar="FILE|JSON", help="Constrain the answer to this JSON Schema (a file, or the schema itself); an answer that ends on its own validates.")
@click.option("--grammar", "grammar_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), metavar="FILE",
              help="Constrain the answer to this grammar: llama.cpp's GBNF, or Lark.")
@click.option("--stop", multiple=True, metavar="TEXT", callback=lambda _c, _p, v: tuple(unescape(s) for s in v),
              help="End the answer before this text, which is not printed (repeatable). \\n, \\t, \\r, \\\\ and \\xHH are read as escapes, as llama.cpp reads them: --stop '\\n\\n'.")
@click.option("--think/--no-think", default=None, help="Let a thinking model (Qwen3) reason first, or not, where its template can switch.  [default: the model's]")
@click.option("--reasoning-effort", type=click.Choice(REASONING_EFFORTS), help="How long gpt-oss reasons (its template's reasoning_effort).  [default: the model's, medium]")
@click.option("--show-thinking", is_flag=True, help="Print a thinking model's reasoning on stderr as it comes (else a one-line count on a terminal).")
@click.option("--ignore-eos", is_flag=True, help="Keep generating past the end of the turn (for benchmarks).")
@click.option("--raw", is_flag=True, help="Give the prompt to the model as it is, without the chat template (base models, text completion).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object: text, model, finish reason, token counts, timings, settings.")
@click.option("--no-stream", is_flag=True, help="Print the answer once it is complete.")
@click.option("-v", "--verbose", is_flag=True, help="Show llama.cpp's own log on stderr.")
def run(prompt_arg, prompt_opt, model, system, max_tokens, temperature, top_p, top_k, min_p, repeat_penalty,
        seed, ctx, threads, gpu_layers, kv_type, flash_attn, margin, load_anyway, engine, dtype, rpc, schema, grammar_file,
        stop, think, reasoning_effort, show_thinking, ignore_eos, raw, as_json,
        no_stream, verbose):
    """Answer one prompt and exit. Tokens stream to stdout; everything else goes to stderr.

    Text piped on stdin is the prompt, or, with a prompt too, context placed before it:

    \b
      cat file.py | localllm run -p "Explain this code"
    """
    from . import crash
    from .model import load_model
    from .constraints import from_options
    from .options import LoadOptions, SamplingOptions

    crash.install()
    if raw and (think is not None or reasoning_effort is not None):
        raise UsageError("--think, --no-think and --reasoning-effort work through the chat template, which --raw leaves out")
    if raw and system is not None:
        raise UsageError("--system needs the chat template, which --raw leaves out: put the system text in the prompt")
    prompt = _read_prompt(prompt_arg, prompt_opt)
    load_options = LoadOptions(n_ctx=ctx, n_threads=threads, n_gpu_layers=gpu_layers, kv_type=kv_type,
                               flash_attn=FLASH_ATTN[flash_attn], initial_ctx=RUN_INITIAL_CTX,
                               margin=None if margin is None else margin * 2**20, load_anyway=load_anyway, engine=engine,
                               dtype=dtype, rpc=rpc, verbose=verbose)
    sampling = SamplingOptions(
        max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p,
        repeat_penalty=repeat_penalty, seed=seed, ignore_eos=ignore_eos, stop=stop,
        grammar=from_options(schema, grammar_file),
    )
    status = Status(enabled=not as_json)
    status.show(f"loading {model or 'the default model'}…")
    try:
        loaded = load_model(model, load_options, notify=lambda message: click.echo(f"localllm: {message}", err=True))
    finally:
        status.clear()
    with loaded:
        events = loaded.generate(prompt, sampling) if raw else loaded.prompt(prompt, system, sampling, think, reasoning_effort)
        _answer(loaded, events, {"system": system, "raw": raw, "think": think, "reasoning_effort": reasoning_effort}, sampling,
                as_json=as_json,
                stream=not (no_stream or as_json), status=status, show_thinking=show_thinking)


@cli.command()
@click.option("-m", "--model", metavar="MODEL", help="Model to open: a path, an installed name, a catalog or Hub reference.  [default: the last used, else the best installed; with none, the model picker]")
@click.option("--resume", is_flag=True, help="Continue the most recent conversation, with its model.")
@click.option("--ctx", type=click.IntRange(min=MIN_CTX_TOKENS), help="Context window in tokens.  [default: the last one set in the app, else the trained length, at most 4096]")
@click.option("--threads", type=click.IntRange(min=1), help="CPU threads, fixed (without it the count is chosen again while decoding when other processes take cores).  [default: physical cores]")
@click.option("--gpu-layers", type=click.IntRange(min=-1), help="Layers to offload to the GPU: -1 all, 0 none.  [default: as many as fit]")
@click.option("--engine", type=click.Choice(ENGINES), help="Backend to run the model on.  [default: from its format]")
@click.option("--dtype", type=click.Choice(DTYPES), help="Precision on the transformers engine.  [default: the checkpoint's where native, else float32]")
@click.option("--think/--no-think", default=None, help="Let a thinking model (Qwen3) reason first, or not, where its template can switch.  [default: the model's]")
@rpc_option
def chat(model, resume, ctx, threads, gpu_layers, engine, dtype, think, rpc):
    """Chat in the terminal: streaming answers, saved conversations, model downloads. F1 lists the keys.

    Conversations are saved as they are written (in $LOCALLLM_HOME/chats.sqlite3).
    """
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise UsageError("localllm chat needs a terminal; in scripts and pipes use: localllm run")
    from . import crash
    from .config import load_config
    from .model import chat_load_options
    from .tui import ChatApp

    crash.install()
    crash.restore_terminal_on_crash(sys.stdout.fileno())

    saved_ctx = load_config().get("chat", {}).get("n_ctx")
    options = chat_load_options(n_ctx=ctx or saved_ctx, n_threads=threads, n_gpu_layers=gpu_layers, engine=engine, dtype=dtype,
                                rpc=rpc)
    app = ChatApp(model_ref=model, resume=resume, load_options=options, think=think)
    app.run()
    if app.fatal_error:
        click.echo(f"localllm: error: {app.fatal_error}", err=True)
    return app.return_code or 0


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
def hw(as_json):
    """Show what this machine has: CPU, memory, GPUs, and what llama.cpp can use."""
    from dataclasses import asdict

    from .backends import this_machine

    profile = this_machine()
    if as_json:
        click.echo(json.dumps(asdict(profile), indent=2))
        return
    click.echo(_hw_text(profile))


def _hw_text(profile) -> str:
    from .planner import human_bytes

    cpu, mem = profile.cpu, profile.memory
    cores = f"{cpu.physical_cores or '?'} cores, {cpu.logical_cores or '?'} threads"
    if cpu.performance_cores is not None:
        cores += f" ({cpu.performance_cores} performance + {cpu.efficiency_cores} efficiency)"
    lines = [
        f"CPU     {cpu.model or 'unknown'}: {cores}; {', '.join(cpu.features) or 'no SIMD features detected'}",
        f"RAM     {human_bytes(mem.available)} available of {human_bytes(mem.total)}"
        + (f" (container limit {human_bytes(mem.cgroup_limit)})" if mem.cgroup_limit else "")
        + (f"; swap {human_bytes(mem.swap_total)}" if mem.swap_total else "; no swap"),
    ]
    for gpu in profile.gpus:
        memory = "memory unknown" if gpu.total is None else f"{human_bytes(gpu.free)} free of {human_bytes(gpu.total)}"
        extra = "".join(f", {k} {v}" for k, v in (("compute", gpu.compute_capability), ("driver", gpu.driver)) if v)
        lines.append(f"GPU {gpu.index}   {gpu.name}: {memory}{' (shared with the CPU)' if gpu.unified else ''}{extra}")
    if not profile.gpus:
        lines.append("GPU     none found")
    if profile.build is not None:
        devices = ", ".join(d.name for d in profile.build.devices) or "none"
        lines.append(f"llama.cpp  GPU offload {'yes' if profile.build.gpu_offload else 'no'}; devices: {devices}")
        amx = profile.build.amx
        if amx is not None and (amx.present or amx.in_build):
            lines.append(f"AMX     {amx.describe()}")
    lines += [f"note: {note}" for note in profile.notes]
    return "\n".join(lines)


@cli.command("plan")
@click.argument("model", required=False)
@click.option("--ctx", type=click.IntRange(min=MIN_CTX_TOKENS), help="Context window to plan for.  [default: the trained length, at most 4096]")
@click.option("--gpu-layers", type=click.IntRange(min=0), help="Fix the number of GPU layers.")
@click.option("--kv-type", type=click.Choice(["f16", "q8_0", "q4_0"]), help="Fix the KV cache type.")
@click.option("--margin", type=click.IntRange(min=0), metavar="MIB", help="Memory to keep free per device, in MiB.  [default: 5%, at least 128]")
@click.option("--full", is_flag=True, help="Plan the full-precision safetensors checkpoint (a catalog entry's safetensors_repo, or owner/repo on the Hub).")
@rpc_option
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
def plan_command(model, ctx, gpu_layers, kv_type, margin, full, rpc, as_json):
    """Show how MODEL would be loaded here, and why: fit, settings, memory per device.

    MODEL may be installed, a catalog name (planned offline from the catalog, with the
    quantization that fits best unless one is named) or a Hub reference (its header is read).
    A safetensors checkpoint (a folder, an installed one, or --full before any download: its
    config and headers are read by HTTP range) is planned for the transformers engine, per GPU.
    """
    from .backends import this_machine
    from .cli_models import spec_for
    from .printable import printable
    from .planner import Overrides, breakdown_rows, plan
    from .registry import resolve

    if rpc:
        from . import rpc as rpc_workers

        rpc_workers.connect(rpc)
    profile = this_machine()
    if full or (model is not None and _installed_checkpoint(model)):
        _plan_checkpoint(model, profile, ctx, margin, full, as_json)
        return
    # A model that is not installed is planned before any download: that is what plan is for.
    spec = spec_for(model or str(resolve(None)), profile)[0]
    overrides = Overrides(n_ctx=ctx, n_gpu_layers=gpu_layers, kv_type=kv_type,
                          margin=None if margin is None else margin * 2**20)
    # Threads as a quiet machine would start with: a sample of the other processes' load over the
    # moment `plan` runs flipped between 1 and 2 on back-to-back calls, and a load adapts while
    # decoding anyway (backends/threads.py).
    chosen = plan(profile, spec, overrides)
    if as_json:
        from dataclasses import asdict

        click.echo(json.dumps({"model": spec.name, "fit": chosen.fit, "label": chosen.label,
                               "settings": asdict(chosen.shape) | {"n_threads": chosen.n_threads},
                               "estimate": [asdict(d) | {"total": d.total} for d in chosen.estimate.devices],
                               "margins": chosen.margins, "free": chosen.budgets,
                               "explanation": chosen.explanation, "warnings": chosen.warnings}, indent=2))
        return
    click.echo(f"{printable(spec.name)}: {chosen.label}")
    click.echo(printable(chosen.explanation))
    rows = breakdown_rows(chosen)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    click.echo()
    for row in rows:
        click.echo("  ".join(cell.ljust(widths[0]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row)))
    shape = chosen.shape
    click.echo(f"\nsettings: --ctx {shape.n_ctx} --gpu-layers {shape.n_gpu_layers} --kv-type {shape.kv_type} --threads {chosen.n_threads}")
    for warning in chosen.warnings:
        click.echo(f"warning: {printable(warning)}", err=True)


for _command in (*COMMANDS, add, verify, doctor, embed, serve, rpc_worker):
    cli.add_command(_command)


def _installed_checkpoint(ref: str):
    from .errors import ModelNotFoundError
    from .registry import find_installed

    try:
        found = find_installed(ref)
    except (ModelNotFoundError, UsageError):
        return None
    return found.path if found.format == "safetensors" else None


def _plan_checkpoint(ref, profile, ctx, margin, full: bool, as_json: bool) -> None:
    from .catalog import load_catalog
    from .checkpoint_plan import place, read_local, read_remote
    from .backends.transformers_engine import choose_dtype
    from .planner import human_bytes
    from .printable import printable
    from .references import parse_reference

    if ref is None:
        raise UsageError("plan --full needs a model: a catalog name or owner/repo")
    local = _installed_checkpoint(ref)
    if local is not None:
        spec = read_local(local)
    else:
        parsed = parse_reference(ref, load_catalog())
        repo = parsed.entry.safetensors_repo if parsed.entry is not None else parsed.repo_id
        if repo is None:
            raise UsageError(f"{ref} names no Hub repository to plan")
        spec = read_remote(repo, parsed.revision)
    gpus = [(g.index, g.free, g.vendor) for g in profile.gpus if g.vendor == "nvidia" and g.free]
    dtype = choose_dtype(None, spec.dtype, "cuda" if gpus else "cpu", profile.cpu.features)
    n_ctx = ctx or min(spec.n_ctx_train, 4096)
    placed = place(spec, dtype, n_ctx, gpus, profile.memory.available, None if margin is None else margin * 2**20)
    layers = {device: sum(1 for m, d in placed.device_map.items() if d == device and ".layers." in m)
              for device in [*(g[0] for g in gpus), "cpu"]}
    if as_json:
        click.echo(json.dumps({"model": spec.name, "engine": "transformers", "fit": placed.fit, "dtype": dtype,
                               "n_ctx": n_ctx, "layers": {str(k): v for k, v in layers.items()}, "used": placed.used,
                               "free": placed.free, "warnings": placed.warnings}, indent=2))
        return
    labels = {"gpu": "fits on GPU", "partial": "partial offload", "cpu": "CPU only", "none": "does not fit"}
    click.echo(printable(f"{spec.name}: {labels[placed.fit]} (transformers engine, {dtype}, {n_ctx}-token context)"))
    for device, count in layers.items():
        name = "RAM" if device == "cpu" else f"GPU {device}"
        click.echo(f"  {name:<6} {count:>4} of {spec.n_layer} layers  {human_bytes(placed.used[str(device)]):>10} of "
                   f"{human_bytes(placed.free[str(device)])} usable (weights, KV cache, runtime)")
    for warning in placed.warnings:
        click.echo(f"localllm: warning: {warning}", err=True)


def _answer(model, events, prompt_settings: dict, sampling, as_json: bool, stream: bool, status: Status,
            show_thinking: bool = False) -> None:
    from .events import Finished, PromptProgress, Reasoning, Token
    from .status import PromptEta

    out = sys.stdout
    eta = None
    parts: list[str] = []
    thought: list[str] = []
    finished = None
    try:
        for event in events:
            if isinstance(event, Reasoning):
                thought.append(event.text)
                if show_thinking:
                    sys.stderr.write(event.text)  # as the answer goes to stdout: the model's own text
                    sys.stderr.flush()
                else:
                    status.show(f"thinking… {len(thought)} tokens")
            elif isinstance(event, Token):
                if thought and not parts and show_thinking:
                    sys.stderr.write("\n")
                if not parts:
                    status.clear()
                parts.append(event.text)
                if stream:
                    out.write(event.text)
                    out.flush()
            elif isinstance(event, PromptProgress):
                eta = eta or PromptEta(time.monotonic())
                status.show(eta.line(event, time.monotonic()))
            elif isinstance(event, Finished):
                finished = event
    except KeyboardInterrupt:
        if stream and parts:
            out.write("\n")  # leave the shell prompt on a fresh line
            out.flush()
        raise
    text = "".join(parts)
    if as_json:
        result = _json_result(model, text, finished, prompt_settings, sampling)
        result["reasoning"] = "".join(thought) if thought else None
        out.write(json.dumps(result, indent=2) + "\n")
    elif stream:
        if text and not text.endswith("\n"):
            out.write("\n")
    else:
        out.write(text if text.endswith("\n") else text + "\n")
    out.flush()
    status.clear()
    if finished.reason == "length" and sampling.grammar is not None:
        click.echo("localllm: warning: the answer was cut off by the token limit, so it does not follow the schema "
                   "or grammar to its end (raise --max-tokens)", err=True)
    elif finished.reason == "length" and finished.usage.prompt_tokens + finished.usage.completion_tokens >= model.n_ctx:
        click.echo(f"localllm: warning: the answer was cut off: the {model.n_ctx}-token context window is full (raise it with --ctx)", err=True)


def _json_result(model, text, finished, prompt_settings, sampling) -> dict:
    from dataclasses import asdict

    from .registry import display_name

    result = finished.to_dict()
    return {
        "text": text,
        "model": display_name(model.path),
        "path": str(model.path),
        "finish_reason": result["reason"],
        "usage": result["usage"],
        "timings": {"load_s": model.load_seconds, **result["timings"]},
        "settings": {
            **{k: v for k, v in asdict(sampling).items() if k != "grammar"},
            "constrained": sampling.grammar is not None,
            "seed": finished.seed,
            **prompt_settings,
            "n_ctx": model.n_ctx,
            "kv_type": model.options.kv_type or "f16",
            "flash_attn": flash_attn_name(model.options.flash_attn),
            "n_threads": model.n_threads,
            "threads_at_end": model.threads_in_use,
            "n_gpu_layers": model.n_gpu_layers,
            "mmap": model.weights_mapped,
            "engine": model.engine,
            "dtype": model.dtype,
            "rpc": list(model.options.rpc),
        },
    }


def _read_prompt(prompt_arg: str | None, prompt_opt: str | None) -> str:
    if prompt_arg is not None and prompt_opt is not None:
        raise UsageError("give the prompt once: as the argument or with -p, not both")
    prompt = prompt_opt if prompt_opt is not None else prompt_arg
    piped = _read_stdin()
    if piped and prompt:
        prompt = f"{piped}\n\n{prompt}"
    elif piped:
        prompt = piped
    if not prompt or not prompt.strip():
        raise UsageError("the prompt is empty: give it as an argument, with -p, or on stdin")
    return prompt


def _read_stdin() -> str | None:
    stdin = sys.stdin
    if stdin is None or stdin.isatty():
        return None
    data = stdin.buffer.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"stdin is not valid UTF-8 (byte {data[exc.start]:#04x} at offset {exc.start})") from exc
    return text.strip() or None


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
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except (click.Abort, KeyboardInterrupt):
        click.echo("\nlocalllm: interrupted", err=True)
        return EXIT_INTERRUPTED
    except LocalLLMError as exc:
        from .printable import printable

        click.echo(f"localllm: error: {printable(exc)}", err=True)
        return exc.exit_code
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): stop quietly, as shell tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except Exception as exc:
        if os.environ.get("LOCALLLM_DEBUG"):
            raise
        from .errorlog import redact
        from .printable import printable

        click.echo(f"localllm: unexpected error: {type(exc).__name__}: {printable(redact(str(exc)))} "
                   "(set LOCALLLM_DEBUG=1 for the traceback)", err=True)
        return 1
