"""What the chat app's keys do to the model choice, the settings and the conversation (Ctrl+O,
Ctrl+N, F4, Ctrl+B, F1, Ctrl+S, F2, F8, F5, F9), and the status line. A part of ChatApp, which it is mixed into: it uses
the app's session, store, model and status line.
"""

from __future__ import annotations

import os
import re
from dataclasses import replace
from pathlib import Path

from textual import work

from localllm.config import load_config, save_config
from localllm.printable import printable
from localllm.session import IMAGE_SUFFIX, to_markdown

from .dialogs import AskScreen, HelpScreen, Settings, SettingsScreen
from .errors import guarded


class ChatActions:
    def _update_status(self) -> None:
        if self.model is None:
            return
        from localllm.registry import InstalledModel

        path = Path(self.model.path)
        quant = InstalledModel(path.name, path, 0, "").quant or getattr(self.model, "dtype", None)
        name = path.stem if quant and quant in path.stem.upper() else f"{path.stem} · {quant or '?'}"
        threads = self.model.threads_in_use
        where = f"GPU {self.model.n_gpu_layers} layers" if self.model.n_gpu_layers else f"CPU {threads} thread{'' if threads == 1 else 's'}"
        used = self.session.used_tokens if self.session else 0
        rate = (f"{self._rate:.1f} tok/s" if self._rate < 10 else f"{self._rate:.0f} tok/s") if self._rate else "- tok/s"
        editing = "editing the last prompt: Enter resends it, Esc cancels · " if self._edit else ""
        n = len(self.attached)
        attached = f"{n} image{'s' if n > 1 else ''} attached (sent with the next prompt) · " if n else ""
        self._set_status(f"{editing}{attached}ctx {used}/{self.model.n_ctx} · {rate} · {where} · {name}")

    @guarded
    def action_attach_image(self) -> None:
        self.push_screen(AskScreen("Attach an image: its file's path (or paste or drop the path into the prompt)", ""),
                         lambda text: text and self.attach(text))

    def attach(self, text: str, quiet_if_not_image: bool = False) -> bool:
        """Attach the image file `text` names (as typed, quoted, or as a terminal pastes a dropped
        file); False when it names none (then, unless quiet, say why)."""
        path = pasted_path(text)
        if path is None or IMAGE_SUFFIX.fullmatch(path.suffix.lower()) is None or not _is_file(path):
            if not quiet_if_not_image:
                self.notify(f"not an image file: {printable(text.strip())[:80]}", severity="error")
            return False
        if getattr(self.model, "image_marker", None) is None:
            self.notify(f"{self.model_name or 'this model'} cannot see images: choose a vision model (Ctrl+O)",
                        severity="error")
            return True
        self.attached.append(path)
        self.notify(f"attached {printable(path.name)[:60]}: it goes with the next prompt")
        self._update_status()
        return True
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


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # a name too long, a folder not readable: not a file to attach
        return False


def pasted_path(text: str) -> Path | None:
    """A file path as typed or as terminals paste a dropped file: quoted, with backslash-escaped
    spaces, or as a file:// URL. None for anything that is not one line."""
    from urllib.parse import unquote

    text = text.strip()
    if not text or "\n" in text or len(text) > 4096:
        return None
    if len(text) > 1 and text[0] == text[-1] and text[0] in "'\"":
        text = text[1:-1]
    elif text.startswith("file://"):
        text = unquote(text[len("file://"):])
    else:
        text = re.sub(r"\\(.)", r"\1", text)
    return Path(text).expanduser()
