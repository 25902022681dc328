"""Where localllm keeps its state, and the user's settings file.

``LOCALLLM_HOME`` relocates everything (tests use it to isolate themselves). Model weights are
not kept here: they live in the Hugging Face cache, shared with other tools.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from . import safejson
from .errors import LocalLLMError

CONFIG_FILE = "config.json"


def home() -> Path:
    if env := os.environ.get("LOCALLLM_HOME"):
        return Path(env).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "localllm"


def cache_dir() -> Path:
    """Derived data that can be rebuilt, e.g. parsed GGUF metadata (LOCALLLM_CACHE to move it)."""
    if env := os.environ.get("LOCALLLM_CACHE"):
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "localllm"


def private_dir(path: Path) -> Path:
    """A folder of ours that holds user text: created, or narrowed, to its owner alone (0700)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


def config_path() -> Path:
    return home() / CONFIG_FILE


def load_config() -> dict:
    path = config_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except UnicodeDecodeError as exc:
        raise LocalLLMError(f"settings file {path} is not UTF-8 text (byte {exc.start}); fix or delete it") from None
    except OSError as exc:
        raise LocalLLMError(f"cannot read settings {path}: {exc.strerror}") from exc
    try:
        data = safejson.loads(text)
    except ValueError as exc:
        raise LocalLLMError(f"settings file {path} is not valid JSON ({exc}); fix or delete it") from exc
    if not isinstance(data, dict):
        raise LocalLLMError(f"settings file {path} must hold a JSON object; fix or delete it")
    _check_types(data, SCHEMA, path, "")
    return data


# The type of every setting localllm reads; a value of another type is named, not crashed on.
SCHEMA: dict = {
    "chat": {"system": str, "temperature": (int, float), "top_p": (int, float), "n_ctx": (int, type(None))},
    "model_dirs": [str],
    "added_models": [{"name": str, "path": str, "size": int, "sha256": str}],
    "default_model": str,
    "last_model": str,
    "amx": str,
    "prompt_cache_bytes": int,
    # The draft model speculation uses with a model when --draft is not given (model: its
    # reference as given, or its file's name).
    "drafts": [{"model": str, "draft": str}],
}
_TYPE_NAMES = {str: "text", int: "a whole number", float: "a number", type(None): "null", dict: "an object", list: "a list"}


def _check_types(value, schema, path: Path, where: str) -> None:
    if isinstance(schema, dict):
        if not isinstance(value, dict):
            raise _wrong(path, where, "an object", value)
        for key, sub in schema.items():
            if key in value:
                _check_types(value[key], sub, path, f"{where}.{key}" if where else key)
    elif isinstance(schema, list):
        if not isinstance(value, list):
            raise _wrong(path, where, "a list", value)
        for i, item in enumerate(value):
            _check_types(item, schema[0], path, f"{where}[{i}]")
    else:
        kinds = schema if isinstance(schema, tuple) else (schema,)
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise _wrong(path, where, " or ".join(_TYPE_NAMES[k] for k in kinds), value)


def _wrong(path: Path, where: str, expected: str, value) -> LocalLLMError:
    shown = json.dumps(value)[:60]
    return LocalLLMError(f"settings file {path}: \"{where}\" must be {expected}, not {shown}; fix or delete it")


def save_config(data: dict) -> None:
    """Replace the settings file atomically: a crash leaves the old file or the new, never half of one."""
    path = config_path()
    try:
        private_dir(path.parent)
        fd, tmp = tempfile.mkstemp(prefix=".config-", dir=path.parent)
    except OSError as exc:
        raise LocalLLMError(f"cannot save settings in {path.parent}: {exc.strerror or exc} (LOCALLLM_HOME moves it)") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
