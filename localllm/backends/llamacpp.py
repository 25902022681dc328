"""The llama.cpp backend, through llama-cpp-python's low-level C API.

This is the only module that imports ``llama_cpp``. It skips llama-cpp-python's high-level
``Llama`` class on the hot path: that class evaluates prompts in n_batch slices and spends
Python time per token on logits copies and stop-string checks. Here a prompt is one
``llama_decode`` call and each generated token costs a handful of C calls (the C sampler chain,
one decode, one detokenize; greedy picks read the logits in place).
"""

from __future__ import annotations

import codecs
import ctypes
import os
import re
import secrets
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import llama_cpp
import numpy as np
from llama_cpp.llama_chat_format import CHATML_CHAT_TEMPLATE, Jinja2ChatFormatter

from .. import crash
from ..config import cache_dir
from ..errors import ContextOverflowError, GenerationError, ModelLoadError, UsageError
from ..gguf_info import header_facts
from ..events import Event, Finished, PromptProgress, Token, Usage
from ..hardware import CpuLoadSampler, default_threads
from . import amx
from .ggml_build import load_dynamic_backends
from .chat_template import render_chat
from .cpu_buffers import (REPACK, Overrides, cpu_layers, extra_buffer_types, library, override_patterns,
                          registry_function, repack_weights)
from ..options import DEFAULT_CTX, LoadOptions, SamplingOptions
from . import llamacpp_load
from .base import Capabilities, Message, reusable_prefix
from ..constraints import Constraint
from ..stops import StopText

if TYPE_CHECKING:
    from .llamacpp_batch import LlamaCppBatcher

_GGML_LOG_LEVEL_ERROR = 4
_GGML_LOG_LEVEL_CONT = 5
_GGML_MAX_N_THREADS = 512
_GGML_TYPES = {"f16": 1, "q4_0": 2, "q8_0": 8}
PROGRESS_AFTER = 1024  # prompt tokens from which evaluation reports its progress


class _ThreadpoolParams(ctypes.Structure):
    _fields_ = [
        ("cpumask", ctypes.c_bool * _GGML_MAX_N_THREADS),
        ("n_threads", ctypes.c_int),
        ("prio", ctypes.c_int),
        ("poll", ctypes.c_uint32),
        ("strict_cpu", ctypes.c_bool),
        ("paused", ctypes.c_bool),
    ]


class _Threadpool:
    """A persistent ggml CPU threadpool, as llama.cpp's own tools attach to their contexts.

    Without one, ggml builds a throwaway pool for every graph, i.e. every generated token;
    attaching one measured about 3% faster generation here. llama-cpp-python does not bind
    these functions, so they are bound here; a build without them runs with the default.
    """

    def __init__(self, ctx, n_threads: int):
        self._pool = None
        try:
            params_default = library("ggml-base").ggml_threadpool_params_default
            # Asked of the CPU backend's registry: a portable build has no one libggml-cpu to look in.
            new, free = registry_function("CPU", "ggml_threadpool_new"), registry_function("CPU", "ggml_threadpool_free")
            attach = llama_cpp.llama_cpp._lib.llama_attach_threadpool
        except (OSError, AttributeError):
            return
        if not (new and free):
            return
        params_default.argtypes, params_default.restype = [ctypes.c_int], _ThreadpoolParams
        self._new = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.POINTER(_ThreadpoolParams))(new)
        self._free = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(free)
        attach.argtypes, attach.restype = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p], None
        params = params_default(n_threads)
        self._pool = self._new(ctypes.byref(params))
        if self._pool:
            attach(ctx, self._pool, None)

    def free(self) -> None:
        """Call after the context that uses it is freed."""
        if self._pool:
            self._free(self._pool)
            self._pool = None


