"""Who may talk to ``rpg ui``: Host, Origin, content type and body size, checked before routing.

The editor renders, writes files and calls planners that may cost money, and it has no login. A
browser lets any web page *send* requests to ``http://127.0.0.1:7860`` (it only hides the
answers), and a page on a name the attacker controls can re-point that name at 127.0.0.1 (DNS
rebinding) and then read the answers too. :class:`Guard` closes both doors, as ASGI middleware
in front of the whole app:

- **Host**: a request is served only when its ``Host`` names this server: a loopback name
  (``localhost``, ``*.localhost``, ``127.0.0.0/8``, ``::1``), the address it listens on, any IP
  literal when it listens on every interface (an IP address cannot be re-pointed), or a host of an
  origin added with ``allow_origins``. Anything else is a 403 (DNS rebinding).
- **Origin**: when the browser says where a request comes from, it must be this server itself
  (same scheme, host and port) or one of ``allow_origins``; otherwise 403. A request without
  ``Origin`` (curl, scripts) passes only if ``Sec-Fetch-Site`` does not say it is cross-site.
- **Content type**: a POST must be JSON (``/api/reopen``: a PNG). A cross-origin page can send
  ``text/plain`` forms without asking; JSON needs a CORS preflight, which this app never grants.
- **Size**: a body longer than the route's limit is refused with 413 from its
  ``Content-Length`` before a byte is read; bodies without one are counted as they arrive
  (:func:`read_body`).
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.requests import Request

__all__ = [
    "BodyTooLarge",
    "Guard",
    "OriginPolicy",
    "is_loopback",
    "normalize_origin",
    "read_body",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_WILDCARD = ("0.0.0.0", "::", "")
_SAFE_METHODS = ("GET", "HEAD")
_DEFAULT_PORTS = {"http": 80, "https": 443}


class BodyTooLarge(ValueError):
    """A request body passed its limit while it was being read; answered with 413."""

    def __init__(self, limit: int, what: str = "") -> None:
        super().__init__(
            what.format(limit=_size(limit))
            if what
            else f"the request is larger than the limit of {_size(limit)}; prompts, plans and "
            "settings take a few KiB"
        )
        self.limit = limit


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 else f"{n >> 10} KiB"


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address, IPv6 with or without brackets) is this computer."""
    host = host.lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    ip = _ip(host)
    return ip is not None and ip.is_loopback


def _split_host(value: str) -> tuple[str, int | None]:
    """``host[:port]`` (IPv6 in brackets) → lower-case host without brackets, port."""
    parts = urlsplit(f"//{value}")
    try:
        port = parts.port
    except ValueError:
        port = -1  # a malformed port never matches
    return (parts.hostname or "").rstrip("."), port


def normalize_origin(origin: str) -> str:
    """``scheme://host[:port]`` in one spelling (lower case, default port dropped).

    Raises ``ValueError`` for anything that is not an origin (a path, no scheme, no host).
    """
    parts = urlsplit(origin.strip())
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{origin!r} has a bad port") from None
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise ValueError(f"{origin!r} is not an origin like http://host:port")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ValueError(f"{origin!r} is not an origin: give only scheme://host[:port]")
    host = parts.hostname.rstrip(".")
    if ":" in host:
        host = f"[{host}]"
    if port is not None and port != _DEFAULT_PORTS[parts.scheme]:
        return f"{parts.scheme}://{host}:{port}"
    return f"{parts.scheme}://{host}"


