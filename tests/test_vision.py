"""Images in: the starter as the language model with a tiny projector written by tests/vision_gguf.py
beside it (a vision model is a GGUF and its mmproj), through llama.cpp's own multimodal library.
What flows (run, the API, both HTTP APIs), the image tokens the projector's geometry gives, that
different images reach the model differently, the image cache, and refusals of bad images and of
images given to a model that cannot see."""

from __future__ import annotations

import base64
import io
import shutil
import struct
import zlib

import httpx
import ollama
import openai
import pytest
from conftest import assert_one_line_error, run_cli
from PIL import Image
from vision_gguf import IMAGE_TOKENS, ask, png, write_projector

from localllm import SamplingOptions, load_model
from localllm.errors import UsageError
from localllm.images import ImageError, decode
from localllm.model import collect

GREEDY = SamplingOptions(temperature=0, max_tokens=6)


# ---- images themselves ----------------------------------------------------------------------
def test_images_are_decoded_upright_and_bounded():
    picture = decode(png("red"))
    assert (picture.width, picture.height, len(picture.rgb)) == (80, 60, 80 * 60 * 3)
    assert picture.rgb[:3] == b"\xff\x00\x00" and decode(png("red")).digest == picture.digest != decode(png("blue")).digest

    # EXIF orientation 6 (the camera was turned): the picture comes out upright, 60 wide and 80 high.
    exif = Image.Exif()
    exif[0x0112] = 6
    data = io.BytesIO()
    Image.new("RGB", (80, 60), "green").save(data, "JPEG", exif=exif)
    assert (decode(data.getvalue()).width, decode(data.getvalue()).height) == (60, 80)


def _bomb(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height pixels, with a few bytes of data."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("data, message", [
    (_bomb(100_000, 100_000), "megapixels"),
    (_bomb(8000, 8000), "8000x8000 pixels: images up to 40 megapixels"),
    (png("red")[:40], "not an image that can be read"),
    (b"this is text, not a picture", "not an image that can be read"),
    (b"\x89PNG\r\n\x1a\n" + bytes(21 * 2**20), "MiB: images up to 20 MiB"),
])
def test_bad_images_get_one_clear_error(data, message):
    with pytest.raises(ImageError, match=message):
        decode(data, "photo.png")


# ---- the Python API -------------------------------------------------------------------------
def test_an_image_becomes_the_projectors_tokens_and_reaches_the_model(vision):
    tokens = vision.tokenize_images(f"look: {vision.image_marker} there", [decode(png("red"))])
    assert sum(1 for t in tokens if t < 0) == IMAGE_TOKENS  # (64 / 8 / 2) ** 2

    def first_scores(color):
        scoring = SamplingOptions(temperature=0, max_tokens=1, logprobs=5)
        events = [e for e in vision.chat(ask({"type": "image", "image": png(color)}), scoring) if hasattr(e, "logprobs")]
        return [(t, round(lp, 4)) for t, _, lp in events[0].logprobs[0].top]

    # Different pixels, different embeddings: the model's next-token scores differ.
    assert first_scores("red") != first_scores("blue")
    assert first_scores("red") == first_scores("red")


def test_a_second_question_about_an_image_reads_only_the_new_text(vision):
    picture = {"type": "image", "image": png("purple")}
    first = collect(vision.chat(ask(picture), GREEDY))
    history = ask(picture) + [{"role": "assistant", "content": first.text}, {"role": "user", "content": "And its colour?"}]
    second = collect(vision.chat(history, GREEDY))
    assert second.finished.usage.cached_tokens >= first.finished.usage.prompt_tokens - 1
    assert second.finished.usage.prompt_tokens - second.finished.usage.cached_tokens < 20


