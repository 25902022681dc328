"""`localllm chat` driven through Textual's Pilot: the real SmolLM2 model where behaviour depends on it,
a scripted model where timing must be controlled."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from localllm.tui import ChatApp

from localllm.events import Finished, Timings, Token, Usage
from localllm.session import ChatStore

SIZE = (100, 30)


def real_loader(starter_model):
    """Share the session's loaded starter; closing it is the fixture's job."""

    class Borrowed:
        def __init__(self, model):
            self._model = model

        def __getattr__(self, name):
            return getattr(self._model, name)

        def close(self):
            pass

    return lambda ref, options: Borrowed(starter_model)


class ScriptedModel:
    """Stands in for llama.cpp where a test needs to control time: yields words at a set pace."""

    def __init__(self, words: int = 400, delay: float = 0.01, n_ctx: int = 4096):
        self.words, self.delay, self.n_ctx = words, delay, n_ctx
        self.path, self.n_ctx_train, self.n_threads, self.n_gpu_layers = Path("scripted-Q4_K_M.gguf"), n_ctx, 2, 0
        self.threads_in_use = 2
        self.chat_template = None
        self.prompts: list[list[dict]] = []
        self.closed = False
        self.threads = {threading.get_ident()}  # every thread that ran this model's work

    def tokenize(self, text):
        return text.split()

    def format_chat(self, messages):
        return " ".join(f"<{m['role']}> {m['content']}" for m in messages)

    def chat(self, messages, sampling, think=None):
        self.prompts.append(list(messages))
        return self._stream()

    def _stream(self):
        self.threads.add(threading.get_ident())
        for i in range(self.words):
            time.sleep(self.delay)
            yield Token(f"word{i} ")
        yield Finished("stop", Usage(10, self.words), Timings(0.1, 0.1, 1.0, 100.0, 100.0), 1)

    def close(self):
        self.threads.add(threading.get_ident())
        self.closed = True


def scripted_app(words: int = 3) -> tuple[ChatApp, ScriptedModel]:
    """The app on a scripted model that answers `words` words at once."""
    model = ScriptedModel(words=words, delay=0)
    return ChatApp(model_ref="x", store=ChatStore(), loader=lambda ref, options: model), model


async def wait_for(pilot, condition, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the app")
        await pilot.pause(0.05)


async def send(pilot, app, text: str):
    before = len(app.session.messages) if app.session else 0
    prompt = app.query_one("#prompt")
    prompt.text = text
    prompt.focus()
    await pilot.press("enter")
    await wait_for(pilot, lambda: app.session is not None and len(app.session.messages) > before and not app.generating)


def transcript(app) -> list[tuple[str, str]]:
    return [(m.role, m.content) for m in app.session.messages]


@pytest.mark.slow
async def test_streams_a_real_answer_saves_it_and_shows_the_status(starter_model, isolated_home):
    store = ChatStore()
    app = ChatApp(model_ref="starter", store=store, loader=real_loader(starter_model))
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.session is not None)
        await send(pilot, app, "What is the capital of France? One word.")
        (role, question), (answer_role, answer) = transcript(app)
        assert (role, answer_role) == ("user", "assistant") and answer.strip()
        shown = app.query(".assistant").last()
        assert shown.source.strip() == answer.strip(), "the rendered Markdown is the whole answer"
        status = app.status_text
        assert "Q4_1" in status and "CPU 2 threads" in status and "tok/s" in status
        assert f"ctx {app.session.used_tokens}/2048" in status and app.session.used_tokens > 10
        saved = ChatStore(store.path)
        [conversation] = saved.conversations()
        assert [(m.role, m.content, m.complete) for m in saved.messages(conversation.id)] == [
            ("user", question, True), ("assistant", answer, True)]
        assert conversation.title.startswith("What is the capital")


async def test_esc_stops_and_keeps_the_words_so_far(isolated_home):
    model = ScriptedModel(words=2000, delay=0.005)
    app = ChatApp(model_ref="x", store=ChatStore(), loader=lambda ref, options: model)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.session is not None)
        prompt = app.query_one("#prompt")
        prompt.text = "Count"
        await pilot.press("enter")
        await wait_for(pilot, lambda: len(app.session.messages) == 2 and len(app.session.messages[1].content) > 50)
        await pilot.press("escape")
        await wait_for(pilot, lambda: not app.generating)
        kept = app.session.messages[1].content
        assert 50 < len(kept) < len("".join(f"word{i} " for i in range(2000))), "stopped part-way"
        stored = app.store.messages(app.session.conversation_id)[1]
        assert stored.content == kept and stored.complete
        await wait_for(pilot, lambda: app.query(".assistant").last().source.rstrip() == kept.rstrip())
        assert "stopped" in str(app.query(".notice").last().render()), "the transcript says the answer was stopped"
        assert app.session.used_tokens == app.session._count(0) > len(kept.split()), "the context counts the kept words"
        assert f"ctx {app.session.used_tokens}/" in app.status_text


async def test_regenerate_edit_new_chat_reopen_rename_export_delete(isolated_home, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = ScriptedModel(words=5, delay=0)
    app = ChatApp(model_ref="x", store=ChatStore(), loader=lambda ref, options: model)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.session is not None)
        await send(pilot, app, "first question")
        first_id = app.session.conversation_id
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: len(model.prompts) == 2 and not app.generating)
        assert [r for r, _ in transcript(app)] == ["user", "assistant"], "regenerate replaces the answer"
        assert len(model.prompts) == 2 and model.prompts[1] == model.prompts[0]

        await pilot.press("f3")
        assert app.query_one("#prompt").text == "first question"
        app.query_one("#prompt").text = "edited question"
        await pilot.press("enter")
        await wait_for(pilot, lambda: len(model.prompts) == 3 and not app.generating)
        assert [c for _, c in transcript(app)][0] == "edited question" and len(transcript(app)) == 2
        assert len(app.query(".user")) == 1

        await pilot.press("ctrl+n")
        await send(pilot, app, "second chat")
        assert app.session.conversation_id != first_id
        assert len(app.query_one("#sidebar").children) == 2

        app.open_conversation(first_id)
        await pilot.pause()
        assert transcript(app)[0] == ("user", "edited question")
        sidebar = app.query_one("#sidebar")
        assert sidebar.children[sidebar.index].conversation_id == first_id, "the list highlights the open chat"
        await pilot.press("f2")
        await pilot.pause()
        rename = app.screen.query_one("#answer")
        rename.value = "Renamed"
        await pilot.press("enter")
        await pilot.pause()
        assert app.store.conversation(first_id).title == "Renamed"
        await pilot.press("f5")
        await pilot.pause()
        exported = (tmp_path / "renamed.md").read_text()
        assert "# Renamed" in exported and "edited question" in exported and "word4" in exported
        await pilot.press("f8")
        await pilot.pause()
        await pilot.click("#ok")
        await pilot.pause()
        assert app.store.conversation(first_id) is None
        assert len(app.store.conversations()) == 1


@pytest.mark.slow
async def test_context_meter_warns_then_trims_but_keeps_the_system_prompt(starter_model, isolated_home):
    app = ChatApp(model_ref="starter", store=ChatStore(), loader=real_loader(starter_model))
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.session is not None)
        app.session.system = "You are terse."
        app.session.sampling = app.session.sampling.__class__(temperature=0, max_tokens=8)
        long = "Tell me about this: " + "the quick brown fox jumps over the lazy dog " * 40
        notices = []
        for _ in range(8):
            await send(pilot, app, long)
            notices = [str(w.content) for w in app.query(".notice")]
            if any("no longer reach the model" in str(n) for n in notices):
                break
        assert any("older messages will be dropped" in str(n) for n in notices), "warned before it was full"
        assert any("no longer reach the model" in str(n) for n in notices), "trimming is announced"
        assert app.session.first_in_context > 0
        assert app.session._chat_messages(app.session.first_in_context)[0] == {"role": "system", "content": "You are terse."}
        assert app.session.used_tokens <= app.model.n_ctx
        assert app.query(".out-of-context"), "dropped turns stay visible, marked"
        assert len(app.store.messages(app.session.conversation_id)) == len(app.session.messages), "nothing deleted"


async def test_settings_change_sampling_and_system_prompt(isolated_home):
    app, model = scripted_app()
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.session is not None)
        await pilot.press("ctrl+s")
        await pilot.pause()
        app.screen.query_one("#system").text = "Answer in French."
        app.screen.query_one("#temperature").value = "0.2"
        await pilot.click("#save")
        await pilot.pause()
        assert app.session.sampling.temperature == 0.2 and app.session.system == "Answer in French."
        await send(pilot, app, "hi")
        assert model.prompts[-1][0] == {"role": "system", "content": "Answer in French."}
        from localllm.config import load_config

        assert load_config()["chat"]["temperature"] == 0.2, "settings persist"
        await pilot.press("f1")
        await pilot.pause()
        assert "Regenerate" in str(app.screen.query_one("Markdown").source) or "regenerate" in app.screen.query_one("Markdown").source


async def test_settings_enter_saves_errors_name_the_field_and_cancel_keeps_all(isolated_home):
    app, model = scripted_app()
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.session is not None)
        await pilot.press("ctrl+s")
        await pilot.pause()
        top_p = app.screen.query_one("#top_p")
        top_p.value = "7"
        top_p.focus()
        await pilot.press("enter")
        await pilot.pause()
        error = str(app.screen.query_one("#error").render())
        assert "Top-p must be above 0 and at most 1, not '7'" in error and "Temperature" not in error
        assert app.screen.__class__.__name__ == "SettingsScreen", "not saved"
        top_p.value = "0.5"
        await pilot.press("enter")
        await pilot.pause()
        assert app.session.sampling.top_p == 0.5, "Enter in a field saves"
        await pilot.press("ctrl+s")
        await pilot.pause()
        app.screen.query_one("#temperature").value = "1.9"
        await pilot.click("#cancel")
        await pilot.pause()
        assert app.session.sampling.temperature != 1.9 and app.screen.__class__.__name__ != "SettingsScreen"


async def test_no_color_and_80x24(isolated_home, monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    app, model = scripted_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.session is not None)
        await send(pilot, app, "hi")
        assert app.query_one("#prompt").region.bottom <= 24 and app.query_one("#status").region.width > 40
        assert app.no_color


async def test_streaming_shows_live_speed(isolated_home):
    model = ScriptedModel(words=300, delay=0.01)
    app = ChatApp(model_ref="x", store=ChatStore(), loader=lambda ref, options: model)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.session is not None)
        app.query_one("#prompt").text = "go"
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.status_text.startswith("writing · "))
        assert "tok/s" in app.status_text
        await wait_for(pilot, lambda: not app.generating and len(app.session.messages) == 2)
        assert app.status_text.startswith("ctx ")


async def test_the_answer_is_drawn_in_batches_not_per_token(isolated_home, monkeypatch):
    from localllm.tui.app import FLUSH_MIN
    from textual.widgets import Markdown

    drawn = []
    append = Markdown.append
    monkeypatch.setattr(Markdown, "append", lambda self, text: drawn.append(text) or append(self, text))
    model = ScriptedModel(words=300, delay=0.005)
    app = ChatApp(model_ref="x", store=ChatStore(), loader=lambda ref, options: model)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.session is not None)
        started = time.monotonic()
        await send(pilot, app, "go")
        seconds = time.monotonic() - started
        assert "".join(drawn) == app.session.messages[-1].content, "every word drawn once, in order"
        assert 2 <= len(drawn) <= seconds / FLUSH_MIN + 2, f"{len(drawn)} draws for 300 tokens in {seconds:.1f} s"


def loading_scripted_models(words: int) -> tuple[list[ScriptedModel], Callable]:
    """A loader that makes a new ScriptedModel for every load, and the list of those it made."""
    models = []

    def loader(ref, options):
        models.append(ScriptedModel(words=words, delay=0))
        return models[-1]

    return models, loader


async def test_every_llama_cpp_call_runs_on_one_engine_thread(isolated_home):
    """OpenMP gives each calling thread its own compute team; two teams slow generation."""
    models, loader = loading_scripted_models(words=5)
    app = ChatApp(model_ref="first", store=ChatStore(), loader=loader)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.session is not None)
        await send(pilot, app, "one")
        await send(pilot, app, "two")
        app.load("second")
        await wait_for(pilot, lambda: app.session is not None and app.model is models[1])
        await send(pilot, app, "three")
    assert models[0].closed and models[1].closed, "switching and quitting unload"
    threads = models[0].threads | models[1].threads
    assert len(threads) == 1 and threading.get_ident() not in threads, "one engine thread, never the UI's"


async def test_quitting_mid_answer_saves_it_and_unloads(isolated_home):
    model = ScriptedModel(words=2000, delay=0.005)
    store = ChatStore()
    app = ChatApp(model_ref="x", store=store, loader=lambda ref, options: model)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.session is not None)
        app.query_one("#prompt").text = "go"
        await pilot.press("enter")
        await wait_for(pilot, lambda: app._streamed > 20)
        conversation = app.session.conversation_id
        await pilot.press("ctrl+q")
    assert model.closed
    answer = ChatStore().messages(conversation)[-1]
    assert answer.role == "assistant" and answer.complete and 20 <= len(answer.content.split()) < 2000


async def test_an_edit_started_in_one_chat_never_touches_another(isolated_home):
    # Was: F3 (then Ctrl+E), Ctrl+N, send -> IndexError, the app exited 0 and the prompt was lost.
    app, model = scripted_app()
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.session is not None)
        await send(pilot, app, "first question")
        first_id = app.session.conversation_id
        await pilot.press("f3")
        assert "editing the last prompt" in app.status_text
        await pilot.press("ctrl+n")
        assert "editing" not in app.status_text, "a new chat ends the edit"
        await send(pilot, app, "a new topic")
        assert app.is_running and transcript(app)[0] == ("user", "a new topic")
        kept = [(m.role, m.content) for m in app.store.messages(first_id)]
        assert kept[0] == ("user", "first question") and len(kept) == 2, "the first chat keeps its turn"


async def test_esc_cancels_an_edit_and_gives_back_the_draft(isolated_home):
    app, model = scripted_app()
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.session is not None)
        await send(pilot, app, "first question")
        prompt = app.query_one("#prompt")
        prompt.text = "half-typed draft"
        await pilot.press("f3")
        assert prompt.text == "first question" and prompt.has_class("editing")
        await pilot.press("escape")
        assert prompt.text == "half-typed draft" and not prompt.has_class("editing")
        assert "editing" not in app.status_text
        await send(pilot, app, "second question")
        assert [c for r, c in transcript(app) if r == "user"] == ["first question", "second question"], \
            "after a cancelled edit, sending adds a turn and deletes none"


async def test_the_prompts_editing_keys_are_its_own(isolated_home):
    app, model = scripted_app()
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.session is not None)
        await send(pilot, app, "first question")
        prompt = app.query_one("#prompt")
        prompt.focus()
        await pilot.press("h", "i", "home", "ctrl+e", "!")
        assert prompt.text == "hi!" and "editing" not in app.status_text
        await pilot.press("home", "ctrl+d")  # delete, not "delete this chat"
        assert prompt.text == "i!" and app.screen is app.screen_stack[0]


async def test_every_key_is_reachable_at_80x24(isolated_home):
    from textual.widgets import Footer

    app, model = scripted_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.session is not None)
        # Laid out once every key has a width (a busy machine takes longer than a fixed pause).
        def laid_out():
            keys = list(app.query_one(Footer).query("FooterKey"))
            return len(keys) >= 4 and all(k.region.width for k in keys)

        await wait_for(pilot, laid_out, timeout=10)
        keys = list(app.query_one(Footer).query("FooterKey"))
        assert {"f1", "ctrl+q", "f3", "ctrl+o"} <= {k.key for k in keys}
        assert all(k.region.width and k.region.right <= 80 for k in keys), "every key in the footer is on screen"
        await pilot.press("f1")
        await pilot.pause()
        scroll = app.screen.query_one("#help")
        assert scroll.max_scroll_y > 0, "at 80x24 the list is longer than the dialog"
        await pilot.press("end")
        await pilot.pause()
        assert scroll.scroll_y == scroll.max_scroll_y
        visible = app.screen.query_one("Markdown").region.intersection(scroll.region)
        assert visible.height > 0


async def test_an_unexpected_error_is_one_line_logged_privately_and_the_app_goes_on(isolated_home, monkeypatch):
    import stat

    from localllm.errorlog import log_path

    monkeypatch.setenv("HF_TOKEN", "hf_secretsecretsecret")
    app, model = scripted_app()
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.session is not None)

        def broken(start, draft=None):
            raise RuntimeError("boom, headers={'authorization': 'Bearer hf_secretsecretsecret'}")

        monkeypatch.setattr(app, "_generate", broken)
        prompt = app.query_one("#prompt")
        prompt.text = "a question I typed"
        await pilot.press("enter")
        await pilot.pause()
        assert app.is_running and prompt.text == "a question I typed", "the typed text is not lost"
        shown = str(app.query(".error").last().render())
        assert "unexpected error: RuntimeError" in shown and "secret" not in shown
        del app._generate  # the class's own again
        monkeypatch.setattr(model, "chat", lambda messages, sampling, think: (_ for _ in ()).throw(ValueError("engine side")))
        await pilot.press("enter")
        await wait_for(pilot, lambda: "ValueError: engine side" in str(app.query(".error").last().render()))
        assert app.is_running
    log = log_path()
    assert stat.S_IMODE(log.stat().st_mode) == 0o600 and stat.S_IMODE(log.parent.stat().st_mode) == 0o700
    text = log.read_text()
    assert "Traceback" in text and "RuntimeError: boom" in text and "ValueError: engine side" in text
    assert "hf_secretsecretsecret" not in text, "no token in the log"


async def test_export_never_follows_a_link(isolated_home, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    elsewhere = tmp_path / "outside" / "victim.txt"
    (tmp_path / "chat.md").symlink_to(elsewhere)  # dangling: exists() says False
    (tmp_path / "outside").mkdir()
    app, model = scripted_app()
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.session is not None)
        await send(pilot, app, "hello")
        app.store.update(app.session.conversation_id, title="chat")
        await pilot.press("f5")
        await pilot.pause()
    assert not elsewhere.exists(), "nothing was written through the link"
    assert "hello" in (tmp_path / "chat-2.md").read_text()


async def test_a_full_disk_says_so_keeps_the_message_and_the_app_goes_on(isolated_home):
    store = ChatStore()
    model = ScriptedModel(words=3, delay=0)
    app = ChatApp(model_ref="x", store=store, loader=lambda ref, options: model)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.session is not None)
        await send(pilot, app, "first question")
        # SQLite's own "database or disk is full", as on a full disk: no page may be added.
        pages = store._db.execute("PRAGMA page_count").fetchone()[0]
        store._db.execute(f"PRAGMA max_page_count = {pages}")
        prompt = app.query_one("#prompt")
        prompt.text = "a long question " * 2000  # more than the free room in the pages there are
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.query(".error") and not app.generating)
        assert "disk full" in str(app.query(".error").last().render())
        assert prompt.text.strip() == ("a long question " * 2000).strip(), "the message is back in the box"
        assert app.is_running and len(app.query(".user")) == 1


async def test_a_chat_of_10000_messages_opens_with_its_last_ones(isolated_home):
    from localllm.session import ChatMessage

    store = ChatStore()
    conversation = store.create("scripted", "", "very long chat")
    for i in range(10_000):
        store.add(conversation, ChatMessage("user" if i % 2 == 0 else "assistant", f"message {i}"))
    model = ScriptedModel(words=3, delay=0)
    app = ChatApp(model_ref="x", store=store, loader=lambda ref, options: model, resume=True)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.session is not None and app.session.conversation_id == conversation)
        await pilot.pause()
        shown = app.query(".user").nodes + app.query(".assistant").nodes
        assert len(shown) == 200 and "9800 earlier messages" in str(app.query(".notice").first().render())
        assert str(shown[-1].source if hasattr(shown[-1], "source") else shown[-1].render()).strip() == "message 9999"
        await send(pilot, app, "and one more")
        assert app.store.messages(conversation)[-2].content == "and one more"
