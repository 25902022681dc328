"""A chat: its messages, the context window they use, and a crash-safe store. No UI here.

The TUI renders a ChatSession; a server could too. Messages live in SQLite (WAL journal); an
answer being written is also appended, token by token, to a small log file beside it (see
AnswerLog), so a killed process loses at most the token being written. When the history no
longer fits the context window, the oldest turns leave the context (the system prompt never
does) and a ContextNotice says so: nothing is dropped silently, and dropped turns stay in the
transcript and the store.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .chat_images import STAND_IN, ChatImages
from .config import home, private_dir
from .errors import ContextOverflowError, StoreError, UsageError
from .events import Event, Finished, Reasoning, Token
from .images import Picture
from .options import SamplingOptions

STORE_FILE = "chats.sqlite3"
THOUGHT_SUFFIX = ".think"  # beside an answer's log: the reasoning written so far
WARN_AT = 0.75  # share of the window in use that triggers a warning
IMAGE_SUFFIX = re.compile(r"\.(png|jpe?g|webp|gif|bmp|tiff?)")
IMAGE_NAME = re.compile(r"[0-9a-f]{64}(\.[a-z]{3,4})?")  # what keep_image names a kept image
SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    id INTEGER PRIMARY KEY, title TEXT NOT NULL, model TEXT NOT NULL, system TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL, updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY, conversation INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    role TEXT NOT NULL, content TEXT NOT NULL, complete INTEGER NOT NULL DEFAULT 1, created REAL NOT NULL,
    reasoning TEXT NOT NULL DEFAULT '', images TEXT NOT NULL DEFAULT '');
CREATE INDEX IF NOT EXISTS messages_by_conversation ON messages(conversation, id);
"""


@dataclass
class ChatMessage:
    role: str
    content: str
    id: int | None = None
    complete: bool = True  # False while streaming, or if the process died mid-reply
    reasoning: str = ""  # a thinking model's reasoning: shown folded, never sent back to the model
    images: tuple[str, ...] = ()  # files in the store's image folder (ChatStore.keep_image), shown before the text


@dataclass(frozen=True)
class Conversation:
    id: int
    title: str
    model: str
    system: str
    updated: float


@dataclass(frozen=True)
class ContextNotice:
    """The context window is filling up ("warning") or turns left it ("trimmed")."""

    kind: str
    used: int
    n_ctx: int
    dropped: int = 0  # messages that left the context

    @property
    def text(self) -> str:
        if self.kind == "trimmed":
            return (f"context full: the {self.dropped} oldest messages no longer reach the model "
                    f"(the system prompt stays); {self.used}/{self.n_ctx} tokens in use")
        return f"context {self.used}/{self.n_ctx} tokens ({self.used * 100 // self.n_ctx}%): older messages will be dropped when it is full"


def _store_error(path: Path, exc: Exception) -> StoreError:
    if "full" in str(exc).lower() or getattr(exc, "errno", None) == errno.ENOSPC:
        return StoreError(f"disk full: the chat could not be saved in {path.parent}; free some space and send again")
    return StoreError(f"the chat could not be saved in {path} ({exc})")


