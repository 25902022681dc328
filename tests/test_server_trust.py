"""What a web page, a hostile client or a bad number must not be able to do to `localllm serve`.

The app runs under uvicorn in this process, on 127.0.0.1, and is spoken to over real HTTP, with
raw sockets where a client library would tidy the request (Host spellings, HTTP/1.0)."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from localllm.engine import IDLE_WAKE_S, Engine, Served
from localllm.options import LoadOptions, parse_duration
from localllm.server import Listen, ServerConfig, bind, create_app


class AppServer:
    """create_app() under uvicorn on a thread, on a free loopback port."""

    def __init__(self, config: ServerConfig, engine: Engine | None = None):
        import uvicorn

        self.engine = engine or Engine()
        self.sock = bind(Listen("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(create_app(config, self.engine), log_level="error", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)

    def raw(self, request: bytes) -> tuple[int, bytes]:
        """Send bytes as they are; the status code and the body."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as conn:
            conn.sendall(request)
            data = b""
            while chunk := conn.recv(65536):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        return int(head.split(b" ", 2)[1]), body

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.engine.shutdown()
        self.sock.close()


def config(**fields) -> ServerConfig:
    return ServerConfig(load_options=LoadOptions(n_ctx=512, n_threads=2), quiet=True, **fields)


@pytest.fixture
def app():
    server = AppServer(config(cors=("http://app.example",)))
    yield server
    server.stop()


