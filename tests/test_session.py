"""The chat store: an answer is saved token by token (an append-only log beside the SQLite file)
and a killed writer loses nothing that was written."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from localllm.events import Finished, Reasoning, Timings, Token, Usage
from localllm.session import ChatMessage, ChatSession, ChatStore


class Words:
    """A model stand-in that answers word0 word1 ...; only the store is under test here."""

    n_ctx = n_ctx_train = 4096
    chat_template = None

    def __init__(self, words: int):
        self.words = words

    def tokenize(self, text):
        return text.split()

    def format_chat(self, messages):
        return " ".join(m["content"] for m in messages)

    def chat(self, messages, sampling, think=None):
        for i in range(self.words):
            yield Token(f"word{i} ")
        yield Finished("stop", Usage(1, self.words), Timings(0.1, 0.1, 1.0, 100.0, 100.0), 1)


class Thinker(Words):
    """Reasons in `thoughts` Reasoning events, then answers as Words does."""

    def __init__(self, thoughts: int, words: int):
        super().__init__(words)
        self.thoughts = thoughts

    def chat(self, messages, sampling, think=None):
        for i in range(self.thoughts):
            yield Reasoning(f"thought{i} ")
        yield from super().chat(messages, sampling)


def test_an_answer_being_written_is_readable_elsewhere_and_saved_whole(tmp_path):
    path = tmp_path / "chats.sqlite3"
    session = ChatSession(Words(50), ChatStore(path), "m")
    events = session.send("go")
    for _ in range(10):
        next(events)
    reader = ChatStore(path)  # another reader, as another process would open it
    answer = reader.messages(session.conversation_id)[-1]
    assert (answer.content, answer.complete) == ("".join(f"word{i} " for i in range(10)), False)
    assert len(list((tmp_path / "chats.sqlite3.partial").glob("*.log"))) == 1, "a live log is not recovered by a reader"
    for _ in events:
        pass
    answer = reader.messages(session.conversation_id)[-1]
    assert (answer.content, answer.complete) == ("".join(f"word{i} " for i in range(50)), True)
    assert not list((tmp_path / "chats.sqlite3.partial").glob("*.log"))


def killed_mid_answer(path, model: str, after: int) -> int:
    """A chat writing into the store at `path` with `model` (an expression over this module),
    killed (SIGKILL) after `after` events; its conversation's id."""
    child = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        import test_session
        from localllm.session import ChatSession, ChatStore
        session = ChatSession(test_session.{model}, ChatStore(Path({str(path)!r})), "m")
        for i, event in enumerate(session.send("go")):
            if i == {after}:
                print(session.conversation_id, flush=True)
                time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True, cwd=path.parent)
    conversation = int(proc.stdout.readline())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return conversation


@pytest.mark.slow
def test_a_killed_writers_answer_is_recovered_marked_unfinished(tmp_path):
    path = tmp_path / "chats.sqlite3"
    conversation = killed_mid_answer(path, "Words(10**6)", after=300)
    answer = ChatStore(path).messages(conversation)[-1]
    assert answer.content == "".join(f"word{i} " for i in range(301)) and not answer.complete
    assert not list((tmp_path / "chats.sqlite3.partial").glob("*.log")), "recovered into SQLite"
    assert ChatStore(path).messages(conversation)[-1].content == answer.content


@pytest.mark.slow
def test_a_killed_thinking_models_reasoning_is_recovered_with_its_answer(tmp_path):
    path = tmp_path / "chats.sqlite3"
    conversation = killed_mid_answer(path, "Thinker(100, 10**6)", after=150)
    answer = ChatStore(path).messages(conversation)[-1]
    assert answer.reasoning == "".join(f"thought{i} " for i in range(100)) and not answer.complete
    assert answer.content == "".join(f"word{i} " for i in range(51))
    assert not list((tmp_path / "chats.sqlite3.partial").iterdir()), "both logs recovered into SQLite"
    # A finished one keeps its reasoning and leaves no file behind.
    session = ChatSession(Thinker(3, 2), ChatStore(path), "m")
    for _ in session.send("again"):
        pass
    assert ChatStore(path).messages(session.conversation_id)[-1].reasoning == "thought0 thought1 thought2 "
    assert not list((tmp_path / "chats.sqlite3.partial").iterdir())


def test_a_finished_answer_ignores_a_log_left_behind(tmp_path):
    path = tmp_path / "chats.sqlite3"
    session = ChatSession(Words(5), ChatStore(path), "m")
    for _ in session.send("go"):
        pass
    logs = tmp_path / "chats.sqlite3.partial"
    (logs / f"{session.messages[-1].id}.999999999.log").write_text("stale")  # killed between save and delete
    answer = ChatStore(path).messages(session.conversation_id)[-1]
    assert answer.content == "".join(f"word{i} " for i in range(5)) and answer.complete
    assert not list(logs.glob("*.log"))


