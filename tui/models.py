"""Choosing a model: this machine, installed models, the catalog with fit labels, and downloads."""

from __future__ import annotations

import threading
from pathlib import Path

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import DataTable, Input, Label, OptionList, ProgressBar, Static
from textual.widgets.option_list import Option

from localllm.backends.llamacpp.planner import human_bytes
from localllm.errors import LocalLLMError
from localllm.registry import STARTER_INSTALL_HINT


class Cancelled(Exception):
    """The user pressed Esc during a download; what arrived stays on disk for a resume."""


def machine_summary(hw) -> str:
    cpu, mem = hw.cpu, hw.memory
    parts = [f"{cpu.model or 'CPU'}: {cpu.physical_cores or '?'} cores",
             f"RAM {human_bytes(mem.available)} free of {human_bytes(mem.total)}"]
    parts += [f"{g.name}: {human_bytes(g.free)} free of {human_bytes(g.total)}" for g in hw.gpus] or ["no GPU"]
    return " · ".join(parts)


class ModelScreen(Screen[str | None]):
    """Pick an installed model, or download one from the catalog. Dismisses with a model reference."""

    BINDINGS = [Binding("escape", "back", "Back / cancel download")]

    def __init__(self, hw, installed, choices, recommended, offline: bool, first_launch: bool):
        super().__init__()
        self.hw, self.installed, self.choices = hw, installed, choices
        self.recommended, self.offline, self.first_launch = recommended, offline, first_launch
        self.cancel = threading.Event()
        self.downloading = False

    def compose(self) -> ComposeResult:
        with Vertical(id="models"):
            yield Static("Welcome to localllm" if self.first_launch else "Models", id="title")
            yield Static(machine_summary(self.hw), id="machine")
            if self.installed:
                yield Label("Installed (Enter to open)")
                yield OptionList(*[Option(f"{m.name}  ({m.size / 1e9:.2f} GB)", id=str(i)) for i, m in enumerate(self.installed)],
                                 id="installed")
            if self.offline:
                yield Static(f"Offline: downloads are off. Installed models run; {STARTER_INSTALL_HINT}; a folder of "
                             "GGUF files is listed with: localllm list --add-dir DIR", id="offline")
            yield Input(placeholder="or the path of a .gguf file on this machine, then Enter", id="path")
            yield Label("Download (Enter), recommended for this machine marked ★")
            yield DataTable(id="catalog", cursor_type="row", zebra_stripes=True)
            yield ProgressBar(id="progress", show_eta=True)
            yield Static("", id="download-status")

    def on_mount(self) -> None:
        table = self.query_one("#catalog", DataTable)
        table.add_columns("", "model", "quant", "size", "here")
        for i, c in enumerate(self.choices):
            table.add_row("★" if c is self.recommended else "", c.entry.ref, c.quant, f"{c.size / 1e9:.1f} GB", c.plan.label, key=str(i))
        if self.recommended is not None:
            table.move_cursor(row=self.choices.index(self.recommended))
        self.query_one("#progress").display = False
        (self.query_one("#installed") if self.installed else table).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        from localllm.model import check_gguf
        from localllm.printable import printable

        path = Path(event.value.strip()).expanduser()
        try:
            check_gguf(path)
        except LocalLLMError as exc:
            self.query_one("#download-status", Static).update(printable(exc))
            return
        self.dismiss(str(path.absolute()))

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(str(self.installed[int(event.option.id)].path))

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if self.downloading:
            return
        if self.offline:
            self.query_one("#download-status", Static).update("Offline: pick an installed model, or connect and retry.")
            return
        choice = self.choices[int(event.row_key.value)]
        self.downloading = True
        self.cancel.clear()
        bar = self.query_one("#progress", ProgressBar)
        bar.display = True
        bar.update(total=choice.size, progress=0)
        self.query_one("#download-status", Static).update(f"Downloading {choice.entry.ref}-{choice.quant.lower()} (Esc cancels)")
        self.download(f"{choice.entry.ref}-{choice.quant.lower()}")

    @work(thread=True, exclusive=True, group="download")
    def download(self, ref: str) -> None:
        from localllm.store import prepare_pull, pull

        def progress(done: int, total: int) -> None:
            if self.cancel.is_set():
                raise Cancelled()
            self.app.call_from_thread(self.query_one("#progress", ProgressBar).update, total=total, progress=done)

        try:
            prepared = prepare_pull(ref, self.hw)
            path = pull(prepared, progress)
        except Cancelled:
            self.app.call_from_thread(self._stopped, "Download cancelled; what arrived is kept and resumes next time.")
        except LocalLLMError as exc:
            self.app.call_from_thread(self._stopped, f"Download failed: {exc}")
        except Exception as exc:  # said in one line and logged privately, never Textual's crash screen
            self.app.call_from_thread(self._stopped, "Download failed unexpectedly")
            self.app.call_from_thread(self.app._report_unexpected, exc)
        else:
            self.app.call_from_thread(self.dismiss, str(path))

    def _stopped(self, message: str) -> None:
        self.downloading = False
        self.query_one("#progress").display = False
        self.query_one("#download-status", Static).update(message)

    def action_back(self) -> None:
        if self.downloading:
            self.cancel.set()
        elif not self.first_launch:
            self.dismiss(None)
