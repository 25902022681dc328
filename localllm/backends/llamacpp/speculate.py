"""llama.cpp's single-sequence decode loop with drafted tokens (localllm.generation.speculation says
what is drafted, when, and why greedy answers only).

Each step feeds the picked token and the drafts in one batch with logits for every position, then
takes the model's own pick at each position in turn: a draft equal to it is kept (its cells are
already computed), the first that differs is replaced by the pick, and the cells of the drafts after
it are removed from the KV cache. The step's time goes to the cost curve the controller reads.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import llama_cpp

from ...errors import GenerationError
from ...events import Event, Token
from ...generation.sequence import Answer
from ...generation.speculation import MAX_DRAFT, Controller, NgramDrafter


def speculative_loop(model, tokens: list[int], answer: Answer, controller: Controller | None) -> Iterator[Event]:
    """Decode `answer` (greedy, no grammar) after its prompt `tokens` was evaluated. controller
    None drafts whatever the lookup proposes (`--spec ngram`)."""
    drafter = NgramDrafter(tokens)
    curve = controller.curve if controller is not None else None
    batch = llama_cpp.llama_batch_init(1 + MAX_DRAFT, 0, 1)
    cached, governor, perf_counter = model._cached, model.governor, time.perf_counter
    try:
        row = model._logits_row(-1)
        while not answer.done:
            text, step = answer.take(int(row.argmax()))
            if text:
                yield Token(text)
            if step is None:
                break
            drafter.extend(step)
            proposal, n = drafter.propose(MAX_DRAFT)
            room = max(0, min(answer.limit - len(answer.output) - 1, model._allocated - len(cached) - 1))
            available = min(len(proposal), room)
            k = available if controller is None else controller.draft_length(available, n)
            draft = proposal[:k]
            feed = step + draft
            if len(cached) + len(feed) > model._allocated:
                model._make_room(len(cached) + len(feed))
            for i, token in enumerate(feed):
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, len(cached) + i, 1
                batch.seq_id[i][0], batch.logits[i] = 0, True
            batch.n_tokens = len(feed)
            started = perf_counter()
            status = llama_cpp.llama_decode(model._ctx, batch)
            elapsed = perf_counter() - started
            if status != 0:
                raise GenerationError(f"llama.cpp failed to evaluate a generated token (llama_decode returned {status})")
            cached.extend(feed)
            if curve is not None:
                curve.record(len(feed), elapsed)
            if not draft:
                governor.step(elapsed)
                row = model._logits_row(0)
                continue
            accepted, over = 0, False
            for i, drafted in enumerate(draft):
                row = model._logits_row(i)
                if int(row.argmax()) != drafted:
                    break
                text, kept = answer.take(drafted)
                if text:
                    yield Token(text)
                accepted += 1
                if kept is None:
                    over = True
                    break
                drafter.extend(kept)
            else:
                row = model._logits_row(len(draft))
            answer.drafted, answer.accepted = answer.drafted + len(draft), answer.accepted + accepted
            if controller is not None:
                controller.record(n, len(draft), accepted)
            if accepted < len(draft):
                keep = len(cached) - (len(draft) - accepted)
                llama_cpp.llama_memory_seq_rm(model._memory, 0, keep, -1)
                del cached[keep:]
            if over:
                break
    finally:
        llama_cpp.llama_batch_free(batch)
