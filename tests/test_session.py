"""The chat store: an answer is saved token by token (an append-only log beside the SQLite file)
and a killed writer loses nothing that was written."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

from localllm.events import Finished, Timings, Token, Usage
from localllm.session import ChatSession, ChatStore


class Words:
    """A model stand-in that answers word0 word1 ...; only the store is under test here."""

    n_ctx = n_ctx_train = 4096

    def __init__(self, words: int):
        self.words = words

    def tokenize(self, text):
        return text.split()

    def format_chat(self, messages):
        return " ".join(m["content"] for m in messages)

    def chat(self, messages, sampling):
        for i in range(self.words):
            yield Token(f"word{i} ")
        yield Finished("stop", Usage(1, self.words), Timings(0.1, 0.1, 1.0, 100.0, 100.0), 1)


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


def test_a_killed_writers_answer_is_recovered_marked_unfinished(tmp_path):
    path = tmp_path / "chats.sqlite3"
    child = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from test_session import Words
        from localllm.session import ChatSession, ChatStore
        session = ChatSession(Words(10**6), ChatStore(Path({str(path)!r})), "m")
        for i, event in enumerate(session.send("go")):
            if i == 300:
                print(session.conversation_id, flush=True)
                time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True, cwd=tmp_path)
    conversation = int(proc.stdout.readline())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    answer = ChatStore(path).messages(conversation)[-1]
    assert answer.content == "".join(f"word{i} " for i in range(301)) and not answer.complete
    assert not list((tmp_path / "chats.sqlite3.partial").glob("*.log")), "recovered into SQLite"
    assert ChatStore(path).messages(conversation)[-1].content == answer.content


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
