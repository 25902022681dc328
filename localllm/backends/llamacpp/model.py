"""The llama.cpp backend, through llama-cpp-python's low-level C API.

Its neighbours: runtime.py (process-wide setup: logs, init, threadpool, devices), params.py (load and
context parameters, dry runs), load.py (checks and planning), batch.py (several sequences), vision.py
(images). Only backends/ imports ``llama_cpp``. It skips llama-cpp-python's high-level
``Llama`` class on the hot path, which reads prompts in n_batch slices and copies logits per token.
Here a prompt is one ``llama_decode`` call and a generated token a handful of C calls (the sampler
chain, one decode, one detokenize; greedy picks read the logits in place)."""

from __future__ import annotations

import ctypes
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import llama_cpp
import numpy as np
from llama_cpp.llama_chat_format import CHATML_CHAT_TEMPLATE, Jinja2ChatFormatter

from ...config import cache_dir
from ...errors import GenerationError, ModelLoadError
from ...events import Event, PromptProgress
from ...formats import is_checkpoint
from ...generation.sequence import Answer
from ...generation.speculation import Controller, Speculation
from ...gguf_info import header_facts
from ...hardware import CpuLoadSampler, default_threads
from ...options import LoadOptions, SamplingOptions
from ..base import Capabilities, Message, prompt_tokens, reusable_prefix, stretches
from ..chat_template import render_chat
from ..threads import engine_governor
from . import load as llamacpp_load
from . import state_cache
from .draft import open_draft
from .mapped import release
from .params import (
    PROGRESS_AFTER,
    READ_STEP_CPU,
    choose_load_mode,
    context_params,
    place_cpu_weights,
    sampler_chain,
    window,
)
from .pieces import Pieces
from .runtime import (
    Threadpool,
    decode_at,
    init_backend,
    load_failure_reason,
    model_buffers,
)
from .runtime import log as llama_log
from .speculate import curve_key, load_curve, save_curve, speculative_loop

if TYPE_CHECKING:
    from .batch import LlamaCppBatcher