class _LlamaLog:
    """Routes llama.cpp's C-level log lines: to stderr when verbose, else kept for error messages."""

    def __init__(self) -> None:
        self.verbose = False
        self.errors: deque[str] = deque(maxlen=16)
        self.capture: list[str] | None = None  # every line, while a dry run reads buffer sizes
        self._last_level = 0
        # Keep a reference: ctypes frees the trampoline if the Python callable is collected.
        self._callback = llama_cpp.llama_log_callback(self._on_log)

    def _on_log(self, level: int, text: bytes, _user_data: ctypes.c_void_p) -> None:
        if level == _GGML_LOG_LEVEL_CONT:
            level = self._last_level
        self._last_level = level
        line = text.decode("utf-8", errors="replace")
        if self.capture is not None:
            self.capture.append(line)
        if self.verbose:
            sys.stderr.write(line)
            sys.stderr.flush()
        if level == _GGML_LOG_LEVEL_ERROR and line.strip():
            self.errors.append(line.strip())

    def install(self) -> None:
        llama_cpp.llama_log_set(self._callback, ctypes.c_void_p(0))

    def first_error(self) -> str | None:
        """The first error since the last clear: later ones are mostly its consequences."""
        return self.errors[0] if self.errors else None


_log = _LlamaLog()
_init_lock = threading.Lock()
_initialized = False


_ABORT_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_char_p)
# ggml calls this with its reason just before abort(): kept for the one line crash.py prints.
_on_abort = _ABORT_CALLBACK(lambda reason: crash.note_abort(reason.decode("utf-8", "replace")))


def _init_backend(verbose: bool) -> None:
    global _initialized
    _log.verbose = verbose
    with _init_lock:
        if not _initialized:
            _log.install()
            load_dynamic_backends()
            llama_cpp.llama_backend_init()
            try:
                set_callback = library("ggml-base").ggml_set_abort_callback
                set_callback.argtypes, set_callback.restype = [_ABORT_CALLBACK], ctypes.c_void_p
                set_callback(_on_abort)
            except (OSError, AttributeError):
                pass  # a build without it aborts with its own message
            _initialized = True


class LlamaCppBackend:
    name = "llamacpp"
    capabilities = Capabilities(batching=True, token_input=True, multi_gpu=True, one_thread=True,
                                embeddings=True)

    @staticmethod
    def can_load(path: Path) -> bool:
        from .transformers_engine import is_checkpoint

        return not is_checkpoint(path)  # anything else it checks itself, naming what is wrong

    prepare = staticmethod(llamacpp_load.prepare)
    smaller = staticmethod(llamacpp_load.smaller)
    out_of_memory = staticmethod(llamacpp_load.out_of_memory)

    def load(self, path: Path, options: LoadOptions) -> LlamaCppModel:
        return LlamaCppModel(path, options)


