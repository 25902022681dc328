"""Images through llama.cpp's multimodal library (libmtmd, bound by llama_cpp.mtmd_cpp): a vision
model is a GGUF plus its projector (mmproj) file.

A prompt with images is tokenized by mtmd into text tokens and image chunks. Each image chunk
stands in the token list as a run of one negative placeholder id (as many as the tokens the image
becomes), derived from the image's pixels: the prefix cache compares token lists, so a second
question about the same image reuses its cells and a different image does not. When a run is
reached, the projector encodes the image and its embeddings are decoded into the sequence.
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
from .runtime import log as llama_log

KEPT_IMAGES = 32  # image chunks held for prompts being read; each holds its preprocessed pixels
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
            if mtmd.mtmd_input_chunk_get_n_pos(chunk) != n_tokens:
                raise UsageError("this projector places image tokens by M-RoPE (Qwen2-VL's kind), which localllm "
                                 "does not support yet")
            name = (mtmd.mtmd_input_chunk_get_id(chunk) or b"") + f"#{i}".encode()
            placeholder = -1 - int.from_bytes(hashlib.sha256(name).digest()[:4], "little") % (2**31 - 1)
            self._keep(placeholder, mtmd.mtmd_input_chunk_copy(chunk))
            tokens.extend([placeholder] * n_tokens)
        return tokens

    def _keep(self, placeholder: int, chunk) -> None:
        with self._lock:
            old = self._chunks.pop(placeholder, None)
            if old is not None:
                mtmd.mtmd_input_chunk_free(old)
            self._chunks[placeholder] = chunk
            while len(self._chunks) > KEPT_IMAGES:
                mtmd.mtmd_input_chunk_free(self._chunks.popitem(last=False)[1])

    def evaluate(self, lctx, placeholder: int, n_past: int, seq: int, n_batch: int, logits_last: bool) -> None:
        """Encode the image and decode its embeddings into sequence `seq` from position `n_past`."""
        with self._lock:
            chunk = self._chunks.get(placeholder)
            if chunk is None:
                raise GenerationError(f"an image was dropped before it was read (more than {KEPT_IMAGES} images waiting)")
            self._chunks.move_to_end(placeholder)
            new_past = llama_cpp.llama_pos(0)
            status = mtmd.mtmd_helper_eval_chunk_single(self.ctx, lctx, chunk, n_past, seq, n_batch, logits_last,
                                                        ctypes.byref(new_past))
        if status != 0:
            raise GenerationError(f"llama.cpp failed to read an image (mtmd returned {status})")

    def close(self) -> None:
        with self._lock:
            for chunk in self._chunks.values():
                mtmd.mtmd_input_chunk_free(chunk)
            self._chunks.clear()
        if self.ctx:
            mtmd.mtmd_free(self.ctx)
            self.ctx = None
