"""Prompt states kept on disk (localllm.backends.llamacpp.state_cache): the store's checks on
scripted bytes, then on the real starter: `run` twice, a chat closed and reopened, and `serve`
restarted, each reading only what is new and answering as without the file."""

from __future__ import annotations

import json
import os
import shutil
import stat
import struct
import time

import httpx
import pytest
from conftest import assert_one_line_error, invoke, run_cli
from test_server_trust import AppServer

from localllm.backends.llamacpp import state_cache
from localllm.backends.llamacpp.state_cache import StateCache, folder
from localllm.config import load_config
from localllm.events import Finished
from localllm.model import chat_load_options, load_model
from localllm.options import LoadOptions, SamplingOptions
from localllm.registry import find_installed
from localllm.server import ServerConfig
from localllm.session import ChatSession, ChatStore

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
        # --spec off: the answers are compared with a cold read's (conftest.TEST_LOAD says why)
        result = run_cli("run", "-m", "starter", "--json", "-t", "0", "--max-tokens", "16", "--spec", "off", *extra,
                         "-p", question, stdin=document)
        assert result.returncode == 0, result
        return json.loads(result.stdout)

    first = ask("What moved?")
    assert first["usage"]["cached_tokens"] == 0
    (path,) = folder().glob("*.state")
    raw = path.read_bytes()
    (length,) = struct.unpack("<I", raw[8:12])
    header = json.loads(raw[12:12 + length])
    planned = json.loads(invoke("plan", "starter", "--json").stdout)["prompt_state"]
    per_token, predicted = header["state_bytes"] / header["n_tokens"], planned["bytes"] / planned["tokens"]
    assert abs(per_token / predicted - 1) < 0.02, f"plan says {predicted:.0f} bytes a token on disk; saved: {per_token:.0f}"
    second, cold = ask("When?"), ask("When?", "--no-cache")
    assert second["usage"]["cached_tokens"] >= 1536 and second["usage"]["cached_tokens"] % 128 == 0, second["usage"]
    assert cold["usage"]["cached_tokens"] == 0
    assert second["text"] == cold["text"], "restored to a whole read step: the same answer as a cold read"
    assert second["timings"]["prompt_s"] < cold["timings"]["prompt_s"] / 2
    other = ask("When?", "--ctx", "4096")
    assert other["usage"]["cached_tokens"] == 0, "a state made for another window is not used"


SYSTEM = " ".join(f"Rule {i}: answer in plain words and keep item {i} in mind." for i in range(40))
GREEDY = SamplingOptions(temperature=0, max_tokens=12)


def chat_turns(model, store: ChatStore, conversation: int | None, *texts: str) -> tuple[int, list]:
    """Send texts in a (new or reopened) conversation; its id and each answer's Finished."""
    if conversation is None:
        session = ChatSession(model, store, "starter", SYSTEM, GREEDY)
    else:
        session = ChatSession.resume(model, store, "starter", conversation, GREEDY)
    done = [next(e for e in session.send(text) if isinstance(e, Finished)) for text in texts]
    return session.conversation_id, done


@pytest.mark.slow
def test_a_reopened_chat_goes_on_from_its_saved_state_as_if_never_closed(starter_gguf):
    texts = ("Name a fruit.", "Name a colour.", "Name an animal.")
    with load_model(starter_gguf, chat_load_options(n_ctx=2048, n_threads=2, speculation="off")) as model:
        conversation, _ = chat_turns(model, ChatStore(), None, *texts[:2])
    assert list(folder().glob("*.state")), "the chat's state is on disk once it is closed"
    with load_model(starter_gguf, chat_load_options(n_ctx=2048, n_threads=2, speculation="off")) as model:
        _, (reopened,) = chat_turns(model, ChatStore(), conversation, texts[2])
    with load_model(starter_gguf, chat_load_options(n_ctx=2048, n_threads=2, prompt_cache="", speculation="off")) as model:
        reference, never_closed = chat_turns(model, ChatStore(), None, *texts)
    assert reopened.usage.cached_tokens == never_closed[2].usage.cached_tokens > 400, \
        "the reopened chat reads only its new turn, as the open one did"
    assert ChatStore().messages(conversation)[-1].content == ChatStore().messages(reference)[-1].content, \
        "the same answer as a chat never closed"


def ask_server(server: AppServer, question: str) -> dict:
    reply = httpx.post(f"{server.url}/v1/chat/completions", timeout=120, json={
        "model": "starter", "temperature": 0, "max_tokens": 12,
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]})
    assert reply.status_code == 200, reply.text
    return reply.json()


