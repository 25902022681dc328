"""What a caller may choose about loading a model and sampling from it. Validated once, here."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import UsageError

# llama-cpp-python defaults to a 512-token window, far too small for chat; 4096 suits most
# prompts and costs little memory on small models. The planner (issue 3) will refine this.
DEFAULT_CTX = 4096
KV_TYPES = ("f16", "q8_0", "q4_0")
SPECULATION = ("off", "ngram", "draft", "auto")
# llama.cpp rounds a context up to a multiple of 256 tokens, so a smaller one cannot be had as set.
MIN_CTX_TOKENS = 256
MAX_CTX_TOKENS = 2**31 - 1  # llama.cpp's n_ctx is a C uint32 and wraps above, then aborts
MAX_SEQUENCES = 256  # llama.cpp's LLAMA_MAX_SEQ
MAX_THREADS = 512  # ggml's GGML_MAX_N_THREADS; more aborts inside llama.cpp
MAX_STOPS, MAX_STOP_CHARS = 16, 256
PENALTY_WINDOW = 64  # tokens the penalties look back over, as llama.cpp's penalties sampler
ENGINES = ("llamacpp", "transformers")
REASONING_EFFORTS = ("low", "medium", "high")  # gpt-oss's template variable reasoning_effort
REMOTE_ENGINES = ("vllm",)  # served through another process: `serve --engine vllm`
DTYPES = ("auto", "bfloat16", "float16", "float32")
# How flash attention is named on the command line and in --json, against LoadOptions.flash_attn.
FLASH_ATTN = {"auto": None, "on": True, "off": False}


def flash_attn_name(value: bool | None) -> str:
    return next(name for name, setting in FLASH_ATTN.items() if setting is value)


@dataclass(frozen=True)
class Field:
    """One option a caller may set, declared once: the library's check, the CLI flag, the HTTP
    APIs' names and the chat's settings form are all built from it, so ranges cannot drift."""

    name: str  # the SamplingOptions or LoadOptions attribute
    kind: type  # int, float or str
    label: str  # how messages name it
    rule: str  # the valid values in words, for messages
    valid: Callable[[Any], bool]
    help: str
    flag: str = ""  # the CLI's long flag; "" for --name-with-dashes
    short: str | None = None
    openai: tuple[str, ...] = ()  # names in an OpenAI request body, the first preferred
    ollama: tuple[str, ...] = ()  # names in an Ollama request's options
    choices: tuple[str, ...] = ()

    @property
    def cli(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    def problem(self, value: Any, shown: str | None = None) -> str | None:
        """Why `value` is not allowed (`shown`: how to quote what the user wrote), or None."""
        if value is None:
            return None
        shown = shown if shown is not None else repr(value) if isinstance(value, str) else str(value)
        if self.kind is float and not math.isfinite(value):
            return f"{self.label} must be a finite number, not {shown}"
        return None if self.valid(value) else f"{self.label} must be {self.rule}, not {shown}"

    def check(self, value: Any) -> None:
        if (problem := self.problem(value)) is not None:
            raise UsageError(problem)


def _choice(name: str, label: str, choices: tuple[str, ...], help: str, **more) -> Field:
    return Field(name, str, label, f"one of {', '.join(choices)}", choices.__contains__, help, choices=choices, **more)


SAMPLING_FIELDS = (
    Field("max_tokens", int, "max tokens", "at least 1", lambda v: v >= 1, "Stop after this many tokens."),
    Field("temperature", float, "temperature", "0 or more", lambda v: v >= 0,
          "0 picks the likeliest token every time: the same answer on every run.", short="-t",
          openai=("temperature",), ollama=("temperature",)),
    Field("top_p", float, "top-p", "above 0 and at most 1", lambda v: 0 < v <= 1, "Nucleus sampling threshold.",
          openai=("top_p",), ollama=("top_p",)),
    Field("top_k", int, "top-k", "0 (off) or positive", lambda v: v >= 0,
          "Sample among the k likeliest tokens (0: all).", openai=("top_k",), ollama=("top_k",)),
    Field("min_p", float, "min-p", "at least 0 and below 1", lambda v: 0 <= v < 1,
          "Drop tokens less likely than this fraction of the top one.", openai=("min_p",), ollama=("min_p",)),
    # vLLM calls it repetition_penalty.
    Field("repeat_penalty", float, "repeat-penalty", "above 0", lambda v: v > 0,
          f"Divide the scores of tokens among the last {PENALTY_WINDOW} (1: off).",
          openai=("repeat_penalty", "repetition_penalty"), ollama=("repeat_penalty",)),
    Field("presence_penalty", float, "presence-penalty", "from -2 to 2", lambda v: -2 <= v <= 2,
          f"Lower the score of each token found among the last {PENALTY_WINDOW} by this (0: off).",
          openai=("presence_penalty",), ollama=("presence_penalty",)),
    Field("frequency_penalty", float, "frequency-penalty", "from -2 to 2", lambda v: -2 <= v <= 2,
          f"Lower each token's score by this times its count among the last {PENALTY_WINDOW} (0: off).",
          openai=("frequency_penalty",), ollama=("frequency_penalty",)),
    Field("seed", int, "seed", "from 0 to 2^32 - 2", lambda v: 0 <= v < 2**32 - 1,
          "Random seed, for answers that repeat.", openai=("seed",), ollama=("seed",)),
)

LOAD_FIELDS = (
    Field("n_ctx", int, "context size", f"0 (the model's trained context) or {MIN_CTX_TOKENS} to {MAX_CTX_TOKENS} tokens",
          lambda v: v == 0 or MIN_CTX_TOKENS <= v <= MAX_CTX_TOKENS, "Context window in tokens; 0 for the model's trained length.",
          flag="--ctx"),
    Field("n_threads", int, "thread count", f"1 to {MAX_THREADS}", lambda v: 1 <= v <= MAX_THREADS,
          "CPU threads, fixed (without it the count is chosen again while decoding when other processes take cores).",
          flag="--threads"),
    Field("n_gpu_layers", int, "GPU layers", "-1 (all), 0 (none) or a positive count", lambda v: v >= -1,
          "Layers to offload to the GPU: -1 all, 0 none.", flag="--gpu-layers"),
    _choice("kv_type", "KV cache type", KV_TYPES, "KV cache type."),
    _choice("speculation", "speculation", SPECULATION,
            "Speculative decoding of greedy answers (-t 0): tokens guessed cheaply (copied from the prompt and the "
            "answer so far, or by a --draft model), checked in one batch. auto drafts only as much as this machine's "
            "measured costs and the drafts' acceptance say will pay; ngram and draft always draft, from that source.",
            flag="--spec"),
    Field("n_seq", int, "parallel sequences", f"1 to {MAX_SEQUENCES}", lambda v: 1 <= v <= MAX_SEQUENCES,
          "Requests generated at the same time, batched in one context; each has the whole --ctx window.",
          flag="--parallel", short="-np"),
    # Any name passes here: localllm.backends.REGISTRY knows the engines (and says which, when one is not).
    Field("engine", str, "engine", "an engine's name", lambda v: isinstance(v, str) and v.isidentifier(),
          "Backend to run the model on.", choices=ENGINES + REMOTE_ENGINES),
    _choice("dtype", "dtype", DTYPES, "Precision on the transformers engine."),
)

FIELDS = {field.name: field for field in SAMPLING_FIELDS + LOAD_FIELDS}


PROMPT_CACHE_MODES = ("", "cold", "live")


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
    # Speculative decoding of greedy answers on llama.cpp (localllm.generation.speculation), and
    # the GGUF of a small model with the same vocabulary that drafts tokens (None: none); its
    # load options are the planner's (draft_plan, filled in when the target is planned).
    speculation: str = "auto"
    draft: str | None = None
    draft_plan: LoadOptions | None = None
    # A vision model's projector (mmproj) GGUF: the model then takes images (None: none).
    projector: str | None = None
    # Which backend runs the model: None chooses from its format (a .gguf file: llama.cpp; a
    # safetensors folder: transformers). dtype is the transformers engine's: None or "auto" is the
    # checkpoint's half precision where the device computes in it natively, else float32.
    engine: str | None = None
    dtype: str | None = None
    # The transformers engine's placement, module -> device (localllm.backends.transformers.checkpoint_plan): set by its planner.
    device_map: tuple[tuple[str, str | int], ...] = ()
    # llama.cpp RPC workers (HOST:PORT) whose devices take layers as GPUs do (localllm.backends.llamacpp.rpc).
    rpc: tuple[str, ...] = ()
    # Keep prompts' KV caches on disk after each answer and load one saved before when a prompt
    # starts with its tokens (localllm.backends.llamacpp.state_cache): "" off; "cold", answers the
    # same as a fresh read of the prompt (`run`); "live", the same as if the process that saved it
    # had never stopped (`chat`, `serve`).
    prompt_cache: str = ""
    verbose: bool = False

    def __post_init__(self) -> None:
        for field in LOAD_FIELDS:
            field.check(getattr(self, field.name))
        if self.flash_attn not in (None, True, False):
            raise UsageError(f"flash attention must be None (auto), True or False, not {self.flash_attn!r}")
        if self.initial_ctx < 0:
            raise UsageError(f"initial context size must be 0 (the whole window) or positive, not {self.initial_ctx}")
        if self.n_seq > 1 and self.initial_ctx:
            raise UsageError("a context for several sequences cannot start small and grow")
        if self.prompt_cache not in PROMPT_CACHE_MODES:
            raise UsageError(f"prompt cache must be one of {', '.join(map(repr, PROMPT_CACHE_MODES))}, not {self.prompt_cache!r}")
        if self.n_batch < 1 or self.n_ubatch < 1:
            raise UsageError("batch sizes must be at least 1")
        if self.kv_type not in (None, "f16") and self.flash_attn is False:
            raise UsageError("a quantized KV cache needs flash attention")
        if any(share < 0 for share in self.tensor_split):
            raise UsageError("tensor split shares must not be negative")


MAX_LOGPROBS = 20  # as OpenAI's top_logprobs


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
    presence_penalty: float = 0.0  # OpenAI's, over the last PENALTY_WINDOW tokens as llama.cpp counts them
    frequency_penalty: float = 0.0
    seed: int | None = None
    ignore_eos: bool = False
    # Generation ends before the first of these texts, which is never part of the answer.
    stop: tuple[str, ...] = ()
    # The answer must follow this llguidance grammar (localllm.generation.constraints: json_grammar for a
    # JSON Schema, text_grammar for GBNF or Lark), on every backend.
    grammar: str | None = None
    # Report each token's log-probability and this many likeliest alternatives (None: none).
    logprobs: int | None = None

    def __post_init__(self) -> None:
        for field in SAMPLING_FIELDS:
            field.check(getattr(self, field.name))
        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_LOGPROBS:
            raise UsageError(f"logprobs: from 0 to {MAX_LOGPROBS} alternatives")
        if len(self.stop) > MAX_STOPS or any(not s or len(s) > MAX_STOP_CHARS for s in self.stop):
            raise UsageError(f"stop strings: at most {MAX_STOPS}, each 1 to {MAX_STOP_CHARS} characters")

    @property
    def penalized(self) -> bool:
        """Whether a penalty changes the scores (then even temperature 0 needs the sampler)."""
        return self.repeat_penalty != 1.0 or self.presence_penalty != 0.0 or self.frequency_penalty != 0.0


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


_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?")


def parse_size(text: str, what: str) -> int:
    """Bytes from "4G", "500MB", "1.5GiB", "0" or a bare number of bytes (binary units, as `df -h`)."""
    match = _SIZE.fullmatch(text.strip().lower()) if len(text) <= 40 else None
    if match is None:
        raise UsageError(f"{what} takes a size such as 4G, 500M or 0, not {text[:40]!r}")
    value = float(match[1]) * 1024 ** " kmgt".index(match[2] or " ")
    if value >= 2**60:
        raise UsageError(f"{what} is too large: {text[:40]}")
    return int(value)


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
