"""What a web page in the user's browser must not be able to do with a server on 127.0.0.1.

Every page the user opens can send requests to loopback. Two checks stop it before any work:
- Host: a page on a domain its owner re-resolves to 127.0.0.1 (DNS rebinding) becomes
  same-origin with the server and reads every answer; its requests still carry that domain in
  `Host`. Only loopback names (and those the user names) are served, as Ollama does since
  CVE-2024-28224.
- Origin: browsers send one with every cross-site request, and a "simple" POST (text/plain, a
  form) needs no preflight. A request from an origin not allowed is refused on every route, and
  a POST must say `application/json`, which no page can send cross-site without a preflight.
Requests with no Origin (curl, the openai and ollama clients, scripts) are not browser requests.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from .schemas import ApiError

# A page served from the user's own machine: a local web app (Open WebUI, a dev server).
LOOPBACK_ORIGIN_REGEX = r"https?://(localhost|[a-z0-9.-]+\.localhost|127(\.\d{1,3}){3}|\[::1\])(:\d{1,5})?"
_LOOPBACK_ORIGIN = re.compile(LOOPBACK_ORIGIN_REGEX, re.IGNORECASE)


def split_names(values: tuple[str, ...] | list[str], env: str) -> tuple[str, ...]:
    """Names given as repeated options and in `env` (comma-separated), lower-cased."""
    given = [*values, *os.environ.get(env, "").split(",")]
    return tuple(dict.fromkeys(v.strip().lower() for v in given if v.strip()))


def host_name(value: str) -> str | None:
    """The name in a Host header ("Example:80" -> "example", "[::1]:80" -> "::1"); None if malformed."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        rest = value[end + 1:]
        if end < 0 or (rest and not (rest.startswith(":") and rest[1:].isdigit())):
            return None
        return value[1:end]
    name, colon, port = value.rpartition(":")
    if colon and not port.isdigit():
        return None
    name = name if colon else value
    return name.removesuffix(".") or None


def _ip(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


def is_loopback(host: str) -> bool:
    """A listening address only this machine can reach ("localhost", "127.0.0.1", "[::1]")."""
    return is_loopback_name(host.strip("[]").lower())


def is_loopback_name(name: str) -> bool:
    if name == "localhost" or name.endswith(".localhost"):
        return True
    ip = _ip(name)
    return ip is not None and ip.is_loopback


@dataclass(frozen=True)
class Policy:
    bind_host: str
    loopback_bind: bool
    allowed_hosts: tuple[str, ...] = ()  # more names to answer to; "*": any
    origins: tuple[str, ...] = ()  # more browser origins allowed; "*": any

    def host_allowed(self, header: str | None) -> bool:
        if header is None:  # HTTP/1.0 without Host: no browser sends that
            return True
        name = host_name(header)
        if name is None:
            return False
        if "*" in self.allowed_hosts or name in self.allowed_hosts or is_loopback_name(name):
            return True
        if name == self.bind_host.strip("[]").lower():
            return True
        if self.loopback_bind:
            return False
        # Bound to a network address: clients reach it by an address or by this machine's name.
        # An address cannot be rebound, and this machine's own name is not the attacker's.
        return _ip(name) is not None or name in _machine_names()

    def origin_allowed(self, origin: str) -> bool:
        origin = origin.strip().lower()
        if "*" in self.origins or origin in self.origins:
            return True
        return bool(_LOOPBACK_ORIGIN.fullmatch(origin)) and urlsplit(origin).hostname is not None


def _machine_names() -> set[str]:
    name = socket.gethostname().lower()
    return {name, name.split(".")[0], f"{name.split('.')[0]}.local"}


def _header(scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


def _json_media_type(value: str | None) -> bool:
    return value is not None and value.split(";", 1)[0].strip().lower() == "application/json"


class Guard:
    """ASGI middleware: 403 for a Host or Origin not allowed, 415 for a POST that is not JSON."""

    def __init__(self, app: Callable, policy: Policy, refuse: Callable):
        self.app, self.policy, self.refuse = app, policy, refuse  # refuse(scope, status, message)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if not self.policy.host_allowed(_header(scope, b"host")):
            await self.refuse(scope, 403, "this server answers only to localhost and the host names it was "
                                          "given (--allowed-hosts)")(scope, receive, send)
            return
        origin = _header(scope, b"origin")
        if origin is not None and not self.policy.origin_allowed(origin):
            await self.refuse(scope, 403, "requests from this web page's origin are not allowed; start the server "
                                          "with --cors ORIGIN to allow it")(scope, receive, send)
            return
        if scope["method"] == "POST" and not _json_media_type(_header(scope, b"content-type")):
            await self.refuse(scope, 415, "the request body must be JSON, sent with 'Content-Type: application/json'"
                              )(scope, receive, send)
            return
        await self.app(scope, receive, send)


class Auth:
    """With an API key, every request must carry it: `Authorization: Bearer KEY`, or `x-api-key: KEY`
    as Anthropic's clients send it."""

    def __init__(self, app: Callable, key: str | None, refuse: Callable):
        self.app, self.key, self.refuse = app, key.encode() if key else None, refuse  # refuse(path, ApiError)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and self.key is not None:
            headers = dict(scope["headers"])
            scheme, _, token = headers.get(b"authorization", b"").partition(b" ")
            if b"x-api-key" in headers:
                scheme, token = b"bearer", headers[b"x-api-key"]
            if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.key):
                error = ApiError(401, "a valid API key is required: Authorization: Bearer KEY (or x-api-key: KEY)", None, "authentication_error")
                await self.refuse(scope["path"], error)(scope, receive, send)
                return
        await self.app(scope, receive, send)
