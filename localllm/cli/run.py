"""`localllm run`: one prompt, answered on stdout, for scripts and pipes."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from ..errors import UsageError
from ..options import (
    ENGINES,
    FLASH_ATTN,
    REASONING_EFFORTS,
    flash_attn_name,
    unescape,
)
from ..status import Status
from .options import draft_option, option, sampling_options, sampling_values
from .rpc import rpc_option

# `run` opens the KV cache for this many tokens and grows it to the window only for a longer
# prompt or answer: most one-shot answers fit, and a smaller cache is faster to set up.
RUN_INITIAL_CTX = 1024


@click.command(context_settings={"show_default": True})
@click.argument("prompt_arg", metavar="[PROMPT]", required=False)
@click.option("-p", "--prompt", "prompt_opt", metavar="TEXT", help="The prompt (or give it as the argument).")
@click.option("-m", "--model", metavar="MODEL", help="A .gguf path, an installed model's name, or 'starter'.  [default: the configured default, else the best installed model]")
@click.option("-s", "--system", metavar="TEXT", help="System prompt.")
@sampling_options
@option("n_ctx", shown_default="the trained length, halved until it fits in free memory; the KV cache grows as it fills")
@option("n_threads", shown_default="physical cores")
@option("n_gpu_layers", help="Layers to offload to the GPU: -1 all, 0 none. Ignored by CPU-only builds.", shown_default="as many as fit")
@option("kv_type", shown_default="f16, q8_0 when memory is tight")
@option("speculation", default="auto")
@draft_option
@click.option("--flash-attn", type=click.Choice(list(FLASH_ATTN)), default="auto", help="Flash attention; auto lets llama.cpp choose. On CPUs it is faster for short contexts and slower past a few hundred tokens.")
@click.option("--margin", type=click.IntRange(min=0), metavar="MIB", help="Memory to keep free per device, in MiB.  [default: 5%, at least 128]")
@click.option("--load-anyway", is_flag=True, help="Load even when the planner predicts it will not fit, or with a --ctx beyond the trained context.")
@option("engine", choices=ENGINES, shown_default="from its format: .gguf llama.cpp, a safetensors folder transformers")
@option("dtype", shown_default="the checkpoint's where the device computes in it natively, else float32")
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
@click.option("--no-cache", is_flag=True, help="Read the prompt even if a run before saved its state (run keeps the state of prompts over 256 tokens on disk, and reuses it when a prompt starts the same).")
@click.option("--raw", is_flag=True, help="Give the prompt to the model as it is, without the chat template (base models, text completion).")
@click.option("--image", "image_files", multiple=True, metavar="FILE", help="An image for a vision model to see (repeatable; '-' reads one from stdin). PNG, JPEG, WebP, GIF (its first frame), BMP; up to 20 MiB and 40 megapixels.")
@click.option("--mmproj", type=click.Path(exists=True, dir_okay=False), metavar="FILE", help="A vision model's projector GGUF.  [default: an mmproj file beside the model]")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object: text, model, finish reason, token counts, timings, settings.")
@click.option("--no-stream", is_flag=True, help="Print the answer once it is complete.")
@click.option("-v", "--verbose", is_flag=True, help="Show llama.cpp's own log on stderr.")
def run(prompt_arg, prompt_opt, model, system, ctx, threads, gpu_layers, kv_type, spec, draft, flash_attn, margin, load_anyway, engine,
        dtype, rpc, schema, grammar_file, stop, think, reasoning_effort, show_thinking, ignore_eos, no_cache, raw, image_files,
        mmproj, as_json, no_stream,
        verbose, **sampling_fields):
    """Answer one prompt and exit. Tokens stream to stdout; everything else goes to stderr.

    Text piped on stdin is the prompt, or, with a prompt too, context placed before it:

    \b
      cat file.py | localllm run -p "Explain this code"
    """
    from .. import crash
    from ..generation.constraints import from_options
    from ..images import from_file
    from ..model import load_model
    from ..options import LoadOptions, SamplingOptions

    crash.install()
    if raw and (think is not None or reasoning_effort is not None):
        raise UsageError("--think, --no-think and --reasoning-effort work through the chat template, which --raw leaves out")
    if raw and system is not None:
        raise UsageError("--system needs the chat template, which --raw leaves out: put the system text in the prompt")
    if raw and image_files:
        raise UsageError("--image needs the chat template, which --raw leaves out")
    if "-" in image_files and (image_files.count("-") > 1 or not (prompt_arg or prompt_opt)):
        raise UsageError("--image - reads one image from stdin: give the prompt as an argument or with -p")
    prompt = (prompt_arg or prompt_opt) if "-" in image_files else _read_prompt(prompt_arg, prompt_opt)
    pictures = [from_file(path) for path in image_files]  # bad images fail before the load
    load_options = LoadOptions(n_ctx=ctx, n_threads=threads, n_gpu_layers=gpu_layers, kv_type=kv_type,
                               flash_attn=FLASH_ATTN[flash_attn], initial_ctx=RUN_INITIAL_CTX,
                               margin=None if margin is None else margin * 2**20, load_anyway=load_anyway, engine=engine,
                               dtype=dtype, rpc=rpc, prompt_cache="" if no_cache else "cold", speculation=spec, draft=draft,
                               projector=mmproj, verbose=verbose)
    sampling = SamplingOptions(**sampling_values(sampling_fields), ignore_eos=ignore_eos, stop=stop,
                               grammar=from_options(schema, grammar_file))
    status = Status(enabled=not as_json)
    status.show(f"loading {model or 'the default model'}…")
    try:
        loaded = load_model(model, load_options, notify=lambda message: click.echo(f"localllm: {message}", err=True))
    finally:
        status.clear()
    with loaded:
        if pictures:
            content = [{"type": "image", "image": picture} for picture in pictures] + [{"type": "text", "text": prompt}]
            messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": content}]
            events = loaded.chat(messages, sampling, think, reasoning_effort=reasoning_effort)
        else:
            events = loaded.generate(prompt, sampling) if raw else loaded.prompt(prompt, system, sampling, think,
                                                                                 reasoning_effort)
        _answer(loaded, events, {"system": system, "raw": raw, "think": think, "reasoning_effort": reasoning_effort}, sampling,
                as_json=as_json,
                stream=not (no_stream or as_json), status=status, show_thinking=show_thinking)




def _answer(model, events, prompt_settings: dict, sampling, as_json: bool, stream: bool, status: Status,
            show_thinking: bool = False) -> None:
    from ..events import Finished, PromptProgress, Reasoning, Token
    from ..status import PromptEta

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

    from ..registry import display_name

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
