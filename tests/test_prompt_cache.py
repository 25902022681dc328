"""Prompt states kept on disk (localllm.backends.llamacpp.state_cache): the store's checks on
scripted bytes, then `run` twice on the real starter, reading only what is new."""

from __future__ import annotations

import json
import stat

import pytest
from conftest import run_cli

from localllm.backends.llamacpp import state_cache
from localllm.backends.llamacpp.state_cache import StateCache, folder

TOKENS = list(range(1000, 1600))


def test_a_saved_state_is_found_for_a_prompt_that_starts_with_its_tokens_and_is_private():
    store = StateCache("k" * 32)
    store.save(TOKENS, b"kv-bytes" * 100)
    found = store.find(TOKENS + [7, 8, 9])
    assert found is not None and found.tokens == TOKENS and found.state == b"kv-bytes" * 100
    assert store.find([1] + TOKENS) is None, "a prompt that differs at its start shares nothing"
    assert store.find(TOKENS[:200]) is None, f"under {state_cache.MIN_TOKENS} shared tokens a file is not worth it"
    path = next(folder().glob("*.state"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(folder().stat().st_mode) == 0o700


@pytest.mark.parametrize("damage", ["flip", "truncate", "foreign", "garbage"])
def test_a_damaged_or_foreign_state_is_ignored_and_said_under_verbose(damage, capfd):
    store = StateCache("k" * 32, verbose=True)
    store.save(TOKENS, b"kv-bytes" * 100)
    path = next(folder().glob("*.state"))
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[-5] ^= 0xFF
    elif damage == "truncate":
        data = data[:-10]
    elif damage == "foreign":
        StateCache("j" * 32).save(TOKENS, b"other" * 10)
        data = bytearray(next(p for p in folder().glob("j*.state")).read_bytes())
    else:
        data = bytearray(b"\0" * 64)
    path.write_bytes(bytes(data))
    assert store.find(TOKENS + [1]) is None
    assert "localllm: prompt cache: ignoring" in capfd.readouterr().err


def test_the_least_recently_used_go_first_past_the_budget(monkeypatch):
    monkeypatch.setenv(state_cache.ENV_BUDGET, str(4000))
    store = StateCache("k" * 32)
    for i in range(3):
        store.save([i] + TOKENS, bytes(1000))
    assert len(list(folder().glob("*.state"))) == 1, "three states of 3.4 kB each against 4 kB: the last saved stays"
    assert store.find([2] + TOKENS + [5]) is not None


def test_a_longer_state_replaces_the_one_it_extends():
    store = StateCache("k" * 32)
    store.save(TOKENS, bytes(10))
    store.save(TOKENS + [5, 6], bytes(10))
    assert len(list(folder().glob("*.state"))) == 1


@pytest.mark.slow
def test_run_reads_a_long_document_once_and_answers_the_same():
    document = "\n".join(f"Line {i}: the meeting moved item {i} to the next week." for i in range(150)).encode()

    def ask(question: str, *extra: str) -> dict:
        result = run_cli("run", "-m", "starter", "--json", "-t", "0", "--max-tokens", "16", *extra, "-p", question,
                         stdin=document)
        assert result.returncode == 0, result
        return json.loads(result.stdout)

    first = ask("What moved?")
    assert first["usage"]["cached_tokens"] == 0
    second, cold = ask("When?"), ask("When?", "--no-cache")
    assert second["usage"]["cached_tokens"] >= 1536 and second["usage"]["cached_tokens"] % 512 == 0, second["usage"]
    assert cold["usage"]["cached_tokens"] == 0
    assert second["text"] == cold["text"], "restored to a whole ubatch: the same answer as a cold read"
    assert second["timings"]["prompt_s"] < cold["timings"]["prompt_s"] / 2
    other = ask("When?", "--ctx", "4096")
    assert other["usage"]["cached_tokens"] == 0, "a state made for another window is not used"
