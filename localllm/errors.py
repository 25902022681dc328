"""Every error localllm raises on purpose. One root; the CLI turns each into one line and an exit code.

Exit codes: EXIT_CODES below is the one table. Each error class carries its code
(``LocalLLMError.exit_code``); the README's table and `localllm --help` are checked against it
(tests/test_cli_startup.py).
"""

from __future__ import annotations

from pathlib import Path

EXIT_CRASH = 9
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143
EXIT_BROKEN_PIPE = 141
EXIT_CODES = {
    0: "success",
    1: "unexpected error (LOCALLLM_DEBUG=1 shows the traceback), or an unreadable settings file",
    2: "usage error: bad option value, empty prompt, stdin that is not UTF-8",
    3: "model not found",
    4: "model failed to load (not GGUF, truncated, out of memory, ...), or an RPC worker cannot be used",
    5: "the prompt does not fit the context window",
    6: "generation failed",
    7: "download failed (no network, refused access, stalled, failed verification)",
    8: "not enough disk space for a download (nothing was written)",
    EXIT_CRASH: "llama.cpp crashed (illegal instruction, memory fault, abort): one line names the likely cause",
    10: "a model file's bytes are not the recorded ones (verify, add DIR)",
    11: "doctor found something broken",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C)",
    EXIT_BROKEN_PIPE: "stdout was closed early (e.g. | head)",
    EXIT_TERMINATED: "stopped by SIGTERM (serve, chat)",
}


class LocalLLMError(Exception):
    """Root of every error localllm raises deliberately."""

    exit_code = 1


class UsageError(LocalLLMError, ValueError):
    """The user asked for something that cannot be done as asked (bad option, empty prompt...)."""

    exit_code = 2


class ModelNotFoundError(LocalLLMError, FileNotFoundError):
    """A model reference did not resolve to a file on disk."""

    exit_code = 3

    def __init__(self, ref: str, hint: str = "", message: str | None = None):
        self.ref = ref
        self.hint = hint
        if message is None:
            message = f"model not found: {ref}" + (f" ({hint})" if hint else "")
        super().__init__(message)


class ModelLoadError(LocalLLMError):
    """A model file exists but cannot be loaded: not GGUF, truncated, unsupported, out of memory."""

    exit_code = 4

    def __init__(self, path: Path | str, reason: str):
        self.path = Path(path)
        self.reason = reason
        # Said as given: a URL through Path loses a slash ("http:/host").
        super().__init__(f"cannot load {path}: {reason}")


class ContextOverflowError(LocalLLMError):
    """The prompt alone does not fit the context window."""

    exit_code = 5

    def __init__(self, prompt_tokens: int, n_ctx: int, n_ctx_train: int):
        self.prompt_tokens = prompt_tokens
        self.n_ctx = n_ctx
        self.n_ctx_train = n_ctx_train
        if n_ctx < n_ctx_train:
            hint = f"raise it with --ctx, up to the model's trained {n_ctx_train}, or shorten the prompt"
        else:
            hint = "the model cannot take more; shorten the prompt"
        super().__init__(
            f"the prompt is {prompt_tokens} tokens but the context window is {n_ctx} "
            f"and must leave room for at least one token of answer: {hint}"
        )


class GenerationError(LocalLLMError):
    """llama.cpp failed while evaluating tokens."""

    exit_code = 6


class StoreError(LocalLLMError):
    """The chat store could not save: the disk is full, or the database failed."""


class CatalogError(LocalLLMError):
    """A catalog file (shipped or the user's) breaks the schema."""

    exit_code = 2

    def __init__(self, origin: str, reason: str):
        self.origin = origin
        self.reason = reason
        super().__init__(f"catalog {origin}: {reason}")


class DownloadError(LocalLLMError):
    """A download could not finish: no network, refused access, stalled, or the bytes failed verification."""

    exit_code = 7


class DiskSpaceError(LocalLLMError):
    """Not enough free disk for a download; raised before any byte is written."""

    exit_code = 8

    def __init__(self, needed: int, free: int, where: Path):
        self.needed, self.free, self.where = needed, free, where
        super().__init__(
            f"not enough disk space in {where}: the download needs {needed / 1e9:.2f} GB, "
            f"{free / 1e9:.2f} GB is free (set HF_HOME to put the Hugging Face cache elsewhere)"
        )
