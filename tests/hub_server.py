"""A Hugging Face Hub stand-in on 127.0.0.1 for tests: real HTTP, the Hub's headers and error codes.

Looked at first: the `olah` mirror speaks the protocol, but it is a caching proxy of an upstream
Hub (it needs the network to fill its cache) and brings a web framework; nothing here may reach
the network. This serves files from disk with what huggingface_hub reads: resolve URLs with
X-Repo-Commit / X-Linked-Etag / X-Linked-Size, Range requests, the tree API, and the
X-Error-Code header that turns 401/404 into typed errors. Faults are switches: a throttle, a
connection dropped after N bytes, corrupted bytes, a gated repo, a claimed size.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

COMMIT = "c0ffee0000000000000000000000000000000001"
CHUNK = 1 << 16


@dataclass
class HostedFile:
    path: Path
    sha256: str
    size: int
    claimed_size: int | None = None  # what HEAD says, to test a file larger than the disk


@dataclass
class Faults:
    rate: float | None = None  # bytes per second per GET
    drop_after: int | None = None  # close a GET's connection after this many body bytes (once)
    drop_always: bool = False  # ... on every GET, not once
    stall_after: int | None = None  # a GET goes silent after this many body bytes (once)
    stall_seconds: float = 5.0
    corrupt: bool = False  # flip one byte in the middle of every file
    gated: set[str] = field(default_factory=set)
    redirect_to: str | None = None  # send file requests to this origin (a 302), as the Hub does to its CDN
    etag: str | None = None  # lie about every file's ETag
    commit: str | None = None  # lie about the commit
    extra_bytes: int = 0  # send this many bytes more than the file has
    ignore_range: bool = False  # answer every ranged GET with the whole file (200)
    listed: list[str] = field(default_factory=list)  # names added to every repo's file listing


class HubServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, host: str = "127.0.0.1"):
        """host: a loopback address; a second server on 127.0.0.2 is another origin, as a CDN is."""
        self.repos: dict[str, dict[str, HostedFile]] = {}
        self.faults = Faults()
        self.log: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        self.authorizations: list[str | None] = []  # the Authorization header of every request
        self.body_bytes = 0
        self.lock = threading.Lock()
        super().__init__((host, 0), Handler)

    @property
    def url(self) -> str:
        return f"http://{self.server_address[0]}:{self.server_address[1]}"

    def add(self, repo_id: str, filename: str, path: Path, sha256: str | None = None) -> HostedFile:
        if sha256 is None:
            sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
        hosted = HostedFile(path, sha256, path.stat().st_size)
        self.repos.setdefault(repo_id, {})[filename] = hosted
        return hosted

    def requested_paths(self) -> list[str]:
        """The URL path of every GET and HEAD, in order."""
        return [p for m, p, _ in self.log if m in ("GET", "HEAD")]

    def gets(self, filename: str) -> list[str | None]:
        """The Range header of every GET of a file, in order."""
        return [r for m, p, r in self.log if m == "GET" and p.endswith("/" + filename)]

    def __enter__(self):
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.shutdown()
        self.server_close()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: HubServer

    def log_message(self, *args):
        pass

    def do_HEAD(self):
        self._resolve(body=False)

    def do_GET(self):
        if self.path.startswith("/api/models/"):
            return self._tree()
        self._resolve(body=True)

    def _error(self, status: int, code: str, message: str) -> None:
        data = json.dumps({"error": message}).encode()
        self.send_response(status)
        self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _repo(self, repo_id: str) -> dict[str, HostedFile] | None:
        if repo_id in self.server.faults.gated:
            self._error(401, "GatedRepo", f"Access to model {repo_id} is restricted. You must have access to it and be authenticated.")
            return None
        if repo_id not in self.server.repos:
            self._error(401, "RepoNotFound", "Repository not found")
            return None
        return self.server.repos[repo_id]

    def _tree(self) -> None:
        match = re.match(r"^/api/models/([^/]+/[^/]+)/tree/([^/?]+)", urlparse(self.path).path)
        repo = self._repo(unquote(match.group(1))) if match else None
        if repo is None:
            return
        items = [{"type": "file", "path": name, "size": f.size, "oid": f.sha256[:40],
                  "lfs": {"oid": f.sha256, "size": f.size, "pointerSize": 134}} for name, f in sorted(repo.items())]
        items += [{"type": "file", "path": name, "size": 1, "oid": "0" * 40} for name in self.server.faults.listed]
        data = json.dumps(items).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _resolve(self, body: bool) -> None:
        path = unquote(urlparse(self.path).path)
        faults = self.server.faults
        with self.server.lock:
            self.server.log.append((self.command, path, self.headers.get("Range")))
            self.server.authorizations.append(self.headers.get("Authorization"))
        match = re.match(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", path)
        if not match:
            return self._error(404, "EntryNotFound", "not a resolve URL")
        repo = self._repo(match.group(1))
        if repo is None:
            return
        hosted = repo.get(match.group(3))
        if hosted is None:
            return self._error(404, "EntryNotFound", f"{match.group(3)} does not exist")
        size = hosted.claimed_size or hosted.size
        etag, commit = faults.etag or hosted.sha256, faults.commit or COMMIT
        if faults.redirect_to:  # as the Hub answers for a file kept on its CDN
            self.send_response(302)
            self.send_header("Location", faults.redirect_to + self.path)
            self.send_header("X-Repo-Commit", commit)
            self.send_header("X-Linked-Etag", f'"{etag}"')
            self.send_header("X-Linked-Size", str(size))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        start, end, status = 0, size - 1, 200
        if body and (requested := self.headers.get("Range")) and not faults.ignore_range:
            bounds = re.match(r"bytes=(\d+)-(\d*)", requested)
            start = int(bounds.group(1))
            end = min(int(bounds.group(2)), size - 1) if bounds.group(2) else end
            if start >= size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        self.send_response(status)
        self.send_header("X-Repo-Commit", commit)
        self.send_header("X-Linked-Etag", f'"{etag}"')
        self.send_header("ETag", f'"{etag}"')
        self.send_header("X-Linked-Size", str(size))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(end + 1 - start + (faults.extra_bytes if body else 0)))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if body:
            self._send(hosted, start, end + 1 - start)
            if faults.extra_bytes:
                self.wfile.write(b"\0" * faults.extra_bytes)

    def _send(self, hosted: HostedFile, start: int, length: int) -> None:
        faults = self.server.faults
        middle = hosted.size // 2
        sent, began = 0, time.monotonic()
        with open(hosted.path, "rb") as f:
            f.seek(start)
            position = start
            while sent < length and (chunk := f.read(min(CHUNK, length - sent))):
                if faults.corrupt and position <= middle < position + len(chunk):
                    chunk = bytearray(chunk)
                    chunk[middle - position] ^= 0xFF
                    chunk = bytes(chunk)
                # A fault fires once, on the first GET that reaches its byte.
                if faults.stall_after is not None and sent + len(chunk) > faults.stall_after:
                    self.wfile.write(chunk[: faults.stall_after - sent])
                    self.wfile.flush()
                    faults.stall_after = None
                    time.sleep(faults.stall_seconds)
                    self.close_connection = True
                    return
                if faults.drop_after is not None and sent + len(chunk) > faults.drop_after:
                    self.wfile.write(chunk[: faults.drop_after - sent])
                    faults.drop_after = faults.drop_after if faults.drop_always else None
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                try:
                    self.wfile.write(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    return
                sent += len(chunk)
                position += len(chunk)
                with self.server.lock:
                    self.server.body_bytes += len(chunk)
                if faults.rate:
                    ahead = sent / faults.rate - (time.monotonic() - began)
                    if ahead > 0:
                        time.sleep(ahead)
