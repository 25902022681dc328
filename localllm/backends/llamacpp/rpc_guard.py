"""`localllm rpc-worker`: ggml's RPC server in a child process, behind a proxy that checks what it is sent.

ggml's server trusts its peer: a declared size of 2^63 aborts it (an uncaught std::length_error),
a declared size is allocated before any data arrives, and one silent connection holds it for
ever (it serves one client at a time). So the worker runs it on a loopback port in a child
process, restarted whenever it dies, and clients talk to this proxy, which reads every message's
header before forwarding it:
- a command ggml does not know, or a size no such message can have, closes the connection;
- a buffer or tensor larger than the memory the worker has free is refused before ggml sees it;
- a connection that sends nothing for `idle_timeout` (10 s before its HELLO) is closed, and an
  idle one gives way at once to a client that is waiting;
- a message is forwarded once its data has arrived, which must be at 1 MiB/s at least.
Replies go back untouched.
"""

from __future__ import annotations

import json
import os
import queue
import select
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ...errors import LocalLLMError
from ...printable import printable

# ggml-rpc.cpp of the pinned llama.cpp (protocol 7.0).
CMD_ALLOC_BUFFER, CMD_SET_TENSOR, CMD_GRAPH_COMPUTE, CMD_HELLO, CMD_COUNT = 0, 6, 10, 14, 19
HELLO_SIZE = 24  # rpc_msg_hello_req
MAX_FIXED_MESSAGE = 64 * 1024  # every other request is a fixed struct of at most a few KiB
RAM_MARGIN = 256 * 2**20  # left to the rest of the machine when a message is held in memory
HELLO_TIMEOUT_S = 10.0
DATA_TIMEOUT_S = 30.0  # the longest pause inside one message's data
YIELD_AFTER_S = 5.0  # an idle session gives way to a waiting client after this long
CHUNK = 2**20
MIN_RATE = 2**20  # bytes per second a message's data must arrive at, at least


class Refused(Exception):
    """The peer broke the protocol or asked for too much: its connection is closed."""


@dataclass
class Limits:
    device_free: list[int]  # bytes free on each device the child serves, when it started
    idle_timeout: float = 600.0

    def ram_free(self) -> int:
        import psutil

        return max(0, psutil.virtual_memory().available - RAM_MARGIN)

    def check(self, cmd: int, size: int, payload_head: bytes) -> None:
        if cmd >= CMD_COUNT:
            raise Refused(f"unknown command {cmd}")
        if cmd in (CMD_SET_TENSOR, CMD_GRAPH_COMPUTE):
            if size > self.ram_free():
                raise Refused(f"a message of {size} bytes, more than the {self.ram_free()} bytes of memory free")
        elif size > MAX_FIXED_MESSAGE:
            raise Refused(f"command {cmd} declares {size} bytes; no such message is over {MAX_FIXED_MESSAGE}")
        if cmd == CMD_ALLOC_BUFFER and len(payload_head) == 12:
            device, wanted = struct.unpack("<IQ", payload_head)
            if device >= len(self.device_free):
                raise Refused(f"a buffer on device {device}, which is not served")
            free = self.device_free[device] if self.device_free[device] >= 0 else self.ram_free()
            if wanted > free:
                raise Refused(f"a buffer of {wanted} bytes on device {device}, which has {free} bytes free")

    @staticmethod
    def from_child(report: dict) -> Limits:
        """-1 for the CPU: its free memory is read when a request comes, not once."""
        return Limits([int(d["free"]) if d["type"] != "cpu" else -1 for d in report["devices"]])


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the peer closed the connection")
        data += chunk
    return bytes(data)


def _readable(sock: socket.socket, timeout: float) -> bool:
    # select, not settimeout: the socket's timeout is shared with the thread sending replies.
    return bool(select.select([sock], [], [], timeout)[0])


def relay_requests(client: socket.socket, child: socket.socket, limits: Limits, waiting: queue.Queue) -> None:
    """Forward the client's messages to ggml's server until either side closes; Refused on a bad one."""
    if not _readable(client, HELLO_TIMEOUT_S):
        raise Refused(f"no HELLO within {HELLO_TIMEOUT_S:g} s")
    head = _recv_exact(client, 9)
    cmd, size = struct.unpack("<BQ", head)
    if cmd != CMD_HELLO or size != HELLO_SIZE:
        raise Refused("the first message is not an RPC HELLO")
    child.sendall(head + _recv_exact(client, HELLO_SIZE))
    while True:
        _wait_for_message(client, limits, waiting)
        cmd, size = struct.unpack("<BQ", _recv_exact(client, 9))
        first = _recv_exact(client, min(size, 12)) if cmd == CMD_ALLOC_BUFFER else b""
        limits.check(cmd, size, first)
        data = _receive_message(client, size - len(first))
        child.sendall(struct.pack("<BQ", cmd, size) + first + (data.pop(0) if data else b""))
        for chunk in data:
            child.sendall(chunk)


def _wait_for_message(client: socket.socket, limits: Limits, waiting: queue.Queue) -> None:
    """Until the next message starts; Refused when the connection stays silent too long, or for
    a short while if another client is waiting for the worker."""
    idle_since = time.monotonic()
    while not _readable(client, 1.0):
        idle = time.monotonic() - idle_since
        if idle >= limits.idle_timeout:
            raise Refused(f"idle for {limits.idle_timeout:g} s")
        if idle >= YIELD_AFTER_S and not waiting.empty():
            raise Refused(f"idle for {idle:.0f} s while another client waits")