@dataclass(frozen=True)
class OriginPolicy:
    """Which ``Host`` and ``Origin`` values the app answers; see the module docstring.

    ``bind_host`` is the address the server listens on (``None`` when it is mounted in another
    app: then only loopback names and ``allow_origins`` are served). ``allow_origins`` are extra
    ``scheme://host[:port]`` origins, for a reverse proxy or a name on the local network.
    """

    bind_host: str | None = "127.0.0.1"
    allow_origins: tuple[str, ...] = ()
    _origins: frozenset[str] = field(init=False, repr=False)
    _hosts: frozenset[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        origins = frozenset(normalize_origin(o) for o in self.allow_origins)
        hosts = {(urlsplit(o).hostname or "").lower() for o in origins}
        if self.bind_host is not None and self.bind_host not in _WILDCARD:
            hosts.add(self.bind_host.strip("[]").lower())
        object.__setattr__(self, "_origins", origins)
        object.__setattr__(self, "_hosts", frozenset(hosts))

    @property
    def wildcard(self) -> bool:
        """Whether the server listens on every interface (any IP literal is then its own)."""
        return self.bind_host is not None and self.bind_host in _WILDCARD

    def host_allowed(self, host_header: str | None) -> bool:
        if not host_header:
            return False
        host, port = _split_host(host_header)
        if not host or port == -1:
            return False
        if is_loopback(host) or host in self._hosts:
            return True
        return self.wildcard and _ip(host) is not None

    def origin_allowed(self, origin: str, scheme: str, host_header: str) -> bool:
        try:
            given = normalize_origin(origin)
        except ValueError:
            return False  # "null" (sandboxed frames, file://) and anything malformed
        if given in self._origins:
            return True
        try:
            own = normalize_origin(f"{scheme}://{host_header}")
        except ValueError:
            return False
        return given == own

    def describe(self) -> str:
        """The hosts served, for error messages."""
        names = ["localhost", "127.0.0.1", "[::1]"]
        names += sorted(h for h in self._hosts if h not in names)
        if self.wildcard:
            names.append("any IP address of this computer")
        return ", ".join(names)


@dataclass(frozen=True)
class _Route:
    content_types: tuple[str, ...]
    limit: int
    too_large: str = ""  # the 413 message, with {limit}


class Guard:
    """ASGI middleware that refuses what :class:`OriginPolicy` does not allow (see module doc).

    ``raw_routes`` are ``(path suffix, body limit, content types, 413 message with {limit})``
    for routes that take something else than JSON (``/api/reopen``: a PNG); ``default_limit``
    and JSON apply to every other POST.
    """

    def __init__(
        self,
        app: ASGIApp,
        policy: OriginPolicy,
        *,
        default_limit: int,
        raw_routes: Iterable[tuple[str, int, tuple[str, ...], str]] = (),
    ) -> None:
        self.app = app
        self.policy = policy
        self.default = _Route(("application/json",), default_limit)
        self.raw = {suffix: _Route(types, limit, what) for suffix, limit, types, what in raw_routes}

    def route(self, path: str) -> _Route:
        for suffix, route in self.raw.items():
            if path.endswith(suffix):
                return route
        return self.default

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self.check(scope)
        if refusal is not None:
            status, message = refusal
            await _answer(send, status, message)
            return
        await self.app(scope, receive, send)

    def check(self, scope: Scope) -> tuple[int, str] | None:
        """``(status, message)`` when the request must be refused, else ``None``."""
        headers = Headers(scope=scope)
        host = headers.get("host")
        hint = "start rpg ui with --allow-origin SCHEME://HOST:PORT to allow it"
        if not self.policy.host_allowed(host):
            return 403, (
                f"this rpg ui server does not answer to Host {host!r}: it serves "
                f"{self.policy.describe()}; {hint}"
            )
        origin = headers.get("origin")
        if origin is not None and not self.policy.origin_allowed(
            origin, scope.get("scheme", "http"), host or ""
        ):
            return 403, (
                f"requests from {origin} are refused: only pages served by this rpg ui may "
                f"use it; {hint}"
            )
        if scope["method"] in _SAFE_METHODS:
            return None
        if origin is None and headers.get("sec-fetch-site") in ("cross-site", "same-site"):
            return 403, "cross-site requests are refused: only pages served by rpg ui may use it"
        route = self.route(scope["path"])
        ctype = headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype not in route.content_types:
            wanted = " or ".join(route.content_types)
            return 415, f"send the body as {wanted} (got {ctype or 'no content type'})"
        length = headers.get("content-length")
        if length is not None:
            try:
                size = int(length)
            except ValueError:
                return 400, f"bad Content-Length {length!r}"
            if size > route.limit:
                return 413, str(BodyTooLarge(route.limit, route.too_large))
        return None


async def _answer(send: Send, status: int, message: str) -> None:
    body = json.dumps({"error": message, "field": None}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def read_body(request: Request, limit: int, too_large: str = "") -> bytes:
    """The request body, read as it arrives and refused with :class:`BodyTooLarge` past ``limit``.

    The :class:`Guard` has already refused a ``Content-Length`` over the limit; this catches the
    bodies that do not declare their length (chunked transfer) without holding more than
    ``limit`` bytes.
    """
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit, too_large)
        chunks.append(chunk)
    return b"".join(chunks)