class LlamaCppModel:
    """A GGUF model and one llama.cpp context over it."""

    capabilities = LlamaCppBackend.capabilities

    def __init__(self, path: Path, options: LoadOptions):
        _init_backend(options.verbose)
        self.path = path
        self._model = None
        self._ctx = None
        self._embed_ctx = None
        self._grammar_vocabulary = None
        self._threadpool = None

        mparams = llama_cpp.llama_model_default_params()
        # llama.cpp takes "all layers" as any count above the model's; -1 is ours for that.
        layers = options.n_gpu_layers or 0
        mparams.n_gpu_layers = 0x7FFFFFFF if layers == -1 else layers
        if options.tensor_split:
            # ctypes keeps no reference to the array; the model params must outlive the load call.
            self._tensor_split = (ctypes.c_float * llama_cpp.LLAMA_MAX_DEVICES)(*options.tensor_split)
            mparams.tensor_split = self._tensor_split
        _place_cpu_weights(mparams, path, layers)
        _log.errors.clear()
        load_sampler = CpuLoadSampler() if options.n_threads is None else None
        _log.capture = captured = []
        try:
            self._model = llama_cpp.llama_model_load_from_file(os.fsencode(path), mparams)
        finally:
            _log.capture = None
        # Bytes of weights per llama.cpp buffer type, e.g. {"CPU_Mapped": ..., "CPU_REPACK": ...}.
        self.weight_buffers = _model_buffers(captured)
        if not self._model:
            raise ModelLoadError(path, _load_failure_reason())
        self.can_embed = bool(header_facts(path, cache_dir())["embedding_only"])

        self._vocab = llama_cpp.llama_model_get_vocab(self._model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self._vocab)
        self._logits_type = ctypes.c_float * self.n_vocab
        self.n_ctx_train = llama_cpp.llama_model_n_ctx_train(self._model)
        self.n_threads = options.n_threads or default_threads(busy_elsewhere=load_sampler.busy_elsewhere())
        self.n_gpu_layers = layers if llama_cpp.llama_supports_gpu_offload() else 0

        self._options = options
        self.n_ctx = _window(options, self.n_ctx_train)
        lazy = 0 < options.initial_ctx < self.n_ctx
        reason = self._open_context(options.initial_ctx if lazy else self.n_ctx)
        if reason:
            self.close()
            raise ModelLoadError(path, f"{reason} (a smaller --ctx needs less memory)")
        if not lazy:
            self.n_ctx = self._allocated  # llama.cpp rounds the window up to a multiple of 256
        self._cached: list[int] = []
        self._formatter = self._chat_formatter()
        self._warm_up()

    def _open_context(self, n_ctx: int) -> str | None:
        """Create the llama.cpp context for n_ctx tokens; None, or why it failed."""
        cparams = _context_params(self._options, n_ctx, self.n_threads)
        self._ctx = llama_cpp.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            return _log.first_error() or "llama.cpp could not create the context"
        self._threadpool = _Threadpool(self._ctx, self.n_threads)
        self._n_batch, self._n_ubatch = cparams.n_batch, cparams.n_ubatch
        self._memory = llama_cpp.llama_get_memory(self._ctx)
        self._allocated = llama_cpp.llama_n_ctx(self._ctx) // self._options.n_seq  # per sequence
        return None

    def _make_room(self, tokens: int) -> None:
        """Grow a context opened for initial_ctx tokens to the whole window once `tokens` no
        longer fit, keeping the KV cache of the tokens evaluated so far. The old context is freed
        before the new one is made, its cache held in host memory, so the peak is the window's."""
        if tokens <= self._allocated:
            return
        size = llama_cpp.llama_state_seq_get_size(self._ctx, 0)
        state = (ctypes.c_uint8 * size)()
        copied = llama_cpp.llama_state_seq_get_data(self._ctx, state, size, 0)
        self._free_context()
        reason = self._open_context(self.n_ctx)
        if reason:
            self._cached = []
            raise GenerationError(f"could not grow the context to {self.n_ctx} tokens: {reason}")
        if self._cached and not llama_cpp.llama_state_seq_set_data(self._ctx, state, copied, 0):
            self._cached = []
            raise GenerationError("could not move the KV cache into the grown context")

    def _free_context(self) -> None:
        if self._ctx:
            llama_cpp.llama_free(self._ctx)
            self._ctx = None
        if self._threadpool:
            self._threadpool.free()
            self._threadpool = None

    def _warm_up(self) -> None:
        """Evaluate one token and forget it, as llama.cpp's own CLI does at load: the first
        single-token graph, its buffers and the thread team are set up here instead of slowing
        the first answer (measured: generation about 3.5% faster after a multi-token prompt)."""
        bos = llama_cpp.llama_vocab_bos(self._vocab)
        one = (llama_cpp.llama_token * 1)(max(bos, 0))
        llama_cpp.llama_decode(self._ctx, llama_cpp.llama_batch_get_one(one, 1))
        llama_cpp.llama_memory_clear(self._memory, True)

    def _chat_formatter(self) -> Jinja2ChatFormatter:
        template = llama_cpp.llama_model_chat_template(self._model, None)
        self._bos_text = self._token_text(llama_cpp.llama_vocab_bos(self._vocab))
        self.chat_template = template.decode("utf-8", errors="replace") if template else None
        return Jinja2ChatFormatter(
            template=self.chat_template or CHATML_CHAT_TEMPLATE,
            eos_token=self._token_text(llama_cpp.llama_vocab_eos(self._vocab)),
            bos_token=self._bos_text,
        )

    def _token_text(self, token: int) -> str:
        if token < 0:
            return ""
        return llama_cpp.llama_vocab_get_text(self._vocab, token).decode("utf-8", errors="replace")

    def format_chat(self, messages: Sequence[Message], **variables) -> str:
        prompt = render_chat(self._formatter, messages, variables)
        # llama.cpp adds BOS itself when the vocabulary asks for it; a template that also
        # writes it would give the model two.
        if self._bos_text and prompt.startswith(self._bos_text) and llama_cpp.llama_vocab_get_add_bos(self._vocab):
            prompt = prompt[len(self._bos_text):]
        return prompt

    def tokenize(self, text: str) -> list[int]:
        return self._tokenize(text, add_special=True)

    def _tokenize(self, text: str, add_special: bool) -> list[int]:
        """add_special: BOS where the vocabulary asks for it. Special tokens written in the text
        are always read as such."""
        data = text.encode("utf-8")
        capacity = len(data) + 8
        buf = (llama_cpp.llama_token * capacity)()
        n = llama_cpp.llama_tokenize(self._vocab, data, len(data), buf, capacity, add_special, True)
        if n < 0:
            capacity = -n
            buf = (llama_cpp.llama_token * capacity)()
            n = llama_cpp.llama_tokenize(self._vocab, data, len(data), buf, capacity, add_special, True)
        return list(buf[:n])

    def special_token(self, text: str) -> int | None:
        """The id of `text` when it is one token the grammar engine sees as special (Qwen3's
        ``</think>``), which a grammar must then name by id, not spell."""
        from ..constraints import special_token

        return special_token(self.grammar_vocabulary(), self._tokenize(text, add_special=False))

    def generate(self, prompt: str | Sequence[int], sampling: SamplingOptions) -> Iterator[Event]:
        tokens = self.tokenize(prompt) if isinstance(prompt, str) else list(prompt)
        if not tokens:
            raise UsageError("the prompt is empty")
        if len(tokens) >= self.n_ctx:
            raise ContextOverflowError(len(tokens), self.n_ctx, self.n_ctx_train)
        return self._generate(tokens, sampling)

    def _generate(self, tokens: list[int], sampling: SamplingOptions) -> Iterator[Event]:
        seed = secrets.randbelow(2**32 - 1) if sampling.seed is None else sampling.seed
        if sampling.temperature == 0 and sampling.repeat_penalty == 1.0:
            yield from self._run(tokens, sampling, self._greedy, seed)
            return
        sampler = _sampler_chain(sampling, seed, llama_cpp.llama_vocab_n_tokens(self._vocab))
        try:
            yield from self._run(tokens, sampling, lambda: llama_cpp.llama_sampler_sample(sampler, self._ctx, -1), seed)
        finally:
            llama_cpp.llama_sampler_free(sampler)

    def _greedy(self) -> int:
        """The likeliest next token. The C sampler chain first copies the whole vocabulary into a
        candidate array (65 us a token for SmolLM2's 49k); argmax over the logits in place takes
        6 us. Ties go to the lowest id, as with llama.cpp's greedy sampler."""
        return int(self._logits_row().argmax())

    def _logits_row(self) -> np.ndarray:
        """The last evaluated token's logits, in llama.cpp's own buffer (no copy)."""
        logits = llama_cpp.llama_get_logits_ith(self._ctx, -1)
        return np.frombuffer(self._logits_type.from_address(ctypes.addressof(logits.contents)), dtype=np.float32)

    def _reuse_prefix(self, tokens: list[int]) -> int:
        """Drop the KV cache after the longest prefix shared with the last call; return its length."""
        common = reusable_prefix(self._cached, tokens)
        if common and not llama_cpp.llama_memory_seq_rm(self._memory, 0, common, -1):
            common = 0  # some caches (recurrent, sliding window) cannot be cut mid-sequence
        if not common:
            llama_cpp.llama_memory_clear(self._memory, True)
        self._cached = tokens[:common]
        return common

    def _decode(self, tokens: Sequence[int]) -> Iterator[PromptProgress]:
        """Evaluate prompt tokens. A long prompt goes in ubatch-sized steps, each followed by a
        PromptProgress: llama.cpp splits a batch into ubatches anyway, so this costs nothing."""
        step = self._n_ubatch if len(tokens) > PROGRESS_AFTER else self._n_batch
        for start in range(0, len(tokens), step):
            chunk = tokens[start : start + step]
            array = (llama_cpp.llama_token * len(chunk))(*chunk)
            status = llama_cpp.llama_decode(self._ctx, llama_cpp.llama_batch_get_one(array, len(chunk)))
            if status != 0:
                self._cached = []
                raise GenerationError(f"llama.cpp failed to evaluate the prompt (llama_decode returned {status})")
            self._cached.extend(chunk)
            if step < len(tokens):
                yield PromptProgress(start + len(chunk), len(tokens))

    def _run(self, tokens: list[int], sampling: SamplingOptions, pick: Callable[[], int], seed: int) -> Iterator[Event]:
        vocab = self._vocab
        t_start = time.perf_counter()
        reused = self._reuse_prefix(tokens)
        self._make_room(len(tokens))
        yield from self._decode(tokens[reused:])
        ctx = self._ctx

        room = self.n_ctx - len(tokens)
        limit = room if sampling.max_tokens is None else min(sampling.max_tokens, room)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        piece = ctypes.create_string_buffer(256)
        one = (llama_cpp.llama_token * 1)()
        # One batch struct reused for every generated token: only the token value changes.
        batch = llama_cpp.llama_batch_get_one(one, 1)
        is_eog, to_piece, decode = (
            llama_cpp.llama_vocab_is_eog,
            llama_cpp.llama_token_to_piece,
            llama_cpp.llama_decode,
        )
        ignore_eos = sampling.ignore_eos
        cached = self._cached
        stops = StopText(sampling.stop)
        constraint = Constraint(self.grammar_vocabulary(), sampling.grammar) if sampling.grammar else None

        reason = "length"
        generated = 0
        t_first = t_prompt_done = None
        while generated < limit:
            if constraint is not None:
                constraint.mask(self._logits_row())  # the pick, greedy or the C chain, reads this row
            token = pick()
            if t_prompt_done is None:
                t_prompt_done = time.perf_counter()
            if not ignore_eos and is_eog(vocab, token):
                reason = "stop"
                break
            generated += 1
            forced: Sequence[int] = ()
            if constraint is not None:
                constraint.accept(token)
                forced = constraint.forced()[: limit - generated]
                generated += len(forced)
            n = to_piece(vocab, token, piece, 256, 0, False)
            text = decoder.decode(piece.raw[:n]) if n > 0 else ""
            for extra in forced:
                n = to_piece(vocab, extra, piece, 256, 0, False)
                text += decoder.decode(piece.raw[:n]) if n > 0 else ""
            if t_first is None:
                t_first = time.perf_counter()
            text, stopped = stops.feed(text)
            if text:
                yield Token(text)
            if stopped or (constraint is not None and constraint.complete):
                reason = "stop"
                break
            if generated >= limit:
                break
            if len(cached) + 1 + len(forced) > self._allocated:
                self._make_room(len(cached) + 1 + len(forced))
                ctx = self._ctx
            if not forced:
                one[0] = token
                status = decode(ctx, batch)
            else:  # the grammar's forced tokens go in with the sampled one: one decode, not one each
                step = [token, *forced]
                array = (llama_cpp.llama_token * len(step))(*step)
                status = decode(ctx, llama_cpp.llama_batch_get_one(array, len(step)))
            if status != 0:
                raise GenerationError(f"llama.cpp failed to evaluate a generated token (llama_decode returned {status})")
            cached.append(token)
            cached.extend(forced)
        if held := stops.flush():  # text kept back for a stop string that never came
            yield Token(held)
        # Bytes still buffered are a character cut off by the token limit: dropped, not shown as U+FFFD.

        yield Finished.measured(reason, Usage(len(tokens), generated, reused), seed, t_start, t_prompt_done, t_first,
                                time.perf_counter())

    def embed(self, texts: Sequence[str]) -> tuple[list[list[float]], int]:
        """Pooled, L2-normalised embeddings, one text per llama_decode in a context of their own
        (it keeps every token's output, which generation's context does not)."""
        if self._embed_ctx is None:
            cparams = _context_params(self._options, self.n_ctx, self.n_threads)
            cparams.embeddings = True
            cparams.n_seq_max, cparams.n_outputs_max, cparams.kv_unified = 1, 0, False
            cparams.n_ctx = self.n_ctx
            # Models without causal attention must see the whole input in one ubatch.
            cparams.n_batch = cparams.n_ubatch = min(self.n_ctx, self._options.n_batch)
            self._embed_ctx = llama_cpp.llama_init_from_model(self._model, cparams)
            if not self._embed_ctx:
                raise GenerationError(_log.first_error() or "llama.cpp could not create an embedding context")
        ctx, limit = self._embed_ctx, min(self.n_ctx, self._options.n_batch)
        vectors, total = [], 0
        n_embd = llama_cpp.llama_model_n_embd(self._model)
        for text in texts:
            tokens = self.tokenize(text)
            if len(tokens) > limit:
                raise ContextOverflowError(len(tokens), limit, self.n_ctx_train)
            total += len(tokens)
            llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
            array = (llama_cpp.llama_token * len(tokens))(*tokens)
            status = llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(array, len(tokens)))
            pooled = llama_cpp.llama_get_embeddings_seq(ctx, 0)
            if status != 0 or not pooled:
                raise GenerationError(f"llama.cpp could not embed the text (llama_decode returned {status})")
            vector = np.ctypeslib.as_array(pooled, shape=(n_embd,)).astype(np.float64)
            norm = float(np.linalg.norm(vector))
            vectors.append((vector / norm if norm > 0 else vector).tolist())
        return vectors, total

    def grammar_vocabulary(self):
        """llguidance's view of this vocabulary, built on first use (about a second)."""
        if self._grammar_vocabulary is None:
            from ..constraints import vocabulary

            ends = {llama_cpp.llama_vocab_eos(self._vocab), llama_cpp.llama_vocab_eot(self._vocab)}
            self._grammar_vocabulary = vocabulary(self._vocab, sorted(t for t in ends if t >= 0))
        return self._grammar_vocabulary

    def batcher(self) -> LlamaCppBatcher:
        """Several sequences decoded together in this model's context (LoadOptions.n_seq of them)."""
        from .llamacpp_batch import LlamaCppBatcher

        return LlamaCppBatcher(self)

    def close(self) -> None:
        self._free_context()
        if self._embed_ctx:
            llama_cpp.llama_free(self._embed_ctx)
            self._embed_ctx = None
        if self._model:
            llama_cpp.llama_model_free(self._model)
            self._model = None

    def __del__(self) -> None:
        self.close()


