"""Output that must follow a grammar (a JSON Schema, any JSON object), on llguidance.

One constraint engine for every backend: a backend hands over its vocabulary once and, at each
step, its logits row; the grammar's token mask is applied to that row in place with llguidance's
vectorised kernel (no Python loop over the vocabulary), so the usual samplers then pick only
tokens the grammar allows. llguidance was chosen over llama.cpp's grammar sampler on measured
grounds (FACTS.md): it never accepted an invalid document where llama.cpp's accepted several, and
its mask costs 0.16 ms against 12 ms.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from .. import safejson
from ..errors import GenerationError, UsageError
from ..printable import printable

MAX_SCHEMA_BYTES = 256 * 1024


def json_grammar(schema: dict[str, Any] | None) -> str:
    """The grammar for documents valid against `schema`; None: any JSON object. A keyword
    llguidance cannot honour is a UsageError naming it, never silently ignored."""
    import llguidance

    text = json.dumps({"type": "object"} if schema is None else schema)
    if len(text) > MAX_SCHEMA_BYTES:
        raise UsageError(f"the JSON schema is larger than {MAX_SCHEMA_BYTES // 1024} KiB")
    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(text, defaults={"whitespace_flexible": False})
    except ValueError as exc:
        raise UsageError(f"invalid JSON schema: {exc}") from None
    return enforceable(grammar, "the JSON schema")


def enforceable(grammar: str, what: str) -> str:
    """The grammar, once llguidance says it can enforce all of it; else a UsageError naming why."""
    import llguidance

    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar)
    if is_error:
        raise UsageError(f"{what} cannot be enforced: {messages[0][:300]}")
    return grammar


def from_options(schema: str | None, grammar_file: Path | None) -> str | None:
    """The grammar `run --schema FILE|JSON` or `--grammar FILE` asks for."""
    if schema is not None and grammar_file is not None:
        raise UsageError("give --schema or --grammar, not both")
    if grammar_file is not None:
        return text_grammar(_read_small(grammar_file, "--grammar"))
    if schema is None:
        return None
    text = schema if schema.lstrip().startswith("{") else _read_small(Path(schema), "--schema")
    try:
        parsed = safejson.loads(text)
    except ValueError as exc:
        raise UsageError(f"--schema is not valid JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise UsageError("--schema must be a JSON object (a JSON Schema)")
    return json_grammar(parsed)


def _read_small(path: Path, option: str) -> str:
    try:
        if path.stat().st_size > MAX_GRAMMAR_BYTES:
            raise UsageError(f"{option} {path}: larger than {MAX_GRAMMAR_BYTES // 1024} KiB")
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"{option} {path}: no such file (a schema given inline starts with {{)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{option} {path}: cannot be read as UTF-8 text ({type(exc).__name__})") from None


MAX_GRAMMAR_BYTES = 256 * 1024


def text_grammar(text: str) -> str:
    """A raw grammar: llama.cpp's GBNF, or llguidance's Lark (both read by llguidance)."""
    import llguidance

    if len(text.encode()) > MAX_GRAMMAR_BYTES:
        raise UsageError(f"the grammar is larger than {MAX_GRAMMAR_BYTES // 1024} KiB")
    try:
        grammar = llguidance.grammar_from("gbnf", text)
    except ValueError as exc:
        raise UsageError(f"invalid grammar: {str(exc).splitlines()[0][:300]}") from None
    return enforceable(grammar, "the grammar")


# The thinking is free text up to the first </think> (a lazy lexeme ends at its first match), then
# the answer's own grammar; whitespace between them as the models write it.
_THINKING = """%llguidance {}
start: HEAD @answer
think[lazy]: TEXT "</think>"
TEXT: /(.|\\n)*/
WS: /[ \\t\\r\\n]+/
"""
# Where </think> is one special token, no text can contain it: the thinking is any text before it.
_THINKING_TOKEN = """%llguidance {}
start: HEAD @answer
think: TEXT? CLOSE
TEXT: /(.|\\n)+/
WS: /[ \\t\\r\\n]+/
"""


def after_thinking(grammar: str, opened: bool, open_id: int | None = None, close_id: int | None = None) -> str:
    """`grammar` for the answer of a thinking model, its reasoning left free: `opened`, the prompt
    opened the think block (DeepSeek-R1); else the model may open one itself first (Qwen3).
    open_id/close_id: the tags' token ids where the vocabulary has them as special tokens."""
    start = f"<[{open_id}]>" if open_id is not None else '"<think>"'
    head = "think WS?" if opened else f"(WS? {start} think WS?)?"
    outer = _THINKING if close_id is None else _THINKING_TOKEN.replace("CLOSE", f"<[{close_id}]>")
    return enforceable(named(outer.replace("HEAD", head), grammar), "the grammar")


