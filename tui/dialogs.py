"""Modal screens: keyboard help, settings, rename, confirm."""

from __future__ import annotations

from dataclasses import dataclass

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Markdown, TextArea

from localllm.options import FIELDS

HELP = """\
# Keys

| key | does |
|---|---|
| Enter | send the prompt (Shift+Enter or Ctrl+J: new line) |
| Esc | stop the answer being written (what was written stays) |
| Ctrl+R | regenerate the last answer |
| F3 | edit the last prompt and send it again (Esc cancels the edit) |
| Ctrl+N | new chat |
| F4 | copy the last answer (works over SSH) |
| Ctrl+B | show or hide the conversation list |
| F2 | rename the chat · **F8** delete it · **F5** export it to Markdown |
| F9 | attach an image for a vision model (or paste or drop its file's path into the prompt and press Enter) |
| Ctrl+S | settings: system prompt, sampling, context size |
| Ctrl+O | switch model, or download one |
| F1 | this help · **Ctrl+Q** quit |

In the prompt, the usual editing keys work (Ctrl+A / Ctrl+E start / end of line, Ctrl+D, Ctrl+X, Ctrl+Y). In the conversation list,
Enter opens a chat. Chats are saved as they are written. Arrows and PgUp/PgDn scroll this list.
"""


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,f1,q", "dismiss", "Close")]

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            # Scrolls where the terminal is shorter than the list (at 80x24 it is).
            with VerticalScroll(id="help"):
                yield Markdown(HELP)
            yield Button("Close", id="close")

    def on_mount(self) -> None:
        self.query_one("#help").focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss()


@dataclass(frozen=True)
class Settings:
    system: str
    temperature: float
    top_p: float
    n_ctx: int


class SettingsScreen(ModalScreen[Settings | None]):
    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, current: Settings):
        super().__init__()
        self.current = current

    def compose(self) -> ComposeResult:
        c = self.current
        with Vertical(classes="dialog"):
            yield Label("System prompt")
            yield TextArea(c.system, id="system")
            with Grid(id="numbers"):
                yield Label("Temperature")
                yield Input(str(c.temperature), id="temperature", type="number")
                yield Label("Top-p")
                yield Input(str(c.top_p), id="top_p", type="number")
                yield Label("Context (tokens)")
                yield Input(str(c.n_ctx), id="n_ctx", type="integer")
            yield Label("", id="error")
            with Horizontal(classes="buttons"):
                yield Button("Save (Enter)", variant="primary", id="save")
                yield Button("Cancel (Esc)", id="cancel")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self._save()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "cancel":
            self.dismiss(None)
        else:
            self._save()

    def _save(self) -> None:
        """Each number checked by its entry in the option table, as the CLI and the server check it."""
        values, problems = {}, {}
        for name in _NUMBERS:
            field, text = FIELDS[name], self.query_one(f"#{name}", Input).value.strip()
            try:
                values[name] = field.kind(text)
                problem = field.problem(values[name], repr(text))
            except ValueError:
                problem = f"{field.label} must be {field.rule}, not {text!r}"
            if problem is not None:
                problems[name] = problem[0].upper() + problem[1:]
        if problems:
            self.query_one("#error", Label).update("; ".join(problems.values()))
            self.query_one(f"#{next(iter(problems))}", Input).focus()
            return
        self.dismiss(Settings(system=self.query_one("#system", TextArea).text.strip(), **values))

    def action_cancel(self) -> None:
        self.dismiss(None)


_NUMBERS = ("temperature", "top_p", "n_ctx")  # the form's fields, in its order


class AskScreen(ModalScreen[str | None]):
    """One line of text (a new title), or a yes/no question when no initial value is given."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, question: str, value: str | None = None):
        super().__init__()
        self.question, self.value = question, value

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.question)
            if self.value is not None:
                yield Input(self.value, id="answer")
            with Horizontal(classes="buttons"):
                yield Button("OK (Enter)" if self.value is not None else "Yes", variant="primary", id="ok")
                yield Button("Cancel (Esc)", id="cancel")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "cancel":
            self.dismiss(None)
        else:
            self.dismiss(self.query_one("#answer", Input).value if self.value is not None else "yes")

    def action_cancel(self) -> None:
        self.dismiss(None)