def _window(options: LoadOptions, n_ctx_train: int) -> int:
    if options.n_ctx is None:
        return min(n_ctx_train, DEFAULT_CTX)
    return options.n_ctx or n_ctx_train


def _context_params(options: LoadOptions, n_ctx: int, n_threads: int):
    cparams = llama_cpp.llama_context_default_params()
    cparams.n_ctx = n_ctx * options.n_seq
    cparams.n_batch = min(options.n_batch, cparams.n_ctx)
    cparams.n_ubatch = min(options.n_ubatch, cparams.n_batch)
    # Only each sequence's last token's logits are ever read, and llama.cpp otherwise reserves
    # a buffer for n_batch of them (100 MiB for a 49k vocabulary).
    cparams.n_outputs_max = options.n_seq
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


def _sampler_chain(sampling: SamplingOptions, seed: int, n_vocab: int):
    params = llama_cpp.llama_sampler_chain_default_params()
    params.no_perf = True
    chain = llama_cpp.llama_sampler_chain_init(params)
    add = llama_cpp.llama_sampler_chain_add
    if sampling.repeat_penalty != 1.0:
        # The pinned llama.cpp takes the vocabulary size first (llama.h), before the window of 64.
        add(chain, llama_cpp.llama_sampler_init_penalties(n_vocab, 64, sampling.repeat_penalty, 0.0, 0.0))
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


