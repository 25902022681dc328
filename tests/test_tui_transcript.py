"""The chat's transcript as a reader meets it, driven through Textual's Pilot: paging through it
from the prompt box, and code that stays inside the panel."""

from __future__ import annotations

from localllm.tui import ChatApp
from test_tui import SIZE, ScriptedModel, scripted_app, wait_for

from localllm.session import ChatStore



async def test_page_keys_scroll_the_transcript_while_the_prompt_has_focus(isolated_home):
    from localllm.session import ChatMessage

    store = ChatStore()
    conversation = store.create("scripted", "", "a chat to scroll")
    for i in range(60):
        store.add(conversation, ChatMessage("user" if i % 2 == 0 else "assistant", f"message {i}"))
    app = ChatApp(model_ref="x", store=store, loader=lambda ref, options: ScriptedModel(words=3, delay=0), resume=True)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.session is not None and app.session.conversation_id == conversation)
        await pilot.pause()
        messages = app.query_one("#messages")
        assert app.focused is app.query_one("#prompt")
        bottom = messages.scroll_y
        assert bottom > 0
        await pilot.press("pageup")
        await wait_for(pilot, lambda: messages.scroll_y < bottom)
        await pilot.press("pagedown")
        await wait_for(pilot, lambda: messages.scroll_y == bottom)
        assert app.focused is app.query_one("#prompt") and app.query_one("#prompt").text == ""


async def test_a_long_code_line_wraps_inside_the_panel(isolated_home):
    from textual.widgets import Markdown
    from textual.widgets._markdown import MarkdownFence

    app, _ = scripted_app()
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.session is not None)
        line = "x = [" + ", ".join(str(i) for i in range(120)) + "]"
        answer = Markdown(f"```python\n{line}\n```", classes="assistant")
        await app.query_one("#messages").mount(answer)
        await pilot.pause()
        fence = answer.query_one(MarkdownFence)
        label = fence.children[0]
        assert label.region.right <= app.query_one("#messages").region.right
        assert label.region.height > 3, "the long line takes several rows instead of running past the edge"
