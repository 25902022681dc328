"""The full-precision backend: a safetensors checkpoint in PyTorch through Hugging Face transformers.

Installed with the `full` extra (torch, transformers, accelerate); this module is imported only
when a model needs it. It decodes with its own loop over the model's forward pass (prefill the
prompt, then one token at a time with the KV cache), the same computation as transformers'
`generate()`, so that it can stream typed events, reuse the cache of a shared prompt prefix and
sample exactly as SamplingOptions says.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path

from .. import safejson
from ..errors import ContextOverflowError, GenerationError, ModelLoadError, UsageError
from ..events import Event, Finished, Token, Usage
from ..hardware import default_threads, detect
from ..options import DEFAULT_CTX, LoadOptions, SamplingOptions
from ..constraints import Constraint
from ..stops import StopText
from .base import Capabilities, TokenizerChat, reusable_prefix

INSTALL_HINT = "the full-precision engine is not installed: pipx install 'localllm[full]' (or pip install 'localllm[full]')"


def is_checkpoint(path: Path) -> bool:
    """A folder with a config.json and safetensors weights: what this backend loads."""
    return path.is_dir() and (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def available() -> bool:
    from importlib.util import find_spec

    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        return False
    return find_spec("accelerate") is not None  # imported only to place on GPUs (0.1 s)


def choose_dtype(asked: str | None, checkpoint: str | None, device: str, cpu_features: Sequence[str]) -> str:
    """The checkpoint's half precision where the device computes in it natively, else float32.

    On a CPU, bfloat16 only with native bf16 instructions (AVX512_BF16 or AMX): emulated, it is
    slower than float32. float16 checkpoints run as float32 on a CPU for the same reason.
    """
    if asked not in (None, "auto"):
        return asked
    wanted = checkpoint if checkpoint in ("bfloat16", "float16") else "float32"
    if device == "cpu":
        native_bf16 = any(f in cpu_features for f in ("avx512_bf16", "amx_bf16"))
        return "bfloat16" if wanted != "float32" and native_bf16 else "float32"
    return wanted


class TransformersBackend:
    name = "transformers"
    capabilities = Capabilities(multi_gpu=True, token_input=True)

    @staticmethod
    def can_load(path: Path) -> bool:
        return is_checkpoint(path)

    @staticmethod
    def prepare(path: Path, options: LoadOptions, notify: Callable[[str], None]) -> LoadOptions:
        """Check the checkpoint, choose the dtype, and place it on the GPUs and RAM (checkpoint_plan)."""
        if not available():
            raise UsageError(INSTALL_HINT)
        if options.kv_type not in (None, "f16") or options.tensor_split:
            raise UsageError("--kv-type and --tensor-split are llama.cpp settings; the transformers engine has none")
        if options.n_seq > 1:
            notify("the transformers engine answers one request at a time")
        placed, dtype, n_ctx = plan_checkpoint(path, options)
        if placed.fit == "none" and not options.load_anyway:
            raise ModelLoadError(path, f"it does not fit: {placed.warnings[0]}")
        for warning in placed.warnings:
            notify(warning)
        return replace(options, n_seq=1, dtype=dtype, n_ctx=n_ctx, device_map=tuple(placed.device_map.items()),
                       n_threads=options.n_threads or default_threads(detect().cpu))

    @staticmethod
    def smaller(current: LoadOptions, asked: LoadOptions) -> None:
        return None

    @staticmethod
    def out_of_memory(reason: str) -> bool:
        return "out of memory" in reason.lower()

    def load(self, path: Path, options: LoadOptions) -> TransformersModel:
        return TransformersModel(path, options)


def plan_checkpoint(path: Path, options: LoadOptions):
    """(Placement, dtype, context) for this checkpoint on this machine, GPUs from NVML."""
    import torch

    from ..checkpoint_plan import place, read_local

    machine = detect()  # without llama.cpp's build facts, which this engine does not use
    spec = read_local(path)
    use_gpu = torch.cuda.is_available() and options.n_gpu_layers != 0
    gpus = [(g.index, g.free, g.vendor) for g in machine.gpus if g.vendor == "nvidia" and g.free] if use_gpu else []
    dtype = choose_dtype(options.dtype, spec.dtype, "cuda" if gpus else "cpu", machine.cpu.features)
    n_ctx = min(spec.n_ctx_train, DEFAULT_CTX) if options.n_ctx is None else (options.n_ctx or spec.n_ctx_train)
    return place(spec, dtype, n_ctx, gpus, machine.memory.available, options.margin), dtype, n_ctx


MAX_CONFIG_BYTES = 1 << 20


def read_config(path: Path) -> dict:
    """config.json, bounded and checked: it names the architecture transformers will build."""
    file = path / "config.json"
    try:
        with file.open("rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ModelLoadError(path, f"cannot read config.json: {exc.strerror or exc}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ModelLoadError(path, "config.json is larger than 1 MiB")
    try:
        config = safejson.loads(raw)
    except ValueError:
        raise ModelLoadError(path, "config.json is not valid JSON") from None
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        raise ModelLoadError(path, "config.json has no model_type")
    return config


class TransformersModel(TokenizerChat):
    """A safetensors checkpoint in memory, on the CPU or the GPUs accelerate's device map names."""

    capabilities = TransformersBackend.capabilities

    def __init__(self, path: Path, options: LoadOptions):
        import torch
        import inspect

        import transformers
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if not options.verbose:  # its progress bars and notices would fill stderr around the answer
            transformers.utils.logging.set_verbosity_error()
            transformers.utils.logging.disable_progress_bar()

        self.path = path
        self._torch = torch
        self.n_threads = options.n_threads or default_threads()
        torch.set_num_threads(self.n_threads)
        config = read_config(path)
        device_map = dict(options.device_map) or {"": "cpu"}
        use_gpu = any(device != "cpu" for device in device_map.values())
        # prepare() chose it for this machine; a caller that skipped it gets float32, always safe.
        self.dtype = options.dtype if options.dtype not in (None, "auto") else "float32"
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(path)
            # All on the CPU needs no device map, and so no accelerate.
            placement = {"device_map": device_map} if use_gpu else {}
            self._model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, self.dtype), **placement)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise ModelLoadError(path, str(exc).splitlines()[0][:300]) from None
        self._model.eval()
        # transformers 5.x renames forward()'s past_key_values to cache.
        self._cache_arg = "cache" if "cache" in inspect.signature(self._model.forward).parameters else "past_key_values"
        self.n_ctx_train = int(config.get("max_position_embeddings") or DEFAULT_CTX)
        self.n_vocab = int(self._model.config.get_text_config().vocab_size)
        self.n_ctx = min(self.n_ctx_train, DEFAULT_CTX) if options.n_ctx is None else (options.n_ctx or self.n_ctx_train)
        self.n_gpu_layers = sum(1 for module, device in device_map.items() if device != "cpu" and ".layers." in module)
        self._device = next(self._model.parameters()).device
        ends = self._model.generation_config.eos_token_id
        self._ends = set(ends if isinstance(ends, list) else [ends] if ends is not None else [])
        if self._tokenizer.eos_token_id is not None:
            self._ends.add(self._tokenizer.eos_token_id)
        self._cache = None
        self._cached: list[int] = []
        self._grammar_vocabulary = None
        self.can_embed = False

    def tokenize(self, text: str) -> list[int]:
        return list(self._tokenizer(text, add_special_tokens=True)["input_ids"])

    def grammar_vocabulary(self):
        """llguidance's view of the tokenizer, built on first use (about a second)."""
        if self._grammar_vocabulary is None:
            import llguidance.hf

            try:
                self._grammar_vocabulary = llguidance.hf.from_tokenizer(self._tokenizer, n_vocab=self.n_vocab,
                                                                       eos_token=sorted(self._ends))
            except ValueError as exc:  # a slow (Python) tokenizer: llguidance reads fast ones only
                raise UsageError(f"{self.path.name}: its tokenizer cannot drive a grammar ({exc})") from None
        return self._grammar_vocabulary

    def special_token(self, text: str) -> int | None:
        from ..constraints import special_token

        return special_token(self.grammar_vocabulary(), list(self._tokenizer(text, add_special_tokens=False)["input_ids"]))

    def _prompt_ids(self, prompt: str | Sequence[int]) -> list[int]:
        if not isinstance(prompt, str):
            return list(prompt)
        # A rendered chat template already holds the special tokens it wants.
        bos = self._tokenizer.bos_token
        special = not (bos and prompt.startswith(bos))
        return list(self._tokenizer(prompt, add_special_tokens=special)["input_ids"])

    def generate(self, prompt: str | Sequence[int], sampling: SamplingOptions) -> Iterator[Event]:
        tokens = self._prompt_ids(prompt)
        if not tokens:
            raise UsageError("the prompt is empty")
        if len(tokens) >= self.n_ctx:
            raise ContextOverflowError(len(tokens), self.n_ctx, self.n_ctx_train)
        return self._generate(tokens, sampling)

    def _reuse_prefix(self, tokens: list[int]) -> int:
        from transformers import DynamicCache

        common = reusable_prefix(self._cached, tokens)
        if common and self._cache is not None:
            surplus = self._cache.get_seq_length() - common
            if surplus > 0:
                self._cache.crop(-surplus)  # a negative count removes that many: every 5.x reads it so
        else:
            common = 0
            self._cache = DynamicCache(config=self._model.config)
        self._cached = tokens[:common]
        return common

    def _generate(self, tokens: list[int], sampling: SamplingOptions) -> Iterator[Event]:
        torch = self._torch
        seed = secrets.randbelow(2**32 - 1) if sampling.seed is None else sampling.seed
        generator = torch.Generator(device="cpu").manual_seed(seed)
        t_start = time.perf_counter()
        reused = self._reuse_prefix(tokens)
        room = self.n_ctx - len(tokens)
        limit = room if sampling.max_tokens is None else min(sampling.max_tokens, room)
        detokenizer = _Detokenizer(self._tokenizer)
        stops = StopText(sampling.stop)
        constraint = Constraint(self.grammar_vocabulary(), sampling.grammar) if sampling.grammar else None
        generated: list[int] = []
        reason, t_first, t_prompt_done = "length", None, None
        feed = tokens[reused:]
        with torch.inference_mode():
            while len(generated) < limit:
                ids = torch.tensor([feed], device=self._device)
                try:
                    # Logits of the last position only: all of them would cost prompt x vocabulary floats.
                    out = self._model(input_ids=ids, use_cache=True, logits_to_keep=1, **{self._cache_arg: self._cache})
                except RuntimeError as exc:
                    self._cached, self._cache = [], None
                    raise GenerationError(f"the model failed to evaluate: {str(exc).splitlines()[0][:200]}") from None
                self._cache = getattr(out, "cache", None) or out.past_key_values
                self._cached.extend(feed)
                logits = out.logits[0, -1].float()
                if constraint is not None:  # the same mask as on llama.cpp, moved to the logits' device
                    allowed = torch.from_numpy(constraint.allowed(logits.numel())).to(logits.device)
                    logits.masked_fill_(~allowed, float("-inf"))
                token = _sample(torch, logits, sampling, tokens + generated, generator)
                t_prompt_done = t_prompt_done or time.perf_counter()
                if not sampling.ignore_eos and token in self._ends:
                    reason = "stop"
                    break
                step = [token]
                if constraint is not None:  # the tokens the grammar forces go in with the sampled one
                    step += constraint.follow(token, limit - len(generated) - 1)
                generated.extend(step)
                text, stopped = stops.feed("".join(detokenizer.add(t) for t in step))
                t_first = t_first or time.perf_counter()
                if text:
                    yield Token(text)
                if stopped or (constraint is not None and constraint.complete):
                    reason = "stop"
                    break
                feed = step
        held = stops.flush()  # empty after a stop string matched; text that only began one, after the end of turn
        if held:
            yield Token(held)
        yield Finished.measured(reason, Usage(len(tokens), len(generated), reused), seed, t_start, t_prompt_done, t_first,
                                time.perf_counter())

    def embed(self, texts: Sequence[str]) -> tuple[list[list[float]], int]:
        raise UsageError(f"{self.path.name} is not an embedding model")

    def batcher(self):
        from .serial import SerialBatcher

        return SerialBatcher(self)

    def close(self) -> None:
        self._model = self._cache = None
        self._cached = []