def _place_cpu_weights(mparams, path: Path, n_gpu_layers: int) -> None:
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
    patterns = override_patterns(weights, first_gpu_block, output_on_cpu)
    if not patterns:
        return
    overrides = Overrides(patterns, buft)
    mparams.tensor_buft_overrides = overrides.pointer
    mparams.localllm_overrides = overrides  # the array lives as long as the params that point at it


def _load_failure_reason() -> str:
    """The most specific thing llama.cpp said about a failed load, without its function-name prefix."""
    errors = list(_log.errors)
    if not errors:
        return "llama.cpp could not load it"
    source, _, reason = errors[0].partition(": ")
    reason = reason.removeprefix("error loading model: ").rstrip(".") or source
    if any(line.startswith("gguf_init") for line in errors):
        return f"invalid or truncated GGUF file ({reason})"
    return reason


_DEVICE_TYPES = {0: "cpu", 1: "gpu", 2: "igpu", 3: "accel"}


def devices() -> list[tuple[str, str, int, int, str]]:
    """llama.cpp's backend devices as (name, type, free bytes, total bytes, description), e.g.
    ("CUDA0", "gpu", ...) or an RPC worker's ("RPC0", "gpu", ..., "10.0.0.2:50052").

    These are the devices the installed build can actually use, with memory as llama.cpp sees
    it (for Metal, the recommended working set). llama-cpp-python does not bind this part of
    ggml, hence ctypes; a layout it cannot find yields an empty list.
    """
    _init_backend(_log.verbose)
    try:
        ggml, base = library("ggml"), library("ggml-base")
    except OSError:
        return []
    ggml.ggml_backend_dev_count.restype = ctypes.c_size_t
    ggml.ggml_backend_dev_get.argtypes, ggml.ggml_backend_dev_get.restype = [ctypes.c_size_t], ctypes.c_void_p
    base.ggml_backend_dev_name.argtypes, base.ggml_backend_dev_name.restype = [ctypes.c_void_p], ctypes.c_char_p
    base.ggml_backend_dev_description.argtypes, base.ggml_backend_dev_description.restype = [ctypes.c_void_p], ctypes.c_char_p
    base.ggml_backend_dev_type.argtypes, base.ggml_backend_dev_type.restype = [ctypes.c_void_p], ctypes.c_int
    size_p = ctypes.POINTER(ctypes.c_size_t)
    base.ggml_backend_dev_memory.argtypes, base.ggml_backend_dev_memory.restype = [ctypes.c_void_p, size_p, size_p], None
    found = []
    for i in range(ggml.ggml_backend_dev_count()):
        dev = ggml.ggml_backend_dev_get(i)
        free, total = ctypes.c_size_t(), ctypes.c_size_t()
        base.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        kind = _DEVICE_TYPES.get(base.ggml_backend_dev_type(dev), "other")
        description = (base.ggml_backend_dev_description(dev) or b"").decode(errors="replace")
        found.append((base.ggml_backend_dev_name(dev).decode(), kind, free.value, total.value, description))
    return found