class ChatStore:
    """Conversations in SQLite. Safe to use from the UI thread and one worker thread."""

    def __init__(self, path: Path | None = None):
        self.path = path or home() / STORE_FILE
        private_dir(self.path.parent)
        # SQLite gives its -wal and -shm files the database file's mode: made 0600 first, so all are.
        os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
        for own in (self.path, self.path.with_name(self.path.name + "-wal"), self.path.with_name(self.path.name + "-shm")):
            if own.exists() and own.stat().st_mode & 0o077:
                os.chmod(own, 0o600)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            # WAL: a commit is a short append, so saving each token is cheap, and a killed process
            # leaves every committed write intact.
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.executescript(SCHEMA)
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(messages)")}
            if "reasoning" not in columns:  # a store made before reasoning was kept
                self._db.execute("ALTER TABLE messages ADD COLUMN reasoning TEXT NOT NULL DEFAULT ''")
            if "images" not in columns:  # ... or before images were
                self._db.execute("ALTER TABLE messages ADD COLUMN images TEXT NOT NULL DEFAULT ''")
        except sqlite3.DatabaseError as exc:
            raise UsageError(f"the chat store {self.path} cannot be opened ({exc}); move it aside to start afresh") from exc

        self._logs = self.path.with_name(self.path.name + ".partial")
        self._live: dict[int, AnswerLog] = {}
        self._recover()

    def _recover(self) -> None:
        """Fold the logs of answers whose writer died into their messages, marked unfinished."""
        import psutil

        for log in self._logs.glob("*.log") if self._logs.is_dir() else ():
            message_id, _, pid = log.stem.partition(".")
            if not (message_id.isdigit() and pid.isdigit()) or psutil.pid_exists(int(pid)):
                continue  # another process is still writing it
            text = log.read_bytes().decode("utf-8", "ignore")  # a kill can cut the last character short
            self._run("UPDATE messages SET content = ? WHERE id = ? AND complete = 0", (text, int(message_id)))
            thought = log.with_suffix(THOUGHT_SUFFIX)
            if thought.exists():  # removed before the log, so a second recovery keeps what the first saved
                self._run("UPDATE messages SET reasoning = ? WHERE id = ? AND complete = 0",
                          (thought.read_bytes().decode("utf-8", "ignore"), int(message_id)))
                thought.unlink()
            log.unlink()

    def _run(self, sql: str, args: tuple = ()) -> sqlite3.Cursor:
        with self._lock:
            try:
                return self._db.execute(sql, args)
            except sqlite3.Error as exc:
                raise _store_error(self.path, exc) from exc

    def create(self, model: str, system: str = "", title: str = "New chat") -> int:
        now = time.time()
        return self._run("INSERT INTO conversations (title, model, system, created, updated) VALUES (?, ?, ?, ?, ?)",
                         (title, model, system, now, now)).lastrowid

    def conversations(self) -> list[Conversation]:
        rows = self._run("SELECT id, title, model, system, updated FROM conversations ORDER BY updated DESC, id DESC")
        return [Conversation(*row) for row in rows.fetchall()]

    def conversation(self, conversation_id: int) -> Conversation | None:
        row = self._run("SELECT id, title, model, system, updated FROM conversations WHERE id = ?", (conversation_id,)).fetchone()
        return Conversation(*row) if row else None

    def messages(self, conversation_id: int) -> list[ChatMessage]:
        rows = self._run("SELECT role, content, id, complete, reasoning, images FROM messages WHERE conversation = ? "
                         "ORDER BY id", (conversation_id,))
        return [ChatMessage(role, content if complete else self._written_so_far(id_, content), id_, bool(complete), reasoning,
                            tuple(n for n in images.split("\n") if IMAGE_NAME.fullmatch(n)))
                for role, content, id_, complete, reasoning, images in rows.fetchall()]

    @property
    def image_folder(self) -> Path:
        return self.path.with_name("images")

    def keep_image(self, source: Path) -> str:
        """A copy of an image a message shows, kept as long as the chats are (the file the user
        named may move): checked to be an image first, named by its SHA-256."""
        from .images import MAX_BYTES, from_file

        from_file(str(source))  # a clear error now, not when the chat is read again
        with source.open("rb") as handle:
            data = handle.read(MAX_BYTES + 1)
        name = hashlib.sha256(data).hexdigest() + (source.suffix.lower() if IMAGE_SUFFIX.fullmatch(source.suffix.lower()) else "")
        target = self.image_folder / name
        if not target.exists():
            private_dir(self.image_folder)
            partial = target.with_name(name + ".partial")
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(partial, target)
        return name

    def _written_so_far(self, message_id: int, saved: str) -> str:
        """An unfinished answer as far as it is written, here or by another process."""
        if message_id in self._live:
            return self._live[message_id].message.content
        log = next(self._logs.glob(f"{message_id}.*.log"), None) if self._logs.is_dir() else None
        try:
            return log.read_bytes().decode("utf-8", "ignore") if log else saved
        except FileNotFoundError:  # its writer finished meanwhile
            row = self._run("SELECT content FROM messages WHERE id = ?", (message_id,)).fetchone()
            return row[0] if row else saved

    def add(self, conversation_id: int, message: ChatMessage) -> ChatMessage:
        now = time.time()
        message.id = self._run("INSERT INTO messages (conversation, role, content, complete, created, images) "
                               "VALUES (?, ?, ?, ?, ?, ?)", (conversation_id, message.role, message.content,
                                                             int(message.complete), now, "\n".join(message.images))).lastrowid
        self._run("UPDATE conversations SET updated = ? WHERE id = ?", (now, conversation_id))
        return message

    def save(self, message: ChatMessage) -> None:
        self._run("UPDATE messages SET content = ?, complete = ?, reasoning = ? WHERE id = ?",
                  (message.content, int(message.complete), message.reasoning, message.id))

    def stream(self, message: ChatMessage) -> AnswerLog:
        """Start saving a message token by token; end with finish()."""
        private_dir(self._logs)
        log = AnswerLog(self._logs / f"{message.id}.{os.getpid()}.log", message)
        self._live[message.id] = log
        return log

    def finish(self, message: ChatMessage) -> None:
        """Save a streamed message whole and drop its log (in that order: a kill between the two
        leaves a log that recovery ignores, since the message is complete)."""
        self.save(message)
        log = self._live.pop(message.id, None)
        if log is not None:
            log.discard()

    def remove(self, message: ChatMessage) -> None:
        self._run("DELETE FROM messages WHERE id = ?", (message.id,))

    def update(self, conversation_id: int, **fields: str) -> None:
        for key, value in fields.items():
            if key not in ("title", "model", "system"):
                raise ValueError(key)
            self._run(f"UPDATE conversations SET {key} = ? WHERE id = ?", (value, conversation_id))

    def delete(self, conversation_id: int) -> None:
        """Remove a chat, and the copies of its images that no other chat shows."""
        names = {name for m in self.messages(conversation_id) for name in m.images}
        self._run("DELETE FROM conversations WHERE id = ?", (conversation_id,))
        for name in names:
            if self._run("SELECT 1 FROM messages WHERE instr(images, ?) > 0 LIMIT 1", (name,)).fetchone() is None:
                (self.image_folder / name).unlink(missing_ok=True)

    def close(self) -> None:
        with self._lock:
            self._db.close()


