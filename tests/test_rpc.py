"""llama.cpp RPC: `localllm rpc-worker`, and `--rpc` placing a model's layers on workers.

The workers are real: `localllm rpc-worker` processes on 127.0.0.1, serving this machine's CPU
through ggml's own RPC server (libggml-rpc, built by packaging/build-ggml-rpc.sh, which
tests/run.sh runs). Everything that loads a model over RPC runs in a child process: ggml keeps
a registered worker for the life of the process, and aborts it when that worker goes away.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import threading
import time
from dataclasses import replace
from pathlib import Path

import httpx
import psutil
import pytest
from conftest import LOCALLLM, assert_one_line_error, run_cli
from server_process import ServerProcess, isolated_env
from test_planner import llama_spec, profile

from localllm.backends.llamacpp import rpc
from localllm.backends.llamacpp.planner import plan
from localllm.backends.llamacpp.rpc import RpcError
from localllm.errors import UsageError
from localllm.hardware import BuildInfo, DeviceInfo

PROMPT = "Name three colors."


@pytest.fixture(scope="session")
def rpc_library() -> Path:
    path = Path(os.environ.get("LOCALLLM_GGML_RPC") or rpc.built_library_path())
    assert path.is_file(), f"no RPC library at {path}: build it with `bash packaging/build-ggml-rpc.sh` (tests/run.sh does)"
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Worker:
    def __init__(self, env: dict[str, str]):
        self.port = _free_port()
        self.endpoint = f"127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([*LOCALLLM, "rpc-worker", "--port", str(self.port), "--threads", "2"], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                rpc.hello(self.endpoint, timeout=2)
                return
            except RpcError:
                assert self.proc.poll() is None, self.proc.stdout.read()
                time.sleep(0.1)
        raise AssertionError("the RPC worker did not start")

    def rss(self) -> int:
        return sum(p.memory_info().rss for p in [psutil.Process(self.proc.pid), *psutil.Process(self.proc.pid).children(True)])

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def workers(rpc_library, tmp_path):
    env = isolated_env(tmp_path, LOCALLLM_GGML_RPC=str(rpc_library))
    started = [Worker(env), Worker(env)]
    yield env, started
    for worker in started:
        worker.stop()


def test_endpoints_are_checked():
    assert rpc.parse_endpoints("10.0.0.2:50052, gpu-box.lan:6000") == ("10.0.0.2:50052", "gpu-box.lan:6000")
    for bad in ("", "10.0.0.2", "10.0.0.2:0", "10.0.0.2:70000", "[::1]:50052", "a b:1", ":50052", "h:p"):
        with pytest.raises(UsageError):
            rpc.parse_endpoints(bad)
    with pytest.raises(UsageError, match="at most 16"):
        rpc.parse_endpoints(",".join(f"10.0.0.{i}:1" for i in range(17)))
    with pytest.raises(UsageError, match="twice"):
        rpc.parse_endpoints("h:1,h:1")


def _one_shot_server(reply: bytes | None) -> tuple[str, threading.Thread]:
    """A loopback TCP server that answers the first connection with `reply` (None: silence)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)

    def answer():
        conn, _ = server.accept()
        with conn, server:
            conn.recv(64)
            if reply is None:
                time.sleep(1.5)
            else:
                conn.sendall(reply)

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    return f"127.0.0.1:{server.getsockname()[1]}", thread


def test_hello_tells_what_is_wrong_with_an_endpoint():
    endpoint, _ = _one_shot_server(struct.pack("<QBBBB", 28, 8, 0, 0, 0) + bytes(24))
    with pytest.raises(RpcError, match="protocol 8.0.0"):
        rpc.hello(endpoint)
    endpoint, _ = _one_shot_server(b"HTTP/1.1 400 Bad Request\r\n\r\n" + bytes(40))
    with pytest.raises(RpcError, match="not an RPC worker"):
        rpc.hello(endpoint)
    endpoint, _ = _one_shot_server(None)
    with pytest.raises(RpcError, match="did not answer"):
        rpc.hello(endpoint, timeout=0.5)
    endpoint, thread = _one_shot_server(b"")
    with pytest.raises(RpcError, match="closed"):
        rpc.hello(endpoint)
    with pytest.raises(RpcError, match="cannot reach"):
        rpc.hello(f"127.0.0.1:{_free_port()}")