# ---- DNS rebinding: the Host header --------------------------------------------------------
@pytest.mark.parametrize("host, allowed", [
    ("localhost", True), ("LOCALHOST", True), ("localhost:{port}", True), ("127.0.0.1:{port}", True),
    ("[::1]:{port}", True), ("127.0.0.2", True), ("chat.localhost:{port}", True), ("localhost.", True),
    ("evil.example:11434", False), ("127.0.0.1.nip.io", False), ("localhost.evil.example", False),
    ("attacker.example:{port}", False), ("[::1", False), ("localhost:http", False), ("", False),
])
def test_only_loopback_host_names_are_answered(app, host, allowed):
    host = host.format(port=app.port)
    status, body = app.raw(f"GET /api/tags HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    assert (status == 200) == allowed, (host, status, body[:200])
    if not allowed and status != 400:  # the HTTP parser itself may refuse a malformed one
        assert status == 403 and "host" in json.loads(body)["error"]


def test_http_1_0_without_a_host_is_answered(app):
    status, body = app.raw(b"GET /api/version HTTP/1.0\r\n\r\n")
    assert status == 200 and "version" in json.loads(body)


def test_allowed_hosts_add_names_and_a_network_bind_answers_addresses(monkeypatch):
    monkeypatch.setenv("LOCALLLM_ALLOWED_HOSTS", "from-env.lan")
    from localllm.server.guard import Policy, split_names

    named = Policy("127.0.0.1", True, split_names(("box.lan",), "LOCALLLM_ALLOWED_HOSTS"))
    assert named.host_allowed("BOX.lan:8642") and named.host_allowed("from-env.lan")
    assert not named.host_allowed("other.lan") and not named.host_allowed("192.168.1.5:8642")
    network = Policy("0.0.0.0", False)
    assert network.host_allowed("192.168.1.5:8642") and network.host_allowed("[fe80::1]:8642")
    assert not network.host_allowed("evil.example")


# ---- cross-site requests: Origin and Content-Type -------------------------------------------
@pytest.mark.parametrize("origin, allowed", [
    ("http://localhost:3000", True), ("http://127.0.0.1:8080", True), ("http://app.example", True),
    ("https://evil.example", False), ("null", False), ("http://localhost.evil.example", False),
    ("http://app.example.evil.example", False),
])
def test_browser_origins_not_allowed_are_refused_on_every_route(app, origin, allowed):
    for method, path, body in (("GET", "/v1/models", None), ("GET", "/api/tags", None),
                               ("POST", "/api/generate", {"model": "no-such-model", "keep_alive": 0})):
        response = httpx.request(method, app.url + path, json=body, headers={"Origin": origin})
        if allowed:
            assert response.status_code != 403, (origin, path)
            assert response.headers.get("access-control-allow-origin") == origin
        else:
            assert response.status_code == 403, (origin, path)
            assert "access-control-allow-origin" not in response.headers


def test_a_preflight_from_a_local_page_is_answered(app):
    preflight = {"Origin": "http://localhost:5173", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "content-type"}
    response = httpx.options(app.url + "/v1/chat/completions", headers=preflight)
    assert response.status_code == 200 and response.headers["access-control-allow-origin"] == "http://localhost:5173"
    evil = httpx.options(app.url + "/v1/chat/completions", headers={**preflight, "Origin": "https://evil.example"})
    assert evil.status_code == 403


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", None])
def test_posts_that_are_not_json_get_415(app, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    body = json.dumps({"model": "starter", "prompt": "hi", "keep_alive": 0})
    for path in ("/api/generate", "/v1/chat/completions", "/api/show"):
        request = f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {len(body)}\r\nConnection: close\r\n"
        request += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        status, reply = app.raw((request + "\r\n" + body).encode())
        assert status == 415 and "application/json" in reply.decode(), (path, content_type)


def test_json_with_parameters_is_accepted(app):
    response = httpx.post(app.url + "/v1/chat/completions", content=json.dumps({"model": "no-such", "messages": []}),
                          headers={"Content-Type": "Application/JSON; charset=utf-8"})
    assert response.status_code == 400 and response.json()["error"]["param"] == "messages"


# ---- what a client may name, and how mistakes are answered ------------------------------------
def test_model_paths_are_refused_with_one_answer_whatever_is_on_disk(app, starter_gguf, tmp_path):
    (tmp_path / "notes.gguf").write_text("not a model")
    names = [str(starter_gguf), "/etc/passwd", "../", str(tmp_path), str(tmp_path / "notes.gguf"),
             str(tmp_path / "missing.gguf"), "~/.ssh/id_rsa", "no-such-model"]
    answers = set()
    for name in names:
        for path, body in (("/v1/chat/completions", {"model": name, "messages": [{"role": "user", "content": "hi"}]}),
                           ("/api/show", {"model": name}), ("/v1/embeddings", {"model": name, "input": "hi"})):
            response = httpx.post(app.url + path, json=body)
            assert response.status_code == 404, (name, path, response.text)
            answers.add(response.text.replace(json.dumps(name)[1:-1], "NAME").replace(name, "NAME"))
    assert len(answers) == 2  # one per API (OpenAI, Ollama), the same for every name
    assert not any(str(tmp_path) in a or "GGUF" in a or "directory" in a for a in answers)


def test_with_model_paths_allowed_a_bad_file_is_the_clients_400(tmp_path):
    (tmp_path / "notes.gguf").write_text("not a model")
    server = AppServer(config(allow_paths=True))
    try:
        for name, says in ((str(tmp_path / "notes.gguf"), "not a GGUF"), (str(tmp_path), "directory")):
            response = httpx.post(server.url + "/v1/chat/completions", timeout=30,
                                  json={"model": name, "messages": [{"role": "user", "content": "hi"}]})
            assert response.status_code == 400 and says in response.json()["error"]["message"], response.text
        missing = httpx.post(server.url + "/api/chat", json={"model": str(tmp_path / "nope.gguf"), "messages": []})
        assert missing.status_code in (400, 404)
    finally:
        server.stop()


def test_a_lone_surrogate_is_a_400(app):
    body = b'{"model": "starter", "messages": [{"role": "user", "content": "\\ud800 hi"}]}'
    response = httpx.post(app.url + "/v1/chat/completions", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and "surrogate" in response.json()["error"]["message"]
    nested = b'{"model": "starter", "messages": [{"role": "user", "content": "hi"}], "stop": ["\\udfff"]}'
    assert httpx.post(app.url + "/v1/chat/completions", content=nested,
                      headers={"Content-Type": "application/json"}).status_code == 400


# ---- an engine that cannot die silently --------------------------------------------------------
@pytest.mark.parametrize("text", ["10000000000", "1" + "0" * 400, "99999999999h", "5000000000000m", "-1"])
def test_a_huge_or_negative_duration_means_for_ever(text):
    assert parse_duration(text) is None


def test_the_idle_engine_never_waits_longer_than_the_queue_can(tmp_path):
    engine = Engine(keep_alive=None)
    assert engine._idle_wait() == IDLE_WAKE_S
    engine._served["m"] = Served(tmp_path / "m.gguf", model=None, batcher=None, keep_alive=9.9e9)
    assert 0 < engine._idle_wait() <= IDLE_WAKE_S  # queue.get(timeout=9.9e9) raises OverflowError


class _Fatal(BaseException):
    """What no `except Exception` catches: the engine thread ends."""


class _FatalBatcher:
    def busy(self):
        raise _Fatal("the thread is gone")


def test_a_dead_engine_thread_is_a_503_everywhere_and_health_says_why():
    engine = Engine()
    server = AppServer(config(), engine)
    try:
        assert httpx.get(server.url + "/health").json() == {"status": "ok"}
        assert engine.submit(lambda: 42).result(5) == 42
        engine._served["x"] = Served("x", model=None, batcher=_FatalBatcher())
        engine._wake()
        engine._thread.join(5)
        assert not engine._thread.is_alive()
        health = httpx.get(server.url + "/health")
        assert health.status_code == 503 and "the thread is gone" in health.json()["error"]
        assert httpx.get(server.url + "/").status_code == 503
        ask = {"model": "starter", "messages": [{"role": "user", "content": "hi"}]}
        for path, body in (("/v1/chat/completions", ask), ("/api/chat", ask),
                           ("/api/generate", {"model": "starter", "prompt": "hi"})):
            response = httpx.post(server.url + path, json=body, timeout=10)
            assert response.status_code == 503, (path, response.text)
            assert "engine has stopped" in response.text
    finally:
        server.stop()


def test_an_error_in_a_step_is_reported_and_the_engine_goes_on(capfd):
    engine = Engine()

    class Broken:
        calls = 0

        def busy(self):
            Broken.calls += 1
            if Broken.calls == 1:
                raise RuntimeError("a bug in a batcher")
            return False

    assert engine.submit(lambda: None).result(5) is None
    engine._served["x"] = Served("x", model=None, batcher=Broken())
    engine._wake()
    deadline = time.monotonic() + 5
    while Broken.calls < 2 and time.monotonic() < deadline:
        engine._wake()
        time.sleep(0.01)
    del engine._served["x"]
    assert engine.submit(lambda: 7).result(5) == 7 and engine.health() is None
    assert "a bug in a batcher" in capfd.readouterr().err
    engine.shutdown()


# ---- the served model under one name ------------------------------------------------------------
@pytest.mark.slow
def test_a_model_served_by_path_is_listed_shown_and_answered_under_one_name(starter_gguf, tmp_path):
    from embedding_gguf import write_with_template

    from localllm.registry import find_installed

    template = (Path(__file__).parent / "data" / "chat_templates" / "Qwen-Qwen3-0.6B.jinja").read_text()
    mine = write_with_template(starter_gguf, tmp_path / "mine-qwen3.gguf", template)
    served = find_installed(str(mine))
    server = AppServer(config(default_model=str(mine), served=served))
    try:
        assert served.name == "mine-qwen3.gguf"
        assert served.name in [m["id"] for m in httpx.get(server.url + "/v1/models").json()["data"]]
        assert httpx.get(f"{server.url}/v1/models/{served.name}").status_code == 200
        assert served.name in [m["name"] for m in httpx.get(server.url + "/api/tags").json()["models"]]
        shown = httpx.post(server.url + "/api/show", json={"model": served.name}).json()
        assert shown["capabilities"] == ["completion", "tools", "thinking"] and "<tool_call>" in shown["template"]
        starter = httpx.post(server.url + "/api/show", json={"model": "starter"}).json()
        assert starter["capabilities"] == ["completion"] and starter["details"]["parameter_size"]
    finally:
        server.stop()


@pytest.mark.slow
def test_the_served_name_is_answered_and_reported_by_ps(starter_gguf, tmp_path):
    import shutil

    from localllm.registry import find_installed

    mine = tmp_path / "mine.gguf"
    shutil.copyfile(starter_gguf, mine)
    server = AppServer(config(default_model=str(mine), served=find_installed(str(mine))))
    try:
        reply = httpx.post(server.url + "/v1/chat/completions", timeout=60, json={
            "model": "mine.gguf", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})
        assert reply.status_code == 200 and reply.json()["model"] == "mine.gguf"
        assert [m["name"] for m in httpx.get(server.url + "/api/ps").json()["models"]] == ["mine.gguf"]
    finally:
        server.stop()


# ---- the API key, kept out of `ps` ------------------------------------------------------------
def test_the_api_key_comes_from_a_file_or_the_environment(tmp_path):
    from localllm.cli.serve import _api_key
    from localllm.errors import UsageError

    key_file = tmp_path / "key"
    key_file.write_text("sk-from-file\nsecond line ignored\n")
    assert _api_key(key_file, None) == "sk-from-file"
    assert _api_key(None, "  sk-given  ") == "sk-given" and _api_key(None, None) is None
    for content in ("", "\n", "sk with\tcontrol", "x" * 5000):
        key_file.write_text(content)
        with pytest.raises(UsageError):
            _api_key(key_file, None)
    with pytest.raises(UsageError, match="once"):
        _api_key(key_file, "sk-both")
    with pytest.raises(UsageError, match="cannot read"):
        _api_key(tmp_path / "missing", None)


@pytest.mark.slow
def test_a_key_file_is_required_of_every_request_and_the_argument_warns(tmp_path):
    import psutil
    from server_process import ServerProcess, isolated_env

    key_file = tmp_path / "key"
    key_file.write_text("sk-local-file-5b1e\n")
    server = ServerProcess("--api-key-file", str(key_file), env=isolated_env(tmp_path))
    try:
        assert httpx.get(server.url + "/v1/models").status_code == 401
        assert httpx.get(server.url + "/v1/models", headers={"Authorization": "Bearer sk-local-file-5b1e"}).status_code == 200
        assert not any("sk-local-file-5b1e" in " ".join(p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"]))
    finally:
        server.stop()
    visible = ServerProcess("--api-key", "sk-on-the-command-line", env=isolated_env(tmp_path / "b"))
    try:
        assert any("visible to every user" in line for line in visible.lines)
    finally:
        visible.stop()


# ---- a schema no document satisfies --------------------------------------------------------------
@pytest.mark.slow
def test_a_schema_no_document_satisfies_is_a_400_before_any_answer(starter_gguf):
    server = AppServer(config(default_model="starter"))
    try:
        for stream in (False, True):
            body = {"model": "starter", "messages": [{"role": "user", "content": "hi"}], "stream": stream, "max_tokens": 8,
                    "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#"}}}}
            response = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60)
            assert response.status_code == 400, response.text
            assert "cannot be enforced" in response.json()["error"]["message"]
        fine = httpx.post(server.url + "/v1/chat/completions", timeout=60,
                          json={"model": "starter", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
        assert fine.status_code == 200
    finally:
        server.stop()


@pytest.mark.slow
def test_curl_works_as_the_readme_shows_and_a_form_post_says_what_to_send(app):
    import subprocess

    tags = subprocess.run(["curl", "-s", f"{app.url}/api/tags"], capture_output=True, text=True, timeout=30)
    assert "models" in json.loads(tags.stdout)
    body = json.dumps({"model": "no-such-model", "messages": [{"role": "user", "content": "Hi"}]})
    shown = subprocess.run(["curl", "-s", f"{app.url}/v1/chat/completions", "-H", "Content-Type: application/json",
                            "-d", body], capture_output=True, text=True, timeout=30)
    assert json.loads(shown.stdout)["error"]["type"] == "not_found_error"
    form = subprocess.run(["curl", "-s", "-w", "%{http_code}", f"{app.url}/api/chat", "-d", body],
                          capture_output=True, text=True, timeout=30)
    assert form.stdout.endswith("415") and "Content-Type: application/json" in form.stdout