def to_markdown(conversation: Conversation, messages: list[ChatMessage]) -> str:
    lines = [f"# {conversation.title}", "", f"Model: `{conversation.model}`", ""]
    if conversation.system:
        lines += ["**System:**", "", conversation.system, ""]
    for m in messages:
        lines += [f"**{'You' if m.role == 'user' else 'Assistant'}:**", ""]
        if m.reasoning:  # folded, as the chat shows it
            lines += ["<details><summary>thinking</summary>", "", m.reasoning.strip(), "", "</details>", ""]
        lines += [f"*[image: {name}]*" for name in m.images] + ([""] if m.images else [])
        lines += [m.content + ("" if m.complete else " *(interrupted)*"), ""]
    return "\n".join(lines)


class AnswerLog:
    """An answer being written: each token goes onto the message and into a log file.

    A SQLite commit for every token took about 0.1 ms of the generating thread (1-2% of a small
    model's token time); an append to a file takes a few microseconds and, like the WAL commit,
    survives the process being killed. The finished answer goes to SQLite in one write.
    """

    def __init__(self, path: Path, message: ChatMessage):
        self.path, self.message = path, message
        self._fd = _append_only(path)
        self._thought_fd: int | None = None  # opened at the first reasoning, for thinking models only

    def append(self, text: str) -> None:
        self.message.content += text
        self._write(self._fd, text)

    def think(self, text: str) -> None:
        """Reasoning, kept as the answer is: recovered with it if the process dies."""
        self.message.reasoning += text
        if self._thought_fd is None:
            self._thought_fd = _append_only(self.path.with_suffix(THOUGHT_SUFFIX))
        self._write(self._thought_fd, text)

    def _write(self, fd: int, text: str) -> None:
        try:
            os.write(fd, text.encode("utf-8"))
        except OSError as exc:
            raise _store_error(self.path, exc) from exc

    def discard(self) -> None:
        if self._thought_fd is not None:
            os.close(self._thought_fd)
            self.path.with_suffix(THOUGHT_SUFFIX).unlink(missing_ok=True)
        os.close(self._fd)
        self.path.unlink(missing_ok=True)


