"""Several sequences in one llama.cpp context, decoded together: continuous batching for `serve`.

Each step is one ``llama_decode`` whose batch carries the next token of every sequence that is
generating, plus as much of newly arrived prompts as the batch has room for, so a request joins
between steps without stalling the others. Each slot (llama.cpp sequence id) keeps the KV cache
of its last request; a new request takes the free slot that shares the longest prefix with it,
or copies a longer shared prefix from any other slot (the KV buffer is unified, so the copy
shares cells instead of moving data). A chat's next turn thus evaluates only its new tokens.
With the prompt cache on, a slot's cache is also saved on disk when the engine is idle after its
answer, and a request that shares more with a saved state than with memory loads it into its slot
(after the slot was reused, or the server restarted): every shared token, the "live" mode of
localllm.backends.llamacpp.state_cache.

Everything here runs on the engine thread; only SequenceRequest.cancel() comes from others.
"""

from __future__ import annotations

import ctypes
import time

import llama_cpp
import numpy as np

from ...errors import GenerationError
from ...events import PromptProgress, Token
from ...generation.sequence import Answer
from ...generation.speculation import MAX_DRAFT
from ..base import SequenceRequest, reusable_prefix
from . import state_cache
from .params import PROGRESS_AFTER, sampler_chain


class _Slot:
    def __init__(self, seq: int):
        self.seq = seq
        self.cached: list[int] = []  # tokens whose KV cache this sequence holds
        self.shift = 0  # the position after them minus their count (M-RoPE images: vision.py)
        self.request: SequenceRequest | None = None
        self.last_used = 0.0
        self.unsaved = False  # its cache changed since it was last saved on disk

    def start(self, request: SequenceRequest, reused: int, answer: Answer) -> None:
        self.request = request
        self.answer = answer
        answer.reused = reused
        self.pending = request.tokens[reused:]  # prompt tokens still to evaluate
        self.reused = reused
        # Generated tokens to evaluate next: the sampled one and any the grammar forces after it.
        self.next_tokens: list[int] = []
        self.sampler = None
        self.speculation = None  # its drafting (greedy answers when the load speculates)
        self.draft: list[int] = []  # tokens drafted after next_tokens in the step being decoded


class _Batch:
    """A llama_batch whose arrays are numpy buffers, so a whole prompt chunk is written at once."""

    def __init__(self, capacity: int, n_seq: int):
        self.token = np.zeros(capacity, dtype=np.int32)
        self.pos = np.zeros(capacity, dtype=np.int32)
        self.n_seq_id = np.ones(capacity, dtype=np.int32)
        self.logits = np.zeros(capacity, dtype=np.int8)
        self.seq_values = np.arange(n_seq, dtype=np.int32)
        # seq_id[i] points at seq_values[seq of token i]: one sequence per token.
        self.seq_ptr = np.zeros(capacity, dtype=np.uintp)
        self.n = 0
        self.struct = llama_cpp.llama_batch()
        self.struct.token = self.token.ctypes.data_as(ctypes.POINTER(ctypes.c_int32))
        self.struct.embd = None
        self.struct.pos = self.pos.ctypes.data_as(ctypes.POINTER(ctypes.c_int32))
        self.struct.n_seq_id = self.n_seq_id.ctypes.data_as(ctypes.POINTER(ctypes.c_int32))
        self.struct.seq_id = ctypes.cast(self.seq_ptr.ctypes.data, ctypes.POINTER(ctypes.POINTER(ctypes.c_int32)))
        self.struct.logits = self.logits.ctypes.data_as(ctypes.POINTER(ctypes.c_int8))

    def add(self, tokens: list[int], first_pos: int, seq: int, outputs: int) -> int:
        """Append tokens of one sequence, the last `outputs` of them with logits; returns the
        batch index of the first of those (of the last token when there are none)."""
        start, end = self.n, self.n + len(tokens)
        self.token[start:end] = tokens
        self.pos[start:end] = np.arange(first_pos, first_pos + len(tokens), dtype=np.int32)
        self.seq_ptr[start:end] = self.seq_values.ctypes.data + 4 * seq
        self.logits[start:end] = 0
        self.logits[end - outputs:end] = 1
        self.n = end
        return end - max(outputs, 1)


