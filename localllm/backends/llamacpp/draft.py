"""A draft model for speculative decoding (localllm.generation.speculation): a small model with the
target's vocabulary, in a context of its own, continues the answer greedily for k tokens; the
target checks them in one batch as it checks prompt-lookup drafts.

The vocabulary is compared token by token at load, as llama.cpp's speculative example does (the
same kind of tokenizer, the same text for every id both have, at most VOCAB_SLACK more or fewer
ids, the same begin and end tokens): a draft in another vocabulary would only ever be rejected.
"""

from __future__ import annotations

import time
from pathlib import Path

import llama_cpp

from ...errors import ModelLoadError
from ...options import LoadOptions
from ..base import reusable_prefix

VOCAB_SLACK = 128  # llama.cpp's SPEC_VOCAB_MAX_SIZE_DIFFERENCE: padding rows some exports add
CATCH_UP = 2  # tokens a step usually adds (the last draft and the model's own token)


def open_draft(target, path: Path, options: LoadOptions) -> ModelDrafter:
    """Load the draft model beside `target` (a LlamaCppModel), refusing one whose vocabulary
    differs; when it cannot be used, `target` is closed too (its load fails)."""
    try:
        draft = type(target)(path, options)
    except BaseException:
        target.close()
        raise
    why = vocabulary_mismatch(target._vocab, draft._vocab)
    if why:
        draft.close()
        target.close()
        raise ModelLoadError(path, f"it cannot draft for {target.path.name}: {why}")
    return ModelDrafter(draft, target.n_vocab, path.stat().st_size / max(1, target.path.stat().st_size))


def vocabulary_mismatch(target, draft) -> str | None:
    """Why tokens of vocabulary `draft` are not the same tokens in `target`, or None."""
    if llama_cpp.llama_vocab_type(target) != llama_cpp.llama_vocab_type(draft):
        return "its tokenizer is of another kind"
    n_target, n_draft = llama_cpp.llama_vocab_n_tokens(target), llama_cpp.llama_vocab_n_tokens(draft)
    if abs(n_target - n_draft) > VOCAB_SLACK:
        return f"its vocabulary has {n_draft} tokens, the model's {n_target}"
    for name, special in (("beginning", llama_cpp.llama_vocab_bos), ("end", llama_cpp.llama_vocab_eos)):
        if special(target) != special(draft):
            return f"its {name}-of-text token is another"
    text = llama_cpp.llama_vocab_get_text
    for token in range(min(n_target, n_draft)):
        if text(target, token) != text(draft, token):
            return f"token {token} differs"
    return None


class ModelDrafter:
    """Greedy continuations from the draft model, keeping its KV cache across steps (each call
    reads only the tokens the target added since the last one)."""

    def __init__(self, model, n_vocab: int, size_ratio: float):
        self.model = model
        self.n_vocab = n_vocab  # of the target: ids past it are never drafted
        self.size_ratio = size_ratio
        self.seconds_per_token: float | None = None

    def cost(self, target_step: float) -> float:
        """Seconds per drafted token: measured, or, before that, the target's step in proportion to
        the files' sizes (decoding reads every weight once per token)."""
        return self.seconds_per_token if self.seconds_per_token is not None else self.size_ratio * target_step

    def propose(self, tokens: list[int], k: int) -> list[int]:
        """Up to k tokens the draft model would write after `tokens` (prompt and answer so far)."""
        m = self.model
        if k <= 0 or len(tokens) + k > m.n_ctx:
            return []
        started = time.perf_counter()
        common = min(reusable_prefix(m._cached, tokens), len(tokens) - 1)  # the last token is read again for its logits
        if common < len(m._cached):
            if not llama_cpp.llama_memory_seq_rm(m._memory, 0, common, -1):
                llama_cpp.llama_memory_clear(m._memory, True)
                common = 0
            del m._cached[common:]
        m._make_room(len(tokens) + k)
        for _ in m._decode(tokens[common:]):
            pass
        if len(tokens) - common > CATCH_UP:  # reading a prompt is paid once an answer: not a drafted token's cost
            started = time.perf_counter()
        drafted: list[int] = []
        one = (llama_cpp.llama_token * 1)()
        batch = llama_cpp.llama_batch_get_one(one, 1)
        while True:
            token = int(m._logits_row(-1).argmax())
            if token >= self.n_vocab:
                break
            drafted.append(token)
            if len(drafted) == k:
                break
            one[0] = token
            if llama_cpp.llama_decode(m._ctx, batch) != 0:
                break
            m._cached.append(token)
        if drafted:
            seconds = (time.perf_counter() - started) / len(drafted)
            old = self.seconds_per_token
            self.seconds_per_token = seconds if old is None else 0.8 * old + 0.2 * seconds
        return drafted

    def close(self) -> None:
        self.model.close()