@pytest.mark.slow
def test_a_missing_worker_or_library_is_one_line(rpc_library):
    result = run_cli("run", "-m", "starter", "--rpc", f"127.0.0.1:{_free_port()}", "Hi",
                     env={"LOCALLLM_GGML_RPC": str(rpc_library)})
    assert_one_line_error(result, 4, "cannot reach RPC worker 127.0.0.1:")
    result = run_cli("rpc-worker", "--port", str(_free_port()), env={"LOCALLLM_GGML_RPC": "/nonexistent/libggml-rpc.so"})
    assert_one_line_error(result, 4, "without RPC support", "build-ggml-rpc.sh")
    assert_one_line_error(run_cli("run", "--rpc", "nohost", "Hi"), 2, "not an RPC worker address")


@pytest.mark.slow
def test_worker_listens_on_loopback_unless_told_and_warns_when_told(rpc_library, workers):
    _, (worker, _) = workers
    assert_one_line_error(run_cli("rpc-worker", "--port", str(worker.port)), 2, "port is in use")
    assert_one_line_error(run_cli("rpc-worker", "--host", "localhost"), 2, "IPv4 address")
    assert_one_line_error(run_cli("rpc-worker", "--host", "0.0.0.0", "--port", str(_free_port())), 2,
                          "--expose-unauthenticated")
    # 192.0.2.1 (TEST-NET-1) is no address of this machine: the warning, then no bind, and nothing exposed.
    result = run_cli("rpc-worker", "--host", "192.0.2.1", "--port", str(_free_port()), "--expose-unauthenticated")
    assert result.returncode == 2
    assert "no authentication" in result.stderr and "cannot listen on 192.0.2.1" in result.stderr
    assert "Traceback" not in result.stderr
    local = run_cli("rpc-worker", "--host", "127.0.0.1", "--port", str(worker.port))
    assert "no authentication" not in local.stderr


@pytest.mark.slow
def test_layers_go_to_the_workers_and_the_answer_is_the_local_one(workers, starter_gguf):
    env, (a, b) = workers
    endpoints = f"{a.endpoint},{b.endpoint}"
    planned = json.loads(_cli(env, "plan", "starter", "--rpc", endpoints, "--json"))
    assert planned["fit"] == "gpu"
    devices = {d["device"]: d for d in planned["estimate"]}
    assert set(devices) == {"cpu", "rpc0", "rpc1"} and devices["rpc0"]["weights"] > 0 and devices["rpc1"]["weights"] > 0

    local = json.loads(_cli(env, "run", "-m", "starter", "-t", "0", "--max-tokens", "24", "--spec", "off", "--json", PROMPT))
    before = [a.rss(), b.rss()]
    server = ServerProcess("-m", "starter", "--rpc", endpoints, "--parallel", "1", env=env)
    try:
        deadline = time.monotonic() + 60
        while not httpx.get(f"{server.url}/api/ps").json()["models"]:
            assert time.monotonic() < deadline, server.lines
            time.sleep(0.2)
        grown = [after - start for after, start in zip([a.rss(), b.rss()], before)]
        # Each worker holds the weights the plan gave it (RSS counts the pages written into).
        assert grown[0] >= 0.9 * devices["rpc0"]["weights"], (grown, devices)
        assert grown[1] >= 0.9 * devices["rpc1"]["weights"], (grown, devices)
    finally:
        server.stop()

    remote = json.loads(_cli(env, "run", "-m", "starter", "--rpc", endpoints, "-t", "0", "--max-tokens", "24", "--spec", "off", "--json", PROMPT))
    assert remote["settings"]["rpc"] == [a.endpoint, b.endpoint]
    assert remote["settings"]["n_gpu_layers"] == planned["settings"]["n_gpu_layers"] == 31  # 30 blocks and the head
    # The workers run the same ggml CPU kernels as this process, so greedy decoding agrees.
    assert remote["text"] == local["text"] and remote["usage"] == local["usage"]


