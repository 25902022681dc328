"""Images in a conversation: a message's content may be a list of parts, text and images, as in
OpenAI's API. Before the template renders the chat, each image part becomes the model's marker
in the text and its decoded picture is collected in order; the engine puts the image where its
marker is (localllm.backends.llamacpp.vision).

Image parts: {"type": "image", "image": bytes | path | Picture} (the Python API and Ollama's
`images`), or OpenAI's {"type": "image_url", "image_url": {"url": "data:image/...;base64,..."}}.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .. import images
from ..errors import UsageError

MAX_IMAGES = 16  # per request: each costs an encode and its tokens


def text_of(content) -> str:
    """A message's text, images left out."""
    if isinstance(content, str) or content is None:
        return content or ""
    return "".join(part.get("text", "") for part in content if isinstance(part, dict) and part.get("type") == "text")


def has_images(messages: Sequence[dict]) -> bool:
    return any(isinstance(m.get("content"), list) and any(_is_image(p) for p in m["content"]) for m in messages)


def split(messages: Sequence[dict], marker: str | None, model_name: str) -> tuple[list[dict], list[images.Picture]]:
    """(messages with string contents, the pictures in the order of their markers). `marker`: the
    model's (None: it cannot see images, which is refused by name, never dropped)."""
    if not has_images(messages):
        return [m if isinstance(m.get("content"), str) else {**m, "content": text_of(m.get("content"))} for m in messages], []
    if marker is None:
        raise UsageError(f"{model_name} cannot see images: it is a text-only model (a vision model is a GGUF with its "
                         "projector, an mmproj file: `localllm add MODEL --mmproj FILE`)")
    pictures: list[images.Picture] = []
    flat = []
    for i, message in enumerate(messages):
        content = message.get("content")
        if not isinstance(content, list):
            flat.append(message)
            continue
        text = []
        for part in content:
            if _is_image(part):
                if len(pictures) == MAX_IMAGES:
                    raise UsageError(f"at most {MAX_IMAGES} images per request")
                pictures.append(_picture(part, f"image {len(pictures) + 1}"))
                text.append(marker)
            else:
                text.append(part.get("text", "") if isinstance(part, dict) else "")
        flat.append({**message, "content": "".join(text)})
    return flat, pictures


def _is_image(part) -> bool:
    return isinstance(part, dict) and part.get("type") in ("image", "image_url")


def _picture(part: dict, name: str) -> images.Picture:
    if part["type"] == "image_url":
        url = part.get("image_url")
        url = url.get("url") if isinstance(url, dict) else url
        if not isinstance(url, str):
            raise UsageError(f"{name}: image_url needs a url")
        if url.startswith(("http://", "https://")):
            raise UsageError(f"{name}: images are not fetched from the network (localllm works offline): send it as "
                             "a data: URL, or start the server with --allow-image-urls")
        return images.from_data_url(url, name)
    image = part.get("image")
    if isinstance(image, images.Picture):
        return image
    if isinstance(image, (bytes, bytearray)):
        return images.decode(bytes(image), name)
    if isinstance(image, (str, Path)):
        return images.from_file(str(image))
    raise UsageError(f"{name}: an image part needs the image's bytes, a file path or base64 text")