def _receive_message(source: socket.socket, size: int) -> list[bytes]:
    """A message's data, whole: ggml allocates a message's declared size as soon as it sees the
    header, so the header goes on only with data that has really arrived (and this process
    holds no more than that). It must come at MIN_RATE at least, or the connection is closed."""
    deadline = time.monotonic() + DATA_TIMEOUT_S + size / MIN_RATE
    chunks = []
    while size:
        chunk = source.recv(min(size, CHUNK))
        if not chunk:
            raise ConnectionError("the peer closed the connection inside a message")
        if time.monotonic() > deadline:
            raise Refused("a message's data arrived too slowly")
        chunks.append(chunk)
        size -= len(chunk)
    return chunks


def _copy_replies(child: socket.socket, client: socket.socket) -> None:
    buffer = memoryview(bytearray(CHUNK))
    try:
        while True:
            n = child.recv_into(buffer)
            if not n:
                break
            client.sendall(buffer[:n])
    except OSError:
        pass
    finally:
        _shut(client, child)


def _shut(*socks: socket.socket) -> None:
    """End both directions, so the thread blocked on the other side wakes up."""
    for sock in socks:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def serve_session(client: socket.socket, peer: str, child: socket.socket, limits: Limits, waiting: queue.Queue,
                  log=print) -> None:
    """One client, from its HELLO to its last message, relayed to the child's ggml server."""
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    client.settimeout(DATA_TIMEOUT_S)  # within a message, and for replies the client does not read
    replies = threading.Thread(target=_copy_replies, args=(child, client), daemon=True)
    replies.start()
    try:
        relay_requests(client, child, limits, waiting)
    except Refused as exc:
        log(f"closed the connection from {peer}: {printable(str(exc))}")
    except (OSError, ConnectionError):
        pass  # the client or the worker went away
    finally:
        _shut(client, child)
        replies.join(5)
        client.close()
        child.close()


# ---- the child process and its supervisor ------------------------------------------------------
def child_main() -> None:
    """In the child: report the devices to serve, then run ggml's server on loopback for ever."""
    from . import rpc

    port, threads, cache = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] or None
    bindings = rpc.bindings()
    devices = []
    for dev in bindings.local_devices():
        free, total = bindings.memory(dev)
        devices.append({"type": bindings.kind(dev), "free": free, "total": total})
    sys.stdout.write(json.dumps({"devices": devices}) + "\n")
    sys.stdout.flush()
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)  # ggml prints a line for every connection; the proxy logs its own
    threading.Thread(target=_exit_with_parent, daemon=True).start()
    rpc.serve("127.0.0.1", port, threads, Path(cache) if cache else None)


def _exit_with_parent() -> None:
    """The parent holds the other end of stdin: end of file means it is gone, however it ended."""
    sys.stdin.buffer.read()
    os._exit(0)


class Worker:
    """The child running ggml's server, started again whenever it has died."""

    def __init__(self, threads: int, cache: Path | None, log=print):
        self.threads, self.cache, self.log = threads, cache, log
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.limits: Limits | None = None
        self.restarts = 0

    def ensure(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        if self.proc is not None:
            self.restarts += 1
            self.log(f"the worker process ended ({_exit_reason(self.proc.returncode)}); starting it again")
        self._start()

    def _start(self) -> None:
        with socket.socket() as probe:  # a free loopback port for the child
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from localllm.backends.llamacpp.rpc_guard import child_main; child_main()", str(self.port),
             str(self.threads), os.fsdecode(self.cache) if self.cache else ""],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        try:
            self.limits = Limits.from_child(json.loads(line))
        except (ValueError, KeyError, TypeError):
            self.proc.kill()
            raise LocalLLMError("the RPC worker process did not start (see the error above)") from None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # ggml's server is listening once a connection is taken
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.05)
        self.proc.kill()
        raise LocalLLMError(f"the RPC worker process did not listen on 127.0.0.1:{self.port}")

    def connect(self) -> socket.socket:
        """A connection to ggml's server, starting the child again first if it has died."""
        self.ensure()
        try:
            conn = socket.create_connection(("127.0.0.1", self.port), timeout=HELLO_TIMEOUT_S)
        except OSError:  # died a moment ago, before poll() could tell
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.ensure()
            conn = socket.create_connection(("127.0.0.1", self.port), timeout=HELLO_TIMEOUT_S)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.settimeout(None)
        return conn

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _exit_reason(code: int | None) -> str:
    if code is not None and code < 0:
        import signal

        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


def serve(listener: socket.socket, worker: Worker, idle_timeout: float, log=print) -> None:
    """Accept clients for ever and serve them one at a time, as ggml's server does."""
    waiting: queue.Queue = queue.Queue()

    def accept() -> None:
        while True:
            try:
                conn, addr = listener.accept()
            except OSError:
                return
            waiting.put((conn, f"{addr[0]}:{addr[1]}"))

    threading.Thread(target=accept, name="rpc-accept", daemon=True).start()
    while True:
        conn, peer = waiting.get()
        try:
            child = worker.connect()
        except (OSError, LocalLLMError) as exc:
            log(f"cannot reach the worker process for {peer}: {exc}")
            conn.close()
            continue
        serve_session(conn, peer, child, Limits(worker.limits.device_free, idle_timeout), waiting, log)
