"""Images named by http(s) URLs in OpenAI's image_url parts: fetched only when the server was started
with `--allow-image-urls` (localllm is offline-first, and a fetch is a request made on a client's
behalf), within bounds: 20 MiB, 20 seconds, 3 redirects, http and https only."""

from __future__ import annotations

from ..images import MAX_BYTES
from ..printable import printable
from .schemas import ApiError

TIMEOUT_S = 20
MAX_REDIRECTS = 3


def fetch_images(messages: list[dict]) -> list[dict]:
    """The messages with each http(s) image_url part replaced by the image's bytes."""
    fetched = []
    for message in messages:
        content = message.get("content")
        if not isinstance(content, list):
            fetched.append(message)
            continue
        parts = []
        for part in content:
            url = (part.get("image_url") or {}).get("url") if part.get("type") == "image_url" else None
            if isinstance(url, str) and url.startswith(("http://", "https://")):
                part = {"type": "image", "image": _fetch(url)}
            parts.append(part)
        fetched.append({**message, "content": parts})
    return fetched


def _fetch(url: str) -> bytes:
    import httpx

    shown = printable(url)[:120]
    try:
        with httpx.Client(follow_redirects=True, max_redirects=MAX_REDIRECTS, timeout=TIMEOUT_S) as client, \
                client.stream("GET", url) as response:
            if response.status_code != 200:
                raise ApiError(400, f"the image at {shown} could not be fetched: HTTP {response.status_code}", "messages")
            length = response.headers.get("content-length")
            if length is not None and length.isdigit() and int(length) > MAX_BYTES:
                raise ApiError(400, f"the image at {shown} is larger than {MAX_BYTES // 2**20} MiB", "messages")
            data = bytearray()
            for chunk in response.iter_bytes():
                data += chunk
                if len(data) > MAX_BYTES:
                    raise ApiError(400, f"the image at {shown} is larger than {MAX_BYTES // 2**20} MiB", "messages")
            return bytes(data)
    except httpx.HTTPError as exc:
        raise ApiError(400, f"the image at {shown} could not be fetched ({type(exc).__name__})", "messages") from None
