"""What a caller may choose about loading a model and sampling from it. Validated once, here."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from .errors import UsageError

# llama-cpp-python defaults to a 512-token window, far too small for chat; 4096 suits most
# prompts and costs little memory on small models. The planner (issue 3) will refine this.
DEFAULT_CTX = 4096
KV_TYPES = ("f16", "q8_0", "q4_0")
# llama.cpp rounds a context up to a multiple of 256 tokens, so a smaller one cannot be had as set.
MIN_CTX_TOKENS = 256
MAX_CTX_TOKENS = 2**31 - 1  # llama.cpp's n_ctx is a C uint32 and wraps above, then aborts
MAX_SEQUENCES = 256  # llama.cpp's LLAMA_MAX_SEQ
MAX_THREADS = 512  # ggml's GGML_MAX_N_THREADS; more aborts inside llama.cpp
MAX_STOPS, MAX_STOP_CHARS = 16, 256
ENGINES = ("llamacpp", "transformers")
REASONING_EFFORTS = ("low", "medium", "high")  # gpt-oss's template variable reasoning_effort
REMOTE_ENGINES = ("vllm",)  # served through another process: `serve --engine vllm`
DTYPES = ("auto", "bfloat16", "float16", "float32")
# How flash attention is named on the command line and in --json, against LoadOptions.flash_attn.
FLASH_ATTN = {"auto": None, "on": True, "off": False}


def flash_attn_name(value: bool | None) -> str:
    return next(name for name, setting in FLASH_ATTN.items() if setting is value)


@dataclass(frozen=True)
class LoadOptions:
    """How to load a model.

    n_ctx: context window in tokens; None picks min(trained context, DEFAULT_CTX), 0 the trained
    context. n_gpu_layers: layers to offload, -1 for all, None for as many as fit. n_threads:
    None for the machine's default (physical cores, fewer when it is busy). margin: bytes to
    keep free per device (None: 5%, at least 128 MiB); load_anyway: load even when the
    planner predicts it will not fit.
    """

    n_ctx: int | None = None
    n_threads: int | None = None
    n_gpu_layers: int | None = None
    n_batch: int = 2048
    n_ubatch: int = 512
    flash_attn: bool | None = None
    kv_type: str | None = None  # None: f16, or q8_0 when the planner finds memory tight
    # llama.cpp's default gives sliding-window layers a full-context cache; they need only the
    # window (Gemma 3 at 32k: 480 MiB -> 15 MiB).
    swa_full: bool = False
    tensor_split: tuple[float, ...] = ()
    margin: int | None = None
    load_anyway: bool = False
    # Open the context for this many tokens and grow it to n_ctx only when a prompt or answer
    # needs more (0: the whole window at once). Setting up a KV cache costs time in proportion
    # to its size: 62 ms for SmolLM2's 4096 tokens here, against 11-19 ms for 1024.
    initial_ctx: int = 0
    # Sequences generated together in one context (`serve --parallel`). Each gets the whole
    # n_ctx window: the KV cache holds n_ctx x n_seq cells, shared, so a common prefix counts once.
    n_seq: int = 1
    # Which backend runs the model: None chooses from its format (a .gguf file: llama.cpp; a
    # safetensors folder: transformers). dtype is the transformers engine's: None or "auto" is the
    # checkpoint's half precision where the device computes in it natively, else float32.
    engine: str | None = None
    dtype: str | None = None
    # The transformers engine's placement, module -> device (localllm.checkpoint_plan): set by its planner.
    device_map: tuple[tuple[str, str | int], ...] = ()
    # llama.cpp RPC workers (HOST:PORT) whose devices take layers as GPUs do (localllm.rpc).
    rpc: tuple[str, ...] = ()
    verbose: bool = False

    def __post_init__(self) -> None:
        if self.n_ctx is not None and self.n_ctx != 0 and not MIN_CTX_TOKENS <= self.n_ctx <= MAX_CTX_TOKENS:
            raise UsageError(f"context size must be 0 (the model's trained context) or {MIN_CTX_TOKENS} to "
                             f"{MAX_CTX_TOKENS} tokens, not {self.n_ctx}")
        if self.n_threads is not None and not 1 <= self.n_threads <= MAX_THREADS:
            raise UsageError(f"thread count must be 1 to {MAX_THREADS}, not {self.n_threads}")
        if self.flash_attn not in (None, True, False):
            raise UsageError(f"flash attention must be None (auto), True or False, not {self.flash_attn!r}")
        if self.n_gpu_layers is not None and self.n_gpu_layers < -1:
            raise UsageError(f"GPU layers must be -1 (all), 0 (none) or a positive count, not {self.n_gpu_layers}")
        if self.initial_ctx < 0:
            raise UsageError(f"initial context size must be 0 (the whole window) or positive, not {self.initial_ctx}")
        if self.engine not in (None, *ENGINES, *REMOTE_ENGINES):
            raise UsageError(f"engine must be one of {', '.join(ENGINES + REMOTE_ENGINES)}, not {self.engine!r}")
        if self.dtype not in (None, *DTYPES):
            raise UsageError(f"dtype must be one of {', '.join(DTYPES)}, not {self.dtype!r}")
        if not 1 <= self.n_seq <= MAX_SEQUENCES:
            raise UsageError(f"parallel sequences must be 1 to {MAX_SEQUENCES}, not {self.n_seq}")
        if self.n_seq > 1 and self.initial_ctx:
            raise UsageError("a context for several sequences cannot start small and grow")
        if self.n_batch < 1 or self.n_ubatch < 1:
            raise UsageError("batch sizes must be at least 1")
        if self.kv_type is not None and self.kv_type not in KV_TYPES:
            raise UsageError(f"KV cache type must be one of {', '.join(KV_TYPES)}, not {self.kv_type!r}")
        if self.kv_type not in (None, "f16") and self.flash_attn is False:
            raise UsageError("a quantized KV cache needs flash attention")
        if any(share < 0 for share in self.tensor_split):
            raise UsageError("tensor split shares must not be negative")


@dataclass(frozen=True)
class SamplingOptions:
    """How to pick each next token. temperature 0 is greedy and fully deterministic.

    max_tokens None generates until the model ends its turn or the context is full.
    seed None draws a random seed, which is reported so a run can be repeated.
    """

    max_tokens: int | None = None
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    seed: int | None = None
    ignore_eos: bool = False
    # Generation ends before the first of these texts, which is never part of the answer.
    stop: tuple[str, ...] = ()
    # The answer must follow this llguidance grammar (localllm.constraints: json_grammar for a
    # JSON Schema, text_grammar for GBNF or Lark), on every backend.
    grammar: str | None = None

    def __post_init__(self) -> None:
        for name in ("temperature", "top_p", "min_p", "repeat_penalty"):
            if not math.isfinite(getattr(self, name)):
                raise UsageError(f"{name.replace('_', '-')} must be a finite number, not {getattr(self, name)}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise UsageError(f"max tokens must be at least 1, not {self.max_tokens}")
        if self.temperature < 0:
            raise UsageError(f"temperature must be 0 or more, not {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise UsageError(f"top-p must be in (0, 1], not {self.top_p}")
        if self.top_k < 0:
            raise UsageError(f"top-k must be 0 (off) or positive, not {self.top_k}")
        if not 0 <= self.min_p < 1:
            raise UsageError(f"min-p must be in [0, 1), not {self.min_p}")
        if self.repeat_penalty <= 0:
            raise UsageError(f"repeat penalty must be positive, not {self.repeat_penalty}")
        if len(self.stop) > MAX_STOPS or any(not s or len(s) > MAX_STOP_CHARS for s in self.stop):
            raise UsageError(f"stop strings: at most {MAX_STOPS}, each 1 to {MAX_STOP_CHARS} characters")
        if self.seed is not None and not 0 <= self.seed < 2**32 - 1:
            raise UsageError(f"seed must be in [0, 2^32 - 2], not {self.seed}")


# What `serve` answers besides loopback (localllm.server.guard), comma-separated, as its options.
ALLOWED_HOSTS_ENV = "LOCALLLM_ALLOWED_HOSTS"
ORIGINS_ENV = "LOCALLLM_ORIGINS"

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")


def parse_duration(text: str, what: str = "--keep-alive") -> float | None:
    """Seconds, Ollama's way: "5m", "90s", "1h30m", a bare number of seconds; a negative one keeps
    models loaded for ever (None)."""
    text = text.strip().lower()
    if re.fullmatch(r"-\d+(\.\d+)?[smh]?", text):
        return None
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return _finite_duration(float(text))
    if not text or len(text) > 100 or not re.fullmatch(rf"(?:{_DURATION.pattern})+", text):
        raise UsageError(f"{what} takes a duration such as 5m, 30s or 1h (or -1: for ever), not {text[:40]!r}")
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return _finite_duration(sum(float(number) * scale[unit] for number, unit in _DURATION.findall(text)))


# Longer than this is "for ever": waits past about 9.2e9 s overflow (queue.get, threading), and a
# keep-alive of decades means the same thing as one of centuries.
MAX_DURATION_S = 10 * 365 * 86400


def _finite_duration(seconds: float) -> float | None:
    return seconds if seconds <= MAX_DURATION_S else None


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", "'": "'", '"': '"', "0": "\0"}


def unescape(text: str) -> str:
    """The usual backslash escapes, as llama.cpp's CLI reads its prompt and stop options: a shell
    passes `--stop "\\n\\n"` as a backslash and an n. An unknown escape is kept as written."""
    out, i = [], 0
    while i < len(text):
        char = text[i]
        if char == "\\" and i + 1 < len(text):
            nxt = text[i + 1]
            if nxt in _ESCAPES:
                out.append(_ESCAPES[nxt])
                i += 2
                continue
            if nxt == "x" and re.fullmatch(r"[0-9a-fA-F]{2}", text[i + 2:i + 4]):
                out.append(chr(int(text[i + 2:i + 4], 16)))
                i += 4
                continue
        out.append(char)
        i += 1
    return "".join(out)
