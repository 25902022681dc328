"""The chat screen's own widgets: the prompt box, the status line, a conversation list entry, and
the transcript's user message and folded reasoning."""

from __future__ import annotations

from textual.content import Content
from textual.message import Message
from textual.widget import Widget
from textual.widgets import Collapsible, ListItem, Static, TextArea


class PromptArea(TextArea):
    """The prompt: Enter sends, Ctrl+J (or Shift+Enter where the terminal tells them apart) adds a line."""

    class Submitted(Message):
        def __init__(self, text: str):
            super().__init__()
            self.text = text

    async def _on_key(self, event) -> None:
        if event.key == "enter":
            event.stop()
            event.prevent_default()
            self.post_message(self.Submitted(self.text))
        elif event.key in ("shift+enter", "ctrl+j"):
            event.stop()
            event.prevent_default()
            self.insert("\n")
        elif event.key in ("pageup", "pagedown"):  # the transcript scrolls; the prompt is a few lines
            event.stop()
            event.prevent_default()
            await self.run_action(f"app.scroll_transcript({event.key == 'pageup'})")


class StatusBar(Widget):
    """The status line. While an answer streams its text changes with every batch: a Static's
    update would lay the whole screen out again, this repaints one line."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._content = Content("")

    def show(self, text: str) -> None:
        self._content = Content(text)
        self.refresh()

    def render(self) -> Content:
        return self._content


class ConversationItem(ListItem):
    def __init__(self, conversation_id: int, title: str):
        super().__init__(Static(title, markup=False))
        self.conversation_id = conversation_id


def reasoning_fold(reasoning: str, tokens: int) -> Collapsible:
    """A thinking model's reasoning, collapsed under its answer."""
    return Collapsible(Static(reasoning.strip(), markup=False, classes="thought"), collapsed=True, title=f"thinking ({tokens} tokens)",
                       classes="reasoning")


def user_message(text: str, images: list[str] | tuple[str, ...] = ()) -> Static:
    shown = "".join(f"[image: {name}]\n" for name in images)
    return Static(shown + text, classes="user", markup=False)