def starter_server(starter_gguf, **options) -> AppServer:
    load = LoadOptions(n_ctx=1024, n_threads=2, n_seq=2, prompt_cache="live", speculation="off", **options)
    return AppServer(ServerConfig(load_options=load, default_model=str(starter_gguf), quiet=True,
                                  served=find_installed(str(starter_gguf))))


@pytest.mark.slow
def test_serve_loads_a_saved_system_prompt_after_a_restart_and_answers_as_from_memory(starter_gguf, tmp_path, monkeypatch):
    monkeypatch.setenv(state_cache.ENV_FOLDER, str(tmp_path / "reference"))
    reference = starter_server(starter_gguf)
    try:
        ask_server(reference, "What is rule 3?")
        from_memory = ask_server(reference, "What is rule 7?")
    finally:
        reference.stop()
    assert from_memory["usage"]["prompt_tokens_details"]["cached_tokens"] > 400, "the system prompt was read once"

    monkeypatch.setenv(state_cache.ENV_FOLDER, str(tmp_path / "states"))
    first = starter_server(starter_gguf)
    try:
        ask_server(first, "What is rule 3?")
        deadline = time.monotonic() + 20
        while not list(folder().glob("*.state")):  # saved in the engine's idle time, while serving
            assert time.monotonic() < deadline, "no state was saved while the server was idle"
            time.sleep(0.05)
    finally:
        first.stop()
    restarted = starter_server(starter_gguf)
    try:
        from_disk = ask_server(restarted, "What is rule 7?")
    finally:
        restarted.stop()
    assert from_disk["usage"]["prompt_tokens_details"]["cached_tokens"] == \
        from_memory["usage"]["prompt_tokens_details"]["cached_tokens"], "the restarted server read only the question"
    assert from_disk["choices"][0]["message"]["content"] == from_memory["choices"][0]["message"]["content"]



def test_the_cache_command_shows_sets_the_budget_and_clears():
    store = StateCache("k" * 32)
    for i in range(3):
        store.save([i] + TOKENS, bytes(1000))
    shown = json.loads(invoke("cache", "--json").stdout)
    assert shown["states"] == 3 and shown["bytes"] > 3000 and shown["budget"] == state_cache.DEFAULT_BUDGET
    assert "3 saved" in invoke("cache").stdout
    squeezed = invoke("cache", "--budget", "5K", "--json")
    assert squeezed.returncode == 0 and json.loads(squeezed.stdout)["budget"] == 5120
    assert json.loads(squeezed.stdout)["states"] == 1, "a smaller budget evicts at once, the oldest first"
    assert load_config()["prompt_cache_bytes"] == 5120 and state_cache.budget() == 5120
    cleared = invoke("cache", "--clear")
    assert cleared.returncode == 0 and "Deleted 1 saved prompt state" in cleared.stdout
    assert not list(folder().glob("*.state"))
    assert_one_line_error(invoke("cache", "--budget", "lots"), 2, "--budget", "4G")


@pytest.mark.slow
def test_a_model_file_replaced_under_the_same_name_does_not_get_the_old_state(starter_gguf, tmp_path):
    model = tmp_path / "model.gguf"
    shutil.copyfile(starter_gguf, model)
    document = "\n".join(f"Entry {i}: a parcel left the depot at {i} o'clock." for i in range(60)).encode()

    def cached() -> int:
        result = run_cli("run", "-m", str(model), "--json", "-t", "0", "--max-tokens", "4", "-p", "Which entry?",
                         stdin=document)
        assert result.returncode == 0, result
        return json.loads(result.stdout)["usage"]["cached_tokens"]

    assert cached() == 0 and cached() > 256, "the same file: its state is used"
    replacement = tmp_path / "replacement.gguf"
    shutil.copyfile(starter_gguf, replacement)
    os.replace(replacement, model)
    assert cached() == 0, "another file under the same name starts from nothing"


def test_a_folder_that_cannot_be_written_only_means_nothing_is_saved(tmp_path, monkeypatch, capfd):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(state_cache.ENV_FOLDER, str(blocker / "states"))
    StateCache("k" * 32, verbose=True).save(TOKENS, bytes(100))
    assert "localllm: prompt cache: not saved" in capfd.readouterr().err
    assert StateCache("k" * 32).find(TOKENS + [1]) is None
