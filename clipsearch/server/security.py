"""The checks every request passes before it reaches a route, as one plain ASGI middleware.

1. The Host header must name this server: a bound host or a loopback name (DNS rebinding: a page on
   attacker.example whose name was re-pointed at 127.0.0.1 sends `Host: attacker.example`). Only the
   Host header counts; `X-Forwarded-Host` and the other `X-Forwarded-*` headers are never read.
2. A request that says it comes from another site (an `Origin` that is not this server's, or
   `Sec-Fetch-Site: cross-site` on anything but a link being followed) is refused: no CORS, ever.
3. With a token (any non-loopback bind), every request carries it: `Authorization: token T` (or
   `Bearer T`), `?token=T` (a page request then gets a cookie and is redirected to its URL without
   the token, as Jupyter does), or the cookie.
4. Every response carries nosniff, a same-origin content security policy, no referrer, no framing.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from urllib.parse import parse_qsl, urlencode, urlsplit

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")

SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"content-security-policy",
     b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; connect-src 'self'; "
     b"form-action 'self'; base-uri 'none'; frame-ancestors 'none'"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"cross-origin-opener-policy", b"same-origin"),
]


def is_loopback(host: str) -> bool:
    """Whether binding to `host` keeps the server reachable from this machine only."""
    h = host.strip("[]").lower()
    if h == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def split_host(value: str) -> tuple[str, int | None] | None:
    """`name`, `name:port`, `1.2.3.4:port`, `[::1]:port` -> (lower-case host, port); None when malformed."""
    value = value.strip().lower()
    if not value:
        return None
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        host, rest = value[:end + 1], value[end + 1:]
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return None
    else:
        host, sep, rest = value.partition(":")
        rest = sep + rest
        if not host or ":" in rest[1:]:
            return None
    if not rest:
        return host, None
    if not rest.startswith(":") or not rest[1:].isdigit() or len(rest) > 6:
        return None
    return host, int(rest[1:])


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
        return True
    except ValueError:
        return False


class HostRules:
    """Which Host header values are this server. An entry without a port matches any port."""

    def __init__(self, allowed: tuple[str, ...] | list[str], *, allow_ip_literals: bool = False):
        self.any_port: set[str] = set()
        self.with_port: set[tuple[str, int]] = set()
        for entry in allowed:
            parsed = split_host(entry)
            if parsed is None:
                raise ValueError(f"not a host name: {entry!r}")
            host, port = parsed
            if port is None:
                self.any_port.add(host)
            else:
                self.with_port.add((host, port))
        # a rebinding attack needs a name it controls: a bare IP address in Host is never one
        self.allow_ip_literals = allow_ip_literals

    def allows(self, value: str | None) -> bool:
        if value is None:
            return False
        parsed = split_host(value)
        if parsed is None:
            return False
        host, port = parsed
        if host in self.any_port or (host, port or 80) in self.with_port:
            return True
        return self.allow_ip_literals and _is_ip_literal(host)


def cookie_name(token: str) -> str:
    """One cookie per token, so two servers on one machine do not overwrite each other's."""
    return "clipsearch_token_" + hashlib.sha256(token.encode()).hexdigest()[:10]


class SecurityMiddleware:
    def __init__(self, app, *, hosts: HostRules, token: str | None = None):
        self.app = app
        self.hosts = hosts
        self.token = token.encode() if token else None
        self.cookie = cookie_name(token) if token else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            if scope["type"] == "websocket":  # none are served; refuse before anything else sees it
                await send({"type": "websocket.close", "code": 1008})
                return
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", []) if h[0].lower() not in _OURS]
                message = {**message, "headers": headers + SECURITY_HEADERS}
            await send(message)

        headers = _headers(scope)
        host = headers.get("host")
        if not self.hosts.allows(host):
            await _plain(send_with_headers, 403, "this server does not answer to that host name (Host header); "
                                                 "open it at the address `clipsearch serve` printed")
            return
        if not _same_site(scope, headers, host):
            await _plain(send_with_headers, 403, "cross-site requests are refused")
            return
        if self.token is not None:
            status = self._check_token(scope, headers)
            if status == "redirect":
                await self._redirect_setting_cookie(scope, send_with_headers)
                return
            if status != "ok":
                await _plain(send_with_headers, 401, "this clipsearch server needs its access token: open the "
                                                     "URL printed by `clipsearch serve` (it ends in ?token=...)",
                             html=not scope["path"].startswith("/api/"))
                return
        await self.app(scope, receive, send_with_headers)

    def _check_token(self, scope, headers) -> str:
        auth = headers.get("authorization", "")
        scheme, _, value = auth.partition(" ")
        if scheme.lower() in ("token", "bearer") and self._matches(value.strip()):
            return "ok"
        if self._matches(_cookies(headers.get("cookie", "")).get(self.cookie, "")):
            return "ok"
        given = [v for k, v in parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
                 if k == "token"]
        if given and self._matches(given[-1]):
            if scope["method"] in ("GET", "HEAD") and not scope["path"].startswith("/api/"):
                return "redirect"
            return "ok"
        return "missing"

    def _matches(self, value: str) -> bool:
        return bool(value) and hmac.compare_digest(value.encode("utf-8", "surrogateescape"), self.token)

    async def _redirect_setting_cookie(self, scope, send) -> None:
        rest = [(k, v) for k, v in parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
                if k != "token"]
        location = scope["path"] + ("?" + urlencode(rest) if rest else "")
        # Lax: a link to the page from elsewhere still carries it (only as a top-level GET, which the
        # cross-site rule lets reach the page and nothing else); Strict would drop it after this redirect
        cookie = f"{self.cookie}={self.token.decode()}; Path=/; HttpOnly; SameSite=Lax"
        await send({"type": "http.response.start", "status": 303,
                    "headers": [(b"location", location.encode("latin-1", "replace")),
                                (b"set-cookie", cookie.encode()), (b"cache-control", b"no-store"),
                                (b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})


_OURS = {name for name, _ in SECURITY_HEADERS}


def _headers(scope) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in scope.get("headers", []):
        name = k.decode("latin-1").lower()
        if name in out:  # two Host headers (or two Origins) are an attack, not a request
            out[name] = "\x00"
        else:
            out[name] = v.decode("latin-1")
    return out


def _cookies(header: str) -> dict[str, str]:
    out = {}
    for part in header.split(";"):
        k, sep, v = part.strip().partition("=")
        if sep:
            out[k] = v
    return out


def _same_site(scope, headers, host: str) -> bool:
    origin = headers.get("origin")
    if origin is not None:
        parts = urlsplit(origin) if origin != "null" else None
        if parts is None or parts.scheme not in ("http", "https") or (parts.netloc or "").lower() != host.lower():
            return False
    site = headers.get("sec-fetch-site")
    if site == "cross-site":
        # following a link from elsewhere to the page is fine; fetching, embedding or posting is not
        return scope["method"] == "GET" and headers.get("sec-fetch-mode") == "navigate" \
            and not scope["path"].startswith("/api/")
    return True


async def _plain(send, status: int, message: str, *, html: bool = False) -> None:
    if html:
        body = (f"<!doctype html><meta charset=utf-8><title>clipsearch</title><p>{message}</p>").encode()
        ctype = b"text/html; charset=utf-8"
    else:
        import json

        body = json.dumps({"detail": message}).encode()
        ctype = b"application/json"
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", ctype), (b"content-length", str(len(body)).encode()),
                            (b"cache-control", b"no-store")]})
    await send({"type": "http.response.body", "body": body})
