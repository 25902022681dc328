"""llama.cpp's single-sequence decode loop with drafted tokens (localllm.generation.speculation says
what is drafted, when, and why greedy answers only).

Each step feeds the picked token (with any the grammar forces after it) and the drafts in one batch,
with logits for the step's last token and every draft; the drafts the model agrees with are kept
(their cells are already computed), and the cells of those after the first it does not are removed
from the KV cache. A step of one token and its drafts is timed for the cost curve the controller reads.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Iterator

import llama_cpp

from ... import safejson
from ...config import cache_dir
from ...errors import GenerationError
from ...events import Event, Token
from ...generation.sequence import Answer
from ...generation.speculation import CostCurve, Speculation
from .state_cache import key

CURVES_FILE = "speculation-costs.json"  # in the cache folder, beside the AMX verdicts
MAX_CURVES = 32  # models x settings remembered; the oldest go first
MAX_SIZES = 64  # batch sizes per curve: MAX_DRAFT + 1 per sequence, and a few more


def curve_key(model) -> str:
    """What batch costs depend on: the model file, the threads, the placement, the build."""
    options = model._options
    return key(model.path, {"what": "speculation", "threads": model._max_threads, "gpu_layers": model.n_gpu_layers,
                            "flash_attn": options.flash_attn, "kv": options.kv_type or "f16", "n_seq": options.n_seq,
                            "llama_cpp": llama_cpp.__version__})


def load_curve(key: str) -> CostCurve:
    """The batch costs earlier loads with this key (model file, threads, placement, build)
    measured, so that `auto` starts where they left off; empty when there are none."""
    curve = CostCurve()
    entry = _read_curves().get(key)
    if isinstance(entry, dict):
        for size, seconds in list(entry.items())[:MAX_SIZES]:
            if size.isdigit() and 0 < int(size) <= 4096 and isinstance(seconds, (int, float)) and 0 < seconds < 60:
                curve.seconds[int(size)] = float(seconds)
    return curve


def save_curve(key: str, curve: CostCurve) -> None:
    """Keep what this load measured (a read-only cache folder only means learning again)."""
    if not curve.seconds:
        return
    curves = _read_curves()
    curves.pop(key, None)
    curves[key] = {str(size): seconds for size, seconds in sorted(curve.seconds.items())[:MAX_SIZES]}
    folder = cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".speculation-", dir=folder)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(dict(list(curves.items())[-MAX_CURVES:]), f)
        os.replace(tmp, folder / CURVES_FILE)
    except OSError:
        pass


def _read_curves() -> dict:
    try:
        with open(cache_dir() / CURVES_FILE, encoding="utf-8") as f:
            data = safejson.loads(f.read(1 << 20))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


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
