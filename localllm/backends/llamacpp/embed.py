"""Embeddings on the llama.cpp engine, in a context of the model's own beside generation's."""

from __future__ import annotations

from collections.abc import Sequence

import llama_cpp
import numpy as np

from ...errors import ContextOverflowError, GenerationError
from .params import context_params
from .runtime import log as llama_log


def embed(model, texts: Sequence[str]) -> tuple[list[list[float]], int]:
    """Pooled, L2-normalised embeddings, one text per llama_decode in a context of their own
    (it keeps every token's output, which generation's context does not)."""
    if model._embed_ctx is None:
        cparams = context_params(model._options, model.n_ctx, model.n_threads)
        cparams.embeddings = True
        cparams.n_seq_max, cparams.n_outputs_max, cparams.kv_unified = 1, 0, False
        cparams.n_ctx = model.n_ctx
        # Models without causal attention must see the whole input in one ubatch.
        cparams.n_batch = cparams.n_ubatch = min(model.n_ctx, model._options.n_batch)
        model._embed_ctx = llama_cpp.llama_init_from_model(model._model, cparams)
        if not model._embed_ctx:
            raise GenerationError(llama_log.first_error() or "llama.cpp could not create an embedding context")
    ctx, limit = model._embed_ctx, min(model.n_ctx, model._options.n_batch)
    vectors, total = [], 0
    n_embd = llama_cpp.llama_model_n_embd(model._model)
    for text in texts:
        tokens = model.tokenize(text)
        if len(tokens) > limit:
            raise ContextOverflowError(len(tokens), limit, model.n_ctx_train)
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
