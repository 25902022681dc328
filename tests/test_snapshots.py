"""Snapshots (pytest-textual-snapshot, SVG baselines in tests/__snapshots__) of the main screens at 80x24.

A scripted model and a recorded machine keep them identical from run to run; update them with
`pytest tests/test_snapshots.py --snapshot-update` after a deliberate change, and look at the diff.
"""

from __future__ import annotations

from localllm.tui import ChatApp
from test_planner import profile
from test_tui import ScriptedModel, send, wait_for

from localllm import registry
from localllm.session import ChatStore

SIZE = (80, 24)


def scripted_app(**kwargs) -> ChatApp:
    model = ScriptedModel(words=12, delay=0)
    return ChatApp(model_ref="x", store=ChatStore(), loader=lambda ref, options: model, **kwargs)


def test_chat_screen(snap_compare, isolated_home):
    app = scripted_app()

    async def run_before(pilot):
        await wait_for(pilot, lambda: app.session is not None)
        await send(pilot, app, "Why is the sky blue?")

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_help_screen(snap_compare, isolated_home):
    app = scripted_app()

    async def run_before(pilot):
        await wait_for(pilot, lambda: app.session is not None)
        await pilot.press("f1")

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_first_launch_model_screen(snap_compare, isolated_home, tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "find_spec", lambda name: None)
    app = ChatApp(store=ChatStore(), hardware=profile("laptop_16gb_6gb_gpu", tmp_path))

    async def run_before(pilot):
        await wait_for(pilot, lambda: app.screen.__class__.__name__ == "ModelScreen" and app.screen.query("#catalog"))
        await pilot.pause()

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)
