"""Preparing a llama.cpp load, before llama_cpp is imported: the GGUF checks, the planner's
choices, and the out-of-memory ladder. The llama.cpp backend's own part of `load_model`."""

from __future__ import annotations

import stat
from collections.abc import Callable
from dataclasses import replace
from itertools import zip_longest
from pathlib import Path

from ...config import cache_dir
from ...errors import ModelLoadError, ModelNotFoundError, UsageError
from ...generation.speculation import output_rows
from ...gguf_info import header_facts, inspect_file
from ...options import DEFAULT_CTX, LoadOptions
from ...references import path_exists
from .planner import MIN_CTX

GGUF_MAGIC = b"GGUF"


def prepare(path: Path, options: LoadOptions, notify: Callable[[str], None]) -> LoadOptions:
    """Check the file and the options against it, then fill in what the caller left open."""
    from .. import build_info

    check_against(check_gguf(path), options)
    if options.rpc:
        from . import rpc

        rpc.connect(options.rpc)
    build = build_info()
    reserved = ()
    if options.projector:  # a vision model's projector: its weights and encoder, beside the model's
        from ...projector import read

        facts = read(Path(options.projector))
        extra = facts.weight_bytes + facts.compute_bytes
        reserved = (0, extra) if build.gpu_offload and options.n_gpu_layers != 0 else (extra,)
    planned, taken = plan_load(path, options, build, notify, reserved=reserved)
    taken = tuple(a + b for a, b in zip_longest(taken, reserved, fillvalue=0))
    if options.draft is None:
        return planned
    draft = Path(options.draft)
    check_gguf(draft)
    # Its own window as long as the target's (it reads the same tokens), one row of logits, its
    # layers on the GPU only where the target's are, in the memory the target leaves.
    asked = LoadOptions(n_ctx=planned.n_ctx, initial_ctx=options.initial_ctx, n_threads=options.n_threads,
                        n_gpu_layers=0 if planned.n_gpu_layers == 0 else None,
                        flash_attn=planned.flash_attn, margin=options.margin, load_anyway=options.load_anyway,
                        speculation="off", rpc=options.rpc, verbose=options.verbose)
    try:
        draft_plan, _ = plan_load(draft, asked, build, notify, reserved=taken)
    except ModelLoadError as exc:
        raise ModelLoadError(draft, f"{exc.reason} beside {path.name} (the draft model)") from None
    return replace(planned, draft_plan=draft_plan)


def plan_load(path: Path, options: LoadOptions, build, notify: Callable[[str], None],
              reserved: tuple[int, ...] = ()) -> tuple[LoadOptions, tuple[int, ...]]:
    """Fill in what the user left open; also the bytes per device (RAM, GPUs) the load will take
    with its margins. Reading GGUF metadata takes seconds the first time, so a CPU-only build
    skips it when the file clearly fits in free memory (and counts the file's size then)."""
    import psutil

    from ...hardware import detect
    from .planner import Overrides, plan

    gpu_choice = (build.gpu_offload or bool(options.rpc)) and options.n_gpu_layers is None
    size = path.stat().st_size
    roomy = size * 2 + 2**30 + sum(reserved[:1]) < psutil.virtual_memory().available and options.n_seq == 1
    window_choice = options.n_ctx is None and options.initial_ctx > 0  # as long as memory allows: ask the planner
    if not gpu_choice and roomy and options.margin is None and not window_choice:
        return replace(options, n_gpu_layers=options.n_gpu_layers or 0), (size * 2,)
    chosen = plan(detect(build), inspect_file(path, cache_dir()), Overrides(
        n_ctx=options.n_ctx, n_gpu_layers=options.n_gpu_layers, kv_type=options.kv_type,
        flash_attn=options.flash_attn, tensor_split=options.tensor_split or None, n_threads=options.n_threads,
        margin=options.margin, load_anyway=options.load_anyway, n_seq=options.n_seq, grow=options.initial_ctx > 0,
        outputs=output_rows(options), reserved=reserved,
    ))
    if chosen.fit == "none" and not options.load_anyway:
        raise ModelLoadError(path, f"it does not fit: {chosen.warnings[0]}")
    for warning in chosen.warnings:
        notify(warning)
    if window_choice and options.verbose:
        notify(f"context window: {chosen.shape.n_ctx} tokens (of {chosen.spec.n_ctx_train} trained), what free memory "
               "allows; the KV cache grows as it fills")
    # Only what the plan decides replaces the caller's options: the rest (initial_ctx, n_batch,
    # engine, ...) stays as asked. Threads stay open: the backend counts busy cores while the
    # model loads, which is fresher.
    decided = chosen.load_options(options.verbose)
    return replace(options, n_ctx=decided.n_ctx, n_gpu_layers=decided.n_gpu_layers, flash_attn=decided.flash_attn,
                   kv_type=decided.kv_type, swa_full=decided.swa_full, tensor_split=decided.tensor_split), chosen.taken


