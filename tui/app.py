"""The chat app: conversation list, transcript, prompt and status bar over a localllm ChatSession.

Loading and generation run on one engine thread, never on the event loop. Tokens from the
generation thread collect in a buffer that a timer appends to the answer's Markdown in batches
(see FLUSH_MIN), so the generation thread never waits for the UI.
"""

from __future__ import annotations

import asyncio
import functools
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from textual import on
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Footer, ListView, Markdown, Static

from localllm.config import load_config, save_config
from localllm.engine import Engine
from localllm.errors import EXIT_TERMINATED, LocalLLMError
from localllm.events import Finished, PromptProgress, Reasoning, Token
from localllm.generation.reasoning import can_switch, thinks
from localllm.hardware import usable_cpus
from localllm.options import LoadOptions, SamplingOptions
from localllm.session import ChatSession, ChatStore, ContextNotice
from localllm.status import PromptEta

from .actions import ChatActions
from .errors import ErrorReporting, guarded
from .widgets import ConversationItem, PromptArea, StatusBar, reasoning_fold, user_message

# A streaming answer is drawn in batches, every FLUSH_MIN seconds. When llama.cpp has a thread on
# every CPU, each slice the UI takes from one stalls all its threads at the next barrier, so
# batches then come slower (up to FLUSH_MAX; the pace carries over to the next answer) while
# drawing takes more than UI_SHARE of a core. A batch costs Textual 20-30 ms of layout and
# rendering; measured on 2 cores (bench_chat.py), generation ran at 0.80x `localllm run` drawing
# 4 times a second, 0.93-0.956x once a second, 0.969x once every 2 seconds.
MAX_SHOWN = 200  # messages drawn when a chat is opened
FLUSH_MIN, FLUSH_MAX, UI_SHARE = 0.25, 2.0, 0.0125



