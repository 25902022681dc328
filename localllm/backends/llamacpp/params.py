"""How a llama.cpp load and context are set up: the context and sampler parameters, where the
CPU-resident weights go (issue 17's AMX fallback), and the loads that read llama.cpp's own
figures without generating (a dry run's buffer sizes, a requantized copy).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import llama_cpp

from ...errors import ModelLoadError
from ...generation.speculation import output_rows
from ...options import DEFAULT_CTX, PENALTY_WINDOW, LoadOptions, SamplingOptions
from . import amx
from .cpu_buffers import (
    REPACK,
    Overrides,
    cpu_layers,
    extra_buffer_types,
    override_patterns,
    repack_weights,
    repacked_ranges,
)
from .runtime import init_backend, load_failure_reason, log, supports_gpu_offload

PROGRESS_AFTER = 1024  # prompt tokens from which evaluation reports its progress
# A prompt is read in steps of this many tokens on a CPU: as fast as 512 (1.5B Q4_K_M here: 84 tokens/s
# either way, 64: 76), and a saved state is reusable to the nearest step (state_cache says why).
READ_STEP_CPU = 128
_GGML_TYPES = {"f16": 1, "q4_0": 2, "q8_0": 8}
# llama_ftype values (llama.h) of the quantizations the catalog offers.
QUANT_FTYPES = {"f16": 1, "q4_0": 2, "q8_0": 7, "q4_k_m": 15, "q5_k_m": 17, "q6_k": 18, "iq4_xs": 30}


def window(options: LoadOptions, n_ctx_train: int) -> int:
    if options.n_ctx is None:
        return min(n_ctx_train, DEFAULT_CTX)
    return options.n_ctx or n_ctx_train


def context_params(options: LoadOptions, n_ctx: int, n_threads: int):
    cparams = llama_cpp.llama_context_default_params()
    cparams.n_ctx = n_ctx * options.n_seq
    cparams.n_batch = min(options.n_batch, cparams.n_ctx)
    cparams.n_ubatch = min(options.n_ubatch, cparams.n_batch)
    # Only each sequence's last token's logits are ever read, and llama.cpp otherwise reserves
    # a buffer for n_batch of them (100 MiB for a 49k vocabulary).
    cparams.n_outputs_max = output_rows(options)
    cparams.n_seq_max = options.n_seq
    # One KV buffer for all sequences: a prefix they share is stored once, and any sequence may
    # use the room others leave.
    cparams.kv_unified = options.n_seq > 1
    cparams.n_threads = n_threads
    cparams.n_threads_batch = n_threads
    cparams.flash_attn_type = {
        None: llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO,
        True: llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED,
        False: llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED,
    }[options.flash_attn]
    cparams.type_k = cparams.type_v = _GGML_TYPES[options.kv_type or "f16"]
    cparams.swa_full = options.swa_full
    return cparams


def sampler_chain(sampling: SamplingOptions, seed: int, n_vocab: int):
    params = llama_cpp.llama_sampler_chain_default_params()
    params.no_perf = True
    chain = llama_cpp.llama_sampler_chain_init(params)
    add = llama_cpp.llama_sampler_chain_add
    if sampling.penalized:
        # The pinned llama.cpp takes the vocabulary size first (llama.h), before the window.
        add(chain, llama_cpp.llama_sampler_init_penalties(n_vocab, PENALTY_WINDOW, sampling.repeat_penalty,
                                                          sampling.frequency_penalty, sampling.presence_penalty))
    if sampling.temperature == 0:
        add(chain, llama_cpp.llama_sampler_init_greedy())
        return chain
    # Cut the vocabulary first so the later steps sort tens of candidates, not tens of thousands.
    if sampling.top_k > 0:
        add(chain, llama_cpp.llama_sampler_init_top_k(sampling.top_k))
    add(chain, llama_cpp.llama_sampler_init_top_p(sampling.top_p, 1))
    if sampling.min_p > 0:
        add(chain, llama_cpp.llama_sampler_init_min_p(sampling.min_p, 1))
    add(chain, llama_cpp.llama_sampler_init_temp(sampling.temperature))
    add(chain, llama_cpp.llama_sampler_init_dist(seed))
    return chain


def place_cpu_weights(mparams, path: Path, n_gpu_layers: int) -> None:
    """Keep llama.cpp off its AMX weight buffer when AMX is not to be used here (issue 17), and
    give the CPU-resident matmul weights that CPU_REPACK can take back to it: turning off the
    extra buffer types alone would also lose the repack kernels."""
    verdict = amx.status()
    if verdict.in_use or not (verdict.in_build or verdict.mode == "off"):
        return
    mparams.use_extra_bufts = False
    buft = extra_buffer_types().get(REPACK)
    if not buft:
        return
    try:
        weights, n_layer = repack_weights(path)
    except OSError:
        return  # llama.cpp's own load will say what is wrong with the file
    first_gpu_block, output_on_cpu = cpu_layers(n_layer, n_gpu_layers, supports_gpu_offload())
    patterns = override_patterns({name: w.block for name, w in weights.items()}, first_gpu_block, output_on_cpu)
    if not patterns:
        return
    overrides = Overrides(patterns, buft)
    mparams.tensor_buft_overrides = overrides.pointer
    mparams.localllm_overrides = overrides  # the array lives as long as the params that point at it


def choose_load_mode(mparams, path: Path, n_gpu_layers: int) -> list[tuple[Path, int, int]] | None:
    """Where CPU_REPACK takes some of the weights, how they will be held once.

    llama.cpp copies those weights into an interleaved buffer while the whole file stays mapped,
    and the pages it read them from stay resident: mapped, the weights are held twice (measured on
    Qwen2.5-Coder-1.5B Q4_K_M: RSS grew 1893 MiB mapped, 1299 MiB otherwise). On Linux the file
    stays mapped and those pages are given back after the load (the ranges returned, for
    mapped.release): a mapped load is 1.46x quicker than reading. Elsewhere the file is
    read into memory instead (load_mode NONE; returns []). Where nothing is repacked (Q4_1, F16,
    every weight on a GPU) None: the mapping stays as it is, sharing the page cache."""
    from .mapped import can_release

    if mparams.use_extra_bufts is False and not getattr(mparams, "localllm_overrides", None):
        return None  # no extra buffer types in this load: nothing is copied
    try:
        ranges = repacked_ranges(path, n_gpu_layers, supports_gpu_offload())
    except OSError:
        return None  # llama.cpp's own load will say what is wrong with the file
    if not ranges:
        return None
    if can_release():
        return ranges
    mparams.load_mode = llama_cpp.LLAMA_LOAD_MODE_NONE
    return []


def quantize(source: Path, target: Path, kind: str) -> None:
    """Requantize a GGUF (e.g. the starter to "q4_0", to exercise the kernels repack serves)."""
    init_backend(log.verbose)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = QUANT_FTYPES[kind]
    params.allow_requantize = True
    if llama_cpp.llama_model_quantize(os.fsencode(source), os.fsencode(target), params) != 0:
        raise ModelLoadError(source, f"llama.cpp could not quantize it to {kind}")


_BUFFER_LINES = {
    "kv_cache": re.compile(r"^llama_kv_cache\w*: size = +([\d.]+) MiB"),
    "compute": re.compile(r"compute buffer size = +([\d.]+) MiB"),
    "output": re.compile(r"output buffer size = +([\d.]+) MiB"),
}


def dry_run(path: Path, options: LoadOptions) -> dict[str, int]:
    """The buffers llama.cpp would allocate for this load, without allocating them (no_alloc).

    Returns bytes of "kv_cache", "compute" and "output" as llama.cpp logs them: the ground
    truth the estimator is checked against.
    """
    init_backend(options.verbose)
    captured: list[str] = []
    log.capture = captured
    try:
        mparams = llama_cpp.llama_model_default_params()
        mparams.no_alloc = True
        mparams.load_mode = llama_cpp.LLAMA_LOAD_MODE_NONE  # no_alloc cannot map the file
        place_cpu_weights(mparams, path, options.n_gpu_layers or 0)
        model = llama_cpp.llama_model_load_from_file(os.fsencode(path), mparams)
        if not model:
            raise ModelLoadError(path, load_failure_reason())
        try:
            cparams = context_params(options, window(options, llama_cpp.llama_model_n_ctx_train(model)), options.n_threads or 1)
            ctx = llama_cpp.llama_init_from_model(model, cparams)
            if ctx:
                llama_cpp.llama_free(ctx)
        finally:
            llama_cpp.llama_model_free(model)
    finally:
        log.capture = None
    sizes = {}
    for line in captured:
        for name, pattern in _BUFFER_LINES.items():
            if found := pattern.search(line.strip()):
                sizes[name] = sizes.get(name, 0) + round(float(found.group(1)) * 2**20)
    return sizes
