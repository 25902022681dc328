"""llama.cpp's RPC backend: a GGUF model's layers on other machines' CPUs and GPUs.

A worker (``localllm rpc-worker``) serves this machine's devices over TCP; a client
(``--rpc HOST:PORT,...``) registers each worker's devices with ggml, and llama.cpp then treats
them as GPUs: the planner counts their free memory and places layers on them (remote devices
first, as llama.cpp orders them). llama-cpp-python 0.3.36 no longer passes ``rpc_servers``, so
ggml's own RPC functions are bound here with ctypes.

The RPC code lives in ``libggml-rpc``, which the default llama-cpp-python build leaves out. It
is found, in order: in ggml's registry (llama-cpp-python built with ``-DGGML_RPC=on``), at
``$LOCALLLM_GGML_RPC``, or where ``packaging/build-ggml-rpc.sh`` puts it (compiled from the
same llama.cpp sources as the installed wheel, against that wheel's own ggml libraries).

ggml aborts the process when a worker is unreachable or speaks another protocol version, so
every endpoint is first checked here with the protocol's own HELLO exchange.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import re
import socket
import struct
from pathlib import Path

from ...config import home
from ...errors import LocalLLMError, UsageError

DEFAULT_PORT = 50052  # llama.cpp's rpc-server default
MAX_SERVERS = 16  # ggml's GGML_RPC_MAX_SERVERS
PROTOCOL_MAJOR, PROTOCOL_MINOR = 7, 0  # ggml-rpc.h of the pinned llama.cpp
_CMD_HELLO = 14
_CAPS_SIZE = 24  # transport.h's RPC_CONN_CAPS_SIZE
_HOST = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")
_DEVICE_TYPE_CPU, _DEVICE_TYPE_GPU = 0, 1
NO_AUTH_WARNING = ("RPC has no authentication or encryption: anyone who can reach this port can use this "
                   "machine's memory and compute; serve only on a network you trust")


class RpcError(LocalLLMError):
    """An RPC worker cannot be used: unreachable, another protocol, or no RPC support built."""

    exit_code = 4


def parse_endpoints(text: str) -> tuple[str, ...]:
    """``HOST:PORT,...`` checked (a host name or IPv4 address; ggml's client has no IPv6)."""
    endpoints = tuple(part.strip() for part in text.split(",") if part.strip())
    if not endpoints:
        raise UsageError("--rpc needs HOST:PORT, or several separated by commas")
    if len(endpoints) > MAX_SERVERS:
        raise UsageError(f"at most {MAX_SERVERS} RPC workers, not {len(endpoints)}")
    for endpoint in endpoints:
        host, _, port = endpoint.rpartition(":")
        if not host or not _HOST.match(host) or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise UsageError(f"not an RPC worker address: {endpoint[:100]!r} (expected HOST:PORT, e.g. 192.168.1.20:{DEFAULT_PORT})")
    if len(set(endpoints)) != len(endpoints):
        raise UsageError("the same RPC worker is named twice in --rpc")
    return endpoints


def check_listen_host(host: str) -> None:
    """ggml's server binds an IPv4 address literal only."""
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        raise UsageError(f"--host must be an IPv4 address (ggml's RPC server takes no names or IPv6), not {host[:100]!r}") from None


def hello(endpoint: str, timeout: float = 5.0) -> tuple[int, int, int]:
    """The worker's protocol version, from the HELLO exchange ggml's client starts with."""
    host, _, port = endpoint.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as conn:
            conn.sendall(struct.pack("<BQ", _CMD_HELLO, _CAPS_SIZE) + bytes(_CAPS_SIZE))
            reply = _receive(conn, 8 + 4 + _CAPS_SIZE)
    except socket.timeout:
        raise RpcError(f"RPC worker {endpoint} did not answer within {timeout:g} s (busy with another client, "
                       "or not a localllm rpc-worker / llama.cpp rpc-server)") from None
    except OSError as exc:
        raise RpcError(f"cannot reach RPC worker {endpoint}: {exc.strerror or exc}") from None
    size, major, minor, patch = struct.unpack_from("<QBBB", reply)
    if size != 4 + _CAPS_SIZE:
        raise RpcError(f"{endpoint} is not an RPC worker of this llama.cpp (unexpected HELLO reply)")
    if major != PROTOCOL_MAJOR or minor > PROTOCOL_MINOR:
        raise RpcError(f"RPC worker {endpoint} speaks protocol {major}.{minor}.{patch}, this build "
                       f"{PROTOCOL_MAJOR}.{PROTOCOL_MINOR}: run the same llama.cpp version on both sides")
    return major, minor, patch


def _receive(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise OSError(0, "the connection closed during the handshake")
        data += chunk
    return data


def built_library_path() -> Path:
    """Where packaging/build-ggml-rpc.sh puts the library for the installed llama-cpp-python."""
    from importlib.metadata import version

    return home() / "lib" / f"llama-cpp-python-{version('llama_cpp_python')}" / "libggml-rpc.so"


class _Rpc:
    """ggml's RPC entry points, from the registry or from a separately built library."""

    def __init__(self) -> None:
        from .cpu_buffers import library, registry_function

        self.ggml, self.base = library("ggml"), library("ggml-base")
        vp = ctypes.c_void_p
        for lib, name, args, result in (
            (self.ggml, "ggml_backend_register", [vp], None),
            (self.ggml, "ggml_backend_dev_count", [], ctypes.c_size_t),
            (self.ggml, "ggml_backend_dev_get", [ctypes.c_size_t], vp),
            (self.base, "ggml_backend_dev_type", [vp], ctypes.c_int),
            (self.base, "ggml_backend_dev_backend_reg", [vp], vp),
            (self.base, "ggml_backend_reg_name", [vp], ctypes.c_char_p),
            (self.base, "ggml_backend_dev_memory", [vp, ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(ctypes.c_size_t)], None),
        ):
            function = getattr(lib, name)
            function.argtypes, function.restype = args, result
        add = registry_function("RPC", "ggml_backend_rpc_add_server")  # a build with RPC compiled in
        start = registry_function("RPC", "ggml_backend_rpc_start_server")
        if not (add and start):
            rpc = ctypes.CDLL(str(_library_file()))
            add, start = ctypes.cast(rpc.ggml_backend_rpc_add_server, vp).value, ctypes.cast(rpc.ggml_backend_rpc_start_server, vp).value
        self.add_server = ctypes.CFUNCTYPE(vp, ctypes.c_char_p)(add)
        self.start_server = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_size_t,
                                             ctypes.POINTER(vp))(start)

    def local_devices(self) -> list[int]:
        """What a worker serves, as llama.cpp's rpc-server chooses: this machine's GPUs, else its CPU
        (never devices of workers this process itself uses)."""
        gpus, cpus = [], []
        for i in range(self.ggml.ggml_backend_dev_count()):
            dev = self.ggml.ggml_backend_dev_get(i)
            reg_name = self.base.ggml_backend_reg_name(self.base.ggml_backend_dev_backend_reg(dev)) or b""
            kind = self.base.ggml_backend_dev_type(dev)
            if reg_name.startswith(b"RPC"):
                continue
            (cpus if kind == _DEVICE_TYPE_CPU else gpus if kind == _DEVICE_TYPE_GPU else []).append(dev)
        return gpus or cpus[:1]


    def memory(self, dev: int) -> tuple[int, int]:
        """(free, total) bytes of a device."""
        free, total = ctypes.c_size_t(), ctypes.c_size_t()
        self.base.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        return free.value, total.value

    def kind(self, dev: int) -> str:
        return "cpu" if self.base.ggml_backend_dev_type(dev) == _DEVICE_TYPE_CPU else "gpu"


def _library_file() -> Path:
    env = os.environ.get("LOCALLLM_GGML_RPC")
    path = Path(env).expanduser() if env else built_library_path()
    if not path.is_file():
        raise RpcError(
            "this llama-cpp-python was built without RPC support; build the RPC library with "
            "`bash packaging/build-ggml-rpc.sh` (or reinstall llama-cpp-python with CMAKE_ARGS=-DGGML_RPC=on "
            f"and --no-cache-dir; see packaging/README.md). Looked for {path}"
        )
    return path


_rpc: _Rpc | None = None
_connected: set[str] = set()


def bindings() -> _Rpc:
    """ggml's RPC functions (loading libggml-rpc first if need be); RpcError when there are none."""
    global _rpc
    if _rpc is None:
        from .runtime import devices

        devices()  # initializes llama.cpp's backends (and its log routing) first
        _rpc = _Rpc()
    return _rpc


def connect(endpoints: tuple[str, ...]) -> None:
    """Register each worker's devices with ggml, once per process, after checking it answers."""
    rpc = bindings()
    for endpoint in endpoints:
        if endpoint in _connected:
            continue
        hello(endpoint)
        reg = rpc.add_server(endpoint.encode())
        if not reg:
            raise RpcError(f"RPC worker {endpoint} offers no devices")
        rpc.ggml.ggml_backend_register(reg)
        _connected.add(endpoint)


def serve(host: str, port: int, n_threads: int, cache_dir: Path | None) -> None:
    """Serve this machine's CPU and GPUs to RPC clients; returns only if the server cannot listen."""
    rpc = bindings()
    local = rpc.local_devices()
    devices = (ctypes.c_void_p * len(local))(*local)
    cache = os.fsencode(cache_dir) if cache_dir is not None else None
    rpc.start_server(f"{host}:{port}".encode(), cache, n_threads, len(local), devices)