def _cli(env, *args: str) -> str:
    proc = subprocess.run([*LOCALLLM, *args], env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.slow
def test_planner_puts_workers_first_and_splits_by_their_free_memory(tmp_path):
    """A reading of this machine's devices with two workers registered (llamacpp_runtime.devices())."""
    gib = 2**30
    build = BuildInfo(False, (DeviceInfo("CPU", "cpu", 24 * gib, 24 * gib),
                              DeviceInfo("RPC0", "gpu", 2 * gib, 24 * gib, "10.0.0.2:50052"),
                              DeviceInfo("RPC1", "gpu", 6 * gib, 24 * gib, "10.0.0.3:50052")))
    hw = replace(profile("laptop_8gb_cpu", tmp_path), build=build)
    assert [g.vendor for g in hw.offload_gpus] == ["rpc", "rpc"]
    assert hw.offload_gpus[0].name == "RPC0 at 10.0.0.2:50052"
    chosen = plan(hw, llama_spec("Llama-3.2-3B-Instruct", 28, 3072, 8192, 24, 8, 2_019_377_696, "Q4_K_M"))
    assert chosen.fit == "gpu" and chosen.shape.tensor_split == (2 * gib, 6 * gib)
    by_device = {d.device: d for d in chosen.estimate.devices}
    assert by_device["rpc1"].weights > 2 * by_device["rpc0"].weights
    assert "RPC0 at 10.0.0.2:50052" in chosen.explanation


def _hello(conn: socket.socket) -> None:
    conn.sendall(struct.pack("<BQ", rpc._CMD_HELLO, rpc._CAPS_SIZE) + bytes(rpc._CAPS_SIZE))
    assert len(_recv(conn, 8 + 4 + rpc._CAPS_SIZE)) == 36


def _recv(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size and (chunk := conn.recv(size - len(data))):
        data += chunk
    return data


def _closed_by_worker(conn: socket.socket, within: float = 5) -> bool:
    conn.settimeout(within)
    try:
        return conn.recv(1) == b""
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


CMD_ALLOC_BUFFER, CMD_SET_TENSOR = 0, 6


@pytest.mark.slow
def test_hostile_messages_are_refused_and_the_worker_serves_a_real_client_after(workers, starter_gguf):
    env, (worker, _) = workers
    host, port = "127.0.0.1", worker.port
    baseline = worker.rss()
    # 17 bytes that aborted ggml's server: a tensor of 2^63 bytes declared.
    with socket.create_connection((host, port), timeout=10) as conn:
        _hello(conn)
        conn.sendall(struct.pack("<BQ", CMD_SET_TENSOR, 2**63))
        assert _closed_by_worker(conn)
    # A buffer far beyond this machine's memory, and an unknown command.
    with socket.create_connection((host, port), timeout=10) as conn:
        _hello(conn)
        conn.sendall(struct.pack("<BQ", CMD_ALLOC_BUFFER, 12) + struct.pack("<IQ", 0, 2**40))
        assert _closed_by_worker(conn)
    with socket.create_connection((host, port), timeout=10) as conn:
        _hello(conn)
        conn.sendall(struct.pack("<BQ", 200, 0))
        assert _closed_by_worker(conn)
    # 1 GiB declared and nothing sent: nothing is allocated for it.
    with socket.create_connection((host, port), timeout=10) as conn:
        _hello(conn)
        conn.sendall(struct.pack("<BQ", CMD_SET_TENSOR, 2**30) + bytes(1000))
        time.sleep(1.5)
        assert worker.rss() - baseline < 64 * 2**20
    # A connection that goes silent after its HELLO gives way to a client that waits.
    with socket.create_connection((host, port), timeout=10) as idle:
        _hello(idle)
        started = time.monotonic()
        rpc.hello(worker.endpoint, timeout=15)
        assert time.monotonic() - started < 12
        assert _closed_by_worker(idle, 1)
    assert "closed the connection" in _drain(worker)
    # A crash of ggml's server (here: killed) costs the client it served, not the worker.
    children = psutil.Process(worker.proc.pid).children()
    for child in children:
        child.kill()
    psutil.wait_procs(children, timeout=10)
    rpc.hello(worker.endpoint, timeout=30)
    answer = json.loads(_cli(env, "run", "-m", "starter", "--rpc", worker.endpoint, "-t", "0", "--max-tokens", "8",
                             "--json", PROMPT))
    assert answer["settings"]["rpc"] == [worker.endpoint] and answer["usage"]["completion_tokens"] > 0
    assert "starting it again" in _drain(worker)


def _drain(worker) -> str:
    """What the worker has logged so far (its stdout and stderr are one pipe)."""
    os.set_blocking(worker.proc.stdout.fileno(), False)
    text = worker.proc.stdout.read() or ""
    worker.log = getattr(worker, "log", "") + text
    return worker.log