def test_everything_holding_user_text_is_private(isolated_home):
    import stat

    from localllm.config import home, save_config
    from localllm.session import ChatMessage, ChatStore

    store = ChatStore()
    conversation = store.create("m", "", "secret chat")
    message = store.add(conversation, ChatMessage("assistant", "", complete=False))
    log = store.stream(message)
    log.append("private words")
    save_config({"chat": {"system": "private"}})
    folder = home()
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"chats.sqlite3", "chats.sqlite3-wal", "config.json"}
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    for path in (p for p in folder.rglob("*") if p.is_dir()):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
    store.finish(message)
    store.close()


def _linear_fit(session, reserve):
    """The turn-by-turn search _fit_context replaced, kept as the reference it must agree with."""
    start, last = session.first_in_context, len(session.messages) - 1
    used = session._count(start)
    while used + reserve > session.n_ctx and start < last:
        start += 1
        while start < last and session.messages[start].role != "user":
            start += 1
        used = session._count(start)
    return start, used


def test_fitting_a_long_history_agrees_with_the_turn_by_turn_search(tmp_path):
    import random

    from localllm.session import ChatMessage

    rng = random.Random(17)
    store = ChatStore(tmp_path / "chats.sqlite3")
    for trial in range(40):
        model = Words(0)
        model.n_ctx = rng.choice([64, 256, 1024])
        messages = []
        for i in range(rng.randint(1, 120)):
            role = "user" if i % 2 == 0 or rng.random() < 0.1 else "assistant"
            messages.append(ChatMessage(role, " ".join("w" for _ in range(rng.randint(1, 40)))))
        session = ChatSession(model, store, "m", "", messages=messages)
        reserve = rng.choice([0, 8, 64])
        expected = _linear_fit(session, reserve)
        try:
            session._fit_context(reserve)
        except Exception:
            assert expected[1] + min(reserve, 1) > model.n_ctx, "only a last message that cannot fit is refused"
            continue
        assert (session.first_in_context, session.used_tokens) == expected, trial


def test_resuming_a_long_chat_counts_a_suffix_not_the_whole_history(tmp_path):
    from localllm.session import ChatMessage

    class Counting(Words):
        formatted = 0

        def format_chat(self, messages):
            Counting.formatted += len(messages)
            return super().format_chat(messages)

    store = ChatStore(tmp_path / "chats.sqlite3")
    conversation = store.create("m", "", "long")
    for i in range(10_000):
        store.add(conversation, ChatMessage("user" if i % 2 == 0 else "assistant", "some words in a message " * 3))
    model = Counting(0)
    session = ChatSession.resume(model, store, "m", conversation)
    assert session.used_tokens <= model.n_ctx and session.first_in_context > 9_000
    assert Counting.formatted < 20 * 600, "the search formats a few suffixes, never the 10,000 messages again and again"


def test_a_store_from_before_reasoning_was_kept_opens_and_keeps_its_chats(tmp_path):
    import sqlite3

    path = tmp_path / "chats.sqlite3"
    old = sqlite3.connect(path)
    old.executescript("""
        CREATE TABLE conversations (id INTEGER PRIMARY KEY, title TEXT NOT NULL, model TEXT NOT NULL,
            system TEXT NOT NULL DEFAULT '', created REAL NOT NULL, updated REAL NOT NULL);
        CREATE TABLE messages (id INTEGER PRIMARY KEY, conversation INTEGER NOT NULL REFERENCES conversations(id)
            ON DELETE CASCADE, role TEXT NOT NULL, content TEXT NOT NULL, complete INTEGER NOT NULL DEFAULT 1,
            created REAL NOT NULL);
        INSERT INTO conversations VALUES (1, 'old', 'm', '', 0, 0);
        INSERT INTO messages VALUES (1, 1, 'user', 'Hi', 1, 0), (2, 1, 'assistant', 'Hello', 1, 0);""")
    old.commit()
    old.close()
    store = ChatStore(path)
    assert [(m.role, m.content, m.reasoning) for m in store.messages(1)] == [("user", "Hi", ""), ("assistant", "Hello", "")]
    answer = store.messages(1)[1]
    answer.reasoning = "They greeted me."
    store.save(answer)
    store.close()
    assert ChatStore(path).messages(1)[1].reasoning == "They greeted me."


def test_deleting_a_chat_deletes_the_images_only_it_shows(tmp_path):
    from PIL import Image

    store = ChatStore(tmp_path / "chats.sqlite3")
    kept = []
    for color in ("red", "blue"):
        Image.new("RGB", (8, 8), color).save(tmp_path / f"{color}.png")
        kept.append(store.keep_image(tmp_path / f"{color}.png"))
    shared, own = kept
    first, second = store.create("m"), store.create("m")
    store.add(first, ChatMessage("user", "both", images=(shared, own)))
    store.add(second, ChatMessage("user", "one", images=(shared,)))
    store.delete(first)
    assert not (store.image_folder / own).exists(), "a deleted chat's own image goes with it"
    assert (store.image_folder / shared).exists(), "another chat still shows this one"
    assert store.messages(second)[0].images == (shared,)
    store.delete(second)
    assert list(store.image_folder.iterdir()) == []
