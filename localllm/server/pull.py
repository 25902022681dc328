"""Ollama's /api/pull over localllm's own download (localllm.store: the planner's choice of file,
resumable, verified against the Hub's checksums before it is installed), its progress streamed as
Ollama's NDJSON lines: "pulling manifest", then "pulling FILE" with total and completed bytes (at
most every PROGRESS_EVERY_S), "verifying sha256 digest", "success"; a failure is an {"error": ...}
line, as Ollama sends it. A client that leaves does not stop the download: it finishes, or stops
where a next pull resumes it.
"""

from __future__ import annotations

import asyncio
import json
import time

from starlette.concurrency import run_in_threadpool
from starlette.responses import JSONResponse, Response, StreamingResponse

from ..errors import LocalLLMError
from ..printable import printable
from .ollama_schemas import ollama_name
from .schemas import ApiError

PROGRESS_EVERY_S = 0.25


async def reply(body: object) -> Response:
    from huggingface_hub import constants

    from ..backends import this_machine
    from ..store import prepare_pull, pull

    ref = ollama_name(body, "model")
    stream = body.get("stream", True) if isinstance(body, dict) else True
    if not isinstance(stream, bool):
        raise ApiError(400, "'stream' must be true or false", "stream")
    if constants.HF_HUB_OFFLINE:
        raise ApiError(503, "downloads are off on this server (HF_HUB_OFFLINE is set)", "model")
    prepared = await run_in_threadpool(prepare_pull, ref, this_machine())
    if not stream:
        await run_in_threadpool(pull, prepared)
        return JSONResponse({"status": "success"})
    loop, queue = asyncio.get_running_loop(), asyncio.Queue()
    last = [0.0]

    def progress(done: int, total: int) -> None:  # on the download's thread
        now = time.monotonic()
        if now - last[0] >= PROGRESS_EVERY_S or done >= total:
            last[0] = now
            loop.call_soon_threadsafe(queue.put_nowait, (done, total))

    name = printable(prepared.files[0].filename if len(prepared.files) == 1 else f"{len(prepared.files)} files")
    digest = f"sha256:{prepared.files[0].etag}" if len(prepared.files) == 1 else ""

    async def lines():
        yield {"status": "pulling manifest"}
        download = asyncio.ensure_future(run_in_threadpool(pull, prepared, progress))
        while not (download.done() and queue.empty()):
            waiting = asyncio.ensure_future(queue.get())
            await asyncio.wait({download, waiting}, return_when=asyncio.FIRST_COMPLETED)
            if not waiting.done():
                waiting.cancel()
                continue
            done, total = waiting.result()
            yield {"status": f"pulling {name}", "digest": digest, "total": total, "completed": done}
        try:
            download.result()
        except LocalLLMError as exc:
            yield {"error": printable(str(exc))}
            return
        yield {"status": "verifying sha256 digest"}
        yield {"status": "success"}

    async def ndjson():
        async for line in lines():
            yield json.dumps(line).encode() + b"\n"

    return StreamingResponse(ndjson(), media_type="application/x-ndjson")