def smaller(current: LoadOptions, asked: LoadOptions) -> tuple[LoadOptions, str] | None:
    """The next rung down the out-of-memory ladder, never changing what the user fixed."""
    layers = current.n_gpu_layers or 0
    if layers and asked.n_gpu_layers is None:
        fewer = 0 if layers == -1 else max(0, layers - max(1, layers // 4))
        return replace(current, n_gpu_layers=fewer), f"{fewer} GPU layers"
    if (current.kv_type or "f16") == "f16" and current.flash_attn is not False and asked.kv_type is None:
        return replace(current, kv_type="q8_0"), "a q8_0 KV cache"
    if asked.n_ctx is None and (current.n_ctx or DEFAULT_CTX) // 2 >= MIN_CTX:
        n_ctx = (current.n_ctx or DEFAULT_CTX) // 2
        return replace(current, n_ctx=n_ctx), f"a {n_ctx}-token context"
    return None


def out_of_memory(reason: str) -> bool:
    reason = reason.lower()
    return any(sign in reason for sign in ("out of memory", "insufficient memory", "failed to allocate", "unable to allocate", "cudamalloc"))




def check_against(facts: dict, options: LoadOptions) -> None:
    """Values llama.cpp would take and then abort on or answer badly with, against this model
    and this machine: threads far past the CPUs, a window past the trained one unless forced."""
    from ...hardware import usable_cpus

    cpus = usable_cpus()
    if options.n_threads is not None and options.n_threads > 4 * cpus:
        raise UsageError(f"{options.n_threads} threads is more than 4 per CPU this process may use ({cpus}); "
                         "more threads than cores only slows llama.cpp down")
    trained = facts.get("n_ctx_train")
    if options.n_ctx and trained and options.n_ctx > trained and not options.load_anyway:
        raise UsageError(f"the model was trained on a {trained}-token context; a {options.n_ctx}-token window beyond "
                         "it degrades its answers (--ctx 0 uses the trained one; --load-anyway uses yours)")


def check_gguf(path: Path) -> dict:
    """Fail fast, with a clear reason, on files llama.cpp would reject with a vaguer one (or
    abort on); return what the bounded header check found (gguf_info.header_facts)."""
    if not path_exists(path):
        raise ModelNotFoundError(str(path)[:200], "no such file")
    if path.is_dir():
        raise ModelLoadError(path, "it is a directory, not a .gguf file")
    if not stat.S_ISREG(path.stat().st_mode):  # opening a FIFO would wait for a writer for ever
        raise ModelLoadError(path, "not a regular file (a FIFO, socket or device cannot be a model)")
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise ModelLoadError(path, exc.strerror or str(exc)) from exc
    if not magic:
        raise ModelLoadError(path, "the file is empty")
    if magic != GGUF_MAGIC:
        raise ModelLoadError(path, "not a GGUF file (llama.cpp needs .gguf; convert or download a GGUF build)")
    return header_facts(path, cache_dir())  # bounded, and what would make llama.cpp abort is refused
