"""What the chat app's keys do to the model choice, the settings and the conversation (Ctrl+O,
Ctrl+N, F4, Ctrl+B, F1, Ctrl+S, F2, F8, F5). A part of ChatApp, which it is mixed into: it uses
the app's session, store, model and status line.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from textual import work

from localllm.config import load_config, save_config
from localllm.session import to_markdown

from .dialogs import AskScreen, HelpScreen, Settings, SettingsScreen
from .errors import guarded


class ChatActions:
    def action_scroll_transcript(self, up: bool) -> None:
        """PgUp/PgDn from the prompt box (tui.widgets.PromptArea) scroll the conversation."""
        messages = self.query_one("#messages")
        if up:
            messages.scroll_page_up()
        else:
            messages.scroll_page_down()

    @guarded
    def action_models(self, first_launch: bool = False) -> None:
        if self.generating:
            return
        self._set_status("looking at this machine and the catalog...")
        self._open_models(first_launch)

    @work(thread=True, exclusive=True, group="models")
    def _open_models(self, first_launch: bool) -> None:
        from huggingface_hub import constants

        from localllm.registry import installed_models
        from localllm.store import catalog_choices, recommend

        from .models import ModelScreen

        hw = self.hardware
        choices = catalog_choices(hw)
        screen = ModelScreen(hw, installed_models(), choices, recommend(choices), constants.HF_HUB_OFFLINE, first_launch)
        self.call_from_thread(self.push_screen, screen, self._model_chosen)

    @guarded
    def _model_chosen(self, ref: str | None) -> None:
        if ref is not None:
            self.load(ref)
        else:
            self._update_status()


    @guarded
    def action_new_chat(self) -> None:
        if not self.generating and self.model is not None:
            self.new_session()
            self._update_status()

    @guarded
    def action_copy_last(self) -> None:
        answer = next((m.content for m in reversed(self.session.messages) if m.role == "assistant"), None) if self.session else None
        if answer:
            self.copy_to_clipboard(answer)
            self.notify("copied the last answer")

    @guarded
    def action_toggle_sidebar(self) -> None:
        self.query_one("#sidebar").toggle_class("hidden")

    @guarded
    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    @guarded
    def action_settings(self) -> None:
        n_ctx = self.model.n_ctx if self.model else (self.load_options.n_ctx or 4096)
        current = Settings(self.system, self.sampling.temperature, self.sampling.top_p, n_ctx)
        self.push_screen(SettingsScreen(current), self._apply_settings)

    @guarded
    def _apply_settings(self, settings: Settings | None) -> None:
        if settings is None:
            return
        self.system = settings.system
        self.sampling = replace(self.sampling, temperature=settings.temperature, top_p=settings.top_p)
        config = load_config()
        config["chat"] = {"system": settings.system, "temperature": settings.temperature, "top_p": settings.top_p,
                          "n_ctx": settings.n_ctx}
        save_config(config)
        if self.session is not None:
            self.session.sampling = self.sampling
            self.session.set_system(settings.system)
        if self.model is not None and settings.n_ctx != self.model.n_ctx:
            self.load_options = replace(self.load_options, n_ctx=settings.n_ctx)
            self.load(str(self.model.path), self.session.conversation_id if self.session else None)
        self._update_status()

    def _current(self):
        return self.store.conversation(self.session.conversation_id) if self.session and self.session.conversation_id else None

    @guarded
    def action_rename(self) -> None:
        if (conversation := self._current()) is not None:
            self.push_screen(AskScreen("Rename this chat", conversation.title),
                             lambda title: title and (self.store.update(conversation.id, title=title), self._refresh_sidebar()))

    @guarded
    def action_delete_chat(self) -> None:
        if (conversation := self._current()) is None or self.generating:
            return

        def confirmed(answer: str | None) -> None:
            if answer:
                self.store.delete(conversation.id)
                self.new_session()
                self._refresh_sidebar()

        self.push_screen(AskScreen(f"Delete “{conversation.title}”?"), confirmed)

    @guarded
    def action_export(self) -> None:
        if (conversation := self._current()) is None:
            return
        stem = "".join(ch if ch.isalnum() else "-" for ch in conversation.title.lower()).strip("-")[:40] or "chat"
        text = to_markdown(conversation, self.store.messages(conversation.id)).encode("utf-8")
        for n in range(1, 1000):
            path = Path.cwd() / (f"{stem}.md" if n == 1 else f"{stem}-{n}.md")
            try:
                # A new file only: never overwrite, never follow a link (a dangling one included).
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            except FileExistsError:
                continue
            with os.fdopen(fd, "wb") as f:
                f.write(text)
            self.notify(f"exported to {path}")
            return
        self._error(f"not exported: {stem}.md to {stem}-999.md all exist here")
