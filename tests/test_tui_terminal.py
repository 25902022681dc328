"""The installed `localllm chat` in a real terminal (tmux): keys typed with send-keys, the screen read
back with capture-pane, the store read from disk. Also: a process killed mid-answer loses nothing saved."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid

import pytest
from conftest import LOCALLLM

from localllm.config import save_config
from localllm.session import ChatStore

pytestmark = pytest.mark.slow  # needs tmux on PATH, as this project's machines have


class Terminal:
    def __init__(self, *args: str, width: int = 100, height: int = 30, in_shell: bool = False):
        """in_shell: run under sh, which prints the exit status and keeps the pane open after it."""
        self.socket = f"localllm-test-{uuid.uuid4().hex[:8]}"
        command = [*LOCALLLM, *args]
        if in_shell:
            command = ["sh", "-c", " ".join(command) + '; echo "exited with $?"; sleep 600']
        env = [f"{k}={os.environ[k]}" for k in ("LOCALLLM_HOME", "HF_HOME", "HF_HUB_OFFLINE", "HOME", "LOCALLLM_CACHE", "PATH")]
        self.tmux("new-session", "-d", "-s", "chat", "-x", str(width), "-y", str(height), "env", *env, "TERM=xterm-256color",
                  *command)

    def tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True, check=True).stdout

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "chat")

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", "chat", *keys)

    def pid(self) -> int:
        return int(self.tmux("list-panes", "-t", "chat", "-F", "#{pane_pid}").strip())

    def wait(self, condition, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; the screen shows:\n{self.screen()}")
            time.sleep(0.1)

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True)


@pytest.fixture
def terminal():
    opened = []

    def open_(*args, **kwargs):
        opened.append(Terminal(*args, **kwargs))
        return opened[-1]

    yield open_
    for t in opened:
        t.close()


def messages(store_path):
    store = ChatStore(store_path)
    try:
        conversations = store.conversations()
        return store.messages(conversations[0].id) if conversations else []
    finally:
        store.close()


def test_a_prompt_typed_in_a_real_terminal_gets_an_answer(terminal, isolated_home):
    save_config({"chat": {"temperature": 0}})
    t = terminal("chat", "-m", "starter", "--ctx", "512")
    t.wait(lambda: "ctx 0/" in t.screen())
    t.keys("What is the capital of France?", "Enter")
    store = isolated_home / "localllm" / "chats.sqlite3"
    t.wait(lambda: len(messages(store)) == 2 and messages(store)[1].complete and "tok/s" in t.screen()
           and "- tok/s" not in t.screen())
    question, answer = messages(store)
    assert question.content == "What is the capital of France?" and answer.content.strip()
    last_words = " ".join(answer.content.split()[-3:])
    assert last_words in " ".join(t.screen().split()), "the view follows the answer to its end"
    t.keys("C-q")
    t.wait(lambda: subprocess.run(["tmux", "-L", t.socket, "has-session"], capture_output=True).returncode != 0, timeout=20)


def test_killing_the_app_mid_answer_keeps_what_was_written(terminal, isolated_home):
    save_config({"chat": {"temperature": 0}})  # greedy: this answer runs until the 512-token window is full
    t = terminal("chat", "-m", "starter", "--ctx", "512")
    t.wait(lambda: "ctx 0/" in t.screen())
    t.keys("Write a very long story about a dragon who learns to bake bread.", "Enter")
    store = isolated_home / "localllm" / "chats.sqlite3"
    t.wait(lambda: len(messages(store)) == 2 and len(messages(store)[1].content) > 200)
    seen = messages(store)[1].content
    os.kill(t.pid(), signal.SIGKILL)
    time.sleep(0.5)
    question, answer = messages(store)
    assert answer.content.startswith(seen) and not answer.complete, "every saved token survives, marked unfinished"

    t2 = terminal("chat", "--resume")
    t2.wait(lambda: "ctx " in t2.screen() and "- tok/s" in t2.screen())
    # The transcript is drawn just after the status line says the model is ready.
    t2.wait(lambda: " ".join(seen.split()[:4]) in " ".join(t2.screen().split()) or "Write a very long story" in t2.screen())


def test_a_crash_in_llama_cpp_leaves_the_terminal_clean_with_one_line(terminal):
    # SIGSEGV sent from outside stands in for a fault in llama.cpp's kernels: the same handler runs.
    t = terminal("chat", "-m", "starter", "--ctx", "512", in_shell=True)
    t.wait(lambda: "ctx 0/" in t.screen())
    chat = int(subprocess.run(["pgrep", "-P", str(t.pid())], capture_output=True, text=True, check=True).stdout.split()[0])
    os.kill(chat, signal.SIGSEGV)
    t.wait(lambda: "exited with" in t.screen(), timeout=20)
    screen = " ".join(t.screen().split())
    assert "localllm: error: llama.cpp crashed with a memory fault (SIGSEGV)" in screen and "exited with 9" in screen
    state = t.tmux("display-message", "-p", "-t", "chat", "alternate=#{alternate_on} mouse=#{mouse_any_flag}")
    assert state.split() == ["alternate=0", "mouse=0"], "the normal screen is back, mouse tracking off"


def test_sigterm_gives_the_terminal_back_and_saves_the_answer(terminal, isolated_home):
    save_config({"chat": {"temperature": 0}})
    t = terminal("chat", "-m", "starter", "--ctx", "512", in_shell=True)
    t.wait(lambda: "ctx 0/" in t.screen())
    t.keys("Write a very long story about a dragon.", "Enter")
    store = isolated_home / "localllm" / "chats.sqlite3"
    t.wait(lambda: len(messages(store)) == 2 and len(messages(store)[1].content) > 100)
    chat = int(subprocess.run(["pgrep", "-P", str(t.pid())], capture_output=True, text=True, check=True).stdout.split()[0])
    os.kill(chat, signal.SIGTERM)
    t.wait(lambda: "exited with" in t.screen(), timeout=30)
    assert "exited with 143" in t.screen()
    state = t.tmux("display-message", "-p", "-t", "chat", "alternate=#{alternate_on} mouse=#{mouse_any_flag}")
    assert state.split() == ["alternate=0", "mouse=0"], "the normal screen is back, mouse tracking off"
    assert messages(store)[1].complete and len(messages(store)[1].content) > 100, "the answer so far is saved"
