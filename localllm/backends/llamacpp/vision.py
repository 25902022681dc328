"""Images through llama.cpp's multimodal library (libmtmd, bound by llama_cpp.mtmd_cpp): a vision
model is a GGUF plus its projector (mmproj) file.

A prompt with images is tokenized by mtmd into text tokens and image chunks. Each image chunk
stands in the token list as a run of one negative placeholder id (as many as the tokens the image
becomes), derived from the image's pixels: the prefix cache compares token lists, so a second
question about the same image reuses its cells and a different image does not. When a run is
reached, the projector encodes the image and its embeddings are decoded into the sequence.

An image placed by M-RoPE (Qwen2-VL, Qwen2.5-VL) takes as many cells as tokens but advances the
position by fewer (the larger side of its grid): after one, a sequence's positions run behind its
token count by the images' `shift`, and its tokens are decoded at positions given explicitly
(llama.cpp's own count, one past the last cell's, would place them too early).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import secrets
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import llama_cpp
from llama_cpp import mtmd_cpp as mtmd

from ...errors import GenerationError, ModelLoadError, UsageError
from ..base import stretches
from .runtime import log as llama_log

KEPT_IMAGES = 32  # image chunks held for prompts being read; each holds its preprocessed pixels
KEPT_SHAPES = 65536  # images whose position shift is remembered, for the prefixes that hold them
# clip's "load_hparams: model size: 0.46 MiB" and "CPU compute buffer size = 0.22 MiB" lines.
BUFFER_LINE = re.compile(r"(model size|compute buffer size)\s*[:=]\s*([0-9.]+) MiB")


class Vision:
    def __init__(self, model, projector: Path, n_threads: int, use_gpu: bool):
        params = mtmd.mtmd_context_params_default()
        params.use_gpu, params.n_threads, params.print_timings, params.warmup = use_gpu, n_threads, False, True
        # A marker no user text can hold: an image goes where the template put this.
        self.marker = f"<__localllm_image_{secrets.token_hex(8)}__>"
        self._marker = self.marker.encode()  # kept alive: the params point at it
        params.media_marker = self._marker
        # The projector's log goes where llama.cpp's does (stderr with --verbose), and its buffer
        # sizes are read from it: what the planner's projector estimate is checked against.
        mtmd.mtmd_log_set(llama_log._callback, None)
        mtmd.mtmd_helper_log_set(llama_log._callback, None)
        llama_log.capture = captured = []
        try:
            self.ctx = mtmd.mtmd_init_from_file(os.fsencode(projector), model._model, params)
        finally:
            llama_log.capture = None
        self.buffers = {name: float(mib) * 2**20 for name, mib in BUFFER_LINE.findall("".join(captured))}
        if not self.ctx:
            raise ModelLoadError(projector, "llama.cpp could not load it as a projector for this model (a projector "
                                            "is made for one model: its output must match the model's embeddings)")
        if not mtmd.mtmd_support_vision(self.ctx):
            self.close()
            raise ModelLoadError(projector, "this projector takes no images")
        self.projector = projector
        self._chunks: OrderedDict[int, object] = OrderedDict()
        self._shifts: OrderedDict[int, int] = OrderedDict()  # placeholder -> positions minus tokens
        # Prompts are tokenized off the engine thread (the server's request handlers) while the
        # engine reads images: the chunks are kept and freed under this lock, and an image is read
        # holding it, so none is freed while llama.cpp reads it.
        self._lock = threading.Lock()

    def tokenize(self, prompt: str, pictures: Sequence) -> list[int]:
        """The prompt's tokens, each image as a run of its placeholder id."""
        bitmaps = (mtmd.mtmd_bitmap_p_ctypes * len(pictures))()
        for i, picture in enumerate(pictures):
            pixels = (ctypes.c_uint8 * len(picture.rgb)).from_buffer_copy(picture.rgb)
            bitmaps[i] = mtmd.mtmd_bitmap_init(picture.width, picture.height, pixels)
            mtmd.mtmd_bitmap_set_id(bitmaps[i], picture.digest.encode())
        data = prompt.encode()
        text = mtmd.mtmd_input_text(data, len(data), True, True)
        chunks = mtmd.mtmd_input_chunks_init()
        try:
            status = mtmd.mtmd_tokenize(self.ctx, chunks, ctypes.byref(text), bitmaps, len(pictures))
            if status != 0:
                raise UsageError(f"the images could not be prepared for this model (mtmd_tokenize returned {status})")
            return self._tokens(chunks)
        finally:
            mtmd.mtmd_input_chunks_free(chunks)
            for bitmap in bitmaps:
                mtmd.mtmd_bitmap_free(bitmap)

    def _tokens(self, chunks) -> list[int]:
        tokens: list[int] = []
        for i in range(mtmd.mtmd_input_chunks_size(chunks)):
            chunk = mtmd.mtmd_input_chunks_get(chunks, i)
            kind = mtmd.mtmd_input_chunk_get_type(chunk)
            if kind == mtmd.MTMD_INPUT_CHUNK_TYPE_TEXT:
                n = ctypes.c_size_t(0)
                ids = mtmd.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(n))
                tokens.extend(ids[: n.value])
                continue
            if kind != mtmd.MTMD_INPUT_CHUNK_TYPE_IMAGE:
                raise UsageError("this projector reads sound, not images, which localllm does not take")
            n_tokens = mtmd.mtmd_input_chunk_get_n_tokens(chunk)
            name = (mtmd.mtmd_input_chunk_get_id(chunk) or b"") + f"#{i}".encode()
            placeholder = -1 - int.from_bytes(hashlib.sha256(name).digest()[:4], "little") % (2**31 - 1)
            self._keep(placeholder, mtmd.mtmd_input_chunk_copy(chunk), mtmd.mtmd_input_chunk_get_n_pos(chunk) - n_tokens)
            tokens.extend([placeholder] * n_tokens)
        return tokens

    def _keep(self, placeholder: int, chunk, shift: int) -> None:
        with self._lock:
            self._shifts[placeholder] = shift
            self._shifts.move_to_end(placeholder)
            while len(self._shifts) > KEPT_SHAPES:
                self._shifts.popitem(last=False)
            old = self._chunks.pop(placeholder, None)
            if old is not None:
                mtmd.mtmd_input_chunk_free(old)
            self._chunks[placeholder] = chunk
            while len(self._chunks) > KEPT_IMAGES:
                mtmd.mtmd_input_chunk_free(self._chunks.popitem(last=False)[1])

    def shift(self, tokens: Sequence[int], end: int) -> int:
        """How far the position after tokens[:end] runs behind `end` (0 without M-RoPE images)."""
        if min(tokens[:end], default=0) >= 0:
            return 0
        with self._lock:
            return sum(self._shifts.get(tokens[first], 0) for first, last in stretches(tokens[:end])
                       if tokens[first] < 0)

    def evaluate(self, lctx, placeholder: int, n_past: int, seq: int, n_batch: int, logits_last: bool) -> int:
        """Encode the image and decode its embeddings into sequence `seq` from position `n_past`;
        the image's shift (positions it takes minus tokens)."""
        with self._lock:
            chunk = self._chunks.get(placeholder)
            if chunk is None:
                raise GenerationError(f"an image was dropped before it was read (more than {KEPT_IMAGES} images waiting)")
            self._chunks.move_to_end(placeholder)
            new_past = llama_cpp.llama_pos(0)
            status = mtmd.mtmd_helper_eval_chunk_single(self.ctx, lctx, chunk, n_past, seq, n_batch, logits_last,
                                                        ctypes.byref(new_past))
            n_tokens = mtmd.mtmd_input_chunk_get_n_tokens(chunk)
        if status != 0:
            raise GenerationError(f"llama.cpp failed to read an image (mtmd returned {status})")
        return new_past.value - n_past - n_tokens

    def close(self) -> None:
        with self._lock:
            for chunk in self._chunks.values():
                mtmd.mtmd_input_chunk_free(chunk)
            self._chunks.clear()
        if self.ctx:
            mtmd.mtmd_free(self.ctx)
            self.ctx = None


def open_vision(model, options) -> Vision | None:
    """The projector `options` name, opened for `model` (closed, with the error, when it fails)."""
    if not options.projector:
        return None
    try:
        return Vision(model, Path(options.projector), model.n_threads, model.n_gpu_layers > 0)
    except ModelLoadError:
        model.close()
        raise