class LlamaCppBatcher:
    def __init__(self, model):
        """`model`: the LlamaCppModel whose context (options.n_seq sequences) this decodes in."""
        self._model = model
        self.slots = model._options.n_seq
        self._slots = [_Slot(seq) for seq in range(self.slots)]
        self._budget = model._n_batch
        self._batch = _Batch(self._budget, self.slots)
        self._vocab = model._vocab

    def free_slots(self) -> int:
        return sum(slot.request is None for slot in self._slots)

    def busy(self) -> bool:
        return any(slot.request is not None for slot in self._slots)

    def add(self, request: SequenceRequest) -> None:
        """Start a request in a free slot (the caller checked free_slots), reusing what it can of
        a prefix already in the KV cache."""
        tokens = request.tokens
        answer = self._model.sequence(len(tokens), request.sampling)
        free = [slot for slot in self._slots if slot.request is None]
        # The longest own prefix wins; among equals the least recently used, so that other
        # conversations' caches survive longest.
        slot = max(free, key=lambda s: (reusable_prefix(s.cached, tokens), -s.last_used))
        common = reusable_prefix(slot.cached, tokens)
        memory = self._model._memory
        donor = max(self._slots, key=lambda s: reusable_prefix(s.cached, tokens))
        donated = reusable_prefix(donor.cached, tokens)
        vision = self._model.vision

        def position(n: int) -> int:  # after tokens[:n]
            return n + (vision.shift(tokens, n) if vision is not None else 0)
        restored = self._restore(slot, tokens, max(common, donated))
        if restored is not None:
            common = restored
        elif donated > common:
            llama_cpp.llama_memory_seq_rm(memory, slot.seq, -1, -1)
            llama_cpp.llama_memory_seq_cp(memory, donor.seq, slot.seq, 0, position(donated))
            common = donated
        elif common < len(slot.cached) and not llama_cpp.llama_memory_seq_rm(memory, slot.seq, position(common), -1):
            # Some caches (recurrent, sliding window) cannot be cut mid-sequence.
            llama_cpp.llama_memory_seq_rm(memory, slot.seq, -1, -1)
            common = 0
        slot.cached, slot.shift = tokens[:common], position(common) - common
        slot.unsaved = True
        slot.start(request, common, answer)
        slot.speculation = self._model.speculation(tokens, answer)

    def _restore(self, slot: _Slot, tokens: list[int], in_memory: int) -> int | None:
        """Load into `slot` the saved state sharing more of `tokens` than memory holds (`in_memory`);
        the tokens now cached, or None when no state beats memory."""
        states = self._model._states
        if states is None or len(tokens) <= state_cache.MIN_TOKENS:
            return None
        saved = states.find(tokens)
        usable = reusable_prefix(saved.tokens, tokens) if saved is not None else 0
        if usable <= in_memory:
            return None
        return usable if self._model.load_state(slot.seq, saved.state, usable) else 0

    def idle(self) -> bool:
        """Save one slot whose cache changed since it was last saved; True if one was."""
        state_cache.engines_busy(False)  # called when the engine has nothing else to do
        states = self._model._states
        for slot in self._slots:
            if slot.request is None and slot.unsaved:
                slot.unsaved = False
                if states is not None and len(slot.cached) >= state_cache.MIN_TOKENS and min(slot.cached) >= 0:
                    self._model.copy_state(slot.seq, list(slot.cached))
                    return True
        return False

    def step(self) -> None:
        """One llama_decode for every active sequence; emits what it produced."""
        for slot in self._slots:
            if slot.request is not None and slot.request.cancelled:
                self._finish(slot, "cancelled")
        batch = self._batch
        batch.n = 0
        entries: list[tuple[_Slot, int, int | None]] = []  # slot, tokens it adds, batch index of its output
        generating = [slot for slot in self._slots if slot.request is not None and slot.next_tokens]
        self._draft(generating)
        for slot in generating:
            room = self._budget - batch.n
            if room > 0:
                # A grammar's forced run longer than the room goes in over several steps; the
                # logits are read once its last token is in.
                chunk = slot.next_tokens[:room]
                whole = len(chunk) == len(slot.next_tokens)
                if whole and slot.draft:
                    index = batch.add(chunk + slot.draft, len(slot.cached) + slot.shift, slot.seq, 1 + len(slot.draft))
                else:
                    index = batch.add(chunk, len(slot.cached) + slot.shift, slot.seq, int(whole))
                entries.append((slot, len(chunk), index if whole else None))
        for slot in self._slots:
            room = self._budget - batch.n
            if slot.request is None or slot.next_tokens or room <= 0:
                continue
            if slot.pending[0] < 0 and not self._image(slot):
                continue
            chunk = slot.pending[:room]
            chunk = chunk[: next((i for i, t in enumerate(chunk) if t < 0), len(chunk))]  # up to the next image
            done = len(chunk) == len(slot.pending)
            index = batch.add(chunk, len(slot.cached) + slot.shift, slot.seq, done)
            entries.append((slot, len(chunk), index if done else None))
        if not entries:
            return
        state_cache.engines_busy(True)
        batch.struct.n_tokens = batch.n
        started = time.perf_counter()
        status = llama_cpp.llama_decode(self._model._ctx, batch.struct)
        elapsed = time.perf_counter() - started
        if status != 0:
            self._fail([slot for slot, _, _ in entries], status)
            return
        drafts = sum(len(slot.draft) for slot, _, _ in entries)
        if batch.n == len(entries) + drafts:  # one token per sequence and drafts, each with logits
            if not drafts:  # steps the governor can compare
                self._model.governor.step(elapsed)
            curve = self._model._cost_curve
            if curve is not None and any(slot.speculation is not None for slot, _, _ in entries):
                curve.record(batch.n, elapsed)
        for slot, taken, index in entries:
            self._advance(slot, taken)
            if index is None:
                continue
            try:
                if slot.draft:
                    self._checked(slot, index)
                else:
                    token = self._pick(slot, index)
                    self._sampled(slot, token, self._model._logits_row(index) if slot.answer.scoring else None)
            except GenerationError as exc:  # this sequence's grammar failed; the others go on
                self._fail_with([slot], str(exc))

    def _image(self, slot: _Slot) -> bool:
        """Read the image at the front of the slot's prompt, in a decode of its own (the projector's
        embeddings, not tokens); False when it failed (the sequence has ended) or nothing is left."""
        end = next((i for i, t in enumerate(slot.pending) if t != slot.pending[0]), len(slot.pending))
        try:
            slot.shift += self._model.vision.evaluate(self._model._ctx, slot.pending[0], len(slot.cached) + slot.shift,
                                                      slot.seq, self._model._n_batch, False)
        except GenerationError as exc:
            self._fail_with([slot], str(exc))
            return False
        slot.cached.extend(slot.pending[:end])
        slot.pending = slot.pending[end:]
        return bool(slot.pending)

    def _draft(self, generating: list[_Slot]) -> None:
        """Choose each generating slot's draft for this step: none while a prompt is being read
        (its batch is no step of the cost curve), at most MAX_DRAFT together (the context's output rows)."""
        for slot in generating:
            slot.draft = []
        if any(slot.request is not None and not slot.next_tokens for slot in self._slots):
            return
        base, left = sum(len(slot.next_tokens) for slot in generating), MAX_DRAFT
        for slot in generating:
            if slot.speculation is None or not left:
                continue
            room = min(left, self._budget - base)
            slot.draft = slot.speculation.propose(slot.answer, room, base, len(generating) - 1)
            base, left = base + len(slot.draft), left - len(slot.draft)

    def _checked(self, slot: _Slot, index: int) -> None:
        """Keep what the model agrees with of the slot's decoded draft, and go on from there."""
        draft, slot.draft = slot.draft, []
        checked = slot.speculation.check(slot.answer, draft, lambda j: self._model._logits_row(index + j))
        if checked.text:
            slot.request.emit(Token(checked.text))
        slot.cached.extend(draft[:checked.used])
        if checked.used < len(draft):
            llama_cpp.llama_memory_seq_rm(self._model._memory, slot.seq, len(slot.cached) + slot.shift, -1)
        if checked.over:
            self._finish(slot)
        elif checked.feed is not None:
            slot.next_tokens = checked.feed
        else:
            self._sampled(slot, int(checked.row.argmax()))

    def _advance(self, slot: _Slot, taken: int) -> None:
        """Record tokens that are now in the KV cache."""
        if slot.next_tokens:
            slot.cached.extend(slot.next_tokens[:taken])
            slot.next_tokens = slot.next_tokens[taken:]
            return
        slot.cached.extend(slot.pending[:taken])
        slot.pending = slot.pending[taken:]
        total = len(slot.request.tokens)
        if total - slot.reused > PROGRESS_AFTER:
            slot.request.emit(PromptProgress(total - len(slot.pending), total))

    def _pick(self, slot: _Slot, index: int) -> int:
        ctx, answer = self._model._ctx, slot.answer
        if answer.greedy or answer.constraint is not None:
            row = self._model._logits_row(index)
            answer.mask(row)  # in llama.cpp's own buffer, which the sampler chain reads next
            if answer.greedy:
                return int(row.argmax())
        if slot.sampler is None:
            slot.sampler = sampler_chain(slot.request.sampling, answer.seed, llama_cpp.llama_vocab_n_tokens(self._vocab))
        return llama_cpp.llama_sampler_sample(slot.sampler, ctx, index)

    def _sampled(self, slot: _Slot, token: int, row=None) -> None:
        text, step = slot.answer.take(token, row)
        if text:
            slot.request.emit(slot.answer.token(text))
        if step is None:
            self._finish(slot)
        else:
            slot.next_tokens = step
            if slot.speculation is not None:
                slot.speculation.drafter.extend(step)

    def _finish(self, slot: _Slot, reason: str | None = None) -> None:
        request = slot.request
        held, finished = slot.answer.finish(reason)
        if held:
            request.emit(slot.answer.token(held))
        self._release(slot)
        request.emit(finished)

    def _release(self, slot: _Slot) -> None:
        if slot.sampler is not None:
            llama_cpp.llama_sampler_free(slot.sampler)
            slot.sampler = None
        slot.request = None
        slot.last_used = time.monotonic()

    def _fail(self, slots: list[_Slot], status: int) -> None:
        self._fail_with(slots, f"llama.cpp failed to evaluate the batch (llama_decode returned {status})")

    def _fail_with(self, slots: list[_Slot], message: str) -> None:
        for slot in slots:
            request = slot.request
            llama_cpp.llama_memory_seq_rm(self._model._memory, slot.seq, -1, -1)
            slot.cached, slot.unsaved = [], False
            self._release(slot)
            request.emit(GenerationError(message))

    def fail_all(self, message: str) -> None:
        """End every running sequence with an error, forgetting their caches (after a failed step)."""
        self._fail_with([slot for slot in self._slots if slot.request is not None], message)

    def close(self) -> None:
        """Cancel whatever is still running and save what idle time did not (the model is about
        to be freed)."""
        for slot in self._slots:
            if slot.request is not None:
                self._finish(slot, "cancelled")
        while self.idle():
            state_cache.flush()