def test_encoding_an_image_is_said_before_it_runs_and_counted_after(vision):
    """The status of `run` and the chat: an image's encoder takes seconds on a CPU, so progress is
    said before it starts (naming it) and after it, as for a long prompt."""
    from localllm.events import PromptProgress
    from localllm.status import PromptEta

    two = [{"type": "image", "image": png("orange")}, {"type": "image", "image": png("teal")}]
    events = list(vision.chat(ask(*two), GREEDY))
    said = [e for e in events if isinstance(e, PromptProgress)]
    first_token = next(i for i, e in enumerate(events) if not isinstance(e, PromptProgress))
    assert all(isinstance(e, PromptProgress) for e in events[:first_token]) and len(said) == first_token
    before = [e for e in said if e.image]
    assert len(before) == 2 and before[0].done < before[1].done, "each image is announced"
    after = [e.done for e in said if not e.image]
    for image in before:  # after each image, its tokens are counted as read
        assert image.done + IMAGE_TOKENS in after
    assert said[-1].done == said[-1].total
    eta = PromptEta(0.0)
    assert eta.line(before[0], 0.0).startswith(f"reading the prompt: encoding an image, {before[0].done}/")


def test_a_text_only_model_refuses_images_by_name(starter_model, vision):
    with pytest.raises(UsageError, match="cannot see images"):
        collect(starter_model.chat(ask({"type": "image", "image": png("red")}), GREEDY))
    with pytest.raises(UsageError, match="not fetched from the network"):
        collect(vision.chat(ask({"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}), GREEDY))


# ---- run ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_run_takes_images_from_files_and_stdin(vision_gguf, starter_gguf, tmp_path):
    red, blue = tmp_path / "red.png", tmp_path / "blue.png"
    red.write_bytes(png("red"))
    blue.write_bytes(png("blue"))
    common = ("run", "-m", str(vision_gguf), "-t", "0", "--max-tokens", "4", "--ctx", "512", "--json", "--spec", "off")
    one = run_cli(*common, "--image", str(red), "What is this?")
    two = run_cli(*common, "--image", str(red), "--image", str(blue), "What is this?")
    piped = run_cli(*common, "--image", "-", "What is this?", stdin=png("red"))
    assert one.returncode == two.returncode == piped.returncode == 0, (one.stderr, two.stderr, piped.stderr)
    counts = [__import__("json").loads(r.stdout)["usage"]["prompt_tokens"] for r in (one, two, piped)]
    assert counts[1] - counts[0] >= IMAGE_TOKENS and counts[2] == counts[0]

    assert_one_line_error(run_cli("run", "-m", str(starter_gguf), "--image", str(red), "Hi"), 2, "cannot see images")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    assert_one_line_error(run_cli(*common, "--image", str(bad), "Hi"), 2, "bad.png is not an image")
    assert_one_line_error(run_cli(*common, "--image", str(tmp_path / "missing.png"), "Hi"), 2, "cannot read")


# ---- serve ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_both_http_apis_take_images(vision_gguf):
    from test_server_trust import AppServer

    from localllm.options import LoadOptions
    from localllm.server import ServerConfig

    from localllm.registry import find_installed

    served = find_installed(str(vision_gguf))
    server = AppServer(ServerConfig(LoadOptions(n_ctx=1024, n_threads=2, n_seq=2), default_model=str(vision_gguf),
                                    quiet=True, served=served))
    try:
        url = "data:image/png;base64," + base64.b64encode(png("red")).decode()
        api = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60)
        content = [{"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": url}}]
        seen = api.chat.completions.create(model=str(vision_gguf), messages=[{"role": "user", "content": content}],
                                           temperature=0, max_tokens=4)
        text_only = api.chat.completions.create(model=str(vision_gguf), temperature=0, max_tokens=4,
                                                messages=[{"role": "user", "content": "What is this?"}])
        assert seen.usage.prompt_tokens - text_only.usage.prompt_tokens >= IMAGE_TOKENS

        # Several at once, each with its own image: read while the others generate, none lost.
        from concurrent.futures import ThreadPoolExecutor

        def one(color):
            part = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(png(color)).decode()}}
            return api.chat.completions.create(model=str(vision_gguf), temperature=0, max_tokens=6,
                                               messages=[{"role": "user", "content": [part, {"type": "text", "text": "Hi"}]}])
        with ThreadPoolExecutor(4) as pool:
            replies = list(pool.map(one, ["red", "green", "blue", "yellow"]))
        assert len({r.usage.prompt_tokens for r in replies}) == 1 and all(r.choices[0].message.content for r in replies)

        # The Responses API's input_image and Anthropic's image blocks reach the model too.
        answered = api.responses.create(model=str(vision_gguf), max_output_tokens=4, temperature=0, input=[
            {"role": "user", "content": [{"type": "input_image", "image_url": url}, {"type": "input_text", "text": "What?"}]}])
        assert answered.usage.input_tokens >= IMAGE_TOKENS
        import anthropic

        claude = anthropic.Anthropic(base_url=server.url, api_key="unused", max_retries=0, timeout=60)
        block = {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                             "data": base64.b64encode(png("green")).decode()}}
        looked = claude.messages.create(model=str(vision_gguf), max_tokens=4, messages=[
            {"role": "user", "content": [block, {"type": "text", "text": "What is this?"}]}])
        assert looked.usage.input_tokens + looked.usage.cache_read_input_tokens >= IMAGE_TOKENS

        client = ollama.Client(host=server.url, timeout=60)
        assert "vision" in client.show(served.name).capabilities  # what Ollama's clients check before taking images
        shown = httpx.post(f"{server.url}/api/show", json={"model": served.name}).json()
        assert shown["projector_info"]["clip.projector_type"] == "gemma3"
        # Images no request sent before: their tokens are read (not found in the cache), whatever the answer.
        reply = client.chat(model=str(vision_gguf), messages=[{"role": "user", "content": "What is this?",
                                                               "images": [png("purple")]}],
                            options={"temperature": 0, "num_predict": 4})
        assert reply.done and reply.prompt_eval_count >= IMAGE_TOKENS
        generated = client.generate(model=str(vision_gguf), prompt="What is this?", images=[png("navy")],
                                    options={"temperature": 0, "num_predict": 4})
        assert generated.done and generated.prompt_eval_count >= IMAGE_TOKENS

        fetched = httpx.post(f"{server.url}/v1/chat/completions", timeout=30, json={
            "model": str(vision_gguf), "max_tokens": 2, "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}, {"type": "text", "text": "Hi"}]}]})
        assert fetched.status_code == 400 and "not fetched" in fetched.json()["error"]["message"]
        broken = httpx.post(f"{server.url}/api/chat", timeout=30, json={
            "model": str(vision_gguf), "stream": False, "messages": [{"role": "user", "content": "Hi", "images": ["bm90IGFuIGltYWdl"]}]})
        assert broken.status_code == 400 and "not an image" in broken.json()["error"]
    finally:
        server.stop()


@pytest.mark.slow
def test_image_urls_are_fetched_only_when_the_server_allows_it(vision_gguf, tmp_path):
    import http.server
    import threading
    from functools import partial

    from test_server_trust import AppServer

    from localllm.options import LoadOptions
    from localllm.server import ServerConfig

    (tmp_path / "cat.png").write_bytes(png("orange"))
    (tmp_path / "huge.png").write_bytes(b"\x89PNG" + bytes(21 * 2**20))
    files = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(http.server.SimpleHTTPRequestHandler,
                                                                      directory=str(tmp_path)))
    threading.Thread(target=files.serve_forever, daemon=True).start()
    server = AppServer(ServerConfig(LoadOptions(n_ctx=1024, n_threads=2), default_model=str(vision_gguf), quiet=True,
                                    allow_image_urls=True))
    try:
        base = f"http://127.0.0.1:{files.server_address[1]}"

        def ask_about(url):
            return httpx.post(f"{server.url}/v1/chat/completions", timeout=60, json={
                "model": str(vision_gguf), "max_tokens": 2, "temperature": 0, "messages": [{"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "What is this?"}]}]})

        seen = ask_about(f"{base}/cat.png")
        assert seen.status_code == 200 and seen.json()["usage"]["prompt_tokens"] > IMAGE_TOKENS, seen.text
        for url, message in ((f"{base}/missing.png", "HTTP 404"), (f"{base}/huge.png", "larger than 20 MiB")):
            refused = ask_about(url)
            assert refused.status_code == 400 and message in refused.json()["error"]["message"], refused.text
    finally:
        server.stop()
        files.shutdown()


# ---- a vision model as installed: add, list, show, pull, rm ---------------------------------
@pytest.mark.slow
def test_add_list_show_and_rm_know_the_projector(vision_gguf, starter_gguf, tmp_path):
    projector = next(vision_gguf.parent.glob("mmproj*.gguf"))
    lone = tmp_path / "lone-model.gguf"  # no projector beside it: given with --mmproj
    shutil.copy(starter_gguf, lone)
    added = run_cli("add", str(lone), "--name", "seeing", "--mmproj", str(projector))
    assert added.returncode == 0 and "sees images through" in added.stderr, added
    listed = {m["name"]: m for m in __import__("json").loads(run_cli("list", "--json").stdout)}
    assert listed["seeing"]["vision"] and listed["seeing"]["projector"] == str(projector)
    assert not listed["smollm2-135m-instruct:q4_1"]["vision"]
    assert "gguf+vision" in run_cli("list").stdout
    shown = run_cli("show", "seeing")
    assert shown.returncode == 0 and f"{IMAGE_TOKENS} tokens per image" in shown.stdout, shown
    planned = __import__("json").loads(run_cli("plan", "seeing", "--json").stdout)
    assert planned["vision"]["tokens_per_image"] == IMAGE_TOKENS and planned["vision"]["bytes"] > projector.stat().st_size // 2
    seen = run_cli("run", "-m", "seeing", "--image", "-", "-t", "0", "--max-tokens", "2", "--ctx", "512", "--json",
                   "What is this?", stdin=png("red"))
    assert seen.returncode == 0, seen
    assert run_cli("rm", "seeing", "--yes").returncode == 0 and lone.exists() and projector.exists()
    assert_one_line_error(run_cli("add", str(lone), "--name", "x", "--mmproj", str(starter_gguf)), 2,
                          "is not a vision projector")


@pytest.mark.slow
def test_pull_fetches_the_projector_and_rm_removes_it(vision_gguf, isolated_home):
    from hub_server import COMMIT, HubServer

    repo = "ggml-org/starter-vision-GGUF"
    projector = next(vision_gguf.parent.glob("mmproj*.gguf"))
    with HubServer() as hub:
        hub.add(repo, "starter-vision-Q4_1.gguf", vision_gguf)
        hub.add(repo, "mmproj-starter-vision-f16.gguf", projector)
        env = {"HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0"}
        pulled = run_cli("pull", repo, env=env)
        assert pulled.returncode == 0, pulled
    snapshot = isolated_home / "hf" / "hub" / f"models--{repo.replace('/', '--')}" / "snapshots" / COMMIT
    assert sorted(p.name for p in snapshot.iterdir()) == ["mmproj-starter-vision-f16.gguf", "starter-vision-Q4_1.gguf"]
    listed = __import__("json").loads(run_cli("list", "--json").stdout)
    assert [m["name"] for m in listed if m["source"] == "hf-cache"] == [f"{repo}/starter-vision-Q4_1.gguf"]  # not the projector
    assert all(m["vision"] for m in listed if m["source"] == "hf-cache")
    assert run_cli("rm", f"{repo}/starter-vision-Q4_1.gguf", "--yes").returncode == 0
    assert not snapshot.exists() or not any(snapshot.iterdir())


def test_the_planner_counts_the_projector_as_llama_cpp_allocates_it(vision):
    from localllm.projector import read

    facts = read(vision._loaded.vision.projector)
    reported = vision._loaded.vision.buffers
    assert facts.tokens_per_image == IMAGE_TOKENS and facts.images_fitting(1024, 24) == (1024 - 24) // IMAGE_TOKENS
    assert facts.weight_bytes == pytest.approx(reported["model size"], rel=0.05)
    assert reported["compute buffer size"] <= facts.compute_bytes <= 3 * reported["compute buffer size"]


# ---- images placed by M-RoPE (Qwen2-VL's kind) ------------------------------------------------
@pytest.fixture(scope="module")
def mrope_gguf(starter_gguf, tmp_path_factory):
    from vision_gguf import write_mrope_model, write_mrope_projector

    folder = tmp_path_factory.mktemp("mrope")
    write_mrope_projector(folder / "mmproj-qwen2vl-starter-f16.gguf")
    return write_mrope_model(starter_gguf, folder / "qwen2vl-starter.gguf")


def _first_scores(events) -> list[tuple[str, float]]:
    token = next(e for e in events if getattr(e, "logprobs", ()))
    return [(text, logprob) for text, _, logprob in token.logprobs[0].top]


def _llama_cpp_scores(model, messages, positions_from_llama_cpp: bool) -> list[tuple[str, float]]:
    """The first token's top scores as llama.cpp's own helper reads the prompt (text after an image
    at the position mtmd returns), or, as a control, with text positions counted by llama.cpp."""
    import ctypes

    import llama_cpp
    import numpy as np
    from llama_cpp import mtmd_cpp as mtmd

    from localllm.backends.llamacpp.pieces import Pieces
    from localllm.generation.media import split
    from localllm.generation.request import render

    loaded = model._loaded
    flat, pictures = split(messages, model.image_marker, "model")
    prompt = render(model, flat)[0].encode()
    params = llama_cpp.llama_context_default_params()
    params.n_ctx, params.n_batch, params.n_threads, params.n_threads_batch = 1024, 512, 2, 2
    ctx = llama_cpp.llama_init_from_model(loaded._model, params)
    chunks = mtmd.mtmd_input_chunks_init()
    bitmaps = (mtmd.mtmd_bitmap_p_ctypes * 1)()
    pixels = (ctypes.c_uint8 * len(pictures[0].rgb)).from_buffer_copy(pictures[0].rgb)
    bitmaps[0] = mtmd.mtmd_bitmap_init(pictures[0].width, pictures[0].height, pixels)
    try:
        text = mtmd.mtmd_input_text(prompt, len(prompt), True, True)
        assert mtmd.mtmd_tokenize(loaded.vision.ctx, chunks, ctypes.byref(text), bitmaps, 1) == 0
        n_past = llama_cpp.llama_pos(0)
        for i in range(mtmd.mtmd_input_chunks_size(chunks)):
            chunk = mtmd.mtmd_input_chunks_get(chunks, i)
            if positions_from_llama_cpp and mtmd.mtmd_input_chunk_get_type(chunk) == mtmd.MTMD_INPUT_CHUNK_TYPE_TEXT \
                    and i > 0:
                n = ctypes.c_size_t(0)
                ids = mtmd.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(n))
                array = (llama_cpp.llama_token * n.value)(*ids[: n.value])
                assert llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(array, n.value)) == 0
                continue
            last = i == mtmd.mtmd_input_chunks_size(chunks) - 1
            assert mtmd.mtmd_helper_eval_chunk_single(loaded.vision.ctx, ctx, chunk, n_past.value, 0, 512, last,
                                                      ctypes.byref(n_past)) == 0
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, -1), shape=(model.n_vocab,)).astype(np.float64)
    finally:
        mtmd.mtmd_bitmap_free(bitmaps[0])
        mtmd.mtmd_input_chunks_free(chunks)
        llama_cpp.llama_free(ctx)
    logprobs = logits - (logits.max() + np.log(np.exp(logits - logits.max()).sum()))
    top = np.argsort(-logprobs)[:5]
    pieces = Pieces(loaded._vocab)
    return [(pieces.bytes_of(int(i)).decode("utf-8", errors="replace"), float(logprobs[i])) for i in top]


@pytest.mark.slow
def test_mrope_images_take_their_positions_as_llama_cpp_places_them(mrope_gguf):
    """An image of 4 x 3 tokens (112 x 84 pixels in 28-pixel cells) advances the position by 4:
    the text after it is read where llama.cpp's own helper reads it, on both paths."""
    from test_server_trust import AppServer

    from localllm.options import LoadOptions
    from localllm.server import ServerConfig

    messages = ask({"type": "image", "image": png("red", (112, 84))})
    scoring = SamplingOptions(temperature=0, max_tokens=1, logprobs=5)
    with load_model(mrope_gguf, n_ctx=1024, n_threads=2, speculation="off") as model:
        tokens = model.tokenize_images(f"a {model.image_marker} b", [decode(png("red", (112, 84)))])
        assert sum(1 for t in tokens if t < 0) == 12 and model._loaded.vision.shift(tokens, len(tokens)) == 4 - 12
        ours = _first_scores(model.chat(messages, scoring))
        reference = _llama_cpp_scores(model, messages, positions_from_llama_cpp=False)
        control = _llama_cpp_scores(model, messages, positions_from_llama_cpp=True)
        again = _first_scores(model.chat(messages, scoring))  # the image's cells reused from the cache
    assert [t for t, _ in ours] == [t for t, _ in reference] == [t for t, _ in again]
    assert [lp for _, lp in ours] == pytest.approx([lp for _, lp in reference], abs=0.05)
    assert [lp for _, lp in control] != pytest.approx([lp for _, lp in reference], abs=0.05), \
        "positions counted from the cells give other scores: the test can tell"

    server = AppServer(ServerConfig(LoadOptions(n_ctx=1024, n_threads=2, n_seq=2, speculation="off"),
                                    default_model=str(mrope_gguf), quiet=True))
    try:
        url = "data:image/png;base64," + base64.b64encode(png("red", (112, 84))).decode()
        reply = httpx.post(f"{server.url}/v1/chat/completions", timeout=60, json={
            "model": str(mrope_gguf), "max_tokens": 1, "temperature": 0, "logprobs": True, "top_logprobs": 5,
            "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                      {"type": "text", "text": "What is in this picture?"}]}]}).json()
        served = [(a["token"], a["logprob"]) for a in reply["choices"][0]["logprobs"]["content"][0]["top_logprobs"]]
    finally:
        server.stop()
    assert [t for t, _ in served] == [t for t, _ in reference]
    assert [lp for _, lp in served] == pytest.approx([lp for _, lp in reference], abs=0.05)


@pytest.mark.slow
def test_a_tiled_image_is_several_chunks_all_cached(starter_gguf, tmp_path):
    """SmolVLM's projector (idefics3) cuts an image into tiles plus an overview: one image is several
    image chunks, each with its own placeholder, read in order and reused as a whole."""
    from vision_gguf import write_smolvlm_model

    from localllm.backends.base import stretches
    from localllm.projector import read

    model_path = write_smolvlm_model(starter_gguf, tmp_path / "smolvlm-starter.gguf")
    projector = write_projector(tmp_path / "mmproj-smolvlm-starter-f16.gguf", kind="idefics3", longest_edge=128)
    assert read(projector).tokens_per_image is None  # it depends on the image's size
    picture = {"type": "image", "image": png("red", (128, 96))}
    with load_model(model_path, n_ctx=2048, n_threads=2, speculation="off") as model:
        tokens = model.tokenize_images(f"a {model.image_marker} b", [decode(png("red", (128, 96)))])
        images = [(first, end) for first, end in stretches(tokens) if tokens[first] < 0]
        assert len(images) == 5 and all(end - first == IMAGE_TOKENS for first, end in images)  # 2 x 2 tiles + overview
        assert len({tokens[first] for first, _ in images}) == 5
        first = collect(model.chat(ask(picture), GREEDY))
        history = ask(picture) + [{"role": "assistant", "content": first.text}, {"role": "user", "content": "More?"}]
        second = collect(model.chat(history, GREEDY))
        blue = collect(model.chat(ask({"type": "image", "image": png("blue", (128, 96))}), GREEDY))
    assert second.finished.usage.cached_tokens >= first.finished.usage.prompt_tokens - 1
    assert first.finished.usage.prompt_tokens > 5 * IMAGE_TOKENS
    assert blue.finished.usage.cached_tokens < first.finished.usage.prompt_tokens - 5 * IMAGE_TOKENS  # no tile reused
