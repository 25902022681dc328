"""The full-precision backend: a safetensors checkpoint in PyTorch through Hugging Face transformers.

Installed with the `full` extra (torch, transformers, accelerate); this module is imported only
when a model needs it. It decodes with its own loop over the model's forward pass (prefill the
prompt, then one token at a time with the KV cache), the same computation as transformers'
`generate()`, so that it can stream typed events, reuse the cache of a shared prompt prefix and
sample exactly as SamplingOptions says.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path

from ...errors import GenerationError, ModelLoadError, UsageError
from ...events import Event, Token
from ...formats import is_checkpoint
from ...generation.sequence import Answer
from ...hardware import default_threads, detect
from ...options import DEFAULT_CTX, PENALTY_WINDOW, LoadOptions, SamplingOptions
from ..base import Capabilities, TokenizerChat, prompt_tokens, reusable_prefix
from ..threads import engine_governor
from .checkpoint_plan import place, read_config, read_local

INSTALL_HINT = "the full-precision engine is not installed: pipx install 'localllm[full]' (or pip install 'localllm[full]')"


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
    capabilities = Capabilities(token_input=True, grammar=True)

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
        placed, dtype, n_ctx = plan_checkpoint(path, options)
        if placed.fit == "none" and not options.load_anyway:
            raise ModelLoadError(path, f"it does not fit: {placed.warnings[0]}")
        for warning in placed.warnings:
            notify(warning)
        return replace(options, n_seq=1, dtype=dtype, n_ctx=n_ctx, device_map=tuple(placed.device_map.items()))

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

    machine = detect()  # without llama.cpp's build facts, which this engine does not use
    spec = read_local(path)
    use_gpu = torch.cuda.is_available() and options.n_gpu_layers != 0
    gpus = [(g.index, g.free, g.vendor) for g in machine.gpus if g.vendor == "nvidia" and g.free] if use_gpu else []
    dtype = choose_dtype(options.dtype, spec.dtype, "cuda" if gpus else "cpu", machine.cpu.features)
    n_ctx = min(spec.n_ctx_train, DEFAULT_CTX) if options.n_ctx is None else (options.n_ctx or spec.n_ctx_train)
    return place(spec, dtype, n_ctx, gpus, machine.memory.available, options.margin), dtype, n_ctx




class TransformersModel(TokenizerChat):
    """A safetensors checkpoint in memory, on the CPU or the GPUs accelerate's device map names."""

    capabilities = TransformersBackend.capabilities

    def __init__(self, path: Path, options: LoadOptions):
        import inspect

        import torch
        import transformers
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if not options.verbose:  # its progress bars and notices would fill stderr around the answer
            transformers.utils.logging.set_verbosity_error()
            transformers.utils.logging.disable_progress_bar()

        self.path = path
        self._torch = torch
        self.n_threads = options.n_threads or default_threads()
        torch.set_num_threads(self.n_threads)
        # PyTorch's OpenMP team stalls on a busy core as llama.cpp's does; the count is global.
        self.governor = engine_governor(torch.set_num_threads, self.n_threads, options.n_threads,
                                        max(self.n_threads, default_threads()), options.verbose)
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

    @property
    def threads_in_use(self) -> int:
        return self.governor.current

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
        from ...generation.constraints import special_token

        return special_token(self.grammar_vocabulary(), list(self._tokenizer(text, add_special_tokens=False)["input_ids"]))

    def generate(self, prompt: str | Sequence[int], sampling: SamplingOptions) -> Iterator[Event]:
        return self._generate(prompt_tokens(self, prompt), sampling)

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
        detokenizer = _Detokenizer(self._tokenizer)
        answer = Answer(sampling, len(tokens), 0, self.n_ctx, self._ends.__contains__,
                        lambda step: "".join(detokenizer.add(t) for t in step), self.grammar_vocabulary)
        generator = torch.Generator(device="cpu").manual_seed(answer.seed)
        answer.reused = reused = self._reuse_prefix(tokens)
        feed = tokens[reused:]
        governor, perf_counter = self.governor, time.perf_counter
        with torch.inference_mode():
            while not answer.done:
                ids = torch.tensor([feed], device=self._device)
                t_step = perf_counter()
                try:
                    # Logits of the last position only: all of them would cost prompt x vocabulary floats.
                    out = self._model(input_ids=ids, use_cache=True, logits_to_keep=1, **{self._cache_arg: self._cache})
                except RuntimeError as exc:
                    self._cached, self._cache = [], None
                    raise GenerationError(f"the model failed to evaluate: {str(exc).splitlines()[0][:200]}") from None
                self._cache = getattr(out, "cache", None) or out.past_key_values
                self._cached.extend(feed)
                logits = out.logits[0, -1].float()
                allowed = answer.allowed(logits.numel())
                if allowed is not None:  # the same mask as on llama.cpp, moved to the logits' device
                    logits.masked_fill_(~torch.from_numpy(allowed).to(logits.device), float("-inf"))
                token = _sample(torch, logits, sampling, tokens + answer.output, generator)
                if len(feed) == 1:  # one-token steps, timed to the pick (a GPU's work is done by then)
                    governor.step(perf_counter() - t_step)
                text, feed = answer.take(token)
                if text:
                    yield Token(text)
        held, finished = answer.finish()  # held: text that only began a stop string, after the end of turn
        if held:
            yield Token(held)
        yield finished

    def embed(self, texts: Sequence[str]) -> tuple[list[list[float]], int]:
        raise UsageError(f"{self.path.name} is not an embedding model")

    def batcher(self):
        from ..serial import SerialBatcher

        return SerialBatcher(self)

    def close(self) -> None:
        self._model = self._cache = None
        self._cached = []


def _sample(torch, logits, sampling: SamplingOptions, history: list[int], generator) -> int:
    """One token, with the same steps in the same order as the llama.cpp backend's sampler chain:
    penalties over the last PENALTY_WINDOW tokens, then greedy, or top-k, top-p, min-p, temperature, draw."""
    if sampling.penalized and history:
        ids, counts = torch.tensor(history[-PENALTY_WINDOW:]).unique(return_counts=True)
        seen, counts = ids.to(logits.device), counts.to(logits.device, logits.dtype)
        values = logits[seen]
        values = torch.where(values > 0, values / sampling.repeat_penalty, values * sampling.repeat_penalty)
        logits[seen] = values - counts * sampling.frequency_penalty - sampling.presence_penalty
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