class ChatApp(ErrorReporting, ChatActions, App):
    TITLE = "localllm"
    CSS_PATH = "app.tcss"
    # No binding takes a key the prompt's TextArea uses for editing (Ctrl+E end of line, Ctrl+D
    # delete, Ctrl+X cut, Ctrl+Y redo...): chat commands are on Ctrl+N/R/S/O/B/Q and function
    # keys. The footer lists what fits 80 columns; F1 lists all.
    BINDINGS = [
        Binding("f1", "help", "Help"),
        Binding("escape", "stop", "Stop", show=False),
        Binding("ctrl+n", "new_chat", "New"),
        Binding("ctrl+r", "regenerate", "Regenerate"),
        Binding("f3", "edit_last", "Edit last"),
        Binding("f4", "copy_last", "Copy", show=False),
        Binding("ctrl+s", "settings", "Settings"),
        Binding("ctrl+o", "models", "Models"),
        Binding("ctrl+b", "toggle_sidebar", "Chats", show=False),
        Binding("f2", "rename", "Rename", show=False),
        Binding("f8", "delete_chat", "Delete", show=False),
        Binding("f5", "export", "Export", show=False),
        Binding("f9", "attach_image", "Image", show=False),
        Binding("ctrl+q", "quit", "Quit"),
    ]

    def __init__(self, model_ref: str | None = None, resume: bool = False, load_options: LoadOptions | None = None,
                 store: ChatStore | None = None, hardware=None, loader: Callable | None = None, think: bool | None = None):
        super().__init__()
        self.think = think  # --think/--no-think, for the models whose template can switch
        config = load_config()
        saved = config.get("chat", {})
        self.model_ref, self.resume = model_ref, resume
        self.load_options = load_options or LoadOptions(n_ctx=saved.get("n_ctx"))
        self.sampling = SamplingOptions(temperature=saved.get("temperature", 0.8), top_p=saved.get("top_p", 0.95))
        self.system = saved.get("system", "")
        self.store = store or ChatStore()
        self._hardware = hardware
        self.loader = loader or _load
        self.model = None
        self.model_name = ""
        self.session: ChatSession | None = None
        self.generating = False
        self.stop_requested = threading.Event()
        # Everything that runs llama.cpp (load, warm-up, generation, unload) runs on the engine's
        # one thread (see localllm.engine for why).
        self._engine = Engine()
        self._pending: list[str] = []
        self._pending_lock = threading.Lock()
        self._answer: Markdown | None = None
        self._rate: float | None = None
        self._flush_every = FLUSH_MIN
        self._edit: _Edit | None = None
        self.attached: list[Path] = []  # images the next prompt sends (F9, or a pasted path)
        self._first_shown = 0
        self._generation = 0  # counts answers, so a late timer of a finished one does nothing
        self._streamed, self._first_token_at = 0, None
        self.status_text = ""

    # ---- layout -------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        with Horizontal():
            yield ListView(id="sidebar")
            with Vertical():
                yield VerticalScroll(id="messages")
                yield PromptArea(id="prompt", soft_wrap=True, show_line_numbers=False, compact=True,
                                 placeholder="Message (Enter sends, Esc stops, F1 keys)")
                yield StatusBar(id="status")
        yield Footer(show_command_palette=False)

    def on_mount(self) -> None:
        # SIGTERM (a logout, `kill`, a service manager) quits as Ctrl+Q does: the answer being
        # written is saved and the terminal is given back, not left in the alternate screen.
        try:
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, self.exit, None, EXIT_TERMINATED)
        except (NotImplementedError, RuntimeError):  # no signals in this loop (Windows)
            pass
        if self.size.width < 100:  # at 80 columns the transcript needs the room; Ctrl+B shows the list
            self.query_one("#sidebar").add_class("hidden")
        self.query_one("#prompt").focus()
        self._refresh_sidebar()
        self._start()

    @property
    def hardware(self):
        """Read afresh each time (free memory changes while the app runs), unless one was given."""
        if self._hardware is not None:
            return self._hardware
        from localllm.backends import this_machine

        return this_machine()

    # ---- choosing and loading a model --------------------------------------------------
    def _start(self) -> None:
        from localllm.registry import installed_models

        conversation = self.store.conversations()[0] if self.resume and self.store.conversations() else None
        ref = self.model_ref or (conversation.model if conversation else None) or load_config().get("last_model")
        if ref is None and not installed_models():
            self.action_models(first_launch=True)
            return
        self.load(ref, conversation.id if conversation else None)

    def load(self, ref: str | None, conversation_id: int | None = None) -> None:
        self._set_status(f"loading {ref or 'the best installed model'}...")
        self._load(ref, conversation_id)

    def _load(self, ref: str | None, conversation_id: int | None) -> None:
        old, self.model, self.session = self.model, None, None
        self._on_engine(self._load_job, old, ref, conversation_id)

    def _load_job(self, old, ref: str | None, conversation_id: int | None) -> None:
        if old is not None:
            old.close()  # free its memory before the next one is mapped
        try:
            model = self.loader(ref, self.load_options)
        except LocalLLMError as exc:
            self._ui(self._error, f"cannot load the model: {exc}")
            self._ui(self._set_status, "no model loaded: Ctrl+O picks one")
            return
        self._ui(self._loaded, model, ref, conversation_id)

    def _on_engine(self, job: Callable, *args) -> None:
        """Run a job on the engine thread; an unexpected error there is handled as any other (_handle_exception)."""
        self._engine.submit(job, *args).add_done_callback(self._engine_job_done)

    def _engine_job_done(self, future: Future) -> None:
        if not future.cancelled() and future.exception() is not None:
            self._ui(self._report_unexpected, future.exception())

    def _ui(self, callback: Callable, *args) -> None:
        """Hand a call to the event loop without waiting for it: the engine never blocks on the
        UI, so quitting while it works cannot deadlock."""
        try:
            self.call_later(callback, *args)
        except RuntimeError:  # the event loop has closed: the app is gone
            pass

    @guarded
    def _loaded(self, model, ref: str | None, conversation_id: int | None) -> None:
        self.model = model
        self.model_name = ref or str(model.path)
        config = load_config()
        config["last_model"] = str(model.path)
        save_config(config)
        if conversation_id is not None:
            self.open_conversation(conversation_id)
        else:
            self.new_session()
        if self.think is not None and self._think() is None:
            self.query_one("#messages").mount(Static(f"{'--think' if self.think else '--no-think'} does not apply: this "
                                                     "model's chat template cannot switch its thinking", classes="notice"))
        self._update_status()

    def _think(self) -> bool | None:
        """--think/--no-think where this model's template can switch; elsewhere the model's default."""
        return self.think if can_switch(self.model.chat_template) else None

    # ---- conversations ------------------------------------------------------------------
    def new_session(self) -> None:
        self._end_edit()
        self.session = ChatSession(self.model, self.store, str(self.model.path), self.system, self.sampling,
                                   think=self._think())
        self._first_shown = 0  # the message the first widget of the transcript shows
        self.query_one("#messages").remove_children()

    def open_conversation(self, conversation_id: int) -> None:
        self._end_edit()
        self.session = ChatSession.resume(self.model, self.store, str(self.model.path), conversation_id, self.sampling,
                                          self._think())
        messages = self.query_one("#messages", VerticalScroll)
        messages.remove_children()
        # A long chat shows its last messages only: drawing thousands of Markdown widgets would
        # freeze the app for minutes; all of them stay in the store and in an export.
        first_shown = self._first_shown = max(0, len(self.session.messages) - MAX_SHOWN)
        widgets = []
        if first_shown:
            widgets.append(Static(f"{first_shown} earlier messages are saved but not shown here; F5 exports the "
                                  "whole chat", classes="notice"))
        for i, m in enumerate(self.session.messages[first_shown:], start=first_shown):
            widget = user_message(m.content, m.images) if m.role == "user" else Markdown(m.content, classes="assistant")
            widget.set_class(i < self.session.first_in_context, "out-of-context")
            widgets.append(widget)
            if m.reasoning:
                widgets.append(reasoning_fold(m.reasoning, len(self.model.tokenize(m.reasoning))))
        messages.mount_all(widgets)
        messages.anchor()
        self._highlight_open_chat()
        self._update_status()

    def _refresh_sidebar(self) -> None:
        sidebar = self.query_one("#sidebar", ListView)
        sidebar.clear()
        for c in self.store.conversations():
            sidebar.append(ConversationItem(c.id, c.title))
        self.call_after_refresh(self._highlight_open_chat)

    def _highlight_open_chat(self) -> None:
        sidebar = self.query_one("#sidebar", ListView)
        open_id = self.session.conversation_id if self.session else None
        positions = [i for i, item in enumerate(sidebar.children) if getattr(item, "conversation_id", None) == open_id]
        sidebar.index = positions[0] if positions else None

    @on(ListView.Selected, "#sidebar")
    @guarded
    def _sidebar_selected(self, event: ListView.Selected) -> None:
        if not self.generating and self.model is not None:
            self.open_conversation(event.item.conversation_id)
            self.query_one("#prompt").focus()

    # ---- sending and streaming ------------------------------------------------------------
    @on(PromptArea.Submitted)
    @guarded
    def _submitted(self, event: PromptArea.Submitted) -> None:
        text = event.text.strip()
        if not text:
            return
        if self.generating:
            self.notify("an answer is being written: Esc stops it", severity="warning")
            return
        if self.session is None:
            self.notify("no model is loaded yet", severity="warning")
            return
        if self.attach(text, quiet_if_not_image=True):  # a pasted or dropped image file's path
            self.query_one("#prompt", PromptArea).clear()
            return
        edit = self._edit
        self._end_edit(restore_draft=False)
        prompt = self.query_one("#prompt", PromptArea)
        prompt.clear()
        try:
            self._send(text, edit)
        except Exception:
            prompt.text = text  # whatever went wrong, what was typed stays
            raise

    def _send(self, text: str, edit: _Edit | None) -> None:
        messages = self.query_one("#messages")
        # An edit applies only to the chat it started in, and only while that chat still ends
        # with the prompt it put back; otherwise the text is sent as a new message.
        turns = [w for w in messages.children if w.has_class("user")]
        if edit is not None and edit.conversation_id == self.session.conversation_id and turns \
                and self.session.last_user_text() == edit.original:
            for widget in messages.children[messages.children.index(turns[-1]):]:
                widget.remove()
            messages.mount(user_message(text))
            self._generate(lambda: self.session.edit_last(text), draft=text)
            return
        images, self.attached = self.attached, []
        messages.mount(user_message(text, [image.name for image in images]))
        self._generate(lambda: self.session.send(text, images), draft=text)

    @guarded
    def action_regenerate(self) -> None:
        if self.generating or self.session is None or not self.session.messages or self.session.messages[-1].role != "assistant":
            return
        messages = self.query_one("#messages")
        answer = [w for w in messages.children if w.has_class("assistant")][-1]
        for widget in messages.children[messages.children.index(answer):]:  # the answer and notices after it
            widget.remove()
        self._generate(self.session.regenerate)

    @guarded
    def action_edit_last(self) -> None:
        """Put the last prompt back in the prompt box; sending it replaces that turn, Esc cancels
        and gives back what was typed before."""
        if self.generating or self.session is None or (last := self.session.last_user_text()) is None:
            self.notify("this chat has no prompt to edit yet")
            return
        prompt = self.query_one("#prompt", PromptArea)
        if self._edit is None:
            self._edit = _Edit(self.session.conversation_id, last, prompt.text)
        prompt.text = last
        prompt.move_cursor(prompt.document.end)
        prompt.add_class("editing")
        prompt.focus()
        self._update_status()

    def _end_edit(self, restore_draft: bool = True) -> None:
        if self._edit is None:
            return
        prompt = self.query_one("#prompt", PromptArea)
        if restore_draft:
            prompt.text = self._edit.draft
            prompt.move_cursor(prompt.document.end)
        prompt.remove_class("editing")
        self._edit = None
        self._update_status()

    def _generate(self, start: Callable[[], Iterator], draft: str | None = None) -> None:
        """Start an answer on the engine thread; `draft`, the text just sent, goes back into the
        prompt box if it could not even be saved (a full disk), so nothing typed is lost."""
        self.generating = True
        self.stop_requested.clear()
        self._answer = Markdown("", classes="assistant")
        messages = self.query_one("#messages", VerticalScroll)
        messages.mount(self._answer)
        messages.anchor()
        self._streamed, self._first_token_at = 0, None
        self._reasoning: list[str] = []  # a thinking model's reasoning, folded under the answer at the end
        self._shares_cpus = usable_cpus() <= self.model.n_threads
        self._tick = (time.perf_counter(), time.thread_time())
        self._generation += 1
        # The first words show after FLUSH_MIN; later batches keep the pace learned so far.
        self._flusher = self.set_timer(FLUSH_MIN, functools.partial(self._flush_tick, self._generation))
        # A blinking cursor redraws twice a second, each time taking CPU from llama.cpp.
        self.query_one("#prompt", PromptArea).cursor_blink = False
        # "thinking" only where the model does think first; otherwise it is reading the prompt.
        self._set_status("thinking…" if thinks(self.model.chat_template) else "reading the prompt…")
        self._on_engine(self._generation_job, start, draft)

    def _generation_job(self, start: Callable[[], Iterator], draft: str | None) -> None:
        try:
            try:
                events = start()
            except LocalLLMError:
                if draft is not None:
                    self._ui(self._unsent, draft)
                raise
            eta = None
            for event in events:
                if isinstance(event, Token):
                    with self._pending_lock:
                        self._pending.append(event.text)
                        self._streamed += 1
                        self._first_token_at = self._first_token_at or time.perf_counter()
                elif isinstance(event, Reasoning):
                    self._reasoning.append(event.text)
                    if len(self._reasoning) % 16 == 1:  # a status line per token would cost the UI thread
                        self._ui(self._set_status, f"thinking… {len(self._reasoning)} tokens")
                elif isinstance(event, PromptProgress):
                    eta = eta or PromptEta(time.monotonic())
                    self._ui(self._set_status, eta.line(event, time.monotonic()))
                elif isinstance(event, Finished):
                    self._rate = event.timings.generation_tokens_per_s
                elif isinstance(event, ContextNotice):
                    self._ui(self._notice, event)
                if self.stop_requested.is_set():  # after showing the event: the session has saved it
                    events.close()
                    break
        except LocalLLMError as exc:
            self._ui(self._error, str(exc))
        finally:
            self._ui(self._finish)

    def _unsent(self, draft: str) -> None:
        turns = [w for w in self.query_one("#messages").children if w.has_class("user")]
        if turns:
            turns[-1].remove()
        prompt = self.query_one("#prompt", PromptArea)
        if not prompt.text.strip():
            prompt.text = draft
            prompt.move_cursor(prompt.document.end)

    async def _flush_tick(self, generation: int) -> None:
        await self._flush_tokens()
        if not self.generating or generation != self._generation:  # that answer has finished
            return
        if self._first_token_at and self._streamed > 1:
            rate = (self._streamed - 1) / max(time.perf_counter() - self._first_token_at, 1e-3)
            self._set_status(f"writing · {rate:.0f} tok/s · Esc stops")
        wall, cpu = time.perf_counter(), time.thread_time()  # this (the UI) thread's CPU time
        share = (cpu - self._tick[1]) / max(wall - self._tick[0], 1e-3)
        self._tick = (wall, cpu)
        if self._shares_cpus:
            self._flush_every = min(FLUSH_MAX, max(FLUSH_MIN, self._flush_every * share / UI_SHARE))
        self._flusher = self.set_timer(self._flush_every, functools.partial(self._flush_tick, generation))

    async def _flush_tokens(self) -> None:
        with self._pending_lock:
            text, self._pending = "".join(self._pending), []
        if text and self._answer is not None:
            await self._answer.append(text)

    @guarded
    async def _finish(self) -> None:
        self._flusher.stop()
        await self._flush_tokens()
        if self._reasoning:
            # Saved with the answer, shown again when the chat is reopened; never sent back to the model.
            self.query_one("#messages").mount(reasoning_fold("".join(self._reasoning), len(self._reasoning)))
        if self.stop_requested.is_set():
            self.query_one("#messages").mount(Static("stopped (Esc): the answer so far is kept", classes="notice"))
        self.query_one("#prompt", PromptArea).cursor_blink = True
        self.generating = False
        self._refresh_sidebar()
        self._update_status()

    @guarded
    def action_stop(self) -> None:
        if self.generating:
            self.stop_requested.set()
        elif self._edit is not None:
            self._end_edit()
            self.notify("edit cancelled")

    @guarded
    def _notice(self, notice: ContextNotice) -> None:
        self.query_one("#messages").mount(Static(notice.text, classes="notice", markup=False))
        if notice.kind == "trimmed" and self.session is not None:
            widgets = [w for w in self.query_one("#messages").children if w.has_class("user") or w.has_class("assistant")]
            for w in widgets[: max(0, self.session.first_in_context - self._first_shown)]:
                w.add_class("out-of-context")
        self.notify(notice.text, severity="warning")

    def _error(self, text: str) -> None:
        self.query_one("#messages").mount(Static(text, classes="error", markup=False))
        self.notify(text, severity="error")

    # ---- status -------------------------------------------------------------------------
    def _set_status(self, text: str) -> None:
        self.status_text = text
        self.query_one("#status", StatusBar).show(text)

    def on_unmount(self) -> None:
        try:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGTERM)
        except (NotImplementedError, RuntimeError):
            pass
        self.stop_requested.set()
        # Queued behind a running answer, which stops at its next token and saves it first.
        self._engine.submit(self._close_job, self.model)
        self._engine.shutdown(wait=True)

    def _close_job(self, model) -> None:
        if model is not None:
            model.close()
        self.store.close()


@dataclass(frozen=True)
class _Edit:
    """An edit of the last prompt in progress: where it started, what it edits, the draft it replaced."""

    conversation_id: int | None
    original: str
    draft: str


def _load(ref: str | None, options: LoadOptions):
    from localllm.model import load_model

    return load_model(ref, options)