def _append_only(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)


@dataclass
class ChatSession:
    """One conversation with a loaded model. Not thread-safe: one reply at a time."""

    model: object  # localllm.Model, or anything with n_ctx, chat_template, tokenize, format_chat, chat
    store: ChatStore
    model_name: str
    system: str = ""
    sampling: SamplingOptions = field(default_factory=SamplingOptions)
    conversation_id: int | None = None
    messages: list[ChatMessage] = field(default_factory=list)
    first_in_context: int = 0  # index of the oldest message the model still sees
    used_tokens: int = 0
    think: bool | None = None  # a thinking model's switch, where its template has one (None: its default)

    def __post_init__(self) -> None:
        self.images = ChatImages(self.store.image_folder, self.model)

    @classmethod
    def resume(cls, model, store: ChatStore, model_name: str, conversation_id: int, sampling: SamplingOptions | None = None,
               think: bool | None = None) -> ChatSession:
        conversation = store.conversation(conversation_id)
        if conversation is None:
            raise UsageError(f"there is no conversation {conversation_id}")
        session = cls(model, store, model_name, conversation.system, sampling or SamplingOptions(), conversation_id,
                      store.messages(conversation_id), think=think)
        session._fit_context(reserve=0)
        return session

    @property
    def n_ctx(self) -> int:
        return self.model.n_ctx

    @property
    def reserve(self) -> int:
        """Tokens kept free for the reply when deciding what history fits."""
        return max(64, min(1024, self.n_ctx // 8))

    def send(self, text: str, images: Sequence[Path] = ()) -> Iterator[Event | ContextNotice]:
        """`images`: files the model sees with the text (a vision model's)."""
        if not text.strip():
            raise UsageError("the message is empty")
        if images and getattr(self.model, "image_marker", None) is None:
            raise UsageError(f"{self.model_name} cannot see images: it is a text-only model")
        kept = tuple(self.store.keep_image(Path(image)) for image in images)
        self._ensure_conversation(title=text)
        self.messages.append(self.store.add(self.conversation_id, ChatMessage("user", text, images=kept)))
        return self._reply()

    def regenerate(self) -> Iterator[Event | ContextNotice]:
        """Replace the last answer with a new one."""
        if not self.messages or self.messages[-1].role != "assistant":
            raise UsageError("there is no answer to regenerate")
        self.store.remove(self.messages.pop())
        return self._reply()

    def edit_last(self, text: str) -> Iterator[Event | ContextNotice]:
        """Replace the last prompt (and drop its answer), then answer again."""
        if not text.strip():
            raise UsageError("the message is empty")
        while self.messages and self.messages[-1].role == "assistant":
            self.store.remove(self.messages.pop())
        if not self.messages:
            raise UsageError("there is no prompt to edit")
        last = self.messages[-1]
        last.content = text
        self.store.save(last)
        return self._reply()

    def last_user_text(self) -> str | None:
        return next((m.content for m in reversed(self.messages) if m.role == "user"), None)

    def set_system(self, system: str) -> None:
        self.system = system
        if self.conversation_id is not None:
            self.store.update(self.conversation_id, system=system)
        self._fit_context(reserve=0)

    def _ensure_conversation(self, title: str) -> None:
        if self.conversation_id is None:
            title = " ".join(title.split())
            self.conversation_id = self.store.create(self.model_name, self.system, title[:60] or "New chat")

    def _chat_messages(self, start: int, stand_in: Picture | None = None) -> list[dict]:
        """The messages from `start` as the model reads them; `stand_in`: a Picture put in place of every image."""
        head = [{"role": "system", "content": self.system}] if self.system else []
        sees = getattr(self.model, "image_marker", None) is not None  # else the image is refused by name when sent

        def image(name: str):
            return stand_in or (self.images.picture(name) if sees else self.store.image_folder / name)

        return head + [{"role": m.role, "content": [*({"type": "image", "image": image(name)} for name in m.images),
                                                     {"type": "text", "text": m.content}] if m.images else m.content}
                       for m in self.messages[start:] if m.content or m.role == "user"]

    def _count(self, start: int) -> int:
        """The tokens of the history from `start`, each image a small stand-in plus what it adds beyond
        it (localllm.chat_images): a probe of what fits decodes no image."""
        from .generation.media import split, text_of
        from .generation.request import render

        messages, marker = self._chat_messages(start, STAND_IN), getattr(self.model, "image_marker", None)
        if marker is None:  # counted as text: sending it to this model says it cannot see them
            messages = [{**m, "content": text_of(m["content"])} for m in messages]
        messages, pictures = split(messages, marker, self.model_name)
        prompt = render(self.model, messages, self.think)[0]
        if not pictures:
            return len(self.model.tokenize(prompt))
        return len(self.model.tokenize_images(prompt, pictures)) + sum(map(self.images.beyond_stand_in, self._images_from(start)))

    def _images_from(self, start: int) -> list[str]:
        return [name for m in self.messages[start:] for name in m.images]

    def _fit_context(self, reserve: int) -> int:
        """Move first_in_context past whole turns until the history fits; return messages dropped.

        Which turns fit is found from the end: counting a suffix costs what the suffix holds, so
        the search probes suffixes of 1, 2, 4... turns back, then bisects. A resumed chat of
        10,000 messages is never formatted whole (that was quadratic: 34 s for 1,000 messages)."""
        start = self.first_in_context
        if start >= len(self.messages):
            self.used_tokens = 0
            return 0
        last = len(self.messages) - 1
        # Where the kept history may begin: here, at a later user turn, or the last message.
        starts = [start] + [i for i in range(start + 1, last + 1) if self.messages[i].role == "user"]
        if starts[-1] != last:
            starts.append(last)
        counts: dict[int, int] = {}

        def fits(k: int) -> bool:
            if k not in counts:
                counts[k] = self._count(starts[k])
            return counts[k] + reserve <= self.n_ctx

        k = len(starts) - 1
        if fits(k):
            step, bad = 1, None
            while k > 0:  # gallop back while it still fits
                probe = max(0, k - step)
                if not fits(probe):
                    bad = probe
                    break
                k, step = probe, step * 2
            if bad is not None:  # the first fitting start lies in (bad, k]
                low, high = bad, k
                while high - low > 1:
                    middle = (low + high) // 2
                    low, high = (low, middle) if fits(middle) else (middle, high)
                k = high
        used = counts[k]
        if used + min(reserve, 1) > self.n_ctx:
            raise ContextOverflowError(used, self.n_ctx, getattr(self.model, "n_ctx_train", self.n_ctx))
        dropped = starts[k] - self.first_in_context
        self.first_in_context, self.used_tokens = starts[k], used
        return dropped

    def _reply(self) -> Iterator[Event | ContextNotice]:
        dropped = self._fit_context(self.reserve)
        if dropped:
            yield ContextNotice("trimmed", self.used_tokens, self.n_ctx, dropped)
        self.images.keep_only(self._images_from(self.first_in_context))  # decoded images whose turns left go
        events = self.model.chat(self._chat_messages(self.first_in_context), self.sampling, think=self.think)
        answer = self.store.add(self.conversation_id, ChatMessage("assistant", "", complete=False))
        self.messages.append(answer)
        log = self.store.stream(answer)
        finished = None
        try:
            for event in events:
                if isinstance(event, Token):
                    log.append(event.text)
                elif isinstance(event, Reasoning):
                    log.think(event.text)
                elif isinstance(event, Finished):
                    finished = event
                yield event
        finally:
            events.close()  # a stopped reply stops llama.cpp too
            answer.complete = True
            self.store.finish(answer)
            if finished is not None:
                self.used_tokens = finished.usage.prompt_tokens + finished.usage.completion_tokens
            else:  # stopped: the words kept count too
                self.used_tokens = self._count(self.first_in_context)
        if finished is not None and self.used_tokens + self.reserve > WARN_AT * self.n_ctx:
            yield ContextNotice("warning", self.used_tokens, self.n_ctx)

