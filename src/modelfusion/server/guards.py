"""What a web page in the user's browser may not do with the server.

A keyless loopback server trusts whoever can reach it, and every web page the user opens can
reach it through the browser:

- **DNS rebinding.** A page on attacker.example whose name then resolves to 127.0.0.1 is, to
  the browser, same-origin with the server: it could read every trace. The browser still
  sends `Host: attacker.example`, so only loopback names and the configured ones are served
  (`allowed_hosts`); `/healthz` answers any (it tells nothing).
- **Cross-site requests (CSRF).** Any page may POST to 127.0.0.1 without asking (a form, or
  `fetch` with a text/plain body) and so run a fusion on the user's keys. A state-changing
  request from another site's page is refused: its `Origin` is not this server's own (or,
  without an Origin, `Sec-Fetch-Site` says another site), unless the operator listed that
  origin (`cors_origins`). Clients outside a browser send neither header.
- **Bodies that are not JSON** (`require_json`): the forms and text/plain bodies a page may
  send without a CORS preflight are refused with 415 before they are read.

CORS itself is Starlette's `CORSMiddleware`, added only for the listed origins: without
them the browser lets no other origin read an answer.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from fastapi import FastAPI
from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from ..fusion import DEPTH_HEADER
from .errors import ApiError
from .settings import ServerSettings, host_name, is_loopback

OPEN_PATHS = frozenset({"/healthz"})  # served whatever the Host: a load balancer's probe
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})  # they change nothing here


def add_browser_guards(app: FastAPI, settings: ServerSettings) -> None:
    """The Host and Origin checks, and CORS for the listed origins only (outermost, so
    that a refusal still carries the headers that let a listed page read it)."""
    app.add_middleware(BrowserGuard, hosts=settings.allowed_hosts,
                       origins=settings.cors_origins)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins),
                           allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type", DEPTH_HEADER],
                           expose_headers=["Retry-After"])


class BrowserGuard:
    """Pure ASGI (no BaseHTTPMiddleware: streams and disconnects pass through untouched).
    Not Starlette's TrustedHostMiddleware: that one answers in plain text, has no open
    paths and no notion of "any loopback name"."""

    def __init__(self, app: ASGIApp, *, hosts: frozenset[str] | None,
                 origins: tuple[str, ...] = ()) -> None:
        self.app = app
        self.hosts = None if hosts is None else frozenset(filter(None, map(host_name, hosts)))
        self.origins = frozenset(o.lower().rstrip("/") for o in origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        try:
            if self.hosts is not None and scope["path"] not in OPEN_PATHS:
                _check_host(headers.get("host"), self.hosts)
            if scope["method"] not in SAFE_METHODS and "*" not in self.origins:
                _check_origin(headers, self.origins)
        except ApiError as e:
            await JSONResponse(e.body(), status_code=e.status)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _check_host(host: str | None, allowed: frozenset[str]) -> None:
    if host is None:  # HTTP/1.0 without Host: not a browser, so not a rebinding page
        return
    name = host_name(host)
    if name is not None and (is_loopback(name) or name in allowed):
        return
    extra = "".join(f", {h}" for h in sorted(allowed))
    raise ApiError(421, f"this server does not answer to Host {host!r} (a web page reaching "
                   "it through a name of its own?): it answers to localhost, 127.0.0.1 and "
                   f"[::1]{extra}; add a name with fusion serve --allowed-host NAME",
                   code="host_not_allowed", param="Host")


def _check_origin(headers: Headers, listed: frozenset[str]) -> None:
    origin = headers.get("origin")
    if origin is not None:
        # The server's own page: its origin's host[:port] is the Host it was served from
        # (whatever the scheme: a TLS proxy in front still forwards the Host).
        own = urlsplit(origin).netloc.lower() == headers.get("host", "").lower()
        if own or origin.lower().rstrip("/") in listed:
            return
        why = f"Origin {origin!r}"  # "null" too: a sandboxed frame or a file:// page
    elif headers.get("sec-fetch-site") in ("cross-site", "same-site"):
        why = f"Sec-Fetch-Site: {headers['sec-fetch-site']}"
    else:
        return  # a client outside a browser
    raise ApiError(403, f"refused a request from another site's page ({why}): this server "
                   "takes requests from its own page and from clients outside a browser; "
                   "let a web origin in with fusion serve --cors-origin ORIGIN",
                   code="cross_site_request", param="Origin")


def require_json(request: Request) -> None:
    """415 unless the body is declared JSON: what a page can send without a CORS preflight
    (a form, text/plain, no type at all) is no request this API takes."""
    declared = request.headers.get("content-type")
    media = (declared or "").split(";", 1)[0].strip().lower()
    if media == "application/json" or (media.startswith("application/")
                                       and media.endswith("+json")):
        return
    got = f"got {declared!r}" if declared else "none was sent"
    raise ApiError(415, f"the body must be JSON: send 'Content-Type: application/json' ({got})",
                   code="unsupported_media_type", param="Content-Type")