def supports_gpu_offload() -> bool:
    return bool(llama_cpp.llama_supports_gpu_offload())


_MODEL_BUFFER_LINE = re.compile(r"(\S+) model buffer size = +([\d.]+) MiB")


def _model_buffers(lines: list[str]) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for line in lines:
        if found := _MODEL_BUFFER_LINE.search(line):
            sizes[found.group(1)] = sizes.get(found.group(1), 0) + round(float(found.group(2)) * 2**20)
    return sizes


def quantize(source: Path, target: Path, kind: str) -> None:
    """Requantize a GGUF (e.g. the starter to "q4_0", to exercise the kernels repack serves)."""
    _init_backend(_log.verbose)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = {"q4_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0, "q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0}[kind]
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
    _init_backend(options.verbose)
    captured: list[str] = []
    _log.capture = captured
    try:
        mparams = llama_cpp.llama_model_default_params()
        mparams.no_alloc = True
        mparams.load_mode = llama_cpp.LLAMA_LOAD_MODE_NONE  # no_alloc cannot map the file
        _place_cpu_weights(mparams, path, options.n_gpu_layers or 0)
        model = llama_cpp.llama_model_load_from_file(os.fsencode(path), mparams)
        if not model:
            raise ModelLoadError(path, _load_failure_reason())
        try:
            cparams = _context_params(options, _window(options, llama_cpp.llama_model_n_ctx_train(model)), options.n_threads or 1)
            ctx = llama_cpp.llama_init_from_model(model, cparams)
            if ctx:
                llama_cpp.llama_free(ctx)
        finally:
            llama_cpp.llama_model_free(model)
    finally:
        _log.capture = None
    sizes = {}
    for line in captured:
        for name, pattern in _BUFFER_LINES.items():
            if found := pattern.search(line.strip()):
                sizes[name] = sizes.get(name, 0) + round(float(found.group(1)) * 2**20)
    return sizes
