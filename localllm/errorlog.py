"""A private log of unexpected errors, so an app can say one line and keep running.

Tracebacks are written without local variables (Textual's crash screen prints locals, which held
request headers and the Hub token) and with anything token-like redacted, to
``$LOCALLLM_HOME/logs/errors.log``: a 0600 file in a 0700 folder, kept under about 1 MB.
"""

from __future__ import annotations

import os
import re
import time
import traceback
from pathlib import Path

from .config import home, private_dir

MAX_BYTES = 2**20
_TOKEN_PATTERNS = (
    re.compile(r"(?i)(authorization['\"]?\s*[:=]\s*['\"]?)(?:bearer\s+)?[^\s'\",}]+"),
    re.compile(r"\bhf_[A-Za-z0-9]{8,}"),
)


def redact(text: str) -> str:
    """Text with the Hub token and anything shaped like a credential replaced by ***."""
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        if (secret := os.environ.get(name)) and len(secret) >= 4:
            text = text.replace(secret, "***")
    text = _TOKEN_PATTERNS[0].sub(lambda m: m.group(1) + "***", text)
    return _TOKEN_PATTERNS[1].sub("hf_***", text)


def log_path() -> Path:
    return home() / "logs" / "errors.log"


def log_exception(error: BaseException, where: str) -> Path | None:
    """Append the traceback (no locals, secrets redacted); None if it could not be written."""
    path = log_path()
    text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    entry = f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {where}\n{redact(text)}\n"
    try:
        private_dir(path.parent)
        if path.exists() and path.stat().st_size > MAX_BYTES:
            os.replace(path, path.with_suffix(".log.1"))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "a", encoding="utf-8") as f:
            f.write(entry)
    except OSError:
        return None
    return path