class LlamaCppBackend:
    name = "llamacpp"
    capabilities = Capabilities(batching=True, token_input=True, grammar=True, logprobs=True)

    @staticmethod
    def can_load(path: Path) -> bool:
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
        init_backend(options.verbose)
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
        place_cpu_weights(mparams, path, layers)
        repacked = choose_load_mode(mparams, path, layers)
        self.weights_mapped = repacked is None or bool(repacked)
        llama_log.errors.clear()
        load_sampler = CpuLoadSampler() if options.n_threads is None else None
        llama_log.capture = captured = []
        try:
            self._model = llama_cpp.llama_model_load_from_file(os.fsencode(path), mparams)
        finally:
            llama_log.capture = None
        # Bytes of weights per llama.cpp buffer type, e.g. {"CPU_Mapped": ..., "CPU_REPACK": ...}.
        self.weight_buffers = model_buffers(captured)
        if not self._model:
            raise ModelLoadError(path, load_failure_reason())
        self.released = release(repacked) if repacked else 0  # the mapped pages of repacked weights
        if repacked is not None and options.verbose:
            total = sum(size for _, _, size in repacked)
            how = (f"the mapped pages of {total / 2**20:.0f} MiB of weights llama.cpp repacked for this CPU were given back "
                   f"({self.released / 2**20:.0f} MiB)") if repacked else \
                f"the weights were read into memory, not mapped: llama.cpp repacks {self.weight_buffers.get('CPU_REPACK', 0) / 2**20:.0f} MiB of them"
            sys.stderr.write(f"localllm: {how}, so that each weight is held once\n")
        self.can_embed = bool(header_facts(path, cache_dir())["embedding_only"])

        self._vocab = llama_cpp.llama_model_get_vocab(self._model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self._vocab)
        self._logits_type = ctypes.c_float * self.n_vocab
        self.n_ctx_train = llama_cpp.llama_model_n_ctx_train(self._model)
        self.n_threads = options.n_threads or default_threads(busy_elsewhere=load_sampler.busy_elsewhere())
        self._max_threads = options.n_threads or max(self.n_threads, default_threads())  # what a quiet machine gets
        self.n_gpu_layers = layers if llama_cpp.llama_supports_gpu_offload() else 0

        self._options = options
        self.governor = engine_governor(self._set_threads, self.n_threads, options.n_threads, self._max_threads, options.verbose)
        self.n_ctx = window(options, self.n_ctx_train)
        lazy = 0 < options.initial_ctx < self.n_ctx
        reason = self._open_context(options.initial_ctx if lazy else self.n_ctx)
        if reason:
            self.close()
            raise ModelLoadError(path, f"{reason} (a smaller --ctx needs less memory)")
        if not lazy:
            self.n_ctx = self._allocated  # llama.cpp rounds the window up to a multiple of 256
        # Tokens in the KV cache, and the position after them minus their count (M-RoPE images: vision.py).
        self._cached, self._shift = [], 0
        self._read_step = self._n_ubatch if self.n_gpu_layers else min(self._n_ubatch, READ_STEP_CPU)
        # What a decode of b tokens costs here: what `auto` decides from (the other modes measure nothing).
        self._cost_curve = load_curve(curve_key(self)) if options.speculation == "auto" else None
        self._cold = 0  # leading cached tokens whose cells a cold read computed (state_cache says why)
        self._formatter = self._chat_formatter()
        self._warm_up()
        self._states, self._unsaved, self._draft, self.vision = None, False, None, None
        if options.projector:
            from .vision import open_vision

            self.vision = open_vision(self, options)
        if options.draft_plan is not None:
            self._draft = open_draft(self, Path(options.draft), options.draft_plan)  # or this model is closed
        if options.prompt_cache:  # the settings that shape the KV cache, all of them
            settings = {"n_ctx": self.n_ctx, "kv": options.kv_type or "f16", "flash_attn": options.flash_attn,
                        "n_batch": self._n_batch, "n_ubatch": self._n_ubatch, "read_step": self._read_step,
                        "swa_full": options.swa_full, "n_seq": options.n_seq, "llama_cpp": llama_cpp.__version__}
            self._states = state_cache.StateCache(state_cache.key(path, settings), options.verbose)

    def _set_threads(self, n: int) -> None:
        llama_cpp.llama_set_n_threads(self._ctx, n, n)

    @property
    def threads_in_use(self) -> int:
        """The threads decoding now (the governor may have left cores to busy processes)."""
        return self.governor.current

    def _open_context(self, n_ctx: int) -> str | None:
        """Create the llama.cpp context for n_ctx tokens; None, or why it failed."""
        cparams = context_params(self._options, n_ctx, self.n_threads)
        self._ctx = llama_cpp.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            return llama_log.first_error() or "llama.cpp could not create the context"
        # The pool holds as many threads as the governor may ever ask for; each step uses its count.
        self._threadpool = Threadpool(self._ctx, self._max_threads)
        llama_cpp.llama_set_n_threads(self._ctx, self.governor.current, self.governor.current)
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
        from ...generation.constraints import special_token

        return special_token(self.grammar_vocabulary(), self._tokenize(text, add_special=False))

    def generate(self, prompt: str | Sequence[int], sampling: SamplingOptions) -> Iterator[Event]:
        return self._generate(prompt_tokens(self, prompt), sampling)

    def _generate(self, tokens: list[int], sampling: SamplingOptions) -> Iterator[Event]:
        answer = self.sequence(len(tokens), sampling)
        if answer.greedy:
            yield from self._run(tokens, answer, self._greedy)
            return
        sampler = sampler_chain(sampling, answer.seed, llama_cpp.llama_vocab_n_tokens(self._vocab))
        try:
            yield from self._run(tokens, answer, lambda: llama_cpp.llama_sampler_sample(sampler, self._ctx, -1))
        finally:
            llama_cpp.llama_sampler_free(sampler)

    def sequence(self, n_prompt: int, sampling: SamplingOptions) -> Answer:
        """The decode rules of one answer on this model (localllm.generation.sequence)."""
        vocab, pieces = self._vocab, Pieces(self._vocab)
        return Answer(sampling, n_prompt, 0, self.n_ctx, lambda token: llama_cpp.llama_vocab_is_eog(vocab, token),
                      pieces, self.grammar_vocabulary, pieces.bytes_of)

    def speculation(self, tokens: list[int], answer: Answer) -> Speculation | None:
        """Drafting for a greedy answer to `tokens` when this load speculates (None: no drafts)."""
        mode = self._options.speculation
        if mode == "off" or not answer.greedy or answer.scoring or min(tokens) < 0:
            return None  # scores are taken one pick at a time; drafts are never images
        return Speculation(tokens, mode, Controller(self._cost_curve) if mode == "auto" else None, self._draft)

    def _greedy(self) -> int:
        """The likeliest next token. The C sampler chain first copies the whole vocabulary into a
        candidate array (65 us a token for SmolLM2's 49k); argmax over the logits in place takes
        6 us. Ties go to the lowest id, as with llama.cpp's greedy sampler."""
        return int(self._logits_row().argmax())

    def _logits_row(self, index: int = -1) -> np.ndarray:
        """The logits of batch position `index` (-1: the last), in llama.cpp's own buffer (no copy)."""
        logits = llama_cpp.llama_get_logits_ith(self._ctx, index)
        return np.frombuffer(self._logits_type.from_address(ctypes.addressof(logits.contents)), dtype=np.float32)

    def _reuse_prefix(self, tokens: list[int]) -> int:
        """Drop the KV cache after the longest prefix shared with the last call (in "cold" mode,
        the longest a cold read would have computed the same); return its length."""
        common = self._usable(reusable_prefix(self._cached, tokens), self._cold)
        self._shift = self.vision.shift(tokens, common) if self.vision is not None else 0
        if common and not llama_cpp.llama_memory_seq_rm(self._memory, 0, common + self._shift, -1):
            common = self._shift = 0  # some caches (recurrent, sliding window) cannot be cut mid-sequence
        if not common:
            llama_cpp.llama_memory_clear(self._memory, True)
        self._cached = tokens[:common]
        step = self._read_step
        # Read from a whole step of a cold read's cells on, the prompt's cells are a cold read's too.
        self._cold = len(tokens) if common % step == 0 and common <= self._cold // step * step else min(self._cold, common)
        return common

    def _usable(self, shared: int, cold: int) -> int:
        """Of `shared` cached prompt tokens, how many an answer may reuse under this load's mode."""
        step = self._read_step
        return shared if self._options.prompt_cache != "cold" else min(shared, cold) // step * step

    def _restore(self, tokens: list[int]) -> None:
        """Load the saved state sharing most with this prompt, as much as this mode may use (state_cache says why)."""
        saved = self._states.find(tokens)
        if saved is None:
            return
        usable = self._usable(reusable_prefix(saved.tokens, tokens), saved.cold)
        if usable <= self._usable(reusable_prefix(self._cached, tokens), self._cold):
            return
        self._make_room(len(saved.tokens))
        self._cached = saved.tokens[:usable] if self.load_state(0, saved.state, usable) else []
        self._cold = min(saved.cold, len(self._cached))

    def load_state(self, seq: int, state: bytes, keep: int) -> bool:
        """Put a saved state into sequence `seq` (emptied) and keep `keep` cells; False if it does not fit."""
        llama_cpp.llama_memory_seq_rm(self._memory, seq, -1, -1)
        data = (ctypes.c_uint8 * len(state)).from_buffer_copy(state)
        if llama_cpp.llama_state_seq_set_data(self._ctx, data, len(state), seq) != len(state):
            llama_cpp.llama_memory_seq_rm(self._memory, seq, -1, -1)
            self._states.say("a saved state did not fit the free cells; reading the prompt")
            return False
        llama_cpp.llama_memory_seq_rm(self._memory, seq, keep, -1)
        self._states.say(f"{keep} prompt tokens restored from disk")
        return True

    def copy_state(self, seq: int, tokens: list[int], cold: int = 0) -> None:
        """Copy sequence `seq`'s cells out, queued to be saved with the tokens they hold."""
        size = llama_cpp.llama_state_seq_get_size(self._ctx, seq)
        state = (ctypes.c_uint8 * size)()
        if llama_cpp.llama_state_seq_get_data(self._ctx, state, size, seq) == size:
            self._states.save_later(tokens, state, cold)

    def save_state(self) -> None:
        """Keep this sequence's cache on disk after each answer (never before it), unless nothing
        changed, the prompt cache is off, or fewer than state_cache.MIN_TOKENS are cached."""
        if not (self._states is not None and self._unsaved and self._ctx and len(self._cached) >= state_cache.MIN_TOKENS):
            return
        if min(self._cached) < 0:  # images' cells: kept in memory, not on disk
            return
        self._unsaved = False
        self.copy_state(0, list(self._cached), min(self._cold, len(self._cached)))

    def _decode(self, tokens: Sequence[int]) -> Iterator[PromptProgress]:
        """Evaluate prompt tokens. A long prompt goes in ubatch-sized steps, each followed by a
        PromptProgress: llama.cpp splits a batch into ubatches anyway, so this costs nothing. An
        image (a run of its placeholder id) is encoded and decoded by the projector, which takes
        seconds on a CPU: progress is said before and after it."""
        step, progress = self._read_step, len(tokens) > PROGRESS_AFTER or min(tokens, default=0) < 0
        if progress:
            yield PromptProgress(0, len(tokens))  # said at once: the first chunk alone takes seconds
        for first, end in stretches(tokens):
            if tokens[first] < 0:
                yield PromptProgress(first, len(tokens), image=True)
                self._shift += self.vision.evaluate(self._ctx, tokens[first], len(self._cached) + self._shift, 0,
                                                    self._n_batch, end == len(tokens))
                self._cached.extend(tokens[first:end])
                yield PromptProgress(end, len(tokens))
                continue
            for start in range(first, end, step):
                chunk = tokens[start : min(start + step, end)]
                array = (llama_cpp.llama_token * len(chunk))(*chunk)  # named: llama_decode reads it after this line
                status = decode_at(self._ctx, chunk, len(self._cached) + self._shift) if self._shift else \
                    llama_cpp.llama_decode(self._ctx, llama_cpp.llama_batch_get_one(array, len(chunk)))
                if status != 0:
                    self._cached = []
                    raise GenerationError(f"llama.cpp failed to evaluate the prompt (llama_decode returned {status})")
                self._cached.extend(chunk)
                if progress:
                    yield PromptProgress(start + len(chunk), len(tokens))

    def _run(self, tokens: list[int], answer: Answer, pick: Callable[[], int]) -> Iterator[Event]:
        state_cache.engines_busy(True)  # prompt states wait to be written (state_cache says why)
        try:
            yield from self._answer(tokens, answer, pick)
        finally:
            state_cache.engines_busy(False)
        self.save_state()  # once the answer is out: the caller's loop asks for the end

    def _answer(self, tokens: list[int], answer: Answer, pick: Callable[[], int]) -> Iterator[Event]:
        if self._states is not None and len(tokens) > state_cache.MIN_TOKENS:
            self._restore(tokens)
        answer.reused = reused = self._reuse_prefix(tokens)
        self._make_room(len(tokens))
        self._unsaved = True
        yield from self._decode(tokens[reused:])
        speculation = self.speculation(tokens, answer) if pick == self._greedy else None
        if speculation is not None:
            yield from speculative_loop(self, tokens, answer, speculation)
        else:
            yield from self._steps(answer, pick)
        # Bytes still buffered are a character cut off by the token limit: dropped, not shown as U+FFFD.
        held, finished = answer.finish()
        if held:  # text kept back for a stop string that never came
            yield answer.token(held)
        yield finished

    def _steps(self, answer: Answer, pick: Callable[[], int]) -> Iterator[Event]:
        """One token per decode (the grammar's forced ones with it)."""
        ctx = self._ctx
        one = (llama_cpp.llama_token * 1)()
        # One batch struct reused for every generated token: only the token value changes.
        batch = llama_cpp.llama_batch_get_one(one, 1)
        decode = llama_cpp.llama_decode
        cached = self._cached
        governor, perf_counter = self.governor, time.perf_counter
        masked = answer.constraint is not None
        while not answer.done:
            if masked:
                answer.mask(self._logits_row())  # the pick, greedy or the C chain, reads this row
            text, step = answer.take(pick(), self._logits_row() if answer.scoring else None)
            if text:
                yield answer.token(text)
            if step is None:
                break
            if len(cached) + len(step) > self._allocated:
                self._make_room(len(cached) + len(step))
                ctx = self._ctx
            if self._shift:  # positions given: llama.cpp would count them from the cells
                status = decode_at(ctx, step, len(cached) + self._shift)
            elif len(step) == 1:
                one[0] = step[0]
                t_step = perf_counter()
                status = decode(ctx, batch)
                governor.step(perf_counter() - t_step)
            else:  # the grammar's forced tokens go in with the sampled one: one decode, not one each
                array = (llama_cpp.llama_token * len(step))(*step)
                status = decode(ctx, llama_cpp.llama_batch_get_one(array, len(step)))
            if status != 0:
                raise GenerationError(f"llama.cpp failed to evaluate a generated token (llama_decode returned {status})")
            cached.extend(step)

    def embed(self, texts: Sequence[str]) -> tuple[list[list[float]], int]:
        from .embed import embed

        return embed(self, texts)

    def grammar_vocabulary(self):
        """llguidance's view of this vocabulary, built on first use (about a second)."""
        if self._grammar_vocabulary is None:
            from ...generation.constraints import vocabulary

            ends = {llama_cpp.llama_vocab_eos(self._vocab), llama_cpp.llama_vocab_eot(self._vocab)}
            self._grammar_vocabulary = vocabulary(self._vocab, sorted(t for t in ends if t >= 0))
        return self._grammar_vocabulary

    def batcher(self) -> LlamaCppBatcher:
        """Several sequences decoded together in this model's context (LoadOptions.n_seq of them)."""
        from .batch import LlamaCppBatcher

        return LlamaCppBatcher(self)

    def close(self) -> None:
        if getattr(self, "_states", None) is not None:
            self.save_state()
            state_cache.flush()
        self._states = None
        draft, self._draft = getattr(self, "_draft", None), None
        if draft is not None:
            draft.close()
        if getattr(self, "vision", None) is not None:  # before the model it was made for (closing twice is harmless)
            self.vision.close()
        self._free_context()
        if self._embed_ctx:
            llama_cpp.llama_free(self._embed_ctx)
            self._embed_ctx = None
        if self._model:
            if getattr(self, "_cost_curve", None) is not None:
                save_curve(curve_key(self), self._cost_curve)
            llama_cpp.llama_model_free(self._model)
            self._model = None

    def __del__(self) -> None:
        # Never saved from here: at interpreter exit the writer thread is already stopped.
        self._states = self._cost_curve = None
        self.close()