def _sample(torch, logits, sampling: SamplingOptions, history: list[int], generator) -> int:
    """One token, with the same steps in the same order as the llama.cpp backend's sampler chain:
    repeat penalty over the last 64 tokens, then greedy, or top-k, top-p, min-p, temperature, draw."""
    if sampling.repeat_penalty != 1.0 and history:
        seen = torch.tensor(sorted(set(history[-64:])), device=logits.device)
        values = logits[seen]
        logits[seen] = torch.where(values > 0, values / sampling.repeat_penalty, values * sampling.repeat_penalty)
    if sampling.temperature == 0:
        return int(logits.argmax())
    if sampling.top_k > 0:
        values, indices = torch.topk(logits, min(sampling.top_k, logits.numel()))
    else:
        values, indices = torch.sort(logits, descending=True)
    probs = torch.softmax(values, dim=-1)
    keep = int((probs.cumsum(-1) < sampling.top_p).sum()) + 1  # the smallest set reaching top_p
    values, indices, probs = values[:keep], indices[:keep], probs[:keep]
    if sampling.min_p > 0:
        kept = probs >= sampling.min_p * probs[0]
        values, indices = values[kept], indices[kept]
    final = torch.softmax(values / sampling.temperature, dim=-1)
    return int(indices[torch.multinomial(final.cpu(), 1, generator=generator)])


class _Detokenizer:
    """Text of streamed tokens: each new token is decoded with a few before it, so that pieces of
    a character or a word's leading space come out right, and nothing is repeated or lost."""

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._prefix = self._read = 0

    def add(self, token: int) -> str:
        self._ids.append(token)
        decode = self._tokenizer.decode
        before = decode(self._ids[self._prefix:self._read], skip_special_tokens=True)
        now = decode(self._ids[self._prefix:], skip_special_tokens=True)
        if len(now) <= len(before) or now.endswith("\ufffd"):
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        return now[len(before):]
