"""Images in the chat: a vision model's images attached by key or by a pasted path, and what a
chat's images cost before each reply (counting which turns fit, and the reply itself), on the
starter with tests/vision_gguf.py's projector."""

from __future__ import annotations

from pathlib import Path

import pytest
from vision_gguf import IMAGE_TOKENS, png, write_projector

from localllm import SamplingOptions, load_model
from localllm.model import collect

GREEDY = SamplingOptions(temperature=0, max_tokens=6)


@pytest.mark.slow
def test_a_chat_counts_its_images_exactly_without_decoding_them_again(vision, starter_gguf, tmp_path, monkeypatch):
    """What fits the window is probed several times per send: each image's own tokens are measured
    once, and the count still equals the prompt's with every image decoded, for fixed-size images
    and for tiled ones (SmolVLM's: the tokens depend on the image's shape)."""
    from vision_gguf import write_smolvlm_model

    from localllm import images
    from localllm.generation.media import split
    from localllm.generation.request import render
    from localllm.session import ChatMessage, ChatSession, ChatStore

    decoded = []
    real_from_file = images.from_file
    monkeypatch.setattr(images, "from_file", lambda path: decoded.append(path) or real_from_file(path))
    tiled = write_smolvlm_model(starter_gguf, tmp_path / "smolvlm-starter.gguf")
    write_projector(tmp_path / "mmproj-smolvlm-starter-f16.gguf", kind="idefics3", longest_edge=128)
    store = ChatStore(tmp_path / "chats.sqlite3")
    kept = []
    for i, (color, size) in enumerate((("red", (128, 96)), ("blue", (128, 32)), ("green", (32, 128)))):
        (tmp_path / f"{i}.png").write_bytes(png(color, size))
        kept.append(store.keep_image(tmp_path / f"{i}.png"))
    chat = store.create("m")
    for i, name in enumerate(kept):
        store.add(chat, ChatMessage("user", f"Picture {i}?", images=(name,)))
        store.add(chat, ChatMessage("assistant", f"A picture, number {i}."))
    with load_model(tiled, n_ctx=2048, n_threads=2, speculation="off") as smolvlm:
        for model in (vision, smolvlm):
            session = ChatSession(model, store, "m", conversation_id=chat, messages=store.messages(chat))
            session.images.picture(kept[0])  # a reply decoded it: kept decoded
            assert session.images.picture(kept[0]) is session.images.picture(kept[0])
            for start in (0, 2, 4):
                messages, pictures = split(session._chat_messages(start), model.image_marker, "m")
                every_image_decoded = len(model.tokenize_images(render(model, messages, None)[0], pictures))
                decoded.clear()
                assert session._count(start) == every_image_decoded, (model, start)
                assert decoded == [], "each image was decoded once, for the session's first exact count"
            assert session._count(0) == session._count(0) and decoded == []
            sizes = {session.images.beyond_stand_in(name) for name in kept}
            # Scaled to its longest edge, then tiled, with an overview: 2 x 2 tiles (as the stand-in), 2 x 1
            # and 1 x 2 (their row and column separators differ by a token).
            assert len(sizes) == (3 if model is smolvlm else 1), "tiles follow the shape; a fixed projector's do not"

def test_a_chats_replies_decode_each_image_once(vision, tmp_path, monkeypatch):
    """Each reply sends every image still in its context: the chat keeps them decoded, within a bound."""
    from localllm import chat_images, images
    from localllm.session import ChatSession, ChatStore

    decoded = []
    real_from_file = images.from_file
    monkeypatch.setattr(images, "from_file", lambda path: decoded.append(path) or real_from_file(path))
    (tmp_path / "a.png").write_bytes(png("navy"))
    session = ChatSession(vision, ChatStore(tmp_path / "chats.sqlite3"), "m", sampling=GREEDY)
    first = collect(session.send("What is this?", [tmp_path / "a.png"]))
    second = collect(session.send("And now?"))
    kept = [path for path in decoded if Path(path).parent == session.store.image_folder]
    assert len(kept) == 1, "the kept copy is decoded once for both replies"
    assert second.finished.usage.cached_tokens >= first.finished.usage.prompt_tokens - 1, "the same pixels: cells reused"
    # Bounded: a full store takes no more (a reply reads its images in order: evicting the oldest
    # would miss every one), and images whose turns left the window are let go.
    monkeypatch.setattr(chat_images, "PICTURE_BYTES", 80 * 60 * 3)  # one picture
    (tmp_path / "white.png").write_bytes(png("white"))
    (tmp_path / "black.png").write_bytes(png("black"))
    white, black = session.store.keep_image(tmp_path / "white.png"), session.store.keep_image(tmp_path / "black.png")
    session.images.keep_only([])
    kept_white = session.images.picture(white)
    assert session.images.picture(black) is not session.images.picture(black), "no room: decoded each time"
    assert session.images.picture(white) is kept_white
    session.images.keep_only([black])
    assert session.images.picture(black) is session.images.picture(black), "room again"


@pytest.mark.slow
async def test_the_chat_attaches_images_by_key_and_by_a_pasted_path(vision, tmp_path):
    from test_tui import SIZE, real_loader, scripted_app, send, wait_for

    from localllm.session import ChatStore
    from localllm.tui import ChatApp

    photo, other = tmp_path / "my photo.png", tmp_path / "other.png"
    photo.write_bytes(png("red"))
    other.write_bytes(png("blue"))
    store = ChatStore()
    app = ChatApp(model_ref="x", store=store, loader=real_loader(vision))
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: app.session is not None)
        prompt = app.query_one("#prompt")
        prompt.text = str(photo).replace(" ", "\\ ")  # how a terminal pastes a dropped file
        prompt.focus()
        await pilot.press("enter")
        await wait_for(pilot, lambda: bool(app.attached))
        assert "1 image attached" in app.status_text and not app.session.messages and prompt.text == ""

        await send(pilot, app, "What is in this picture?")
        question, answer = app.session.messages
        assert len(question.images) == 1 and answer.content.strip() and not app.attached
        assert app.session.used_tokens > IMAGE_TOKENS
        assert "[image: my photo.png]" in str(app.query(".user").last().render())

        await pilot.press("f9")  # the key (F6 and F7 are the prompt's: select line, select all)
        await wait_for(pilot, lambda: app.screen.query("#answer"))
        app.screen.query_one("#answer").value = f"'{other}'"
        await pilot.press("enter")
        await wait_for(pilot, lambda: bool(app.attached))
        await send(pilot, app, "And this one?")
        assert len(app.session.messages[-2].images) == 1 and app.session.messages[-1].content.strip()

    # Kept with the chat: its own copies, named by their hashes, there when the chat is opened again.
    saved = ChatStore(store.path)
    [conversation] = saved.conversations()
    kept = [name for m in saved.messages(conversation.id) for name in m.images]
    assert len(set(kept)) == 2 and all((saved.image_folder / name).is_file() for name in kept)
    photo.unlink()
    assert (saved.image_folder / kept[0]).read_bytes() == png("red")

    text_only, _ = scripted_app()
    async with text_only.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: text_only.session is not None)
        prompt = text_only.query_one("#prompt")
        prompt.text = str(other)
        prompt.focus()
        await pilot.press("enter")
        await pilot.pause(0.2)
        assert text_only.attached == [] and not text_only.session.messages