def named(lark: str, answer: str) -> str:
    """A grammar of `lark` in which ``@answer`` stands for the grammar `answer`."""
    if answer.lstrip().startswith("{"):
        parts = json.loads(answer)["grammars"]
    else:
        parts = [{"lark_grammar": answer}]
    return json.dumps({"grammars": [{"name": "outer", "lark_grammar": lark}, dict(parts[0], name="answer"), *parts[1:]]})


def special_token(vocabulary: Any, tokens: list[int]) -> int | None:
    """The token `tokens` is, where it is one token the grammar engine treats as special (a
    grammar must then name it by id: no text spells it)."""
    return tokens[0] if len(tokens) == 1 and vocabulary.is_special_token(tokens[0]) else None


class Constraint:
    """One sequence's progress through a grammar."""

    def __init__(self, tokenizer: Any, grammar: str):
        import llguidance
        from llguidance.numpy import allocate_token_bitmask

        try:
            self._matcher = llguidance.LLMatcher(tokenizer, grammar, log_level=0)
        except (ValueError, TypeError) as exc:
            raise UsageError(f"the grammar cannot be enforced: {str(exc)[:300]}") from None
        if self._matcher.is_error():
            raise UsageError(f"the grammar cannot be enforced: {self._matcher.get_error()[:300]}")
        self._bitmask = allocate_token_bitmask(1, tokenizer.vocab_size)
        # Some grammars fail only when their first mask is computed (a schema whose only
        # definition is itself, `{"$ref": "#"}`): then the sole token left would be the end of
        # the answer, an empty reply passed off as a normal one. Refused before anything runs.
        self._fill(first=True)

    def _fill(self, first: bool = False) -> None:
        """The next token's mask into the bitmask; an error of the grammar engine is never a mask."""
        from llguidance.numpy import fill_next_token_bitmask

        fill_next_token_bitmask(self._matcher, self._bitmask)
        if self._matcher.is_error():
            why = (self._matcher.get_error().splitlines() or ["no reason given"])[0][:300]
            if first:
                raise UsageError(f"the grammar cannot be enforced: no text satisfies it ({printable(why)})")
            raise GenerationError(f"internal error: the grammar engine failed: {printable(why)}")

    def mask(self, logits: np.ndarray) -> None:
        """Set the logits of every token the grammar forbids next to -inf, in place."""
        from llguidance.numpy import apply_token_bitmask_inplace

        self._fill()
        apply_token_bitmask_inplace(logits, self._bitmask)

    def allowed(self, n: int) -> np.ndarray:
        """Which of the first n tokens the grammar allows next, as booleans (for logits that are
        not a NumPy row, e.g. a torch tensor on a GPU)."""
        self._fill()
        return np.unpackbits(self._bitmask[0].view(np.uint8), bitorder="little")[:n].astype(bool)

    def accept(self, token: int) -> None:
        if not self._matcher.consume_token(token):
            self._rejected([token])

    def forced(self) -> list[int]:
        """Tokens the grammar allows no alternative to from here (fast-forward): accepted already,
        to be evaluated in one batch rather than sampled one by one."""
        tokens = self._matcher.compute_ff_tokens()
        if tokens and not self._matcher.consume_tokens(tokens):
            self._rejected(tokens)
        return tokens

    def follow(self, token: int, room: int) -> list[int]:
        """Accept a sampled token; the tokens the grammar then forces (at most `room`), which
        every engine evaluates with it in one step rather than sampling them one by one."""
        self.accept(token)
        return self.forced()[:room]

    def _rejected(self, tokens: list[int]) -> None:
        """A token the grammar engine refused is a bug (ours or its own), never an ordinary end
        of the answer: the sequence stops with the engine's own message."""
        why = self._matcher.get_error() if self._matcher.is_error() else "no reason given"
        raise GenerationError(f"internal error: the grammar engine rejected token(s) {tokens[:8]}: "
                              f"{printable(why.splitlines()[0] if why else why)[:300]}")

    @property
    def complete(self) -> bool:
        """The document is finished: nothing but the end of the turn may follow."""
        return self._matcher.is_stopped()


def vocabulary(llama_vocab: Any, end_tokens: list[int]) -> Any:
    """llguidance's view of a llama.cpp vocabulary (about a second to build: cache it)."""
    from llguidance.llamacpp import lltokenizer_from_vocab

    with warnings.catch_warnings():  # it reads each token through a binding llama-cpp-python deprecates
        warnings.simplefilter("ignore", DeprecationWarning)
        return lltokenizer_from_vocab(llama_vocab, eos_token=end_tokens)
