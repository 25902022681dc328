"""llama.cpp's single-sequence decode loop with drafted tokens (localllm.generation.speculation says
what is drafted, when, and why greedy answers only).

Each step feeds the picked token (with any the grammar forces after it) and the drafts in one batch,
with logits for the step's last token and every draft; the drafts the model agrees with are kept
(their cells are already computed), and the cells of those after the first it does not are removed
from the KV cache. A step of one token and its drafts is timed for the cost curve the controller reads.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import llama_cpp

from ...errors import GenerationError
from ...events import Event, Token
from ...generation.sequence import Answer
from ...generation.speculation import Speculation


def speculative_loop(model, tokens: list[int], answer: Answer, speculation: Speculation) -> Iterator[Event]:
    """Decode the greedy `answer` after its prompt `tokens` was evaluated."""
    controller = speculation.controller
    curve = controller.curve if controller is not None else None
    capacity = model._n_batch  # llama_decode takes no more at once
    batch = llama_cpp.llama_batch_init(capacity, 0, 1)
    cached, governor, perf_counter = model._cached, model.governor, time.perf_counter
    try:
        row, feed = model._logits_row(-1), None
        answer.mask(row)
        while True:
            if feed is None:
                text, feed = answer.take(int(row.argmax()))
                if text:
                    yield Token(text)
                if feed is None:
                    break
                speculation.drafter.extend(feed)
            if len(feed) > capacity:  # a grammar's forced run longer than a batch: its head read as a prompt is
                model._make_room(len(cached) + len(feed))
                for _ in model._decode(feed[:-1]):
                    pass
                feed = feed[-1:]
            room = min(capacity - len(feed), model._allocated - len(cached) - len(feed))
            draft = speculation.propose(answer, room)
            step = feed + draft
            if len(cached) + len(step) > model._allocated:
                model._make_room(len(cached) + len(step))
            last = len(feed) - 1  # batch index of the row after the step's own tokens
            for i, token in enumerate(step):
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, len(cached) + i, 1
                batch.seq_id[i][0], batch.logits[i] = 0, i >= last
            batch.n_tokens = len(step)
            started = perf_counter()
            status = llama_cpp.llama_decode(model._ctx, batch)
            elapsed = perf_counter() - started
            if status != 0:
                raise GenerationError(f"llama.cpp failed to evaluate a generated token (llama_decode returned {status})")
            cached.extend(step)
            if curve is not None and last == 0:
                curve.record(len(step), elapsed)
            if not draft:
                if last == 0:
                    governor.step(elapsed)
                row, feed = model._logits_row(last), None
                answer.mask(row)
                continue
            checked = speculation.check(answer, draft, lambda j: model._logits_row(last + j))
            if checked.text:
                yield Token(checked.text)
            if checked.used < len(draft):
                keep = len(cached) - (len(draft) - checked.used)
                llama_cpp.llama_memory_seq_rm(model._memory, 0, keep, -1)
                del cached[keep:]
            if checked.over:
                break
            row, feed = checked.row, checked.feed
    finally:
        llama_cpp.llama_batch_free(batch)
